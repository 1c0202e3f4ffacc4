"""The multi-step figure: :func:`dynamics.study.multistep.multistep_experiment` runs it and returns a
result dict; this module only draws it.

- top row: the relative error of the linearised prediction of the probes' cumulative change against
  the re-linearisation interval (``k = 1``, ``10``, one per epoch, one for the run), at the end of the
  first epoch and at the end of the run, and the median error of each segment's own change (for
  ``k = 1`` the one-step error at the run's learning rate), per run (scale, optimiser, linearisation
  level) and probe set;
- bottom row: per run (its first seed), measured against predicted cumulative change of every probe
  at the end, for ``k = 1`` and one linearisation for the run.
"""

from __future__ import annotations

import math
from pathlib import Path

from dynamics.figures.common import finish
from dynamics.figures.style import COLOURS, SYMBOLS, legend_below, panel_title, panels, styled
from dynamics.figures.style import caption as style_caption

__all__ = ["draw_multistep"]

_BRANCH = {"gen": (SYMBOLS["gen_logp"], "-"), "und": (SYMBOLS["und_logp"], "--")}


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x is not None and not math.isnan(x))
    return xs[len(xs) // 2] if xs else math.inf


def _title(run: str, first: dict | None) -> str:
    if first is None:
        return run
    o, level = first["optimiser"], first.get("info", {}).get("level")
    return f"{run.split('_')[0]}: {o['name']} lr {o['lr']:g}" + (f", linearised at {level}" if level else "")


@styled
def draw_multistep(result: dict, out_dir: str | Path) -> list[Path]:
    """Draw the result of :func:`dynamics.study.multistep.multistep_experiment` into ``out_dir``."""
    s = result["summary"]
    runs = result["plot"]["runs"]
    # left to right by the steps per linearisation (one per epoch is shorter than 10 steps where epochs are)
    ks = sorted(s["ks"], key=lambda k: _median([s["table"][r][k]["interval"] for r in runs]))
    fig, axes = panels(3 + len(runs), height=2.4)
    xs = list(range(len(ks)))
    top = ((axes[0], "epoch1", "cumulative change, first epoch"),
           (axes[1], "end", "cumulative change, whole run"),
           (axes[2], "segment", "each segment's own change (median)"))
    for ax, horizon, label in top:
        for i, run in enumerate(runs):
            table = s["table"][run]
            for branch, (what, ls) in _BRANCH.items():
                cell = [table[k][horizon] if horizon == "segment" else table[k][horizon][branch] for k in ks]
                ys = [c[branch] if horizon == "segment" else c["relative_error"] for c in cell]
                ys = [math.nan if y is None else y for y in ys]
                ax.plot(xs, ys, ls=ls, marker="o", color=COLOURS[i % len(COLOURS)], label=f"{run}: {what}")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"k={k}" for k in ks], fontsize=8)
        ax.set_xlabel("re-linearised every")
        ax.set_ylabel("relative error")
        ax.set_title(label)
    for j, run in enumerate(runs):
        ax = axes[3 + j]
        first = s["runs"][run][0] if s["runs"].get(run) else None
        traj = (first or {}).get("trajectories")
        if not traj:
            ax.axis("off")
            continue
        lo, hi = math.inf, -math.inf
        for k, marker in (("1", "o"), ("all", "x")):
            if k not in traj:
                continue
            for branch, color in (("gen", COLOURS[0]), ("und", COLOURS[1])):
                m, p = traj["measured"][branch][-1], traj[k][branch][-1]
                ax.scatter(p, m, s=10, marker=marker, color=color,
                           label=f"{_BRANCH[branch][0]}, re-linearised {'every step' if k == '1' else 'once'}")
                lo, hi = min(lo, *m, *p), max(hi, *m, *p)
        if math.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("predicted cumulative change")
        ax.set_ylabel("measured cumulative change")
        panel_title(ax, _title(run, first))
    legend_below(fig, axes, ncol=2)
    seeds = max((len(v) for v in s["runs"].values()), default=0)
    style_caption(fig, f"Top: relative error ||measured - predicted|| / ||predicted|| over the probes, the mean over "
                       f"each run's seeds ({seeds} at most; means only, no band); solid: generation, dashed: "
                       "understanding. Bottom: one point per probe at the end of the run (first seed).")
    return finish(fig, out_dir, result)

"""Figures of the paper's ablations (:mod:`dynamics.sim.ablations` computes them; this module only
draws): the curriculum map, gap against gain, the number of candidates.

Each ``draw_<figure>(result, out_dir)`` writes ``<name>.png``, ``.pdf`` and ``.json`` (the result's
``summary``) and returns the three paths. A result drawn from its JSON round trip (tuples as lists,
NaN as null) draws the same.

Example (a result of the form :func:`dynamics.sim.ablations.n_candidates` returns)::

    >>> import tempfile
    >>> rows = [{"n": n, "train_size": (36.0 * n, 1.0, 4), "change": {"exact_gen_acc": (0.1 + 0.01 * n, 0.01, 4),
    ...          "exact_pre_fp_rate": (-0.1, 0.01, 4)}} for n in (1, 2, 8)]
    >>> result = {"name": "fig_n_candidates", "summary": {"rows": rows, "points": [[36.0, 0.1]]}, "plot": {}}
    >>> [p.suffix for p in draw_n_candidates(result, tempfile.mkdtemp())]
    ['.png', '.pdf', '.json']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dynamics.figures.common import error_bar, finish
from dynamics.figures.style import COLOURS, LINESTYLES, MARKERS, legend_below, panels, styled
from dynamics.figures.style import caption as style_caption

__all__ = ["draw_curriculum_map", "draw_gap_gain", "draw_n_candidates", "plot_curriculum_map"]

REPLAY_STYLE = {"off": "0.45", "early": COLOURS[0], "late": COLOURS[1], "adaptive": COLOURS[2]}


def _m(t) -> float:
    """The mean of a ``(mean, s.e., n)`` value (NaN where missing)."""
    return math.nan if t is None or t[0] is None else float(t[0])


def _e(t) -> float:
    return 0.0 if t is None else error_bar(t[1])


def _colour(replay: str, i: int) -> str:
    return REPLAY_STYLE.get(replay, COLOURS[(3 + i) % len(COLOURS)])


def _units(rows) -> int:
    """The most units behind a point of the curriculum map (the ``n`` of its ``pool`` values)."""
    return int(max([r["pool"][2] or 0 for r in rows if r.get("pool") is not None], default=0))


@styled
def plot_curriculum_map(rows: Sequence[dict], *, points: Sequence[dict] = (), title: str | None = None,
                        keys: Sequence[str] = ("exact_gen_acc", "exact_pre_fp_rate")):
    """The curriculum map: against the number of candidates ``N``, one line per replay (and loss:
    SFT solid, DPO dashed): the discard pool and the prompts recovered; the replayed precision against
    the first round's; Gen and the false-positive rate beyond no replay (points, mean ± s.e. over
    units); with ``points``, per unit, the replayed precision's gap to the first round against the
    Gen gain beyond no replay. ``keys``: the rows' keys of Gen and of the false-positive rate (the
    simulator's exact metrics by default). Returns the figure.

    >>> rows = [{"n": n, "loss": "sft", "replay": r, "pool": (12.0 / n, 1.0, 4), "recovered": (10.0 / n, 1.0, 4),
    ...          "replay_precision": (0.7, 0.05, 4), "first_precision": (0.85, 0.01, 4),
    ...          **({"vs_off": {"exact_gen_acc": (0.01, 0.02, 4), "exact_pre_fp_rate": (-0.01, 0.004, 4)}}
    ...             if r != "off" else {})} for n in (1, 2) for r in ("off", "late")]
    >>> len(plot_curriculum_map(rows, points=[{"precision_gap": -0.1, "gen_vs_off": 0.02, "replay": "late"}]).axes)
    5
    """
    n_panels = 5 if points else 4
    fig, axes = panels(n_panels, height=2.3)
    replays = list(dict.fromkeys(r["replay"] for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    ax = axes[0]
    for loss in losses:
        mine = [r for r in rows if r["loss"] == loss and r["replay"] == "off"]
        if loss == losses[0] and mine:
            ax.errorbar([r["n"] for r in mine], [_m(r["pool"]) for r in mine], yerr=[_e(r["pool"]) for r in mine],
                        color="k", marker="s", ms=3, label="discard pool")
    for i, replay in enumerate(r for r in replays if r != "off"):
        mine = [r for r in rows if r["loss"] == losses[0] and r["replay"] == replay]
        ax.errorbar([r["n"] + 0.08 * i for r in mine], [_m(r["recovered"]) for r in mine],
                    yerr=[_e(r["recovered"]) for r in mine], color=_colour(replay, i), marker=MARKERS[i], ms=3,
                    ls=LINESTYLES[i % len(LINESTYLES)], label=f"recovered / replayed: {replay}")
    ax.set_xscale("log")
    ax.set_title(f"discard pool, prompts recovered ({losses[0]})")
    ax.set_ylabel("prompts")
    ax = axes[1]
    first = [r for r in rows if r["loss"] == losses[0] and r["replay"] == "off"]
    ax.plot([r["n"] for r in first], [_m(r["first_precision"]) for r in first], color="k", marker="s", ms=3,
            label="first round")
    for i, replay in enumerate(r for r in replays if r != "off"):
        mine = [r for r in rows if r["loss"] == losses[0] and r["replay"] == replay]
        ax.errorbar([r["n"] + 0.08 * i for r in mine], [_m(r["replay_precision"]) for r in mine],
                    yerr=[_e(r["replay_precision"]) for r in mine], color=_colour(replay, i), marker=MARKERS[i], ms=3,
                    ls="none", label=f"recovered / replayed: {replay}")
    ax.set_xscale("log")
    ax.set_title("training-data precision (oracle)")
    for ax, key, name in ((axes[2], keys[0], "Gen"), (axes[3], keys[1], "Und FP rate")):
        for li, loss in enumerate(losses):
            for i, replay in enumerate(r for r in replays if r != "off"):
                mine = [r for r in rows if r["loss"] == loss and r["replay"] == replay and "vs_off" in r]
                ax.errorbar([r["n"] * (1 + 0.05 * i) for r in mine], [_m(r["vs_off"][key]) for r in mine],
                            yerr=[_e(r["vs_off"][key]) for r in mine], color=_colour(replay, i), marker=MARKERS[i],
                            ms=3, ls="-" if li == 0 else "--", label=f"{loss.upper()}, {replay}")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_title(f"{name} beyond no replay (exact)")
        ax.set_xlabel("candidates per prompt $N$")
    if points:
        ax = axes[4]
        for i, replay in enumerate(r for r in replays if r != "off"):
            mine = [p for p in points if p["replay"] == replay]
            ax.scatter([p["precision_gap"] for p in mine], [p["gen_vs_off"] for p in mine], s=8,
                       color=_colour(replay, i), marker=MARKERS[i], label=f"recovered / replayed: {replay}", alpha=0.7)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.axvline(0.0, color="grey", lw=0.6)
        ax.set_title("per unit: data against gain")
        ax.set_xlabel("replayed $-$ first-round precision")
        ax.set_ylabel("Gen beyond no replay")
    for ax in axes[:2]:
        ax.set_xlabel("candidates per prompt $N$")
    legend_below(fig, axes)
    if title:
        fig.suptitle(title)
    n = _units(rows)
    style_caption(fig, f"Points: mean ± 1 s.e. over {n} units (world, seed); x offset slightly per arm to keep "
                       "them apart. SFT solid, DPO dashed." if n > 1 else "One unit: no error bars.")
    return fig


@styled
def draw_curriculum_map(result: dict, out_dir: str | Path) -> list[Path]:
    """The curriculum map (:func:`plot_curriculum_map`) of :func:`dynamics.sim.ablations.curriculum_map`."""
    s = result["summary"]
    why = s.get("why", {})
    rho = why.get("rho_gap_gen")
    title = f"curriculum replay (judge: {s.get('judge', 'self')})"
    if rho is not None and not (isinstance(rho, float) and math.isnan(rho)):
        title += f"; Spearman rho(precision gap, Gen gain) = {rho:+.2f}"
    if result.get("plot", {}).get("scale"):
        title = f"{result['plot']['scale']}: {title}"
    fig = plot_curriculum_map(s["rows"], points=why.get("points", []), title=title,
                              keys=tuple(s.get("keys", ("exact_gen_acc", "exact_pre_fp_rate")))[:2])
    return finish(fig, out_dir, result)


@styled
def draw_gap_gain(result: dict, out_dir: str | Path) -> list[Path]:
    """Gap against gain: per tag x tier cell, the initial Non against the Gen gain (mean ± s.e. over
    units); per unit, Spearman's rho with the mean and its interval, the paper's 0.53 dashed.

    >>> import tempfile
    >>> cells = {f"cell:{t}/easy": {"non_start": (0.3 + i / 100, 0.01, 4), "gen_gain": (0.2, 0.02, 4)}
    ...          for i, t in enumerate(("object", "colour", "binding"))}
    >>> rho = {"mean": 0.1, "se": 0.1, "n": 4, "ci": [-0.2, 0.4], "level": 0.95,
    ...        "per_unit": {"0,0": 0.5, "0,1": -0.5, "0,2": 0.2, "0,3": 0.2}}
    >>> result = {"name": "fig_gap_gain", "summary": {"cells": cells, "rho": rho}, "plot": {}}
    >>> [p.suffix for p in draw_gap_gain(result, tempfile.mkdtemp())]
    ['.png', '.pdf', '.json']
    """
    s = result["summary"]
    fig, axes = panels(2, height=2.8)
    ax = axes[0]
    for i, (cell, v) in enumerate(s["cells"].items()):
        ax.errorbar(_m(v["non_start"]), _m(v["gen_gain"]), xerr=_e(v["non_start"]), yerr=_e(v["gen_gain"]),
                    marker=MARKERS[i % len(MARKERS)], ms=4, color=COLOURS[i % len(COLOURS)], ls="none",
                    label=cell.removeprefix("cell:"))
    ax.set_xlabel("initial Non (exact)")
    ax.set_ylabel("Gen gain (exact)")
    ax.set_title("per task tag x difficulty tier")
    ax = axes[1]
    rho = s["rho"]
    vals = [v for v in rho["per_unit"].values() if v is not None]
    ax.scatter(range(len(vals)), vals, s=10, color=COLOURS[0], label="Spearman $\\rho$ per unit")
    lo, hi = rho["ci"]
    if rho["mean"] is not None and lo is not None:
        ax.axhspan(lo, hi, color=COLOURS[0], alpha=0.15, label=f"mean {rho['mean']:+.2f}, {100 * rho['level']:g}% CI")
        ax.axhline(rho["mean"], color=COLOURS[0])
    ax.axhline(0.53, color=COLOURS[1], ls="--", label="paper: 0.53")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("unit (world, seed)")
    ax.set_title("Spearman $\\rho$(initial Non, Gen gain)")
    legend_below(fig, axes)
    style_caption(fig, f"Left: mean ± 1 s.e. over {rho.get('n', len(vals))} units per cell. Right: one point per unit; "
                       f"band: the {100 * rho['level']:g}% t interval of the mean over units.")
    return finish(fig, out_dir, result)


@styled
def draw_n_candidates(result: dict, out_dir: str | Path) -> list[Path]:
    """The N-candidates ablation: training-set size against ``N`` and the change of Gen and of the
    false-positive rate against ``N`` (mean ± s.e. over units). (Example in the module docstring.)"""
    rows = result["summary"]["rows"]
    fig, axes = panels(3, height=2.3)
    ns = [r["n"] for r in rows]
    axes[0].errorbar(ns, [_m(r["train_size"]) for r in rows], yerr=[_e(r["train_size"]) for r in rows], marker="o",
                     ms=3, color=COLOURS[0])
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_title("training-set size")
    for ax, key, name in ((axes[1], "exact_gen_acc", "Gen"), (axes[2], "exact_pre_fp_rate", "Und FP rate")):
        ax.errorbar(ns, [_m(r["change"][key]) for r in rows], yerr=[_e(r["change"][key]) for r in rows], marker="o",
                    ms=3, color=COLOURS[0])
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_title(f"change of {name} (exact)")
    for ax in axes:
        ax.set_xlabel("candidates per prompt $N$")
    n = max([int(r["train_size"][2] or 0) for r in rows], default=0)
    style_caption(fig, f"Points: mean ± 1 s.e. over {n} units (world, seed); change = after - before training."
                  if n > 1 else "One unit: no error bars.")
    return finish(fig, out_dir, result)

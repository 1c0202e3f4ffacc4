"""Poor supervision: judges that fail the way real judges fail, read against the unfiltered control
(only draws what :func:`dynamics.sim.poor_supervision.poor_supervision_scan` or
:func:`dynamics.toy.ablations.toy_poor_supervision` returns).

Two figures: ``<name>`` (PNG, PDF and the JSON of the numbers) draws the change beyond the control of
Gen accuracy, of the understanding's false-positive rate and of Non against the look-alike judge's
``p`` (top row) and the ``pr`` judge's precision (bottom row), one line per coupling, each marker
filled with the colour of the arm's phase; ``<name>_phase`` (PNG, PDF) is the phase diagram of every
coupling and judge (:func:`dynamics.figures.phase.plot_phase_diagram`).

    >>> import tempfile
    >>> row = lambda g, ph: {"phase": ph, "gen": (g, 0.01, 16), "fp": (-g / 4, 0.005, 16),
    ...                      "exact_non_unification": (-0.1, 0.01, 16), "final_exact_win_rate": (g, 0.01, 16)}
    >>> rows = {"bayes": {"self": row(0.2, "co-improvement"), "lookalike:1": row(0.1, "co-improvement"),
    ...                   "pr:0.5,0.3": row(-0.05, "co-degradation")}}
    >>> nan = (float("nan"), float("nan"), 0)
    >>> alarm = {"bayes": {"false_alarm_rate": (0.1, 0.05, 32), "miss_rate": (0.2, 0.1, 16),
    ...                    "co_degradation_miss_rate": nan, "degrading_arms": ["pr:0.5,0.3"], "co_degrading_arms": []}}
    >>> result = {"name": "demo", "summary": {"rows": rows, "alarm": alarm, "lookalike_ps": [1.0],
    ...           "precisions": [0.5], "recall": 0.3, "worlds": [0, 1], "alpha": 0.01, "alarm_tolerance": 0.01},
    ...           "plot": {"couplings": ["bayes"], "judges": ["self", "lookalike:1", "pr:0.5,0.3"]}}
    >>> [p.name for p in draw_poor_supervision(result, tempfile.mkdtemp())]
    ['demo.png', 'demo.pdf', 'demo_phase.png', 'demo_phase.pdf', 'demo.json']
"""

from __future__ import annotations

import math
from pathlib import Path

from dynamics.figures.common import error_bar, save_figure, write_summary
from dynamics.figures.phase import PHASE_COLOURS, plot_phase_diagram
from dynamics.figures.style import arm_styles, legend_below, panels, styled
from dynamics.figures.style import caption as style_caption

__all__ = ["draw_poor_supervision", "plot_poor_supervision"]

_PANELS = (("gen", r"$\Delta$Gen accuracy"), ("fp", r"$\Delta$FP rate"), ("non", r"$\Delta$Non"))
_MARKERS = {"decoupled": "s", "trunk": "^", "tied": "D", "bayes": "o"}


def _pct(v) -> str:
    m, se, n = v
    return "n/a" if n == 0 or math.isnan(m) else f"{100 * m:.0f} ± {100 * error_bar(se):.0f} % (n {n})"


@styled
def plot_poor_supervision(summary: dict, couplings, *, title: str, caption: str = "", non_key: str = "exact_non_unification"):
    """The changes beyond the control against the judge's knob (see the module docstring); ``non_key``:
    the row key of Non's change."""
    fig, flat = panels(6, height=2.1)
    axes = [flat[:3], flat[3:]]
    look = arm_styles(list(couplings))
    series = (("lookalike", [f"lookalike:{p:g}" for p in summary["lookalike_ps"]], summary["lookalike_ps"],
               "look-alike judge: $p$"),
              ("pr", [f"pr:{q:g},{summary['recall']:g}" for q in summary["precisions"]], summary["precisions"],
               f"pr judge: precision (recall {summary['recall']:g})"))
    for i, (_, judges, xs, xlabel) in enumerate(series):
        for j, (key, label) in enumerate(_PANELS):
            key = non_key if key == "non" else key
            ax = axes[i][j]
            ax.axhline(0.0, color="grey", lw=0.6)
            for c in couplings:
                by = summary["rows"].get(c, {})
                pts = [(x, by[jd]) for x, jd in zip(xs, judges) if jd in by]
                if not pts:
                    continue
                x = [p[0] for p in pts]
                y = [100 * p[1][key][0] for p in pts]
                e = [100 * error_bar(p[1][key][1]) for p in pts]
                st = look[c]
                ax.errorbar(x, y, yerr=e, lw=1, color=st["color"], ls=st["ls"], label=f"coupling {c} (line)")
                ax.scatter(x, y, marker=_MARKERS.get(c, "o"), s=30, zorder=3, edgecolors=st["color"],
                           c=[PHASE_COLOURS[p[1]["phase"]] for p in pts], linewidths=1.2)
            if i == 1:
                ax.invert_xaxis()
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} (points)")
    from matplotlib.patches import Patch

    handles = [h for h in flat[0].get_legend_handles_labels()[0]]
    handles += [Patch(facecolor=col, edgecolor="black", lw=0.5, label=f"phase: {name} (marker fill)")
                for name, col in PHASE_COLOURS.items()]
    legend_below(fig, handles=handles, labels=[h.get_label() for h in handles], ncol=3)
    fig.suptitle(title)
    style_caption(fig, caption)
    return fig


def _units(summary: dict) -> str:
    if "worlds" in summary:
        return f"{len(summary['worlds'])} worlds x seeds"
    return f"{len(summary.get('units', []))} (world, seed) units"


@styled
def draw_poor_supervision(result: dict, out_dir: str | Path) -> list[Path]:
    """Both figures and the numbers: ``<name>.png/.pdf``, ``<name>_phase.png/.pdf``, ``<name>.json``."""
    s, plot = result["summary"], result["plot"]
    keys = plot.get("keys") or {"non": "exact_non_unification", "win": "exact_win_rate"}
    scale = plot.get("scale", "simulator")
    couplings = [c for c in plot["couplings"] if c in s["rows"]]
    n = max((row["gen"][2] for c in couplings for row in s["rows"][c].values() if "gen" in row), default=0)
    fig = plot_poor_supervision(s, couplings, non_key=keys["non"],
                                title=f"poor supervision (SFT, {scale}): change beyond the control 'all'",
                                caption=f"Points: mean ± 1 s.e. over {n} units ({_units(s)}), "
                                        "paired with the unfiltered control 'all'. Top: the look-alike judge accepts near misses "
                                        "with probability p; bottom: the pr judge at a set precision and recall, its "
                                        "errors near misses first. FP: the understanding's false positives on the "
                                        "pre-trained samples.")
    paths = save_figure(fig, out_dir, result["name"])
    alarm = "; ".join(f"{c}: false alarms {_pct(a['false_alarm_rate'])}, misses {_pct(a['miss_rate'])} "
                      f"(co-degrading with Non falling: {_pct(a['co_degradation_miss_rate'])})"
                      for c, a in s["alarm"].items())
    caption = (f"Beyond the unfiltered control (points; {_units(s)}); phase by one-sided paired "
               f"t at alpha = {s['alpha']}. Co-degradation alarm (tolerance {s['alarm_tolerance']:g}): {alarm}.")
    judges = [j for j in plot["judges"] if all(j in s["rows"][c] for c in couplings)]
    fig = plot_phase_diagram({c: s["rows"][c] for c in couplings}, couplings, judges, win_key=keys["win"],
                             caption=caption, title=f"poor supervision: coupling x judge (SFT, {scale})")
    paths += save_figure(fig, out_dir, f"{result['name']}_phase")
    return paths + [write_summary(out_dir, result["name"], s)]

"""The phase diagram: coupling x judge, each cell coloured by the arm's phase (only draws).

The rows are what :func:`dynamics.study.phase_of` returns as dicts (``phase``, ``gen``, ``fp`` and the
further keys, each ``(mean, s.e., n)``), ``{coupling: {judge: row}}``; the scales' experiments
(:func:`dynamics.sim.experiments.phase_diagram`, :func:`dynamics.toy.experiments.toy_phase_diagram`)
make them.

    >>> row = {"phase": "co-improvement", "gen": (0.2, 0.01, 16), "fp": (-0.07, 0.006, 16)}
    >>> fig = plot_phase_diagram({"bayes": {"self": row}}, ["bayes"], ["self"], title="demo")
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dynamics.figures.common import pyplot
from dynamics.figures.style import styled

__all__ = ["PHASE_COLOURS", "plot_phase_diagram"]

PHASE_COLOURS = {
    "co-improvement": "#7fc97f",
    "co-degradation": "#f0027f",
    "drift": "#fdc086",
    "no transfer": "#bdbdbd",
    "undetermined": "#ffffff",
}


def _pm(v, scale: float = 100.0) -> str:
    mean, se, _ = v
    return f"{scale * mean:+.1f} ± {scale * se:.1f}"


@styled
def plot_phase_diagram(rows: Mapping[str, Mapping[str, Mapping]], couplings: Sequence[str], judges: Sequence[str],
                       *, title: str, win_key: str | None = None, caption: str = "",
                       missing: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None):
    """One cell per (coupling, judge): the phase as colour, the change beyond the control of Gen
    accuracy and of the false-positive rate (points, mean ± s.e.) and, with ``win_key``, the final
    win rate. A coupling without a row is drawn hatched with its reason from ``missing``; ``labels``
    replace the couplings' tick labels. Judges run across and couplings down; with more than four
    judges (more than fit a page's width) the diagram is transposed."""
    from matplotlib.patches import Patch, Rectangle

    plt = pyplot()
    # judges across, couplings down; more judges than fit a page's width (four): transposed
    flip = len(judges) > 4
    across, down = (couplings, judges) if flip else (judges, couplings)
    fig, ax = plt.subplots(figsize=(min(7.0, 1.4 + 1.9 * len(across)), 0.9 + 0.85 * len(down)))

    def at(c: int, j: int) -> tuple[int, int]:  # (x, y) of coupling index c, judge index j
        return (c, j) if flip else (j, c)

    for i, c in enumerate(couplings):
        if c not in rows:
            x, y = at(i, 0)
            w, h = (1, len(judges)) if flip else (len(judges), 1)
            ax.add_patch(Rectangle((x, y), w, h, facecolor="white", hatch="//", edgecolor="grey", lw=0.5))
            ax.text(x + w / 2, y + h / 2, (missing or {}).get(c, "not measured"), ha="center", va="center",
                    fontsize=7, rotation=90 if flip else 0, bbox={"facecolor": "white", "edgecolor": "none"})
            continue
        for j, judge in enumerate(judges):
            row = rows[c][judge]
            x, y = at(i, j)
            ax.add_patch(Rectangle((x, y), 1, 1, facecolor=PHASE_COLOURS[row["phase"]], edgecolor="black", lw=0.5))
            lines = [f"ΔGen {_pm(row['gen'])}", f"ΔFP {_pm(row['fp'])}"]
            if win_key and f"final_{win_key}" in row:
                m, se, _ = row[f"final_{win_key}"]
                lines.append(f"win {100 * (m + 0.5):.0f} ± {100 * se:.0f}")
            ax.text(x + 0.5, y + 0.5, "\n".join(lines), ha="center", va="center", fontsize=7)
    names = {"coupling": [(labels or {}).get(c, c) for c in couplings], "judge": list(judges)}
    xname, yname = ("coupling", "judge") if flip else ("judge", "coupling")
    ax.set_xlim(0, len(across))
    ax.set_ylim(len(down), 0)
    ax.set_xticks([j + 0.5 for j in range(len(across))], names[xname], fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(down))], names[yname], fontsize=8)
    ax.set_xlabel(xname, fontsize=8)
    ax.set_ylabel(yname, fontsize=8)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)
    handles = [Patch(facecolor=col, edgecolor="black", lw=0.5, label=name) for name, col in PHASE_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    if caption:
        fig.text(0.5, -0.08, caption, ha="center", va="top", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig

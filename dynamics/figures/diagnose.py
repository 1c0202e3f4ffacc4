"""The diagnosis figure, like the paper's Fig. 2c (only draws): per model, Non per task, the
weak-generation attribution per task (with the 50 % line above which the generator is at fault),
and Non per difficulty tier.

The rows are :meth:`dynamics.diagnose.Diagnosis.rows` (``group`` = ``overall``, ``tag:<task>`` or
``tier:<tier>``; rates in [0, 1], NaN where undefined), ``{model: rows}``.

    >>> rows = [{"group": "overall", "non_unification": 0.3, "attribution": 0.6},
    ...         {"group": "tag:color", "non_unification": 0.2, "attribution": 0.7},
    ...         {"group": "tier:medium", "non_unification": 0.3, "attribution": 0.6}]
    >>> fig = plot_diagnosis({"m": rows})
    >>> len(fig.axes)
    3
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from dynamics.figures.style import COLOURS, caption, legend_below, panel_title, panels, styled

__all__ = ["plot_diagnosis"]


def _bars(ax, rows_by_model: Mapping[str, Sequence[dict]], prefix: str, key: str) -> None:
    names = list(rows_by_model)
    groups: list[str] = []
    for rows in rows_by_model.values():
        groups += [r["group"] for r in rows if r["group"].startswith(prefix) and r["group"] not in groups]
    width = 0.8 / max(1, len(names))
    hatches = (None, "//", "..", "xx")
    for i, name in enumerate(names):
        by = {r["group"]: r for r in rows_by_model[name]}
        vals = [100 * v if (v := (by.get(g) or {}).get(key)) is not None and not math.isnan(v) else 0.0
                for g in groups]
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(groups))], vals, width, label=name,
               color=COLOURS[i % len(COLOURS)], hatch=hatches[(i // len(COLOURS)) % len(hatches)])
    ax.set_xticks(range(len(groups)), [g[len(prefix):] for g in groups], rotation=30, ha="right")
    ax.set_ylim(0, 100)


@styled
def plot_diagnosis(rows_by_model: Mapping[str, Sequence[dict]], *, title: str | None = None):
    """Three panels: Non (%) per task, attribution (%) per task (dashed: 50 %), Non (%) per tier;
    one bar per model, the legend below. A missing value (no external judge) draws no bar."""
    fig, axes = panels(3, height=2.6)
    _bars(axes[0], rows_by_model, "tag:", "non_unification")
    axes[0].set_ylabel("Non (%)")
    panel_title(axes[0], "Non per task")
    _bars(axes[1], rows_by_model, "tag:", "attribution")
    axes[1].axhline(50, color="k", ls="--", lw=0.8)
    axes[1].set_ylabel("attribution (%)")
    panel_title(axes[1], "weak-generation attribution per task")
    _bars(axes[2], rows_by_model, "tier:", "non_unification")
    axes[2].set_ylabel("Non (%)")
    panel_title(axes[2], "Non per difficulty tier")
    legend_below(fig, axes[:1])
    if title:
        fig.suptitle(title)
    caption(fig, "Bars: one sample set per model (no error bars: one seed). Attribution above the dashed 50 % "
                 "line: the generator, not the understanding, is at fault; no bar: no external judge.")
    return fig

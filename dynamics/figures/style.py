"""One figure style for every drawing of the package: sizes that fit a paper page, legends outside the
data, a colour *and* a line style per arm, the paper's symbols in mathtext, and a caption line saying
what the bands are and over how many seeds and worlds.

Rules (each has a helper here, and :mod:`tests.test_figures` checks the first two on every figure):

- at most :data:`WIDTH` inches wide (a page's text width), panels in rows of at most :data:`MAX_COLS`
  (:func:`panels`);
- the legend outside every axes, below them (:func:`legend_below`);
- arms told apart by colour and line style together (:func:`arm_style`; the unfiltered control ``all``
  grey dashed, the ``oracle`` black dotted), so they survive greyscale printing and overlapping bands;
- labels in mathtext with the paper's symbols (:data:`SYMBOLS`);
- a caption under every figure naming the bands and their number of seeds / worlds (:func:`caption`,
  :func:`band_caption`); no error bar where there is one seed (:func:`yerr`);
- a win rate carries its denominator and is greyed where it rests on fewer than :data:`MIN_WIN_N`
  disagreements (:func:`win_rate_style`);
- a smoke-test size says so across the figure (:func:`smoke_banner`).

matplotlib's backend is never chosen here (see :mod:`dynamics.figures.common`).

    >>> arm_style(0)["ls"] != arm_style(1)["ls"] and arm_style(0)["color"] != arm_style(1)["color"]
    True
    >>> band_caption(4, worlds=2)
    'Lines: mean over 8 units (2 worlds x 4 seeds); bands: ± 1 standard error across units.'
    >>> band_caption(1)
    'One seed: no band or error bar (no error estimate from one run).'
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

__all__ = [
    "COLOURS",
    "CONTROL_STYLES",
    "FONT",
    "LINESTYLES",
    "MARKERS",
    "MAX_COLS",
    "MIN_WIN_N",
    "RC",
    "SYMBOLS",
    "WIDTH",
    "arm_style",
    "arm_styles",
    "band_caption",
    "caption",
    "legend_below",
    "panel_title",
    "panels",
    "smoke_banner",
    "styled",
    "win_rate_style",
    "yerr",
]

WIDTH = 7.0  # inches: the text width of a paper page; a column is half of it
MAX_COLS = 3  # panels per row
MIN_WIN_N = 5  # a win rate over fewer disagreements than this is drawn grey (it says little)
FONT = 8.0

# matplotlib settings every figure is drawn under (rcParams are read when an artist is made)
RC = {
    "font.size": FONT,
    "axes.titlesize": FONT + 1,
    "axes.labelsize": FONT,
    "xtick.labelsize": FONT - 1,
    "ytick.labelsize": FONT - 1,
    "legend.fontsize": FONT - 1,
    "legend.frameon": False,
    "figure.titlesize": FONT + 2,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 3.5,
    "errorbar.capsize": 0,
    "savefig.dpi": 150,
}

# Okabe-Ito: distinguishable under the common colour-vision deficiencies
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CONTROL_STYLES = {"all": {"color": "0.45", "ls": "--", "marker": "x"},
                  "oracle": {"color": "k", "ls": ":", "marker": "+"}}

# the paper's symbols (mathtext)
SYMBOLS = {
    "delta_g": r"$\Delta G = \Delta \log \pi(x_0 \mid y_0)$",
    "delta_u": r"$\Delta U = \Delta \log \pi(y_0 \mid x_0)$",
    "dG": r"$\Delta G$",
    "dU": r"$\Delta U$",
    "eta": r"step size $\eta$",
    "dominance": r"$\log_{10} \|K(Y_0, Y_u)\| \,/\, \|K(Y_i, Y_u)\|$",
    "rel_error": r"$\|\Delta_{\rm measured} - \Delta_{\rm predicted}\| \,/\, \|\Delta_{\rm predicted}\|$",
    "gen_logp": r"$\log \pi(x \mid y)$",
    "und_logp": r"$\log P(\mathrm{yes} \mid x, y)$",
    "Non": "Non",
}


def arm_style(i: int) -> dict:
    """Colour, line style and marker of the ``i``-th arm: colour and line style both change from one
    arm to the next (8 x 4 combinations before one repeats)."""
    return {"color": COLOURS[i % len(COLOURS)], "ls": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def arm_styles(labels: Sequence[str]) -> dict[str, dict]:
    """:func:`arm_style` per label in order, the controls ``all`` and ``oracle`` in their fixed styles.

    >>> arm_styles(["self", "all", "corrupt:0.6"])["all"]["ls"], arm_styles(["self", "corrupt"])["corrupt"]["ls"]
    ('--', '--')
    """
    out, i = {}, 0
    for label in labels:
        if label in CONTROL_STYLES:
            out[label] = dict(CONTROL_STYLES[label])
        else:
            out[label] = arm_style(i)
            i += 1
    return out


def panels(n: int, *, height: float = 2.2, width: float = WIDTH, cols: int | None = None, figure=None):
    """A figure of ``n`` panels in rows of at most :data:`MAX_COLS` (``cols``), ``width`` inches wide and
    ``height`` inches per row, laid out by matplotlib's constrained layout (which keeps room for a
    legend placed ``outside``). Returns ``(fig, axes)`` with exactly ``n`` axes (a list). ``figure``:
    a ``Figure`` class to build without pyplot (a run's plots never touch the session's backend).

    >>> fig, axes = panels(4)
    >>> len(axes), fig.get_size_inches().tolist()
    (4, [7.0, 4.4])
    """
    import matplotlib

    cols = min(n, cols or MAX_COLS)
    if not 1 <= cols <= MAX_COLS:
        raise ValueError(f"panels: rows of 1 to {MAX_COLS} panels, got cols={cols} for n={n}")
    rows = -(-n // cols)
    if figure is None:
        from dynamics.figures.common import pyplot

        figure = pyplot().figure
    with matplotlib.rc_context(RC):
        fig = figure(figsize=(min(width, WIDTH), height * rows), layout="constrained")
        grid = fig.subplots(rows, cols, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def legend_below(fig, axes=None, *, handles=None, labels=None, ncol: int | None = None, title: str | None = None):
    """One legend for the figure, below every axes (outside the data), collected from ``axes`` (all of
    the figure's by default; duplicate labels once) unless ``handles`` are given. Needs a figure of
    :func:`panels` (constrained layout). Returns the legend (``None`` when there is nothing to show)."""
    if handles is None:
        seen: dict[str, object] = {}
        for ax in axes if axes is not None else fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if not lab.startswith("_"):
                    seen.setdefault(lab, h)
        handles, labels = list(seen.values()), list(seen)
    elif labels is None:
        labels = [h.get_label() for h in handles]
    if not handles:
        return None
    chars = max(len(str(lab)) for lab in labels) + 4
    per_row = max(1, int(fig.get_size_inches()[0] * 72 / (0.55 * FONT * chars)))
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(handles), per_row),
                      fontsize=FONT - 1, title=title, title_fontsize=FONT - 1, frameon=False)


def caption(fig, text: str) -> None:
    """A caption under the figure's panels, wrapped to the figure's width: the title of the legend
    below the panels (:func:`legend_below`; a legend of its own when there is none), so that the layout
    keeps room for it and nothing overlaps. On a figure without constrained layout: text under the
    figure (saved with ``bbox_inches="tight"``). Call it after :func:`legend_below`."""
    if not text:
        return
    width_chars = max(40, int(fig.get_size_inches()[0] * 72 / (0.52 * (FONT - 1))))
    wrapped = textwrap.fill(text, width_chars)
    engine = fig.get_layout_engine()
    if engine is None or type(engine).__name__ != "ConstrainedLayoutEngine":
        fig.text(0.0, 0.0, wrapped, ha="left", va="top", fontsize=FONT - 1, color="0.2")
        return
    legend = next((g for g in reversed(fig.legends) if getattr(g, "_outside_loc", None)), None)
    if legend is None:
        legend = fig.legend(handles=[], loc="outside lower center", frameon=False)
    old = legend.get_title().get_text()
    legend.set_title(wrapped + (f"\n{old}" if old else ""), prop={"size": FONT - 1})
    legend.get_title().set_color("0.2")
    legend.set_alignment("left")


def panel_title(ax, text: str) -> None:
    """``ax``'s title, wrapped to the panel's width (so neighbouring titles never run into each other)."""
    fig = ax.get_figure()
    width_in = ax.get_position().width * fig.get_size_inches()[0]
    ax.set_title(textwrap.fill(text, max(16, int(width_in * 72 / (0.55 * (FONT + 1))))))


def band_caption(seeds: int, *, worlds: int = 1, what: str = "Lines", spread: str = "bands") -> str:
    """The caption sentence for ``seeds`` seeds in each of ``worlds`` worlds: what the lines and bands
    are, over how many units (examples in the module docstring)."""
    n = seeds * worlds
    if n <= 1:
        return "One seed: no band or error bar (no error estimate from one run)."
    unit = f"{n} units ({worlds} worlds x {seeds} seeds)" if worlds > 1 else f"{seeds} seeds"
    across = "units" if worlds > 1 else "seeds"
    return f"{what}: mean over {unit}; {spread}: ± 1 standard error across {across}."


def yerr(se, n) -> float | None:
    """An error bar's half-length: the standard error, or ``None`` (no bar, no cap) for fewer than two
    seeds or a missing value.

    >>> yerr(0.2, 4), yerr(0.0, 1), yerr(float("nan"), 4)
    (0.2, None, None)
    """
    if se is None or n is None or (isinstance(n, float) and math.isnan(n)) or n < 2:
        return None
    return None if math.isnan(se) else float(se)


def win_rate_style(n) -> dict:
    """Drawing keywords of a win rate over ``n`` disagreements: greyed (and hatched) under
    :data:`MIN_WIN_N`, where one or two flips move it by tens of points.

    >>> win_rate_style(2)["alpha"], win_rate_style(12)["alpha"]
    (0.35, 1.0)
    """
    small = n is None or (isinstance(n, float) and math.isnan(n)) or n < MIN_WIN_N
    return {"alpha": 0.35, "hatch": "///"} if small else {"alpha": 1.0, "hatch": None}


def smoke_banner(fig, why: str) -> None:
    """Write "SMOKE TEST" with ``why`` across the figure (a quick size whose numbers are not results)."""
    fig.text(0.5, 0.5, "SMOKE TEST: not a result", ha="center", va="center", fontsize=20, color="red",
             alpha=0.25, rotation=20, transform=fig.transFigure, zorder=100)
    message = f"SMOKE TEST ({why}): the numbers below are not results"
    engine = fig.get_layout_engine()
    if engine is None or type(engine).__name__ != "ConstrainedLayoutEngine":  # a laid-out figure: above it
        fig.text(0.5, 1.0, message, ha="center", va="bottom", color="red", fontsize=FONT + 1)
        return
    old = fig.get_suptitle()
    fig.suptitle(message + (f"\n{old}" if old else ""), color="red", fontsize=FONT + 1)


def styled(fn):
    """Run the drawing function ``fn`` under :data:`RC` (matplotlib reads rcParams when it makes an
    artist, so every title, label and legend of the figure gets the style), leaving the caller's
    settings as they were."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper

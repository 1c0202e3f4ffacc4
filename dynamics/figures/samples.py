"""Sample grids that show the self-contradiction: for each generated image the exact verdict (the
external judge) and the model's own verdict on it (its ``P(yes)``), before and after training, side
by side for the same prompts and seeds.

Every image falls in one of four cases (:data:`CASES`), by the exact verdict and the model's own
verdict at the acceptance threshold:

- ``both accept``: the image is correct and the model says yes;
- ``both reject``: the image is wrong and the model says no;
- ``rejects correct``: the model rejects an image that is correct (a false negative of its understanding);
- ``accepts wrong``: the model accepts an image that is wrong (a false positive: the model's own
  generation fooled its understanding).

The cell's frame colour is its case, a bar under the image is the model's ``P(yes)`` (with its value and
the threshold as a tick), a mark in the corner the exact verdict (✓ correct, ✗ wrong); a cell of the
"after" block whose case changed from "before" has a dashed outline and a black Δ badge. The title counts the four
cases of each block. Only draws: the verdicts and probabilities are the caller's (``model.judge`` and
the external judge); images are drawn by ``draw(ax, image)`` (a toy scene:
:func:`dynamics.toy.world.draw_scene`; a decoded image: ``ax.imshow``, the default).

    >>> import numpy as np
    >>> imgs = np.zeros((2, 3, 4, 4, 3))
    >>> exact = [[True, False, True], [False, False, True]]
    >>> p = [[0.9, 0.8, 0.2], [0.1, 0.4, 0.7]]
    >>> fig = plot_sample_grid({"before": imgs, "after": imgs}, {"before": exact, "after": exact},
    ...                        {"before": p, "after": [[0.9, 0.1, 0.8], [0.1, 0.4, 0.7]]}, prompts=["a", "b"])
    >>> case_counts(exact, p)
    {'both accept': 2, 'both reject': 2, 'rejects correct': 1, 'accepts wrong': 1}
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dynamics.figures.style import FONT, RC

__all__ = ["CASES", "case_counts", "case_of", "draw_sample_grid", "plot_sample_grid", "write_sample_grids"]

# case -> frame colour (Okabe-Ito): agreement in calm colours, the two contradictions loud
CASES = {
    "both accept": "#009E73",
    "both reject": "#56B4E9",
    "rejects correct": "#E69F00",
    "accepts wrong": "#D55E00",
    "says yes": "#555555",
    "says no": "#BBBBBB",
}
_VERDICT_CASES = ("both accept", "both reject", "rejects correct", "accepts wrong")
_OWN_CASES = ("says yes", "says no")  # where the judge gives no verdict on the image
_KEY = {
    "both accept": "both accept (correct, model says yes)",
    "both reject": "both reject (wrong, model says no)",
    "rejects correct": "model rejects a correct image",
    "accepts wrong": "model accepts a wrong image",
    "says yes": "model says yes (no external verdict)",
    "says no": "model says no (no external verdict)",
}


def case_of(correct: bool | None, p_yes: float, threshold: float = 0.5) -> str:
    """The case (a key of :data:`CASES`) of an image with exact verdict ``correct`` (``None``: no
    verdict, the case is the model's own alone) and model ``p_yes``.

    >>> case_of(False, 0.7), case_of(True, 0.3), case_of(None, 0.3)
    ('accepts wrong', 'rejects correct', 'says no')
    """
    says_yes = p_yes >= threshold
    if correct is None:
        return "says yes" if says_yes else "says no"
    if correct:
        return "both accept" if says_yes else "rejects correct"
    return "accepts wrong" if says_yes else "both reject"


def _rows(x, like=None) -> list[list]:
    """``x`` as nested lists; ``None`` as rows of ``None`` shaped like ``like``."""
    if x is None:
        return [[None] * len(row) for row in _rows(like)]
    return [list(map(_scalar, row)) for row in _tolist(x)]


def _tolist(x):
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


def case_counts(exact, p_yes, threshold: float = 0.5) -> dict[str, int]:
    """How many images of a ``(B, K)`` block fall in each case (example in the module docstring)."""
    counts = dict.fromkeys(_OWN_CASES if exact is None else _VERDICT_CASES, 0)
    for row_e, row_p in zip(_rows(exact, p_yes), _rows(p_yes)):
        for e, p in zip(row_e, row_p):
            counts[case_of(None if e is None else bool(e), float(p), threshold)] += 1
    return counts


def _imshow(ax, image) -> None:
    import numpy as np

    ax.imshow(np.asarray(image))
    ax.set_xticks([])
    ax.set_yticks([])


def _counts_line(name: str, counts: Mapping[str, int]) -> str:
    return f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def plot_sample_grid(images: Mapping[str, Sequence], exact: Mapping[str, Sequence] | None,
                     p_yes: Mapping[str, Sequence], *,
                     prompts: Sequence[str], draw: Callable | None = None, threshold: float = 0.5,
                     title: str | None = None, verdict: str = "exact", figure=None):
    """The grid: a row per prompt, per block (``"before"``, ``"after"``: the keys of ``images``, in order)
    its ``K`` images side by side. ``images[block][b][k]`` is drawn by ``draw(ax, image)`` (default
    ``imshow``); ``exact[block]`` the ``(B, K)`` exact verdicts (``exact`` ``None``: no verdicts, each
    image framed by the model's own verdict alone), ``p_yes[block]`` the model's ``(B, K)``
    own ``P(yes)`` (each block's model judging its own samples). ``verdict`` names the judge of
    ``exact`` in the key (``exact``; ``external judge`` for real models). ``figure``: a ``Figure``
    class to build without pyplot. Returns the figure."""
    import matplotlib
    from matplotlib.patches import Patch, Rectangle

    blocks = list(images)
    if not blocks:
        raise ValueError("plot_sample_grid: no block of images")
    exact = exact if exact is not None else dict.fromkeys(blocks)
    B = len(prompts)
    K = len(images[blocks[0]][0]) if B else 0
    for name in blocks:
        e, p = _rows(exact[name], p_yes[name]), _rows(p_yes[name])
        if len(images[name]) != B or len(e) != B or len(p) != B or any(len(r) != K for r in e + p):
            raise ValueError(f"plot_sample_grid: block {name!r} must hold {B} prompts x {K} images, verdicts and "
                             f"P(yes) alike")
    draw = draw or _imshow
    cases = {n: [[case_of(None if e is None else bool(e), float(p), threshold) for e, p in zip(re, rp)]
                 for re, rp in zip(_rows(exact[n], p_yes[n]), _rows(p_yes[n]))] for n in blocks}
    probs = {n: _rows(p_yes[n]) for n in blocks}
    exacts = {n: _rows(exact[n], p_yes[n]) for n in blocks}
    shown = [c for c in CASES if any(c in row for n in blocks for row in cases[n])] or list(_VERDICT_CASES)
    cell = min(0.9, 6.6 / (len(blocks) * K + 0.4 * (len(blocks) - 1)))
    if figure is None:
        from dynamics.figures.common import pyplot

        figure = pyplot().figure
    with matplotlib.rc_context(RC):
        fig = figure(figsize=(min(7.0, cell * len(blocks) * K + 0.4 * (len(blocks) - 1) + 0.2),
                              B * (cell + 0.55) + 1.2), layout="constrained")
        head, *rows = fig.subfigures(B + 1, 1, squeeze=False, height_ratios=[0.3] + [1.0] * B)[:, 0]
        ratios = []
        for j in range(len(blocks)):
            ratios += [1.0] * K + ([0.35] if j < len(blocks) - 1 else [])
        for j, name in enumerate(blocks):  # each block's name over its columns
            centre = (j * (K + 0.35) + K / 2) / sum(ratios)
            head.text(centre, 0.2, name, ha="center", va="bottom", fontsize=FONT + 2, fontweight="bold")
        for b, sub in enumerate(rows):
            sub.suptitle(textwrap.shorten(str(prompts[b]), 110), fontsize=FONT + 1, x=0.01, ha="left")
            axes = sub.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios}, squeeze=False)[0]
            col = 0
            for j, name in enumerate(blocks):
                for k in range(K):
                    ax = axes[col]
                    col += 1
                    draw(ax, images[name][b][k])
                    case = cases[name][b][k]
                    changed = j > 0 and case != cases[blocks[0]][b][k]
                    for spine in ax.spines.values():
                        spine.set_visible(True)
                        spine.set_edgecolor(CASES[case])
                        spine.set_linewidth(3.0)
                        if changed:
                            spine.set_linestyle((0, (2, 1)))
                            spine.set_linewidth(4.5)
                    if exacts[name][b][k] is not None:
                        ax.text(0.96, 0.96, "✓" if exacts[name][b][k] else "✗", transform=ax.transAxes, ha="right",
                                va="top", fontsize=FONT + 1, color="k",
                                bbox={"boxstyle": "circle,pad=0.1", "facecolor": "white", "edgecolor": "none",
                                      "alpha": 0.8})
                    p = probs[name][b][k]
                    bar = ax.inset_axes((0.0, -0.26, 1.0, 0.14))
                    bar.add_patch(Rectangle((0, 0), p, 1, facecolor=CASES[case], edgecolor="none"))
                    bar.axvline(threshold, color="k", lw=0.8)
                    bar.set_xlim(0, 1)
                    bar.set_ylim(0, 1)
                    bar.set_xticks([])
                    bar.set_yticks([])
                    for s in bar.spines.values():
                        s.set_linewidth(0.4)
                    ax.text(0.5, -0.30, f"{p:.2f}", transform=ax.transAxes, ha="center", va="top", fontsize=FONT - 1)
                    if changed:
                        ax.text(0.04, 0.96, "Δ", transform=ax.transAxes, ha="left", va="top", fontsize=FONT,
                                color="white", fontweight="bold",
                                bbox={"boxstyle": "round,pad=0.15", "facecolor": "k", "edgecolor": "none"})
                if j < len(blocks) - 1:
                    axes[col].axis("off")
                    col += 1
        counts = "\n".join(_counts_line(n, case_counts(exact[n], p_yes[n], threshold)) for n in blocks)
        fig.suptitle(((title + "\n") if title else "") + counts, fontsize=FONT + 1)
        handles = [Patch(facecolor="white", edgecolor=CASES[k], lw=2.5, label=_KEY[k]) for k in shown]
        if len(blocks) > 1:
            handles.append(Patch(facecolor="white", edgecolor="k", lw=2.5, ls=(0, (2, 1)),
                                 label=f"Δ, dashed: case changed from {blocks[0]}"))
        key = ("frame: case; " + ("" if all(e is None for e in exact.values()) else f"✓/✗: {verdict} verdict; ")
               + f"bar and number: the model's own P(yes) (tick: acceptance threshold {threshold:g})")
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=FONT - 1, frameon=False,
                   title=key, title_fontsize=FONT - 1)
    return fig


def draw_sample_grid(path: str | Path, images, exact, p_yes, **kw) -> Path:
    """:func:`plot_sample_grid` written to ``path`` (PNG) without pyplot (a run's plots never touch the
    session's backend); returns the path."""
    from matplotlib.figure import Figure

    fig = plot_sample_grid(images, exact, p_yes, figure=Figure, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_sample_grids(out_dir: str | Path, images, exact, p_yes, **kw) -> list[Path]:
    """The grids of a run: ``samples_<block>.png`` of each block alone and ``samples.png`` of all blocks
    side by side (changed cells marked); ``exact`` may be ``None`` (no judge's verdict: the model's own
    verdicts alone); ``kw`` go to :func:`plot_sample_grid`. Returns the paths."""
    out = Path(out_dir)
    paths = [draw_sample_grid(out / f"samples_{name}.png", {name: images[name]},
                              None if exact is None else {name: exact[name]}, {name: p_yes[name]}, **kw)
             for name in images]
    if len(images) > 1:
        paths.append(draw_sample_grid(out / "samples.png", images, exact, p_yes, **kw))
    return paths

"""Figures of the simulator experiments: :mod:`dynamics.sim.experiments` runs them and returns a
result dict; this module only draws it.

Each ``draw_<figure>(result, out_dir)`` writes ``<name>.png``, ``.pdf`` and ``.json`` (the result's
``summary``) and returns the three paths. The ``plot_*`` functions draw one kind of panel and return
the figure (the notebooks use them directly).

Example (a result as :func:`dynamics.sim.experiments.eta_slope` returns it)::

    >>> import tempfile
    >>> rows = [{"lr": lr, "resid_g": (lr**2, 0.0, 1), "resid_u": (lr**2, 0.0, 1)} for lr in (0.01, 0.02)]
    >>> rows[-1].update(slope_g=2.0, slope_u=2.0)
    >>> result = {"name": "fig_eta_slope", "summary": {"rows": {"SFT": rows}}, "plot": {}}
    >>> [p.suffix for p in draw_eta_slope(result, tempfile.mkdtemp())]
    ['.png', '.pdf', '.json']
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from dynamics.figures.common import error_bar, finish, save_figure, write_summary
from dynamics.figures.phase import plot_phase_diagram
from dynamics.figures.style import (
    COLOURS,
    CONTROL_STYLES,
    MIN_WIN_N,
    SYMBOLS,
    arm_style,
    arm_styles,
    band_caption,
    legend_below,
    panel_title,
    panels,
    styled,
    yerr,
)
from dynamics.figures.style import caption as style_caption
from dynamics.report import CURVE_KEYS, LABELS, aggregate

__all__ = [
    "draw_co_improvement_vs_degradation",
    "draw_corrupt_scan",
    "draw_curriculum",
    "draw_eta_slope",
    "draw_fp_correction",
    "draw_phase_diagram",
    "draw_predicted_vs_measured",
    "draw_training_curves",
    "plot_corrupt_scan",
    "plot_curves",
    "plot_eta_slope",
    "plot_fp_correction",
    "plot_predicted_vs_measured",
    "save_figure",
    "write_curves",
    "write_summary",
]

# --------------------------------------------------------------------------------------- panels


def _curve(arm, key: str) -> list[list]:
    """``[[epoch, mean, s.e., n], ...]`` of one key: given (a curve dict of
    :func:`dynamics.sim.experiments.curves`), or aggregated from records (or an arm's ``.records``)."""
    if isinstance(arm, Mapping):
        return arm[key]
    return [[e, *v] for e, v in aggregate(getattr(arm, "records", arm), key).items()]


def _units(arms: Mapping, keys: Sequence[str]) -> int:
    """The largest number of seeds behind any point of the curves."""
    ns = [r[3] for arm in arms.values() for k in keys for r in _curve(arm, k) if len(r) > 3 and r[3] is not None]
    return int(max(ns, default=1))


def _denominators(ax, arm, key: str, xs, m, colour) -> None:
    """A win rate's mean denominator (disagreements per seed) at its last point, and the points resting
    on fewer than :data:`~dynamics.figures.style.MIN_WIN_N` disagreements drawn hollow and grey."""
    try:
        ns = {r[0]: r[1] for r in _curve(arm, f"{key}_n")}
    except (KeyError, TypeError):  # curves given without their denominators
        return
    small = [(x, y) for x, y in zip(xs, m) if ns.get(x) is None or math.isnan(ns[x]) or ns[x] < MIN_WIN_N]
    if small:
        ax.plot([x for x, _ in small], [y for _, y in small], ls="none", marker="o", ms=5, mfc="white", mec="0.6",
                zorder=3)
    last = ns.get(xs[-1]) if xs else None
    if last is not None and not math.isnan(last):
        ax.annotate(f"n = {last:.0f}", (xs[-1], m[-1]), xytext=(2, 4), textcoords="offset points", fontsize=6,
                    color=colour)


@styled
def plot_curves(
    arms: Mapping,
    keys: Sequence[str],
    *,
    title: str | None = None,
    styles: dict[str, dict] | None = None,
    caption: str | None = None,
    figure=None,
):
    """One panel per metric (rows of at most three), one line per arm: the mean across seeds with a
    band of ± one standard error (no band for one seed); colour and line style per arm, the legend
    below the panels, a caption naming the bands (``caption`` replaces it); a win rate with its mean
    denominator at the last point, hollow grey where it rests on fewer than
    :data:`~dynamics.figures.style.MIN_WIN_N` disagreements. Returns the figure.
    ``arms`` maps a label to its curves (``{key: [[epoch, mean, s.e., n], ...]}``, see
    :func:`dynamics.sim.experiments.curves`), to its records, or to an arm holding ``.records``;
    ``styles`` override the line keywords of some labels; ``figure``: a ``Figure`` class to build
    without pyplot.

    >>> recs = [{"epoch": e, "seed": s, "x": e + s} for e in (0, 1) for s in (0, 1)]
    >>> len(plot_curves({"demo": recs, "given": {"x": [[0, 0.5, 0.1, 2], [1, 1.0, 0.1, 2]]}}, ["x"]).axes)
    1
    """
    from matplotlib.ticker import MaxNLocator

    fig, axes = panels(len(keys), figure=figure)
    look = arm_styles(list(arms))
    for label, over in (styles or {}).items():
        look.setdefault(label, {}).update(over)
    for ax, key in zip(axes, keys):
        for label, arm in arms.items():
            rows = _curve(arm, key)
            xs = [r[0] for r in rows]
            m = [math.nan if r[1] is None else r[1] for r in rows]
            se = [error_bar(r[2]) if len(r) < 4 or (r[3] or 0) > 1 else 0.0 for r in rows]
            style = {"ms": 3, **look.get(label, {})}
            (line,) = ax.plot(xs, m, label=label, **style)
            if "win_rate" in key:
                _denominators(ax, arm, key, xs, m, line.get_color())
            if any(se):
                ax.fill_between(xs, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)], alpha=0.12,
                                color=line.get_color(), lw=0)
        panel_title(ax, LABELS.get(key, key))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if "win_rate" in key:
            ax.axhline(0.5, color="grey", lw=0.8, ls=(0, (1, 2)))
    if len(arms) > 1:
        legend_below(fig, axes)
    if title:
        fig.suptitle(title)
    style_caption(fig, caption if caption is not None else band_caption(_units(arms, keys)))
    return fig


def write_curves(records: Sequence[dict], path: str | Path, *, title: str,
                 keys: Sequence[str] = CURVE_KEYS) -> Path:
    """A run's ``curves.png``: :func:`plot_curves` of its records (one arm, its seeds), drawn without
    pyplot (a run's plots never touch the session's backend). Returns the path.

    >>> import tempfile, os
    >>> recs = [{"epoch": e, "seed": 0, **dict.fromkeys(CURVE_KEYS, 0.5)} for e in (0, 1)]
    >>> os.path.getsize(write_curves(recs, os.path.join(tempfile.mkdtemp(), "c.png"), title="demo")) > 0
    True
    """
    from matplotlib.figure import Figure

    fig = plot_curves({"run": records}, keys, title=textwrap.fill(title, 110), figure=Figure)
    path = Path(path)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path


@styled
def plot_corrupt_scan(
    rows: Sequence[dict],
    keys: Sequence[str],
    *,
    controls: dict[str, dict] | None = None,
    title: str | None = None,
    caption: str | None = None,
):
    """Paired change (after - before, mean ± s.e.) of each key against the corruption ``p``; the
    controls' changes (``self``: the uncorrupted judge, ``all``, ``oracle``) as horizontal lines.
    Returns the figure.

    >>> rows = [{"p": p, "x": (-p, 0.01, 2)} for p in (0.0, 0.5, 1.0)]
    >>> len(plot_corrupt_scan(rows, ["x"], controls={"all": {"x": (0.1, 0.0, 2)}}).axes)
    1
    """
    fig, axes = panels(len(keys))
    ps = [r["p"] for r in rows]
    look = arm_styles(["corrupt:p", *(controls or {})])
    n = 1
    for ax, key in zip(axes, keys):
        m = [r[key][0] for r in rows]
        n = max([n] + [r[key][2] for r in rows])
        errs = [yerr(r[key][1], r[key][2]) for r in rows]
        ax.errorbar(ps, m, yerr=None if None in errs else errs, label="corrupt:p", **look["corrupt:p"])
        for name, ch in (controls or {}).items():
            st = look[name]
            ax.axhline(ch[key][0], color=st["color"], ls=st["ls"], lw=1.2, label=f"{name} (control)")
        ax.axhline(0.0, color="grey", lw=0.5)
        panel_title(ax, "change of " + LABELS.get(key, key))
        ax.set_xlabel("corruption $p$ (verdicts inverted)")
    legend_below(fig, axes)
    if title:
        fig.suptitle(title)
    style_caption(fig, caption if caption is not None else band_caption(n, what="Points", spread="error bars")
                  + " Change = after - before training, paired per seed.")
    return fig


def _pair_points(ax, vals, labels, title):
    """Two (mean, standard error, n) values as points with error bars (the axis need not start at zero)."""
    for i, v in enumerate(vals):
        ax.errorbar([i], [v[0]], yerr=yerr(v[1], v[2]), marker="o", ms=5, color=COLOURS[i], ls="none")
    ax.set_xticks([0, 1], labels)
    ax.set_xlim(-0.6, 1.6)
    ax.set_title(title)


@styled
def plot_fp_correction(
    delta_g: Mapping[str, Sequence[float]],
    ratios: Mapping[str, Sequence[float]],
    similarity: Mapping[str, Sequence],
    rates: Mapping[str, Sequence] | None = None,
    *,
    title: str | None = None,
    caption: str | None = None,
):
    """Panels: the dominance ratio ``||K(Y0,Yu)|| / ||K(Yi,Yu)||`` of false-positive-corrected against
    random misaligned pairs; their ``Delta G``; their similarity to the training prompts; with
    ``rates``, the share of false positives corrected on trained against held-out prompts. ``delta_g``
    and ``ratios`` map ``corrected`` / ``random`` to the values of every pair; ``similarity`` maps them
    and ``rates`` maps ``trained`` / ``held_out`` to ``(mean, s.e., n)``. Returns the figure.

    >>> sim = {"corrected": (0.9, 0.01, 2), "random": (0.7, 0.02, 2)}
    >>> rates = {"trained": (0.6, 0.1, 2), "held_out": (0.4, 0.1, 2)}
    >>> fig = plot_fp_correction({"corrected": [-1.0, -0.5], "random": [0.1, -0.2]},
    ...                          {"corrected": [3.0], "random": [1.0]}, sim, rates)
    >>> len(fig.axes)
    4
    """
    fig, axes = panels(4 if rates else 3, cols=2, height=2.3)
    groups = (("corrected", COLOURS[1], "FP corrected"), ("random", COLOURS[0], "random misaligned"))
    ax = axes[0]
    for name, colour, lab in groups:
        vals = [math.log10(v) for v in ratios.get(name, []) if v > 0]
        if vals:
            ax.hist(vals, bins=15, density=True, color=colour, histtype="step", lw=1.5,
                    ls="-" if name == "corrected" else "--", label=f"{lab} pairs")
    ax.axvline(0.0, color="grey", ls=":", lw=0.8)
    ax.set_title("dominance ratio")
    ax.set_xlabel(SYMBOLS["dominance"])
    ax.set_ylabel("density")
    ax = axes[1]
    corr, rand = list(delta_g.get("corrected", [])), list(delta_g.get("random", []))
    bins = 30
    if corr or rand:
        lo, hi = min(corr + rand), max(corr + rand)
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
    for name, colour, lab in groups:
        vals = corr if name == "corrected" else rand
        if vals:
            ax.hist(vals, bins=bins, density=True, color=colour, histtype="step", lw=1.5,
                    ls="-" if name == "corrected" else "--", label=f"{lab} pairs")
    ax.axvline(0.0, color="grey", lw=0.6)
    ax.set_title("generation change of the probe")
    ax.set_xlabel(SYMBOLS["delta_g"])
    ax.set_ylabel("density")
    _pair_points(axes[2], [similarity["corrected"], similarity["random"]], ["FP corrected", "random"],
                 "similarity to the nearest training prompt")
    if rates:
        _pair_points(axes[3], [rates["trained"], rates["held_out"]], ["trained prompts", "held-out prompts"],
                     "share of false positives corrected")
    legend_below(fig, axes[:2])
    if title:
        fig.suptitle(title)
    n = len(corr)
    style_caption(fig, caption if caption is not None else
                  f"Histograms over pairs ({n} corrected, {len(rand)} random); points: mean ± 1 s.e.")
    return fig


@styled
def plot_predicted_vs_measured(points: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                               rel_err: Mapping[str, Sequence] | None = None, *, title: str | None = None,
                               caption: str | None = None):
    """Scatter of measured against first-order predicted ``Delta G`` and ``Delta U`` (every tracked
    step, replica and probe), misaligned probes in red, with the identity line. ``points[key][group]``
    (``key`` ``g`` or ``u``, ``group`` ``misaligned`` or ``aligned``) holds ``predicted`` and
    ``measured``; ``rel_err[key]``, the mean relative error ``(mean, s.e., n)``, goes in the title.
    Returns the figure.

    >>> pts = {k: {"misaligned": {"predicted": [0.1], "measured": [0.11]},
    ...            "aligned": {"predicted": [-0.2], "measured": [-0.19]}} for k in ("g", "u")}
    >>> len(plot_predicted_vs_measured(pts, {"g": (0.05, 0.01, 1), "u": (0.1, 0.01, 1)}).axes)
    2
    """
    fig, axes = panels(2, height=3.0)
    for ax, key in ((axes[0], "g"), (axes[1], "u")):
        name = SYMBOLS[f"d{key.upper()}"]
        for group, colour, marker, lab in (("aligned", COLOURS[0], "o", "aligned probe"),
                                           ("misaligned", COLOURS[1], "^", "misaligned probe")):
            pts = points[key][group]
            ax.scatter(pts["predicted"], pts["measured"], s=5, alpha=0.5, color=colour, marker=marker, label=lab)
        allv = [v for pts in points[key].values() for v in list(pts["predicted"]) + list(pts["measured"])]
        if allv:
            lo, hi = min(allv), max(allv)
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="measured = predicted")
        rel = (rel_err or {}).get(key)
        ax.set_title(f"{name}: mean relative error {rel[0]:.3f}" if rel and rel[2] else name)
        ax.set_xlabel(f"predicted {name} (first order, exact eNTK)")
        ax.set_ylabel(f"measured {name}")
    legend_below(fig, axes)
    if title:
        fig.suptitle(title)
    style_caption(fig, caption if caption is not None else
                  "One point per tracked step, replica and probe. Relative error: "
                  r"$|\Delta_{\rm measured} - \Delta_{\rm predicted}| / |\Delta_{\rm predicted}|$, averaged.")
    return fig


@styled
def plot_eta_slope(rows_by_label: Mapping[str, Sequence[dict]], *, title: str | None = None,
                   caption: str | None = None):
    """Log-log max residual of the first-order prediction against the step size, per setting, with
    a slope-2 reference line; the fitted slopes in the legend. ``rows_by_label``: label -> the rows of
    :func:`dynamics.sim.study.eta_scaling`. Returns the figure.

    >>> rows = [{"lr": lr, "resid_g": (lr**2, 0.0, 1), "resid_u": (lr**2, 0.0, 1)} for lr in (0.01, 0.02)]
    >>> rows[-1].update(slope_g=2.0, slope_u=2.0)
    >>> len(plot_eta_slope({"SFT": rows}).axes)
    2
    """
    from matplotlib.ticker import NullFormatter

    fig, axes = panels(2, height=2.6)
    for ax, key in ((axes[0], "g"), (axes[1], "u")):
        name = SYMBOLS[f"d{key.upper()}"]
        for i, (label, rows) in enumerate(rows_by_label.items()):
            st = arm_style(i)
            ax.loglog([r["lr"] for r in rows], [r[f"resid_{key}"][0] for r in rows], **st,
                      label=f"{label}: slope {rows[-1][f'slope_{key}']:.2f} ({name})")
        if rows_by_label:
            first = next(iter(rows_by_label.values()))
            lr0, r0 = first[0]["lr"], first[0][f"resid_{key}"][0]
            ref = [0.3 * r0 * (r["lr"] / lr0) ** 2 for r in first]  # offset so it does not hide a curve
            ax.loglog([r["lr"] for r in first], ref, color="grey", ls=":", lw=1.0, label="slope 2 (reference)")
        ax.set_title(f"{name}: max |measured - predicted|")
        ax.set_xlabel(SYMBOLS["eta"])
        ax.xaxis.set_minor_formatter(NullFormatter())
    legend_below(fig, axes)
    if title:
        fig.suptitle(title)
    style_caption(fig, caption if caption is not None else
                  "Max over probes of the residual of one step; slope: least-squares fit in log-log.")
    return fig


# --------------------------------------------------------------------------------------- figures
# Each takes the result of the experiment of the same name in dynamics.sim.experiments.

def _size_text(size: Mapping) -> str:
    return f"P = V = {size['prompts']}, {size['epochs']} epochs"


@styled
def draw_training_curves(result: dict, out_dir: str | Path) -> list[Path]:
    """The training curves of SFT, DPO and curriculum SFT against the unfiltered control."""
    size, plot = result["summary"]["size"], result["plot"]
    fig = plot_curves(
        plot["curves"],
        plot["keys"],
        title=f"CLO on the simulator ({_size_text(size)})",
        styles={plot["control"]: dict(CONTROL_STYLES["all"])},
        caption=band_caption(size["seeds"]) + " Grey dashed: the unfiltered control (every sample trained on).",
    )
    return finish(fig, out_dir, result)


@styled
def draw_co_improvement_vs_degradation(result: dict, out_dir: str | Path) -> list[Path]:
    """The self judge against ``corrupt:p``, with the unfiltered and oracle controls."""
    plot, size = result["plot"], result["summary"].get("size", {})
    fig = plot_curves(plot["curves"], plot["keys"], title="co-improvement (self) vs co-degradation (corrupt judge)",
                      caption=band_caption(size["seeds"]) if "seeds" in size else None)
    return finish(fig, out_dir, result)


@styled
def draw_corrupt_scan(result: dict, out_dir: str | Path) -> list[Path]:
    """The paired change of each metric against the corruption ``p``, with the controls (the self judge
    at ``p = 0`` among them, where the summary has it)."""
    s, plot = result["summary"], result["plot"]
    controls = dict(plot["controls"])
    self_arm = s.get("controls", {}).get("self", {})
    if all(k in self_arm for k in plot["keys"]):
        controls = {"self": {k: self_arm[k]["change"] for k in plot["keys"]}, **controls}
    fig = plot_corrupt_scan(s["rows"], plot["keys"], controls=controls, title="corrupt:p judge: change over training",
                            caption=band_caption(s["size"]["seeds"], what="Points", spread="error bars")
                            + " Change = after - before training, paired per seed; lines: the controls' changes."
                            if "size" in s else None)
    return finish(fig, out_dir, result)


@styled
def draw_phase_diagram(result: dict, out_dir: str | Path) -> list[Path]:
    """Coupling x judge quality, each arm placed by its phase."""
    s, plot = result["summary"], result["plot"]
    n = next(iter(next(iter(s["rows"].values())).values()))["gen"][2]
    caption = (f"Changes beyond the unfiltered control (points; mean ± s.e. over {n} units: "
               f"{len(s['worlds'])} worlds x seeds); phase from one-sided paired t tests at alpha = {s['alpha']}, "
               f"'no transfer' by TOST within ±{100 * s['fp_margin']:g} points of FP. FP: the understanding's "
               f"false-positive rate on the pre-trained model's samples.")
    labels = None
    if "predicted" in s:  # the cross-kernel prediction made before training, under each coupling's name
        labels = {c: f"{c}\ncos(ΔU, ΔG) {p['alignment'][0]:+.2f}" for c, p in s["predicted"].items()
                  if p.get("alignment") and p["alignment"][0] == p["alignment"][0]}
        caption += (" cos(ΔU, ΔG): alignment of the understanding and generation changes the cross-branch kernel "
                    "predicts over probes before training (first world, one epoch of the self judge).")
    fig = plot_phase_diagram(s["rows"], plot["couplings"], plot["judges"], win_key="exact_win_rate", caption=caption,
                             labels=labels, title=f"{plot['scale']}: coupling x judge quality (SFT, self-judged CLO)")
    return finish(fig, out_dir, result)


@styled
def draw_curriculum(result: dict, out_dir: str | Path) -> list[Path]:
    """Curriculum replay early against late, and the adaptive trigger."""
    plot, candidates = result["plot"], result["summary"]["candidates"]
    size = result["summary"].get("size", {})
    per_prompt = f"{candidates} candidate{'s' if candidates != 1 else ''} per prompt"
    fig = plot_curves(plot["curves"], plot["keys"], title=f"curriculum replay (self judge, {per_prompt})",
                      caption=(band_caption(size["seeds"]) + " epochs:e = replay of the discard pool at epoch e; "
                               "adaptive = the loop's adaptive trigger (CLOConfig.curriculum).") if "seeds" in size else None)
    return finish(fig, out_dir, result)


@styled
def draw_fp_correction(result: dict, out_dir: str | Path) -> list[Path]:
    """The false-positive-correction mechanism."""
    s, plot = result["summary"], result["plot"]
    fig = plot_fp_correction(
        plot["delta_g"],
        plot["ratios"],
        {"corrected": s["corrected_similarity"], "random": s["random_similarity"]},
        {"trained": s["correction_rate_trained"], "held_out": s["correction_rate_held_out"]},
        title="false-positive correction (self judge, SFT)",
    )
    return finish(fig, out_dir, result)


@styled
def draw_predicted_vs_measured(result: dict, out_dir: str | Path) -> list[Path]:
    """Measured against first-order predicted one-step changes."""
    s = result["summary"]
    fig = plot_predicted_vs_measured(result["plot"]["points"], {"g": s["rel_err_g"], "u": s["rel_err_u"]},
                                     title=f"first-order theory vs measurement (lr={s['lr']:g})")
    return finish(fig, out_dir, result)


@styled
def draw_eta_slope(result: dict, out_dir: str | Path) -> list[Path]:
    """The first-order residual against the step size. (Example in the module docstring.)"""
    fig = plot_eta_slope(result["summary"]["rows"], title="first-order prediction error of one CLO step")
    return finish(fig, out_dir, result)


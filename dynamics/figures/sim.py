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
from collections.abc import Mapping, Sequence
from pathlib import Path

from dynamics.figures.common import error_bar, finish, pyplot, save_figure, write_summary
from dynamics.figures.phase import plot_phase_diagram
from dynamics.report import LABELS, aggregate

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
    "write_summary",
]

# --------------------------------------------------------------------------------------- panels


def _curve(arm, key: str) -> list[list]:
    """``[[epoch, mean, s.e., n], ...]`` of one key: given (a curve dict of
    :func:`dynamics.sim.experiments.curves`), or aggregated from records (or an arm's ``.records``)."""
    if isinstance(arm, Mapping):
        return arm[key]
    return [[e, *v] for e, v in aggregate(getattr(arm, "records", arm), key).items()]


def plot_curves(
    arms: Mapping,
    keys: Sequence[str],
    *,
    title: str | None = None,
    styles: dict[str, dict] | None = None,
):
    """One panel per metric, one line per arm (mean ± one standard error across seeds). Returns the
    figure. ``arms`` maps a label to its curves (``{key: [[epoch, mean, s.e., n], ...]}``, see
    :func:`dynamics.sim.experiments.curves`), to its records, or to an arm holding ``.records``.

    >>> recs = [{"epoch": e, "seed": s, "x": e + s} for e in (0, 1) for s in (0, 1)]
    >>> len(plot_curves({"demo": recs, "given": {"x": [[0, 0.5, 0.1, 2], [1, 1.0, 0.1, 2]]}}, ["x"]).axes)
    1
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.9), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, arm in arms.items():
            rows = _curve(arm, key)
            xs = [r[0] for r in rows]
            m = [math.nan if r[1] is None else r[1] for r in rows]
            se = [error_bar(r[2]) for r in rows]
            style = {"marker": "o", "ms": 2.5, **((styles or {}).get(label, {}))}
            (line,) = ax.plot(xs, m, label=label, **style)
            ax.fill_between(
                xs,
                [a - b for a, b in zip(m, se)],
                [a + b for a, b in zip(m, se)],
                alpha=0.2,
                color=line.get_color(),
            )
        ax.set_title(LABELS.get(key, key), fontsize=9)
        ax.set_xlabel("epoch")
        if "win_rate" in key:
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_corrupt_scan(
    rows: Sequence[dict],
    keys: Sequence[str],
    *,
    controls: dict[str, dict] | None = None,
    title: str | None = None,
):
    """Paired change (after - before, mean ± s.e.) of each key against the corruption ``p``; the
    controls' changes as horizontal lines. Returns the figure.

    >>> rows = [{"p": p, "x": (-p, 0.01, 2)} for p in (0.0, 0.5, 1.0)]
    >>> len(plot_corrupt_scan(rows, ["x"], controls={"all": {"x": (0.1, 0.0, 2)}}).axes)
    1
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.9), squeeze=False)
    ps = [r["p"] for r in rows]
    for ax, key in zip(axes[0], keys):
        m = [r[key][0] for r in rows]
        se = [error_bar(r[key][1]) for r in rows]
        ax.errorbar(ps, m, yerr=se, marker="o", ms=3, capsize=2, label="corrupt:p")
        for i, (name, ch) in enumerate((controls or {}).items()):
            ax.axhline(ch[key][0], color=f"C{i + 1}", lw=1, ls="--", label=name)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title("change of " + LABELS.get(key, key), fontsize=8)
        ax.set_xlabel("corruption p")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _pair_bars(ax, vals, labels, title):
    """Two bars of (mean, standard error, n) values, red against grey."""
    ax.bar([0, 1], [v[0] for v in vals], yerr=[error_bar(v[1]) for v in vals], color=["C3", "C7"], capsize=3)
    ax.set_xticks([0, 1], labels)
    ax.set_title(title, fontsize=9)


def plot_fp_correction(
    delta_g: Mapping[str, Sequence[float]],
    ratios: Mapping[str, Sequence[float]],
    similarity: Mapping[str, Sequence],
    rates: Mapping[str, Sequence] | None = None,
    *,
    title: str | None = None,
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
    plt = pyplot()
    n_panels = 4 if rates else 3
    fig, axes = plt.subplots(1, n_panels, figsize=(3.5 * n_panels, 2.9))
    ax = axes[0]
    for name, colour in (("random", "C7"), ("corrected", "C3")):
        vals = [math.log10(v) for v in ratios.get(name, []) if v > 0]
        if vals:
            ax.hist(vals, bins=15, alpha=0.55, density=True, color=colour, label=f"{name} ({len(vals)})")
    ax.axvline(0.0, color="grey", ls="--", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_title("dominance ratio (log10)", fontsize=9)
    ax.set_xlabel("log10 ||K(Y0,Yu)|| / ||K(Yi,Yu)||")
    ax = axes[1]
    corr, rand = list(delta_g.get("corrected", [])), list(delta_g.get("random", []))
    bins = 30
    if corr or rand:
        lo, hi = min(corr + rand), max(corr + rand)
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
    if rand:
        ax.hist(rand, bins=bins, alpha=0.5, density=True, label=f"random ({len(rand)})", color="C7")
    if corr:
        ax.hist(corr, bins=bins, alpha=0.6, density=True, label=f"FP corrected ({len(corr)})", color="C3")
    ax.axvline(0.0, color="grey", lw=0.6)
    ax.set_title("Delta G = Delta log pi(x0|y0)", fontsize=9)
    ax.legend(fontsize=7)
    _pair_bars(axes[2], [similarity["corrected"], similarity["random"]], ["FP corrected", "random"],
               "similarity to nearest training prompt")
    if rates:
        _pair_bars(axes[3], [rates["trained"], rates["held_out"]], ["trained prompts", "held-out prompts"],
                   "share of false positives corrected")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_predicted_vs_measured(points: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                               rel_err: Mapping[str, Sequence] | None = None, *, title: str | None = None):
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
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.2))
    for ax, key, name in ((axes[0], "g", "Delta G"), (axes[1], "u", "Delta U")):
        for group, colour, lab in (("misaligned", "C3", "misaligned probe"), ("aligned", "C0", "aligned probe")):
            pts = points[key][group]
            ax.scatter(pts["predicted"], pts["measured"], s=4, alpha=0.4, color=colour, label=lab)
        allv = [v for pts in points[key].values() for v in list(pts["predicted"]) + list(pts["measured"])]
        if allv:
            lo, hi = min(allv), max(allv)
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        rel = (rel_err or {}).get(key)
        ax.set_title(f"{name}: rel. error {rel[0]:.3f}" if rel and rel[2] else name, fontsize=9)
        ax.set_xlabel("predicted (first order, exact eNTK)")
        ax.set_ylabel("measured")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_eta_slope(rows_by_label: Mapping[str, Sequence[dict]], *, title: str | None = None):
    """Log-log max residual of the first-order prediction against the step size, per setting, with
    a slope-2 reference line; the fitted slopes in the legend. ``rows_by_label``: label -> the rows of
    :func:`dynamics.sim.study.eta_scaling`. Returns the figure.

    >>> rows = [{"lr": lr, "resid_g": (lr**2, 0.0, 1), "resid_u": (lr**2, 0.0, 1)} for lr in (0.01, 0.02)]
    >>> rows[-1].update(slope_g=2.0, slope_u=2.0)
    >>> len(plot_eta_slope({"SFT": rows}).axes)
    2
    """
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0))
    for ax, key, name in ((axes[0], "g", "Delta G"), (axes[1], "u", "Delta U")):
        for i, (label, rows) in enumerate(rows_by_label.items()):
            lrs = [r["lr"] for r in rows]
            res = [r[f"resid_{key}"][0] for r in rows]
            ax.loglog(
                lrs,
                res,
                marker="o",
                ms=3,
                color=f"C{i}",
                label=f"{label}: slope {rows[-1][f'slope_{key}']:.2f}",
            )
        if rows_by_label:
            first = next(iter(rows_by_label.values()))
            lr0, r0 = first[0]["lr"], first[0][f"resid_{key}"][0]
            ref = [0.3 * r0 * (r["lr"] / lr0) ** 2 for r in first]  # offset so it does not hide a curve
            ax.loglog([r["lr"] for r in first], ref, color="grey", ls="--", lw=0.8, label="slope 2")
        ax.set_title(f"{name}: max |measured - predicted|", fontsize=9)
        ax.set_xlabel("step size eta")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- figures
# Each takes the result of the experiment of the same name in dynamics.sim.experiments.

CONTROL_STYLES = {"all": {"ls": "--", "color": "grey"}, "oracle": {"ls": ":", "color": "k"}}


def draw_training_curves(result: dict, out_dir: str | Path) -> list[Path]:
    """The training curves of SFT, DPO and curriculum SFT against the unfiltered control."""
    size, plot = result["summary"]["size"], result["plot"]
    fig = plot_curves(
        plot["curves"],
        plot["keys"],
        title=f"CLO on the simulator (P=V={size['prompts']}, {size['seeds']} seeds)",
        styles={plot["control"]: {"ls": "--", "color": "grey"}, plot["curriculum"]: {"ls": ":", "marker": "x"}},
    )
    return finish(fig, out_dir, result)


def draw_co_improvement_vs_degradation(result: dict, out_dir: str | Path) -> list[Path]:
    """The self judge against ``corrupt:p``, with the unfiltered and oracle controls."""
    plot = result["plot"]
    fig = plot_curves(plot["curves"], plot["keys"], title="co-improvement (self) vs co-degradation (corrupt judge)",
                      styles=CONTROL_STYLES)
    return finish(fig, out_dir, result)


def draw_corrupt_scan(result: dict, out_dir: str | Path) -> list[Path]:
    """The paired change of each metric against the corruption ``p``, with the controls."""
    plot = result["plot"]
    fig = plot_corrupt_scan(result["summary"]["rows"], plot["keys"], controls=plot["controls"],
                            title="corrupt:p judge: change over training")
    return finish(fig, out_dir, result)


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


def draw_curriculum(result: dict, out_dir: str | Path) -> list[Path]:
    """Curriculum replay early against late, and the adaptive trigger."""
    plot, candidates = result["plot"], result["summary"]["candidates"]
    per_prompt = f"{candidates} candidate{'s' if candidates != 1 else ''} per prompt"
    fig = plot_curves(plot["curves"], plot["keys"], title=f"curriculum replay (self judge, {per_prompt})")
    return finish(fig, out_dir, result)


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


def draw_predicted_vs_measured(result: dict, out_dir: str | Path) -> list[Path]:
    """Measured against first-order predicted one-step changes."""
    s = result["summary"]
    fig = plot_predicted_vs_measured(result["plot"]["points"], {"g": s["rel_err_g"], "u": s["rel_err_u"]},
                                     title=f"first-order theory vs measurement (lr={s['lr']:g})")
    return finish(fig, out_dir, result)


def draw_eta_slope(result: dict, out_dir: str | Path) -> list[Path]:
    """The first-order residual against the step size. (Example in the module docstring.)"""
    fig = plot_eta_slope(result["summary"]["rows"], title="first-order prediction error of one CLO step")
    return finish(fig, out_dir, result)


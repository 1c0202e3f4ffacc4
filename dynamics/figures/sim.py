"""Figures of the simulator experiments (:mod:`dynamics.sim.study` runs them; this module draws).

Example::

    >>> import tempfile
    >>> from dynamics.sim.study import SimSize
    >>> out = figure_sharing(SimSize.tiny(), tempfile.mkdtemp(), sharings=("decoupled",))
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dynamics.report import aggregate
from dynamics.sim.study import (
    Arm,
    SimSize,
    arm_summary,
    correction_rates,
    corrupt_scan,
    corrupt_scan_rows,
    curriculum_arms,
    dominance_ratios,
    eta_scaling,
    fp_correction,
    judge_arms,
    pretrained,
    replay_precision,
    run_arm,
    sharing_arms,
)
from dynamics.study import change, final_values, mean_se, paired_difference, vs_control

__all__ = [
    "FIGURES",
    "QUICK_KW",
    "figure_co_improvement_vs_degradation",
    "figure_corrupt_scan",
    "figure_curriculum",
    "figure_eta_slope",
    "figure_fp_correction",
    "figure_parser",
    "figure_predicted_vs_measured",
    "figure_sharing",
    "figure_training_curves",
    "main",
    "plot_corrupt_scan",
    "plot_curves",
    "plot_eta_slope",
    "plot_fp_correction",
    "plot_predicted_vs_measured",
    "save_figure",
    "write_summary",
]

# --------------------------------------------------------------------------------------- drawing

LABELS = {
    "gen_acc": "Gen accuracy (sampled)",
    "exact_gen_acc": "Gen accuracy (exact)",
    "win_rate": "Und win rate (sampled)",
    "exact_win_rate": "Und win rate (exact)",
    "non_unification": "Non-unification (sampled)",
    "exact_non_unification": "Non-unification (exact)",
    "und_fp_rate": "Und FP rate, pre-trained samples",
    "exact_pre_fp_rate": "Und FP rate, pre-trained samples (exact)",
    "exact_und_fp_rate": "Und FP rate, all pairs (exact)",
    "exact_und_fn_rate": "Und FN rate, all pairs (exact)",
    "sft_size": "SFT set size",
    "discard_size": "Discard pool size",
    "sft_precision": "SFT-set precision (oracle)",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf``; close it; return both paths.

    >>> import tempfile
    >>> fig = plot_curves({"a": [{"epoch": 0, "seed": 0, "x": 1.0}]}, ["x"])
    >>> [p.suffix for p in save_figure(fig, tempfile.mkdtemp(), "demo")]
    ['.png', '.pdf']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150 if p.suffix == ".png" else None, bbox_inches="tight")
    _plt().close(fig)
    return paths


def write_summary(out_dir: str | Path, name: str, summary: dict) -> Path:
    """Write the numbers behind a figure as ``<out_dir>/<name>.json`` (NaN written as null).

    >>> import tempfile
    >>> write_summary(tempfile.mkdtemp(), "demo", {"x": float("nan")}).read_text()
    '{\\n "x": null\\n}\\n'
    """
    from dynamics.records import to_jsonable

    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(summary), indent=1, allow_nan=False) + "\n")
    return path


def plot_curves(
    arms: dict[str, Arm] | dict[str, Sequence[dict]],
    keys: Sequence[str],
    *,
    title: str | None = None,
    styles: dict[str, dict] | None = None,
):
    """One panel per metric, one line per arm (mean ± one standard error across seeds). Returns the
    figure. ``arms`` maps a label to an :class:`Arm` or to its records.

    >>> recs = [{"epoch": e, "seed": s, "x": e + s} for e in (0, 1) for s in (0, 1)]
    >>> len(plot_curves({"demo": recs}, ["x"]).axes)
    1
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.9), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, arm in arms.items():
            recs = arm.records if isinstance(arm, Arm) else arm
            agg = aggregate(recs, key)
            xs = list(agg)
            m = [agg[e][0] for e in xs]
            se = [0.0 if math.isnan(agg[e][1]) else agg[e][1] for e in xs]
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
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.9), squeeze=False)
    ps = [r["p"] for r in rows]
    for ax, key in zip(axes[0], keys):
        m = [r[key][0] for r in rows]
        se = [0.0 if math.isnan(r[key][1]) else r[key][1] for r in rows]
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
    ax.bar([0, 1], [v[0] for v in vals], yerr=[0.0 if math.isnan(v[1]) else v[1] for v in vals],
           color=["C3", "C7"], capsize=3)
    ax.set_xticks([0, 1], labels)
    ax.set_title(title, fontsize=9)

def plot_fp_correction(
    analysis: Sequence[dict],
    ratios: dict[str, list[float]],
    rates: dict[str, list[float]] | None = None,
    *,
    title: str | None = None,
):
    """Panels: the dominance ratio ``||K(Y0,Yu)|| / ||K(Yi,Yu)||`` of false-positive-corrected against
    random misaligned pairs (:func:`dominance_ratios`); their ``Delta G``; their similarity to the
    training prompts (:func:`fp_correction`); with ``rates``, the share of false positives corrected
    on trained against held-out prompts (:func:`correction_rates`). Returns the figure.

    >>> a = [{"corrected_delta_g_values": [-1.0, -0.5], "random_delta_g_values": [0.1, -0.2],
    ...       "corrected_similarity": 0.9, "random_similarity": 0.7}]
    >>> rates = {"trained": [0.6], "held_out": [0.4]}
    >>> fig = plot_fp_correction(a, {"corrected": [3.0], "random": [1.0]}, rates)
    >>> len(fig.axes)
    4
    """
    plt = _plt()
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
    corr = [v for a in analysis for v in a.get("corrected_delta_g_values", [])]
    rand = [v for a in analysis for v in a.get("random_delta_g_values", [])]
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
    ax = axes[2]
    cs = mean_se(a["corrected_similarity"] for a in analysis)
    rs = mean_se(a["random_similarity"] for a in analysis)
    _pair_bars(ax, [cs, rs], ["FP corrected", "random"], "similarity to nearest training prompt")
    if rates:
        _pair_bars(axes[3], [mean_se(rates["trained"]), mean_se(rates["held_out"])],
                   ["trained prompts", "held-out prompts"], "share of false positives corrected")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_predicted_vs_measured(theory: Sequence[dict], *, title: str | None = None):
    """Scatter of measured against first-order predicted ``Delta G`` and ``Delta U`` (every tracked
    step, replica and probe), misaligned probes in red, with the identity line. Returns the figure.

    >>> t = [{"pred_delta_g": [0.1, -0.2], "delta_g": [0.11, -0.19], "pred_delta_u": [0.0, 0.1],
    ...       "delta_u": [0.01, 0.1], "probe_aligned": [False, True], "rel_err_g": 0.05, "rel_err_u": 0.1}]
    >>> len(plot_predicted_vs_measured(t).axes)
    2
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.2))
    for ax, key, name in ((axes[0], "g", "Delta G"), (axes[1], "u", "Delta U")):
        for aligned, colour, lab in ((False, "C3", "misaligned probe"), (True, "C0", "aligned probe")):
            xs = [
                p for t in theory for p, a in zip(t[f"pred_delta_{key}"], t["probe_aligned"]) if a == aligned
            ]
            ys = [m for t in theory for m, a in zip(t[f"delta_{key}"], t["probe_aligned"]) if a == aligned]
            ax.scatter(xs, ys, s=4, alpha=0.4, color=colour, label=lab)
        allv = [v for t in theory for v in t[f"pred_delta_{key}"] + t[f"delta_{key}"]]
        if allv:
            lo, hi = min(allv), max(allv)
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        rel = mean_se(t[f"rel_err_{key}"] for t in theory)
        ax.set_title(f"{name}: rel. error {rel[0]:.3f}" if rel[2] else name, fontsize=9)
        ax.set_xlabel("predicted (first order, exact eNTK)")
        ax.set_ylabel("measured")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_eta_slope(rows_by_label: dict[str, Sequence[dict]], *, title: str | None = None):
    """Log-log max residual of the first-order prediction against the step size, per setting, with
    a slope-2 reference line; the fitted slopes in the legend. ``rows_by_label``: label -> the rows of
    :func:`eta_scaling`. Returns the figure.

    >>> rows = [{"lr": lr, "resid_g": (lr**2, 0.0, 1), "resid_u": (lr**2, 0.0, 1)} for lr in (0.01, 0.02)]
    >>> rows[-1].update(slope_g=2.0, slope_u=2.0)
    >>> len(plot_eta_slope({"SFT": rows}).axes)
    2
    """
    plt = _plt()
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


CURVE_KEYS = ("gen_acc", "win_rate", "non_unification")
FINDING_KEYS = (
    "exact_gen_acc",
    "gen_acc",
    "exact_pre_fp_rate",
    "und_fp_rate",
    "exact_und_fp_rate",
    "exact_non_unification",
    "non_unification",
    "win_rate",
    "win_rate_n",
    "exact_win_rate",
)


def figure_training_curves(size: SimSize, out_dir: str | Path, *, replay_epoch: int | None = None) -> dict:
    """The paper's training curves (Gen, Und win rate, Non) for SFT, DPO and curriculum SFT with the
    self judge, against the unfiltered control, from one pre-trained model (the legend gives the
    curriculum's initial discard-pool size: replay has nothing to do when it is empty).

    >>> import tempfile
    >>> out = figure_training_curves(SimSize.tiny(), tempfile.mkdtemp())
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    replay_epoch = replay_epoch or max(1, size.epochs // 2)
    world, m0 = pretrained(size)
    arms = {
        "SFT (self)": run_arm(world, m0, size.config(judge="self")),
        "DPO (self)": run_arm(world, m0, size.config(judge="self", loss="dpo", nll_weight=0.1)),
        "curriculum SFT": run_arm(world, m0, size.config(judge="self", curriculum=f"epochs:{replay_epoch}")),
        "SFT (all: control)": run_arm(world, m0, size.config(judge="all")),
    }
    pool = mean_se(final_values(arms["curriculum SFT"].records, "discard_size", epoch=0))[0]
    curriculum = f"curriculum SFT (replay @{replay_epoch}, pool {pool:.1f})"
    arms = {(curriculum if k == "curriculum SFT" else k): v for k, v in arms.items()}
    fig = plot_curves(
        arms,
        CURVE_KEYS,
        title=f"CLO on the simulator (P=V={size.prompts}, {size.seeds} seeds)",
        styles={"SFT (all: control)": {"ls": "--", "color": "grey"}, curriculum: {"ls": ":", "marker": "x"}},
    )
    paths = save_figure(fig, out_dir, "fig_training_curves")
    summary = {
        "size": dataclasses.asdict(size),
        "arms": {k: arm_summary(a, CURVE_KEYS + FINDING_KEYS) for k, a in arms.items()},
        "vs_all": vs_control(arms, "SFT (all: control)", FINDING_KEYS),
    }
    return {"paths": paths + [write_summary(out_dir, "fig_training_curves", summary)], "summary": summary}


def figure_co_improvement_vs_degradation(size: SimSize, out_dir: str | Path, *, p: float = 0.6) -> dict:
    """Self judge (co-improvement) against ``corrupt:p`` (poor supervision), with the unfiltered and
    oracle controls: Gen accuracy, the understanding's false-positive rate, Non.

    >>> import tempfile
    >>> out = figure_co_improvement_vs_degradation(SimSize.tiny(), tempfile.mkdtemp())
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    arms = judge_arms(size, ["self", f"corrupt:{p:g}", "all", "oracle"])
    keys = ("exact_gen_acc", "exact_pre_fp_rate", "non_unification")
    fig = plot_curves(
        arms,
        keys,
        title="co-improvement (self) vs co-degradation (corrupt judge)",
        styles={"all": {"ls": "--", "color": "grey"}, "oracle": {"ls": ":", "color": "k"}},
    )
    paths = save_figure(fig, out_dir, "fig_co_improvement_vs_degradation")
    summary = {
        "size": dataclasses.asdict(size),
        "arms": {k: arm_summary(a, FINDING_KEYS) for k, a in arms.items()},
        "vs_all": vs_control(arms, "all", FINDING_KEYS),
    }
    return {
        "paths": paths + [write_summary(out_dir, "fig_co_improvement_vs_degradation", summary)],
        "summary": summary,
    }


def figure_corrupt_scan(
    size: SimSize,
    out_dir: str | Path,
    ps: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
) -> dict:
    """The whole ``corrupt:p`` curve: the paired change of Gen accuracy, the false-positive rate, the
    understanding's win rate and Non against ``p``, with the controls.

    >>> import tempfile
    >>> out = figure_corrupt_scan(SimSize.tiny(), tempfile.mkdtemp(), ps=(0.0, 1.0))
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    arms = corrupt_scan(size, ps)
    keys = ("exact_gen_acc", "exact_pre_fp_rate", "exact_win_rate", "exact_non_unification")
    rows = corrupt_scan_rows(arms, FINDING_KEYS)
    controls = {k: {key: change(arms[k].records, key)[2] for key in keys} for k in ("all", "oracle")}
    fig = plot_corrupt_scan(rows, keys, controls=controls, title="corrupt:p judge: change over training")
    paths = save_figure(fig, out_dir, "fig_corrupt_scan")
    summary = {
        "size": dataclasses.asdict(size),
        "rows": rows,
        "controls": {k: arm_summary(arms[k], FINDING_KEYS) for k in ("self", "all", "oracle")},
        "self_vs_all": vs_control({"self": arms["self"], "all": arms["all"]}, "all", FINDING_KEYS)["self"],
    }
    return {"paths": paths + [write_summary(out_dir, "fig_corrupt_scan", summary)], "summary": summary}


def figure_sharing(
    size: SimSize, out_dir: str | Path, sharings: Sequence[str] = ("shared", "partial:0.5", "decoupled")
) -> dict:
    """Aligned (shared) against decoupled sharing: the understanding moves only through shared
    parameters.

    >>> import tempfile
    >>> out = figure_sharing(SimSize.tiny(), tempfile.mkdtemp(), sharings=("decoupled",))
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    arms = sharing_arms(size, sharings)
    keys = ("exact_gen_acc", "exact_pre_fp_rate", "exact_win_rate", "non_unification")
    fig = plot_curves(arms, keys, title="parameter sharing: aligned vs decoupled (self judge, SFT)")
    paths = save_figure(fig, out_dir, "fig_sharing")
    summary = {
        "size": dataclasses.asdict(size),
        "arms": {k: arm_summary(a, FINDING_KEYS) for k, a in arms.items()},
    }
    return {"paths": paths + [write_summary(out_dir, "fig_sharing", summary)], "summary": summary}


def figure_curriculum(
    size: SimSize, out_dir: str | Path, *, candidates: int = 1, replay_epochs: Sequence[int] | None = None
) -> dict:
    """Curriculum replay early against late (after the model improved; the paper's epochs 4 and 10 of
    20 by default), and the adaptive trigger: discard pool, SFT-set size, the SFT set's precision, Gen
    accuracy, false positives. One candidate per prompt, so that a third of the prompts start in the
    discard pool (with 8 the pool is empty here).

    >>> import tempfile
    >>> out = figure_curriculum(SimSize.tiny(), tempfile.mkdtemp())
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    if replay_epochs is None:
        replay_epochs = sorted({max(1, size.epochs // 5), max(1, size.epochs // 2)})
    arms = curriculum_arms(size, replay_epochs, candidates=candidates, adaptive=True)
    keys = ("discard_size", "sft_size", "sft_precision", "exact_gen_acc", "exact_pre_fp_rate")
    per_prompt = f"{candidates} candidate{'s' if candidates != 1 else ''} per prompt"
    fig = plot_curves(arms, keys, title=f"curriculum replay (self judge, {per_prompt})")
    paths = save_figure(fig, out_dir, "fig_curriculum")
    summary = {
        "size": dataclasses.asdict(size),
        "candidates": candidates,
        "arms": {k: arm_summary(a, keys + FINDING_KEYS) for k, a in arms.items()},
        "vs_off": vs_control(arms, "off", ("exact_gen_acc", "exact_pre_fp_rate", "exact_win_rate")),
    }
    specs = [f"epochs:{e}" for e in replay_epochs]
    if len(specs) >= 2:  # the latest replay against the earliest, replica by replica
        summary["late_minus_early"] = {
            k: paired_difference(arms[specs[-1]].records, arms[specs[0]].records, k)
            for k in ("exact_gen_acc", "exact_pre_fp_rate", "exact_win_rate")
        }
        late, early = replay_precision(arms[specs[-1]]), replay_precision(arms[specs[0]])
        summary["late_minus_early"]["replay_precision"] = mean_se(a - b for a, b in zip(late, early))
    return {"paths": paths + [write_summary(out_dir, "fig_curriculum", summary)], "summary": summary}


def figure_fp_correction(
    size: SimSize, out_dir: str | Path, *, pairs: int = 8, train_share: float = 0.5
) -> dict:
    """The false-positive-correction mechanism (paper Fig. 7) on a self-judged SFT run that trains on
    a random ``train_share`` of the prompts: the dominance ratio of corrected against random
    misaligned pairs, their ``Delta G``, their similarity to the training prompts, and the share of
    false positives corrected on trained against held-out prompts.

    >>> import tempfile
    >>> out = figure_fp_correction(SimSize.tiny(), tempfile.mkdtemp(), pairs=2)
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    if not 0.0 < train_share <= 1.0:
        raise ValueError(f"figure_fp_correction: train_share={train_share} must lie in (0, 1]")
    world, m0 = pretrained(size)
    g = torch.Generator().manual_seed(size.seed)
    n_train = max(1, round(train_share * size.prompts))
    train = torch.randperm(size.prompts, generator=g)[:n_train].sort().values
    arm = run_arm(world, m0, size.config(judge="self"), train_ids=train)
    analysis = fp_correction(arm)
    ratios = dominance_ratios(m0, arm, analysis, pairs=pairs, seed=size.seed)
    rates = correction_rates(arm, train)
    fig = plot_fp_correction(analysis, ratios, rates, title="false-positive correction (self judge, SFT)")
    paths = save_figure(fig, out_dir, "fig_fp_correction")
    log_ratio = {k: [math.log10(v) for v in vals if v > 0] for k, vals in ratios.items()}
    summary = {
        "size": dataclasses.asdict(size),
        "train_prompts": train.tolist(),
        "correction_rate_trained": mean_se(rates["trained"]),
        "correction_rate_held_out": mean_se(rates["held_out"]),
        "correction_rate_trained_minus_held_out": mean_se(
            a - b for a, b in zip(rates["trained"], rates["held_out"])
        ),
        "log10_dominance_ratio_corrected": mean_se(log_ratio["corrected"]),
        "log10_dominance_ratio_random": mean_se(log_ratio["random"]),
        "n_corrected": mean_se(a["n_corrected"] for a in analysis),
        "n_fp_before": mean_se(a["n_fp_before"] for a in analysis),
        "corrected_similarity": mean_se(a["corrected_similarity"] for a in analysis),
        "random_similarity": mean_se(a["random_similarity"] for a in analysis),
        "corrected_delta_g": mean_se(a["corrected_delta_g"] for a in analysis),
        "random_delta_g": mean_se(a["random_delta_g"] for a in analysis),
        "corrected_delta_g_median": mean_se(a["corrected_delta_g_median"] for a in analysis),
        "random_delta_g_median": mean_se(a["random_delta_g_median"] for a in analysis),
    }
    return {"paths": paths + [write_summary(out_dir, "fig_fp_correction", summary)], "summary": summary}


def figure_predicted_vs_measured(
    size: SimSize, out_dir: str | Path, *, lr: float | None = None, track_every: int = 5
) -> dict:
    """Measured against first-order predicted ``Delta G`` / ``Delta U`` over a self-judged SFT run.

    >>> import tempfile
    >>> out = figure_predicted_vs_measured(SimSize.tiny(), tempfile.mkdtemp())
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    world, m0 = pretrained(size)
    arm = run_arm(
        world,
        m0,
        size.config(judge="self", **({"lr": lr} if lr else {})),
        track_every=track_every,
        tracker_kw={"ratio_probes": 0},
    )
    fig = plot_predicted_vs_measured(
        arm.theory, title=f"first-order theory vs measurement (lr={arm.config.lr:g})"
    )
    paths = save_figure(fig, out_dir, "fig_predicted_vs_measured")
    summary = {
        "size": dataclasses.asdict(size),
        "lr": arm.config.lr,
        "tracked_records": len(arm.theory),
        "rel_err_g": mean_se(t["rel_err_g"] for t in arm.theory),
        "rel_err_u": mean_se(t["rel_err_u"] for t in arm.theory),
    }
    return {
        "paths": paths + [write_summary(out_dir, "fig_predicted_vs_measured", summary)],
        "summary": summary,
    }


def figure_eta_slope(
    size: SimSize, out_dir: str | Path, lrs: Sequence[float] = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)
) -> dict:
    """The first-order residual against the step size (slope 2 on log-log axes: ``O(eta^2)``), for
    SFT and DPO with ``bayes`` understanding and SFT with the ``head`` understanding (float64).

    >>> import tempfile
    >>> out = figure_eta_slope(SimSize.tiny(), tempfile.mkdtemp(), lrs=(0.01, 0.02))
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    size = dataclasses.replace(size, float64=True)
    rows = {
        "SFT, bayes": eta_scaling(size, lrs),
        "DPO, bayes": eta_scaling(size, lrs, loss="dpo"),
        "SFT, head": eta_scaling(size, lrs, understanding="head"),
    }
    fig = plot_eta_slope(rows, title="first-order prediction error of one CLO step")
    paths = save_figure(fig, out_dir, "fig_eta_slope")
    summary = {"size": dataclasses.asdict(size), "rows": rows}
    return {"paths": paths + [write_summary(out_dir, "fig_eta_slope", summary)], "summary": summary}


FIGURES: dict[str, Callable[..., dict]] = {
    "training_curves": figure_training_curves,
    "co_improvement_vs_degradation": figure_co_improvement_vs_degradation,
    "corrupt_scan": figure_corrupt_scan,
    "sharing": figure_sharing,
    "curriculum": figure_curriculum,
    "fp_correction": figure_fp_correction,
    "predicted_vs_measured": figure_predicted_vs_measured,
    "eta_slope": figure_eta_slope,
}

# figure-specific settings of ``--quick`` (smaller grids; the size itself is :meth:`SimSize.quick`)
QUICK_KW: dict[str, dict] = {
    "corrupt_scan": {"ps": (0.0, 0.6, 1.0)},
    "eta_slope": {"lrs": (0.005, 0.01, 0.02)},
    "curriculum": {"replay_epochs": (1, 3)},
    "fp_correction": {"pairs": 4},
}


def figure_parser(figures: dict[str, Callable[..., dict]], name: str, default_out: str | Path, *, quick_help: str):
    """The figure function ``figures[name]`` and the start of its script's command line: the function's
    first docstring paragraph as description, ``--out`` and ``--quick`` (every figure script has them).

    >>> fn, p = figure_parser(FIGURES, "sharing", "out", quick_help="small")
    >>> fn is figure_sharing, p.parse_args(["--quick"]).quick
    (True, True)
    """
    import argparse

    if name not in figures:
        raise ValueError(f"unknown figure {name!r}; expected one of {sorted(figures)}")
    fn = figures[name]
    doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(default_out), help="output directory")
    p.add_argument("--quick", action="store_true", help=quick_help)
    return fn, p


def main(
    name: str, argv: Sequence[str] | None = None, *, default_out: str | Path = "paper_figures/out"
) -> dict:
    """The command line of one figure script: ``--out``, ``--quick``, and size overrides.

    Runs :data:`FIGURES` ``[name]``, writes ``<out>/fig_<name>.png``, ``.pdf`` and ``.json`` (the
    numbers behind it), and prints the paths. Returns the figure function's result.

    >>> import contextlib, io, tempfile
    >>> with contextlib.redirect_stdout(io.StringIO()):
    ...     out = main("sharing", ["--quick", "--prompts", "12", "--epochs", "1",
    ...                            "--out", tempfile.mkdtemp()])
    >>> out["summary"]["size"]["prompts"]
    12
    """
    fn, p = figure_parser(FIGURES, name, default_out, quick_help="a small size for smoke tests (seconds)")
    p.add_argument(
        "--seeds", type=int, default=None, help="replicas (seeds seed..seed+N-1); default 4, quick 2"
    )
    p.add_argument("--epochs", type=int, default=None, help="CLO epochs; default 20, quick 4")
    p.add_argument(
        "--prompts", type=int, default=None, help="P = V, prompts and image tokens; default 64, quick 24"
    )
    p.add_argument("--seed", type=int, default=0, help="first model seed")
    args = p.parse_args(argv)
    over = {k: v for k, v in (("seeds", args.seeds), ("epochs", args.epochs)) if v is not None}
    if args.prompts is not None:
        over.update(prompts=args.prompts, tokens=args.prompts)
    over["seed"] = args.seed
    size = SimSize.quick(**over) if args.quick else SimSize(**over)
    try:
        size.validate()
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    result = fn(size, args.out, **(QUICK_KW.get(name, {}) if args.quick else {}))
    for path in result["paths"]:
        print(path)
    return result


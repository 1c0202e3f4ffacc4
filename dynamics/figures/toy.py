"""Toy-world experiments and the figures drawn from them: the paper's findings at multi-token scale.

Four figures, each read against controls from the same pre-trained model and seeds (the unfiltered
control ``all`` and the exact judge ``oracle``; :mod:`dynamics.toy.study` runs the arms):

- ``toy_judges``      findings 1 and 2: the self judge against ``all``, ``oracle`` and a corrupt judge,
                      per GenEval category: Gen accuracy, understanding false positives, Non, win rate;
- ``toy_first_order`` finding 3: the measured one-step change of ``log pi`` (generation) and
                      ``log P(yes)`` (understanding) of probe pairs against the first-order prediction
                      of :func:`dynamics.kernels.first_order_probe`, and the residual's order in lr;
- ``toy_recipes``     what it would take: the self judge against the control under stronger or
                      longer generation training (lr, epochs, plain SGD);
- ``toy_sharing``     finding 4: how much understanding moves beyond the control as the coupling of
                      the branches grows: Janus-like sharing, full sharing (a yes/no head on one
                      trunk), and the Bayes link (understanding read from the generator,
                      :class:`dynamics.toy.bayes.BayesLinked`).

``understanding="bayes"`` runs ``toy_judges`` with the Bayes-linked understanding instead of the
trained head. Each figure writes ``<name>.png``, ``.pdf`` and ``.json`` (the numbers behind it).

Example (``--quick``: the tiny preset, no gap; a smoke run of the machinery)::

    >>> import tempfile
    >>> from dynamics.figures.toy import QUICK, figure_toy_first_order
    >>> out = figure_toy_first_order(QUICK, tempfile.mkdtemp(), lrs=(1e-3, 1e-2), n_probes=4)
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dynamics.figures.sim import _plt, figure_parser, save_figure, write_summary
from dynamics.study import change, paired_difference
from dynamics.toy.study import (
    ToySize,
    category_table,
    judge_study,
    one_step_check,
    one_step_summary,
    pretrained_model,
)
from dynamics.toy.world import CATEGORIES

__all__ = [
    "FIGURES",
    "QUICK",
    "figure_toy_first_order",
    "figure_toy_judges",
    "figure_toy_recipes",
    "figure_toy_sharing",
    "main",
    "study",
]

# a smoke-test size: the tiny preset, no gap (check off), threshold 0 so every judge accepts something
QUICK = ToySize.tiny(clo=dataclasses.replace(ToySize.tiny().clo, threshold=0.0))

METRICS = ("gen_acc", "und_fp_rate", "non_unification", "win_rate")
LABELS = {
    "gen_acc": "Gen accuracy (exact), change",
    "und_fp_rate": "Und false-positive rate, change",
    "non_unification": "Non, change",
    "win_rate": "Und win rate - 50",
}


def _quick(size: ToySize) -> bool:
    return size.preset == "tiny"


def study(size: ToySize, judges: Sequence[str], *, sharing: str = "full", understanding: str = "head",
          clo_overrides: dict | None = None) -> dict[str, list[dict]]:
    """:func:`dynamics.toy.study.judge_study`, with the gap check off at the quick size (a tiny model
    has no gap)."""
    return judge_study(size, judges, sharing=sharing, understanding=understanding, check=not _quick(size),
                       clo_overrides=clo_overrides)


def _bar_value(rows, judge, cat, metric):
    for r in rows:
        if r["judge"] == judge and r["category"] == cat and r["metric"] == metric:
            if metric == "win_rate":
                m, se, _ = r["after"]
                return m - 0.5, se, r.get("n", (math.nan,))[0]
            return r["change"][0], r["change"][1], None
    return math.nan, math.nan, None


def plot_category_bars(rows: Sequence[dict], judges: Sequence[str], *, title: str | None = None):
    """One panel per metric; per category a bar per judge: the change over training (mean ± s.e. across
    seeds; for the win rate, its value minus 50 with the mean denominator above the bar)."""
    plt = _plt()
    cats = ["all", *CATEGORIES]
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(1.15 * len(cats) * max(2, len(judges)) / 2 + 2, 2.2 * len(METRICS)),
                             squeeze=False)
    w = 0.8 / len(judges)
    for ax, metric in zip(axes[:, 0], METRICS):
        for i, j in enumerate(judges):
            vals = [_bar_value(rows, j, c, metric) for c in cats]
            xs = [k + (i - (len(judges) - 1) / 2) * w for k in range(len(cats))]
            ys = [100 * v[0] for v in vals]
            es = [0.0 if math.isnan(v[1]) else 100 * v[1] for v in vals]
            ax.bar(xs, ys, w, yerr=es, label=j, capsize=2)
            if metric == "win_rate":
                for x, y, v in zip(xs, ys, vals):
                    if v[2] is not None and not math.isnan(v[2]):
                        ax.annotate(f"{v[2]:.0f}", (x, y), fontsize=5, ha="center",
                                    va="bottom" if y >= 0 else "top")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(LABELS[metric], fontsize=9)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c.replace("_", " ") for c in cats], fontsize=7)
    axes[0, 0].legend(fontsize=7, ncol=len(judges))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_toy_judges(size: ToySize, out_dir: str | Path, *, judges: Sequence[str] = ("self", "all", "oracle",
                                                                                     "corrupt:0.9"),
                      understanding: str = "head") -> dict:
    """Findings 1 and 2: the self judge against the unfiltered control, the exact judge and a corrupt
    judge, per category (change of Gen accuracy, understanding false-positive rate on the pre-trained
    samples, Non; the win rate with its denominator).

    >>> import tempfile
    >>> out = figure_toy_judges(QUICK, tempfile.mkdtemp(), judges=("self", "all"))
    >>> sorted(out["summary"]["vs_control"])
    ['self']
    """
    arms = study(size, judges, understanding=understanding)
    rows = category_table(arms, METRICS, control="all" if "all" in judges else None)
    name = "fig_toy_judges" + ("" if understanding == "head" else f"_{understanding}")
    fig = plot_category_bars(rows, judges, title=f"toy world, {understanding} understanding: change over CLO "
                                                 f"({len(size.seeds)} seeds, mean ± s.e.)")
    paths = save_figure(fig, out_dir, name)
    summary = {"size": _size_dict(size), "understanding": understanding, "rows": rows,
               "vs_control": _vs_control(arms, "all") if "all" in judges else {}}
    return {"paths": paths + [write_summary(out_dir, name, summary)], "summary": summary, "arms": arms}


def _vs_control(arms, control, keys=("gen_acc", "und_fp_rate", "non_unification", "win_rate", "und_fn_rate")):
    return {label: {k: paired_difference(recs, arms[control], k) for k in keys}
            for label, recs in arms.items() if label != control}


def self_vs_control(arms: dict[str, list[dict]], keys: Sequence[str]) -> dict:
    """Per key: the self arm's change minus the control's (paired by seed), and each arm's
    ``(before, after, change)``; every value ``(mean, s.e., seeds)``.

    >>> recs = lambda d: [{"epoch": e, "seed": 0, "x": d * e} for e in (0, 1)]
    >>> self_vs_control({"self": recs(0.3), "all": recs(0.1)}, ["x"])["x"]["vs_control"][0]
    0.2
    """
    return {k: {"vs_control": paired_difference(arms["self"], arms["all"], k), "self": change(arms["self"], k),
                "all": change(arms["all"], k)} for k in keys}


def _size_dict(size: ToySize) -> dict:
    d = dataclasses.asdict(size)
    d["clo"] = size.clo.to_dict()
    return d


def figure_toy_first_order(size: ToySize, out_dir: str | Path, *, lrs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
                           n_probes: int = 24) -> dict:
    """Finding 3: one SGD step of self-judged SFT (float64); measured change of ``log pi(x | c)`` and
    ``log P(yes | x, c)`` on probe pairs against the first-order prediction, per lr, every seed.

    (Example in the module docstring.)
    """
    torch.set_num_threads(1)
    rows = []
    for s in size.seeds:
        model = pretrained_model(size, s, check=not _quick(size))
        for r in one_step_check(model, lrs=lrs, n_probes=n_probes, seed=s, threshold=size.clo.threshold):
            rows.append({**r, "seed": s})
    summary = {"size": _size_dict(size), "lrs": list(lrs), "summary": one_step_summary(rows),
               "per_seed": {s: one_step_summary([r for r in rows if r["seed"] == s]) for s in size.seeds},
               "rows": rows}
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    for ax, branch in zip(axes[:2], ("generation", "understanding")):
        # per unit of lr, so every step size shares one scale; the first order is the diagonal
        for lr in lrs:
            rs = [r for r in rows if r["branch"] == branch and r["lr"] == lr]
            ax.scatter([r["predicted"] / lr for r in rs], [r["measured"] / lr for r in rs], s=6, label=f"lr {lr:g}")
        xs = [r["predicted"] / r["lr"] for r in rows if r["branch"] == branch]
        ax.plot([min(xs), max(xs)], [min(xs), max(xs)], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("predicted / lr  =  <grad log p(o), -grad L>")
        ax.set_ylabel("measured change / lr")
        what = "log pi(x | c)" if branch == "generation" else "log P(yes | x, c)"
        ax.set_title(f"{branch}: {what}", fontsize=9)
        ax.legend(fontsize=6)
    ax = axes[2]
    for branch in ("generation", "understanding"):
        s = summary["summary"][branch]
        xs = sorted(s["mean_abs_residual"])
        ax.loglog(xs, [s["mean_abs_residual"][x] for x in xs], marker="o",
                  label=f"{branch} (slope {s['residual_slope']:.2f})")
    ax.set_xlabel("lr")
    ax.set_ylabel("mean |measured - predicted|")
    ax.set_title("residual of the first-order prediction", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "fig_toy_first_order")
    return {"paths": paths + [write_summary(out_dir, "fig_toy_first_order", summary)], "summary": summary}


COUPLINGS = (("janus", "janus", "head"), ("full", "full", "head"), ("bayes link", "full", "bayes"))


def figure_toy_sharing(size: ToySize, out_dir: str | Path, *, couplings: Sequence[tuple[str, str, str]] = COUPLINGS
                       ) -> dict:
    """Finding 4: the understanding gain (self judge minus the unfiltered control, paired by seed) as the
    coupling of the branches grows: Janus-like sharing, full sharing, the Bayes link; with the
    generation gain for reference.

    >>> import tempfile
    >>> out = figure_toy_sharing(QUICK, tempfile.mkdtemp(), couplings=(("full", "full", "head"),))
    >>> sorted(out["summary"]["couplings"]["full"])[:2]
    ['gen_acc', 'non_unification']
    """
    keys = ("gen_acc", "und_fp_rate", "win_rate", "und_fn_rate", "non_unification")
    results, all_arms = {}, {}
    for label, sharing, understanding in couplings:
        arms = study(size, ("self", "all"), sharing=sharing, understanding=understanding)
        all_arms[label] = arms
        results[label] = self_vs_control(arms, keys)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.0))
    labels = [c[0] for c in couplings]
    for ax, k, title in zip(axes, ("gen_acc", "und_fp_rate", "win_rate"),
                            ("Gen accuracy: self - control", "Und FP rate: self - control",
                             "Und win rate: self - control")):
        ys = [100 * results[lab][k]["vs_control"][0] for lab in labels]
        es = [0.0 if math.isnan(results[lab][k]["vs_control"][1]) else 100 * results[lab][k]["vs_control"][1]
              for lab in labels]
        ax.bar(range(len(labels)), ys, yerr=es, capsize=3, color=["#999999", "#4477aa", "#cc6677"][: len(labels)])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("points (paired by seed)", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"coupling of understanding to generation ({len(size.seeds)} seeds, mean ± s.e.)", fontsize=10)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "fig_toy_sharing")
    summary = {"size": _size_dict(size), "couplings": results,
               "spec": {lab: {"sharing": s, "understanding": u} for lab, s, u in couplings}}
    return {"paths": paths + [write_summary(out_dir, "fig_toy_sharing", summary)], "summary": summary,
            "arms": all_arms}


RECIPES = (
    ("default", {}),
    ("lr x10", {"lr": 1e-3}),
    ("epochs x3", {"epochs": 12, "curriculum": "epochs:6"}),
    ("SGD", {"optimizer": "sgd", "lr": 5e-3}),
)


def figure_toy_recipes(size: ToySize, out_dir: str | Path, *, recipes: Sequence[tuple[str, dict]] = RECIPES) -> dict:
    """What it would take: the self judge against the unfiltered control under stronger or longer
    generation training (the default round, lr x 10, three times the epochs, plain SGD); the change
    of Gen accuracy, of the understanding's false-positive and false-negative rates, and the win
    rate with its denominator.

    >>> import tempfile
    >>> out = figure_toy_recipes(QUICK, tempfile.mkdtemp(), recipes=(("default", {}),))
    >>> sorted(out["summary"]["recipes"]["default"])[:2]
    ['gen_acc', 'non_unification']
    """
    keys = ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate", "non_unification")
    results = {}
    for label, over in recipes:
        arms = study(size, ("self", "all"), clo_overrides=over)
        results[label] = self_vs_control(arms, keys)
        results[label]["win_rate_n"] = {a: change(arms[a], "win_rate_n")[1] for a in ("self", "all")}
    plt = _plt()
    labels = [r[0] for r in recipes]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
    w = 0.38
    for ax, k, title in zip(axes, ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate"),
                            ("Gen accuracy, change", "Und FP rate, change", "Und FN rate, change",
                             "Und win rate - 50 (denominator)")):
        for i, arm in enumerate(("self", "all")):
            pos = "after" if k == "win_rate" else None
            stats = [results[lab][k][arm][1 if pos else 2] for lab in labels]
            ys = [100 * (m - (0.5 if pos else 0.0)) for m, _, _ in stats]
            es = [0.0 if math.isnan(se) else 100 * se for _, se, _ in stats]
            xs = [j + (i - 0.5) * w for j in range(len(labels))]
            ax.bar(xs, ys, w, yerr=es, capsize=2, label=arm, color="#4477aa" if arm == "self" else "#bbbbbb")
            if k == "win_rate":
                for x, y, lab in zip(xs, ys, labels):
                    ax.annotate(f"{results[lab]['win_rate_n'][arm][0]:.0f}", (x, y), fontsize=6, ha="center",
                                va="bottom" if y >= 0 else "top")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"stronger generation training: self judge against the control ({len(size.seeds)} seeds)",
                 fontsize=10)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "fig_toy_recipes")
    summary = {"size": _size_dict(size), "recipes": results, "spec": {lab: over for lab, over in recipes}}
    return {"paths": paths + [write_summary(out_dir, "fig_toy_recipes", summary)], "summary": summary}


FIGURES: dict[str, Callable[..., dict]] = {
    "toy_judges": figure_toy_judges,
    "toy_first_order": figure_toy_first_order,
    "toy_sharing": figure_toy_sharing,
    "toy_recipes": figure_toy_recipes,
}


def main(name: str, argv: Sequence[str] | None = None, *, default_out: str | Path = "paper_figures/out") -> dict:
    """The command line of one toy figure script: ``--out``, ``--quick``, ``--seeds``, ``--seed``,
    ``--cache-dir`` (and ``--understanding`` for ``toy_judges``).

    >>> import contextlib, io, tempfile
    >>> with contextlib.redirect_stdout(io.StringIO()):
    ...     out = main("toy_first_order", ["--quick", "--seeds", "1", "--out", tempfile.mkdtemp()])
    >>> list(out["summary"]["size"]["seeds"])
    [0]
    """
    import os

    fn, p = figure_parser(FIGURES, name, default_out,
                          quick_help="the tiny preset, a few pre-training steps, no gap check: a smoke run (seconds)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds seed..seed+N-1 (default 3, quick 2)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DYNAMICS_CACHE", "cache/toy")),
                   help="pre-trained checkpoint cache (env DYNAMICS_CACHE)")
    if name == "toy_judges":
        p.add_argument("--understanding", default="head", choices=["head", "bayes"],
                       help="understanding read by the trained yes/no head, or through the Bayes link")
    args = p.parse_args(argv)
    n = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if n < 1:
        p.error(f"--seeds must be >= 1, got {n}")
    base = QUICK if args.quick else ToySize()
    size = dataclasses.replace(base, seeds=tuple(range(args.seed, args.seed + n)),
                               cache_dir=None if args.quick else str(args.cache_dir))
    kw = {"understanding": args.understanding} if name == "toy_judges" else {}
    if args.quick and name == "toy_first_order":
        kw = {"lrs": (1e-3, 1e-2), "n_probes": 4}
    result = fn(size, args.out, **kw)
    for path in result["paths"]:
        print(path)
    return result

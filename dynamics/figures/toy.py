"""Figures of the toy-world experiments: :mod:`dynamics.toy.experiments` runs them and returns a
result dict; this module only draws it.

Each ``draw_<figure>(result, out_dir)`` writes ``<name>.png``, ``.pdf`` and ``.json`` (the result's
``summary``) and returns the three paths:

- :func:`draw_toy_judges`      per category, a bar per judge: the change over CLO;
- :func:`draw_toy_first_order` measured against predicted one-step changes, and the residual in lr;
- :func:`draw_toy_phase_diagram` coupling x judge quality, each arm placed by its phase;
- :func:`draw_toy_recipes`     the self judge against the control per recipe.

Example (a result as :func:`dynamics.toy.experiments.toy_recipes` returns it)::

    >>> import tempfile
    >>> st = lambda m: ((0.5, 0.01, 2), (0.5 + m, 0.01, 2), (m, 0.01, 2))
    >>> arm = {k: {"self": st(0.02), "all": st(0.0), "vs_control": (0.02, 0.01, 2)}
    ...        for k in ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate")}
    >>> arm["win_rate_n"] = {"self": (12.0, 1.0, 2), "all": (10.0, 1.0, 2)}
    >>> result = {"name": "fig_toy_recipes", "summary": {"size": {"seeds": [0, 1]}, "recipes": {"default": arm}},
    ...           "plot": {"labels": ["default"]}}
    >>> [p.suffix for p in draw_toy_recipes(result, tempfile.mkdtemp())]
    ['.png', '.pdf', '.json']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dynamics.figures.common import error_bar, finish, pyplot
from dynamics.figures.phase import plot_phase_diagram
from dynamics.report import LABELS

__all__ = [
    "draw_toy_first_order",
    "draw_toy_judges",
    "draw_toy_phase_diagram",
    "draw_toy_recipes",
    "plot_category_bars",
]


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _bar_title(metric: str) -> str:
    return f"{LABELS.get(metric, metric)} - 50" if metric == "win_rate" else f"{LABELS.get(metric, metric)}, change"


def _bar_value(rows, judge, cat, metric):
    for r in rows:
        if r["judge"] == judge and r["category"] == cat and r["metric"] == metric:
            if metric == "win_rate":
                m, se, _ = r["after"]
                return _nan(m) - 0.5, _nan(se), _nan(r.get("n", (math.nan,))[0])
            return _nan(r["change"][0]), _nan(r["change"][1]), None
    return math.nan, math.nan, None


def plot_category_bars(rows: Sequence[dict], judges: Sequence[str], categories: Sequence[str],
                       metrics: Sequence[str], *, title: str | None = None):
    """One panel per metric; per category a bar per judge: the change over training (mean ± s.e. across
    seeds; for the win rate, its value minus 50 with the mean denominator above the bar). ``rows``
    are those of :func:`dynamics.toy.study.category_table`. Returns the figure.

    >>> rows = [{"judge": "self", "category": "all", "metric": "gen_acc", "change": (0.05, 0.01, 2)}]
    >>> len(plot_category_bars(rows, ["self"], ["all"], ["gen_acc"]).axes)
    1
    """
    plt = pyplot()
    cats = list(categories)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(1.15 * len(cats) * max(2, len(judges)) / 2 + 2,
                                                       2.2 * len(metrics)), squeeze=False)
    w = 0.8 / len(judges)
    for ax, metric in zip(axes[:, 0], metrics):
        for i, j in enumerate(judges):
            vals = [_bar_value(rows, j, c, metric) for c in cats]
            xs = [k + (i - (len(judges) - 1) / 2) * w for k in range(len(cats))]
            ys = [100 * v[0] for v in vals]
            es = [100 * error_bar(v[1]) for v in vals]
            ax.bar(xs, ys, w, yerr=es, label=j, capsize=2)
            if metric == "win_rate":
                for x, y, v in zip(xs, ys, vals):
                    if v[2] is not None and not math.isnan(v[2]):
                        ax.annotate(f"{v[2]:.0f}", (x, y), fontsize=5, ha="center",
                                    va="bottom" if y >= 0 else "top")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(_bar_title(metric), fontsize=9)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c.replace("_", " ") for c in cats], fontsize=7)
    axes[0, 0].legend(fontsize=7, ncol=len(judges))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _seeds(summary: dict) -> int:
    return len(summary["size"]["seeds"])


def draw_toy_judges(result: dict, out_dir: str | Path) -> list[Path]:
    """Findings 1 and 2 per category: the change over CLO of each judge's arm."""
    s, plot = result["summary"], result["plot"]
    fig = plot_category_bars(s["rows"], plot["judges"], plot["categories"], plot["metrics"],
                             title=f"toy world, {s['coupling']} coupling: change over CLO "
                                   f"({_seeds(s)} seeds, mean ± s.e.)")
    return finish(fig, out_dir, result)


def draw_toy_first_order(result: dict, out_dir: str | Path) -> list[Path]:
    """Finding 3: measured against predicted one-step changes per branch (per unit of lr), and the
    residual of the first-order prediction against lr."""
    s = result["summary"]
    rows, lrs = s["rows"], s["lrs"]
    plt = pyplot()
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
        b = s["summary"][branch]
        resid = {float(lr): v for lr, v in b["mean_abs_residual"].items()}  # lr keys are strings after JSON
        xs = sorted(resid)
        ax.loglog(xs, [resid[x] for x in xs], marker="o", label=f"{branch} (slope {_nan(b['residual_slope']):.2f})")
    ax.set_xlabel("lr")
    ax.set_ylabel("mean |measured - predicted|")
    ax.set_title("residual of the first-order prediction", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig, out_dir, result)


def draw_toy_phase_diagram(result: dict, out_dir: str | Path) -> list[Path]:
    """Coupling x judge quality at the toy scale, each arm placed by its phase."""
    s, plot = result["summary"], result["plot"]
    ns = sorted({row["gen"][2] for by_judge in s["rows"].values() for row in by_judge.values()})
    caption = (f"Changes beyond the unfiltered control (points; mean ± s.e. over {'/'.join(map(str, ns))} units "
               f"(world, seed)); phase from one-sided paired t tests at alpha = {s['alpha']}, 'no transfer' by "
               f"TOST within ±{100 * s['fp_margin']:g} points of FP.")
    missing = {c: f"no unit passed the gap check ({len(e)} pre-trained)" for c, e in s.get("excluded", {}).items()
               if c not in s["rows"]}
    fig = plot_phase_diagram(s["rows"], plot["couplings"], plot["judges"], win_key="win_rate", caption=caption,
                             missing=missing, title=f"{plot['scale']}: coupling x judge quality (SFT, self-judged CLO)")
    return finish(fig, out_dir, result)


def draw_toy_recipes(result: dict, out_dir: str | Path) -> list[Path]:
    """What it would take: the self judge against the control per recipe (change of Gen accuracy,
    FP and FN rates; the win rate minus 50 with its denominator). (Example in the module docstring.)"""
    s, labels = result["summary"], result["plot"]["labels"]
    results = s["recipes"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
    w = 0.38
    for ax, k, title in zip(axes, ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate"),
                            ("Gen accuracy, change", "Und FP rate, change", "Und FN rate, change",
                             "Und win rate - 50 (denominator)")):
        for i, arm in enumerate(("self", "all")):
            pos = "after" if k == "win_rate" else None
            stats = [results[lab][k][arm][1 if pos else 2] for lab in labels]
            ys = [100 * (_nan(m) - (0.5 if pos else 0.0)) for m, _, _ in stats]
            es = [100 * error_bar(se) for _, se, _ in stats]
            xs = [j + (i - 0.5) * w for j in range(len(labels))]
            ax.bar(xs, ys, w, yerr=es, capsize=2, label=arm, color="#4477aa" if arm == "self" else "#bbbbbb")
            if k == "win_rate":
                for x, y, lab in zip(xs, ys, labels):
                    ax.annotate(f"{_nan(results[lab]['win_rate_n'][arm][0]):.0f}", (x, y), fontsize=6,
                                ha="center", va="bottom" if y >= 0 else "top")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"stronger generation training: self judge against the control ({_seeds(s)} seeds)",
                 fontsize=10)
    fig.tight_layout()
    return finish(fig, out_dir, result)

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

from dynamics.figures.common import finish
from dynamics.figures.phase import plot_phase_diagram
from dynamics.figures.style import (
    FONT,
    MIN_WIN_N,
    SYMBOLS,
    arm_style,
    arm_styles,
    band_caption,
    legend_below,
    panels,
    smoke_banner,
    styled,
    win_rate_style,
    yerr,
)
from dynamics.figures.style import caption as style_caption
from dynamics.report import LABELS

__all__ = [
    "draw_toy_curriculum_map",
    "draw_toy_first_order",
    "draw_toy_judges",
    "draw_toy_phase_diagram",
    "draw_toy_poor_supervision",
    "draw_toy_recipes",
    "draw_toy_scopes",
    "plot_category_bars",
]


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _bar_title(metric: str) -> str:
    return f"{LABELS.get(metric, metric)} $-$ 50" if metric == "win_rate" else f"{LABELS.get(metric, metric)}, change"


def _bar_value(rows, judge, cat, metric):
    """(value, s.e., seeds, denominator) of one bar (the denominator only for the win rate)."""
    for r in rows:
        if r["judge"] == judge and r["category"] == cat and r["metric"] == metric:
            if metric == "win_rate":
                m, se, n = r["after"]
                return _nan(m) - 0.5, _nan(se), n, _nan(r.get("n", (math.nan,))[0])
            m, se, n = r["change"]
            return _nan(m), _nan(se), n, None
    return math.nan, math.nan, 0, None


def _bars(ax, xs, ys, es, ns, width, style, label, denominators=None):
    """Bars of one arm: error bars only where there are two seeds or more; with ``denominators`` (a win
    rate's), each written above its bar and the bar greyed where it is under :data:`MIN_WIN_N`."""
    for j, (x, y, e, n) in enumerate(zip(xs, ys, es, ns)):
        look = win_rate_style(denominators[j]) if denominators is not None else {"alpha": 1.0, "hatch": None}
        ax.bar([x], [0.0 if math.isnan(y) else y], width, color=style["color"], alpha=look["alpha"],
               hatch=look["hatch"], edgecolor="white" if look["hatch"] else style["color"], lw=0,
               label=label if j == 0 else "_")
        err = yerr(e, n)
        if err is not None and not math.isnan(y):
            ax.errorbar([x], [y], yerr=[err], color="k", lw=0.8, ls="none")
        if denominators is not None and not math.isnan(denominators[j]):
            ax.annotate(f"{denominators[j]:.0f}", (x, 0.0 if math.isnan(y) else y), fontsize=FONT - 2, ha="center",
                        va="bottom" if (y if not math.isnan(y) else 0) >= 0 else "top", xytext=(0, 1),
                        textcoords="offset points")


@styled
def plot_category_bars(rows: Sequence[dict], judges: Sequence[str], categories: Sequence[str],
                       metrics: Sequence[str], *, title: str | None = None, caption: str | None = None):
    """One panel per metric (a row each); per category a bar per judge: the change over training (mean
    ± s.e. across seeds; for the win rate, its value minus 50 with its mean denominator above the bar,
    greyed under :data:`~dynamics.figures.style.MIN_WIN_N`). ``rows`` are those of
    :func:`dynamics.toy.study.category_table`. Returns the figure.

    >>> rows = [{"judge": "self", "category": "all", "metric": "gen_acc", "change": (0.05, 0.01, 2)}]
    >>> len(plot_category_bars(rows, ["self"], ["all"], ["gen_acc"]).axes)
    1
    """
    cats = list(categories)
    fig, axes = panels(len(metrics), cols=1, height=1.55)
    look = arm_styles(judges)
    w = 0.8 / len(judges)
    for ax, metric in zip(axes, metrics):
        for i, j in enumerate(judges):
            vals = [_bar_value(rows, j, c, metric) for c in cats]
            xs = [k + (i - (len(judges) - 1) / 2) * w for k in range(len(cats))]
            _bars(ax, xs, [100 * v[0] for v in vals], [100 * v[1] for v in vals], [v[2] for v in vals], w, look[j], j,
                  [v[3] for v in vals] if metric == "win_rate" else None)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("points")
        ax.set_title(_bar_title(metric))
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c.replace("_", " ") for c in cats])
    legend_below(fig, axes)
    if title:
        fig.suptitle(title)
    style_caption(fig, caption or "")
    return fig


def _units(summary: dict) -> tuple[int, int]:
    """(seeds, worlds) of a toy summary's size."""
    size = summary["size"]
    return len(size["seeds"]), len(size.get("worlds") or [0])


def _smoke(fig, summary: dict) -> None:
    """Say so across the figure when its size is a smoke test (the tiny preset, a few pre-training steps)."""
    size = summary["size"]
    if size.get("preset") == "tiny":
        smoke_banner(fig, f"tiny preset, {size.get('pretrain_steps')} pre-training steps")


def _caption(summary: dict, extra: str = "") -> str:
    seeds, worlds = _units(summary)
    text = band_caption(seeds, worlds=worlds, what="Bars", spread="error bars")
    return f"{text} {extra}".strip()


@styled
def draw_toy_judges(result: dict, out_dir: str | Path) -> list[Path]:
    """Findings 1 and 2 per category: the change over CLO of each judge's arm."""
    s, plot = result["summary"], result["plot"]
    fig = plot_category_bars(s["rows"], plot["judges"], plot["categories"], plot["metrics"],
                             title=f"toy world, {s['coupling']} coupling: change over one CLO round",
                             caption=_caption(s, "Change = after - before, points. Win rate: after the round, "
                                                 f"numbers = mean disagreements it rests on; hatched: under "
                                                 f"{MIN_WIN_N}."))
    _smoke(fig, s)
    return finish(fig, out_dir, result)


@styled
def draw_toy_first_order(result: dict, out_dir: str | Path) -> list[Path]:
    """Finding 3: measured against predicted one-step changes per branch (per unit of lr), and the
    residual of the first-order prediction against lr."""
    s = result["summary"]
    rows, lrs = s["rows"], s["lrs"]
    fig, axes = panels(3, height=2.6)
    for ax, branch in zip(axes[:2], ("generation", "understanding")):
        # per unit of lr, so every step size shares one scale; the first order is the diagonal
        for i, lr in enumerate(lrs):
            rs = [r for r in rows if r["branch"] == branch and r["lr"] == lr]
            st = arm_style(i)
            ax.scatter([r["predicted"] / lr for r in rs], [r["measured"] / lr for r in rs], s=8, color=st["color"],
                       marker=st["marker"], label=f"lr {lr:g}")
        xs = [r["predicted"] / r["lr"] for r in rows if r["branch"] == branch]
        if xs:
            ax.plot([min(xs), max(xs)], [min(xs), max(xs)], color="grey", lw=0.8, ls="--", label="measured = predicted")
        ax.set_xlabel(r"predicted / lr $= \langle \nabla \log p(o), -\nabla L \rangle$")
        ax.set_ylabel("measured change / lr")
        ax.set_title(f"{branch}: {SYMBOLS['gen_logp' if branch == 'generation' else 'und_logp']}")
    ax = axes[2]
    for i, branch in enumerate(("generation", "understanding")):
        b = s["summary"][branch]
        resid = {float(lr): v for lr, v in b["mean_abs_residual"].items()}  # lr keys are strings after JSON
        xs = sorted(resid)
        ax.loglog(xs, [resid[x] for x in xs], **arm_style(i), label=f"{branch} (slope {_nan(b['residual_slope']):.2f})")
    ax.set_xlabel("lr")
    ax.set_ylabel("mean |measured - predicted|")
    ax.set_title("residual of the first order")
    legend_below(fig, axes)
    seeds, _ = _units(s)
    style_caption(fig, f"One point per probe (first seed's model, one plain SGD step per lr); residual: mean over "
                       f"probes, slope fitted in log-log. {seeds} seed{'s' if seeds != 1 else ''}.")
    _smoke(fig, s)
    return finish(fig, out_dir, result)


@styled
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
    _smoke(fig, s)
    return finish(fig, out_dir, result)


@styled
def draw_toy_recipes(result: dict, out_dir: str | Path) -> list[Path]:
    """What it would take: the self judge against the control per recipe (change of Gen accuracy,
    FP and FN rates; the win rate minus 50 with its denominator). (Example in the module docstring.)"""
    return _self_vs_control(result, out_dir, result["summary"]["recipes"],
                            "stronger generation training: self judge against the control",
                            ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate"))


@styled
def draw_toy_scopes(result: dict, out_dir: str | Path) -> list[Path]:
    """The trainable-parts ablation (:func:`dynamics.toy.ablations.toy_scopes`): the self judge against
    the control per scope (change of Gen accuracy, FP rate and Non; the win rate minus 50 with its
    denominator), the number of trained parameters under each label."""
    s = result["summary"]
    params = s.get("parameters", {})
    labels = {lab: f"{lab}\n({params[lab] / 1e3:.0f}k params)" if params.get(lab) else lab
              for lab in result["plot"]["labels"]}
    return _self_vs_control(result, out_dir, s["scopes"], "trainable parts: self judge against the control",
                            ("gen_acc", "und_fp_rate", "non_unification", "win_rate"), tick_labels=labels)


_TITLES = {"gen_acc": "Gen accuracy, change", "und_fp_rate": "Und FP rate, change",
           "und_fn_rate": "Und FN rate, change", "non_unification": "Non, change",
           "win_rate": "Und win rate $-$ 50 (denominator)"}


def _self_vs_control(result: dict, out_dir, results: dict, title: str, keys, tick_labels: dict | None = None):
    """Bars of the self arm and the control per label (a recipe, a scope) for four keys."""
    s, labels = result["summary"], result["plot"]["labels"]
    fig, axes = panels(4, cols=2, height=2.2)
    w = 0.38
    look = arm_styles(["self", "all"])
    for ax, k in zip(axes, keys):
        for i, arm in enumerate(("self", "all")):
            pos = "after" if k == "win_rate" else None
            stats = [results[lab][k][arm][1 if pos else 2] for lab in labels]
            ys = [100 * (_nan(m) - (0.5 if pos else 0.0)) for m, _, _ in stats]
            es = [100 * _nan(se) for _, se, _ in stats]
            xs = [j + (i - 0.5) * w for j in range(len(labels))]
            dens = [_nan(results[lab]["win_rate_n"][arm][0]) for lab in labels] if k == "win_rate" else None
            _bars(ax, xs, ys, es, [n for _, _, n in stats], w, look[arm], arm, dens)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([(tick_labels or {}).get(lab, lab) for lab in labels])
        ax.set_ylabel("points")
        ax.set_title(_TITLES[k])
    legend_below(fig, axes)
    fig.suptitle(title)
    style_caption(fig, _caption(s, f"'all': the unfiltered control. Hatched win rates rest on fewer than {MIN_WIN_N} "
                                   "disagreements."))
    _smoke(fig, s)
    return finish(fig, out_dir, result)


def draw_toy_poor_supervision(result: dict, out_dir: str | Path) -> list[Path]:
    """The toy poor-supervision scan (:func:`dynamics.toy.ablations.toy_poor_supervision`), drawn as
    the simulator's (:func:`dynamics.figures.poor_supervision.draw_poor_supervision`)."""
    from dynamics.figures.poor_supervision import draw_poor_supervision

    return draw_poor_supervision(result, out_dir)


def draw_toy_curriculum_map(result: dict, out_dir: str | Path) -> list[Path]:
    """The toy curriculum map (:func:`dynamics.toy.ablations.toy_curriculum_map`), drawn as the
    simulator's (:func:`dynamics.figures.ablations.draw_curriculum_map`)."""
    from dynamics.figures.ablations import draw_curriculum_map

    return draw_curriculum_map(result, out_dir)

"""Figures of the paper's ablations (:mod:`dynamics.sim.ablations` computes them; this module only
draws): the curriculum map, gap against gain, the number of candidates.

Each ``draw_<figure>(result, out_dir)`` writes ``<name>.png``, ``.pdf`` and ``.json`` (the result's
``summary``) and returns the three paths. A result drawn from its JSON round trip (tuples as lists,
NaN as null) draws the same.

Example (a result of the form :func:`dynamics.sim.ablations.n_candidates` returns)::

    >>> import tempfile
    >>> rows = [{"n": n, "train_size": (36.0 * n, 1.0, 4), "change": {"exact_gen_acc": (0.1 + 0.01 * n, 0.01, 4),
    ...          "exact_pre_fp_rate": (-0.1, 0.01, 4)}} for n in (1, 2, 8)]
    >>> result = {"name": "fig_n_candidates", "summary": {"rows": rows, "points": [[36.0, 0.1]]}, "plot": {}}
    >>> [p.suffix for p in draw_n_candidates(result, tempfile.mkdtemp())]
    ['.png', '.pdf', '.json']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dynamics.figures.common import error_bar, finish, pyplot

__all__ = ["draw_curriculum_map", "draw_gap_gain", "draw_n_candidates", "plot_curriculum_map"]

REPLAY_STYLE = {"off": "C7", "early": "C0", "late": "C3", "adaptive": "C2"}


def _m(t) -> float:
    """The mean of a ``(mean, s.e., n)`` value (NaN where missing)."""
    return math.nan if t is None or t[0] is None else float(t[0])


def _e(t) -> float:
    return 0.0 if t is None else error_bar(t[1])


def _colour(replay: str, i: int) -> str:
    return REPLAY_STYLE.get(replay, f"C{4 + i}")


def plot_curriculum_map(rows: Sequence[dict], *, points: Sequence[dict] = (), title: str | None = None):
    """The curriculum map: against the number of candidates ``N``, one line per replay (and loss:
    SFT solid, DPO dashed): the discard pool and the prompts recovered; the replayed precision against
    the first round's; Gen and the false-positive rate beyond no replay (points, mean ± s.e. over
    units); with ``points``, per unit, the replayed precision's gap to the first round against the
    Gen gain beyond no replay. Returns the figure.

    >>> rows = [{"n": n, "loss": "sft", "replay": r, "pool": (12.0 / n, 1.0, 4), "recovered": (10.0 / n, 1.0, 4),
    ...          "replay_precision": (0.7, 0.05, 4), "first_precision": (0.85, 0.01, 4),
    ...          **({"vs_off": {"exact_gen_acc": (0.01, 0.02, 4), "exact_pre_fp_rate": (-0.01, 0.004, 4)}}
    ...             if r != "off" else {})} for n in (1, 2) for r in ("off", "late")]
    >>> len(plot_curriculum_map(rows, points=[{"precision_gap": -0.1, "gen_vs_off": 0.02, "replay": "late"}]).axes)
    5
    """
    plt = pyplot()
    n_panels = 5 if points else 4
    fig, axes = plt.subplots(1, n_panels, figsize=(3.4 * n_panels, 3.0))
    replays = list(dict.fromkeys(r["replay"] for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    ax = axes[0]
    for loss in losses:
        mine = [r for r in rows if r["loss"] == loss and r["replay"] == "off"]
        if loss == losses[0] and mine:
            ax.errorbar([r["n"] for r in mine], [_m(r["pool"]) for r in mine], yerr=[_e(r["pool"]) for r in mine],
                        color="k", marker="s", ms=3, capsize=2, label="discard pool")
    for i, replay in enumerate(r for r in replays if r != "off"):
        mine = [r for r in rows if r["loss"] == losses[0] and r["replay"] == replay]
        ax.errorbar([r["n"] + 0.08 * i for r in mine], [_m(r["recovered"]) for r in mine],
                    yerr=[_e(r["recovered"]) for r in mine], color=_colour(replay, i), marker="o", ms=3, capsize=2,
                    label=f"recovered: {replay}")
    ax.set_xscale("log")
    ax.set_title(f"discard pool and prompts recovered ({losses[0]})", fontsize=9)
    ax.set_ylabel("prompts")
    ax.legend(fontsize=6)
    ax = axes[1]
    first = [r for r in rows if r["loss"] == losses[0] and r["replay"] == "off"]
    ax.plot([r["n"] for r in first], [_m(r["first_precision"]) for r in first], color="k", marker="s", ms=3,
            label="first round")
    for i, replay in enumerate(r for r in replays if r != "off"):
        mine = [r for r in rows if r["loss"] == losses[0] and r["replay"] == replay]
        ax.errorbar([r["n"] + 0.08 * i for r in mine], [_m(r["replay_precision"]) for r in mine],
                    yerr=[_e(r["replay_precision"]) for r in mine], color=_colour(replay, i), marker="o", ms=3,
                    capsize=2, ls="none", label=f"replayed: {replay}")
    ax.set_xscale("log")
    ax.set_title("precision of the training data (oracle)", fontsize=9)
    ax.legend(fontsize=6)
    for ax, key, name in ((axes[2], "exact_gen_acc", "Gen"), (axes[3], "exact_pre_fp_rate", "Und FP rate")):
        for li, loss in enumerate(losses):
            for i, replay in enumerate(r for r in replays if r != "off"):
                mine = [r for r in rows if r["loss"] == loss and r["replay"] == replay and "vs_off" in r]
                ax.errorbar([r["n"] * (1 + 0.05 * i) for r in mine], [_m(r["vs_off"][key]) for r in mine],
                            yerr=[_e(r["vs_off"][key]) for r in mine], color=_colour(replay, i), marker="o", ms=3,
                            capsize=2, ls="-" if li == 0 else "--", label=f"{loss}, {replay}")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_title(f"{name} beyond no replay (exact)", fontsize=9)
        ax.set_xlabel("candidates per prompt N")
    axes[2].legend(fontsize=6)
    if points:
        ax = axes[4]
        for i, replay in enumerate(r for r in replays if r != "off"):
            mine = [p for p in points if p["replay"] == replay]
            ax.scatter([p["precision_gap"] for p in mine], [p["gen_vs_off"] for p in mine], s=8,
                       color=_colour(replay, i), label=replay, alpha=0.7)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.axvline(0.0, color="grey", lw=0.6)
        ax.set_title("per unit: replayed data against gain", fontsize=9)
        ax.set_xlabel("replayed minus first-round precision")
        ax.set_ylabel("Gen beyond no replay")
        ax.legend(fontsize=6)
    for ax in axes[:2]:
        ax.set_xlabel("candidates per prompt N")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def draw_curriculum_map(result: dict, out_dir: str | Path) -> list[Path]:
    """The curriculum map (:func:`plot_curriculum_map`) of :func:`dynamics.sim.ablations.curriculum_map`."""
    s = result["summary"]
    why = s.get("why", {})
    rho = why.get("rho_gap_gen")
    title = f"curriculum replay (judge: {s.get('judge', 'self')})"
    if rho is not None and not (isinstance(rho, float) and math.isnan(rho)):
        title += f"; Spearman rho(precision gap, Gen gain) = {rho:+.2f}"
    fig = plot_curriculum_map(s["rows"], points=why.get("points", []), title=title)
    return finish(fig, out_dir, result)


def draw_gap_gain(result: dict, out_dir: str | Path) -> list[Path]:
    """Gap against gain: per tag x tier cell, the initial Non against the Gen gain (mean ± s.e. over
    units); per unit, Spearman's rho with the mean and its interval, the paper's 0.53 dashed.

    >>> import tempfile
    >>> cells = {f"cell:{t}/easy": {"non_start": (0.3 + i / 100, 0.01, 4), "gen_gain": (0.2, 0.02, 4)}
    ...          for i, t in enumerate(("object", "colour", "binding"))}
    >>> rho = {"mean": 0.1, "se": 0.1, "n": 4, "ci": [-0.2, 0.4], "level": 0.95,
    ...        "per_unit": {"0,0": 0.5, "0,1": -0.5, "0,2": 0.2, "0,3": 0.2}}
    >>> result = {"name": "fig_gap_gain", "summary": {"cells": cells, "rho": rho}, "plot": {}}
    >>> [p.suffix for p in draw_gap_gain(result, tempfile.mkdtemp())]
    ['.png', '.pdf', '.json']
    """
    s = result["summary"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
    ax = axes[0]
    for i, (cell, v) in enumerate(s["cells"].items()):
        ax.errorbar(_m(v["non_start"]), _m(v["gen_gain"]), xerr=_e(v["non_start"]), yerr=_e(v["gen_gain"]),
                    marker="o", ms=4, capsize=2, color=f"C{i % 10}", label=cell.removeprefix("cell:"))
    ax.set_xlabel("initial Non-unification (exact)")
    ax.set_ylabel("Gen gain (exact)")
    ax.set_title("per task tag x difficulty tier", fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    ax = axes[1]
    rho = s["rho"]
    vals = [v for v in rho["per_unit"].values() if v is not None]
    ax.scatter(range(len(vals)), vals, s=10, color="C0", label="per unit")
    lo, hi = rho["ci"]
    if rho["mean"] is not None and lo is not None:
        ax.axhspan(lo, hi, color="C0", alpha=0.15, label=f"mean {rho['mean']:+.2f}, {100 * rho['level']:g}% CI")
        ax.axhline(rho["mean"], color="C0")
    ax.axhline(0.53, color="C3", ls="--", label="paper: 0.53")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("unit (world, seed)")
    ax.set_title("Spearman rho(initial Non, Gen gain)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return finish(fig, out_dir, result)


def draw_n_candidates(result: dict, out_dir: str | Path) -> list[Path]:
    """The N-candidates ablation: training-set size against ``N`` and the change of Gen and of the
    false-positive rate against ``N`` (mean ± s.e. over units). (Example in the module docstring.)"""
    rows = result["summary"]["rows"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10.2, 3.0))
    ns = [r["n"] for r in rows]
    axes[0].errorbar(ns, [_m(r["train_size"]) for r in rows], yerr=[_e(r["train_size"]) for r in rows], marker="o",
                     ms=3, capsize=2)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_title("training-set size", fontsize=9)
    for ax, key, name in ((axes[1], "exact_gen_acc", "Gen"), (axes[2], "exact_pre_fp_rate", "Und FP rate")):
        ax.errorbar(ns, [_m(r["change"][key]) for r in rows], yerr=[_e(r["change"][key]) for r in rows], marker="o",
                    ms=3, capsize=2)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_title(f"change of {name} over training (exact)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("candidates per prompt N")
    fig.tight_layout()
    return finish(fig, out_dir, result)

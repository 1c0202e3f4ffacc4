"""Curriculum replay, read at any scale: the arms of a curriculum map (``N`` candidates x loss x
replay), the replay bookkeeping of a finished arm, and the table that compares each replay arm with the
no-replay arm of the same ``N`` and loss, unit by unit.

- :func:`replay_spec`, :func:`arm_label`: the replay names (``off``, ``early``, ``late``, ``adaptive``)
  and the arms' labels;
- :func:`replay_precision`, :func:`replay_stats`: what replay did in one arm (the pool Algorithm 1
  left, the prompts recovered from it, the precision of the replayed data by the audit's external
  verdicts, per group);
- :func:`summarise_curriculum`: the table (pool, recovered, replayed precision against the first
  round's, Gen / FP / Non against no replay, per tier) and ``why``: replayed precision against gain.

The runners stay with their scale (:func:`dynamics.sim.ablations.curriculum_runs`,
:func:`dynamics.toy.ablations.toy_curriculum_runs`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from dynamics.study.read import beyond, delta, final, last_epoch, per_unit
from dynamics.study.stats import spearman

__all__ = ["DPO_OVERRIDES", "EXACT_KEYS", "LOOP_KEYS", "REPLAYS", "arm_label", "replay_precision", "replay_spec",
           "replay_stats", "summarise_curriculum"]

REPLAYS = ("off", "early", "late", "adaptive")
# DPO with a per-token NLL term on the chosen sample, as in the training-curves figure
# (dynamics.sim.experiments.training_curves)
DPO_OVERRIDES = {"nll_weight": 0.1}
# Gen accuracy, false-positive rate, Non: the simulator's exact metrics, and the loop's sampled ones
EXACT_KEYS = ("exact_gen_acc", "exact_pre_fp_rate", "exact_non_unification")
LOOP_KEYS = ("gen_acc", "und_fp_rate", "non_unification")


def replay_spec(name: str, epochs: int) -> str:
    """The curriculum spec of a replay name: ``early`` replays at a fifth of training, ``late`` at
    half of it (the paper's epochs 4 and 10 of 20; :func:`dynamics.sim.experiments.curriculum`'s
    defaults), any other name is a :class:`~dynamics.clo.CLOConfig` curriculum spec as given.

    >>> replay_spec("early", 20), replay_spec("late", 20), replay_spec("late", 1), replay_spec("epochs:3", 20)
    ('epochs:4', 'epochs:10', 'epochs:1', 'epochs:3')
    """
    if name == "early":
        return f"epochs:{max(1, epochs // 5)}"
    if name == "late":
        return f"epochs:{max(1, epochs // 2)}"
    return name


def arm_label(n: int, loss: str, replay: str) -> str:
    """The label of one arm of the map, e.g. ``sft N=1 late``.

    >>> arm_label(1, "sft", "late")
    'sft N=1 late'
    """
    return f"{loss} N={n} {replay}"


def replay_precision(data) -> list[float]:
    """Per replica, the precision, by the external verdicts the loop's audit recorded
    (``data.external_yes``), of the candidates curriculum replay moved into the training set (NaN where
    nothing was replayed): how good the late data are.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> d = SimpleNamespace(accepted=torch.tensor([[[True, True], [True, False]]]),
    ...                     replayed=torch.tensor([[True, False]]), external_yes=torch.tensor([[[True, False], [True, True]]]))
    >>> replay_precision(d)
    [0.5]
    """
    if data.external_yes is None:
        raise ValueError("replay_precision: the training set carries no external verdicts (run with an external "
                         "judge and audit=True)")
    acc = data.accepted & data.replayed[..., None]
    ok = data.external_yes.bool()
    out = []
    for r in range(acc.shape[0]):
        n = int(acc[r].sum())
        out.append(float((acc[r] & ok[r]).sum()) / n if n else math.nan)
    return out


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def replay_stats(arm, groups: Mapping[str, Sequence[int]]) -> list[dict]:
    """The replay bookkeeping of a finished arm, one dict per replica: ``pool_start`` (prompts
    Algorithm 1 left in the discard pool), ``replay_precision`` (ground-truth precision of the
    candidates replay moved into the training set, :func:`replay_precision`; None
    where nothing was replayed), ``replay_precision_gap`` (that minus the first round's precision,
    ``sft_precision`` at epoch 0), ``replay_rounds`` (epochs whose trigger fired; with an empty pool
    it fires and moves nothing) and ``first_replay_epoch`` (None without a trigger); per group ``pool_start@<g>``, ``replayed_prompts@<g>``,
    ``replay_precision@<g>``.

    >>> from dynamics.sim.study import SimSize, pretrained, run_arm
    >>> w, m = pretrained(SimSize.tiny())
    >>> arm = run_arm(w, m, SimSize.tiny().config(curriculum="epochs:1", candidates=1))
    >>> s = replay_stats(arm, {"all": range(12)})[0]
    >>> s["pool_start"] == s["pool_start@all"] >= s["replayed_prompts@all"]
    True
    """
    d = arm.data
    start_pool = d.pool | d.replayed  # replay only moves prompts out of the pool
    first = {r["replica"]: r.get("sft_precision") for r in arm.records if int(r["epoch"]) == 0}
    rounds: dict[int, list[int]] = {}
    for r in arm.records:
        if r.get("replay"):
            rounds.setdefault(r["replica"], []).append(int(r["epoch"]))
    overall = replay_precision(d)
    per_group = {}
    for name, ids in groups.items():
        mask = torch.zeros(d.pool.shape[1], dtype=torch.bool)
        mask[torch.as_tensor(list(ids), dtype=torch.long)] = True
        per_group[name] = (mask, replay_precision(dataclasses.replace(d, replayed=d.replayed & mask)))
    out = []
    for r in range(d.pool.shape[0]):
        p0 = first.get(r)
        rec = {
            "pool_start": int(start_pool[r].sum()),
            "replay_precision": _nan_to_none(overall[r]),
            "replay_precision_gap": (None if math.isnan(overall[r]) or p0 is None else overall[r] - p0),
            "replay_rounds": len(rounds.get(r, [])),
            "first_replay_epoch": min(rounds[r]) if rounds.get(r) else None,
        }
        for name, (mask, prec) in per_group.items():
            rec[f"pool_start@{name}"] = int((start_pool[r] & mask).sum())
            rec[f"replayed_prompts@{name}"] = int((d.replayed[r] & mask).sum())
            rec[f"replay_precision@{name}"] = _nan_to_none(prec[r])
        out.append(rec)
    return out


def _t(est) -> tuple[float, float, int]:
    return est.as_tuple()


def _unit_gain(records, control, key) -> dict[tuple[int, int], float]:
    """Per unit, the change of ``key`` beyond the control's (the numbers :func:`beyond` averages)."""
    end = last_epoch(records)
    a0, a1 = per_unit(records, key, 0), per_unit(records, key, end)
    b0, b1 = per_unit(control, key, 0), per_unit(control, key, last_epoch(control))
    return {u: (a1[u] - a0[u]) - (b1[u] - b0[u]) for u in sorted(set(a0) & set(a1) & set(b0) & set(b1))}


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rho (:func:`dynamics.study.stats.spearman`), NaN with fewer than three points (two
    points always give +-1) or a constant side."""
    return math.nan if len(xs) < 3 else spearman(xs, ys)


def _compare(records, off, keys) -> dict:
    return {k: _t(beyond(records, off, k)) for k in keys}


def summarise_curriculum(runs: Mapping[str, list[dict]], *, ns: Sequence[int], replays: Sequence[str],
                         losses: Sequence[str], tiers: Sequence[str], keys: Sequence[str] = EXACT_KEYS) -> dict:
    """The curriculum table from :func:`curriculum_runs`: one row per ``N`` x loss x replay with,
    each ``(mean, s.e., units)``: ``pool`` (discard pool after Algorithm 1), ``recovered`` (prompts
    replay moved out of it), ``replay_precision`` / ``first_precision`` / ``precision_gap`` (replayed
    against first-round data), ``sft_size`` (training samples at the start and the end),
    ``dpo_pairs``, ``replay_rounds``, the arm's own change of Gen and FP, ``vs_off`` (Gen, FP, Non
    beyond the no-replay arm of the same ``N`` and loss), and the same per tier. ``why``: per unit,
    the replayed precision (and its gap to the first round) against the Gen gain beyond no replay,
    with Spearman's rho, over every arm that replayed something. ``keys``: the record keys of Gen
    accuracy, the understanding's false-positive rate and Non (default the simulator's exact metrics;
    the loop's sampled ``gen_acc``, ``und_fp_rate``, ``non_unification`` at the toy scale)."""
    gen, fp = keys[0], keys[1]
    rows, points = [], []
    for n in ns:
        for loss in losses:
            off_label = arm_label(n, loss, "off")
            for replay in replays:
                label = arm_label(n, loss, replay)
                if label not in runs:
                    continue
                recs = runs[label]
                row = {
                    "n": int(n), "loss": loss, "replay": replay, "label": label,
                    "pool": _t(final(recs, "discard_size", epoch=0)),
                    "recovered": _t(final(recs, "replayed_prompts")),
                    "replay_precision": _t(final(recs, "replay_precision")),
                    "first_precision": _t(final(recs, "sft_precision", epoch=0)),
                    "precision_gap": _t(final(recs, "replay_precision_gap")),
                    "final_precision": _t(final(recs, "sft_precision")),
                    "sft_size_start": _t(final(recs, "sft_size", epoch=0)),
                    "sft_size_end": _t(final(recs, "sft_size")),
                    "replay_rounds": _t(final(recs, "replay_rounds")),
                    "first_replay_epoch": _t(final(recs, "first_replay_epoch")),
                    "change": {k: _t(delta(recs, k)) for k in (gen, fp)},
                }
                if loss == "dpo":
                    row["dpo_pairs_start"] = _t(final(recs, "dpo_pairs", epoch=0))
                    row["dpo_pairs_end"] = _t(final(recs, "dpo_pairs"))
                has_off = off_label in runs and replay != "off"
                if has_off:
                    row["vs_off"] = _compare(recs, runs[off_label], keys)
                row["tiers"] = {}
                for tier in tiers:
                    g = f"tier:{tier}"
                    t = {
                        "pool": _t(final(recs, f"pool_start@{g}")),
                        "recovered": _t(final(recs, f"replayed_prompts@{g}")),
                        "replay_precision": _t(final(recs, f"replay_precision@{g}")),
                    }
                    if has_off:
                        t["vs_off"] = _compare(recs, runs[off_label], [f"{k}@{g}" for k in (gen, fp)])
                    row["tiers"][tier] = t
                rows.append(row)
                if has_off:
                    gain = _unit_gain(recs, runs[off_label], gen)
                    fp_gain = _unit_gain(recs, runs[off_label], fp)
                    end = last_epoch(recs)
                    prec = per_unit(recs, "replay_precision", end)
                    gap = per_unit(recs, "replay_precision_gap", end)
                    moved = per_unit(recs, "replayed_prompts", end)
                    for u in sorted(set(gain) & set(prec) & set(gap)):
                        points.append({"label": label, "n": int(n), "loss": loss, "replay": replay,
                                       "unit": list(u), "replay_precision": prec[u], "precision_gap": gap[u],
                                       "recovered": moved.get(u), "gen_vs_off": gain[u], "fp_vs_off": fp_gain.get(u)})
    why = {
        "points": points,
        "rho_precision_gen": _spearman([p["replay_precision"] for p in points], [p["gen_vs_off"] for p in points]),
        "rho_gap_gen": _spearman([p["precision_gap"] for p in points], [p["gen_vs_off"] for p in points]),
        "rho_recovered_gen": _spearman([p["recovered"] for p in points], [p["gen_vs_off"] for p in points]),
        "share_precision_below_first": (sum(p["precision_gap"] < 0 for p in points) / len(points)
                                        if points else math.nan),
    }
    return {"rows": rows, "why": why}

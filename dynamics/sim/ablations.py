"""The paper's ablations at the simulator scale, as numbers (figures only draw them:
:mod:`dynamics.figures.ablations`).

- :func:`curriculum_map`: curriculum replay where it can matter. For every number of candidates
  ``N``, loss (SFT, DPO) and replay (none, early, late, adaptive): the discard pool Algorithm 1
  leaves, the prompts replay recovers from it, the ground-truth precision of the replayed data
  against the first round's, and Gen / false positives against the no-replay arm of the same ``N``
  and loss (paired by unit), overall and per difficulty tier;
- :func:`gap_gain`: per task tag x difficulty tier cell, the initial non-unification against the
  Gen gain of the self-judged arm; Spearman's rho per unit and its mean with a t interval over units
  (the paper: rho = 0.53);
- :func:`n_candidates`: the training-set size and the Gen gain against ``N`` (the paper: 254 against
  2,265 training samples).

Every arm runs from the pre-trained replicas of its world with the same CLO seed
(:func:`dynamics.sim.study.run_arm`), so arms are read against each other unit by unit
(``(world, seed)``, :mod:`dynamics.study.read`). Besides the loop's records, the records of the first
and the last epoch carry exact per-group metrics (:func:`exact_group_metrics`:
``exact_gen_acc@tier:hard``, ``exact_pre_fp_rate@cell:binding/hard``, ...), and the last epoch's the
replay bookkeeping (:func:`replay_stats`: ``pool_start``, ``replay_precision``,
``replay_precision_gap``, and the same per tier), so a findings test states its claims on records.

Example (a tiny world)::

    >>> from dynamics.sim.study import SimSize
    >>> result = curriculum_map(SimSize.tiny(), ns=(1, 2), replays=("off", "late"), losses=("sft",), worlds=(0,))
    >>> [(r["n"], r["replay"]) for r in result["summary"]["rows"]]
    [(1, 'off'), (1, 'late'), (2, 'off'), (2, 'late')]
    >>> result["summary"]["replays"]["late"]
    'epochs:1'
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import torch

from dynamics import metrics
from dynamics.sim.study import Reference, SimSize, pretrained, run_arm
from dynamics.sim.world import TAGS, TIERS
from dynamics.study.curriculum import (
    DPO_OVERRIDES,
    EXACT_KEYS,
    REPLAYS,
    _compare,
    _nan_to_none,
    _spearman,
    _t,
    arm_label,
    replay_spec,
    replay_stats,
)
from dynamics.study.curriculum import summarise_curriculum as _summarise
from dynamics.study.read import delta, final, last_epoch, per_unit, unit
from dynamics.study.stats import one_sample

__all__ = [
    "DPO_OVERRIDES",
    "REPLAYS",
    "arm_label",
    "curriculum_map",
    "curriculum_runs",
    "exact_group_metrics",
    "gap_gain",
    "gap_gain_records",
    "gap_gain_summary",
    "groups_of",
    "n_candidates",
    "n_candidates_summary",
    "replay_spec",
    "replay_stats",
    "spearman_by_unit",
    "summarise_curriculum",
]

log = logging.getLogger(__name__)



def groups_of(world) -> dict[str, list[int]]:
    """Prompt ids by ``tag:<tag>``, ``tier:<tier>`` (the loop's groups) and ``cell:<tag>/<tier>``
    (their cross; empty cells left out).

    >>> from dynamics.sim.world import SimWorld
    >>> g = groups_of(SimWorld(24, 24, seed=0))
    >>> sum(len(v) for k, v in g.items() if k.startswith("cell:")), sum(len(g[f"tier:{t}"]) for t in TIERS)
    (24, 24)
    """
    out = dict(world.prompts.groups())
    for i, (tag, tier) in enumerate(zip(world.prompts.tags, world.prompts.tiers)):
        out.setdefault(f"cell:{tag}/{tier}", []).append(i)
    return out


def exact_group_metrics(world, model, reference: Reference, *, threshold: float = 0.5,
                        groups: Mapping[str, Sequence[int]] | None = None) -> list[dict]:
    """Exact metrics of ``model`` on each prompt group, one dict per replica, keyed
    ``<metric>@<group>``: ``exact_gen_acc`` (aligned mass), ``exact_pre_fp_rate`` (the current
    understanding's false positives on the pre-trained model's misaligned samples, weighted by the
    pre-trained ``pi_0`` of ``reference``) and ``exact_non_unification`` (own samples the own
    understanding rejects), the definitions of :func:`dynamics.sim.study.exact_epoch_metrics`
    restricted to the group's prompts. ``groups``: default :func:`groups_of`.

    >>> from dynamics.sim.study import exact_epoch_metrics
    >>> w, m = pretrained(SimSize.tiny())
    >>> ref = Reference.of(m)
    >>> got = exact_group_metrics(w, m, ref, groups={"all": range(12)})[0]
    >>> want = exact_epoch_metrics(w, m, ref)[0]
    >>> all(abs(got[f"{k}@all"] - want[k]) < 1e-12 for k in EXACT_KEYS)
    True
    """
    groups = groups_of(world) if groups is None else groups
    with torch.no_grad():
        pi = model.gen_table().to(torch.float64).cpu()
        cur_yes = metrics.accepts(model.understanding_table().cpu(), threshold)
    pi0 = reference.gen_logp.exp()
    al = world.aligned.cpu().expand_as(cur_yes)
    out = [{} for _ in range(cur_yes.shape[0])]
    for name, ids in groups.items():
        rows = torch.as_tensor(list(ids), dtype=torch.long)
        if len(rows) == 0:
            continue
        vals = {
            "exact_gen_acc": metrics.accuracy(al[:, rows], pi[:, rows]),
            "exact_pre_fp_rate": metrics.false_positive_rate(cur_yes[:, rows], al[:, rows], pi0[:, rows]),
            "exact_non_unification": metrics.non_unification(cur_yes[:, rows], pi[:, rows]),
        }
        for r, rec in enumerate(out):
            for k, v in vals.items():
                rec[f"{k}@{name}"] = float(v[r])
    return out


def _run(world, m0, cfg, *, label: str, tags: dict, groups, start: list[dict]) -> list[dict]:
    """One arm: the loop's records, with the exact group metrics at the first and last epoch and the
    replay bookkeeping at the last."""
    arm = run_arm(world, m0, cfg, label=label, tags=tags)
    end = exact_group_metrics(world, arm.model, arm.reference, threshold=cfg.threshold, groups=groups)
    tiers = {k: v for k, v in groups.items() if k.startswith("tier:")}
    stats = replay_stats(arm, tiers)
    last = last_epoch(arm.records)
    for rec in arm.records:
        r = rec["replica"]
        if rec["epoch"] == 0:
            rec.update(start[r])
        if rec["epoch"] == last:
            rec.update(end[r])
            rec.update(stats[r])
    return arm.records


def curriculum_runs(
    size: SimSize,
    *,
    ns: Sequence[int] = (1, 2, 4, 8, 10),
    replays: Sequence[str] = REPLAYS,
    losses: Sequence[str] = ("sft", "dpo"),
    worlds: Sequence[int] = (0, 1),
    judge: str = "self",
    coupling: str | None = None,
    perturbation: float = 0.0,
    perturb_at: str = "pretrained",
    dpo_overrides: Mapping | None = None,
    **cfg_overrides,
) -> dict[str, list[dict]]:
    """The arms of the curriculum map: ``{arm_label(n, loss, replay): records of every world}``
    (replay names through :func:`replay_spec`; DPO with ``dpo_overrides``, default
    :data:`DPO_OVERRIDES`). DPO needs two candidates: its ``N = 1`` arms are left out. Every arm of a
    world runs from that world's pre-trained replicas (``perturbation``, ``perturb_at``: the twin run
    of a findings test, :func:`dynamics.sim.study.pretrained`); records are tagged with ``world``.

    >>> runs = curriculum_runs(SimSize.tiny(), ns=(1, 2), replays=("off", "late"), worlds=(0,))
    >>> sorted(runs)
    ['dpo N=2 late', 'dpo N=2 off', 'sft N=1 late', 'sft N=1 off', 'sft N=2 late', 'sft N=2 off']
    """
    dpo = dict(DPO_OVERRIDES if dpo_overrides is None else dpo_overrides)
    out: dict[str, list[dict]] = {}
    for w in worlds:
        sz = dataclasses.replace(size, world_seed=int(w))
        world, m0 = pretrained(sz, coupling=coupling, perturbation=perturbation, perturb_at=perturb_at)
        groups = groups_of(world)
        start = exact_group_metrics(world, m0, Reference.of(m0), groups=groups,
                                    threshold=sz.config().threshold)
        for n in ns:
            for loss in losses:
                if loss == "dpo" and n < 2:
                    continue
                for replay in replays:
                    kw = {**cfg_overrides, **(dpo if loss == "dpo" else {})}
                    cfg = sz.config(judge=judge, candidates=int(n), loss=loss,
                                    curriculum=replay_spec(replay, sz.epochs), **kw)
                    label = arm_label(n, loss, replay)
                    out.setdefault(label, []).extend(
                        _run(world, m0, cfg, label=label, tags={"world": int(w)}, groups=groups, start=start))
    return out


# --------------------------------------------------------------------------------------- reading


def summarise_curriculum(runs: Mapping[str, list[dict]], *, ns: Sequence[int], replays: Sequence[str],
                         losses: Sequence[str], tiers: Sequence[str] = TIERS) -> dict:
    """:func:`dynamics.study.curriculum.summarise_curriculum` on the simulator's exact metrics and tiers."""
    return _summarise(runs, ns=ns, replays=replays, losses=losses, tiers=tiers, keys=EXACT_KEYS)


def curriculum_map(
    size: SimSize,
    ns: Sequence[int] = (1, 2, 4, 8, 10),
    replays: Sequence[str] = REPLAYS,
    losses: Sequence[str] = ("sft", "dpo"),
    worlds: Sequence[int] = (0, 1),
    *,
    judge: str = "self",
    **kw,
) -> dict:
    """Curriculum replay where it can matter: the map ``N`` x replay x loss (C-SFT, C-DPO) of
    :func:`curriculum_runs`, summarised by :func:`summarise_curriculum` (``summary["rows"]``, and
    ``summary["why"]``: replayed precision against gain). ``kw`` go to :func:`curriculum_runs`.

    (Example in the module docstring.)
    """
    runs = curriculum_runs(size, ns=ns, replays=replays, losses=losses, worlds=worlds, judge=judge, **kw)
    summary = {
        "size": dataclasses.asdict(size),
        "worlds": [int(w) for w in worlds],
        "judge": judge,
        "ns": [int(n) for n in ns],
        "losses": list(losses),
        "replays": {r: replay_spec(r, size.epochs) for r in replays},
        "skipped": [{"n": int(n), "loss": "dpo", "why": "DPO needs two candidates to form a pair"}
                    for n in ns if n < 2 and "dpo" in losses],
        **summarise_curriculum(runs, ns=ns, replays=replays, losses=losses),
    }
    return {"name": "fig_curriculum_map", "summary": summary, "plot": {}}


# --------------------------------------------------------------------------------------- gap and gain


def spearman_by_unit(records: Sequence[dict], cells: Sequence[str], *, x: str = "exact_non_unification",
                     y: str = "exact_gen_acc", x_epoch: int = 0) -> dict[tuple[int, int], float]:
    """Per unit, Spearman's rho over ``cells`` between ``<x>@<cell>`` at epoch ``x_epoch`` and the
    change of ``<y>@<cell>`` from epoch 0 to the last (cells a unit lacks are left out; NaN with fewer
    than three cells or a constant side).

    >>> recs = [{"epoch": e, "seed": 0, **{f"x@{c}": v for c, v in zip("abcd", (0.1, 0.2, 0.3, 0.4))},
    ...          **{f"y@{c}": e * v for c, v in zip("abcd", (1.0, 3.0, 2.0, 4.0))}} for e in (0, 1)]
    >>> spearman_by_unit(recs, list("abcd"), x="x", y="y")            # ranks 1 3 2 4: 1 - 6 * 2 / 60
    {(0, 0): 0.8}
    """
    end = last_epoch(records)
    out = {}
    units = sorted({unit(r) for r in records})
    xs_all = {c: per_unit(records, f"{x}@{c}", x_epoch) for c in cells}
    y0 = {c: per_unit(records, f"{y}@{c}", 0) for c in cells}
    y1 = {c: per_unit(records, f"{y}@{c}", end) for c in cells}
    for u in units:
        have = [c for c in cells if u in xs_all[c] and u in y0[c] and u in y1[c]]
        out[u] = _spearman([xs_all[c][u] for c in have], [y1[c][u] - y0[c][u] for c in have])
    return out


def _cells(records: Sequence[dict], prefix: str) -> list[str]:
    return sorted({k.split("@", 1)[1] for r in records for k in r if k.startswith("exact_gen_acc@" + prefix)})


def gap_gain_summary(records: Sequence[dict], *, level: float = 0.95, control: Sequence[dict] | None = None) -> dict:
    """Gap against gain from an arm's records (with :func:`exact_group_metrics` at the first and last
    epoch): per unit, Spearman's rho over the tag x tier cells between the initial Non and the Gen
    gain, its mean with a ``level`` t interval over units (``rho``), the same against the initial
    generation error ``1 - Gen`` (``rho_headroom``: how much of the correlation room to improve
    alone explains), and the per-cell and per-group means (``cells``, ``groups``: initial Non, Gen
    gain, each ``(mean, s.e., units)``). With ``control`` records, also the gain beyond the control
    (``rho_beyond_control``)."""
    cells = _cells(records, "cell:")
    rhos = spearman_by_unit(records, cells)
    est = one_sample(rhos.values())
    recs_err = [{**r, **{f"exact_gen_err@{c}": 1.0 - r[f"exact_gen_acc@{c}"]
                         for c in cells if r.get(f"exact_gen_acc@{c}") is not None}} for r in records]
    head = one_sample(spearman_by_unit(recs_err, cells, x="exact_gen_err").values())
    undefined = sorted(u for u, v in rhos.items() if math.isnan(v))
    if undefined:
        log.warning("gap_gain: units %s have fewer than three cells or a constant side; their rho is left out",
                    undefined)

    def table(names):
        return {c: {"non_start": _t(final(records, f"exact_non_unification@{c}", epoch=0)),
                    "gen_start": _t(final(records, f"exact_gen_acc@{c}", epoch=0)),
                    "gen_gain": _t(delta(records, f"exact_gen_acc@{c}")),
                    "fp_change": _t(delta(records, f"exact_pre_fp_rate@{c}"))} for c in names}

    groups = [f"tag:{t}" for t in TAGS] + [f"tier:{t}" for t in TIERS]
    out = {
        "rho": {"mean": est.mean, "se": est.se, "n": est.n, "ci": list(est.ci(level)), "level": level,
                "per_unit": {f"{w},{s}": v for (w, s), v in rhos.items()}},
        "rho_headroom": {"mean": head.mean, "se": head.se, "n": head.n, "ci": list(head.ci(level))},
        "pooled_rho": _spearman(
            [r[f"exact_non_unification@{c}"] for r in records if r["epoch"] == 0 for c in cells
             if r.get(f"exact_non_unification@{c}") is not None],
            _pooled_gain(records, cells)),
        "cells": table(cells),
        "groups": table([g for g in groups if any(f"exact_gen_acc@{g}" in r for r in records)]),
    }
    if control is not None:
        merged = _beyond_records(records, control, cells)
        b = one_sample(spearman_by_unit(merged, cells).values())
        out["rho_beyond_control"] = {"mean": b.mean, "se": b.se, "n": b.n, "ci": list(b.ci(level))}
    return out


def _pooled_gain(records, cells) -> list[float]:
    """The Gen gains in the order of the pooled initial-Non list of :func:`gap_gain_summary`."""
    end = last_epoch(records)
    by_unit_end = {unit(r): r for r in records if r["epoch"] == end}
    out = []
    for r in records:
        if r["epoch"] != 0:
            continue
        e = by_unit_end[unit(r)]
        out += [e[f"exact_gen_acc@{c}"] - r[f"exact_gen_acc@{c}"] for c in cells
                if r.get(f"exact_non_unification@{c}") is not None]
    return out


def _beyond_records(records, control, cells) -> list[dict]:
    """Records whose last-epoch ``exact_gen_acc@<cell>`` is the arm's minus the control's change
    (epoch-0 values kept): the gain beyond the control in the form :func:`spearman_by_unit` reads."""
    end, cend = last_epoch(records), last_epoch(control)
    c0 = {unit(r): r for r in control if r["epoch"] == 0}
    c1 = {unit(r): r for r in control if r["epoch"] == cend}
    out = []
    for r in records:
        if r["epoch"] not in (0, end):
            continue
        r = dict(r)
        if r["epoch"] == end and unit(r) in c1:
            u = unit(r)
            for c in cells:
                k = f"exact_gen_acc@{c}"
                if r.get(k) is not None:
                    r[k] = r[k] - (c1[u][k] - c0[u][k])
        out.append(r)
    return out


def gap_gain(size: SimSize, worlds: Sequence[int] = (0, 1), *, judge: str = "self", control: str | None = "all",
             level: float = 0.95, coupling: str | None = None, **cfg_overrides) -> dict:
    """Gains against the initial gap (the paper: rho = 0.53): the ``judge`` arm (SFT, no replay) in
    every world of ``worlds``, read per tag x tier cell by :func:`gap_gain_summary` (``control``: an
    arm read as the baseline of ``rho_beyond_control``; None: none). The last-epoch records of the arm
    carry the unit's ``gap_gain_rho`` (so a findings test can state a claim on it).

    >>> result = gap_gain(SimSize.tiny(prompts=24, tokens=24), worlds=(0,), control=None)
    >>> result["summary"]["rho"]["n"], len(result["summary"]["rho"]["ci"])
    (2, 2)
    """
    judges = [judge] + ([control] if control else [])
    runs = {j: [] for j in judges}
    for w in worlds:
        sz = dataclasses.replace(size, world_seed=int(w))
        world, m0 = pretrained(sz, coupling=coupling)
        groups = groups_of(world)
        start = exact_group_metrics(world, m0, Reference.of(m0), groups=groups, threshold=sz.config().threshold)
        for j in judges:
            cfg = sz.config(judge=j, **cfg_overrides)
            runs[j] += _run(world, m0, cfg, label=j, tags={"world": int(w)}, groups=groups, start=start)
    runs[judge] = gap_gain_records(runs[judge])
    summary = gap_gain_summary(runs[judge], level=level, control=runs[control] if control else None)
    summary = {"size": dataclasses.asdict(size), "worlds": [int(w) for w in worlds], "judge": judge,
               "control": control, **summary}
    return {"name": "fig_gap_gain", "summary": summary, "plot": {}, "records": runs}


def gap_gain_records(records: Sequence[dict]) -> list[dict]:
    """Copies of an arm's records (with :func:`exact_group_metrics`) whose last-epoch records carry
    the unit's Spearman rho between the initial Non and the Gen gain over the tag x tier cells
    (``gap_gain_rho``, None where it is undefined): the form a :class:`~dynamics.study.claims.Claim`
    reads (``final=True``).

    >>> recs = [{"epoch": e, "seed": 0, **{f"exact_non_unification@cell:{c}": v for c, v in zip("abc", (1, 2, 3))},
    ...          **{f"exact_gen_acc@cell:{c}": e * v for c, v in zip("abc", (3, 2, 1))}} for e in (0, 1)]
    >>> gap_gain_records(recs)[-1]["gap_gain_rho"]
    -1.0
    """
    rhos = spearman_by_unit(records, _cells(records, "cell:"))
    end = last_epoch(records)
    out = []
    for r in records:
        r = dict(r)
        if r["epoch"] == end:
            r["gap_gain_rho"] = _nan_to_none(rhos.get(unit(r), math.nan))
        out.append(r)
    return out


# --------------------------------------------------------------------------------------- N candidates


def n_candidates_summary(runs: Mapping[int, list[dict]], *, loss: str = "sft") -> dict:
    """Per ``N`` (``runs``: ``{N: records}`` of no-replay arms): the training-set size (candidates
    accepted; DPO: pairs), the discard pool, the first round's precision, and the change of Gen and
    FP (each ``(mean, s.e., units)``); ``vs_largest``: Gen / FP of each ``N`` beyond the largest ``N``
    (paired by unit); ``rho_size_gain``: Spearman's rho between training-set size and Gen gain over
    every unit and ``N``."""
    ns = sorted(runs)
    rows = []
    size_key = "sft_size" if loss == "sft" else "dpo_pairs"
    xs, ys = [], []
    for n in ns:
        recs = runs[n]
        row = {"n": n,
               "train_size": _t(final(recs, size_key, epoch=0)),
               "sft_size": _t(final(recs, "sft_size", epoch=0)),
               "pool": _t(final(recs, "discard_size", epoch=0)),
               "precision": _t(final(recs, "sft_precision", epoch=0)),
               "change": {k: _t(delta(recs, k)) for k in EXACT_KEYS}}
        if n != ns[-1]:
            row["vs_largest"] = _compare(recs, runs[ns[-1]], EXACT_KEYS[:2])
        rows.append(row)
        size0 = per_unit(recs, size_key, 0)
        g0, g1 = per_unit(recs, "exact_gen_acc", 0), per_unit(recs, "exact_gen_acc", last_epoch(recs))
        for u in sorted(set(size0) & set(g0) & set(g1)):
            xs.append(size0[u])
            ys.append(g1[u] - g0[u])
    return {"rows": rows, "rho_size_gain": _spearman(xs, ys), "points": [[x, y] for x, y in zip(xs, ys)]}


def n_candidates(size: SimSize, ns: Sequence[int] = (1, 2, 4, 8, 10), worlds: Sequence[int] = (0, 1), *,
                 judge: str = "self", loss: str = "sft", **kw) -> dict:
    """The N-candidates ablation (the paper: 254 against 2,265 training samples): the ``judge`` arm
    without replay for every ``N`` (:func:`curriculum_runs`), read by :func:`n_candidates_summary`.

    >>> result = n_candidates(SimSize.tiny(), ns=(1, 4), worlds=(0,))
    >>> [r["n"] for r in result["summary"]["rows"]], "vs_largest" in result["summary"]["rows"][0]
    ([1, 4], True)
    """
    runs = curriculum_runs(size, ns=ns, replays=("off",), losses=(loss,), worlds=worlds, judge=judge, **kw)
    by_n = {int(n): runs[arm_label(n, loss, "off")] for n in ns if arm_label(n, loss, "off") in runs}
    summary = {"size": dataclasses.asdict(size), "worlds": [int(w) for w in worlds], "judge": judge, "loss": loss,
               **n_candidates_summary(by_n, loss=loss)}
    return {"name": "fig_n_candidates", "summary": summary, "plot": {}}

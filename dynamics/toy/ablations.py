"""Poor supervision, curriculum replay and the trainable-parts ablation at the toy scale (numbers only;
figures draw them: :mod:`dynamics.figures.poor_supervision`, :mod:`dynamics.figures.ablations`).

The simulator's experiments (:mod:`dynamics.sim.poor_supervision`, :mod:`dynamics.sim.ablations`)
again on the toy world, where understanding is a trained answer of a multi-token transformer and
every metric is the loop's own, sampled and judged by the exact detector:

- :func:`toy_poor_supervision`: ``lookalike:p`` (the exact detector that also accepts each near miss
  of the prompt, from the scene grammar: :meth:`dynamics.toy.world.SceneWorld.near_miss_batch`) and
  ``pr:precision,recall`` (errors near misses first) against the unfiltered control, per coupling,
  with the realised precision and recall of each training set, the share of its errors that are near
  misses and the co-degradation alarm in every arm (:mod:`dynamics.study.supervision`);
- :func:`toy_curriculum_map`: ``N`` x replay x loss (C-SFT, C-DPO), per difficulty tier
  (:mod:`dynamics.study.curriculum`);
- :func:`toy_scopes`: the self judge against the unfiltered control when CLO trains only some parts
  of the generation parameters (:data:`dynamics.toy.model.SCOPES`).

Every arm of a unit ``(world, seed)`` runs from that unit's pre-trained model with the same CLO seed
(:func:`dynamics.toy.study.unit_arms`); units whose model lacks the internal gap are left out and listed.

Example (the tiny preset, no gap check at this size)::

    >>> from dynamics.toy.experiments import QUICK
    >>> sorted(toy_scopes(QUICK, scopes=("all", "trunk"))["summary"]["scopes"])
    ['all', 'trunk']

(``tests/test_toy_ablations.py`` runs the poor-supervision scan on the same tiny size.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from dynamics.clo import CLOConfig
from dynamics.study.curriculum import (
    DPO_OVERRIDES,
    LOOP_KEYS,
    REPLAYS,
    arm_label,
    replay_spec,
    replay_stats,
    summarise_curriculum,
)
from dynamics.study.phase import PHASE_FP_MARGIN
from dynamics.study.read import change, last_epoch, paired_difference
from dynamics.study.supervision import CONTROLS, alarm_recorder, near_miss_share, read_scan
from dynamics.study.supervision import LOOP_KEYS as SCAN_KEYS
from dynamics.toy.model import SCOPES
from dynamics.toy.study import ToySize, unit_arms
from dynamics.toy.world import TIERS

__all__ = ["TOY_LOOKALIKE_PS", "TOY_PR_PRECISIONS", "TOY_PR_RECALL", "toy_curriculum_map", "toy_curriculum_runs",
           "toy_poor_supervision", "toy_scopes"]

log = logging.getLogger(__name__)

TOY_LOOKALIKE_PS = (0.5, 1.0)
TOY_PR_PRECISIONS = (0.9, 0.5, 0.3)
TOY_PR_RECALL = 0.3  # the simulator scan's fixed recall
ALARM_TOLERANCE = 0.01  # the entry points' default (--alarm-tolerance)


def _gap(size: ToySize) -> dict:
    """The gap check of :func:`dynamics.toy.study.unit_arms`: units without the gap are left out and
    listed; off at the tiny preset (a tiny model has no gap)."""
    return {"check": size.preset != "tiny", "skip_no_gap": True}


def _records(arms_by_unit, labels: Sequence[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {j: [] for j in labels}
    for _unit, arms in arms_by_unit:
        for j in labels:
            out[j] += arms[j].records
    return out


def _size_dict(size: ToySize) -> dict:
    from dynamics.toy.experiments import size_dict

    return size_dict(size)


# --------------------------------------------------------------------------------------- poor supervision


def toy_poor_supervision(size: ToySize, *, couplings: Sequence[str] = ("tied", "bayes"),
                         lookalike_ps: Sequence[float] = TOY_LOOKALIKE_PS,
                         precisions: Sequence[float] = TOY_PR_PRECISIONS, recall: float = TOY_PR_RECALL,
                         weak: Sequence[str] = ("tied",), alpha: float = 0.05,
                         alarm_tolerance: float = ALARM_TOLERANCE) -> dict:
    """The poor-supervision scan at the toy scale (the simulator's
    :func:`dynamics.sim.poor_supervision.poor_supervision_scan`, read the same way by
    :func:`dynamics.study.supervision.read_scan` on the loop's sampled metrics): per coupling, the
    judges ``lookalike:p`` and ``pr:q,recall`` with the controls ``all``, ``self``, ``oracle``, each
    read against ``all`` (phase at ``alpha``: few units, so 0.05 by default; Gen, the false positives,
    Non and the win rate beyond the control), with its realised precision, recall and near-miss share
    and the alarm's false-alarm and miss rates. In the couplings of ``weak`` a ``weak`` arm runs too:
    the data judge is the understanding of the same model pre-trained for fewer steps
    (:func:`dynamics.toy.study.weak_model`; under ``bayes`` an earlier generator's posterior is no
    weaker a judge, so it is not run there by default). Returns ``{"name": "fig_toy_poor_supervision",
    "summary", "plot"}`` in the shape :func:`dynamics.figures.poor_supervision.draw_poor_supervision`
    draws; ``summary["excluded"]`` lists the units without the gap, per coupling."""
    from dynamics.sim.poor_supervision import scan_judges

    if not 0.0 < recall <= 1.0:
        raise ValueError(f"toy_poor_supervision: recall={recall} must lie in (0, 1]")
    judges = scan_judges(lookalike_ps, precisions, recall)
    labels = ["all", *CONTROLS, *judges, "weak"]
    for j in labels:
        dataclasses.replace(size.clo, judge=j).validate()  # a bad p, precision or recall before any training
    rows, alarm, excluded, units = {}, {}, {}, {}

    def near(model, arms):
        for arm in arms.values():
            share = near_miss_share(arm.data, model.world.external_judge())
            for rec in arm.records:
                rec["sft_near_miss_share"] = share[int(rec.get("replica", 0))]

    for c in couplings:
        excluded[c] = []
        mine = labels if c in weak else labels[:-1]
        by_unit = list(unit_arms(size, lambda cfg, mine=mine: {j: dataclasses.replace(cfg, judge=j) for j in mine},
                                 coupling=c, excluded=excluded[c], after=near, **_gap(size),
                                 on_epoch_for=lambda _label, _cfg: alarm_recorder(alarm_tolerance)))
        units[c] = [list(u) for u, _ in by_unit]
        if len(by_unit) < 2:
            log.warning("coupling %s: fewer than two units with the gap, no row", c)
            continue
        rows[c], alarm[c] = read_scan(_records(by_unit, mine), [j for j in mine if j not in ("all", *CONTROLS)],
                                      keys=SCAN_KEYS, alpha=alpha)
    summary = {"size": _size_dict(size), "units": units, "couplings": list(couplings), "alpha": alpha,
               "fp_margin": PHASE_FP_MARGIN, "control": "all", "alarm_tolerance": alarm_tolerance,
               "lookalike_ps": list(lookalike_ps), "precisions": list(precisions), "recall": recall,
               "weak": [c for c in couplings if c in weak], "rows": rows, "alarm": alarm, "keys": SCAN_KEYS.to_dict(),
               "excluded": {c: e for c, e in excluded.items() if e}}
    plot = {"couplings": [c for c in couplings if c in rows], "judges": [*CONTROLS, *judges, "weak"], "scale": "toy world",
            "keys": SCAN_KEYS.to_dict()}
    return {"name": "fig_toy_poor_supervision", "summary": summary, "plot": plot}


# --------------------------------------------------------------------------------------- curriculum


def toy_curriculum_runs(size: ToySize, *, ns: Sequence[int] = (1, 2, 4, 8, 10), replays: Sequence[str] = REPLAYS,
                        losses: Sequence[str] = ("sft", "dpo"), judge: str = "self", coupling: str = "tied",
                        excluded: list | None = None, perturbation: float = 0.0,
                        perturb_at: str = "pretrained") -> dict[str, list[dict]]:
    """The arms of the toy curriculum map: ``{arm_label(n, loss, replay): records of every unit}``
    (replay names through :func:`dynamics.study.curriculum.replay_spec` over the recipe's epochs; DPO
    with :data:`dynamics.study.curriculum.DPO_OVERRIDES`, and without ``N = 1``). The last epoch's
    records carry the replay bookkeeping per tier (:func:`dynamics.study.curriculum.replay_stats`).
    ``perturbation``, ``perturb_at``: the robustness run of a findings test (:func:`dynamics.toy.study.unit_arms`)."""

    def configs(cfg: CLOConfig) -> dict[str, CLOConfig]:
        out = {}
        for n in ns:
            for loss in losses:
                if loss == "dpo" and n < 2:
                    continue
                for replay in replays:
                    out[arm_label(n, loss, replay)] = dataclasses.replace(
                        cfg, judge=judge, candidates=int(n), loss=loss, curriculum=replay_spec(replay, cfg.epochs),
                        **(DPO_OVERRIDES if loss == "dpo" else {}))
        return out

    def bookkeeping(model, arms):
        tiers = {k: v for k, v in model.prompts.groups().items() if k.startswith("tier:")}
        for arm in arms.values():
            stats = replay_stats(arm, tiers)
            end = last_epoch(arm.records)
            for rec in arm.records:
                if int(rec["epoch"]) == end:
                    rec.update(stats[int(rec.get("replica", 0))])

    out: dict[str, list[dict]] = {}
    for _unit, arms in unit_arms(size, configs, coupling=coupling, excluded=excluded, after=bookkeeping,
                                 perturbation=perturbation, perturb_at=perturb_at, **_gap(size)):
        for label, arm in arms.items():
            out.setdefault(label, []).extend(arm.records)
    return out


def toy_curriculum_map(size: ToySize, ns: Sequence[int] = (1, 2, 4, 8, 10), replays: Sequence[str] = REPLAYS,
                       losses: Sequence[str] = ("sft", "dpo"), *, judge: str = "self", coupling: str = "tied") -> dict:
    """Curriculum replay where it can matter, at the toy scale: :func:`toy_curriculum_runs` summarised
    by :func:`dynamics.study.curriculum.summarise_curriculum` on the loop's metrics (``summary["rows"]``
    and ``summary["why"]``), in the shape :func:`dynamics.figures.ablations.draw_curriculum_map` draws."""
    excluded: list = []
    runs = toy_curriculum_runs(size, ns=ns, replays=replays, losses=losses, judge=judge, coupling=coupling,
                               excluded=excluded)
    epochs = size.clo.epochs
    summary = {
        "size": _size_dict(size), "units": [list(u) for u in size.units()], "excluded": excluded,
        "judge": judge, "coupling": coupling, "ns": [int(n) for n in ns], "losses": list(losses),
        "replays": {r: replay_spec(r, epochs) for r in replays},
        "skipped": [{"n": int(n), "loss": "dpo", "why": "DPO needs two candidates to form a pair"}
                    for n in ns if n < 2 and "dpo" in losses],
        "keys": list(LOOP_KEYS),
        **summarise_curriculum(runs, ns=ns, replays=replays, losses=losses, tiers=sorted(set(TIERS.values())),
                               keys=LOOP_KEYS),
    }
    return {"name": "fig_toy_curriculum_map", "summary": summary, "plot": {"scale": "toy world"}}


# --------------------------------------------------------------------------------------- trainable parts


def toy_scopes(size: ToySize, *, scopes: Sequence[str] = SCOPES, coupling: str = "tied",
               keys: Sequence[str] = ("gen_acc", "und_fp_rate", "non_unification", "win_rate")) -> dict:
    """The trainable-parts ablation: for each scope of :data:`dynamics.toy.model.SCOPES` (what CLO may
    change: every generation parameter, the transformer layers, the layers and the image-logit head,
    the embeddings), the self judge against the unfiltered control from the same pre-trained model:
    per key, the self arm's change beyond the control's (paired by unit) and each arm's own change,
    ``(mean, s.e., units)``, with the number of trained parameters."""
    results, params = {}, {}
    for scope in scopes:
        sz = dataclasses.replace(size, scope=scope)
        counted: dict = {}

        def count(model, _arms, counted=counted):
            counted["n"] = sum(p.numel() for p in model.generation_parameters())

        arms = _records(unit_arms(sz, lambda cfg: {j: dataclasses.replace(cfg, judge=j) for j in ("self", "all")},
                                  coupling=coupling, after=count, **_gap(sz)), ("self", "all"))
        params[scope] = counted.get("n")
        results[scope] = {k: {"vs_control": paired_difference(arms["self"], arms["all"], k),
                              "self": change(arms["self"], k), "all": change(arms["all"], k)} for k in keys}
        results[scope]["win_rate_n"] = {a: change(arms[a], "win_rate_n")[1] for a in ("self", "all")}
    summary = {"size": _size_dict(size), "coupling": coupling, "scopes": results, "parameters": params}
    return {"name": "fig_toy_scopes", "summary": summary, "plot": {"labels": list(scopes)}}

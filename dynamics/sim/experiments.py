"""The simulator's figure experiments: each runs its arms from one pre-trained model
(:mod:`dynamics.sim.study`), reads them against their controls (:mod:`dynamics.study`) and returns a
JSON-able result; :mod:`dynamics.figures.sim` draws it, :mod:`dynamics.runs.figures` is the command
line of ``paper_figures/``.

A result is ``{"name": ..., "summary": ..., "plot": ...}``: ``name`` the figure's file stem,
``summary`` the numbers behind the figure (written as ``<name>.json``), ``plot`` what the drawing needs
besides (per-epoch curves as ``[epoch, mean, s.e., n]`` rows, the panels' keys, ...).

- :func:`training_curves`: SFT, DPO and curriculum SFT with the self judge against the control;
- :func:`co_improvement_vs_degradation`: the self judge against ``corrupt:p``, with the controls;
- :func:`corrupt_scan`: the whole ``corrupt:p`` curve;
- :func:`phase_diagram`: coupling x judge quality -> co-improvement, drift, no transfer or
  co-degradation;
- :func:`curriculum`: curriculum replay early against late, and the adaptive trigger;
- :func:`fp_correction`: the false-positive-correction mechanism (paper Fig. 7);
- :func:`predicted_vs_measured`: measured against first-order predicted one-step changes;
- :func:`eta_slope`: the first-order residual against the step size.

Example::

    >>> result = phase_diagram(SimSize.tiny(epochs=1), couplings=("decoupled",), judges=("self",))
    >>> result["name"], result["summary"]["rows"]["decoupled"]["self"]["fp"]  # cannot move: exactly 0
    ('fig_phase_diagram', (0.0, 0.0, 4))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from dynamics.protocol import COUPLINGS
from dynamics.report import aggregate
from dynamics.sim import study as sim
from dynamics.sim.study import SimSize, arm_summary, pretrained, run_arm
from dynamics.study import change, final_values, mean_se, paired_difference, phase_table, vs_control
from dynamics.study.phase import PHASE_FP_MARGIN

__all__ = [
    "CURVE_KEYS",
    "FINDING_KEYS",
    "SimSize",
    "co_improvement_vs_degradation",
    "corrupt_scan",
    "curriculum",
    "curves",
    "eta_slope",
    "fp_correction",
    "phase_diagram",
    "predicted_vs_measured",
    "training_curves",
]

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


def curves(arms: Mapping, keys: Sequence[str]) -> dict[str, dict[str, list[list]]]:
    """Per arm and key, the mean ± standard error across replicas at every epoch:
    ``{label: {key: [[epoch, mean, s.e., n], ...]}}`` (:func:`dynamics.report.aggregate`). ``arms``
    maps a label to its records or to an arm (an object with ``.records``).

    >>> recs = [{"epoch": e, "seed": s, "x": e + s} for e in (0, 1) for s in (0, 1)]
    >>> curves({"a": recs}, ["x"])["a"]["x"][1]
    [1, 1.5, 0.5, 2]
    """
    return {
        label: {k: [[e, *v] for e, v in aggregate(getattr(arm, "records", arm), k).items()] for k in keys}
        for label, arm in arms.items()
    }


def _size(size: SimSize) -> dict:
    return dataclasses.asdict(size)


def training_curves(size: SimSize, *, replay_epoch: int | None = None) -> dict:
    """The paper's training curves (Gen, Und win rate, Non) for SFT, DPO and curriculum SFT with the
    self judge, against the unfiltered control, from one pre-trained model (the legend gives the
    curriculum's initial discard-pool size: replay has nothing to do when it is empty).

    >>> result = training_curves(SimSize.tiny())
    >>> list(result["plot"]["curves"])[-1], sorted(result["summary"]["vs_all"])[0]
    ('SFT (all: control)', 'DPO (self)')
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
    curriculum_label = f"curriculum SFT (replay @{replay_epoch}, pool {pool:.1f})"
    arms = {(curriculum_label if k == "curriculum SFT" else k): v for k, v in arms.items()}
    summary = {
        "size": _size(size),
        "arms": {k: arm_summary(a, CURVE_KEYS + FINDING_KEYS) for k, a in arms.items()},
        "vs_all": vs_control(arms, "SFT (all: control)", FINDING_KEYS),
    }
    plot = {"keys": list(CURVE_KEYS), "curves": curves(arms, CURVE_KEYS), "control": "SFT (all: control)",
            "curriculum": curriculum_label}
    return {"name": "fig_training_curves", "summary": summary, "plot": plot}


def co_improvement_vs_degradation(size: SimSize, *, p: float = 0.6) -> dict:
    """Self judge (co-improvement) against ``corrupt:p`` (poor supervision), with the unfiltered and
    oracle controls: Gen accuracy, the understanding's false-positive rate, Non.

    >>> result = co_improvement_vs_degradation(SimSize.tiny())
    >>> sorted(result["summary"]["vs_all"])
    ['corrupt:0.6', 'oracle', 'self']
    """
    arms = sim.judge_arms(size, ["self", f"corrupt:{p:g}", "all", "oracle"])
    keys = ("exact_gen_acc", "exact_pre_fp_rate", "non_unification")
    summary = {
        "size": _size(size),
        "arms": {k: arm_summary(a, FINDING_KEYS) for k, a in arms.items()},
        "vs_all": vs_control(arms, "all", FINDING_KEYS),
    }
    plot = {"keys": list(keys), "curves": curves(arms, keys)}
    return {"name": "fig_co_improvement_vs_degradation", "summary": summary, "plot": plot}


def corrupt_scan(size: SimSize, ps: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
                 ) -> dict:
    """The whole ``corrupt:p`` curve: the paired change of Gen accuracy, the false-positive rate, the
    understanding's win rate and Non against ``p``, with the controls.

    >>> result = corrupt_scan(SimSize.tiny(), ps=(0.0, 1.0))
    >>> [r["p"] for r in result["summary"]["rows"]], sorted(result["plot"]["controls"])
    ([0.0, 1.0], ['all', 'oracle'])
    """
    arms = sim.corrupt_scan(size, ps)
    keys = ("exact_gen_acc", "exact_pre_fp_rate", "exact_win_rate", "exact_non_unification")
    rows = sim.corrupt_scan_rows(arms, FINDING_KEYS)
    controls = {k: {key: change(arms[k].records, key)[2] for key in keys} for k in ("all", "oracle")}
    summary = {
        "size": _size(size),
        "rows": rows,
        "controls": {k: arm_summary(arms[k], FINDING_KEYS) for k in ("self", "all", "oracle")},
        "self_vs_all": vs_control({"self": arms["self"], "all": arms["all"]}, "all", FINDING_KEYS)["self"],
    }
    return {"name": "fig_corrupt_scan", "summary": summary, "plot": {"keys": list(keys), "controls": controls}}


def phase_diagram(size: SimSize, *, couplings: Sequence[str] = COUPLINGS,
                  judges: Sequence[str] = ("self", "oracle", "corrupt:0.6"), worlds: Sequence[int] = (0, 1),
                  alpha: float = 0.01, predict: bool = True) -> dict:
    """Coupling x judge quality: for each coupling of the understanding to the generation branch
    (:data:`dynamics.protocol.COUPLINGS`) and each judge, the change of Gen accuracy, of the
    understanding's false-positive rate on the pre-trained samples, of Non and the win rate, beyond
    the unfiltered control run from the same pre-trained models (``size.seeds`` replicas in each of
    ``worlds``), and the arm's phase (:func:`dynamics.study.phase_of`: co-improvement, drift, no
    transfer, co-degradation or undetermined, one-sided tests at ``alpha``).

    ``predict``: per coupling, the cross-branch kernel's prediction made before training
    (:func:`dynamics.transfer.sim_transfer`, on the first world's pre-trained replicas, one epoch of
    the self judge): the alignment of the induced understanding and generation changes over probes,
    the sign agreement of predicted and measured ``Delta log P(yes)``, the predicted and measured mean
    change on the pre-trained understanding's false positives, and the Bayes-link Spearman before
    and after (``summary["predicted"]``).

    (Example in the module docstring.)
    """
    arms = {c: sim.world_arms(size, ("all", *judges), worlds=worlds, coupling=c) for c in couplings}
    table = phase_table(arms, control="all", gen_key="exact_gen_acc", fp_key="exact_pre_fp_rate",
                        fp_margin=PHASE_FP_MARGIN, alpha=alpha, other_keys=("non_unification", "exact_win_rate"),
                        final_keys={"exact_win_rate": 0.5})
    rows = {c: {j: ph.to_dict() for j, ph in by_judge.items()} for c, by_judge in table.items()}
    summary = {"size": _size(size), "worlds": list(worlds), "alpha": alpha, "fp_margin": PHASE_FP_MARGIN,
               "control": "all", "rows": rows}
    if predict:
        summary["predicted"] = {c: _transfer_prediction(dataclasses.replace(size, world_seed=int(worlds[0])), c)
                                for c in couplings}
    return {"name": "fig_phase_diagram", "summary": summary,
            "plot": {"couplings": list(couplings), "judges": list(judges), "scale": "simulator",
                     "keys": {"gen": "exact_gen_acc", "fp": "exact_pre_fp_rate"}}}


def _transfer_prediction(size: SimSize, coupling: str) -> dict:
    """The cross-kernel predictor's summary for one coupling (see :func:`phase_diagram`)."""
    from dynamics.transfer import sim_transfer

    world, m0 = pretrained(size, coupling=coupling)
    t = sim_transfer(world, m0, size.config(judge="self", epochs=1), seed=size.seed)["summary"]
    fp = t["by_kind"].get("fp", {})
    keys = ("alignment", "sign_agreement", "bayes_before_spearman", "bayes_after_spearman")
    return {**{k: t[k] for k in keys if k in t}, "sign_n": t["sign_n"],
            "fp_pred_delta_u": fp.get("pred_delta_u"), "fp_delta_u": fp.get("delta_u")}


def curriculum(size: SimSize, *, candidates: int = 1, replay_epochs: Sequence[int] | None = None) -> dict:
    """Curriculum replay early against late (after the model improved; the paper's epochs 4 and 10 of
    20 by default), and the adaptive trigger: discard pool, SFT-set size, the SFT set's precision, Gen
    accuracy, false positives. One candidate per prompt, so that a third of the prompts start in the
    discard pool (with 8 the pool is empty here).

    >>> result = curriculum(SimSize.tiny())
    >>> list(result["plot"]["curves"]), result["summary"]["candidates"]
    (['off', 'epochs:1', 'adaptive'], 1)
    """
    if replay_epochs is None:
        replay_epochs = sorted({max(1, size.epochs // 5), max(1, size.epochs // 2)})
    arms = sim.curriculum_arms(size, replay_epochs, candidates=candidates, adaptive=True)
    keys = ("discard_size", "sft_size", "sft_precision", "exact_gen_acc", "exact_pre_fp_rate")
    summary = {
        "size": _size(size),
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
        late, early = sim.replay_precision(arms[specs[-1]]), sim.replay_precision(arms[specs[0]])
        summary["late_minus_early"]["replay_precision"] = mean_se(a - b for a, b in zip(late, early))
    return {"name": "fig_curriculum", "summary": summary, "plot": {"keys": list(keys), "curves": curves(arms, keys)}}


def fp_correction(size: SimSize, *, pairs: int = 8, train_share: float = 0.5) -> dict:
    """The false-positive-correction mechanism (paper Fig. 7) on a self-judged SFT run that trains on
    a random ``train_share`` of the prompts: the dominance ratio of corrected against random
    misaligned pairs, their ``Delta G``, their similarity to the training prompts, and the share of
    false positives corrected on trained against held-out prompts.

    >>> result = fp_correction(SimSize.tiny(), pairs=2)
    >>> sorted(result["plot"]), len(result["plot"]["ratios"]["random"])
    (['delta_g', 'ratios'], 4)
    """
    if not 0.0 < train_share <= 1.0:
        raise ValueError(f"fp_correction: train_share={train_share} must lie in (0, 1]")
    world, m0 = pretrained(size)
    g = torch.Generator().manual_seed(size.seed)
    n_train = max(1, round(train_share * size.prompts))
    train = torch.randperm(size.prompts, generator=g)[:n_train].sort().values
    arm = run_arm(world, m0, size.config(judge="self"), train_ids=train)
    analysis = sim.fp_correction(arm)
    ratios = sim.dominance_ratios(m0, arm, analysis, pairs=pairs, seed=size.seed)
    rates = sim.correction_rates(arm, train)
    log_ratio = {k: [math.log10(v) for v in vals if v > 0] for k, vals in ratios.items()}
    summary = {
        "size": _size(size),
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
    plot = {
        "ratios": {k: [float(v) for v in vals] for k, vals in ratios.items()},
        "delta_g": {k: [float(v) for a in analysis for v in a.get(f"{k}_delta_g_values", [])]
                    for k in ("corrected", "random")},
    }
    return {"name": "fig_fp_correction", "summary": summary, "plot": plot}


def predicted_vs_measured(size: SimSize, *, lr: float | None = None, track_every: int = 5) -> dict:
    """Measured against first-order predicted ``Delta G`` / ``Delta U`` over a self-judged SFT run.

    >>> result = predicted_vs_measured(SimSize.tiny())
    >>> result["summary"]["tracked_records"] > 0, sorted(result["plot"]["points"]["g"])
    (True, ['aligned', 'misaligned'])
    """
    world, m0 = pretrained(size)
    arm = run_arm(
        world,
        m0,
        size.config(judge="self", **({"lr": lr} if lr else {})),
        track_every=track_every,
        tracker_kw={"ratio_probes": 0},
    )
    summary = {
        "size": _size(size),
        "lr": arm.config.lr,
        "tracked_records": len(arm.theory),
        "rel_err_g": mean_se(t["rel_err_g"] for t in arm.theory),
        "rel_err_u": mean_se(t["rel_err_u"] for t in arm.theory),
    }
    points = {
        key: {
            name: {
                what: [float(v) for t in arm.theory for v, a in zip(t[f"{pre}delta_{key}"], t["probe_aligned"])
                       if a == aligned]
                for what, pre in (("predicted", "pred_"), ("measured", ""))
            }
            for name, aligned in (("misaligned", False), ("aligned", True))
        }
        for key in ("g", "u")
    }
    return {"name": "fig_predicted_vs_measured", "summary": summary, "plot": {"points": points}}


def eta_slope(size: SimSize, lrs: Sequence[float] = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)) -> dict:
    """The first-order residual against the step size (slope 2 on log-log axes: ``O(eta^2)``), for
    SFT and DPO with the ``bayes`` coupling and SFT with the ``tied`` coupling's yes/no head (float64).

    >>> result = eta_slope(SimSize.tiny(), lrs=(0.01, 0.02))
    >>> round(result["summary"]["rows"]["SFT, bayes"][-1]["slope_g"])
    2
    """
    size = dataclasses.replace(size, float64=True)
    rows = {
        "SFT, bayes": sim.eta_scaling(size, lrs),
        "DPO, bayes": sim.eta_scaling(size, lrs, loss="dpo"),
        "SFT, tied": sim.eta_scaling(size, lrs, coupling="tied"),
    }
    return {"name": "fig_eta_slope", "summary": {"size": _size(size), "rows": rows}, "plot": {}}

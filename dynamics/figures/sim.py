"""Simulator and theory experiments at a given size, and the figures drawn from them.

Every experiment pre-trains one set of ``R`` replicas (seeds ``seed .. seed + R - 1``, vectorised in
one process) and runs each *arm* (a judge, a loss, a curriculum) from a copy of that same pre-trained
model with the same seeds, so an arm is always read against its controls (``all``: the unfiltered
control; ``oracle``: the ground-truth judge) replica by replica. Besides the loop's sampled metrics
(the paper's definitions, on ``eval_candidates`` samples per prompt) every epoch record gets the
simulator's exact ones, prefixed ``exact_``: computed on the full ``(P, V)`` tables, free of sampling
noise (:func:`exact_epoch_metrics`).

Example (a tiny world; each arm starts from the same pre-trained replicas)::

    >>> from dynamics.figures.sim import SimSize, judge_arms, change
    >>> size = SimSize.tiny()
    >>> arms = judge_arms(size, ["self", "all"])
    >>> sorted(arms), len(arms["self"].records) == size.seeds * (size.epochs + 1)
    (['all', 'self'], True)
    >>> before, after, delta = change(arms["self"].records, "exact_gen_acc")
    >>> delta[2] == size.seeds                                       # (mean, s.e., seeds)
    True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynamics.clo import CLOConfig, CLOData, run_clo
from dynamics.report import aggregate, mean_se
from dynamics.sim import SimModel, SimWorld, TheoryTracker, exact_metrics, fp_correction_analysis, pretrain

__all__ = [
    "FIGURES",
    "QUICK_KW",
    "Arm",
    "Reference",
    "SimSize",
    "arm_summary",
    "change",
    "correction_rates",
    "corrupt_scan",
    "corrupt_scan_rows",
    "curriculum_arms",
    "dominance_ratios",
    "eta_scaling",
    "exact_epoch_metrics",
    "figure_co_improvement_vs_degradation",
    "figure_corrupt_scan",
    "figure_curriculum",
    "figure_eta_slope",
    "figure_fp_correction",
    "figure_parser",
    "figure_predicted_vs_measured",
    "figure_sharing",
    "figure_training_curves",
    "final_values",
    "fp_correction",
    "judge_arms",
    "main",
    "paired_difference",
    "plot_corrupt_scan",
    "plot_curves",
    "plot_eta_slope",
    "plot_fp_correction",
    "plot_predicted_vs_measured",
    "pretrained",
    "replay_precision",
    "run_arm",
    "save_figure",
    "sharing_arms",
    "vs_control",
    "write_summary",
]

# --------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class SimSize:
    """The size and the shared settings of a simulator experiment.

    The defaults are the entry point's (``experiments/sim_clo.py``): ``P = V = 64``, 20 epochs of
    plain SGD at ``lr = 0.5``, 8 candidates, 16 evaluation samples per prompt; ``seeds`` replicas.
    """

    prompts: int = 64
    tokens: int = 64
    seeds: int = 4
    epochs: int = 20
    pretrain_steps: int = 300
    gap: float = 0.3
    lr: float = 0.5
    candidates: int = 8
    eval_candidates: int = 16
    batch_size: int = 16
    world_seed: int = 0
    seed: int = 0
    understanding: str = "bayes"
    float64: bool = False

    @classmethod
    def quick(cls, **overrides) -> SimSize:
        """A seconds-long size for smoke runs (figure scripts' ``--quick``).

        >>> SimSize.quick(seeds=3).prompts, SimSize.quick(seeds=3).seeds
        (24, 3)
        """
        base = {
            "prompts": 24,
            "tokens": 24,
            "seeds": 2,
            "epochs": 4,
            "pretrain_steps": 80,
            "eval_candidates": 8,
        }
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> SimSize:
        """The smallest useful size (docstring examples).

        >>> SimSize.tiny().prompts
        12
        """
        base = {
            "prompts": 12,
            "tokens": 12,
            "seeds": 2,
            "epochs": 2,
            "pretrain_steps": 20,
            "eval_candidates": 4,
            "candidates": 4,
        }
        return cls(**{**base, **overrides})

    def config(self, **overrides) -> CLOConfig:
        """The CLO settings of this size, with ``overrides`` (any :class:`CLOConfig` field).

        >>> cfg = SimSize().config(judge="corrupt:0.6")
        >>> cfg.judge, cfg.lr, cfg.candidates, cfg.optimizer
        ('corrupt:0.6', 0.5, 8, 'sgd')
        """
        base = {
            "candidates": self.candidates,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "eval_candidates": self.eval_candidates,
            "seed": self.seed,
            "progress": False,
        }
        cfg = CLOConfig(**{**base, **overrides})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first bad field.

        >>> SimSize(seeds=0).validate()
        Traceback (most recent call last):
        ...
        ValueError: SimSize.seeds=0: must be >= 1
        """
        for name in (
            "prompts",
            "tokens",
            "seeds",
            "pretrain_steps",
            "candidates",
            "eval_candidates",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SimSize.{name}={getattr(self, name)}: must be >= 1")
        if self.epochs < 1:
            raise ValueError(f"SimSize.epochs={self.epochs}: must be >= 1")
        if not 0.0 <= self.gap <= 1.0:
            raise ValueError(f"SimSize.gap={self.gap}: must lie in [0, 1]")
        if self.understanding not in ("bayes", "head"):
            raise ValueError(f"SimSize.understanding={self.understanding!r}: expected 'bayes' or 'head'")


def pretrained(
    size: SimSize, *, sharing: str = "shared", understanding: str | None = None
) -> tuple[SimWorld, SimModel]:
    """The world and ``size.seeds`` pre-trained replicas (the gap-leaving recipe of :func:`pretrain`).

    >>> w, m = pretrained(SimSize.tiny())
    >>> m.replicas, m.num_prompts
    (2, 12)
    """
    size.validate()
    world = SimWorld(size.prompts, size.tokens, seed=size.world_seed)
    model = SimModel(
        world,
        replicas=size.seeds,
        seed=size.seed,
        sharing=sharing,
        understanding=understanding or size.understanding,
        dtype=torch.float64 if size.float64 else torch.float32,
    )
    pretrain(world, model, steps=size.pretrain_steps, gap=size.gap, seed=size.seed)
    return world, model


# --------------------------------------------------------------------------------------- exact metrics


@dataclass
class Reference:
    """The pre-trained model's tables: understanding ``P(yes)`` and ``log pi(x|y)``, each ``(R, P, V)``."""

    und: torch.Tensor
    gen_logp: torch.Tensor

    @classmethod
    def of(cls, model: SimModel) -> Reference:
        """The tables of ``model`` now (float64, on the CPU).

        >>> w, m = pretrained(SimSize.tiny())
        >>> Reference.of(m).gen_logp.shape
        torch.Size([2, 12, 12])
        """
        with torch.no_grad():
            logp = torch.log_softmax(model.gen_logits(torch.arange(model.num_prompts)).double(), -1)
        return cls(und=model.understanding_table().double().cpu(), gen_logp=logp.cpu())


def exact_epoch_metrics(
    world: SimWorld, model: SimModel, reference: Reference, *, threshold: float = 0.5
) -> list[dict]:
    """Exact (table) metrics of the current model, one dict per replica, keys prefixed ``exact_``.

    Those of :func:`dynamics.sim.exact_metrics` (``gen_acc``, ``und_acc``, ``und_fp_rate``,
    ``und_fn_rate`` over all misaligned / aligned pairs, ``non_unification``, ``attribution``) and
    the population win rate: the pre-trained and the current understanding judge every pair,
    weighted by the pre-trained generation ``pi_0(x|y)`` (the distribution the paper's win rate
    samples from); among the disagreement mass, the share where the current one is right
    (``exact_win_rate``, 0.5 without disagreement; ``exact_win_mass`` its denominator per prompt).
    ``exact_pre_fp_rate``: the current understanding's false-positive rate on the pre-trained
    model's misaligned samples (``pi_0``-weighted), the population version of the loop's
    ``und_fp_rate``.

    >>> w, m = pretrained(SimSize.tiny())
    >>> recs = exact_epoch_metrics(w, m, Reference.of(m))
    >>> recs[0]["exact_win_rate"], recs[0]["exact_win_mass"]
    (0.5, 0.0)
    """
    out = [
        {f"exact_{k}": float(v[r]) for k, v in exact_metrics(world, model, threshold=threshold).items()}
        for r in range(model.replicas)
    ]
    aligned = world.aligned.cpu()
    pi0 = reference.gen_logp.exp()
    pre_yes = reference.und >= threshold
    cur_yes = model.understanding_table().cpu() >= threshold
    disagree = (pre_yes != cur_yes).double() * pi0
    mass = disagree.sum((1, 2))
    won = (disagree * (cur_yes == aligned).double()).sum((1, 2))
    mis = pi0 * (~aligned).double()
    pre_fp = (mis * cur_yes.double()).sum((1, 2)) / mis.sum((1, 2)).clamp_min(1e-300)
    P = aligned.shape[0]
    for r, rec in enumerate(out):
        rec["exact_win_rate"] = float(won[r] / mass[r]) if mass[r] > 0 else 0.5
        rec["exact_win_mass"] = float(mass[r] / P)
        rec["exact_pre_fp_rate"] = float(pre_fp[r])
    return out


# --------------------------------------------------------------------------------------- arms


@dataclass
class Arm:
    """One CLO run from a pre-trained model: its config, per-replica epoch records (with the
    ``exact_*`` metrics), theory-tracking records, final data state, the trained model and the
    pre-trained reference tables."""

    label: str
    config: CLOConfig
    records: list[dict]
    theory: list[dict]
    data: CLOData
    model: SimModel
    reference: Reference
    world: SimWorld = field(repr=False, default=None)


def run_arm(
    world: SimWorld,
    model0: SimModel,
    cfg: CLOConfig,
    *,
    label: str | None = None,
    track_every: int = 0,
    probes: int = 32,
    tracker_kw: dict | None = None,
    train_ids: Sequence[int] | torch.Tensor | None = None,
) -> Arm:
    """Run CLO on a copy of ``model0`` (left untouched) with the oracle as external judge.

    ``track_every > 0`` adds a :class:`~dynamics.sim.TheoryTracker` (every k-th step, ``probes`` probe
    pairs, 3/4 misaligned). ``train_ids``: the prompts Algorithm 1 builds training data for (default
    all; evaluation always covers every prompt). Returns an :class:`Arm`.

    >>> w, m = pretrained(SimSize.tiny())
    >>> arm = run_arm(w, m, SimSize.tiny().config(judge="oracle"))
    >>> arm.records[-1]["epoch"], "exact_gen_acc" in arm.records[-1]
    (2, True)
    """
    model = copy.deepcopy(model0)
    ref = Reference.of(model)
    hooks = []
    if track_every > 0:
        n_mis = max(1, (3 * probes) // 4)
        kw = {
            "every": track_every,
            "n_misaligned": n_mis,
            "n_aligned": max(1, probes - n_mis),
            "seed": cfg.seed,
            "config": cfg,
        }
        kw.update(tracker_kw or {})
        hooks.append(TheoryTracker(world, model, **kw))

    def on_epoch(epoch: int, records: list[dict]) -> None:
        for rec, ex in zip(records, exact_epoch_metrics(world, model, ref, threshold=cfg.threshold)):
            rec.update(ex)

    res = run_clo(model, cfg, external=world.oracle, hooks=hooks, on_epoch=on_epoch, train_ids=train_ids)
    return Arm(label or cfg.judge, cfg, res.metrics, res.theory, res.data, model, ref, world)


def judge_arms(
    size: SimSize,
    judges: Sequence[str],
    *,
    sharing: str = "shared",
    understanding: str | None = None,
    track_every: int = 0,
    model: tuple[SimWorld, SimModel] | None = None,
    **cfg_overrides,
) -> dict[str, Arm]:
    """One arm per judge spec, all from the same pre-trained replicas (pre-trained here unless
    ``model=(world, model)`` is given). ``cfg_overrides``: any :class:`CLOConfig` field.

    >>> arms = judge_arms(SimSize.tiny(), ["oracle", "noisy:0.5"], loss="dpo")
    >>> [a.config.loss for a in arms.values()]
    ['dpo', 'dpo']
    """
    world, m0 = model or pretrained(size, sharing=sharing, understanding=understanding)
    return {
        j: run_arm(world, m0, size.config(judge=j, **cfg_overrides), label=j, track_every=track_every)
        for j in judges
    }


def corrupt_scan(
    size: SimSize,
    ps: Sequence[float],
    *,
    controls: Sequence[str] = ("self", "all", "oracle"),
    model: tuple[SimWorld, SimModel] | None = None,
    **cfg_overrides,
) -> dict[str, Arm]:
    """The ``corrupt:p`` judge for every ``p`` plus the controls, from one pre-trained model.

    Keys: the control names and ``corrupt:<p>`` (``p`` as given, formatted ``:g``).

    >>> sorted(corrupt_scan(SimSize.tiny(epochs=1), [0.5], controls=("all",)))
    ['all', 'corrupt:0.5']
    """
    judges = list(controls) + [f"corrupt:{p:g}" for p in ps]
    return judge_arms(size, judges, model=model, **cfg_overrides)


def sharing_arms(
    size: SimSize,
    sharings: Sequence[str] = ("shared", "partial:0.5", "decoupled"),
    judge: str = "self",
    **cfg_overrides,
) -> dict[str, Arm]:
    """One arm per sharing regime; each regime is its own architecture, pre-trained with the same
    recipe and seeds.

    >>> arms = sharing_arms(SimSize.tiny(epochs=1), ["decoupled"])
    >>> [r["win_rate_n"] for r in arms["decoupled"].records]      # the understanding cannot move
    [0, 0, 0, 0]
    """
    out = {}
    for s in sharings:
        world, m0 = pretrained(size, sharing=s)
        out[s] = run_arm(world, m0, size.config(judge=judge, **cfg_overrides), label=s)
    return out


def curriculum_arms(
    size: SimSize,
    replay_epochs: Sequence[int],
    *,
    judge: str = "self",
    candidates: int | None = None,
    adaptive: bool = False,
    model: tuple[SimWorld, SimModel] | None = None,
    **cfg_overrides,
) -> dict[str, Arm]:
    """No replay, then replay at each epoch of ``replay_epochs`` (one arm each; ``adaptive`` adds the
    adaptive trigger), from one pre-trained model. ``candidates`` overrides the size's (fewer
    candidates leave a larger discard pool). Keys ``off``, ``epochs:<e>``, ``adaptive``.

    >>> arms = curriculum_arms(SimSize.tiny(), [1], candidates=1)
    >>> sorted(arms), [r["epoch"] for r in arms["epochs:1"].records if r.get("replay")]
    (['epochs:1', 'off'], [1, 1])
    """
    world, m0 = model or pretrained(size)
    kw = dict(judge=judge, **cfg_overrides)
    if candidates is not None:
        kw["candidates"] = candidates
    specs = ["off"] + [f"epochs:{e}" for e in replay_epochs] + (["adaptive"] if adaptive else [])
    return {s: run_arm(world, m0, size.config(curriculum=s, **kw), label=s) for s in specs}


def eta_scaling(
    size: SimSize,
    lrs: Sequence[float],
    *,
    loss: str = "sft",
    judge: str = "self",
    sharing: str = "shared",
    understanding: str | None = None,
    probes: int = 32,
    model: tuple[SimWorld, SimModel] | None = None,
) -> list[dict]:
    """The first-order prediction error of the first CLO step against the step size.

    For each ``lr``: a one-epoch CLO run from the same pre-trained model, tracked on its first step
    (same parameters, same batch: only ``eta`` differs). Returns one row per ``lr`` with, over
    replicas (mean, s.e.), ``rel_err_g`` / ``rel_err_u`` (``||measured - predicted|| / ||measured||``)
    and ``resid_g`` / ``resid_u`` (max absolute residual), plus the fitted log-log ``slope_*`` of the
    residuals on the last row. Use ``size.float64`` so round-off does not floor small residuals.

    >>> rows = eta_scaling(SimSize.tiny(float64=True), [0.01, 0.02])
    >>> rows[0]["rel_err_g"][0] < 0.01, round(rows[-1]["slope_g"])
    (True, 2)
    """
    if len(lrs) < 2 or any(not lr > 0 for lr in lrs):
        raise ValueError(f"eta_scaling: need at least two positive step sizes, got {list(lrs)}")
    world, m0 = model or pretrained(size, sharing=sharing, understanding=understanding)
    rows = []
    for lr in sorted(lrs):
        cfg = size.config(judge=judge, loss=loss, lr=lr, epochs=1)
        arm = run_arm(
            world,
            m0,
            cfg,
            label=f"lr={lr:g}",
            track_every=10**9,
            probes=probes,
            tracker_kw={"ratio_probes": 0},
        )
        first = [t for t in arm.theory if t["step"] == 0]
        row = {"lr": lr}
        for key in ("g", "u"):
            row[f"rel_err_{key}"] = mean_se(t[f"rel_err_{key}"] for t in first)
            row[f"resid_{key}"] = mean_se(t[f"max_abs_resid_{key}"] for t in first)
            row[f"moved_{key}"] = mean_se(max(abs(v) for v in t[f"delta_{key}"]) for t in first)
        rows.append(row)
    for key in ("g", "u"):
        xs = [math.log(r["lr"]) for r in rows]
        ys = [math.log(max(r[f"resid_{key}"][0], 1e-300)) for r in rows]
        rows[-1][f"slope_{key}"] = _fit_slope(xs, ys)
    return rows


def _fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def fp_correction(arm: Arm, *, n_random: int = 256, seed: int = 0) -> list[dict]:
    """The paper's Fig. 7 analysis of a finished arm: false-positive-corrected pairs (wrong yes ->
    right no, exact tables before and after training) against random pairs, per replica: their
    similarity to the training prompts and their ``Delta G`` (see
    :func:`dynamics.sim.fp_correction_analysis`).

    >>> w, m = pretrained(SimSize.tiny())
    >>> out = fp_correction(run_arm(w, m, SimSize.tiny().config()), n_random=8)
    >>> len(out), out[0]["n_corrected"] <= out[0]["n_fp_before"]
    (2, True)
    """
    after = Reference.of(arm.model)
    train = [arm.data.prompt_ids[arm.data.accepted[r].any(-1)] for r in range(arm.model.replicas)]
    return fp_correction_analysis(
        arm.world,
        arm.reference.und,
        after.und,
        train,
        gen_logp_before=arm.reference.gen_logp,
        gen_logp_after=after.gen_logp,
        threshold=arm.config.threshold,
        n_random=n_random,
        seed=seed,
    )


def dominance_ratios(
    model0: SimModel, arm: Arm, analysis: Sequence[dict], *, pairs: int = 8, seed: int = 0
) -> dict[str, list[float]]:
    """``||K(Y0, Yu)|| / ||K(Yi, Yu)||`` at the pre-trained parameters for up to ``pairs`` corrected and
    as many random misaligned (prompt, token) pairs per replica (from :func:`fp_correction`'s
    ``analysis``): ``Yu`` every prompt of the replica's training set, ``Yi`` the probe token's strongest
    competing prompt by the pre-trained posterior. Explicit eNTK blocks over the generation parameters
    (:func:`dynamics.sim.tracking.dominance_ratio`). Returns ``{"corrected": [...], "random": [...]}``.

    >>> w, m = pretrained(SimSize.tiny())
    >>> arm = run_arm(w, m, SimSize.tiny().config())
    >>> r = dominance_ratios(m, arm, fp_correction(arm, n_random=8), pairs=2)
    >>> len(r["random"]), all(v > 0 for v in r["random"])
    (4, True)
    """
    from dynamics.sim.tracking import dominance_ratio

    g = torch.Generator().manual_seed(int(seed))
    mis = (~arm.world.aligned).nonzero()
    out: dict[str, list[float]] = {"corrected": [], "random": []}
    for r, rec in enumerate(analysis):
        train = arm.data.prompt_ids[arm.data.accepted[r].any(-1)]
        groups = {
            "corrected": torch.tensor(rec["corrected"], dtype=torch.long).reshape(-1, 2),
            "random": mis[torch.randperm(len(mis), generator=g)[:pairs]],
        }
        for name, probes in groups.items():
            probes = probes[torch.randperm(len(probes), generator=g)[:pairs]]
            if len(probes) == 0 or len(train) == 0:
                continue
            logp = arm.reference.gen_logp[r][:, probes[:, 1]].T.clone()  # (n, P) log pi(x0 | y)
            logp[torch.arange(len(probes)), probes[:, 0]] = -math.inf
            out[name] += dominance_ratio(model0, r, probes, train, logp.argmax(-1)).tolist()
    return out


def correction_rates(arm: Arm, train_ids) -> dict[str, list[float]]:
    """Per replica, the share of the pre-trained understanding's false positives (exact table) that
    training corrected, on the ``train_ids`` prompts and on the other (held-out) prompts (NaN where a
    group has no false positive).

    >>> w, m = pretrained(SimSize.tiny())
    >>> rates = correction_rates(run_arm(w, m, SimSize.tiny().config(), train_ids=range(6)), range(6))
    >>> sorted(rates), len(rates["trained"])
    (['held_out', 'trained'], 2)
    """
    after = Reference.of(arm.model)
    thr = arm.config.threshold
    trained = torch.zeros(arm.world.num_prompts, dtype=torch.bool)
    trained[torch.as_tensor(train_ids).long()] = True
    out: dict[str, list[float]] = {"trained": [], "held_out": []}
    for r in range(arm.model.replicas):
        fp0 = (arm.reference.und[r] >= thr) & ~arm.world.aligned
        fixed = fp0 & (after.und[r] < thr)
        for name, rows in (("trained", trained), ("held_out", ~trained)):
            n = int(fp0[rows].sum())
            out[name].append(int(fixed[rows].sum()) / n if n else math.nan)
    return out


# --------------------------------------------------------------------------------------- reading arms


def _per_seed(records: Sequence[dict], key: str, epoch: int) -> dict[int, float]:
    return {
        int(r["seed"]): float(r[key]) for r in records if int(r["epoch"]) == epoch and r.get(key) is not None
    }


def _last_epoch(records: Sequence[dict]) -> int:
    return max(int(r["epoch"]) for r in records)


def change(records: Sequence[dict], key: str, *, start: int = 0, end: int | None = None):
    """``(before, after, delta)``, each ``(mean, s.e., seeds)`` across seeds; ``delta`` is the paired
    per-seed difference ``after - before``.

    >>> recs = [{"epoch": e, "seed": s, "x": e + s} for e in (0, 1) for s in (0, 1)]
    >>> change(recs, "x")[2]
    (1.0, 0.0, 2)
    """
    end = _last_epoch(records) if end is None else end
    b, a = _per_seed(records, key, start), _per_seed(records, key, end)
    seeds = sorted(set(b) & set(a))
    return mean_se(b[s] for s in seeds), mean_se(a[s] for s in seeds), mean_se(a[s] - b[s] for s in seeds)


def paired_difference(
    records_a: Sequence[dict], records_b: Sequence[dict], key: str, *, start: int = 0, end: int | None = None
):
    """Per seed, the change of ``key`` in arm a minus its change in arm b (same pre-trained replica):
    ``(mean, s.e., seeds)``. Positive: a moved ``key`` up more than b did.

    >>> a = [{"epoch": e, "seed": 0, "x": 2.0 * e} for e in (0, 1)]
    >>> b = [{"epoch": e, "seed": 0, "x": 1.0 * e} for e in (0, 1)]
    >>> paired_difference(a, b, "x")[0]
    1.0
    """
    end = _last_epoch(records_a) if end is None else end
    a0, a1 = _per_seed(records_a, key, start), _per_seed(records_a, key, end)
    b0, b1 = _per_seed(records_b, key, start), _per_seed(records_b, key, end)
    seeds = sorted(set(a0) & set(a1) & set(b0) & set(b1))
    return mean_se((a1[s] - a0[s]) - (b1[s] - b0[s]) for s in seeds)


def final_values(records: Sequence[dict], key: str, *, epoch: int | None = None) -> list[float]:
    """Per-seed values of ``key`` at ``epoch`` (default the last), in seed order.

    >>> final_values([{"epoch": 1, "seed": 1, "x": 3.0}, {"epoch": 1, "seed": 0, "x": 2.0}], "x")
    [2.0, 3.0]
    """
    epoch = _last_epoch(records) if epoch is None else epoch
    v = _per_seed(records, key, epoch)
    return [v[s] for s in sorted(v)]


def replay_precision(arm: Arm) -> list[float]:
    """Per replica, the ground-truth precision of the candidates curriculum replay moved into the
    training set (NaN where nothing was replayed): how good the late data are.

    >>> w, m = pretrained(SimSize.tiny())
    >>> arm = run_arm(w, m, SimSize.tiny().config(curriculum="epochs:1", candidates=1))
    >>> len(replay_precision(arm)) == m.replicas
    True
    """
    d = arm.data
    acc = d.accepted & d.replayed[..., None]
    ok = arm.world.aligned[d.prompt_ids[None, :, None], d.images[..., 0]]
    out = []
    for r in range(acc.shape[0]):
        n = int(acc[r].sum())
        out.append(float((acc[r] & ok[r]).sum()) / n if n else math.nan)
    return out


def arm_summary(arm: Arm, keys: Iterable[str]) -> dict:
    """Before, after and paired change of each key (mean, s.e., seeds), plus the data-set sizes.

    >>> w, m = pretrained(SimSize.tiny())
    >>> summary = arm_summary(run_arm(w, m, SimSize.tiny().config()), ["exact_gen_acc"])
    >>> summary["judge"], sorted(summary["exact_gen_acc"])
    ('self', ['after', 'before', 'change'])
    """
    out = {
        "label": arm.label,
        "judge": arm.config.judge,
        "loss": arm.config.loss,
        "curriculum": arm.config.curriculum,
        "candidates": arm.config.candidates,
        "seeds": sorted({int(r["seed"]) for r in arm.records}),
    }
    for k in keys:
        b, a, d = change(arm.records, k)
        out[k] = {"before": b, "after": a, "change": d}
    if arm.config.curriculum != "off":
        out["replay_precision"] = mean_se(replay_precision(arm))
        out["replay_epochs"] = sorted({int(r["epoch"]) for r in arm.records if r.get("replay")})
    return out


def vs_control(arms: dict[str, Arm], control: str, keys: Iterable[str]) -> dict:
    """For every arm but ``control``: the per-seed change of each key minus the control's change
    (:func:`paired_difference`), ``(mean, s.e., seeds)``.

    >>> arms = judge_arms(SimSize.tiny(epochs=1), ["self", "all"])
    >>> list(vs_control(arms, "all", ["exact_gen_acc"]))
    ['self']
    """
    ref = arms[control].records
    return {
        label: {k: paired_difference(arm.records, ref, k) for k in keys}
        for label, arm in arms.items()
        if label != control
    }


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


def corrupt_scan_rows(arms: dict[str, Arm], keys: Sequence[str]) -> list[dict]:
    """One row per ``corrupt:p`` arm: ``p`` and the paired change of each key (mean, s.e., seeds),
    and the change relative to the ``all`` control where that arm is present.

    >>> rows = corrupt_scan_rows(corrupt_scan(SimSize.tiny(epochs=1), [0.5]), ["exact_gen_acc"])
    >>> [r["p"] for r in rows], "exact_gen_acc_vs_all" in rows[0]
    ([0.5], True)
    """
    rows = []
    for label, arm in arms.items():
        if not label.startswith("corrupt:"):
            continue
        row = {
            "p": float(label.split(":", 1)[1]),
            "sft_precision": mean_se(final_values(arm.records, "sft_precision")),
        }
        for k in keys:
            row[k] = change(arm.records, k)[2]
            if "all" in arms:
                row[f"{k}_vs_all"] = paired_difference(arm.records, arms["all"].records, k)
        rows.append(row)
    return sorted(rows, key=lambda r: r["p"])


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

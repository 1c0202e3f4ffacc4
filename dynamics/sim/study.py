"""Simulator experiments: sizes, the pre-trained replicas, exact metrics, and arms read against
their controls.

Every experiment pre-trains one set of ``R`` replicas (seeds ``seed .. seed + R - 1``, vectorised in
one process) in a world (``world_seed``) and runs each *arm* (a judge, a loss, a curriculum) from that
same pre-trained model with the same seeds (:func:`dynamics.study.run_arm`), so an arm is always read
against its controls (``all``: the unfiltered control; ``oracle``: the ground-truth judge) replica by
replica. :func:`world_arms` repeats a study over several worlds, tagging every record with its
``world``: the study layer's unit is ``(world, seed)``. Besides the loop's sampled metrics (the
paper's definitions, on ``eval_candidates`` samples per prompt) every epoch record gets the
simulator's exact ones, prefixed ``exact_``: computed on the full ``(P, V)`` tables, free of
sampling noise (:func:`exact_epoch_metrics`).

Example (a tiny world; each arm starts from the same pre-trained replicas)::

    >>> from dynamics.sim.study import SimSize, judge_arms
    >>> from dynamics.study import change
    >>> size = SimSize.tiny()
    >>> arms = judge_arms(size, ["self", "all"])
    >>> sorted(arms), len(arms["self"].records) == size.seeds * (size.epochs + 1)
    (['all', 'self'], True)
    >>> before, after, delta = change(arms["self"].records, "exact_gen_acc")
    >>> delta[2] == size.seeds                                       # (mean, s.e., seeds)
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from dynamics import metrics
from dynamics.clo import CLOConfig
from dynamics.judges import parse_judge
from dynamics.sim.model import COUPLINGS, SimModel
from dynamics.sim.pretrain import exact_metrics, pretrain
from dynamics.sim.tracking import TheoryTracker, fp_correction_analysis
from dynamics.sim.world import SimWorld
from dynamics.study import Arm as _Arm
from dynamics.study import change, final_values, mean_se, paired_difference, perturb, slope
from dynamics.study import run_arm as _run_arm
from dynamics.study.arms import check_perturb_at

__all__ = [
    "Arm",
    "Reference",
    "SimSize",
    "arm_summary",
    "correction_rates",
    "corrupt_scan",
    "corrupt_scan_rows",
    "coupling_arms",
    "curriculum_arms",
    "dominance_ratios",
    "eta_scaling",
    "exact_epoch_metrics",
    "fp_correction",
    "judge_arms",
    "pretrained",
    "replay_precision",
    "run_arm",
    "weak_judge_quality",
    "weak_pretrained",
    "weak_steps",
    "world_arms",
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
    coupling: str = "bayes"
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
        if self.coupling not in COUPLINGS:
            raise ValueError(f"SimSize.coupling={self.coupling!r}: expected one of {', '.join(COUPLINGS)}")


def pretrained(
    size: SimSize,
    *,
    coupling: str | None = None,
    perturbation: float = 0.0,
    perturb_at: str = "pretrained",
) -> tuple[SimWorld, SimModel]:
    """The world and ``size.seeds`` pre-trained replicas (the gap-leaving recipe of :func:`pretrain`)
    with ``coupling`` (default ``size.coupling``).
    ``perturbation > 0``: every weight moved by that relative amount (:func:`dynamics.study.perturb`,
    seeded by ``size.seed``), after pre-training (``perturb_at="pretrained"``) or before it
    (``"init"``): the robustness run of a findings test.

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
        coupling=coupling or size.coupling,
        dtype=torch.float64 if size.float64 else torch.float32,
    )
    check_perturb_at(perturb_at)
    if perturbation and perturb_at == "init":
        perturb(model, rel=perturbation, seed=size.seed)
    pretrain(world, model, steps=size.pretrain_steps, gap=size.gap, seed=size.seed)
    if perturbation and perturb_at == "pretrained":
        perturb(model, rel=perturbation, seed=size.seed)
    return world, model


#: The ``weak`` data judge's share of the run's pre-training steps (:func:`weak_pretrained`). Pre-training
#: (constant-rate Adam) converges within about 75 steps, so a quarter of 300 is as good a judge as the
#: full model; a fifteenth (20 of 300) is clearly weaker but above chance where understanding is a trained
#: head. Measured at the default size (P = V = 64, 4 seeds, world 0; :func:`weak_judge_quality`, balanced
#: accuracy on the full model's candidates, weak against full): tied 0.76 against 0.90, trunk 0.76 against
#: 0.89, decoupled 0.79 against 0.90. Under ``bayes`` understanding is the generator's posterior, and an
#: earlier generator is no worse a posterior (0.89 against 0.89; better in world 2): there the weak
#: checkpoint is not a weaker judge, which :func:`weak_judge_quality` shows and the entry point reports.
WEAK_FRACTION = 1 / 15


def weak_steps(size: SimSize, steps: int | None = None) -> int:
    """The pre-training steps of the ``weak`` judge of ``size``: ``steps``, or by default
    :data:`WEAK_FRACTION` of ``size.pretrain_steps`` (at least 1). A ValueError names a count outside
    ``1..size.pretrain_steps``.

    >>> weak_steps(SimSize()), weak_steps(SimSize(), 120)
    (20, 120)
    """
    from dynamics.judges import weak_judge_steps

    return weak_judge_steps(size.pretrain_steps, WEAK_FRACTION, steps)


def weak_pretrained(
    size: SimSize,
    *,
    steps: int | None = None,
    coupling: str | None = None,
    perturbation: float = 0.0,
    perturb_at: str = "pretrained",
) -> SimModel:
    """The judge model of the ``weak`` data judge: the replicas of :func:`pretrained` (same world, seeds,
    coupling, recipe, perturbation) pre-trained for :func:`weak_steps` steps instead of
    ``size.pretrain_steps`` (default :data:`WEAK_FRACTION`): an earlier checkpoint of the same
    pre-training run (constant-rate Adam on the same data), whose understanding is measurably worse where
    it is a trained head (:func:`weak_judge_quality`; not under ``bayes``: see :data:`WEAK_FRACTION`).
    Pass it to :func:`dynamics.clo.run_clo` as ``judge_model``.

    >>> size = SimSize.tiny(pretrain_steps=45)
    >>> weak = weak_pretrained(size)
    >>> weak.replicas == size.seeds, weak_steps(size)
    (True, 3)
    """
    return pretrained(dataclasses.replace(size, pretrain_steps=weak_steps(size, steps)), coupling=coupling,
                      perturbation=perturbation, perturb_at=perturb_at)[1]


def weak_judge_quality(world: SimWorld, model: SimModel, judge_model: SimModel, *,
                       threshold: float = 0.5) -> dict[str, list[float]]:
    """How good a judge model's verdicts are on ``model``'s candidates, exactly, per replica: the
    rates over the generator's distribution ``pi(x|y)`` (the population of which Algorithm 1's
    candidates are a sample) of the judge model's verdicts ``P(yes) >= threshold`` against ground
    truth: ``fp_rate``, ``fn_rate``, ``balanced_acc`` (``1 - (FP + FN) / 2``), ``precision`` and
    ``recall`` of the accepted set, ``accept_rate``; and ``table_balanced_acc``, the balanced accuracy
    of its whole ``(P, V)`` understanding table. Measure a weak judge against the model's own
    (``judge_model=model``) to see that it is weaker.

    >>> size = SimSize.tiny(pretrain_steps=40)
    >>> w, m = pretrained(size)
    >>> q = weak_judge_quality(w, m, m)
    >>> sorted(q)[:3], len(q["fp_rate"]) == size.seeds
    (['accept_rate', 'balanced_acc', 'fn_rate'], True)
    """
    pi = model.gen_table().to(torch.float64).cpu()  # (R, P, V)
    yes = metrics.accepts(judge_model.understanding_table().cpu(), threshold)
    al = world.aligned.cpu().expand_as(yes)
    fp = metrics.false_positive_rate(yes, al, pi)
    fn = metrics.false_negative_rate(yes, al, pi)
    out = {
        "fp_rate": fp,
        "fn_rate": fn,
        "balanced_acc": 1.0 - 0.5 * (fp + fn),
        "precision": metrics.rate(al, yes, pi)[0],
        "recall": metrics.rate(yes, al, pi)[0],
        "accept_rate": metrics.rate(yes, torch.ones_like(yes), pi)[0],
        "table_balanced_acc": metrics.balanced_accuracy(yes, al),
    }
    return {k: v.tolist() for k, v in out.items()}


def _judge_model(size: SimSize, judges: Iterable[str], judge_model: SimModel | None, steps: int | None,
                 **kw) -> SimModel | None:
    """The judge slot of a study's arms: ``judge_model``, or :func:`weak_pretrained` where a judge is
    ``weak`` (None otherwise)."""
    if judge_model is not None or not any(parse_judge(j).needs_judge_model for j in judges):
        return judge_model
    return weak_pretrained(size, steps=steps, **kw)


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
    aligned = world.aligned.cpu().expand_as(reference.und)
    pi0 = reference.gen_logp.exp()
    pre_yes = metrics.accepts(reference.und, threshold)
    cur_yes = metrics.accepts(model.understanding_table().cpu(), threshold)
    win, mass = metrics.win_rate(pre_yes, cur_yes, aligned, pi0)
    pre_fp = metrics.false_positive_rate(cur_yes, aligned, pi0)
    P = aligned.shape[1]
    for r, rec in enumerate(out):
        rec["exact_win_rate"] = float(win[r])
        rec["exact_win_mass"] = float(mass[r] / P)
        rec["exact_pre_fp_rate"] = float(pre_fp[r])
    return out


# --------------------------------------------------------------------------------------- arms


@dataclass
class Arm(_Arm):
    """A simulator arm (:class:`dynamics.study.Arm`) with the trained model, the pre-trained
    reference tables and the world, which the exact analyses (:func:`fp_correction`, ...) read."""

    reference: Reference | None = field(default=None, repr=False)
    world: SimWorld | None = field(default=None, repr=False)


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
    tags: dict | None = None,
    judge_model: SimModel | None = None,
) -> Arm:
    """Run CLO from ``model0`` (restored afterwards: :func:`dynamics.study.run_arm`) with the oracle
    as external judge and the exact metrics added to every epoch record.

    ``track_every > 0`` adds a :class:`~dynamics.sim.TheoryTracker` (every k-th step, ``probes`` probe
    pairs, 3/4 misaligned). ``train_ids``: the prompts Algorithm 1 builds training data for (default
    all; evaluation always covers every prompt). ``judge_model``: the judge slot of the ``weak`` judge
    (:func:`weak_pretrained`; the oracle stays the audit's and the evaluation's ground truth). Returns an
    :class:`Arm` holding the trained model.

    >>> w, m = pretrained(SimSize.tiny())
    >>> arm = run_arm(w, m, SimSize.tiny().config(judge="oracle"))
    >>> arm.records[-1]["epoch"], "exact_gen_acc" in arm.records[-1]
    (2, True)
    """
    ref = Reference.of(model0)
    hooks = []
    if track_every > 0:
        kw = {"every": track_every, "seed": cfg.seed, "config": cfg, **(tracker_kw or {})}
        hooks.append(TheoryTracker.with_probes(world, model0, probes, **kw))

    def on_epoch(epoch: int, records: list[dict]) -> None:
        for rec, ex in zip(records, exact_epoch_metrics(world, model0, ref, threshold=cfg.threshold)):
            rec.update(ex)

    arm = _run_arm(model0, cfg, external=world.oracle, label=label, train_ids=train_ids, hooks=hooks,
                   on_epoch=on_epoch, tags=tags, keep_model=True, judge_model=judge_model)
    return Arm(arm.label, cfg, arm.records, arm.theory, arm.data, arm.model, ref, world)


def judge_arms(
    size: SimSize,
    judges: Sequence[str],
    *,
    coupling: str | None = None,
    track_every: int = 0,
    model: tuple[SimWorld, SimModel] | None = None,
    judge_model: SimModel | None = None,
    weak_steps: int | None = None,
    **cfg_overrides,
) -> dict[str, Arm]:
    """One arm per judge spec, all from the same pre-trained replicas (pre-trained here unless
    ``model=(world, model)`` is given). ``cfg_overrides``: any :class:`CLOConfig` field. A ``weak`` arm
    judges with ``judge_model``, by default :func:`weak_pretrained` with ``weak_steps`` pre-training
    steps (default :data:`WEAK_FRACTION` of the size's; with ``model`` given, pass the matching ``judge_model``).

    >>> arms = judge_arms(SimSize.tiny(), ["oracle", "noisy:0.5"], loss="dpo")
    >>> [a.config.loss for a in arms.values()]
    ['dpo', 'dpo']
    """
    world, m0 = model or pretrained(size, coupling=coupling)
    weak = _judge_model(size, judges, judge_model, weak_steps, coupling=coupling)
    return {
        j: run_arm(world, m0, size.config(judge=j, **cfg_overrides), label=j, track_every=track_every,
                   judge_model=weak)
        for j in judges
    }


def world_arms(
    size: SimSize,
    judges: Sequence[str],
    *,
    worlds: Sequence[int] = (0,),
    coupling: str | None = None,
    perturbation: float = 0.0,
    perturb_at: str = "pretrained",
    weak_steps: int | None = None,
    **cfg_overrides,
) -> dict[str, list[dict]]:
    """:func:`judge_arms` in every world of ``worlds`` (``size.seeds`` replicas each): ``{judge:
    records of every world}``, each record tagged with its ``world``, so the study layer pairs arms
    by ``(world, seed)``. ``perturbation``, ``perturb_at``: see :func:`pretrained`. A ``weak`` arm
    judges with each world's :func:`weak_pretrained` (``weak_steps`` pre-training steps, default
    :data:`WEAK_FRACTION` of the size's; same perturbation).

    >>> arms = world_arms(SimSize.tiny(epochs=1), ["all"], worlds=(0, 1))
    >>> sorted({(r["world"], r["seed"]) for r in arms["all"]})
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    out: dict[str, list[dict]] = {j: [] for j in judges}
    for w in worlds:
        sz = dataclasses.replace(size, world_seed=int(w))
        base = pretrained(sz, coupling=coupling, perturbation=perturbation,
                          perturb_at=perturb_at)
        weak = _judge_model(sz, judges, None, weak_steps, coupling=coupling, perturbation=perturbation,
                            perturb_at=perturb_at)
        for j in judges:
            out[j] += run_arm(*base, sz.config(judge=j, **cfg_overrides), label=j, tags={"world": int(w)},
                              judge_model=weak).records
    return out


def coupling_arms(
    size: SimSize,
    judges: dict[str, Sequence[str]],
    *,
    worlds: Sequence[int] = (0,),
    perturbation: float = 0.0,
    perturb_at: str = "pretrained",
    weak_steps: int | None = None,
    **cfg_overrides,
) -> dict[str, list[dict]]:
    """:func:`world_arms` for every coupling of ``judges`` ``{coupling: judge specs}``, keyed
    ``"<coupling>/<judge>"`` (each coupling is its own architecture, pre-trained with the same recipe;
    a ``weak`` arm's judge is that coupling's weaker checkpoint, ``weak_steps``: see :func:`world_arms`).

    >>> sorted(coupling_arms(SimSize.tiny(epochs=1), {"tied": ["all"], "bayes": ["all"]}))
    ['bayes/all', 'tied/all']
    """
    out: dict[str, list[dict]] = {}
    for c, js in judges.items():
        for j, recs in world_arms(size, js, worlds=worlds, coupling=c, perturbation=perturbation,
                                  perturb_at=perturb_at, weak_steps=weak_steps, **cfg_overrides).items():
            out[f"{c}/{j}"] = recs
    return out


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


def curriculum_arms(
    size: SimSize,
    replay_epochs: Sequence[int],
    *,
    judge: str = "self",
    candidates: int | None = None,
    adaptive: bool = False,
    model: tuple[SimWorld, SimModel] | None = None,
    judge_model: SimModel | None = None,
    weak_steps: int | None = None,
    **cfg_overrides,
) -> dict[str, Arm]:
    """No replay, then replay at each epoch of ``replay_epochs`` (one arm each; ``adaptive`` adds the
    adaptive trigger), from one pre-trained model. ``candidates`` overrides the size's (fewer
    candidates leave a larger discard pool). Keys ``off``, ``epochs:<e>``, ``adaptive``. With
    ``judge="weak"`` every arm (and its replay) judges with ``judge_model`` (see :func:`judge_arms`).

    >>> arms = curriculum_arms(SimSize.tiny(), [1], candidates=1)
    >>> sorted(arms), [r["epoch"] for r in arms["epochs:1"].records if r.get("replay")]
    (['epochs:1', 'off'], [1, 1])
    """
    world, m0 = model or pretrained(size)
    kw = dict(judge=judge, **cfg_overrides)
    if candidates is not None:
        kw["candidates"] = candidates
    specs = ["off"] + [f"epochs:{e}" for e in replay_epochs] + (["adaptive"] if adaptive else [])
    weak = _judge_model(size, [judge], judge_model, weak_steps)
    return {s: run_arm(world, m0, size.config(curriculum=s, **kw), label=s, judge_model=weak) for s in specs}


def eta_scaling(
    size: SimSize,
    lrs: Sequence[float],
    *,
    loss: str = "sft",
    judge: str = "self",
    coupling: str | None = None,
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
    world, m0 = model or pretrained(size, coupling=coupling)
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
        rows[-1][f"slope_{key}"] = slope([r["lr"] for r in rows], [r[f"resid_{key}"][0] for r in rows])
    return rows



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
    pre = metrics.accepts(arm.reference.und, thr)
    cur = metrics.accepts(after.und, thr)
    aligned = arm.world.aligned.cpu().expand_as(pre)
    for name, rows in (("trained", trained), ("held_out", ~trained)):
        out[name] = metrics.false_positive_correction_rate(pre[:, rows], cur[:, rows], aligned[:, rows])[0].tolist()
    return out


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


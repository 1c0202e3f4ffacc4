"""Toy-world experiments: CLO arms read against their controls, the one-step first-order check,
full against Janus-like sharing.

Every arm of a seed starts from the *same* pre-trained model (restored between arms) with the same
CLO seed, so the arms see the same evaluation samples and the same training candidates and differ
only in which candidates their judge accepts (``self``, the unfiltered control ``all``, the exact
judge ``oracle``, a ``corrupt:<p>`` judge). Records are the loop's own (:func:`dynamics.clo.run_clo`),
with every per-group metric also flattened to ``<metric>@<group>`` (``gen_acc@tag:counting``) so that the readers of
:mod:`dynamics.study` (:func:`~dynamics.study.change`, :func:`~dynamics.study.paired_difference`) read
them per category.

Example (the tiny preset: a few pre-training steps, one epoch; no gap check at this size)::

    >>> from dynamics.toy.study import ToySize, judge_study
    >>> size = ToySize.tiny()
    >>> arms = judge_study(size, ["all", "noisy:0.5"], check=False)
    >>> sorted(arms), sorted({r["epoch"] for r in arms["all"]})
    (['all', 'noisy:0.5'], [0, 1])
    >>> "gen_acc@tag:counting" in arms["all"][0]
    True
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from dynamics.clo import CLOConfig, batch_loss, build_data, replica_seeds, train_batch
from dynamics.judges import parse_judge
from dynamics.protocol import check_coupling
from dynamics.study import Arm, change, flatten_groups, judge_configs, paired_difference, perturb, slope
from dynamics.study import run_arms as _run_arms
from dynamics.study.arms import check_perturb_at
from dynamics.study.first_order import one_step
from dynamics.study.first_order import rows as one_step_rows
from dynamics.study.first_order import summary as one_step_summary
from dynamics.toy.model import ToyConfig, ToyModel
from dynamics.toy.recipe import TOY_CLO  # the toy's CLO recipe, re-exported here
from dynamics.toy.world import CATEGORIES, WorldConfig

__all__ = [
    "TOY_CLO",
    "ToySize",
    "category_table",
    "default_cache_dir",
    "flatten_groups",
    "judge_quality",
    "judge_study",
    "one_step_check",
    "one_step_summary",
    "pretrained_model",
    "run_arms",
    "slope",
    "unit_arms",
    "weak_model",
    "weak_steps",
]


log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """The pre-trained checkpoint cache: ``$DYNAMICS_CACHE``, else ``toy`` in the user's cache directory
    (``platformdirs`` where installed, else ``$XDG_CACHE_HOME/dynamics`` or ``~/.cache/dynamics``), so a
    run finds its checkpoints from any working directory."""
    if os.environ.get("DYNAMICS_CACHE"):
        return os.environ["DYNAMICS_CACHE"]
    try:
        import platformdirs

        base = platformdirs.user_cache_dir("dynamics")
    except ImportError:  # the XDG rule platformdirs follows on Linux
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dynamics")
    return os.path.join(base, "toy")


@dataclass(frozen=True)
class ToySize:
    """The size of a toy experiment: seeds, the model preset and its pre-training, the CLO recipe.

    ``overrides`` are :class:`~dynamics.toy.model.ToyConfig` fields (e.g. ``{"gen_noise": 0.2}``);
    ``cache_dir`` is the pre-trained checkpoint cache (default :func:`default_cache_dir`; None: pre-train
    every time). ``worlds``: the
    worlds' split seeds (which prompts pre-training holds out); a study's units are every
    ``(world, seed)`` pair, one pre-trained model each, or the ``(world, seed)`` pairs of
    ``unit_list`` in its order.

    >>> ToySize(seeds=(0, 1), worlds=(0, 1)).units()
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> ToySize(unit_list=((1, 2), (0, 0))).units()
    [(1, 2), (0, 0)]
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    worlds: tuple[int, ...] = (0,)
    unit_list: tuple[tuple[int, int], ...] | None = None
    preset: str = "default"
    pretrain_steps: int | None = None
    overrides: dict = field(default_factory=dict)
    clo: CLOConfig = field(default_factory=lambda: dataclasses.replace(TOY_CLO, progress=False))
    cache_dir: str | None = field(default_factory=default_cache_dir)
    train_on: str = "all"
    scope: str = "all"  # the trainable parts of CLO (dynamics.toy.model.SCOPES); pre-training trains everything

    @classmethod
    def tiny(cls, **kw) -> ToySize:
        """For doctests and smoke tests: the tiny preset, 2 seeds, one short epoch, no cache."""
        base = {"seeds": (0, 1), "preset": "tiny", "pretrain_steps": 5, "cache_dir": None,
                "clo": dataclasses.replace(TOY_CLO, epochs=1, candidates=2, eval_candidates=2, curriculum="off",
                                           progress=False)}
        base.update(kw)
        return cls(**base)

    def config(self, coupling: str = "tied", world: int = 0) -> ToyConfig:
        """The model config of this size in world ``world`` (its split seed), with the network of
        ``coupling`` (``bayes`` reads a ``tied`` network: :func:`network_coupling`)."""
        over = dict(self.overrides)
        if world:
            over["world"] = dataclasses.replace(over.get("world", WorldConfig()), split_seed=int(world))
        return ToyConfig.preset(self.preset, coupling=network_coupling(coupling), **over)

    def units(self) -> list[tuple[int, int]]:
        if self.unit_list is not None:
            return [(int(w), int(s)) for w, s in self.unit_list]
        return [(int(w), int(s)) for w in self.worlds for s in self.seeds]


def network_coupling(coupling: str) -> str:
    """The network a coupling of :data:`dynamics.sim.COUPLINGS` runs on: itself, or ``tied`` for
    ``bayes`` (the generator of a tied network, its understanding read through the Bayes link).

    >>> [network_coupling(c) for c in ("decoupled", "trunk", "tied", "bayes")]
    ['decoupled', 'trunk', 'tied', 'tied']
    """
    check_coupling(coupling)
    return "tied" if coupling == "bayes" else coupling


def pretrained_model(size: ToySize, seed: int, *, coupling: str = "tied", check: bool = True, progress: bool = False,
                     threshold: float = 0.5, world: int = 0, perturbation: float = 0.0):
    """The pre-trained toy model of ``seed`` in world ``world`` (cached), in eval mode, with ``coupling``
    (``decoupled``, ``trunk``, ``tied``: the trained yes/no answer of that network; ``bayes``: the
    tied network's generator read through the Bayes link, a calibrated
    :class:`~dynamics.toy.bayes.BayesLinked`); with ``check`` stop unless it has the internal gap
    (:func:`dynamics.toy.pretrain.check_gap`, own verdicts at the CLO ``threshold``; the report is kept
    as ``model.gap``). CLO trains the parts ``size.scope`` of its generation parameters. ``perturbation``: pre-trained from initial weights moved by that relative amount
    (:func:`dynamics.toy.pretrain.pretrain`)."""
    from dynamics.toy.pretrain import check_gap, pretrain

    model = pretrain(size.config(coupling, world), steps=size.pretrain_steps, seed=seed, cache_dir=size.cache_dir,
                     progress=progress, perturbation=perturbation)
    model.eval().set_scope(size.scope)
    if coupling == "bayes":
        from dynamics.toy.bayes import BayesLinked

        model = BayesLinked(model, seed=seed)
        model.calibrate(seed=seed)
    if check:
        model.gap = check_gap(model, seed=seed, threshold=threshold)
    return model


#: The ``weak`` data judge's share of the run's pre-training steps (:func:`weak_model`). Measured on the
#: default preset (1,200 steps; :func:`judge_quality`: balanced accuracy ``1 - (FP + FN) / 2`` of the
#: verdicts on the full model's own 1,008 candidates, 8 per prompt, against the exact detector; in
#: brackets the balanced probes of :func:`dynamics.toy.pretrain.gap_report`). Seed 0: 300 steps 0.58
#: (0.52, chance), 600 steps 0.74 (0.77), 750 steps 0.72 (0.74), 900 steps 0.82 (0.86), the full model
#: 0.82 (0.85). Seed 1: 600 steps 0.59 (0.51), 750 steps 0.63 (0.56), the full model 0.86 (0.85).
#: Understanding learns through a plateau whose end varies with the seed: a quarter leaves it at chance,
#: three quarters match the full model (seed 0), half is at chance on the probes for seed 1; 5/8 (750 of
#: 1,200) is above chance and clearly weaker on both seeds (FP 0.36 and 0.50 against 0.33 and 0.24, FN
#: 0.21 and 0.24 against 0.03 and 0.05).
WEAK_FRACTION = 0.625


def weak_steps(size: ToySize, steps: int | None = None, *, coupling: str = "tied", world: int = 0) -> int:
    """The pre-training steps of the ``weak`` judge of ``size``: ``steps``, or by default
    :data:`WEAK_FRACTION` of the run's (``size.pretrain_steps``, else the preset's), at least 1. A
    ValueError names a count outside ``1..`` the run's steps.

    >>> weak_steps(ToySize()), weak_steps(ToySize.tiny(), 2)
    (750, 2)
    """
    full = size.pretrain_steps if size.pretrain_steps is not None else size.config(coupling, world).steps
    from dynamics.judges import weak_judge_steps

    return weak_judge_steps(full, WEAK_FRACTION, steps)


def weak_model(size: ToySize, seed: int, *, steps: int | None = None, coupling: str = "tied", world: int = 0,
               perturbation: float = 0.0, progress: bool = False):
    """The judge model of the ``weak`` data judge: the model of :func:`pretrained_model` (same config,
    seed, world, coupling, perturbation; cached alike) pre-trained for :func:`weak_steps` steps instead
    of the run's (default :data:`WEAK_FRACTION`), with no gap check. Pass it to
    :func:`dynamics.clo.run_clo` as ``judge_model``; the quality of its verdicts on the model's
    candidates: :func:`judge_quality`.

    >>> weak = weak_model(ToySize.tiny(), 0)
    >>> weak.pretrain_info["steps"], weak.replicas
    (3, 1)
    """
    n = weak_steps(size, steps, coupling=coupling, world=world)
    return pretrained_model(dataclasses.replace(size, pretrain_steps=n), seed, coupling=coupling, check=False,
                            progress=progress, world=world, perturbation=perturbation)


@torch.no_grad()
def judge_quality(model, judge_model, *, n: int = 8, seed: int = 0, threshold: float = 0.5) -> dict:
    """How good ``judge_model``'s verdicts (``P(yes) >= threshold``) are on ``model``'s own samples
    (``n`` per prompt, ``seed``: the candidates Algorithm 1 would judge) against the exact detector:
    ``fp_rate``, ``fn_rate``, ``balanced_acc`` (``1 - (FP + FN) / 2``), ``precision`` and ``recall`` of
    the accepted set, ``n``. ``judge_model=model``: the model's own understanding, the reference a
    ``weak`` judge is measured against.

    >>> m = pretrained_model(ToySize.tiny(), 0, check=False)
    >>> sorted(judge_quality(m, weak_model(ToySize.tiny(), 0), n=1))
    ['balanced_acc', 'fn_rate', 'fp_rate', 'n', 'precision', 'recall']
    """
    from dynamics import metrics

    ids = torch.arange(len(model.prompts))
    x = model.sample(ids, n, seed=seed)
    yes = metrics.accepts(judge_model.judge(ids, x), threshold)
    ext = model.world.external_judge()(ids, x).bool()
    fp, fn = metrics.false_positive_rate(yes, ext).item(), metrics.false_negative_rate(yes, ext).item()
    return {"fp_rate": fp, "fn_rate": fn, "balanced_acc": 1.0 - 0.5 * (fp + fn),
            "precision": metrics.rate(ext, yes)[0].item(), "recall": metrics.rate(yes, ext)[0].item(),
            "n": yes.numel()}


def _weak_for(size: ToySize, judges: Sequence[str], seed: int, steps: int | None, **kw):
    """The judge slot of a unit's arms: :func:`weak_model` where a judge is ``weak``, else None."""
    return weak_model(size, seed, steps=steps, **kw) if any(parse_judge(j).needs_judge_model for j in judges) else None


def _train_ids(model: ToyModel, train_on: str):
    if train_on == "all":
        return None
    train, heldout = model.world.split_ids()
    return {"train": train, "heldout": heldout}[train_on]


def run_arms(model: ToyModel, cfg: CLOConfig, judges: Sequence[str], *, train_ids=None,
             labels: Sequence[str] | None = None, tags: dict | None = None,
             judge_model=None) -> dict[str, list[dict]]:
    """One CLO run per judge from the current weights of ``model`` (restored after each:
    :func:`dynamics.study.run_arms`), judged exactly; ``{label: records}`` with the per-category
    metrics flattened to ``<metric>@<group>``. ``judge_model``: the judge slot of a ``weak`` arm
    (:func:`weak_model`); the exact detector stays the audit's and the evaluation's ground truth."""
    configs = judge_configs(cfg, judges)
    if labels is not None:
        configs = {lab: configs[j] for lab, j in zip(labels, judges)}
    arms = _run_arms(model, configs, external=model.world.external_judge(), train_ids=train_ids, tags=tags,
                     judge_model=judge_model)
    return {label: arm.records for label, arm in arms.items()}


def unit_arms(size: ToySize, configs_for: Callable[[CLOConfig], dict[str, CLOConfig]], *, coupling: str = "tied",
              check: bool = True, progress: bool = False, perturbation: float = 0.0, perturb_at: str = "pretrained",
              skip_no_gap: bool = False, excluded: list | None = None, weak_steps: int | None = None,
              on_epoch_for: Callable | None = None, after: Callable | None = None
              ) -> Iterator[tuple[tuple[int, int], dict[str, Arm]]]:
    """The arms of every unit ``(world, seed)`` of ``size``, one pre-trained model per unit shared by its
    arms: ``configs_for(cfg)`` ``{label: config}`` (``cfg``: the size's recipe with the unit's seed), run
    from that model (:func:`dynamics.study.run_arms`, judged exactly, records tagged with ``world``,
    ``on_epoch_for(label, config)``: per-arm epoch callbacks); ``after(model, arms)`` may add to the
    records; yields ``((world, seed), {label: Arm})``.

    ``perturbation > 0`` is the robustness run of a findings test: every weight moved by that relative
    amount, at ``perturb_at="pretrained"`` (the pre-trained weights, before CLO:
    :func:`dynamics.study.perturb`) or ``"init"`` (the initial weights, before pre-training, which
    1,200 steps carry to a different pre-trained model: what another CPU's rounding does). A unit
    whose pre-trained model fails the gap check (:func:`dynamics.toy.pretrain.check_gap`, the
    precondition the main job enforces too; ``check``) stops the study, or with ``skip_no_gap`` is left
    out with a logged reason (appended to ``excluded`` as ``{"world", "seed", "reason"}`` when given):
    the inclusion criterion of a study, applied before any arm runs. A ``weak`` arm judges with the
    unit's :func:`weak_model` (``weak_steps`` pre-training steps, default :data:`WEAK_FRACTION` of the
    run's; perturbed alike)."""
    check_perturb_at(perturb_at)
    from dynamics.toy.pretrain import GapError

    torch.set_num_threads(1)  # measured fastest for a model this small; more threads only add overhead
    for w, s in size.units():
        try:
            model = pretrained_model(size, s, coupling=coupling, check=check,
                                     progress=progress, world=w, threshold=size.clo.threshold,
                                     perturbation=perturbation if perturb_at == "init" else 0.0)
        except GapError as e:
            if not skip_no_gap:
                raise
            log.warning("unit (world %d, seed %d) left out of the study: %s", w, s, e)
            if excluded is not None:
                excluded.append({"world": w, "seed": s, "reason": str(e)})
            continue
        configs = configs_for(dataclasses.replace(size.clo, seed=s))
        weak = _weak_for(size, [c.judge for c in configs.values()], s, weak_steps, coupling=coupling, world=w,
                         perturbation=perturbation if perturb_at == "init" else 0.0)
        if perturbation and perturb_at == "pretrained":
            perturb(model, rel=perturbation, seed=s)
            if weak is not None:
                perturb(weak, rel=perturbation, seed=s)
        arms = _run_arms(model, configs, external=model.world.external_judge(), judge_model=weak,
                         train_ids=_train_ids(model, size.train_on), on_epoch_for=on_epoch_for, tags={"world": w})
        if after is not None:
            after(model, arms)
        yield (w, s), arms


def judge_study(size: ToySize, judges: Sequence[str], *, coupling: str = "tied", check: bool = True,
                clo_overrides: dict | None = None, progress: bool = False, perturbation: float = 0.0,
                perturb_at: str = "pretrained", skip_no_gap: bool = False, excluded: list | None = None,
                weak_steps: int | None = None) -> dict[str, list[dict]]:
    """Every judge's CLO arm on every unit ``(world, seed)`` of ``size`` (:func:`unit_arms`: one
    pre-trained model per unit, shared by its arms; the robustness options, the gap check and the
    ``weak`` judge's model are described there; ``clo_overrides`` are :class:`~dynamics.clo.CLOConfig`
    fields); ``{judge: records of all units}``, each record tagged with its ``world``."""
    arms: dict[str, list[dict]] = {j: [] for j in judges}
    for _unit, got in unit_arms(size, lambda cfg: judge_configs(dataclasses.replace(cfg, **(clo_overrides or {})),
                                                                  judges),
                                coupling=coupling, check=check, progress=progress, perturbation=perturbation,
                                perturb_at=perturb_at, skip_no_gap=skip_no_gap, excluded=excluded,
                                weak_steps=weak_steps):
        for j in judges:
            arms[j].extend(got[j].records)
    return arms


# ----------------------------------------------------------------------------------- one step


def one_step_check(model: ToyModel, *, lrs: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2), batch_prompts: int = 16,
                   n_probes: int = 24, candidates: int = 8, seed: int = 0, judge: str = "self",
                   threshold: float = 0.5) -> list[dict]:
    """Measured against predicted one-step change of probe log-probabilities (finding 3).

    In float64 on a copy of ``model``: Algorithm 1 builds self-judged SFT data (``candidates`` per
    prompt), the first CLO minibatch of ``batch_prompts`` prompts gives the loss ``L``
    (:func:`dynamics.clo.batch_loss`), and one plain SGD step ``theta - lr * grad L`` over the
    generation parameters is taken. Probes are the model's own samples on other prompts:
    ``n_probes`` generation probes ``log pi(x | c)`` and ``n_probes`` understanding probes
    ``log P(yes | x, c)``, half of them false positives of the pre-trained understanding where there
    are enough. The prediction is ``lr * <grad log p(o), -grad L>`` from
    :func:`dynamics.kernels.first_order_probe`. Returns one row per (lr, branch, probe) with
    ``measured``, ``predicted`` and the probe's ``kind`` (``fp``, ``tp``, ``tn``, ``fn`` against the
    exact detector). ``threshold``: the judge's acceptance threshold.

    transformers' eager attention takes its softmax in float32 even in a float64 model, so the
    relative error has a floor of about 0.2 % at the smallest steps instead of falling as lr.
    """
    m = copy.deepcopy(model).double().eval()
    cfg = dataclasses.replace(TOY_CLO, candidates=candidates, judge=judge, batch_size=batch_prompts, optimizer="sgd",
                              seed=seed, progress=False, audit=False, threshold=threshold)
    n = len(m.prompts)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    data = build_data(m, cfg, order, external=m.world.external_judge(), seeds=replica_seeds(cfg, 1, 2))
    has = data.accepted[0].any(-1).nonzero().flatten()
    if len(has) == 0:
        raise ValueError(f"judge {judge!r} accepted no candidate: no SFT batch for the one-step check")
    cols = has[:batch_prompts]
    batch = train_batch(data, cfg, cols, torch.ones(1, len(cols), dtype=torch.bool), torch.device("cpu"))
    trained = set(data.prompt_ids[cols].tolist())

    # Probes: the model's own samples on prompts outside the batch, judged by both judges.
    others = torch.tensor([i for i in order.tolist() if i not in trained])
    x = m.sample(others, 4, seed=seed + 1)
    own = (m.judge(others, x)[0] >= threshold)
    ext = m.world.external_judge()(others, x)[0].bool()
    kind = torch.where(own, torch.where(ext, 1, 0), torch.where(ext, 3, 2))  # 0 fp, 1 tp, 2 tn, 3 fn
    names = ("fp", "tp", "tn", "fn")
    flat = [(int(others[i]), x[0, i, k], names[int(kind[i, k])]) for i in range(len(others)) for k in range(x.shape[2])]
    perm = torch.randperm(len(flat), generator=g).tolist()
    fps = [flat[i] for i in perm if flat[i][2] == "fp"][: n_probes // 2]
    rest = [flat[i] for i in perm if flat[i][2] != "fp"][: n_probes - len(fps)]
    probes = fps + rest

    params = m.generation_parameters()

    def logp():  # both branches in one vector: generation probes first, then understanding
        return torch.stack([m.probe_logprob(p, img, what) for what in ("gen", "yes") for p, img, _ in probes])

    res = one_step(logp, lambda: -batch_loss(m, cfg, batch), params, lrs=lrs)
    n = len(probes)
    meta = [{"prompt_id": pid, "kind": k} for pid, _img, k in probes]
    out = []
    for b, branch in enumerate(("generation", "understanding")):
        part = dataclasses.replace(res, predicted=res.predicted[b * n:(b + 1) * n],
                                   measured={lr: v[b * n:(b + 1) * n] for lr, v in res.measured.items()})
        out += one_step_rows(part, branch=branch, meta=meta)
    return out


def category_table(arms: dict[str, list[dict]], keys: Sequence[str] = ("gen_acc", "und_fp_rate", "non_unification",
                                                                      "win_rate"),
                   control: str | None = "all", categories: Sequence[str] = ("",) + tuple(CATEGORIES)) -> list[dict]:
    """Rows ``{judge, category, metric, before, after, change, vs_control}`` (each ``(mean, s.e., seeds)``
    across seeds; ``vs_control`` is the paired change minus the control arm's change). ``category ""``
    is the whole prompt set; ``win_rate`` has no "before" (it compares to the pre-trained model), its
    ``after`` is read at the last epoch with its denominator ``win_rate_n``."""
    rows = []
    for judge, recs in arms.items():
        for cat in categories:
            for key in keys:
                k = f"{key}@tag:{cat}" if cat else key
                if not any(r.get(k) is not None for r in recs):
                    continue
                b, a, d = change(recs, k)
                row = {"judge": judge, "category": cat or "all", "metric": key, "before": b, "after": a, "change": d}
                if key == "win_rate":
                    n_key = f"win_rate_n@tag:{cat}" if cat else "win_rate_n"
                    row["n"] = change(recs, n_key)[1]
                if control and control in arms and judge != control:
                    row["vs_control"] = paired_difference(recs, arms[control], k)
                rows.append(row)
    return rows

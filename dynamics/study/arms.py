"""Arms of a study: CLO runs from one pre-trained model, restored between runs.

Every arm of a study (a judge, a loss, a curriculum) starts from the *same* pre-trained weights with
the same CLO seed, so the arms see the same evaluation samples and the same training candidates and
differ only in what their settings change. The code is typed against the model protocol
(:class:`dynamics.protocol.UnifiedModel`) only: the simulator (``R`` replicas at once), the toy
transformer and Janus-Pro run through it alike.

:func:`perturb` is the rounding-level perturbation of a findings test's robustness run: the
pre-trained weights moved by a relative ``1e-6``, about what another CPU's float rounding does to a
trajectory, so that a conclusion which flips with the last bits of a float shows on one machine.

    >>> from dynamics.clo import CLOConfig
    >>> from dynamics.testing import TableModel
    >>> model = TableModel.random(prompts=4, tokens=6, seed=0)
    >>> cfg = CLOConfig(candidates=4, epochs=1, lr=0.5, eval_candidates=4, progress=False)
    >>> arms = run_arms(model, judge_configs(cfg, ["self", "all"]), external=model.oracle)
    >>> sorted(arms), arms["self"].records[0]["epoch"], arms["all"].config.judge
    (['all', 'self'], 0, 'all')
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from dynamics.clo import CLOConfig, CLOData, StepHook, run_clo
from dynamics.protocol import ExternalJudge, UnifiedModel
from dynamics.study.read import flatten_groups

__all__ = ["PERTURB_AT", "Arm", "check_perturb_at", "judge_configs", "perturb", "run_arm", "run_arms", "snapshot"]


@dataclass
class Arm:
    """One CLO run of a study: its label and config, its records (one per replica and epoch, with
    every per-group metric also flattened to ``<metric>@<group>`` and the study's ``tags``), the
    theory-tracking records, the final data state, and (when kept) the trained model."""

    label: str
    config: CLOConfig
    records: list[dict]
    theory: list[dict] = field(default_factory=list)
    data: CLOData | None = None
    model: object | None = field(default=None, repr=False)


def snapshot(model: UnifiedModel) -> dict:
    """A deep copy of ``model.state_dict()`` (restored after every arm)."""
    return {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in model.state_dict().items()}


def perturb(model: UnifiedModel, *, rel: float = 1e-6, seed: int = 0) -> UnifiedModel:
    """Move every floating-point weight of ``model`` in place by ``rel`` of its own size,
    ``w <- w * (1 + rel * z)``, ``z ~ N(0, 1)`` drawn from ``seed``; returns the model.

    >>> m = torch.nn.Linear(3, 2)
    >>> w = m.weight.detach().clone()
    >>> d = (perturb(m, rel=1e-6, seed=0).weight.detach() - w) / w
    >>> bool(0 < d.abs().max() < 1e-5)
    True
    """
    if not rel > 0:
        raise ValueError(f"perturb: rel={rel} must be positive")
    g = torch.Generator().manual_seed(int(seed))
    state = model.state_dict()
    with torch.no_grad():
        for k in sorted(state):
            v = state[k]
            if torch.is_tensor(v) and v.is_floating_point():
                z = torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype)
                v.mul_(1 + rel * z)
    return model


PERTURB_AT = ("pretrained", "init")


def check_perturb_at(perturb_at: str) -> None:
    """Where a robustness run perturbs: the pre-trained weights (before CLO) or the initial weights
    (before pre-training, which carries the perturbation to a different pre-trained model).

    >>> check_perturb_at("later")
    Traceback (most recent call last):
    ...
    ValueError: perturb_at='later': expected 'pretrained' or 'init'
    """
    if perturb_at not in PERTURB_AT:
        raise ValueError(f"perturb_at={perturb_at!r}: expected 'pretrained' or 'init'")


def run_arm(model: UnifiedModel, cfg: CLOConfig, *, external: ExternalJudge | None, label: str | None = None,
            train_ids=None, hooks: Iterable[StepHook] = (), on_epoch: Callable[[int, list[dict]], None] | None = None,
            tags: Mapping | None = None, keep_model: bool = False, shared_start: dict | None = None,
            judge_model: UnifiedModel | None = None) -> Arm:
    """One CLO run from the current weights of ``model``, which are restored afterwards (also on
    error). ``hooks`` and ``on_epoch`` go to :func:`dynamics.clo.run_clo`; ``tags`` are added to every
    record (e.g. ``{"world": 1}``); ``keep_model`` keeps a copy of the trained model in the arm;
    ``shared_start``: see :func:`dynamics.clo.run_clo` (the draws before training, shared by the
    arms of one pre-trained model); ``judge_model``: the judge slot of the ``weak`` judge (see
    :func:`dynamics.clo.run_clo`; other judges ignore it)."""
    state = snapshot(model)
    try:
        res = run_clo(model, cfg, external=external, train_ids=train_ids, hooks=hooks, on_epoch=on_epoch,
                      shared_start=shared_start, judge_model=judge_model)
        trained = copy.deepcopy(model) if keep_model else None
    finally:  # run_clo leaves the model in eval mode, also on error
        model.load_state_dict(state)
    records = [{**r, **(tags or {})} for r in flatten_groups(res.metrics)]
    theory = [{**r, **(tags or {})} for r in res.theory]
    return Arm(label or cfg.judge, cfg, records, theory, res.data, trained)


def run_arms(model: UnifiedModel, configs: Mapping[str, CLOConfig], *, external: ExternalJudge | None,
             train_ids=None, hooks_for: Callable[[str, CLOConfig], list[StepHook]] | None = None,
             on_epoch_for: Callable[[str, CLOConfig], Callable] | None = None, tags: Mapping | None = None,
             keep_models: bool = False, judge_model: UnifiedModel | None = None) -> dict[str, Arm]:
    """:func:`run_arm` for every ``{label: config}``, each from the same weights of ``model``.
    ``hooks_for(label, cfg)`` / ``on_epoch_for(label, cfg)`` build per-arm hooks and epoch callbacks.
    What the arms draw before training (evaluation set, candidates, epoch-0 evaluation) is drawn once
    and shared: it depends only on the weights, the seed and the sampling settings. ``judge_model``:
    the judge slot of the arms with the ``weak`` judge (the others ignore it; its verdicts are not
    shared)."""
    out = {}
    shared: dict = {}
    for label, cfg in configs.items():
        out[label] = run_arm(model, cfg, external=external, label=label, train_ids=train_ids,
                             hooks=hooks_for(label, cfg) if hooks_for else (),
                             on_epoch=on_epoch_for(label, cfg) if on_epoch_for else None, tags=tags,
                             keep_model=keep_models, shared_start=shared, judge_model=judge_model)
    return out


def judge_configs(cfg: CLOConfig, judges: Iterable[str], **overrides) -> dict[str, CLOConfig]:
    """``{judge: cfg with that judge and overrides}``.

    >>> sorted(judge_configs(CLOConfig(), ["self", "all"]))
    ['all', 'self']
    """
    return {j: dataclasses.replace(cfg, judge=j, **overrides) for j in judges}


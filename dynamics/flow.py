"""Learning dynamics over many steps: the linearised (eNTK-flow) prediction of a training run.

The theory (:mod:`dynamics.theory`, :mod:`dynamics.kernels`) predicts one plain-SGD step at a time:
``Delta log pi(o) = -eta A(o) K(o, u) G(u) + O(eta^2)``. This module predicts the *cumulative* change
of every probe over many steps of a real optimiser, plain SGD or Adam, and measures it:

- **measured**: the real optimiser (``torch.optim.SGD`` / ``torch.optim.Adam``) takes the run's steps,
  minibatch after minibatch in the run's order, and every probe is read after every step;
- **predicted**: every ``k`` steps the model is re-linearised at the *true* (measured) parameters
  ``theta_0``: ``f_lin(theta) = f(theta_0) + J(theta_0)(theta - theta_0)`` for the loss's outputs and
  for the probes. The linearised model is trained for ``k`` steps with the same optimiser (the loss is
  kept exact on the linearised outputs, so ``G = dL/dz`` is re-evaluated every step; for Adam the
  moments start from the true optimiser state at the segment's start and are updated with the
  linearised gradients, so each step is ``-eta P_t m_hat_t`` with ``P_t`` Adam's diagonal
  preconditioner), and the probes' change over the segment is predicted as ``J_o(theta_0) delta``.
  The segments' predictions add up to the predicted cumulative change.

``k = 1`` with SGD is the sum of the one-step first-order predictions along the measured trajectory
(:func:`dynamics.kernels.first_order_probe`, tested); ``k`` = the run's length is one linearisation
for the whole run. Errors use the one-step check's definition
(:func:`dynamics.study.first_order.relative_error`) and the sign agreement over probes.

Everything is functional: parameters are a dict ``name -> tensor`` (only the trainable ones, e.g. the
generation parameters of a generation-only step), a minibatch is any object the objective reads, and a
probe set is a function ``params -> (n,)`` (any number of named sets, e.g. generation and
understanding probes). Example (a linear softmax model: the linearisation is exact at every ``k``)::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.randn(3, 4, generator=g, dtype=torch.float64)
    >>> batches = [(torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(3, (5,), generator=g))
    ...            for _ in range(6)]
    >>> objective = Objective(outputs=lambda p, b: b[0] @ p["W"].T,
    ...                       loss=lambda z, b: torch.nn.functional.cross_entropy(z, b[1]))
    >>> probes = {"logits": lambda p: p["W"] @ torch.ones(4, dtype=torch.float64)}
    >>> res = flow({"W": W}, objective, batches, probes, Optimiser("adam", lr=0.1), ks=(1, 3, 6))
    >>> all(res.errors[k]["logits"]["relative_error"] < 1e-12 for k in (1, 3, 6))
    True
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.func import jvp, vjp

__all__ = [
    "OPTIMISERS",
    "AdamState",
    "FlowResult",
    "Measured",
    "Objective",
    "Optimiser",
    "Predicted",
    "clo_objective",
    "errors",
    "flow",
    "logit_objective",
    "measure",
    "predict",
    "schedule",
]

Params = dict[str, torch.Tensor]
ProbeFn = Callable[[Params], torch.Tensor]

OPTIMISERS = ("sgd", "adam")


# --------------------------------------------------------------------------------------------------
# the optimiser


@dataclass(frozen=True)
class Optimiser:
    """An optimiser of the run: ``"sgd"`` (plain, no momentum) or ``"adam"`` (``betas``, ``eps``;
    torch's defaults). No weight decay: the run's must be zero (:meth:`from_config` checks).

    >>> Optimiser("adam", lr=1e-4).betas
    (0.9, 0.999)
    >>> Optimiser("rmsprop", lr=0.1)
    Traceback (most recent call last):
    ...
    ValueError: optimiser 'rmsprop' is not one of ('sgd', 'adam')
    """

    name: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMISERS:
            raise ValueError(f"optimiser {self.name!r} is not one of {OPTIMISERS}")
        if not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optimiser lr={self.lr!r}: must be a finite number > 0")
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"optimiser betas={self.betas!r}: each must lie in [0, 1)")
        if not self.eps >= 0:
            raise ValueError(f"optimiser eps={self.eps!r}: must be >= 0")

    @classmethod
    def from_config(cls, cfg) -> Optimiser:
        """The optimiser of a :class:`dynamics.clo.CLOConfig` (``torch.optim.SGD`` / ``Adam`` with
        torch's defaults, as the loop builds it); refuses weight decay and gradient clipping, which the
        prediction does not model.

        >>> from dynamics.clo import CLOConfig
        >>> Optimiser.from_config(CLOConfig(optimizer="adam", lr=1e-4))
        Optimiser(name='adam', lr=0.0001, betas=(0.9, 0.999), eps=1e-08)
        """
        if cfg.weight_decay:
            raise ValueError(f"weight_decay={cfg.weight_decay}: the multi-step prediction models no weight decay")
        if cfg.grad_clip:
            raise ValueError(f"grad_clip={cfg.grad_clip}: the multi-step prediction models no gradient clipping")
        return cls(cfg.optimizer, float(cfg.lr))

    def torch_optimizer(self, tensors: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        """The real optimiser over ``tensors`` (as :mod:`dynamics.clo` builds it)."""
        if self.name == "sgd":
            return torch.optim.SGD(tensors, lr=self.lr)
        return torch.optim.Adam(tensors, lr=self.lr, betas=self.betas, eps=self.eps)


@dataclass
class AdamState:
    """Adam's state: the number of steps taken and the two moment estimates, per parameter name."""

    step: int
    exp_avg: Params
    exp_avg_sq: Params

    @classmethod
    def zeros(cls, params: Mapping[str, torch.Tensor]) -> AdamState:
        """The state of a fresh optimiser (no step taken)."""
        return cls(0, {n: torch.zeros_like(v) for n, v in params.items()},
                   {n: torch.zeros_like(v) for n, v in params.items()})

    def clone(self) -> AdamState:
        return AdamState(self.step, {n: v.detach().clone() for n, v in self.exp_avg.items()},
                         {n: v.detach().clone() for n, v in self.exp_avg_sq.items()})


def _adam_step(delta: Params, grads: Params, state: AdamState, opt: Optimiser) -> None:
    """One Adam update of ``delta`` in place, written as ``torch.optim.Adam`` (single-tensor path):
    ``delta -= eta P_t m_hat_t`` with the diagonal preconditioner ``P_t = 1 / (sqrt(v_hat_t) + eps)``."""
    b1, b2 = opt.betas
    state.step += 1
    bc1, bc2 = 1.0 - b1 ** state.step, 1.0 - b2 ** state.step
    for n, g in grads.items():
        m, v = state.exp_avg[n], state.exp_avg_sq[n]
        m.lerp_(g, 1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (v.sqrt() / math.sqrt(bc2)).add_(opt.eps)
        delta[n] = delta[n].addcdiv(m, denom, value=-opt.lr / bc1)


def _read_torch_adam(opt: torch.optim.Optimizer, leaves: Params) -> AdamState:
    states = [opt.state[p] for p in leaves.values()]
    step = int(states[0]["step"]) if states and "step" in states[0] else 0
    return AdamState(step, {n: s["exp_avg"].detach().clone() for n, s in zip(leaves, states)},
                     {n: s["exp_avg_sq"].detach().clone() for n, s in zip(leaves, states)})


def _write_torch_adam(opt: torch.optim.Optimizer, leaves: Params, state: AdamState) -> None:
    missing = sorted(set(leaves) - set(state.exp_avg)) + sorted(set(leaves) - set(state.exp_avg_sq))
    if missing or state.step < 0:
        raise ValueError(f"Adam state (step {state.step}) lacks the moments of {sorted(set(missing))}")
    for n, p in leaves.items():
        opt.state[p] = {"step": torch.tensor(float(state.step)), "exp_avg": state.exp_avg[n].detach().clone(),
                        "exp_avg_sq": state.exp_avg_sq[n].detach().clone()}


# --------------------------------------------------------------------------------------------------
# the objective


@dataclass(frozen=True)
class Objective:
    """A minibatch's loss split where the model is linearised: ``outputs(params, batch)`` the model's
    outputs the loss reads (a tensor, e.g. logits), ``loss(outputs, batch)`` the scalar loss of them
    (kept exact on the linearised outputs). ``objective(params, batch)`` is the loss.

    Linearising logits gives the eNTK flow of the theory (``G = dL/dz`` re-evaluated every step);
    linearising a per-sample ``log pi`` (what :class:`dynamics.protocol.UnifiedModel` exposes) makes an
    SFT loss linear in the outputs, so within a segment each minibatch's gradient is the one at
    ``theta_0``."""

    outputs: Callable[[Params, Any], torch.Tensor]
    loss: Callable[[torch.Tensor, Any], torch.Tensor]

    def __call__(self, params: Params, batch: Any) -> torch.Tensor:
        return self.loss(self.outputs(params, batch), batch)


class _LogprobView:
    """Stands in for a model inside :func:`dynamics.clo.batch_loss`: its ``image_logprob`` reads the
    given outputs, so the loop's own loss is the loss of (linearised) outputs."""

    def __init__(self, outputs: torch.Tensor, to_logprob: Callable):
        self.outputs, self.to_logprob = outputs, to_logprob

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.to_logprob(self.outputs, images)


def clo_objective(cfg, logprob_fn: Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]) -> Objective:
    """The CLO loop's loss (:func:`dynamics.clo.batch_loss`) of a :class:`dynamics.protocol.TrainBatch`,
    linearised at the protocol's outputs: ``logprob_fn(params, prompt_ids, images) -> (R, B, K)``, the
    teacher-forced ``log pi(x | y)`` of the batch's samples (for DPO, of the chosen and the rejected
    one, stacked). Works for any model that can be called functionally.

    >>> import torch
    >>> from dynamics.clo import CLOConfig
    >>> from dynamics.protocol import TrainBatch
    >>> lp = lambda p, ids, x: torch.log_softmax(p["z"], -1)[ids][None, :, None, :].expand(*x.shape[:3], -1
    ...      ).gather(-1, x).squeeze(-1)
    >>> b = TrainBatch("sft", torch.tensor([0, 1]), torch.ones(1, 2, 1, dtype=torch.float64),
    ...                images=torch.tensor([[[[0]], [[2]]]]))
    >>> obj = clo_objective(CLOConfig(), lp)
    >>> z = torch.zeros(2, 3, dtype=torch.float64)
    >>> round(float(obj({"z": z}, b)), 4) == round(float(torch.tensor(3.0).log()), 4)
    True
    """
    from dynamics.clo import batch_loss

    def outputs(params, batch):
        if batch.kind == "sft":
            return logprob_fn(params, batch.prompt_ids, batch.images)
        return torch.stack([logprob_fn(params, batch.prompt_ids, batch.chosen),
                            logprob_fn(params, batch.prompt_ids, batch.rejected)])

    def loss(out, batch):
        if batch.kind == "sft":
            view = _LogprobView(out, lambda o, images: o)
        else:
            view = _LogprobView(out, lambda o, images: o[0] if images is batch.chosen else o[1])
        return batch_loss(view, cfg, batch)

    return Objective(outputs, loss)


def logit_objective(cfg, logits_fn: Callable[[Params, torch.Tensor], torch.Tensor]) -> Objective:
    """The CLO loop's loss linearised at the logits of a single-token model (the simulator):
    ``logits_fn(params, prompt_ids) -> (R, B, V)``; ``log pi(x | y)`` is read from them by
    ``log_softmax`` inside :func:`dynamics.clo.batch_loss`, so ``G = pi - e_x`` moves with the
    linearised logits: the theory's eNTK flow."""
    from dynamics.clo import batch_loss

    def to_logprob(z, images):
        if images.shape[-1] != 1:
            raise ValueError(f"logit_objective is for single-token images, got M = {images.shape[-1]}")
        return torch.log_softmax(z, -1).gather(-1, images[..., 0])

    def outputs(params, batch):
        return logits_fn(params, batch.prompt_ids)

    def loss(z, batch):
        return batch_loss(_LogprobView(z, to_logprob), cfg, batch)

    return Objective(outputs, loss)


# --------------------------------------------------------------------------------------------------
# inputs


def _check_params(params: Mapping[str, torch.Tensor]) -> Params:
    if not isinstance(params, Mapping) or not params:
        raise ValueError(f"params must be a non-empty dict name -> tensor, got {type(params).__name__}")
    for n, v in params.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ValueError(f"params[{n!r}] must be a floating-point tensor")
    return {n: v.detach().clone() for n, v in params.items()}


def _check_batches(batches: Sequence) -> list:
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: give the minibatches of the run, in its order")
    return batches


def _check_probes(probes: Mapping[str, ProbeFn]) -> dict[str, ProbeFn]:
    if not isinstance(probes, Mapping) or not probes:
        raise ValueError(f"probes must be a non-empty dict name -> fn(params) -> (n,), got {probes!r}")
    for n, f in probes.items():
        if not callable(f):
            raise TypeError(f"probes[{n!r}] is not callable")
    return dict(probes)


def _probe_values(probes: dict[str, ProbeFn], params: Params) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {n: f(params).detach().reshape(-1).to(torch.float64).cpu() for n, f in probes.items()}


def schedule(k: int | str, steps: int, epoch_starts: Sequence[int] = ()) -> tuple[int, ...]:
    """The steps at which the model is re-linearised: every ``k`` steps (an int ``>= 1``), at every
    epoch's start (``"epoch"``, from ``epoch_starts``) or once (``"all"``).

    >>> schedule(2, 5), schedule("all", 5), schedule("epoch", 5, [0, 3])
    ((0, 2, 4), (0,), (0, 3))
    >>> schedule(0, 5)
    Traceback (most recent call last):
    ...
    ValueError: k must be an integer >= 1, 'epoch' or 'all', got 0
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if k == "all":
        return (0,)
    if k == "epoch":
        starts = sorted({int(s) for s in epoch_starts})
        if not starts or starts[0] != 0 or starts[-1] >= steps:
            raise ValueError(f"k='epoch' needs epoch_starts beginning at 0 and below {steps}, got {list(epoch_starts)}")
        return tuple(starts)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, 'epoch' or 'all', got {k!r}")
    return tuple(range(0, steps, int(k)))


# --------------------------------------------------------------------------------------------------
# measured


@dataclass
class Measured:
    """The real run: ``values[name]`` ``(T + 1, n)`` every probe before and after each step (float64);
    ``params[t]`` and ``states[t]`` (Adam's state; None for SGD) before step ``t``, ``t = 0..T``;
    ``losses[t]`` the loss of step ``t``."""

    values: dict[str, torch.Tensor]
    params: list[Params]
    states: list[AdamState | None]
    losses: list[float]

    @property
    def steps(self) -> int:
        return len(self.losses)

    def change(self, at: int | None = None) -> dict[str, torch.Tensor]:
        """The measured cumulative change of every probe from the start to step ``at`` (default: the end)."""
        at = self.steps if at is None else int(at)
        return {n: v[at] - v[0] for n, v in self.values.items()}


def measure(params: Mapping[str, torch.Tensor], objective: Callable[[Params, Any], torch.Tensor],
            batches: Sequence, probes: Mapping[str, ProbeFn], optimiser: Optimiser, *,
            state: AdamState | None = None) -> Measured:
    """Run the real optimiser over ``batches`` from ``params`` (Adam from ``state``, default fresh) and
    read every probe before and after each step. ``params`` are not changed."""
    theta = _check_params(params)
    batches = _check_batches(batches)
    probes = _check_probes(probes)
    leaves = {n: v.clone().requires_grad_(True) for n, v in theta.items()}
    opt = optimiser.torch_optimizer(list(leaves.values()))
    adam = optimiser.name == "adam"
    start = None
    if adam:
        start = state.clone() if state is not None else AdamState.zeros(theta)
        _write_torch_adam(opt, leaves, start)
    snap = {n: v.detach().clone() for n, v in leaves.items()}
    values = {n: [v] for n, v in _probe_values(probes, snap).items()}
    kept, states, losses = [snap], [start], []
    for i, batch in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = objective(leaves, batch)
            if loss.dim() != 0:
                raise ValueError(f"the objective must return a scalar loss, got shape {tuple(loss.shape)} at step {i}")
            if not torch.isfinite(loss):
                raise ValueError(f"the objective is {loss.item()} at step {i}")
            loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        snap = {n: v.detach().clone() for n, v in leaves.items()}
        kept.append(snap)
        states.append(_read_torch_adam(opt, leaves) if adam else None)
        for n, v in _probe_values(probes, snap).items():
            values[n].append(v)
    return Measured({n: torch.stack(v) for n, v in values.items()}, kept, states, losses)


# --------------------------------------------------------------------------------------------------
# predicted


@dataclass
class Predicted:
    """The linearised prediction with re-linearisation at ``starts``: ``change[name]`` ``(T + 1, n)``,
    the predicted cumulative change of every probe from the start to after each step."""

    k: int | str
    starts: tuple[int, ...]
    change: dict[str, torch.Tensor]


def predict(measured: Measured, objective: Objective, batches: Sequence, probes: Mapping[str, ProbeFn],
            optimiser: Optimiser, *, k: int | str, epoch_starts: Sequence[int] = ()) -> Predicted:
    """The linearised prediction of the run ``measured``, re-linearised at the true parameters every
    ``k`` steps (:func:`schedule`: an int, ``"epoch"`` with ``epoch_starts``, or ``"all"``).

    In each segment the model linearised at ``theta_0`` is trained with ``optimiser`` on the segment's
    minibatches: per step one jvp (the linearised outputs ``f(theta_0) + J delta``), the exact loss's
    gradient ``G`` at them, one vjp (``J^T G``), the optimiser's update of ``delta``, and one jvp of the
    probes (``J_o delta``). No kernel is formed."""
    # Training the parameter-space linearisation is the function-space kernel flow: every output moves
    # by J(theta_0) delta and delta is a sum of preconditioned J(theta_0)^T G, so Delta f = -eta J P J^T G.
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective (outputs and loss), got {type(objective).__name__}")
    batches = _check_batches(batches)
    probes = _check_probes(probes)
    T = len(batches)
    if T != measured.steps:
        raise ValueError(f"{T} batches given for a measured run of {measured.steps} steps")
    starts = schedule(k, T, epoch_starts)
    names = list(probes)
    sizes = {n: measured.values[n].shape[1] for n in names}

    def all_probes(p):
        return torch.cat([probes[n](p).reshape(-1) for n in names])

    cum = torch.zeros(T + 1, sum(sizes.values()), dtype=torch.float64)
    bounds = list(starts) + [T]
    for s, e in itertools.pairwise(bounds):
        theta0 = measured.params[s]
        delta = {n: torch.zeros_like(v) for n, v in theta0.items()}
        state = None
        if optimiser.name == "adam":
            state = (measured.states[s] or AdamState.zeros(theta0)).clone()
        for i in range(s, e):
            batch = batches[i]

            def out(p, batch=batch):
                return objective.outputs(p, batch)

            with torch.no_grad():
                z0, pull = vjp(out, theta0)
                z = z0 if i == s else z0 + jvp(out, (theta0,), (delta,))[1]
            with torch.enable_grad():
                zl = z.detach().requires_grad_(True)
                (G,) = torch.autograd.grad(objective.loss(zl, batch), zl)
            with torch.no_grad():
                (grads,) = pull(G.to(z0.dtype))
                grads = {n: (torch.zeros_like(v) if grads.get(n) is None else grads[n]) for n, v in theta0.items()}
                if state is None:
                    delta = {n: delta[n] - optimiser.lr * grads[n] for n in delta}
                else:
                    _adam_step(delta, grads, state, optimiser)
                dp = jvp(all_probes, (theta0,), (delta,))[1]
            cum[i + 1] = cum[s] + dp.detach().to(torch.float64).cpu()
    change, at = {}, 0
    for n in names:
        change[n] = cum[:, at:at + sizes[n]]
        at += sizes[n]
    return Predicted(k, starts, change)


# --------------------------------------------------------------------------------------------------
# errors


def errors(measured: Measured, predicted: Predicted, *, at: int | None = None) -> dict[str, dict]:
    """Per probe set: :func:`~dynamics.study.first_order.relative_error` of the predicted cumulative
    change from the start to step ``at`` (default the end), the share of probes whose change has the
    predicted sign (``sign_agreement``), and the norms of both changes."""
    from dynamics.study.first_order import relative_error

    at = measured.steps if at is None else int(at)
    if not 0 < at <= measured.steps:
        raise ValueError(f"at={at} must lie in 1..{measured.steps}")
    out = {}
    for n, m in measured.change(at).items():
        p = predicted.change[n][at]
        out[n] = {"relative_error": relative_error(m, p),
                  "sign_agreement": float(((m > 0) == (p > 0)).double().mean()),
                  "measured_norm": float(m.norm()), "predicted_norm": float(p.norm()), "probes": int(m.numel())}
    return out


@dataclass
class FlowResult:
    """The measured run, the prediction for every ``k`` and their errors at the end of the run
    (``errors[k][probe set]``: see :func:`errors`)."""

    measured: Measured
    predicted: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def flow(params: Mapping[str, torch.Tensor], objective: Objective, batches: Sequence,
         probes: Mapping[str, ProbeFn], optimiser: Optimiser, *, ks: Sequence[int | str] = (1,),
         state: AdamState | None = None, epoch_starts: Sequence[int] = ()) -> FlowResult:
    """:func:`measure` the run once, :func:`predict` it for every ``k`` in ``ks`` and read the
    :func:`errors` at the end. ``state``: Adam's state at the start (default fresh)."""
    if not isinstance(optimiser, Optimiser):
        raise TypeError(f"optimiser must be an Optimiser, got {optimiser!r}")
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty: name at least one re-linearisation interval k")
    batches = _check_batches(batches)
    for k in ks:  # refuse a bad k before the run is measured
        schedule(k, len(batches), epoch_starts)
    measured = measure(params, objective, batches, probes, optimiser, state=state)
    res = FlowResult(measured)
    for k in ks:
        res.predicted[k] = predict(measured, objective, batches, probes, optimiser, k=k, epoch_starts=epoch_starts)
        res.errors[k] = errors(measured, res.predicted[k])
    return res

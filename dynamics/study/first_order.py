"""The one-step first-order check, once for every scale.

One plain-SGD step ``theta <- theta + lr * grad J`` on an objective ``J`` (``-loss`` of a CLO
minibatch, or ``log pi(u)`` of one training pair) changes the log-probability of a probe ``o`` by
``lr * <grad log p(o), grad J> + O(lr^2)`` (the paper's Proposition 1 and Lemmas 3-4 in eNTK form).
:func:`one_step` predicts that change with :func:`dynamics.kernels.first_order_probe` and measures it
at several step sizes on the same parameters; :func:`summary` reads the rows with one error
definition for every scale (:func:`relative_error`) and the residual's order in ``lr``.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 3, bias=False, dtype=torch.float64)
    >>> _ = torch.nn.init.constant_(lin.weight, 0.1)
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> logp = lambda: torch.log_softmax(lin(h), -1)[:, 0]                       # two probes
    >>> objective = lambda: torch.log_softmax(lin(torch.tensor([2.0, 1.0], dtype=torch.float64)), -1)[1]
    >>> res = one_step(logp, objective, list(lin.parameters()), lrs=(1e-3, 1e-2))
    >>> s = summary(rows(res, branch="gen"))["gen"]
    >>> s["relative_error"][1e-3] < 1e-2, round(s["residual_slope"])
    (True, 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dynamics.kernels import first_order_probe
from dynamics.study.stats import slope

__all__ = ["OneStep", "one_step", "relative_error", "rows", "summary"]


@dataclass
class OneStep:
    """Predicted (per unit of lr) and measured changes of the probes, float64: ``predicted`` ``(P,)``,
    ``measured[lr]`` ``(P,)``."""

    predicted: torch.Tensor
    measured: dict[float, torch.Tensor]
    parameter_count: int

    def predicted_at(self, lr: float) -> torch.Tensor:
        return lr * self.predicted


def relative_error(measured: torch.Tensor, predicted: torch.Tensor) -> float:
    """``||measured - predicted|| / ||predicted||`` over the probes (the one error definition of the
    one-step check; infinite when nothing is predicted to move).

    >>> relative_error(torch.tensor([1.1, 2.0]), torch.tensor([1.0, 2.0]))
    0.0447...
    """
    den = float(torch.linalg.vector_norm(predicted.double()))
    num = float(torch.linalg.vector_norm(measured.double() - predicted.double()))
    return num / den if den > 0 else math.inf


def one_step(logp: Callable[[], torch.Tensor], objective: Callable[[], torch.Tensor],
             params: Sequence[torch.nn.Parameter], *, lrs: Sequence[float]) -> OneStep:
    """Predicted and measured change of ``logp()`` (one entry per probe) after one SGD step of size
    ``lr`` that increases ``objective()`` over ``params``, for every ``lr``; the parameters are
    restored afterwards. Run the model in float64 for a clean check."""
    params = list(params)
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise ValueError(f"one_step: step sizes must be positive and finite, got {lrs}")
    pred = first_order_probe(lambda: logp().reshape(-1), objective, params, lr=1.0)
    with torch.no_grad():
        before = logp().reshape(-1).double()
    with torch.enable_grad():
        grads = torch.autograd.grad(objective(), params, allow_unused=True)
    saved = [p.detach().clone() for p in params]
    measured = {}
    try:
        for lr in lrs:
            with torch.no_grad():
                for p, s0, g in zip(params, saved, grads):
                    p.copy_(s0 if g is None else s0 + lr * g)
                measured[lr] = (logp().reshape(-1).double() - before).cpu()
    finally:
        with torch.no_grad():
            for p, s0 in zip(params, saved):
                p.copy_(s0)
    return OneStep(pred.reshape(-1).cpu(), measured, sum(p.numel() for p in params))


def rows(result: OneStep, *, branch: str, meta: Sequence[dict] | None = None) -> list[dict]:
    """One row per (lr, probe): ``lr``, ``branch``, ``probe``, ``measured``, ``predicted``, plus the
    probe's ``meta`` (e.g. its prompt id and kind)."""
    out = []
    for lr, m in result.measured.items():
        p = result.predicted_at(lr)
        for j in range(len(p)):
            out.append({"lr": lr, "branch": branch, "probe": j, "measured": float(m[j]), "predicted": float(p[j]),
                        **(meta[j] if meta else {})})
    return out


def summary(rows_: Sequence[dict]) -> dict:
    """Per branch (and per ``seed`` where rows carry one, the error is computed within a seed and
    averaged): :func:`relative_error` at each lr, the mean absolute residual at each lr, the slope of
    that residual in lr (2 for a correct first-order prediction), the sign agreement at the smallest
    lr, and the number of probes there.

    >>> r = [{"lr": lr, "branch": "gen", "probe": 0, "measured": lr + lr ** 2, "predicted": lr}
    ...      for lr in (1e-3, 1e-2)]
    >>> s = summary(r)["gen"]
    >>> round(s["residual_slope"], 6), s["sign_agreement"]
    (2.0, 1.0)
    """
    out = {}
    for branch in sorted({r["branch"] for r in rows_}):
        rs = [r for r in rows_ if r["branch"] == branch]
        lrs = sorted({r["lr"] for r in rs})
        groups = sorted({r.get("seed", 0) for r in rs})
        rel, resid = {}, {}
        for lr in lrs:
            at = [r for r in rs if r["lr"] == lr]
            errs = []
            for g in groups:
                mine = [r for r in at if r.get("seed", 0) == g]
                errs.append(relative_error(torch.tensor([r["measured"] for r in mine], dtype=torch.float64),
                                           torch.tensor([r["predicted"] for r in mine], dtype=torch.float64)))
            rel[lr] = sum(errs) / len(errs)
            resid[lr] = sum(abs(r["measured"] - r["predicted"]) for r in at) / len(at)
        small = [r for r in rs if r["lr"] == lrs[0]]
        out[branch] = {
            "relative_error": rel,
            "mean_abs_residual": resid,
            "residual_slope": slope(lrs, [resid[lr] for lr in lrs]) if len(lrs) > 1 else math.nan,
            "sign_agreement": sum((r["measured"] > 0) == (r["predicted"] > 0) for r in small) / len(small),
            "probes": len(small),
        }
    return out

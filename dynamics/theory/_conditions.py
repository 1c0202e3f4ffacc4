"""Sufficient conditions for the sign statements of the theory (aligned dynamics, co-improvement,
co-degradation), as checkable functions. Derivations: ``docs/theory.md``.

All margins are first-order quantities per unit step size (the ``-eta`` factor removed): a margin
``> 0`` proves the sign statement for the first-order changes; the measured one-step changes obey it
for every step size small enough that the ``O(eta^2)`` remainders stay below ``eta * margin``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._bayes import _index, posterior_weights
from ._closed_forms import _a_rows, _as_terms, g_sft
from ._propositions import _per_prompt, _probe_stack, sequence_logprob_of
from .checks import float_tensor, int_targets

__all__ = [
    "Condition",
    "aligned_dynamics_condition",
    "co_degradation_condition",
    "co_improvement_condition",
    "squeezing_term",
]


class Condition(NamedTuple):
    """A sufficient condition evaluated on one configuration.

    ``holds`` is ``margin > 0``; ``margin`` the slack of the inequality (the smallest over its parts);
    ``parts`` the slack of each part by name.
    """

    holds: bool
    margin: float
    parts: dict


def _kg(kernel, g) -> torch.Tensor:
    """``sum_r K_{k,r} G_r`` as ``(M_o, V_o)`` (a list of kernels and gradients is summed)."""
    return sum(torch.einsum("krvw,rw->kv", k, gi) for k, gi in _as_terms(kernel, g))


def squeezing_term(
    logits_probe: torch.Tensor, target_probe, logits_train: torch.Tensor, target_train
) -> torch.Tensor:
    """``s = (e_{x0} - pi0)^T (pi^u - e_{xu})``, the single-token SFT sign term of ``Delta G``.

    With an isotropic kernel ``K = kappa I`` (``kappa > 0``), ``Delta G = -eta kappa s``. Expanded,
    ``s = pi^u(x0) + pi0(xu) - <pi0, pi^u> - 1[x0 = xu]``:

    - a clean target (``xu != x0``) gives ``s > 0`` (``Delta G < 0``) unless ``pi0`` and ``pi^u`` share
      enough mass on other tokens that ``<pi0, pi^u>`` exceeds ``pi^u(x0) + pi0(xu)`` (squeezing);
    - the probe's own token as target (``xu = x0``) gives ``s = -(e - pi0)^T (e - pi^u) <= 0`` always.

    Args:
        logits_probe: ``(V,)``; target_probe: the probe token.
        logits_train: ``(V,)``; target_train: the training token.

    Returns:
        0-dim tensor.

    Example (mass on a third token flips the sign)::

        >>> import torch
        >>> third = torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
        >>> float(squeezing_term(torch.zeros(3, dtype=torch.float64), 0, torch.zeros(3, dtype=torch.float64), 1)) > 0
        True
        >>> float(squeezing_term(third, 0, third, 1)) > 0
        False
    """
    logits_probe = float_tensor("logits_probe", logits_probe, min_dim=1)
    target_probe = int_targets("target_probe", target_probe, shape=logits_probe.shape[:-1], vocab=logits_probe.shape[-1])
    a = _a_rows(logits_probe, target_probe)
    g = g_sft(float_tensor("logits_train", logits_train, min_dim=1), torch.as_tensor(target_train))
    return (a * g).sum(-1)


def aligned_dynamics_condition(
    logits_probes: torch.Tensor,
    target_probe,
    kernels,
    g,
    *,
    log_prior=None,
    index: int = 0,
) -> Condition:
    """Aligned dynamics: when the ``K(Y0, Yu)`` term dominates, ``sign(Delta U) = sign(Delta G)``.

    With ``a_i`` the stacked rows ``(e_{x0,k} - pi^i_k)_k`` and ``(K_i G)_k = sum_r K_{k,r}(Y_i, Yu) G_r``,
    first order gives ``Delta G_i = -eta <a_i, K_i G>`` and
    ``Delta U = (1 - w_0) Delta G_0 - sum_{i != 0} w_i Delta G_i``. Cauchy-Schwarz bounds each
    ``|Delta G_i| <= eta ||a_i|| ||K_i G||``, so

        (1 - w_0) |<a_0, K_0 G>|  >  sum_{i != 0} w_i ||a_i|| ||K_i G||

    implies ``sign(Delta U) = sign(Delta G_0) != 0`` and
    ``|Delta U - (1 - w_0) Delta G_0| <= eta sum_{i != 0} w_i ||a_i|| ||K_i G||``.

    Args:
        logits_probes: ``(N, M_o, V)`` (``(N, V)``), x0's logits after every prompt.
        target_probe: ``(M_o,)`` the tokens of x0.
        kernels: ``K(Y_i, Yu)``, ``(N, M_o, M_u, V, V)`` (``(N, V, V)``), or a list (one per training term).
        g: ``(M_u, V)`` (``(V,)``), or a list matching ``kernels``.
        log_prior: ``(N,)`` normalised; None = uniform.
        index: which prompt is ``y0``.

    Returns:
        :class:`Condition` with ``margin = lhs - rhs`` (per unit step size).

    Example (only the probe's own prompt is similar to the training input)::

        >>> import torch
        >>> z = torch.zeros(3, 4, dtype=torch.float64)
        >>> K = torch.stack([torch.eye(4), 0.1 * torch.eye(4), 0.1 * torch.eye(4)]).double()
        >>> aligned_dynamics_condition(z, torch.tensor(0), K, g_sft(z[0], torch.tensor(1))).holds
        True
    """
    lp, tp = _probe_stack(logits_probes, target_probe)
    n = lp.shape[0]
    i0 = _index(n, index)
    per = _per_prompt(kernels, n, "kernels")
    a = _a_rows(lp, tp.expand(n, -1))  # (N, M_o, V)
    kg = torch.stack([_kg(k, g) for k in per])  # (N, M_o, V)
    w = posterior_weights(sequence_logprob_of(lp, tp.expand(n, -1)), log_prior)
    lhs = (1.0 - w[i0]) * (a[i0] * kg[i0]).sum().abs()
    others = [i for i in range(n) if i != i0]
    rhs = sum(w[i] * a[i].norm() * kg[i].norm() for i in others) if others else torch.zeros(())
    margin = float(lhs - rhs)
    return Condition(margin > 0.0, margin, {"dominance": margin})


def _generation_part(logits_probes, target_probe, kernels, logits_train, target_train, index, kappa, sign):
    lp = float_tensor("logits_probes", logits_probes, min_dim=2)
    k = float_tensor("kernels", kernels, min_dim=3)
    if lp.dim() != 2 or k.dim() != 3 or float_tensor("logits_train", logits_train).dim() != 1:
        raise ValueError(
            "the co-improvement / co-degradation conditions are single-token: logits_probes (N, V), "
            f"kernels (N, V, V), logits_train (V,); got {tuple(lp.shape)}, {tuple(k.shape)}, "
            f"{tuple(logits_train.shape)}"
        )
    i0 = _index(lp.shape[0], index)
    k0 = k[i0]
    v = k0.shape[-1]
    if k0.shape != (lp.shape[-1], v) or logits_train.shape[-1] != v:
        raise ValueError(f"kernel {tuple(k0.shape)} does not match V={lp.shape[-1]} and V_u={logits_train.shape[-1]}")
    kappa = float(torch.diagonal(k0).mean()) if kappa is None else float(kappa)
    x0 = int_targets("target_probe", torch.as_tensor(target_probe), shape=(), vocab=lp.shape[-1])
    a0 = _a_rows(lp[i0], x0)
    g = g_sft(logits_train, torch.as_tensor(target_train))
    s = (a0 * g).sum()
    resid = k0 - kappa * torch.eye(v, dtype=k0.dtype)
    bound = torch.linalg.matrix_norm(resid, ord=2) * a0.norm() * g.norm()
    return float(sign * kappa * s - bound), g


def co_improvement_condition(
    logits_probes: torch.Tensor,
    target_probe,
    kernels: torch.Tensor,
    logits_train: torch.Tensor,
    target_train,
    *,
    log_prior=None,
    index: int = 0,
    kappa: float | None = None,
) -> Condition:
    """One SFT step on ``(yu, xu)`` lowers both ``G = log pi(x0|y0)`` and ``U = log pi(y0|x0)`` (single token).

    Write ``K(Y0, Yu) = kappa I + E`` (default ``kappa = tr K / V``). Then
    ``<a_0, K G> = kappa s + <a_0, E G> >= kappa s - ||E||_2 ||a_0|| ||G||`` with ``s`` the
    :func:`squeezing_term`. The condition is the conjunction of

    - ``generation``: ``kappa s - ||E||_2 ||a_0|| ||G|| > 0``, which gives ``Delta G < 0``;
    - ``understanding``: :func:`aligned_dynamics_condition`, which carries the sign to ``Delta U``.

    For a clean target on a prompt similar to a misaligned probe (``kappa > 0`` large, ``E`` small)
    it holds unless the squeezing term ``s`` is negative: mass shared on a third token.

    Args:
        logits_probes: ``(N, V)`` logits after each prompt; target_probe: the probe token x0.
        kernels: ``(N, V, V)``, ``K(Y_i, Yu)``.
        logits_train: ``(V,)``; target_train: the training token xu.
        log_prior, index: as in :func:`aligned_dynamics_condition`.
        kappa: the isotropic part (None = the mean diagonal of ``K(Y0, Yu)``).

    Returns:
        :class:`Condition` with parts ``generation`` and ``understanding``.

    Example::

        >>> import torch
        >>> z = torch.zeros(2, 3, dtype=torch.float64)
        >>> K = torch.stack([torch.eye(3), 0.1 * torch.eye(3)]).double()
        >>> co_improvement_condition(z, 0, K, z[0], 1).holds
        True
    """
    gen, g = _generation_part(logits_probes, target_probe, kernels, logits_train, target_train, index, kappa, 1.0)
    und = aligned_dynamics_condition(logits_probes, torch.as_tensor(target_probe), kernels, g,
                                     log_prior=log_prior, index=index).margin
    margin = min(gen, und)
    return Condition(margin > 0.0, margin, {"generation": gen, "understanding": und})


def co_degradation_condition(
    logits_probes: torch.Tensor,
    target_probe,
    kernels: torch.Tensor,
    logits_train: torch.Tensor,
    target_train,
    *,
    log_prior=None,
    index: int = 0,
    kappa: float | None = None,
) -> Condition:
    """One SFT step on ``(yu, xu)`` raises both ``G`` and ``U`` on the probe (single token).

    As :func:`co_improvement_condition` with the generation part ``-kappa s - ||E||_2 ||a_0|| ||G|| > 0``
    (so ``Delta G > 0``). A bad positive, the probe's own misaligned token accepted for a similar
    prompt (``xu = x0``), has ``s = -(e - pi0)^T (e - pi^u) <= 0``, so only the kernel's
    anisotropy ``E`` can break it.

    Example::

        >>> import torch
        >>> z = torch.zeros(2, 3, dtype=torch.float64)
        >>> K = torch.stack([torch.eye(3), 0.1 * torch.eye(3)]).double()
        >>> co_degradation_condition(z, 0, K, z[0], 0).holds
        True
    """
    gen, g = _generation_part(logits_probes, target_probe, kernels, logits_train, target_train, index, kappa, -1.0)
    und = aligned_dynamics_condition(logits_probes, torch.as_tensor(target_probe), kernels, g,
                                     log_prior=log_prior, index=index).margin
    margin = min(gen, und)
    return Condition(margin > 0.0, margin, {"generation": gen, "understanding": und})

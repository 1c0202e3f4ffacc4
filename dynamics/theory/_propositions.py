"""Proposition 1 (SFT) and Lemmas 3-4 (DPO) in multi-position form.

Notation: probe prompt ``y0`` with image ``x0`` (M_o tokens); generation input ``Y_i = [y_i | x0]``
for every prompt ``y_i`` of a finite set (``i = index`` is the probe's own prompt); training input
``Yu = [yu | xu]`` (M_u tokens). ``Delta G = Delta log pi(x0 | Y0)``, ``Delta U = Delta log pi(y0 | X0)``
with understanding read through the Bayes link.

Shapes: the probe's logits under every prompt are ``(N, M_o, V)`` (or ``(N, V)`` for one token);
the kernels ``K(Y_i, Yu)`` are ``(N, M_o, M_u, V, V)`` (or ``(N, V, V)``).
"""

from __future__ import annotations

import torch

from ._bayes import bayes_delta_u_first_order, posterior_weights
from ._closed_forms import first_order_delta, g_dpo, g_sft
from .checks import float_tensor, int_targets

__all__ = [
    "first_order_delta_prompts",
    "lemma_dpo_delta_g",
    "lemma_dpo_delta_u",
    "prop1_delta_g",
    "prop1_delta_u",
    "sequence_logprob_of",
]


def sequence_logprob_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_k log softmax(z_k)[x_k]`` over the last position axis: ``(..., M, V), (..., M) -> (...)``.

    Example::

        >>> import torch
        >>> sequence_logprob_of(torch.zeros(2, 4, dtype=torch.float64), torch.tensor([0, 3])).exp()
        tensor(0.0625, dtype=torch.float64)
    """
    logits = float_tensor("logits", logits, min_dim=2)
    target = int_targets("target", target, shape=logits.shape[:-1], vocab=logits.shape[-1])
    return torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1)


def _probe_stack(logits_probes: torch.Tensor, target_probe: torch.Tensor):
    logits_probes = float_tensor("logits_probes", logits_probes, min_dim=2)
    if logits_probes.dim() == 2:  # (N, V): one token
        logits_probes = logits_probes.unsqueeze(1)
        target_probe = torch.as_tensor(target_probe).reshape(1)
    if logits_probes.dim() != 3:
        raise ValueError(f"logits_probes must be (N, M_o, V) or (N, V), got {tuple(logits_probes.shape)}")
    target_probe = int_targets(
        "target_probe", target_probe, shape=logits_probes.shape[1:2], vocab=logits_probes.shape[-1]
    )
    return logits_probes, target_probe


def _per_prompt(kernels, n: int, name: str) -> list:
    """Split ``(N, ...)`` kernels (or a list of them, one per training term) into N per-prompt items."""
    many = isinstance(kernels, (list, tuple))
    ks = list(kernels) if many else [kernels]
    for j, k in enumerate(ks):
        float_tensor(f"{name}[{j}]" if many else name, k, min_dim=3)
        if k.shape[0] != n:
            raise ValueError(f"{name} has {k.shape[0]} prompts on dim 0, the probe logits have {n}")
    return [[k[i] for k in ks] if many else ks[0][i] for i in range(n)]


def first_order_delta_prompts(
    logits_probes: torch.Tensor, target_probe: torch.Tensor, kernels, g, lr: float
) -> torch.Tensor:
    """First-order ``Delta log pi(x0 | Y_i)`` for every prompt i: ``-eta sum_k sum_r A^i_k K_{k,r}(Y_i, Yu) G_r``.

    Args:
        logits_probes: ``(N, M_o, V)`` logits of x0's positions when x0 follows ``y_i`` (``(N, V)`` for M = 1).
        target_probe: ``(M_o,)`` the tokens of x0 (a scalar for M = 1).
        kernels: ``(N, M_o, M_u, V, V)`` (``(N, V, V)`` for M = 1), or a list of them (one per training term).
        g: ``(M_u, V)`` (``(V,)``), or a list matching ``kernels``.
        lr: the SGD step size.

    Returns:
        ``(N,)``.

    Example::

        >>> import torch
        >>> z = torch.zeros(2, 3, dtype=torch.float64)
        >>> K = torch.stack([torch.eye(3), 0.5 * torch.eye(3)]).double()
        >>> first_order_delta_prompts(z, torch.tensor(0), K, g_sft(z[0], torch.tensor(0)), 0.1)
        tensor([0.0667, 0.0333], dtype=torch.float64)
    """
    logits_probes, target_probe = _probe_stack(logits_probes, target_probe)
    per = _per_prompt(kernels, logits_probes.shape[0], "kernels")
    return torch.stack([first_order_delta(logits_probes[i], target_probe, k, g, lr) for i, k in enumerate(per)])


def prop1_delta_g(
    logits_probe: torch.Tensor,
    target_probe: torch.Tensor,
    kernel: torch.Tensor,
    logits_train: torch.Tensor,
    target_train: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """Proposition 1, generation: ``Delta G = -eta sum_k sum_r (e_{x0,k} - pi0_k)^T K_{k,r}(Y0,Yu) (pi^u_r - e_{xu,r})``.

    Args:
        logits_probe: ``(M_o, V)`` logits of x0's positions after ``y0`` (``(V,)`` for M = 1).
        target_probe: ``(M_o,)`` the tokens of x0.
        kernel: ``K(Y0, Yu)``, ``(M_o, M_u, V, V)`` (``(V, V)``).
        logits_train: ``(M_u, V)`` logits of the training image's positions (``(V,)``).
        target_train: ``(M_u,)`` the training image's tokens.
        lr: the SGD step size.

    Returns:
        0-dim tensor, the first-order change of ``log pi(x0 | y0)``.

    Example::

        >>> import torch
        >>> z = torch.zeros(3, dtype=torch.float64)
        >>> prop1_delta_g(z, torch.tensor(0), torch.eye(3, dtype=torch.float64), z, torch.tensor(1), 0.1)
        tensor(-0.0333, dtype=torch.float64)
    """
    logits_train = float_tensor("logits_train", logits_train, min_dim=1)
    target_train = torch.as_tensor(target_train)
    return first_order_delta(logits_probe, target_probe, kernel, g_sft(logits_train, target_train), lr)


def prop1_delta_u(
    logits_probes: torch.Tensor,
    target_probe: torch.Tensor,
    kernels: torch.Tensor,
    logits_train: torch.Tensor,
    target_train: torch.Tensor,
    lr: float,
    *,
    log_prior=None,
    index: int = 0,
) -> torch.Tensor:
    """Proposition 1, understanding (Bayes link): ``Delta U = sum_{i != 0} w_i [Delta G(x0|Y0) - Delta G(x0|Y_i)]``.

    Written out, ``-eta sum_k sum_r sum_{i != 0} w(y_i|x0) [(e_{x0,k} - pi0_k)^T K_{k,r}(Y0,Yu)
    - (e_{x0,k} - pi^i_k)^T K_{k,r}(Y_i,Yu)] (pi^u_r - e_{xu,r})``, with the posterior weights
    ``w(y_i | x0)`` computed from ``logits_probes``.

    Args:
        logits_probes: ``(N, M_o, V)`` logits of x0's positions after each prompt ``y_i`` (``(N, V)``).
        target_probe: ``(M_o,)`` the tokens of x0.
        kernels: ``K(Y_i, Yu)`` for every i, ``(N, M_o, M_u, V, V)`` (``(N, V, V)``).
        logits_train, target_train: the training image's logits ``(M_u, V)`` and tokens ``(M_u,)``.
        lr: the SGD step size.
        log_prior: ``(N,)`` normalised ``log p(y_i)``; None = uniform.
        index: which prompt is ``y0``.

    Returns:
        0-dim tensor, the first-order change of ``log pi(y0 | x0)``.

    Example (only the probe's own prompt moves: ``Delta U = (1 - w_0) Delta G``)::

        >>> import torch
        >>> z = torch.zeros(2, 3, dtype=torch.float64)
        >>> K = torch.stack([torch.eye(3), torch.zeros(3, 3)]).double()
        >>> prop1_delta_u(z, torch.tensor(0), K, z[0], torch.tensor(1), 0.1)
        tensor(-0.0167, dtype=torch.float64)
    """
    logits_train = float_tensor("logits_train", logits_train, min_dim=1)
    g = g_sft(logits_train, torch.as_tensor(target_train))
    return _delta_u(logits_probes, target_probe, kernels, g, lr, log_prior, index)


def _delta_u(logits_probes, target_probe, kernels, g, lr, log_prior, index) -> torch.Tensor:
    lp, tp = _probe_stack(logits_probes, target_probe)
    delta = first_order_delta_prompts(logits_probes, target_probe, kernels, g, lr)
    weights = posterior_weights(sequence_logprob_of(lp, tp.expand(lp.shape[0], -1)), log_prior)
    return bayes_delta_u_first_order(delta, weights, index=index)


def _dpo_terms(kernel_chosen, kernel_rejected, logits_chosen, target_chosen, logits_rejected,
               target_rejected, logratio_margin, beta, variant, kw):
    g_plus, g_minus = g_dpo(
        logits_chosen, torch.as_tensor(target_chosen), logits_rejected, torch.as_tensor(target_rejected),
        torch.as_tensor(logratio_margin, dtype=logits_chosen.dtype), beta=beta, variant=variant, **kw,
    )
    if logits_chosen.dim() == 1:  # single token: g_dpo returned (1, V)
        g_plus = g_plus[0]
    if logits_rejected.dim() == 1:
        g_minus = g_minus[0]
    return [kernel_chosen, kernel_rejected], [g_plus, g_minus]


def lemma_dpo_delta_g(
    logits_probe: torch.Tensor,
    target_probe: torch.Tensor,
    kernel_chosen: torch.Tensor,
    kernel_rejected: torch.Tensor,
    logits_chosen: torch.Tensor,
    target_chosen: torch.Tensor,
    logits_rejected: torch.Tensor,
    target_rejected: torch.Tensor,
    logratio_margin,
    lr: float,
    *,
    beta: float,
    variant: str = "sigmoid",
    **kw,
) -> torch.Tensor:
    """Lemma 3 (DPO, generation): Proposition 1 with ``K(.,Yu) G(u)`` replaced by the pair's two terms.

    For sigmoid DPO, ``beta sigma(-alpha) [K(Y0,Yu+)(pi^{u+} - e_{x+}) - K(Y0,Yu-)(pi^{u-} - e_{x-})]``;
    other variants and the NLL term through :func:`g_dpo` (``**kw``: ``eps``, ``margin``,
    ``nll_weight``, ``nll_tokens``).

    Args:
        logits_probe, target_probe: as in :func:`prop1_delta_g`.
        kernel_chosen, kernel_rejected: ``K(Y0, Yu+)``, ``K(Y0, Yu-)``, ``(M_o, M_u, V, V)`` or ``(V, V)``.
        logits_chosen, target_chosen, logits_rejected, target_rejected: ``(M_u, V)`` / ``(M_u,)`` each.
        logratio_margin: ``h`` of the pair (scalar).
        lr: the SGD step size.

    Returns:
        0-dim tensor.

    Example (shared prompt, single token, isotropic kernel)::

        >>> import torch
        >>> z, K = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        >>> lemma_dpo_delta_g(z, torch.tensor(0), K, K, z, torch.tensor(0), z, torch.tensor(1), 0.0, 0.1,
        ...                   beta=1.0)
        tensor(0.0500, dtype=torch.float64)
    """
    ks, gs = _dpo_terms(kernel_chosen, kernel_rejected, logits_chosen, target_chosen, logits_rejected,
                        target_rejected, logratio_margin, beta, variant, kw)
    return first_order_delta(logits_probe, target_probe, ks, gs, lr)


def lemma_dpo_delta_u(
    logits_probes: torch.Tensor,
    target_probe: torch.Tensor,
    kernels_chosen: torch.Tensor,
    kernels_rejected: torch.Tensor,
    logits_chosen: torch.Tensor,
    target_chosen: torch.Tensor,
    logits_rejected: torch.Tensor,
    target_rejected: torch.Tensor,
    logratio_margin,
    lr: float,
    *,
    beta: float,
    variant: str = "sigmoid",
    log_prior=None,
    index: int = 0,
    **kw,
) -> torch.Tensor:
    """Lemma 4 (DPO, understanding): :func:`prop1_delta_u` with the pair's two training terms.

    Args:
        logits_probes, target_probe, log_prior, index: as in :func:`prop1_delta_u`.
        kernels_chosen, kernels_rejected: ``K(Y_i, Yu+)``, ``K(Y_i, Yu-)`` for every prompt,
            ``(N, M_o, M_u, V, V)`` or ``(N, V, V)``.
        the rest: as in :func:`lemma_dpo_delta_g`.

    Returns:
        0-dim tensor.

    Example::

        >>> import torch
        >>> z = torch.zeros(2, 3, dtype=torch.float64)
        >>> K = torch.stack([torch.eye(3), torch.zeros(3, 3)]).double()
        >>> lemma_dpo_delta_u(z, torch.tensor(0), K, K, z[0], torch.tensor(0), z[0], torch.tensor(1), 0.0, 0.1,
        ...                   beta=1.0)
        tensor(0.0250, dtype=torch.float64)
    """
    ks, gs = _dpo_terms(kernels_chosen, kernels_rejected, logits_chosen, target_chosen, logits_rejected,
                        target_rejected, logratio_margin, beta, variant, kw)
    return _delta_u(logits_probes, target_probe, ks, gs, lr, log_prior, index)

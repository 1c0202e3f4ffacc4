"""The generation objectives: SFT negative log-likelihood and the DPO family, per sequence.

Sequence log-probabilities are sums of ``log_softmax`` over unmasked token positions; the
preference losses are elementwise functions of sequence-level log-probabilities, so they broadcast
over any leading axes (the CLO loop passes ``(R, B, 1)``). Their gradients with respect to the
logits are the closed forms of :mod:`dynamics.theory` (``g_sft``, ``g_dpo``).

Example::

    >>> import torch
    >>> from dynamics.losses import sequence_logprob, dpo_loss
    >>> z = torch.zeros(2, 3, 4, dtype=torch.float64)             # 2 sequences of M = 3 tokens, V = 4
    >>> lp = sequence_logprob(z, torch.zeros(2, 3, dtype=torch.long))
    >>> lp.exp()
    tensor([0.0156, 0.0156], dtype=torch.float64)
    >>> dpo_loss(lp[0], lp[1], lp[0], lp[1], beta=0.1)          # zero margin: log 2
    tensor(0.6931, dtype=torch.float64)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynamics.theory.checks import DPO_VARIANTS, dpo_settings, float_tensor, mask_or_ones

__all__ = ["DPO_VARIANTS", "dpo_loss", "preference_loss", "sequence_logprob", "sft_nll"]

_INT = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, mask=None) -> torch.Tensor:
    """``sum_m mask_m log softmax(z_m)[x_m]``: the teacher-forced log-probability of each sequence.

    Masked positions contribute nothing and may hold any id (padding such as -100).

    Args:
        logits: ``(..., M, V)`` float.
        targets: ``(..., M)`` integer ids.
        mask: ``(..., M)`` bool/int/float weights (1 = counts), or None for all positions.

    Returns:
        ``(...)``.

    Example::

        >>> import torch
        >>> z = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64))
        >>> sequence_logprob(z, torch.tensor([0, 1])).exp()
        tensor(0.3750, dtype=torch.float64)
        >>> sequence_logprob(z, torch.tensor([0, -100]), mask=torch.tensor([True, False])).exp()
        tensor(0.5000, dtype=torch.float64)
    """
    logits = float_tensor("logits", logits, min_dim=2)
    if not isinstance(targets, torch.Tensor) or targets.dtype not in _INT:
        raise ValueError(f"targets must be an integer tensor, got {getattr(targets, 'dtype', type(targets))}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets have shape {tuple(targets.shape)}; expected {tuple(logits.shape[:-1])} (logits (..., M, V))"
        )
    m = mask_or_ones("mask", mask, like=targets).to(logits.dtype)
    v = logits.shape[-1]
    live = m != 0
    bad = live & ((targets < 0) | (targets >= v))
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"targets{list(where)} = {int(targets[where])} is outside [0, {v}) at an unmasked position"
        )
    safe = torch.where(live, targets, torch.zeros_like(targets)).long()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (logp * m).sum(-1)


def sft_nll(logits: torch.Tensor, targets: torch.Tensor, mask=None) -> torch.Tensor:
    """SFT negative log-likelihood per sequence, ``-sequence_logprob(logits, targets, mask)``.

    Its gradient at position m is ``mask_m (pi_m - e_{x_m})`` (:func:`dynamics.theory.g_sft`).

    Args:
        logits: ``(..., M, V)``; targets: ``(..., M)``; mask: ``(..., M)`` or None.

    Returns:
        ``(...)``.

    Example::

        >>> import torch
        >>> sft_nll(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]))
        tensor(0.6931, dtype=torch.float64)
    """
    return -sequence_logprob(logits, targets, mask)


def _as_float(name: str, x, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.dtype in _INT:  # counts, e.g. mask.sum(-1)
        return x.to(like.dtype)
    return float_tensor(name, x)


def dpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    variant: str = "sigmoid",
    eps: float = 0.1,
    margin: float = 1.0,
) -> torch.Tensor:
    """Per-pair preference loss ``L(h)`` of the log-ratio margin, elementwise over broadcast shapes.

    ``h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)``. Variants (see
    :func:`dynamics.theory.dpo_coefficients` for their derivatives):

    - ``"sigmoid"``: ``-log sigma(beta h)`` (DPO; Rafailov et al. 2023, arXiv 2305.18290);
    - ``"ipo"``: ``(h - 1/(2 beta))^2`` (IPO; Azar et al. 2024, arXiv 2310.12036);
    - ``"hinge"``: ``relu(margin - beta h)`` (SLiC-HF; Zhao et al. 2023, arXiv 2305.10425);
    - ``"robust"``: ``[-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)``
      (rDPO with flip rate eps; Chowdhury, Kini, Natarajan 2024, arXiv 2403.00409);
    - ``"conservative"``: ``-(1-eps) log sigma(beta h) - eps log sigma(-beta h)`` (cDPO, label
      smoothing eps; Mitchell 2023).

    Args:
        logp_chosen, logp_rejected: sequence log-probabilities under the policy (with gradient).
        ref_chosen, ref_rejected: the same under the frozen reference (tensors or floats).
        beta: inverse temperature, > 0.
        variant: one of :data:`DPO_VARIANTS`.
        eps: flip rate (``robust``, in [0, 1/2)) or label smoothing (``conservative``, in [0, 1]).
        margin: the hinge margin.

    Returns:
        The per-pair loss, of the inputs' broadcast shape (no reduction).

    Example::

        >>> import torch
        >>> lc = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64)       # (B, 1)
        >>> lr = torch.tensor([[-3.0], [-1.0]], dtype=torch.float64)
        >>> dpo_loss(lc, lr, 0.0, 0.0, beta=1.0).squeeze(-1)
        tensor([0.1269, 1.3133], dtype=torch.float64)
        >>> dpo_loss(lc, lr, 0.0, 0.0, beta=1.0, variant="hinge").squeeze(-1)
        tensor([0., 2.], dtype=torch.float64)
    """
    logp_chosen = float_tensor("logp_chosen", logp_chosen)
    logp_rejected = float_tensor("logp_rejected", logp_rejected)
    ref_chosen = _as_float("ref_chosen", ref_chosen, logp_chosen)
    ref_rejected = _as_float("ref_rejected", ref_rejected, logp_chosen)
    try:
        torch.broadcast_shapes(logp_chosen.shape, logp_rejected.shape, ref_chosen.shape, ref_rejected.shape)
    except RuntimeError as err:
        raise ValueError(
            "dpo_loss: shapes do not broadcast: logp_chosen "
            f"{tuple(logp_chosen.shape)}, logp_rejected {tuple(logp_rejected.shape)}, ref_chosen "
            f"{tuple(ref_chosen.shape)}, ref_rejected {tuple(ref_rejected.shape)}"
        ) from err
    beta, eps, margin = dpo_settings(variant, beta, eps, margin)
    h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    if variant == "sigmoid":
        return -F.logsigmoid(beta * h)
    if variant == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if variant == "hinge":
        return torch.relu(margin - beta * h)
    if variant == "robust":
        return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)
    # conservative
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def preference_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    variant: str = "sigmoid",
    eps: float = 0.1,
    margin: float = 1.0,
    nll_weight: float = 0.0,
    nll_tokens=None,
) -> torch.Tensor:
    """:func:`dpo_loss` plus an optional NLL term on the chosen sequence, for stability.

    ``loss = dpo_loss(...) + nll_weight * (-logp_chosen) / nll_tokens``; pass the chosen sequence's
    token count as ``nll_tokens`` for a per-token NLL (None = 1, the summed NLL).

    Args:
        logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta, variant, eps, margin: as in
            :func:`dpo_loss`.
        nll_weight: weight of the NLL term, >= 0.
        nll_tokens: normaliser of the NLL term (number or tensor broadcastable to the loss), > 0.

    Returns:
        The per-pair loss, of the inputs' broadcast shape.

    Example::

        >>> import torch
        >>> lc, lr = torch.tensor(-4.0, dtype=torch.float64), torch.tensor(-6.0, dtype=torch.float64)
        >>> preference_loss(lc, lr, lc, lr, beta=0.1, nll_weight=1.0, nll_tokens=4)   # log 2 + 4 / 4
        tensor(1.6931, dtype=torch.float64)
    """
    loss = dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=beta, variant=variant,
                    eps=eps, margin=margin)
    nll_weight = float(nll_weight)
    if not nll_weight >= 0.0:
        raise ValueError(f"nll_weight must be >= 0, got {nll_weight!r}")
    if nll_weight == 0.0:
        return loss
    tokens = _as_float("nll_tokens", 1.0 if nll_tokens is None else nll_tokens, logp_chosen)
    if (tokens <= 0).any():
        raise ValueError(f"nll_tokens must be > 0, got {nll_tokens!r}")
    return loss - nll_weight * logp_chosen / tokens

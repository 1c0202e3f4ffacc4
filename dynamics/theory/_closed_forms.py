"""Closed forms of the one-step learning dynamics: A, G (SFT and the DPO family), A K G predictions.

One plain-SGD step of size ``eta`` on a training term u changes the log-probability of a probe o by

    Delta log pi(o) = -eta * sum_k sum_r A_k(o) K_{k,r}(o, u) G_r(u) + O(eta^2)

with ``A = I - 1 pi^T`` (rows ``e_x - pi``), ``K`` the empirical NTK between the logits of probe
position k and training position r, and ``G_r = dL/dz_r`` the loss gradient at the logits of position
r. The probe's change is read at its own tokens: ``(e_{x_k} - pi_k)^T`` is row ``x_k`` of ``A_k``.
"""

from __future__ import annotations

import torch

from .checks import DPO_VARIANTS, dpo_settings, finite_float, float_tensor, int_targets, mask_or_ones

__all__ = [
    "DPO_VARIANTS",
    "a_matrix",
    "dpo_coefficients",
    "first_order_delta",
    "g_dpo",
    "g_dpo_shared_prompt",
    "g_sft",
    "predicted_delta_logits",
]

def a_matrix(logits: torch.Tensor) -> torch.Tensor:
    """``A(pi) = I - 1 pi^T``: the Jacobian of ``log softmax(z)`` with respect to ``z``.

    Row x is ``e_x - pi``, so ``Delta log pi = A Delta z`` to first order.

    Args:
        logits: ``(..., V)`` float.

    Returns:
        ``(..., V, V)``: ``A[..., i, j] = delta_ij - pi_j``.

    Example::

        >>> import torch
        >>> A = a_matrix(torch.zeros(3, dtype=torch.float64))
        >>> A
        tensor([[ 0.6667, -0.3333, -0.3333],
                [-0.3333,  0.6667, -0.3333],
                [-0.3333, -0.3333,  0.6667]], dtype=torch.float64)
        >>> A.sum(-1)
        tensor([0., 0., 0.], dtype=torch.float64)
    """
    logits = float_tensor("logits", logits, min_dim=1)
    v = logits.shape[-1]
    every = torch.arange(v, device=logits.device).expand(*logits.shape[:-1], v)
    return _a_rows(logits.unsqueeze(-2).expand(*logits.shape[:-1], v, v), every)


def _a_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rows ``A[x] = e_x - pi`` at the given tokens: ``(..., V), (...) -> (..., V)``.

    The one place A is computed: :func:`a_matrix` stacks it over all x, and the first-order
    predictions read the probe's rows from it.
    """
    pi = torch.softmax(logits, dim=-1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return onehot - pi


def g_sft(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``G = dL/dz = pi - e_target`` for the NLL ``L = -log softmax(z)[target]``, per position.

    Args:
        logits: ``(..., V)`` float; a sequence of M positions is ``(..., M, V)``.
        target: integer ids of shape ``logits.shape[:-1]``.

    Returns:
        ``(..., V)``, the gradient of ``-log pi(target)`` with respect to each position's logits.

    Example::

        >>> import torch
        >>> g_sft(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 2]))
        tensor([[-0.6667,  0.3333,  0.3333],
                [ 0.3333,  0.3333, -0.6667]], dtype=torch.float64)
    """
    logits = float_tensor("logits", logits, min_dim=1)
    target = int_targets("target", target, shape=logits.shape[:-1], vocab=logits.shape[-1])
    pi = torch.softmax(logits, dim=-1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return pi - onehot


def _dpo_dloss_dmargin(
    h: torch.Tensor, *, beta: float, variant: str, eps: float, margin: float
) -> torch.Tensor:
    """``dL/dh`` of the per-pair loss as a function of the log-ratio margin ``h``."""
    if variant == "sigmoid":
        return -beta * torch.sigmoid(-beta * h)
    if variant == "conservative":
        return beta * (-(1.0 - eps) * torch.sigmoid(-beta * h) + eps * torch.sigmoid(beta * h))
    if variant == "robust":
        return beta * (-(1.0 - eps) * torch.sigmoid(-beta * h) - eps * torch.sigmoid(beta * h)) / (1.0 - 2.0 * eps)
    if variant == "ipo":
        return 2.0 * (h - 1.0 / (2.0 * beta))
    if variant == "hinge":
        # the subgradient torch's relu uses: 0 at the kink
        return -beta * (beta * h < margin).to(h.dtype)
    raise ValueError(f"variant must be one of {DPO_VARIANTS}, got {variant!r}")


def dpo_coefficients(
    logratio_margin: torch.Tensor,
    *,
    beta: float,
    variant: str = "sigmoid",
    eps: float = 0.1,
    margin: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Derivatives ``(c_plus, c_minus)`` of the per-pair loss w.r.t. ``log pi(x+)`` and ``log pi(x-)``.

    Every variant is a function ``L(h)`` of the margin
    ``h = [log pi(x+) - log pi_ref(x+)] - [log pi(x-) - log pi_ref(x-)]`` (``alpha = beta h``), so
    ``c_plus = L'(h)`` and ``c_minus = -L'(h)``:

    - ``"sigmoid"`` (DPO; Rafailov et al. 2023, arXiv 2305.18290): ``L = -log sigma(beta h)``,
      ``L' = -beta sigma(-beta h)``;
    - ``"ipo"`` (IPO; Azar et al. 2024, arXiv 2310.12036, with ``tau = beta``):
      ``L = (h - 1/(2 beta))^2``, ``L' = 2 (h - 1/(2 beta))``;
    - ``"hinge"`` (SLiC-HF; Zhao et al. 2023, arXiv 2305.10425): ``L = relu(margin - beta h)``,
      ``L' = -beta 1[beta h < margin]`` (0 at the kink, as torch's relu);
    - ``"robust"`` (rDPO; Chowdhury, Kini, Natarajan 2024, arXiv 2403.00409, flip rate ``eps < 1/2``):
      ``L = [-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)``;
    - ``"conservative"`` (cDPO, label smoothing ``eps``; Mitchell 2023, "A note on DPO with noisy
      preferences and relationship to IPO"): ``L = -(1-eps) log sigma(beta h) - eps log sigma(-beta h)``.

    Args:
        logratio_margin: ``h``, any shape, float.
        beta: inverse temperature, > 0.
        variant: one of :data:`DPO_VARIANTS`.
        eps: flip rate (``robust``) or label smoothing (``conservative``).
        margin: the hinge margin (``hinge``).

    Returns:
        ``(c_plus, c_minus)``, each shaped like ``logratio_margin``.

    Example::

        >>> import torch
        >>> c_plus, c_minus = dpo_coefficients(torch.tensor(0.0, dtype=torch.float64), beta=0.5)
        >>> float(c_plus), float(c_minus)   # -beta sigma(0), +beta sigma(0)
        (-0.25, 0.25)
    """
    h = float_tensor("logratio_margin", logratio_margin)
    beta, eps, margin = dpo_settings(variant, beta, eps, margin)
    d = _dpo_dloss_dmargin(h, beta=beta, variant=variant, eps=eps, margin=margin)
    return d, -d


def _positions(name_logits: str, logits, name_target: str, target):
    """Validate a sequence: logits ``(..., M, V)``, targets ``(..., M)``; a bare ``(V,)`` is M = 1."""
    logits = float_tensor(name_logits, logits, min_dim=1)
    if logits.dim() == 1:
        logits = logits.unsqueeze(0)
        target = torch.as_tensor(target).reshape(1)
    target = int_targets(name_target, target, shape=logits.shape[:-1], vocab=logits.shape[-1])
    return logits, target


def g_dpo(
    logits_chosen: torch.Tensor,
    target_chosen: torch.Tensor,
    logits_rejected: torch.Tensor,
    target_rejected: torch.Tensor,
    logratio_margin: torch.Tensor,
    *,
    beta: float,
    variant: str = "sigmoid",
    nll_weight: float = 0.0,
    nll_tokens=None,
    mask_chosen=None,
    mask_rejected=None,
    eps: float = 0.1,
    margin: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(G_plus, G_minus)`` of the per-pair preference loss w.r.t. each position's logits.

    With ``log pi(x) = sum_m log softmax(z_m)[x_m]`` over unmasked positions,
    ``d log pi(x) / dz_m = e_{x_m} - pi_m``, hence (``c`` from :func:`dpo_coefficients`)

        G_plus_m  = c_plus  (e_{x+_m} - pi+_m) + (nll_weight / nll_tokens) (pi+_m - e_{x+_m})
        G_minus_m = c_minus (e_{x-_m} - pi-_m)

    For sigmoid DPO: ``G_plus = beta sigma(-beta h) (pi+ - e_{x+})`` and
    ``G_minus = -beta sigma(-beta h) (pi- - e_{x-})`` (Lemmas 3-4). The NLL term is the optional
    ``nll_weight * (-log pi(x+)) / nll_tokens`` on the chosen sequence (as in
    :func:`dynamics.losses.preference_loss`).

    Args:
        logits_chosen, logits_rejected: ``(..., M, V)`` float (chosen and rejected may differ in M).
        target_chosen, target_rejected: ``(..., M)`` integer ids.
        logratio_margin: ``h``, broadcastable to ``(...)``.
        beta, variant, eps, margin: as in :func:`dpo_coefficients`.
        nll_weight: weight of the NLL term on the chosen sequence (0 = pure preference loss).
        nll_tokens: normaliser of the NLL term, broadcastable to ``(...)`` (None = 1, a plain sum).
        mask_chosen, mask_rejected: ``(..., M)`` masks (1 = position counts), or None.

    Returns:
        ``(G_plus, G_minus)``, shaped like the chosen and rejected logits (zero at masked positions).

    Example::

        >>> import torch
        >>> z = torch.zeros(1, 3, dtype=torch.float64)               # M = 1, V = 3
        >>> gp, gm = g_dpo(z, torch.tensor([0]), z, torch.tensor([1]),
        ...                torch.tensor(0.0, dtype=torch.float64), beta=1.0)
        >>> gp + gm        # shared prompt, single token: beta sigma(-beta h) (e_{x-} - e_{x+})
        tensor([[-0.5000,  0.5000,  0.0000]], dtype=torch.float64)
    """
    lc, tc = _positions("logits_chosen", logits_chosen, "target_chosen", target_chosen)
    lr, tr = _positions("logits_rejected", logits_rejected, "target_rejected", target_rejected)
    h = float_tensor("logratio_margin", logratio_margin)
    mc = mask_or_ones("mask_chosen", mask_chosen, like=tc).to(lc.dtype)
    mr = mask_or_ones("mask_rejected", mask_rejected, like=tr).to(lr.dtype)
    nll_weight = finite_float("nll_weight", nll_weight)
    c_plus, c_minus = dpo_coefficients(h, beta=beta, variant=variant, eps=eps, margin=margin)
    g_plus = -c_plus[..., None, None] * g_sft(lc, tc)
    g_minus = -c_minus[..., None, None] * g_sft(lr, tr)
    if nll_weight != 0.0:
        scale = torch.as_tensor(1.0 if nll_tokens is None else nll_tokens, dtype=lc.dtype)
        if (scale <= 0).any():
            raise ValueError(f"nll_tokens must be > 0, got {nll_tokens!r}")
        g_plus = g_plus + (nll_weight / scale)[..., None, None] * g_sft(lc, tc)
    return g_plus * mc[..., None], g_minus * mr[..., None]


def g_dpo_shared_prompt(
    x_plus: torch.Tensor,
    x_minus: torch.Tensor,
    logratio_margin: torch.Tensor,
    *,
    vocab: int,
    beta: float,
    variant: str = "sigmoid",
    eps: float = 0.1,
    margin: float = 1.0,
) -> torch.Tensor:
    """Single-token DPO with chosen and rejected sharing one prompt: ``G = L'(h) (e_{x+} - e_{x-})``.

    Both tokens are read from the same logits z, so the ``pi`` terms of ``G_plus + G_minus`` cancel:
    for sigmoid DPO ``G_DPO = beta sigma(-beta h) (e_{x-} - e_{x+})`` whatever ``pi`` is.

    Args:
        x_plus, x_minus: integer ids, same shape ``(...)``.
        logratio_margin: ``h``, broadcastable to ``(...)``, float.
        vocab: V.
        beta, variant, eps, margin: as in :func:`dpo_coefficients`.

    Returns:
        ``(..., V)``.

    Example::

        >>> import torch
        >>> g_dpo_shared_prompt(torch.tensor(0), torch.tensor(2), torch.tensor(0.0, dtype=torch.float64),
        ...                     vocab=3, beta=2.0)
        tensor([-1.,  0.,  1.], dtype=torch.float64)
    """
    h = float_tensor("logratio_margin", logratio_margin)
    x_plus = torch.as_tensor(x_plus)
    x_minus = torch.as_tensor(x_minus)
    x_plus = int_targets("x_plus", x_plus, shape=x_plus.shape, vocab=int(vocab))
    x_minus = int_targets("x_minus", x_minus, shape=x_plus.shape, vocab=int(vocab))
    c_plus, _ = dpo_coefficients(h, beta=beta, variant=variant, eps=eps, margin=margin)
    onehot = torch.nn.functional.one_hot
    diff = onehot(x_plus, vocab).to(h.dtype) - onehot(x_minus, vocab).to(h.dtype)
    return c_plus[..., None] * diff


def _as_terms(kernel, g) -> list[tuple[torch.Tensor, torch.Tensor]]:
    many = isinstance(kernel, (list, tuple))
    if many != isinstance(g, (list, tuple)):
        raise ValueError("kernel and g must both be tensors or both be sequences of the same length")
    if not many:
        kernel, g = [kernel], [g]
    if len(kernel) != len(g) or not kernel:
        raise ValueError(f"kernel and g must pair up one to one, got {len(kernel)} kernels and {len(g)} gradients")
    terms = []
    for i, (k, gi) in enumerate(zip(kernel, g)):
        k = float_tensor(f"kernel[{i}]", k, min_dim=2)
        gi = float_tensor(f"g[{i}]", gi, min_dim=1)
        if k.dim() == 2 and gi.dim() == 1:
            k, gi = k[None, None], gi[None]
        elif k.dim() == 3 and gi.dim() == 1:  # (M_o, V_o, V_u) kernel against a single training position
            k, gi = k[:, None], gi[None]
        if k.dim() != 4 or gi.dim() != 2:
            raise ValueError(
                f"kernel[{i}] must be (M_o, M_u, V_o, V_u) or (V_o, V_u) and g[{i}] (M_u, V_u) or (V_u,); "
                f"got {tuple(k.shape)} and {tuple(gi.shape)}"
            )
        if k.shape[1] != gi.shape[0] or k.shape[3] != gi.shape[1]:
            raise ValueError(
                f"kernel[{i}] {tuple(k.shape)} does not match g[{i}] {tuple(gi.shape)}: "
                "need kernel.shape[1] == M_u and kernel.shape[3] == V_u"
            )
        terms.append((k, gi))
    m_o = {k.shape[0] for k, _ in terms}
    v_o = {k.shape[2] for k, _ in terms}
    if len(m_o) != 1 or len(v_o) != 1:
        raise ValueError(f"all kernels must share the probe's (M_o, V_o); got M_o {m_o}, V_o {v_o}")
    return terms


def predicted_delta_logits(kernel, g, lr: float) -> torch.Tensor:
    """First-order change of the probe's logits, ``Delta z_k = -eta sum_r K_{k,r} G_r``.

    Args:
        kernel: ``(M_o, M_u, V_o, V_u)`` or ``(V_o, V_u)`` (M = 1), or a list of them (one per
            training term, e.g. the chosen and rejected sequences of a DPO pair).
        g: ``(M_u, V_u)`` or ``(V_u,)``, or a list matching ``kernel``.
        lr: the SGD step size ``eta``.

    Returns:
        ``(M_o, V_o)``; ``(V_o,)`` when every kernel is a bare ``(V_o, V_u)``.

    Example::

        >>> import torch
        >>> K = torch.eye(3, dtype=torch.float64)
        >>> predicted_delta_logits(K, torch.tensor([0.5, -1.0, 0.5], dtype=torch.float64), 0.1)
        tensor([-0.0500,  0.1000, -0.0500], dtype=torch.float64)
    """
    lr = finite_float("lr", lr)
    bare = not isinstance(kernel, (list, tuple)) and kernel.dim() == 2
    if isinstance(kernel, (list, tuple)):
        bare = all(k.dim() == 2 for k in kernel)
    terms = _as_terms(kernel, g)
    dz = sum(torch.einsum("krvw,rw->kv", k, gi) for k, gi in terms)
    dz = -lr * dz
    return dz[0] if bare else dz


def first_order_delta(
    logits_probe: torch.Tensor, target_probe: torch.Tensor, kernel, g, lr: float
) -> torch.Tensor:
    """Predicted change of ``log pi(target_probe)``: ``-eta sum_k sum_r (e_{x_k} - pi_k)^T K_{k,r} G_r``.

    The probe's log-probability is summed over its M_o positions. Several training terms (the
    chosen and rejected sequences of a DPO pair, or several training samples) are passed as lists
    of kernels and gradients and summed.

    Args:
        logits_probe: ``(M_o, V_o)``, or ``(V_o,)`` for a single token.
        target_probe: ``(M_o,)`` integer ids, or a scalar for a single token.
        kernel: ``(M_o, M_u, V_o, V_u)`` or ``(V_o, V_u)`` for M = 1, or a list of them.
        g: ``(M_u, V_u)`` or ``(V_u,)`` (e.g. :func:`g_sft`), or a list matching ``kernel``.
        lr: the SGD step size ``eta``.

    Returns:
        A 0-dim tensor.

    Example (a bias-free linear head has ``K = <h_o, h_u> I``; SFT on the probe's own token
    raises it)::

        >>> import torch
        >>> z = torch.zeros(3, dtype=torch.float64)
        >>> first_order_delta(z, torch.tensor(0), torch.eye(3, dtype=torch.float64),
        ...                   g_sft(z, torch.tensor(0)), lr=0.1)
        tensor(0.0667, dtype=torch.float64)
    """
    logits_probe, target_probe = _positions("logits_probe", logits_probe, "target_probe", target_probe)
    dz = predicted_delta_logits(kernel, g, lr)
    if dz.dim() == 1:
        dz = dz[None]
    if dz.shape != logits_probe.shape:
        raise ValueError(
            f"the kernel's probe side {tuple(dz.shape)} does not match logits_probe {tuple(logits_probe.shape)}"
        )
    a_rows = _a_rows(logits_probe, target_probe)  # rows e_{x_k} - pi_k of A_k
    return (a_rows * dz).sum()

"""Argument checks shared by the theory modules and :mod:`dynamics.losses`: clear errors naming the
argument, raised before any work.

    >>> import torch
    >>> float_tensor("logits", torch.zeros(2)).dtype
    torch.float32
    >>> positive_float("lr", 0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number > 0, got 0
"""

from __future__ import annotations

import math

import torch

__all__ = ["DPO_VARIANTS", "dpo_settings", "finite_float", "float_tensor", "int_targets", "mask_or_ones",
           "positive_float"]

#: The DPO-family objectives (:func:`dynamics.theory.dpo_coefficients`, :func:`dynamics.losses.dpo_loss`).
DPO_VARIANTS = ("sigmoid", "ipo", "hinge", "robust", "conservative")

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def float_tensor(name: str, x, *, min_dim: int = 0) -> torch.Tensor:
    """``x`` as a floating tensor; a ValueError naming ``name`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating tensor (float32/float64), got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(x.shape)}")
    return x


def int_targets(name: str, target, *, shape: torch.Size, vocab: int) -> torch.Tensor:
    """``target`` as integer token ids of ``shape`` with values in ``[0, vocab)``."""
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    if target.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must hold integer token ids, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(target.shape)}; expected {tuple(shape)} (the logits' shape without V)"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= vocab):
        raise ValueError(
            f"{name} holds ids in [{int(target.min())}, {int(target.max())}], outside [0, {vocab}) for V={vocab}"
        )
    return target.long()


def positive_float(name: str, value) -> float:
    """``value`` as a finite float > 0."""
    v = float(value)
    if not (v > 0.0 and v < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def finite_float(name: str, value) -> float:
    """``value`` as a finite float."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def mask_or_ones(name: str, mask, *, like: torch.Tensor) -> torch.Tensor:
    """A float mask shaped like ``like`` (token ids); all ones when ``mask`` is None."""
    if mask is None:
        return torch.ones(like.shape, dtype=torch.get_default_dtype())
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected the targets' shape {tuple(like.shape)}")
    if mask.dtype == torch.bool or mask.dtype in _INT_DTYPES:
        return mask.to(torch.get_default_dtype())
    if torch.is_floating_point(mask):
        return mask
    raise ValueError(f"{name} must be bool, integer or float, got dtype {mask.dtype}")


def dpo_settings(variant: str, beta, eps, margin) -> tuple[float, float, float]:
    """``(beta, eps, margin)`` of a DPO ``variant`` as floats, checked: ``beta > 0``; ``eps`` in [0, 0.5)
    for ``robust`` (a flip rate), in [0, 1] for ``conservative`` (label smoothing).

    >>> dpo_settings("robust", 0.1, 0.6, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: robust DPO needs a flip rate eps in [0, 0.5), got eps=0.6
    """
    if variant not in DPO_VARIANTS:
        raise ValueError(f"variant must be one of {DPO_VARIANTS}, got {variant!r}")
    beta = positive_float("beta", beta)
    eps = finite_float("eps", eps)
    margin = finite_float("margin", margin)
    if variant == "robust" and not 0.0 <= eps < 0.5:
        raise ValueError(f"robust DPO needs a flip rate eps in [0, 0.5), got eps={eps}")
    if variant == "conservative" and not 0.0 <= eps <= 1.0:
        raise ValueError(f"conservative DPO needs a label-smoothing eps in [0, 1], got eps={eps}")
    return beta, eps, margin

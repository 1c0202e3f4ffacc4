"""The Bayes link between the branches, over a finite prompt set.

Understanding read as the posterior of generation:
``log pi(y_i | x0) = log pi(x0 | y_i) + log p(y_i) - log pi(x0)``, with the marginal
``pi(x0) = sum_j pi(x0 | y_j) p(y_j)``. Prompts run along the last axis everywhere.
"""

from __future__ import annotations

import math

import torch

from .checks import float_tensor

__all__ = [
    "bayes_delta_u",
    "bayes_delta_u_first_order",
    "bayes_log_posterior",
    "log_marginal",
    "posterior_weights",
]


def _log_joint(log_pi: torch.Tensor, log_prior) -> torch.Tensor:
    log_pi = float_tensor("log_pi_x0_given_y", log_pi, min_dim=1)
    n = log_pi.shape[-1]
    if log_prior is None:
        return log_pi - math.log(n)
    log_prior = float_tensor("log_prior", log_prior, min_dim=1)
    if log_prior.shape[-1] != n:
        raise ValueError(f"log_prior has {log_prior.shape[-1]} prompts, log_pi_x0_given_y has {n}")
    total = torch.logsumexp(log_prior, dim=-1)
    if (total.abs() > 1e-6).any():
        raise ValueError(f"log_prior must be a normalised log-distribution; its logsumexp is {total.tolist()}")
    return log_pi + log_prior


def _index(n: int, index: int) -> int:
    if not -n <= index < n:
        raise ValueError(f"index {index} is outside the {n} prompts")
    return index % n


def posterior_weights(log_pi_x0_given_y: torch.Tensor, log_prior=None) -> torch.Tensor:
    """Posterior weights ``w(y_i | x0) = pi(x0|y_i) p(y_i) / sum_j pi(x0|y_j) p(y_j)`` (softmax in log space).

    Args:
        log_pi_x0_given_y: ``(..., N)`` float, ``log pi(x0 | y_i)`` for each of N prompts.
        log_prior: ``(..., N)`` normalised ``log p(y_i)``; None = uniform.

    Returns:
        ``(..., N)``, summing to 1 over the last axis.

    Example::

        >>> import torch
        >>> posterior_weights(torch.log(torch.tensor([0.3, 0.1], dtype=torch.float64)))
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    return torch.softmax(_log_joint(log_pi_x0_given_y, log_prior), dim=-1)


def log_marginal(log_pi_x0_given_y: torch.Tensor, log_prior=None) -> torch.Tensor:
    """``log pi(x0) = logsumexp_i [log pi(x0 | y_i) + log p(y_i)]``.

    Args:
        log_pi_x0_given_y: ``(..., N)`` float.
        log_prior: ``(..., N)`` normalised ``log p(y_i)``; None = uniform (``p = 1/N``).

    Returns:
        ``(...)``.

    Example::

        >>> import torch
        >>> log_marginal(torch.log(torch.tensor([0.3, 0.1], dtype=torch.float64))).exp()
        tensor(0.2000, dtype=torch.float64)
    """
    return torch.logsumexp(_log_joint(log_pi_x0_given_y, log_prior), dim=-1)


def bayes_log_posterior(log_pi_x0_given_y: torch.Tensor, log_prior=None) -> torch.Tensor:
    """The understanding implied by generation: ``log pi(y_i | x0) = log pi(x0|y_i) + log p(y_i) - log pi(x0)``.

    Args:
        log_pi_x0_given_y: ``(..., N)`` float.
        log_prior: ``(..., N)`` normalised ``log p(y_i)``; None = uniform.

    Returns:
        ``(..., N)`` log-probabilities over the prompts.

    Example::

        >>> import torch
        >>> bayes_log_posterior(torch.log(torch.tensor([0.3, 0.1], dtype=torch.float64))).exp()
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    return torch.log_softmax(_log_joint(log_pi_x0_given_y, log_prior), dim=-1)


def bayes_delta_u(
    delta_g_all: torch.Tensor, log_pi_x0_given_y: torch.Tensor, log_prior=None, *, index: int = 0
) -> torch.Tensor:
    """Exact ``Delta U = Delta G - Delta log pi(x0)`` for any step, from the changes of every ``log pi(x0|y_i)``.

    ``U = log pi(y0 | x0)`` under the Bayes link; ``Delta G = delta_g_all[..., index]`` and
    ``Delta log pi(x0) = log_marginal(l + delta) - log_marginal(l)`` with ``l`` the values before.

    Args:
        delta_g_all: ``(..., N)`` changes of ``log pi(x0 | y_i)``.
        log_pi_x0_given_y: ``(..., N)`` values before the step.
        log_prior: ``(..., N)`` normalised, unchanged by the step; None = uniform.
        index: which prompt is the probe's ``y0``.

    Returns:
        ``(...)``.

    Example (raising the probe's prompt alone raises U by less than G)::

        >>> import torch
        >>> l = torch.log(torch.tensor([0.3, 0.1], dtype=torch.float64))
        >>> bayes_delta_u(torch.tensor([0.1, 0.0], dtype=torch.float64), l)
        tensor(0.0241, dtype=torch.float64)
    """
    delta = float_tensor("delta_g_all", delta_g_all, min_dim=1)
    log_pi = float_tensor("log_pi_x0_given_y", log_pi_x0_given_y, min_dim=1)
    if delta.shape[-1] != log_pi.shape[-1]:
        raise ValueError(f"delta_g_all has {delta.shape[-1]} prompts, log_pi_x0_given_y has {log_pi.shape[-1]}")
    i = _index(delta.shape[-1], index)
    after = log_marginal(log_pi + delta, log_prior)
    before = log_marginal(log_pi, log_prior)
    return delta[..., i] - (after - before)


def bayes_delta_u_first_order(delta_g_all: torch.Tensor, weights: torch.Tensor, *, index: int = 0) -> torch.Tensor:
    """``Delta U ~= sum_{i != 0} w_i [Delta G(x0|Y0) - Delta G(x0|Y_i)]`` (first order in the changes).

    Args:
        delta_g_all: ``(..., N)`` changes of ``log pi(x0 | y_i)`` (measured or predicted).
        weights: ``(..., N)`` posterior weights before the step (:func:`posterior_weights`).
        index: which prompt is the probe's ``y0``.

    Returns:
        ``(...)``.

    Example::

        >>> import torch
        >>> bayes_delta_u_first_order(torch.tensor([0.1, 0.0], dtype=torch.float64),
        ...                           torch.tensor([0.75, 0.25], dtype=torch.float64))
        tensor(0.0250, dtype=torch.float64)
    """
    delta = float_tensor("delta_g_all", delta_g_all, min_dim=1)
    w = float_tensor("weights", weights, min_dim=1)
    if delta.shape[-1] != w.shape[-1]:
        raise ValueError(f"delta_g_all has {delta.shape[-1]} prompts, weights has {w.shape[-1]}")
    i = _index(delta.shape[-1], index)
    others = torch.ones(delta.shape[-1], dtype=torch.bool, device=delta.device)
    others[i] = False
    terms = w * (delta[..., i : i + 1] - delta)
    return terms[..., others].sum(-1)

"""Transfer from generation to understanding, read before training: the cross-branch kernel as a
predictor of the understanding's change, and the distance from the Bayes link.

**The cross kernel.** One plain-SGD step of size ``eta`` on the generation objective of an accepted
set ``U`` changes any differentiable output ``o`` of the model by

    ``Delta o = -eta sum_u K(o, Y_u) G(u) + O(eta^2)``,  ``K(o, Y_u) = J_o J_gen(u)^T``

(the paper's Section 5), the eNTK restricted to the generation-trainable parameters (what a
generation-only step moves), ``G(u) = dL/dz(u)`` the loss gradient at ``u``'s generation logits (SFT:
``w_u (softmax(z_u) - e_{x_u})``, ``w_u`` the pair's weight in the loss). With ``o`` the understanding's
``log P(yes | x_p, y_p)`` on a probe pair ``p``:

- the *cross kernel* ``K(und_p, gen_U)`` ``(|U|, *lead, V)`` per probe: what the understanding of ``p``
  shares with the generation of the accepted set. It is identically zero when no generation-trainable
  parameter reaches the understanding (a decoupled model);
- ``Delta U_p = -eta sum_u K(und_p, gen_u) G(u)``, the predicted change of ``log P(yes)``. The same
  contraction with ``o = log pi(x_p | y_p)`` gives ``Delta G_p`` (Proposition 1). ``log P(yes)`` is a
  log-probability itself, so the paper's ``A(o) = I - 1 pi^T`` is folded into its gradient:
  ``A(o) K(z_o, z_u) = K(log P(yes)_o, z_u)``;
- *alignment*: the cosine between the vectors ``(Delta U_p)_p`` and ``(Delta G_p)_p`` over the probes,
  and per probe whether the two share a sign (the paper's aligned dynamics);
- the *dominance ratio* ``||K(Y_0, Y_U)||_F / ||K(Y_i, Y_U)||_F`` (aligned dynamics when it is large):
  ``Y_0`` the probe's generation input, ``Y_i`` the probe's image after its strongest competing prompt
  (largest generator posterior ``w(y_i | x_0)``, ``i != 0``), ``Y_U`` the distinct generation inputs of
  the accepted set.

An epoch of minibatch steps, read at the starting parameters, changes ``o`` by the sum of its steps'
first-order changes: the prediction here is that first-order sum (each pair's ``G`` weighted by
``1 / |its minibatch|``, as the loop's minibatch mean is), compared with the change a real epoch of the
loop (:func:`dynamics.clo.run_clo`, the scale's optimiser) makes. Under Adam the kernel is not
``J J^T``: the prediction is then the SGD direction, read for its sign and for the size correlation.

**The Bayes link.** The paper ties the branches by ``log pi(y | x) = log pi(x | y) - log pi(x) + C``
over a finite prompt set. :func:`bayes_link` measures how far a model is from it: the Pearson and
Spearman correlation between the understanding's ``log P(yes | x, y)`` and the generator's posterior
``log pi(y | x)`` (uniform prior over the prompt set) over a set of (prompt, image) pairs, and a
calibration curve (mean ``P(yes)`` in quantile bins of the posterior). ``pearson_logit`` correlates
``logit P(yes)`` instead, which is exactly 1 for the simulator's ``bayes`` coupling (an affine map of
the posterior). Call it before and after CLO (:func:`bayes_link_on_epoch` does so from the loop).

The core is generic over functional models (:class:`Branches`: a parameter dict, the generation
logits and ``log P(yes)`` of one example; :class:`Pairs`); the kernels are :mod:`dynamics.kernels`'.
Adapters: :func:`sim_branches` (the simulator), and for models whose forward pass is not
vmap-compatible (the toy transformer) the module form :func:`dynamics.kernels.first_order_probe`
(:func:`toy_transfer`). :func:`transfer_report` is the experiment at either scale.

Example (a two-branch model whose understanding shares the trunk)::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> p = {"trunk": torch.randn(4, 3, generator=g, dtype=torch.float64),
    ...      "gen": torch.randn(5, 4, generator=g, dtype=torch.float64),
    ...      "und": torch.randn(4, generator=g, dtype=torch.float64)}
    >>> gen = lambda p, h: p["gen"] @ torch.tanh(p["trunk"] @ h)            # (V,) = (5,)
    >>> und = lambda p, h: torch.nn.functional.logsigmoid(p["und"] @ torch.tanh(p["trunk"] @ h))
    >>> b = Branches(p, ["trunk", "gen"], gen, und)
    >>> h = torch.randn(4, 3, generator=g, dtype=torch.float64)              # 4 prompts' features
    >>> acc = Pairs(h[[0, 1, 1]], torch.tensor([2, 0, 3]), weights=torch.full((3,), 1 / 3))
    >>> probes = Pairs(h[[2, 3]], torch.tensor([1, 4]), und_inputs=h[[2, 3]])
    >>> out = predict(b, probes, acc, lr=0.1)
    >>> out["cross_kernel"].shape                     # (probes, distinct accepted inputs, V)
    torch.Size([2, 2, 5])
    >>> torch.allclose(out["delta_u"], first_order_delta(b, b.und_values(probes), acc, lr=0.1))
    True
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import vmap

from dynamics.kernels import entk, first_order_probe, grad_inner_product, select_params
from dynamics.study import stats as _stats
from dynamics.theory import bayes_log_posterior, g_sft

__all__ = [
    "BatchRecorder",
    "Branches",
    "Pairs",
    "accepted_pairs",
    "alignment",
    "bayes_link",
    "bayes_link_on_epoch",
    "bayes_link_on_samples",
    "cosine",
    "cross_kernel",
    "dominance_ratio",
    "first_order_delta",
    "fixed_samples",
    "format_report",
    "generator_log_posterior",
    "kernel_delta",
    "pearson",
    "predict",
    "report_rows",
    "sft_logit_gradient",
    "sign_agreement",
    "sim_bayes_link",
    "sim_branches",
    "sim_pairs",
    "sim_transfer",
    "spearman",
    "toy_bayes_link",
    "toy_transfer",
    "transfer_report",
]

Params = Mapping[str, torch.Tensor]

# --------------------------------------------------------------------------------------------------
# small statistics over probes (float64, non-finite entries dropped pairwise)


def _pair(a, b, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{name}: the two vectors have {a.numel()} and {b.numel()} entries")
    keep = torch.isfinite(a) & torch.isfinite(b)
    return a[keep], b[keep]


def pearson(a, b) -> float:
    """Pearson correlation of two vectors over their finite pairs (:func:`dynamics.study.stats.pearson`).

    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    0.9933...
    """
    return _stats.pearson(*(t.tolist() for t in _pair(a, b, "pearson")))


def spearman(a, b) -> float:
    """Spearman rank correlation over the finite pairs (:func:`dynamics.study.stats.spearman`).

    >>> spearman([1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 64.0]), spearman([1.0, 1.0, 2.0], [3.0, 3.0, 1.0])
    (1.0, -1.0)
    """
    return _stats.spearman(*(t.tolist() for t in _pair(a, b, "spearman")))


def cosine(a, b) -> float:
    """Cosine between two vectors (NaN when either is zero).

    >>> cosine([1.0, 0.0], [1.0, 1.0])
    0.7071...
    """
    a, b = _pair(a, b, "cosine")
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return float(tol)


def sign_agreement(predicted, measured, *, tol: float) -> dict:
    """Share of probes whose predicted change has the sign of the measured one, among the probes whose
    measured ``|change| > tol`` (a smaller change has no reliable sign; a zero prediction disagrees).

    >>> sign_agreement([1.0, -1.0, 2.0, 0.5], [0.5, -2.0, -1.0, 1e-9], tol=1e-6)
    {'agreement': 0.666..., 'n': 3, 'tol': 1e-06}
    """
    tol = _check_tol(tol)
    p, m = _pair(predicted, measured, "sign_agreement")
    counted = m.abs() > tol
    n = int(counted.sum())
    agree = int((torch.sign(p[counted]) == torch.sign(m[counted])).sum())
    return {"agreement": agree / n if n else math.nan, "n": n, "tol": tol}


def alignment(delta_u, delta_g) -> dict:
    """How the induced ``Delta U`` and ``Delta G`` directions line up over the probes: their
    ``cosine``, and ``same_sign``, the share of probes (among the ``n`` where both are nonzero) whose
    two changes share a sign.

    >>> alignment([1.0, -2.0, 0.0], [2.0, -1.0, 3.0])
    {'cosine': 0.478..., 'same_sign': 1.0, 'n': 2}
    """
    u, g = _pair(delta_u, delta_g, "alignment")
    both = (u != 0) & (g != 0)
    n = int(both.sum())
    same = int((torch.sign(u[both]) == torch.sign(g[both])).sum())
    return {"cosine": cosine(u, g), "same_sign": same / n if n else math.nan, "n": n}


# --------------------------------------------------------------------------------------------------
# the generic core: a unified model as functions of its parameters


@dataclass
class Branches:
    """A unified model (one replica) as functions of its parameters.

    ``params``: every tensor the two functions read (name -> tensor, one float dtype for the
    trainable ones); ``trainable``: the names a generation-only update moves (the eNTK's blocks);
    ``gen_logits(params, x)``: the generation logits ``(*lead, V)`` of ONE example (``(V,)`` for a
    single image token, ``(M, V)`` teacher-forced over ``M`` tokens); ``log_p_yes(params, x)``: the
    understanding's ``log P(yes)`` of ONE example, a scalar. Both must be vmap-compatible (see
    :mod:`dynamics.kernels`).
    """

    params: Params
    trainable: Sequence[str]
    gen_logits: Callable[[Params, Any], torch.Tensor]
    log_p_yes: Callable[[Params, Any], torch.Tensor]

    def __post_init__(self) -> None:
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]
        self.trainable = list(self.trainable)
        if not self.trainable:
            raise ValueError("Branches: trainable is empty: name the generation-trainable parameters")
        select_params(self.params, self.trainable)  # ValueError naming unknown names, mixed dtypes
        for name in ("gen_logits", "log_p_yes"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Branches.{name} must be a callable fn(params, x), got {getattr(self, name)!r}")

    def gen_logprob(self, pairs: Pairs) -> Callable[[Params], torch.Tensor]:
        """``f(params) -> (N,)``: ``log pi(x | y)`` of every pair (summed over its image tokens)."""

        def f(params):
            z = vmap(self.gen_logits, in_dims=(None, 0))(params, pairs.gen_inputs)  # (N, *lead, V)
            lp = torch.log_softmax(z, -1).gather(-1, pairs.targets.unsqueeze(-1)).squeeze(-1)
            return lp.reshape(lp.shape[0], -1).sum(1)

        return f

    def und_values(self, pairs: Pairs) -> Callable[[Params], torch.Tensor]:
        """``f(params) -> (N,)``: ``log P(yes)`` of every pair."""
        if pairs.und_inputs is None:
            raise ValueError("Pairs.und_inputs is None: the probes need the understanding's inputs")

        def f(params):
            return vmap(lambda p, x: self.log_p_yes(p, x).reshape(()), in_dims=(None, 0))(params, pairs.und_inputs)

        return f

    def with_params(self, params: Params) -> Branches:
        """The same model at other parameters (e.g. after training)."""
        return dataclasses.replace(self, params=params)


def _size(x: Any, name: str) -> int:
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            raise ValueError(f"{name} is a 0-d tensor; stack examples on dim 0")
        return x.shape[0]
    if isinstance(x, (tuple, list)) and x:
        sizes = {_size(t, f"{name}[{i}]") for i, t in enumerate(x)}
    elif isinstance(x, Mapping) and x:
        sizes = {_size(t, f"{name}[{k!r}]") for k, t in x.items()}
    else:
        raise ValueError(f"{name} must be a tensor or a tuple/list/dict of tensors, got {type(x).__name__}")
    if len(sizes) != 1:
        raise ValueError(f"{name}: its tensors disagree on the number of examples (dim 0): {sorted(sizes)}")
    return sizes.pop()


@dataclass
class Pairs:
    """(prompt, image) pairs as the branch functions read them, stacked on dim 0.

    ``gen_inputs``: one generation example each (the simulator: the prompt id; a sequence model:
    prompt and image); ``targets`` ``(N, *lead)``: the image token ids the generation logits score;
    ``und_inputs``: one understanding example each (probes); ``weights`` ``(N,)``: each pair's weight in
    the loss (an accepted set; default 1); ``labels`` ``(N,)`` bool: ground-truth aligned (probes).
    """

    gen_inputs: Any
    targets: torch.Tensor
    und_inputs: Any = None
    weights: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = _size(self.gen_inputs, "Pairs.gen_inputs")
        if n == 0:
            raise ValueError("Pairs: no pair (gen_inputs has 0 examples)")
        self.targets = torch.as_tensor(self.targets)
        if self.targets.dim() == 0 or self.targets.shape[0] != n:
            raise ValueError(f"Pairs.targets has shape {tuple(self.targets.shape)}, expected ({n}, ...) for {n} pairs")
        if self.targets.is_floating_point():
            raise ValueError(f"Pairs.targets must hold integer token ids, got {self.targets.dtype}")
        self.targets = self.targets.long()
        if self.und_inputs is not None and _size(self.und_inputs, "Pairs.und_inputs") != n:
            raise ValueError(f"Pairs.und_inputs has {_size(self.und_inputs, 'Pairs.und_inputs')} examples, "
                             f"gen_inputs {n}")
        for name in ("weights", "labels"):
            v = getattr(self, name)
            if v is not None:
                v = torch.as_tensor(v)
                if tuple(v.shape) != (n,):
                    raise ValueError(f"Pairs.{name} has shape {tuple(v.shape)}, expected ({n},)")
                setattr(self, name, v)
        if self.weights is not None:
            w = self.weights.to(torch.float64)
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise ValueError(f"Pairs.weights must be finite and >= 0, got min {float(w.min())}")
        if self.labels is not None:
            self.labels = self.labels.bool()

    def __len__(self) -> int:
        return self.targets.shape[0]


def sft_logit_gradient(branches: Branches, accepted: Pairs) -> torch.Tensor:
    """``G(u) = w_u (softmax(z_u) - e_{x_u})`` ``(N, *lead, V)``: the SFT loss gradient at each accepted
    pair's generation logits (the loss ``-sum_u w_u log pi(x_u | y_u)``), without graph."""
    with torch.no_grad():
        z = vmap(branches.gen_logits, in_dims=(None, 0))(dict(branches.params), accepted.gen_inputs)
        g = g_sft(z, accepted.targets)
    if accepted.weights is not None:
        g = g * accepted.weights.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1)))
    return g


def _distinct(inputs: Any, g: torch.Tensor | None = None):
    """Distinct examples of a tensor batch and (with ``g``) ``g`` summed over repeats: the kernel of a
    pair depends only on its input, so repeats add their ``G``. Other batches are returned as they are."""
    if not isinstance(inputs, torch.Tensor):
        return inputs, g, None
    uniq, inv = torch.unique(inputs, dim=0, return_inverse=True)
    if g is None:
        return uniq, None, inv
    summed = torch.zeros((len(uniq), *g.shape[1:]), dtype=g.dtype).index_add_(0, inv, g)
    return uniq, summed, inv


def cross_kernel(branches: Branches, und_inputs: Any, gen_inputs: Any, *, chunk_size: int = 8) -> torch.Tensor:
    """The cross kernel ``K(und_p, gen_u) = J_{log P(yes)}(p) J_gen(u)^T`` ``(n_p, N_u, *lead, V)`` over
    the trainable parameters, from :func:`dynamics.kernels.entk` (one vjp per probe, pushed through the
    generation side by a jvp). Exactly zero where no trainable parameter reaches the understanding.

    >>> import torch
    >>> p = {"w": torch.ones(2, 3, dtype=torch.float64), "u": torch.ones(3, dtype=torch.float64)}
    >>> b = Branches(p, ["w"], lambda p, x: p["w"] @ x, lambda p, x: (p["u"] @ x).sigmoid().log())
    >>> float(cross_kernel(b, torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)).abs().max())
    0.0
    """

    def und1(p, x):
        return branches.log_p_yes(p, x).reshape(1)

    k = entk(branches.gen_logits, und1, branches.params, gen_inputs, und_inputs, blocks=branches.trainable,
             implementation="vjp_jvp", chunk_size=chunk_size)  # (N_u, n_p, *lead, V, 1)
    return k[..., 0].movedim(1, 0)


def kernel_delta(kernel: torch.Tensor, g: torch.Tensor, *, lr: float) -> torch.Tensor:
    """``-lr sum_u K(o, u) G(u)`` per probe: ``kernel`` ``(n_p, N_u, *lead, V)``, ``g`` ``(N_u, *lead, V)``.

    >>> kernel_delta(torch.ones(2, 3, 4), torch.full((3, 4), 0.5), lr=0.1)
    tensor([-0.6000, -0.6000])
    """
    lr = _check_lr(lr)
    if kernel.shape[1:] != g.shape:
        raise ValueError(f"kernel_delta: kernel {tuple(kernel.shape)} does not match G {tuple(g.shape)} "
                         "(expected kernel (n_p, *G.shape))")
    return -lr * (kernel * g.to(kernel.dtype)).reshape(kernel.shape[0], -1).sum(1)


def first_order_delta(branches: Branches, values: Callable[[Params], torch.Tensor], accepted: Pairs, *,
                      lr: float, g: torch.Tensor | None = None) -> torch.Tensor:
    """The first-order change of ``values(params)`` (one entry per probe) after one SGD step of size
    ``lr`` on the SFT loss of ``accepted`` over the trainable parameters, by
    :func:`dynamics.kernels.grad_inner_product` (no kernel formed): ``lr <grad values, -grad L>`` with
    ``grad L = sum_u J_gen(u)^T G(u)``. ``g``: ``G`` if already computed."""
    lr = _check_lr(lr)
    g = sft_logit_gradient(branches, accepted) if g is None else g
    inputs, g, _ = _distinct(accepted.gen_inputs, g)

    def objective(params):  # -sum_u <z_u, G(u)>, G held fixed: its gradient is -grad L
        z = vmap(branches.gen_logits, in_dims=(None, 0))(params, inputs)
        return -(z * g.to(z.dtype)).sum()

    return grad_inner_product(values, objective, branches.params, lr=lr, blocks=branches.trainable)


def predict(branches: Branches, probes: Pairs, accepted: Pairs, *, lr: float) -> dict[str, torch.Tensor]:
    """Per probe, before any training: the cross kernel against the accepted set's distinct generation
    inputs (``cross_kernel`` ``(n_p, N_u, *lead, V)`` and its Frobenius norm ``cross_kernel_norm``),
    the first-order ``delta_u`` (its contraction with ``G``) and ``delta_g`` (of ``log pi(x_p | y_p)``),
    for one SGD step of size ``lr`` on ``accepted`` (weights included: a minibatch mean is weights
    ``1/|batch|``)."""
    lr = _check_lr(lr)
    if probes.und_inputs is None:
        raise ValueError("predict: probes.und_inputs is None: the probes need the understanding's inputs")
    g = sft_logit_gradient(branches, accepted)
    inputs, g_sum, _ = _distinct(accepted.gen_inputs, g)
    k = cross_kernel(branches, probes.und_inputs, inputs)
    return {
        "cross_kernel": k,
        "cross_kernel_norm": k.reshape(k.shape[0], -1).norm(dim=1),
        "delta_u": kernel_delta(k, g_sum, lr=lr),
        "delta_g": first_order_delta(branches, branches.gen_logprob(probes), accepted, lr=lr, g=g),
    }


def dominance_ratio(branches: Branches, probe_inputs: Any, competitor_inputs: Any, train_inputs: Any) -> torch.Tensor:
    """``||K(Y_0, Y_U)||_F / ||K(Y_i, Y_U)||_F`` per probe (float64 as the parameters): ``probe_inputs``
    the probes' generation inputs ``Y_0``, ``competitor_inputs`` the same images after each probe's
    competing prompt ``Y_i``, ``train_inputs`` the accepted set's generation inputs ``Y_U`` (each
    distinct input once). Explicit generation eNTK blocks (:func:`dynamics.kernels.entk`) over the
    trainable parameters; tensor batches are reduced to their distinct examples first."""
    n = _size(probe_inputs, "probe_inputs")
    if _size(competitor_inputs, "competitor_inputs") != n:
        raise ValueError(f"dominance_ratio: {n} probes but {_size(competitor_inputs, 'competitor_inputs')} competitors")
    train, _, _ = _distinct(train_inputs)
    fn = branches.gen_logits
    if isinstance(probe_inputs, torch.Tensor) and isinstance(competitor_inputs, torch.Tensor):
        both, _, inv = _distinct(torch.cat([probe_inputs, competitor_inputs]))
        k = entk(fn, fn, branches.params, both, train, blocks=branches.trainable)
        norms = k.reshape(k.shape[0], -1).norm(dim=1)[inv]
        return norms[:n] / norms[n:]
    norms = [entk(fn, fn, branches.params, x, train, blocks=branches.trainable).flatten(1).norm(dim=1)
             for x in (probe_inputs, competitor_inputs)]
    return norms[0] / norms[1]


# --------------------------------------------------------------------------------------------------
# the Bayes link


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    return bins


def generator_log_posterior(log_pi: torch.Tensor) -> torch.Tensor:
    """``log pi(y | x)`` ``(..., P, V)`` from the generator's ``log pi(x | y)`` table ``(..., P, V)``
    (prompts on dim -2), uniform prior over the ``P`` prompts.

    >>> generator_log_posterior(torch.log(torch.tensor([[0.3, 0.7], [0.1, 0.9]]))).exp()
    tensor([[0.7500, 0.4375],
            [0.2500, 0.5625]])
    """
    if log_pi.dim() < 2:
        raise ValueError(f"log_pi must be (..., P, V), got shape {tuple(log_pi.shape)}")
    return bayes_log_posterior(log_pi.transpose(-1, -2)).transpose(-1, -2)


def bayes_link(log_p_yes, log_posterior, *, bins: int = 10) -> dict:
    """How far the understanding is from the generator's posterior over one set of pairs.

    ``log_p_yes``, ``log_posterior``: the understanding's ``log P(yes | x, y)`` and the generator's
    ``log pi(y | x)`` of the same pairs (any shape, flattened). Returns ``pearson`` and ``spearman``
    (``log P(yes)`` against ``log pi(y | x)``), ``pearson_logit`` (``logit P(yes)`` against it), ``n``
    and ``calibration``: ``bins`` equal-count bins of the posterior, each ``{posterior, log_posterior,
    p_yes, n}`` (the bin's mean ``pi(y | x)``, mean ``log pi(y | x)``, mean ``P(yes)``, size).

    >>> lp = torch.log(torch.tensor([0.1, 0.2, 0.4, 0.8]))
    >>> out = bayes_link(torch.nn.functional.logsigmoid(3 * lp), lp, bins=2)
    >>> out["spearman"], round(out["pearson_logit"], 12), [c["n"] for c in out["calibration"]]
    (1.0, 1.0, [2, 2])
    """
    bins = _check_bins(bins)
    y = torch.as_tensor(log_p_yes, dtype=torch.float64).reshape(-1)
    x = torch.as_tensor(log_posterior, dtype=torch.float64).reshape(-1)
    if y.shape != x.shape:
        raise ValueError(f"bayes_link: log_p_yes has {y.numel()} entries, log_posterior {x.numel()}")
    for name, v in (("log_p_yes", y), ("log_posterior", x)):
        if bool((v > 1e-9).any()):
            raise ValueError(f"bayes_link: {name} holds log-probabilities (<= 0), got a maximum of {float(v.max())}")
    keep = torch.isfinite(x) & ~torch.isnan(y)
    x, y = x[keep], y[keep]
    logit = y - torch.log((-torch.expm1(y)).clamp_min(1e-300))  # log p - log(1 - p)
    cal = []
    if x.numel():
        order = torch.argsort(x, stable=True)
        for part in torch.tensor_split(order, min(bins, x.numel())):
            cal.append({"posterior": float(x[part].exp().mean()), "log_posterior": float(x[part].mean()),
                        "p_yes": float(y[part].exp().mean()), "n": int(part.numel())})
    return {"pearson": pearson(y, x), "spearman": spearman(y, x), "pearson_logit": pearson(logit, x),
            "n": int(x.numel()), "calibration": cal}


def _log_p_yes_of(model, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The understanding's ``log P(yes)`` ``(R, B, K)`` by the model's own definition."""
    if hasattr(model, "log_p_yes"):
        return model.log_p_yes(prompt_ids, images)
    if hasattr(model, "und_logit"):
        return F.logsigmoid(model.und_logit(prompt_ids, images))
    return torch.log(model.judge(prompt_ids, images).clamp_min(1e-300))


def bayes_link_on_samples(model, prompt_ids, images, *, bins: int = 10, image_chunk: int = 64) -> list[dict]:
    """:func:`bayes_link` of any protocol model (:class:`dynamics.protocol.UnifiedModel`) on fixed
    (prompt, image) pairs, one dict per replica: ``prompt_ids`` ``(B,)`` into ``model.prompts``,
    ``images`` ``(R, B, K, M)``. The generator's posterior is over the whole prompt set, by teacher
    forcing every image after every prompt (``len(model.prompts)`` passes per image, in chunks of
    ``image_chunk`` images); ``log P(yes)`` is the model's own (``log_p_yes``, else the logit of its
    ``und_logit``, else ``log judge``)."""
    bins = _check_bins(bins)
    if isinstance(image_chunk, bool) or not isinstance(image_chunk, int) or image_chunk < 1:
        raise ValueError(f"image_chunk must be an integer >= 1, got {image_chunk!r}")
    prompt_ids = torch.as_tensor(prompt_ids).long()
    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[1] != prompt_ids.numel():
        raise ValueError(f"images must be (R, B, K, M) with B = {prompt_ids.numel()} prompts, got {tuple(images.shape)}")
    R, B, K, M = images.shape
    P = len(model.prompts)
    with torch.no_grad():
        yes = _log_p_yes_of(model, prompt_ids, images).double().reshape(R, B * K)
        flat = images.reshape(R, B * K, M)
        own = prompt_ids.repeat_interleave(K)
        parts = []
        for s in range(0, B * K, image_chunk):
            x = flat[:, s:s + image_chunk]  # (R, n, M): every image after every prompt
            lp = model.image_logprob(torch.arange(P), x[:, None].expand(R, P, x.shape[1], M).contiguous())
            parts.append(lp.double())  # (R, P, n)
        log_pi = torch.cat(parts, -1)  # (R, P, B*K)
        post = generator_log_posterior(log_pi)[:, own, torch.arange(B * K)]  # (R, B*K)
    return [bayes_link(yes[r], post[r], bins=bins) for r in range(R)]


def sim_bayes_link(model, *, bins: int = 10) -> list[dict]:
    """:func:`bayes_link` of a :class:`~dynamics.sim.SimModel` on its full ``(P, V)`` table, one dict per
    replica: every (prompt, token) pair; the posterior is the *generation* branch's (its own logits,
    not the understanding's view)."""
    ids = torch.arange(model.num_prompts)
    with torch.no_grad():
        log_pi = torch.log_softmax(model.gen_logits(ids).double(), -1)  # (R, P, V)
        yes = F.logsigmoid(model.und_logit(ids).double())  # (R, P, V)
    post = generator_log_posterior(log_pi)
    return [bayes_link(yes[r], post[r], bins=bins) for r in range(model.replicas)]


def toy_bayes_link(model, *, samples: tuple[torch.Tensor, torch.Tensor] | None = None, per_prompt: int = 2,
                   seed: int = 0, bins: int = 10) -> list[dict]:
    """:func:`bayes_link` of a toy model (:class:`~dynamics.toy.model.ToyModel` or
    :class:`~dynamics.toy.bayes.BayesLinked`) on a fixed sample set: ``samples = (prompt_ids, images)``
    (e.g. a run's evaluation samples, the same before and after CLO), or ``per_prompt`` samples of every
    prompt drawn now with ``seed`` (:func:`fixed_samples`; draw them once and pass them to both calls)."""
    ids, images = samples if samples is not None else fixed_samples(model, per_prompt=per_prompt, seed=seed)
    return bayes_link_on_samples(model, ids, images, bins=bins)


def fixed_samples(model, *, per_prompt: int = 2, seed: int = 0, prompt_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_ids, images)``: ``per_prompt`` samples of every prompt (or of ``prompt_ids``) from the
    model now, deterministic in ``seed``: a sample set for the Bayes link before and after training."""
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise ValueError(f"per_prompt must be an integer >= 1, got {per_prompt!r}")
    ids = torch.arange(len(model.prompts)) if prompt_ids is None else torch.as_tensor(prompt_ids).long()
    return ids, model.sample(ids, per_prompt, seed=seed)


def bayes_link_on_epoch(model, *, samples: tuple[torch.Tensor, torch.Tensor] | None = None, bins: int = 10,
                        epochs: Collection[int] | None = None, prefix: str = "bayes_link_"
                        ) -> Callable[[int, list[dict]], None]:
    """An ``on_epoch(epoch, records)`` callback for :func:`dynamics.clo.run_clo`: adds the Bayes-link
    distance of the model now to each replica's record (``<prefix>pearson``, ``spearman``,
    ``pearson_logit``, ``n``). A simulator model is read on its full table; any other needs
    ``samples = (prompt_ids, images)`` (fixed pairs, e.g. :func:`fixed_samples` of the pre-trained
    model). ``epochs``: the epochs to measure (default every evaluated one; ``{0, cfg.epochs}`` for
    before and after only)."""
    bins = _check_bins(bins)
    exact = hasattr(model, "understanding_table") and hasattr(model, "und_logit")
    if samples is None and not exact:
        raise ValueError("bayes_link_on_epoch: this model has no exact table; pass samples=(prompt_ids, images)")

    def on_epoch(epoch: int, records: list[dict]) -> None:
        if epochs is not None and epoch not in epochs:
            return
        links = sim_bayes_link(model, bins=bins) if exact else bayes_link_on_samples(model, *samples, bins=bins)
        for rec, link in zip(records, links):
            rec.update({f"{prefix}{k}": link[k] for k in ("pearson", "spearman", "pearson_logit", "n")})

    return on_epoch


# --------------------------------------------------------------------------------------------------
# an epoch's minibatches, as the loop trains on them


class BatchRecorder:
    """A step hook (:class:`dynamics.clo.StepHook`) keeping a copy of every minibatch the loop trains on
    (on the CPU), and the step size: the epoch that :func:`accepted_pairs` reads."""

    def __init__(self) -> None:
        self.batches: list = []
        self.lrs: list[float] = []

    def before_step(self, model, batch, lr: float) -> None:
        self.batches.append(dataclasses.replace(
            batch, **{f.name: getattr(batch, f.name).detach().cpu().clone()
                      for f in dataclasses.fields(batch) if torch.is_tensor(getattr(batch, f.name))}))
        self.lrs.append(float(lr))

    def after_step(self, model, batch, lr: float) -> list[dict]:
        return []


def accepted_pairs(batches: Sequence, replica: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SFT pairs replica ``replica`` trains on in ``batches`` (:class:`dynamics.protocol.TrainBatch`):
    ``(prompt_ids (N,), images (N, M), weights (N,))``, each pair's weight its loss weight over its
    minibatch's total (the loop's minibatch mean), so that the sum over pairs of ``weight * grad NLL`` is
    the sum of the epoch's minibatch gradients."""
    if not batches:
        raise ValueError("accepted_pairs: no minibatch recorded (the judge accepted nothing?)")
    ids, imgs, ws = [], [], []
    for t, b in enumerate(batches):
        if b.kind != "sft":
            raise ValueError(f"accepted_pairs: minibatch {t} is {b.kind!r}; only SFT minibatches are read")
        if not 0 <= replica < b.weights.shape[0]:
            raise ValueError(f"accepted_pairs: replica {replica} outside [0, {b.weights.shape[0]})")
        w = b.weights[replica].double()  # (B, K)
        used = w > 0
        if not used.any():
            continue
        ids.append(b.prompt_ids[:, None].expand_as(w)[used])
        imgs.append(b.images[replica][used])
        ws.append((w / w.sum().clamp_min(1.0))[used])
    if not ids:
        raise ValueError(f"accepted_pairs: replica {replica} trains on no pair in these minibatches")
    return torch.cat(ids).long(), torch.cat(imgs).long(), torch.cat(ws)


# --------------------------------------------------------------------------------------------------
# the simulator


def sim_branches(model, replica: int = 0, *, params: Params | None = None) -> Branches:
    """:class:`Branches` of replica ``replica`` of a :class:`~dynamics.sim.SimModel` (float64 copies of
    its parameters unless ``params``). Generation input: the prompt id; understanding input:
    ``[token, prompt]``; ``log P(yes)`` by the model's own definition (the yes/no head, or for ``bayes``
    the calibrated posterior of its generation view, as :meth:`SimModel.und_logit`)."""
    params = model.functional_params(replica, dtype=torch.float64) if params is None else params
    scope = {id(p) for p in model.generation_parameters()}
    trainable = [n for n, p in model.named_parameters() if id(p) in scope]
    und = model.und_logits_fn()
    bayes = model.understanding == "bayes"
    log_prompts = math.log(model.num_prompts)

    def log_p_yes(p, x):
        out = und(p, x)
        if bayes:  # (P,) log pi(x | y'): the posterior of the asked prompt, calibrated
            post = torch.index_select(torch.log_softmax(out, -1), 0, x[1].reshape(1))[0]
            return F.logsigmoid(model.bayes_scale * (post + log_prompts - model.bayes_offset))
        return torch.log_softmax(out, -1)[1]  # [0, logit P(yes)]

    return Branches(params, trainable, model.gen_logits_fn(), log_p_yes)


def sim_pairs(prompts, tokens, *, weights=None, labels=None) -> Pairs:
    """Simulator pairs: ``prompts`` ``(N,)`` and ``tokens`` ``(N,)`` ids (generation input the prompt,
    target the token, understanding input ``[token, prompt]``)."""
    prompts, tokens = torch.as_tensor(prompts).long(), torch.as_tensor(tokens).long()
    if prompts.shape != tokens.shape or prompts.dim() != 1:
        raise ValueError(f"sim_pairs: prompts {tuple(prompts.shape)} and tokens {tuple(tokens.shape)} must be (N,)")
    return Pairs(prompts, tokens, und_inputs=torch.stack([tokens, prompts], 1), weights=weights, labels=labels)


def _sim_probes(world, model, *, n_random: int, n_fp: int, threshold: float, seed: int) -> list[dict]:
    """Per replica, the probe pairs: ``n_random`` fixed random pairs (3/4 misaligned) and up to ``n_fp``
    false positives of that replica's pre-trained understanding (misaligned, ``P(yes) >= threshold``)."""
    from dynamics.sim.tracking import default_probes

    n_mis = (3 * n_random) // 4
    base = default_probes(world, n_misaligned=n_mis, n_aligned=n_random - n_mis, seed=seed)
    table = model.understanding_table().cpu()
    g = torch.Generator().manual_seed(int(seed) + 1)
    out = []
    for r in range(model.replicas):
        fp = ((table[r] >= threshold) & ~world.aligned).nonzero()
        fp = fp[torch.randperm(len(fp), generator=g)[:n_fp]]
        pr = torch.cat([base, fp]).long()
        kind = ["fp" if i >= len(base) else ("aligned" if bool(world.aligned[y, x]) else "misaligned")
                for i, (y, x) in enumerate(pr.tolist())]
        out.append({"probes": pr, "kind": kind})
    return out


def _competitors(log_pi: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """The strongest competing prompt of each probe's token by the generator's posterior (``log_pi``
    ``(P, V)``)."""
    w = log_pi[:, probes[:, 1]].T.clone()  # (n, P): log pi(x0 | y), the posterior up to a constant
    w[torch.arange(len(probes)), probes[:, 0]] = -math.inf
    return w.argmax(-1)


def sim_transfer(world, model0, cfg, *, n_random: int = 48, n_fp: int = 16, tol: float = 1e-3, seed: int = 0,
                 bins: int = 10) -> dict:
    """The cross-kernel predictor against a real epoch at the simulator scale, for every replica of
    ``model0`` (pre-trained; restored afterwards).

    Before training: the Bayes link (:func:`sim_bayes_link`). One epoch of CLO (``cfg`` with
    ``epochs=1``, judged by ``cfg.judge``, the scale's optimiser; the loop's own evaluation is not read
    here, so it samples one image per prompt: training draws its own seeds and is unchanged by that)
    runs with a :class:`BatchRecorder`; at
    the *starting* parameters, per replica and probe (:func:`_sim_probes`): the cross kernel against the
    epoch's accepted pairs, the first-order ``Delta U`` and ``Delta G`` of the epoch (each pair's ``G``
    weighted by ``1/|its minibatch|``: the sum of the steps' first-order changes) and the dominance
    ratio; then the measured changes of the trained model and the Bayes link after.

    Returns ``{"replicas": [per-replica dict], "summary": {...}}`` (see :func:`_summarise`)."""
    from dynamics.study.arms import run_arm

    tol = _check_tol(tol)
    cfg = dataclasses.replace(cfg, epochs=1, curriculum="off", progress=False, eval_candidates=1)
    if cfg.loss != "sft":
        raise ValueError(f"sim_transfer: cfg.loss={cfg.loss!r}; the cross-kernel predictor reads SFT epochs")
    before_link = sim_bayes_link(model0, bins=bins)
    probe_sets = _sim_probes(world, model0, n_random=n_random, n_fp=n_fp, threshold=cfg.threshold, seed=seed)
    rec = BatchRecorder()
    arm = run_arm(model0, cfg, external=world.oracle, hooks=[rec], keep_model=True)
    after_link = sim_bayes_link(arm.model, bins=bins)
    with torch.no_grad():
        log_pi0 = torch.log_softmax(model0.gen_logits(torch.arange(model0.num_prompts)).double(), -1).cpu()
    lr = rec.lrs[0] if rec.lrs else cfg.lr
    out = []
    for r in range(model0.replicas):
        pr, kind = probe_sets[r]["probes"], probe_sets[r]["kind"]
        probes = sim_pairs(pr[:, 0], pr[:, 1], labels=world.aligned[pr[:, 0], pr[:, 1]])
        b0 = sim_branches(model0, r)
        b1 = sim_branches(arm.model, r)
        try:
            ids, imgs, ws = accepted_pairs(rec.batches, r)
        except ValueError:
            out.append({"replica": r, "accepted": 0, "bayes_before": before_link[r], "bayes_after": after_link[r]})
            continue
        acc = sim_pairs(ids, imgs[:, 0], weights=ws)
        pred = predict(b0, probes, acc, lr=lr)
        with torch.no_grad():
            du = b1.und_values(probes)(b1.params) - b0.und_values(probes)(b0.params)
            dg = b1.gen_logprob(probes)(b1.params) - b0.gen_logprob(probes)(b0.params)
            p_yes = b0.und_values(probes)(b0.params).exp()
        ratio = dominance_ratio(b0, probes.gen_inputs, _competitors(log_pi0[r], pr), acc.gen_inputs)
        out.append({
            "replica": r,
            "accepted": len(acc),
            "distinct_prompts": int(torch.unique(ids).numel()),
            "steps": len(rec.batches),
            "lr": lr,
            "probe_prompt": pr[:, 0].tolist(),
            "probe_token": pr[:, 1].tolist(),
            "kind": kind,
            "p_yes": p_yes.tolist(),
            "cross_kernel_norm": pred["cross_kernel_norm"].tolist(),
            "pred_delta_u": pred["delta_u"].tolist(),
            "pred_delta_g": pred["delta_g"].tolist(),
            "delta_u": du.tolist(),
            "delta_g": dg.tolist(),
            "dominance_ratio": ratio.tolist(),
            "bayes_before": before_link[r],
            "bayes_after": after_link[r],
        })
    return {"replicas": out, "summary": _summarise(out, tol=tol, optimizer=cfg.optimizer)}


# --------------------------------------------------------------------------------------------------
# reading the per-probe numbers


def _median(values) -> float:
    v = torch.as_tensor(values, dtype=torch.float64)
    v = v[torch.isfinite(v)]
    return float(v.median()) if v.numel() else math.nan


def _summarise(replicas: list[dict], *, tol: float, optimizer: str) -> dict:
    """Per replica, then mean, s.e. and count over replicas (:func:`dynamics.study.mean_se`):

    ``alignment`` the cosine of predicted ``Delta U`` and ``Delta G`` over probes and ``same_sign`` its
    per-probe share; ``cross_kernel_norm`` the median over probes; ``dominance_median`` and
    ``dominance_above_1`` (share of probes with ratio > 1); ``sign_agreement`` of predicted and measured
    ``Delta U`` over probes with measured ``|Delta U| > tol`` (``sign_n`` their total count over
    replicas); ``aligned_sign_agreement`` the same with the sign of the predicted ``Delta G`` as the
    predictor (the paper's aligned dynamics); ``size_pearson``/``size_spearman`` predicted against
    measured ``Delta U`` over all probes and ``rel_error_u`` ``||measured - predicted|| / ||predicted||``
    (:func:`dynamics.study.first_order.relative_error`); ``delta_g_sign_agreement`` for the generation probes (a
    reference); ``bayes_{before,after}_{pearson,spearman,pearson_logit}``; ``by_kind`` the mean
    predicted and measured ``Delta U`` and the sign agreement per probe kind."""
    from dynamics.study import mean_se
    from dynamics.study.first_order import relative_error

    per: dict[str, list[float]] = {}
    sign_n = 0
    kinds: dict[str, dict[str, list]] = {}

    def add(key, value):
        per.setdefault(key, []).append(value)

    for rep in replicas:
        for when in ("before", "after"):
            for k in ("pearson", "spearman", "pearson_logit"):
                add(f"bayes_{when}_{k}", rep[f"bayes_{when}"][k])
        if not rep.get("accepted"):
            continue
        pu, mu = rep["pred_delta_u"], rep["delta_u"]
        al = alignment(pu, rep["pred_delta_g"])
        add("alignment", al["cosine"])
        add("same_sign", al["same_sign"])
        add("cross_kernel_norm", _median(rep["cross_kernel_norm"]))
        ratio = torch.tensor(rep["dominance_ratio"], dtype=torch.float64)
        add("dominance_median", _median(ratio))
        add("dominance_above_1", float((ratio > 1).double().mean()))
        sa = sign_agreement(pu, mu, tol=tol)
        add("sign_agreement", sa["agreement"])
        sign_n += sa["n"]
        add("aligned_sign_agreement", sign_agreement(rep["pred_delta_g"], mu, tol=tol)["agreement"])
        add("size_pearson", pearson(pu, mu))
        add("size_spearman", spearman(pu, mu))
        add("delta_g_sign_agreement", sign_agreement(rep["pred_delta_g"], rep["delta_g"], tol=tol)["agreement"])
        add("measured_abs_delta_u", float(torch.tensor(mu, dtype=torch.float64).abs().mean()))
        rel = relative_error(torch.tensor(mu), torch.tensor(pu))
        add("rel_error_u", rel if math.isfinite(rel) else math.nan)  # nothing predicted to move: undefined
        for kd in sorted(set(rep["kind"])):
            idx = [i for i, k in enumerate(rep["kind"]) if k == kd]
            d = kinds.setdefault(kd, {"pred": [], "measured": [], "sign_agreement": [], "n": 0})
            d["pred"].append(sum(pu[i] for i in idx) / len(idx))
            d["measured"].append(sum(mu[i] for i in idx) / len(idx))
            d["sign_agreement"].append(sign_agreement([pu[i] for i in idx], [mu[i] for i in idx], tol=tol)["agreement"])
            d["n"] += len(idx)
    summary = {k: mean_se(v) for k, v in per.items()}
    summary["sign_n"] = sign_n
    summary["tol"] = tol
    summary["optimizer"] = optimizer
    summary["first_order_valid"] = optimizer == "sgd"
    summary["by_kind"] = {kd: {"pred_delta_u": mean_se(d["pred"]), "delta_u": mean_se(d["measured"]),
                               "sign_agreement": mean_se(d["sign_agreement"]), "probes": d["n"]}
                          for kd, d in kinds.items()}
    return summary


# --------------------------------------------------------------------------------------------------
# the toy transformer (its forward pass is not vmap-compatible: the module-form first-order probe)


def toy_transfer(model, cfg, *, n_probes: int = 32, seed: int = 0, tol: float = 1e-3, bins: int = 10,
                 per_prompt: int = 2) -> dict:
    """The cross-kernel predictor against a real epoch for a toy model (restored afterwards).

    Float64 copy of ``model``; a fixed sample set (``per_prompt`` samples of every prompt) gives the
    Bayes link before and after and the probes (``n_probes`` of them, half false positives of the
    pre-trained understanding where there are enough, labelled by the exact detector). One epoch of
    CLO (``cfg``, ``epochs=1``, no replay) runs with a :class:`BatchRecorder`; the first-order changes of
    the probes' ``log P(yes)`` and ``log pi(x | y)`` for the epoch's minibatches at the starting
    parameters are ``lr <grad o, -sum_b grad L_b>`` (:func:`dynamics.kernels.first_order_probe`, the
    contraction of the cross kernel with ``G`` without forming it: the toy's forward pass is not
    vmap-compatible, so :func:`dynamics.kernels.entk` cannot batch it; the cross kernel's norm and the
    dominance ratio are not computed at this scale)."""
    from dynamics.clo import batch_loss
    from dynamics.study.arms import run_arm

    tol = _check_tol(tol)
    cfg = dataclasses.replace(cfg, epochs=1, curriculum="off", progress=False, eval_candidates=1)
    if cfg.loss != "sft":
        raise ValueError(f"toy_transfer: cfg.loss={cfg.loss!r}; the predictor reads SFT epochs")
    m = copy.deepcopy(model).double().eval()
    samples = fixed_samples(m, per_prompt=per_prompt, seed=seed)
    before_link = bayes_link_on_samples(m, *samples, bins=bins)[0]
    ids, images = samples
    ext = m.world.external_judge()(ids, images)[0].bool()  # (B, K)
    own = m.judge(ids, images)[0] >= cfg.threshold
    flat = [(int(ids[i]), images[0, i, k], bool(ext[i, k]), bool(own[i, k]))
            for i in range(len(ids)) for k in range(images.shape[2])]
    perm = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed)).tolist()
    fps = [flat[i] for i in perm if flat[i][3] and not flat[i][2]][: n_probes // 2]
    rest = [flat[i] for i in perm if not (flat[i][3] and not flat[i][2])][: n_probes - len(fps)]
    probes = fps + rest
    kind = [("fp" if (o and not e) else "tp" if (o and e) else "fn" if e else "tn") for _, _, e, o in probes]

    def values(model_, what):
        return torch.stack([model_.probe_logprob(p, img, what) for p, img, _, _ in probes])

    rec = BatchRecorder()
    arm = run_arm(m, cfg, external=m.world.external_judge(), hooks=[rec], keep_model=True)
    lr = rec.lrs[0] if rec.lrs else cfg.lr
    params = list(m.generation_parameters())

    def objective():  # -sum_b L_b: the epoch's minibatch losses at the starting parameters
        return -sum(batch_loss(m, cfg, b) for b in rec.batches)

    n = len(probes)
    both = first_order_probe(lambda: torch.cat([values(m, "yes"), values(m, "gen")]), objective, params, lr=lr)
    pred_u, pred_g = both[:n], both[n:]
    with torch.no_grad():
        du = (values(arm.model, "yes") - values(m, "yes")).double()
        dg = (values(arm.model, "gen") - values(m, "gen")).double()
        p_yes = values(m, "yes").exp()
    after_link = bayes_link_on_samples(arm.model, *samples, bins=bins)[0]
    rep = {"replica": 0, "accepted": int(sum(int((b.weights > 0).sum()) for b in rec.batches)),
           "steps": len(rec.batches), "lr": lr, "probe_prompt": [p for p, *_ in probes], "kind": kind,
           "p_yes": p_yes.tolist(), "pred_delta_u": pred_u.tolist(), "pred_delta_g": pred_g.tolist(),
           "delta_u": du.tolist(), "delta_g": dg.tolist(), "cross_kernel_norm": [], "dominance_ratio": [],
           "bayes_before": before_link, "bayes_after": after_link}
    return {"replicas": [rep], "summary": _summarise([rep], tol=tol, optimizer=cfg.optimizer)}


# --------------------------------------------------------------------------------------------------
# the experiment

SIM_COUPLINGS = ("decoupled", "trunk", "tied", "bayes")
TOY_COUPLINGS = ("decoupled", "trunk", "tied", "bayes")


def _sim_model(size, coupling: str):
    """The pre-trained simulator of ``coupling``: the one place a simulator model is built here."""
    from dynamics.sim.study import pretrained

    return pretrained(size, coupling=coupling)


def _toy_model(size, seed: int, coupling: str, world: int = 0):
    """The pre-trained toy model of ``coupling``: the one place a toy model is built here."""
    from dynamics.toy.study import pretrained_model

    return pretrained_model(size, seed, coupling=coupling, world=world, check=False, threshold=size.clo.threshold)


def transfer_report(size, couplings: Sequence[str] | None = None, *, judge: str = "self", tol: float = 1e-3,
                    seed: int = 0, bins: int = 10, n_random: int = 48, n_fp: int = 16, n_probes: int = 32,
                    per_prompt: int = 2) -> dict[str, dict]:
    """Per coupling, the cross-kernel predictor of one epoch of self-judged SFT against its measured
    effect, and the Bayes-link distance before and after; numbers only.

    ``size``: a :class:`~dynamics.sim.study.SimSize` (the simulator: ``size.seeds`` replicas, the size's
    optimiser and step size, :func:`sim_transfer` with ``n_random`` + ``n_fp`` probes) or a
    :class:`~dynamics.toy.study.ToySize` (the toy: one pre-trained model per unit, the size's CLO
    recipe, :func:`toy_transfer` with ``n_probes`` probes). Returns ``{coupling: {"summary": ...,
    "replicas": [...]}}``; the summary keys are :func:`_summarise`'s (mean, s.e., count over replicas
    or units).

    >>> from dynamics.sim.study import SimSize
    >>> rep = transfer_report(SimSize.tiny(float64=True), ["decoupled"], n_random=4, n_fp=2)
    >>> rep["decoupled"]["summary"]["cross_kernel_norm"][0], rep["decoupled"]["summary"]["sign_n"]
    (0.0, 0)
    """
    tol = _check_tol(tol)
    from dynamics.sim.study import SimSize

    if isinstance(size, SimSize):
        out = {}
        for c in couplings or SIM_COUPLINGS:
            world, m0 = _sim_model(size, c)
            res = sim_transfer(world, m0, size.config(judge=judge, epochs=1), n_random=n_random, n_fp=n_fp, tol=tol,
                               seed=seed, bins=bins)
            out[c] = {**res, "scale": "sim"}
        return out
    from dynamics.toy.study import ToySize

    if not isinstance(size, ToySize):
        raise TypeError(f"transfer_report: size must be a SimSize or a ToySize, got {type(size).__name__}")
    torch.set_num_threads(1)
    out = {}
    for c in couplings or TOY_COUPLINGS:
        reps = []
        for w, s in size.units():
            model = _toy_model(size, s, c, world=w)
            cfg = dataclasses.replace(size.clo, seed=s, judge=judge)
            res = toy_transfer(model, cfg, n_probes=n_probes, seed=s, tol=tol, bins=bins, per_prompt=per_prompt)
            reps += [{**r, "world": w, "seed": s} for r in res["replicas"]]
        out[c] = {"replicas": reps, "summary": _summarise(reps, tol=tol, optimizer=size.clo.optimizer), "scale": "toy"}
    return out


def report_rows(report: Mapping[str, dict]) -> list[dict]:
    """One flat row per coupling of a :func:`transfer_report`: each summary number as its mean (and
    ``<key>_se``), for a table."""
    rows = []
    for c, res in report.items():
        s = res["summary"]
        row = {"coupling": c}
        for k, v in s.items():
            if isinstance(v, tuple) and len(v) == 3:
                row[k], row[f"{k}_se"] = v[0], v[1]
            elif k != "by_kind":
                row[k] = v
        for kd, d in s.get("by_kind", {}).items():
            row[f"{kd}_pred_delta_u"] = d["pred_delta_u"][0]
            row[f"{kd}_delta_u"] = d["delta_u"][0]
            row[f"{kd}_sign_agreement"] = d["sign_agreement"][0]
        rows.append(row)
    return rows


_TABLE = (("alignment", "alignment"), ("same_sign", "same sign"), ("dominance_median", "dominance (median)"),
          ("cross_kernel_norm", "|K(und,gen_U)| (median)"), ("sign_agreement", "sign agree dU"),
          ("sign_n", "probes counted"), ("aligned_sign_agreement", "sign agree (dG as predictor)"),
          ("size_pearson", "size pearson"), ("size_spearman", "size spearman"),
          ("rel_error_u", "rel. error dU"), ("delta_g_sign_agreement", "sign agree dG"),
          ("bayes_before_spearman", "Bayes spearman before"), ("bayes_after_spearman", "Bayes spearman after"),
          ("bayes_before_pearson", "Bayes pearson before"), ("bayes_after_pearson", "Bayes pearson after"),
          ("bayes_before_pearson_logit", "Bayes pearson(logit) before"),
          ("bayes_after_pearson_logit", "Bayes pearson(logit) after"))


def format_report(report: Mapping[str, dict]) -> str:
    """A plain-text table of :func:`report_rows` (mean ± s.e. over replicas or units)."""
    rows = report_rows(report)
    lines = ["quantity".ljust(32) + "".join(r["coupling"].rjust(20) for r in rows)]
    for key, label in _TABLE:
        cells = []
        for r in rows:
            v, se = r.get(key, math.nan), r.get(f"{key}_se")
            if isinstance(v, int):
                cells.append(str(v).rjust(20))
            else:
                cells.append((f"{v:.3g}" + (f" ± {se:.2g}" if se is not None and math.isfinite(se) else "")).rjust(20))
        lines.append(label.ljust(32) + "".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m dynamics.transfer --scale sim|toy``: the report as a table and as JSON (``--out``)."""
    p = argparse.ArgumentParser(prog="python -m dynamics.transfer", description=main.__doc__)
    p.add_argument("--scale", choices=("sim", "toy"), default="sim")
    p.add_argument("--couplings", nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=4, help="sim: replicas; toy: seeds 0..n-1 (one unit each)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-3, help="measured |dU| below this has no sign")
    p.add_argument("--judge", default="self")
    p.add_argument("--out", default=None, help="write the full report as JSON here")
    a = p.parse_args(argv)
    if a.scale == "sim":
        from dynamics.sim.study import SimSize

        size = SimSize(seeds=a.seeds, world_seed=a.world_seed, float64=True)
    else:
        from dynamics.toy.study import ToySize

        size = ToySize(seeds=tuple(range(a.seeds)), worlds=(a.world_seed,))
    report = transfer_report(size, a.couplings, judge=a.judge, tol=a.tol)
    print(format_report(report))
    if a.out:
        from dynamics.records import to_jsonable

        with open(a.out, "w") as f:
            json.dump(to_jsonable(report), f, indent=1)
    return report


if __name__ == "__main__":
    main()

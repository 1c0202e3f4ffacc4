"""The metric set, shared by every scale: pure functions of judgement tables.

All inputs are boolean (or probability) tables with a leading replica axis ``R`` and any number of
further axes (prompts, candidates); every function reduces all axes but the first and returns one
value per replica, as a float64 tensor of shape ``(R,)``. Rates are fractions in [0, 1] (the paper
prints percentages: multiply by 100). A rate with an empty denominator is NaN, except the win rate,
which is 0.5 when the two judges never disagree (the paper's convention); every rate has a
companion count so a reader can see how many cases it rests on. A probability becomes a verdict by
one rule everywhere (:func:`accepts`): yes when ``P(yes) >= threshold``.

Example::

    >>> import torch
    >>> from dynamics import metrics
    >>> own = torch.tensor([[True, False, False, True]])      # the model's own verdicts
    >>> ext = torch.tensor([[True, False, True, False]])      # the external judge
    >>> metrics.non_unification(own)                          # half of its own samples rejected
    tensor([0.5000], dtype=torch.float64)
    >>> metrics.weak_generation_attribution(own, ext)         # of those, the judge agrees on one
    tensor([0.5000], dtype=torch.float64)
    >>> pre = torch.tensor([[True, True, False, True]])
    >>> rate, n = metrics.win_rate(pre, own, ext)             # 1 disagreement, won by `own`
    >>> rate.item(), n.item()
    (1.0, 1)
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "accepts",
    "accuracy",
    "balanced_accuracy",
    "false_negative_rate",
    "false_positive_correction_rate",
    "false_positive_corrections",
    "false_positive_rate",
    "non_unification",
    "rate",
    "summarise",
    "weak_generation_attribution",
    "win_rate",
]


def _flat(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 0:
        raise ValueError("metric inputs need a leading replica axis, got a scalar")
    return t.reshape(t.shape[0], -1)


def rate(numerator: torch.Tensor, denominator: torch.Tensor, weights: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-replica ``sum(numerator & denominator) / sum(denominator)`` and the count ``sum(denominator)``.

    With ``weights`` (same shape, e.g. the generator's probabilities ``pi(x|y)`` over a full table) the
    sums are weighted: the *population* rate of which a sampled rate is an estimate, and its
    denominator is a probability mass instead of a count. Every metric below takes ``weights``, so the
    simulator's exact metrics are these same definitions with sampling replaced by its expectation.

    >>> rate(torch.tensor([[1, 0, 1]]).bool(), torch.tensor([[1, 1, 0]]).bool())
    (tensor([0.5000], dtype=torch.float64), tensor([2]))
    >>> rate(torch.tensor([[1, 0, 1]]).bool(), torch.tensor([[1, 1, 0]]).bool(), torch.tensor([[0.6, 0.2, 0.2]]))[0]
    tensor([0.7500], dtype=torch.float64)
    """
    num = _flat(numerator).bool()
    den = _flat(denominator).bool()
    if weights is None:
        n = den.sum(-1)
        hits = (num & den).sum(-1).to(torch.float64)
        out = torch.where(n > 0, hits / n.clamp_min(1), torch.full_like(hits, math.nan))
        return out, n
    w = _flat(weights).to(torch.float64)
    if w.shape != den.shape:
        raise ValueError(f"weights have shape {tuple(weights.shape)}, the tables {tuple(denominator.shape)}")
    n = (w * den).sum(-1)
    hits = (w * (num & den)).sum(-1)
    out = torch.where(n > 0, hits / torch.where(n > 0, n, torch.ones_like(n)), torch.full_like(hits, math.nan))
    return out, n


def accepts(p_yes: torch.Tensor, threshold: float) -> torch.Tensor:
    """The verdict of a probability judge: yes where ``p_yes >= threshold`` (a probability exactly at
    the threshold is a yes). The one threshold rule of the package: the CLO loop's acceptance, its
    evaluation, the toy's pre-training gap check and the alarm's probe set all use it.

    >>> accepts(torch.tensor([0.2, 0.5, 0.9]), 0.5)
    tensor([False,  True,  True])
    """
    return p_yes >= threshold


def accuracy(external_yes: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Ground-truth generation accuracy: the share of samples the external judge accepts."""
    ext = _flat(external_yes).bool()
    return rate(ext, torch.ones_like(ext), weights)[0]


def non_unification(own_yes: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``Non = E_y E_x 1[own understanding rejects x]`` over the model's own samples (paper Sec. 1)."""
    own = _flat(own_yes).bool()
    return rate(~own, torch.ones_like(own), weights)[0]


def weak_generation_attribution(own_yes: torch.Tensor, external_yes: torch.Tensor,
                                weights: torch.Tensor | None = None) -> torch.Tensor:
    """``P(external = own | own = no)``: among self-rejected samples, the share the external judge
    also rejects. Above 0.5 the generator, not the understanding, is at fault."""
    own = _flat(own_yes).bool()
    return rate(~_flat(external_yes).bool(), ~own, weights)[0]


def win_rate(
    pre_yes: torch.Tensor, cur_yes: torch.Tensor, external_yes: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's understanding win rate and its denominator.

    Both the pre-trained (``pre_yes``) and the current (``cur_yes``) understanding judge the same
    samples (the pre-trained model's); among the cases where they disagree, the share where the
    current one agrees with the external judge. 0.5 when they never disagree.
    """
    pre, cur, ext = _flat(pre_yes).bool(), _flat(cur_yes).bool(), _flat(external_yes).bool()
    out, n = rate(cur == ext, pre != cur, weights)
    return torch.where(n > 0, out, torch.full_like(out, 0.5)), n


def false_positive_rate(und_yes: torch.Tensor, external_yes: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Understanding false-positive rate ``P(und = yes | truly misaligned)``."""
    return rate(_flat(und_yes).bool(), ~_flat(external_yes).bool(), weights)[0]


def false_negative_rate(und_yes: torch.Tensor, external_yes: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Understanding false-negative rate ``P(und = no | truly aligned)``."""
    return rate(~_flat(und_yes).bool(), _flat(external_yes).bool(), weights)[0]


def balanced_accuracy(und_yes: torch.Tensor, external_yes: torch.Tensor) -> torch.Tensor:
    """``1 - (FP rate + FN rate) / 2``: the understanding's accuracy with both classes weighted alike.

    >>> balanced_accuracy(torch.tensor([[True, True, False]]), torch.tensor([[True, False, False]]))
    tensor([0.7500], dtype=torch.float64)
    """
    return 1.0 - 0.5 * (false_positive_rate(und_yes, external_yes) + false_negative_rate(und_yes, external_yes))


def false_positive_corrections(
    pre_yes: torch.Tensor, cur_yes: torch.Tensor, external_yes: torch.Tensor
) -> torch.Tensor:
    """Boolean table of the cases whose understanding flipped from a wrong yes to a right no."""
    ext = external_yes.bool()
    return pre_yes.bool() & ~cur_yes.bool() & ~ext


def false_positive_correction_rate(pre_yes: torch.Tensor, cur_yes: torch.Tensor, external_yes: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Among the pre-trained understanding's false positives, the share the current one corrected
    (now a right no), and their count.

    >>> pre, cur = torch.tensor([[True, True, False]]), torch.tensor([[False, True, False]])
    >>> false_positive_correction_rate(pre, cur, torch.tensor([[False, False, False]]))
    (tensor([0.5000], dtype=torch.float64), tensor([2]))
    """
    pre, ext = _flat(pre_yes).bool(), _flat(external_yes).bool()
    return rate(~_flat(cur_yes).bool(), pre & ~ext)


def summarise(
    *,
    cur_samples_own_yes: torch.Tensor,
    cur_samples_external_yes: torch.Tensor,
    pre_samples_pre_yes: torch.Tensor,
    pre_samples_cur_yes: torch.Tensor,
    pre_samples_external_yes: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every metric of one evaluation, per replica.

    ``cur_samples_*``: fresh samples of the current model, judged by its own understanding and the
    external judge (generation accuracy, Non, attribution). ``pre_samples_*``: the fixed samples of
    the pre-trained model, judged by the pre-trained and the current understanding and the external
    judge (win rate, understanding false-positive and false-negative rates).

    >>> t = torch.tensor([[True, False]])
    >>> sorted(summarise(cur_samples_own_yes=t, cur_samples_external_yes=t, pre_samples_pre_yes=t,
    ...                  pre_samples_cur_yes=t, pre_samples_external_yes=t))[:3]
    ['attribution', 'gen_acc', 'non_unification']
    """
    win, win_n = win_rate(pre_samples_pre_yes, pre_samples_cur_yes, pre_samples_external_yes)
    return {
        "gen_acc": accuracy(cur_samples_external_yes),
        "non_unification": non_unification(cur_samples_own_yes),
        "attribution": weak_generation_attribution(cur_samples_own_yes, cur_samples_external_yes),
        "win_rate": win,
        "win_rate_n": win_n,
        "und_fp_rate": false_positive_rate(pre_samples_cur_yes, pre_samples_external_yes),
        "und_fn_rate": false_negative_rate(pre_samples_cur_yes, pre_samples_external_yes),
        "und_acc": accuracy(pre_samples_cur_yes == pre_samples_external_yes.bool()),
    }

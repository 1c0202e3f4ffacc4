"""The data judges of Algorithm 1, with the same names at every scale.

A judge turns the model's own ``P(yes)`` and (where needed) the external judge's verdicts into a
*score* in [0, 1] per candidate; a candidate is accepted when its score reaches the threshold, and
DPO pairs take the highest- and lowest-scoring candidates of a prompt.

=====================  ================================================================
spec                   meaning
=====================  ================================================================
``self``               the model's own understanding (the paper's method)
``oracle``             the external judge (ground truth at the theory and toy scales);
                       ``external`` is an alias
``all``                accepts every candidate: the unfiltered control
``noisy:<p>``          the external judge with each verdict inverted with probability p
``corrupt:<p>``        the self judge with each verdict inverted with probability p: poor
                       supervision, misaligned candidates become positives; p near 1 is adversarial
``lookalike:<p>``      the external judge, except that it also accepts each *near miss* (a
                       misaligned candidate with every attribute of the prompt right but one)
                       with probability p: a judge that fails the way real judges fail
``pr:<prec>,<rec>``    an external judge with set precision and recall on the candidate pool (the
                       candidates of one scoring call, per replica): it accepts ``round(rec * n)``
                       of the ``n`` aligned candidates at random and as many misaligned ones as
                       make the precision ``prec``, near misses first
``weak``               the understanding of a *weaker checkpoint* of the same model (less
                       understanding pre-training): the ``P(yes)`` of a second unified model (the
                       loop's judge slot, ``run_clo(..., judge_model=...)``), thresholded like
                       ``self``; the realistic case of the paper's warning
=====================  ================================================================

The external judge stays the audit's and the evaluation's ground truth whatever the data judge: the
``weak`` judge's model fills a slot of its own (``judge_model``), so a weaker checkpoint never stands
in for ground truth.

Near misses are the world's: the external judge (or the object it is a method of, e.g. the
simulator's ``world.oracle``) offers ``near_miss(prompt_ids, images) -> (R, B, K) bool``
(:func:`near_misses`); ``lookalike`` and ``pr`` need it. Their random choices come from the loop's
per-replica generators, like the flips of ``noisy`` and ``corrupt``: seeded and deterministic.

Example::

    >>> import torch
    >>> from dynamics.judges import parse_judge
    >>> j = parse_judge("corrupt:0.25")
    >>> j.kind, j.p, j.needs_external
    ('corrupt', 0.25, False)
    >>> p = torch.tensor([[[0.9, 0.2, 0.6]]])
    >>> j0 = parse_judge("self")
    >>> j0.score(p, None, threshold=0.5, generator=torch.Generator().manual_seed(0))
    tensor([[[0.9000, 0.2000, 0.6000]]])
    >>> ext, near = torch.tensor([[[True, False, False]]]), torch.tensor([[[False, True, False]]])
    >>> s = parse_judge("lookalike:1").score(p, ext, threshold=0.5, generator=torch.Generator(), near_miss=near)
    >>> (s >= 0.5).tolist()                                       # the aligned one and the near miss
    [[[True, True, False]]]
    >>> weak = torch.tensor([[[0.4, 0.7, 0.5]]])                  # the judge model's P(yes)
    >>> parse_judge("weak").score(p, None, threshold=0.5, generator=torch.Generator(), judge_yes=weak) >= 0.5
    tensor([[[False,  True,  True]]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dynamics.metrics import accepts

__all__ = ["JUDGE_KINDS", "Judge", "near_misses", "parse_judge", "weak_judge_steps"]

JUDGE_KINDS = ("self", "oracle", "external", "all", "noisy", "corrupt", "lookalike", "pr", "weak")
_EXPECTED = "self, oracle, external, all, noisy:<p>, corrupt:<p>, lookalike:<p>, pr:<precision>,<recall>, weak"


@dataclass(frozen=True)
class Judge:
    """A parsed judge spec (see the module table). ``p``: the probability of ``noisy``, ``corrupt``
    and ``lookalike``, the precision of ``pr``; ``recall``: the recall of ``pr`` (None otherwise)."""

    kind: str
    p: float = 0.0
    recall: float | None = None

    @property
    def needs_external(self) -> bool:
        return self.kind in ("oracle", "noisy", "lookalike", "pr")

    @property
    def needs_near_miss(self) -> bool:
        """Whether the judge needs the world's near misses (:func:`near_misses`)."""
        return self.kind in ("lookalike", "pr")

    @property
    def needs_judge_model(self) -> bool:
        """Whether the judge reads a second unified model's ``P(yes)`` (``weak``: the judge slot)."""
        return self.kind == "weak"

    @property
    def spec(self) -> str:
        if self.kind == "pr":
            return f"pr:{self.p:g},{self.recall:g}"
        return f"{self.kind}:{self.p:g}" if self.kind in ("noisy", "corrupt", "lookalike") else self.kind

    def score(
        self,
        p_yes: torch.Tensor,
        external_yes: torch.Tensor | None,
        *,
        threshold: float,
        generator: torch.Generator | Sequence[torch.Generator],
        near_miss: torch.Tensor | None = None,
        judge_yes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-candidate scores ``(R, B, K)`` in [0, 1]; accepted where ``score >= threshold``.

        An inverted verdict moves a candidate to the other side of the threshold (keeping its order
        by ``P(yes)``), so the ranking used for DPO pairs follows the (corrupted) verdicts.
        ``generator``: one, or one per replica (replica r's random choices then depend only on its own
        seed). ``near_miss`` ``(R, B, K)`` bool: the world's near misses (``lookalike``, ``pr``).
        ``judge_yes`` ``(R, B, K)``: the judge model's ``P(yes)`` on the same candidates (``weak``).
        """
        if self.kind == "self":
            return p_yes
        if self.kind == "weak":
            if judge_yes is None:
                raise ValueError(f"judge {self.spec!r} needs the judge model's P(yes) (judge_yes=...), and none was "
                                 f"given")
            if judge_yes.shape != p_yes.shape:
                raise ValueError(f"judge {self.spec!r}: the judge model's P(yes) {tuple(judge_yes.shape)} must have "
                                 f"the shape of the model's own {tuple(p_yes.shape)}")
            return judge_yes.to(p_yes.dtype)
        if self.kind == "all":
            return torch.ones_like(p_yes)
        if external_yes is None and self.needs_external:
            raise ValueError(f"judge {self.spec!r} needs an external judge, and none was given")
        if self.kind in ("oracle", "noisy"):
            # accepted candidates map into [threshold, 1], rejected ones into [0, threshold), each
            # ordered by the model's own P(yes) so DPO pairs stay well defined
            score = _place(p_yes, external_yes.bool(), threshold)
            if self.kind == "oracle":
                return score
            return _invert(score, self.p, threshold, generator)
        if self.kind == "corrupt":
            return _invert(p_yes, self.p, threshold, generator)
        if near_miss is None:
            raise ValueError(f"judge {self.spec!r} needs the world's near misses (near_miss=...), and none were given")
        if near_miss.shape != p_yes.shape or external_yes.shape != p_yes.shape:
            raise ValueError(f"judge {self.spec!r}: near_miss {tuple(near_miss.shape)} and external verdicts "
                             f"{tuple(external_yes.shape)} must have the shape of P(yes) {tuple(p_yes.shape)}")
        aligned = external_yes.bool()
        near = near_miss.bool().to(aligned.device) & ~aligned
        u = _uniform(p_yes.shape, generator).to(aligned.device)
        if self.kind == "lookalike":
            accept = aligned | (near & (u < self.p))
        else:
            accept = _precision_recall(aligned, near, u, self.p, self.recall)
        return _place(p_yes, accept, threshold)


def _uniform(shape, generator) -> torch.Tensor:
    """Uniforms of ``shape`` ``(R, ...)`` in float64: from one generator, or replica r's from its own."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, dtype=torch.float64)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} replicas")
    return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64) for g in generator])


def _invert(score: torch.Tensor, p: float, threshold: float, generator) -> torch.Tensor:
    flip = _uniform(score.shape, generator) < p
    accepted = accepts(score, threshold)
    return torch.where(flip.to(score.device), _place(score, ~accepted, threshold), score)


def _precision_recall(aligned: torch.Tensor, near: torch.Tensor, u: torch.Tensor, precision: float,
                      recall: float) -> torch.Tensor:
    """Per replica, ``round(recall * n_aligned)`` aligned candidates and ``round(tp (1 - precision) /
    precision)`` misaligned ones (near misses first, then the others), each a uniform draw (the
    ``u`` keys: the smallest win) from its group; capped by what the pool holds."""
    out = torch.zeros_like(aligned)
    for r in range(aligned.shape[0]):
        a, nm, key = aligned[r].flatten(), near[r].flatten(), u[r].flatten()
        tp = math.floor(recall * int(a.sum()) + 0.5)
        fp = math.floor(tp * (1.0 - precision) / precision + 0.5)
        pick = torch.zeros_like(a)
        for group, k in ((a, tp), (nm, fp), (~a & ~nm, fp - int(nm.sum()))):
            k = min(max(k, 0), int(group.sum()))
            if k:
                idx = group.nonzero().flatten()
                pick[idx[key[idx].argsort()[:k]]] = True
        out[r] = pick.view(aligned.shape[1:])
    return out


def _place(order: torch.Tensor, accept: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scores in [threshold, 1] where ``accept``, in [0, threshold) elsewhere, monotone in ``order``."""
    return torch.where(accept, threshold + (1 - threshold) * order, threshold * order * (1 - 1e-6))


def near_misses(external, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The world's near misses among ``images`` ``(R, B, K, M)``: ``(R, B, K)`` bool, from
    ``external.near_miss`` or, when ``external`` is a bound method (``world.oracle``), from the
    ``near_miss`` of its object. A ``ValueError`` names the judge type that offers none.

    >>> from dynamics.sim.world import SimWorld
    >>> w = SimWorld(8, 8, seed=0)
    >>> near_misses(w.oracle, torch.tensor([0]), torch.zeros(1, 1, 2, 1, dtype=torch.long)).shape
    torch.Size([1, 1, 2])
    >>> near_misses(lambda ids, x: None, torch.tensor([0]), torch.zeros(1, 1, 2, 1, dtype=torch.long))
    Traceback (most recent call last):
    ...
    ValueError: this judge needs near misses: the external judge (function) offers no near_miss(prompt_ids, images)
    """
    fn = getattr(external, "near_miss", None)
    if fn is None:
        fn = getattr(getattr(external, "__self__", None), "near_miss", None)
    if fn is None:
        raise ValueError(f"this judge needs near misses: the external judge ({type(external).__name__}) offers no "
                         f"near_miss(prompt_ids, images)")
    return fn(prompt_ids, images).bool()


def _number(spec: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"judge {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"judge {spec!r}: {text!r} is not a finite number")
    return v


def parse_judge(spec: str) -> Judge:
    """Parse a judge spec (``self``, ``oracle``, ``external``, ``all``, ``noisy:p``, ``corrupt:p``,
    ``lookalike:p``, ``pr:precision,recall``, ``weak``).

    >>> parse_judge("noisy:0.1")
    Judge(kind='noisy', p=0.1, recall=None)
    >>> parse_judge("pr:0.9,0.5").spec
    'pr:0.9,0.5'
    >>> parse_judge("corrupt:2")
    Traceback (most recent call last):
    ...
    ValueError: judge 'corrupt:2': probability 2.0 is outside [0, 1]
    >>> parse_judge("pr:0.9")
    Traceback (most recent call last):
    ...
    ValueError: judge 'pr:0.9' needs a precision and a recall, e.g. pr:0.9,0.5
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"judge spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown judge {spec!r}; expected one of {_EXPECTED}")
    if kind == "external":
        kind = "oracle"
    if kind in ("noisy", "corrupt", "lookalike"):
        if not arg:
            raise ValueError(f"judge {spec!r} needs a probability, e.g. {kind}:0.3")
        p = _number(spec, arg)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"judge {spec!r}: probability {p} is outside [0, 1]")
        return Judge(kind, p)
    if kind == "pr":
        parts = arg.split(",")
        if len(parts) != 2 or not all(s.strip() for s in parts):
            raise ValueError(f"judge {spec!r} needs a precision and a recall, e.g. pr:0.9,0.5")
        precision, recall = (_number(spec, s.strip()) for s in parts)
        for name, v in (("precision", precision), ("recall", recall)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"judge {spec!r}: {name} {v} is outside (0, 1]")
        return Judge("pr", precision, recall)
    if arg:
        raise ValueError(f"judge {spec!r} takes no argument")
    return Judge(kind)


def weak_judge_steps(full: int, fraction: float, steps: int | None = None) -> int:
    """The pre-training steps of the ``weak`` judge of a run pre-trained for ``full`` steps: ``steps``,
    or by default ``fraction`` of ``full`` (at least 1). A ValueError names a count outside ``1..full``.

    >>> weak_judge_steps(300, 1 / 15), weak_judge_steps(300, 1 / 15, 120)
    (20, 120)
    """
    n = max(1, round(fraction * full)) if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= full:
        raise ValueError(f"weak judge: pre-training steps {n!r} must be an integer in 1..{full} (the run's "
                         f"pre-training steps): the weak judge is the model with less understanding pre-training")
    return n

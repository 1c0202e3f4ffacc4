"""The data judges of Algorithm 1, with the same names at every scale.

A judge turns the model's own ``P(yes)`` and (where needed) the external judge's verdicts into a
*score* in [0, 1] per candidate; a candidate is accepted when its score reaches the threshold, and
DPO pairs take the highest- and lowest-scoring candidates of a prompt.

================  =====================================================================
spec              meaning
================  =====================================================================
``self``          the model's own understanding (the paper's method)
``oracle``        the external judge (ground truth at the theory and toy scales);
                  ``external`` is an alias
``all``           accepts every candidate: the unfiltered control
``noisy:<p>``     the external judge with each verdict inverted with probability p
``corrupt:<p>``   the self judge with each verdict inverted with probability p: poor
                  supervision, misaligned candidates become positives; p near 1 is adversarial
================  =====================================================================

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dynamics.metrics import accepts

__all__ = ["JUDGE_KINDS", "Judge", "parse_judge"]

JUDGE_KINDS = ("self", "oracle", "external", "all", "noisy", "corrupt")


@dataclass(frozen=True)
class Judge:
    """A parsed judge spec (see the module table)."""

    kind: str
    p: float = 0.0

    @property
    def needs_external(self) -> bool:
        return self.kind in ("oracle", "noisy")

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.p:g}" if self.kind in ("noisy", "corrupt") else self.kind

    def score(
        self,
        p_yes: torch.Tensor,
        external_yes: torch.Tensor | None,
        *,
        threshold: float,
        generator: torch.Generator | Sequence[torch.Generator],
    ) -> torch.Tensor:
        """Per-candidate scores ``(R, B, K)`` in [0, 1]; accepted where ``score >= threshold``.

        An inverted verdict moves a candidate to the other side of the threshold (keeping its order
        by ``P(yes)``), so the ranking used for DPO pairs follows the (corrupted) verdicts.
        ``generator``: one, or one per replica (replica r's flips then depend only on its own seed).
        """
        if self.kind == "self":
            return p_yes
        if self.kind == "all":
            return torch.ones_like(p_yes)
        if self.kind in ("oracle", "noisy"):
            if external_yes is None:
                raise ValueError(f"judge {self.spec!r} needs an external judge, and none was given")
            # accepted candidates map into [threshold, 1], rejected ones into [0, threshold), each
            # ordered by the model's own P(yes) so DPO pairs stay well defined
            score = _place(p_yes, external_yes.bool(), threshold)
            if self.kind == "oracle":
                return score
            return _invert(score, self.p, threshold, generator)
        if self.kind == "corrupt":
            return _invert(p_yes, self.p, threshold, generator)
        raise AssertionError(self.kind)


def _invert(score: torch.Tensor, p: float, threshold: float, generator) -> torch.Tensor:
    if isinstance(generator, torch.Generator):
        flip = torch.rand(score.shape, generator=generator, dtype=torch.float64) < p
    else:
        if len(generator) != score.shape[0]:
            raise ValueError(f"{len(generator)} generators for {score.shape[0]} replicas")
        flip = torch.stack([torch.rand(score.shape[1:], generator=g, dtype=torch.float64) for g in generator]) < p
    accepted = accepts(score, threshold)
    return torch.where(flip.to(score.device), _place(score, ~accepted, threshold), score)


def _place(order: torch.Tensor, accept: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scores in [threshold, 1] where ``accept``, in [0, threshold) elsewhere, monotone in ``order``."""
    return torch.where(accept, threshold + (1 - threshold) * order, threshold * order * (1 - 1e-6))


def parse_judge(spec: str) -> Judge:
    """Parse a judge spec (``self``, ``oracle``, ``external``, ``all``, ``noisy:p``, ``corrupt:p``).

    >>> parse_judge("noisy:0.1")
    Judge(kind='noisy', p=0.1)
    >>> parse_judge("corrupt:2")
    Traceback (most recent call last):
    ...
    ValueError: judge 'corrupt:2': probability 2.0 is outside [0, 1]
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"judge spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown judge {spec!r}; expected one of self, oracle, external, all, noisy:<p>, corrupt:<p>")
    if kind == "external":
        kind = "oracle"
    if kind in ("noisy", "corrupt"):
        if not arg:
            raise ValueError(f"judge {spec!r} needs a probability, e.g. {kind}:0.3")
        try:
            p = float(arg)
        except ValueError:
            raise ValueError(f"judge {spec!r}: {arg!r} is not a number") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"judge {spec!r}: probability {p} is outside [0, 1]")
        return Judge(kind, p)
    if arg:
        raise ValueError(f"judge {spec!r} takes no argument")
    return Judge(kind)

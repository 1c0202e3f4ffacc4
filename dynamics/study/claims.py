"""Pre-registered claims of a study, tested, and tested again under a rounding-level perturbation.

A :class:`Claim` states one finding before it is measured: which arm, which metric, read how (its
change beyond a control arm run from the same pre-trained models, its own change, or its value at the
end), which test (``greater``, ``less``, or ``equivalent`` within a stated margin: TOST), at which
one-sided level ``alpha``. :func:`check` tests a family of claims on a study's records with Holm's
correction; :func:`robust` tests them on two runs, the second from pre-trained weights moved by a
relative 1e-6 (:func:`dynamics.study.perturb`), and reports whether every conclusion is the same:
a conclusion that flips with the last bits of a float is not a finding.

    >>> recs = lambda gain: [{"epoch": e, "seed": s, "x": 0.5 + e * (gain + 0.01 * (s % 3))}
    ...                      for e in (0, 1) for s in range(6)]
    >>> arms = {"self": recs(0.05), "all": recs(0.0)}
    >>> c = Claim("self raises x beyond the control", arm="self", control="all", key="x", test="greater")
    >>> [v.holds for v in check([c], arms)]
    [True]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dynamics.study.read import beyond, delta, final
from dynamics.study.stats import Estimate, Verdict, equivalent, greater, holm, less

__all__ = ["Claim", "check", "robust", "summary_lines"]

TESTS = ("greater", "less", "equivalent")


@dataclass(frozen=True)
class Claim:
    """One pre-registered claim.

    ``arm``/``key``: the arm's records and the metric. Read as: the change beyond ``control`` (paired
    per unit) when ``control`` is given; else the value at the last epoch minus ``minus`` when
    ``final``; else the arm's own change over training. ``test``: ``greater`` / ``less`` (than
    ``null``) or ``equivalent`` (within ``±margin``); ``alpha``: the one-sided level. ``why``: the
    reason for a non-zero ``null`` or a ``margin`` (a number in a claim is a claim of the paper or a
    stated margin, never a band around a value measured once).
    """

    claim: str
    arm: str
    key: str
    test: str
    control: str | None = None
    final: bool = False
    minus: float = 0.0
    null: float = 0.0
    margin: float | None = None
    alpha: float = 0.01
    why: str = ""

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"Claim {self.claim!r}: test={self.test!r}, expected one of {TESTS}")
        if (self.test == "equivalent") != (self.margin is not None):
            raise ValueError(f"Claim {self.claim!r}: an equivalence test needs a margin, and only it has one")
        if (self.margin is not None or self.null) and not self.why:
            raise ValueError(f"Claim {self.claim!r}: state why the margin or null value is what it is (why=...)")

    def estimate(self, arms: Mapping[str, Sequence[dict]]) -> Estimate:
        for name in (self.arm, self.control):
            if name is not None and name not in arms:
                raise KeyError(f"Claim {self.claim!r}: no arm {name!r} in the study (arms: {sorted(arms)})")
        recs = arms[self.arm]
        if self.control is not None:
            return beyond(recs, arms[self.control], self.key)
        if self.final:
            return final(recs, self.key, minus=self.minus)
        return delta(recs, self.key)

    def verdict(self, arms: Mapping[str, Sequence[dict]]) -> Verdict:
        est = self.estimate(arms)
        if self.test == "greater":
            return greater(est, alpha=self.alpha, null=self.null, claim=self.claim)
        if self.test == "less":
            return less(est, alpha=self.alpha, null=self.null, claim=self.claim)
        return equivalent(est, margin=self.margin, alpha=self.alpha, claim=self.claim)


def _records(arms: Mapping) -> dict[str, Sequence[dict]]:
    return {k: getattr(v, "records", v) for k, v in arms.items()}


def check(claims: Sequence[Claim], arms: Mapping, *, correct: bool = True) -> list[Verdict]:
    """The verdict of every claim on ``arms`` (``{label: records or Arm}``), Holm-corrected over the
    family when ``correct`` (one test asserting several claims)."""
    arms = _records(arms)
    verdicts = [c.verdict(arms) for c in claims]
    return holm(verdicts) if correct and len(verdicts) > 1 else verdicts


def robust(claims: Sequence[Claim], arms: Mapping, perturbed: Mapping, *, correct: bool = True
           ) -> tuple[list[Verdict], list[Verdict]]:
    """:func:`check` on the study and on its perturbed twin; returns both lists of verdicts (a test
    then requires every claim to hold in both)."""
    return check(claims, arms, correct=correct), check(claims, perturbed, correct=correct)


def summary_lines(verdicts: Sequence[Verdict], perturbed: Sequence[Verdict] | None = None) -> str:
    """One line per claim (and its perturbed twin): what a failing findings test prints."""
    lines = []
    for i, v in enumerate(verdicts):
        lines.append(str(v))
        if perturbed is not None:
            lines.append("  perturbed run: " + str(perturbed[i]))
    return "\n".join(lines)

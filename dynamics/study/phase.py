"""The phase of an arm: co-improvement, co-degradation, drift, or no transfer, read against its control.

The paper names two outcomes of training the generation branch on self-judged data: *co-improvement*
(generation and understanding both improve) and *co-degradation* (both degrade while the intrinsic
Non still falls). An arm is placed by two paired tests against its control (the unfiltered judge run
from the same pre-trained models, :func:`dynamics.study.read.beyond`), each one-sided at ``alpha``:
generation's direction from the change of its accuracy (``gen_key``), understanding's from the change
of its false-positive rate (``fp_key``, lower is better). Then:

==================  ======================  ==========================================================
generation          understanding           phase
==================  ======================  ==========================================================
better              better                  ``co-improvement``
worse               worse                   ``co-degradation``
better or worse     the other way           ``drift`` (understanding moves against generation)
better or worse     unchanged               ``no transfer`` (understanding does not follow; the test of
                                            no change is TOST within ``fp_margin``)
better or worse     neither test holds      ``undetermined``
unchanged           any                     ``undetermined`` (nothing to transfer)
==================  ======================  ==========================================================

A direction is claimed only when its one-sided test holds at ``alpha``; an arm whose understanding
moves significantly in neither direction and is not equivalent to no change is ``undetermined``
(too few units for the effect).

    >>> recs = lambda g, f: [{"epoch": e, "seed": s, "gen": 0.4 + e * (g + 0.01 * (s % 3)),
    ...                       "fp": 0.2 + e * (f + 0.005 * (s % 2))} for e in (0, 1) for s in range(8)]
    >>> arms = {"all": recs(0.0, 0.0), "self": recs(0.1, -0.05), "bad": recs(-0.1, 0.05)}
    >>> [phase_of(arms[a], arms["all"], gen_key="gen", fp_key="fp", fp_margin=0.02).phase for a in ("self", "bad")]
    ['co-improvement', 'co-degradation']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynamics.study.read import beyond, final
from dynamics.study.stats import Estimate, equivalent, greater, less

__all__ = ["PHASES", "PHASE_FP_MARGIN", "Phase", "phase_of", "phase_table"]

PHASES = ("co-improvement", "co-degradation", "drift", "no transfer", "undetermined")
# a change of the false-positive rate within one point counts as none (the TOST margin of ``no
# transfer``): a fifth of the smallest understanding effect the paper reports (DPO's win rate 50 -> 55.6)
PHASE_FP_MARGIN = 0.01


@dataclass(frozen=True)
class Phase:
    """An arm's phase with the estimates behind it (each the per-unit change beyond the control)."""

    phase: str
    gen: Estimate
    fp: Estimate
    gen_direction: int  # +1 better, -1 worse, 0 not shown
    und_direction: int  # +1 better (fewer false positives), -1 worse, 0 equivalent to no change, None neither
    others: dict = field(default_factory=dict)  # further keys read the same way (Non, win rate, ...)

    def to_dict(self) -> dict:
        return {"phase": self.phase, "gen": self.gen.as_tuple(), "fp": self.fp.as_tuple(),
                "gen_direction": self.gen_direction, "und_direction": self.und_direction,
                **{k: v.as_tuple() for k, v in self.others.items()}}


def _direction(est: Estimate, alpha: float, *, lower_is_better: bool = False) -> int:
    up, down = greater(est, alpha=alpha).holds, less(est, alpha=alpha).holds
    d = 1 if up else -1 if down else 0
    return -d if lower_is_better else d


def phase_of(records: Sequence[dict], control: Sequence[dict], *, gen_key: str, fp_key: str,
             fp_margin: float, alpha: float = 0.01, other_keys: Sequence[str] = (),
             final_keys: Mapping[str, float] | None = None) -> Phase:
    """The phase of ``records`` against ``control`` (see the module docstring). ``fp_margin``: the
    margin within which a change of the false-positive rate counts as none (TOST); ``other_keys``
    are read the same way (beyond the control) and ``final_keys`` ``{key: minus}`` as final values
    (e.g. the win rate against 0.5), for the table."""
    if not fp_margin > 0:
        raise ValueError(f"phase_of: fp_margin must be > 0, got {fp_margin}")
    gen, fp = beyond(records, control, gen_key), beyond(records, control, fp_key)
    g = _direction(gen, alpha)
    u = _direction(fp, alpha, lower_is_better=True)
    und: int | None = u if u else (0 if equivalent(fp, margin=fp_margin, alpha=alpha).holds else None)
    if g == 0 or und is None:
        name = "undetermined"
    elif und == 0:
        name = "no transfer"
    elif und == g:
        name = "co-improvement" if g > 0 else "co-degradation"
    else:
        name = "drift"
    others = {k: beyond(records, control, k) for k in other_keys}
    others.update({f"final_{k}": final(records, k, minus=m) for k, m in (final_keys or {}).items()})
    return Phase(name, gen, fp, g, und, others)


def phase_table(arms: Mapping[str, Mapping[str, Sequence[dict]]], *, control: str, gen_key: str, fp_key: str,
                fp_margin: float, alpha: float = 0.01, other_keys: Sequence[str] = (),
                final_keys: Mapping[str, float] | None = None) -> dict[str, dict[str, Phase]]:
    """``{coupling: {judge: Phase}}`` for ``arms`` ``{coupling: {judge: records}}``, every judge but
    ``control`` read against it."""
    return {c: {j: phase_of(recs, by_judge[control], gen_key=gen_key, fp_key=fp_key, fp_margin=fp_margin,
                            alpha=alpha, other_keys=other_keys, final_keys=final_keys)
                for j, recs in by_judge.items() if j != control}
            for c, by_judge in arms.items()}

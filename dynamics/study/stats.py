"""Statistics of a study, in one place: paired comparisons across replicas, one-sided and
equivalence tests, Holm's correction, power.

A *replica* (a unit) is one pre-trained model, identified by its world and seed; every arm of a study
runs from the same replicas, so an arm is compared to its control replica by replica (a paired
design: the per-unit differences carry the comparison). The tests are Student's t on those
differences with ``n - 1`` degrees of freedom (``scipy.stats``: :func:`paired` equals
``scipy.stats.ttest_rel``), one-sided for a claim of direction, TOST (two one-sided tests against a
stated margin) for a claim of *no effect*, and Holm's step-down correction where one test asserts
several claims.

    >>> est = paired([0.62, 0.70, 0.66, 0.69], [0.60, 0.61, 0.60, 0.62])
    >>> round(est.mean, 4), est.n, est.df
    (0.06, 4, 3)
    >>> v = greater(est, alpha=0.01)       # four units: one-sided p 0.013, not enough at 0.01
    >>> v.holds, round(v.p, 4)
    (False, 0.0133)
    >>> equivalent(one_sample([0.001, -0.002, 0.0, 0.001, -0.001]), margin=0.01).holds
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Estimate",
    "Verdict",
    "equivalent",
    "greater",
    "holm",
    "less",
    "mean_se",
    "one_sample",
    "paired",
    "pearson",
    "power_one_sided",
    "required_n",
    "slope",
    "spearman",
]


def _clean(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_se(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (NaN for one value), count; None and NaN values are skipped.

    >>> mean_se([1.0, 2.0, 3.0])
    (2.0, 0.5773502691896257, 3)
    >>> mean_se([])
    (nan, nan, 0)
    """
    vals = _clean(values)
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(vals) / n
    if n == 1:
        return m, math.nan, 1
    var = sum((v - m) ** 2 for v in vals) / (n - 1)
    return m, math.sqrt(var / n), n


@dataclass(frozen=True)
class Estimate:
    """The mean of per-unit values (differences, for a paired comparison) with its standard error,
    count and degrees of freedom ``n - 1``. ``values`` keeps the per-unit numbers."""

    mean: float
    se: float
    n: int
    values: tuple[float, ...] = ()

    @property
    def df(self) -> int:
        return self.n - 1

    @property
    def t(self) -> float:
        """``mean / se`` (the statistic against zero); NaN with fewer than two units, infinite when
        every unit gives the same non-zero value."""
        if self.n < 2:
            return math.nan
        if self.se == 0:
            return math.copysign(math.inf, self.mean) if self.mean != 0 else math.nan
        return self.mean / self.se

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided confidence interval of the mean at ``level`` (t with ``n - 1`` df).

        >>> lo, hi = one_sample([1.0, 2.0, 3.0]).ci(0.95)
        >>> round(lo, 3), round(hi, 3)
        (-0.484, 4.484)
        """
        if self.n < 2:
            return math.nan, math.nan
        from scipy import stats

        q = float(stats.t.ppf(0.5 + level / 2, self.df))
        return self.mean - q * self.se, self.mean + q * self.se

    def p(self, alternative: str = "two-sided", null: float = 0.0) -> float:
        """p-value of the t test of ``mean == null`` against ``alternative`` (``two-sided``,
        ``greater``, ``less``)."""
        if alternative not in ("two-sided", "greater", "less"):
            raise ValueError(f"alternative {alternative!r}: expected 'two-sided', 'greater' or 'less'")
        if self.n < 2:
            return math.nan
        from scipy import stats

        if self.se == 0:
            d = self.mean - null
            if d == 0:
                return 1.0
            hit = {"two-sided": True, "greater": d > 0, "less": d < 0}[alternative]
            return 0.0 if hit else 1.0
        t = (self.mean - null) / self.se
        if alternative == "greater":
            return float(stats.t.sf(t, self.df))
        if alternative == "less":
            return float(stats.t.cdf(t, self.df))
        return float(2 * stats.t.sf(abs(t), self.df))

    def as_tuple(self) -> tuple[float, float, int]:
        """``(mean, se, n)``, the form tables and figures print."""
        return self.mean, self.se, self.n

    def __str__(self) -> str:
        return f"{self.mean:+.4g} ± {self.se:.2g} (n {self.n})"


def one_sample(values: Iterable[float | None]) -> Estimate:
    """The mean of per-unit values (None and NaN skipped) as an :class:`Estimate`.

    >>> one_sample([0.1, 0.3]).as_tuple()
    (0.2, 0.09999999999999999, 2)
    """
    vals = _clean(values)
    m, se, n = mean_se(vals)
    return Estimate(m, se, n, tuple(vals))


def paired(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """The per-unit differences ``a[i] - b[i]`` (same units, same order) as an :class:`Estimate`; a
    unit where either value is None or NaN is dropped. Its two-sided p-value equals
    ``scipy.stats.ttest_rel(a, b).pvalue``.

    >>> paired([3.0, 5.0], [1.0, 2.0]).values
    (2.0, 3.0)
    """
    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} values against {len(b)}; a paired comparison needs the same units")
    keep = [(x, y) for x, y in zip(a, b) if _clean([x]) and _clean([y])]
    return one_sample(float(x) - float(y) for x, y in keep)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one pre-registered test: the claim in words, the estimate it rests on, the
    test (``greater``, ``less`` or ``equivalent`` within ``margin``), its level ``alpha`` and p-value,
    and whether the claim holds (``p < alpha``)."""

    claim: str
    estimate: Estimate
    test: str
    alpha: float
    p: float
    margin: float | None = None

    @property
    def holds(self) -> bool:
        return bool(self.p < self.alpha)

    def __str__(self) -> str:
        m = f", margin ±{self.margin:g}" if self.margin is not None else ""
        lo, hi = self.estimate.ci(1 - 2 * self.alpha)
        return (f"{self.claim}: {'holds' if self.holds else 'does not hold'} ({self.test}{m}; "
                f"{self.estimate}; p {self.p:.2g} vs alpha {self.alpha:g}; {100 * (1 - 2 * self.alpha):g}% CI "
                f"[{lo:+.4g}, {hi:+.4g}])")

    def to_dict(self) -> dict:
        return {"claim": self.claim, "test": self.test, "alpha": self.alpha, "p": self.p, "holds": self.holds,
                "margin": self.margin, "mean": self.estimate.mean, "se": self.estimate.se, "n": self.estimate.n}


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha={alpha}: a one-sided level must lie in (0, 0.5)")


def greater(est: Estimate, *, alpha: float = 0.01, null: float = 0.0, claim: str = "") -> Verdict:
    """One-sided t test that the mean exceeds ``null`` (a claim of direction, or of exceeding a
    stated minimum effect)."""
    _check_alpha(alpha)
    return Verdict(claim or f"mean > {null:g}", est, "greater", alpha, est.p("greater", null))


def less(est: Estimate, *, alpha: float = 0.01, null: float = 0.0, claim: str = "") -> Verdict:
    """One-sided t test that the mean is below ``null``."""
    _check_alpha(alpha)
    return Verdict(claim or f"mean < {null:g}", est, "less", alpha, est.p("less", null))


def equivalent(est: Estimate, *, margin: float, alpha: float = 0.01, claim: str = "") -> Verdict:
    """TOST: the mean lies within ``(-margin, +margin)``: both one-sided tests (mean > -margin and
    mean < +margin) reject at ``alpha``; the p-value is the larger of the two. Equivalent to the
    ``1 - 2 alpha`` confidence interval lying inside the margin.

    >>> equivalent(one_sample([0.02, 0.03, 0.01]), margin=0.01).holds      # a real effect
    False
    """
    _check_alpha(alpha)
    if not margin > 0:
        raise ValueError(f"equivalence margin={margin}: must be positive (state it, with its reason)")
    p = max(est.p("greater", -margin), est.p("less", margin))
    return Verdict(claim or f"|mean| < {margin:g}", est, "equivalent", alpha, p, margin)


def holm(verdicts: Sequence[Verdict], alpha: float | None = None) -> list[Verdict]:
    """Holm's step-down correction of several claims tested together at family level ``alpha``
    (default: the first verdict's): returns the verdicts with Holm-adjusted p-values, so that
    ``holds`` controls the family-wise error rate.

    >>> vs = [greater(one_sample([1.0, 1.1, 0.9, 1.0]), claim="a"), greater(one_sample([0.1, -0.2, 0.3]), claim="b")]
    >>> [v.holds for v in holm(vs)]
    [True, False]
    """
    if not verdicts:
        return []
    alpha = verdicts[0].alpha if alpha is None else alpha
    m = len(verdicts)
    order = sorted(range(m), key=lambda i: (math.isnan(verdicts[i].p), verdicts[i].p))
    adj = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = verdicts[i].p
        running = max(running, min(1.0, (m - rank) * p)) if not math.isnan(p) else math.nan
        adj[i] = running
    return [Verdict(v.claim, v.estimate, v.test + f" (Holm, {m} claims)", alpha, a, v.margin)
            for v, a in zip(verdicts, adj)]


def power_one_sided(effect: float, sd: float, n: int, *, alpha: float = 0.01) -> float:
    """Power of the one-sided one-sample t test at level ``alpha`` to detect a true mean ``effect``
    (in the direction tested) when per-unit values have standard deviation ``sd``, with ``n`` units
    (the noncentral t distribution).

    >>> round(power_one_sided(1.0, 1.0, 20, alpha=0.01), 3)
    0.965
    """
    if n < 2 or not sd > 0:
        return math.nan
    from scipy import stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(crit, df, abs(effect) / sd * math.sqrt(n)))


def required_n(effect: float, sd: float, *, alpha: float = 0.01, power: float = 0.9, n_max: int = 10_000) -> int:
    """The fewest units giving :func:`power_one_sided` >= ``power``.

    >>> required_n(1.0, 1.0, alpha=0.01, power=0.9)
    16
    """
    for n in range(2, n_max + 1):
        if power_one_sided(effect, sd, n, alpha=alpha) >= power:
            return n
    raise ValueError(f"required_n: more than {n_max} units needed for effect {effect} with sd {sd}")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log |y|`` against ``log x``: the order of a residual in the step size.

    >>> round(slope([1e-3, 1e-2, 1e-1], [2e-6, 2e-4, 2e-2]), 6)
    2.0
    """
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"slope: need two or more (x, y) pairs, got {len(xs)} and {len(ys)}")
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(abs(y), 1e-300)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("slope: every x is the same")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def _correlation(kind: str, a: Sequence[float], b: Sequence[float]) -> float:
    from scipy import stats

    x = [float(v) for v in a]
    y = [float(v) for v in b]
    if len(x) != len(y):
        raise ValueError(f"{kind}: the two samples have {len(x)} and {len(y)} values")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:  # undefined: scipy would warn and return NaN
        return math.nan
    fn = stats.pearsonr if kind == "pearson" else stats.spearmanr
    return float(fn(x, y).statistic)


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson's correlation (``scipy.stats.pearsonr``); NaN with fewer than two pairs or a constant sample.

    >>> round(pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]), 4)
    0.9934
    """
    return _correlation("pearson", a, b)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``, average ranks for ties); NaN as :func:`pearson`.

    >>> spearman([1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 64.0])
    1.0
    """
    return _correlation("spearman", a, b)

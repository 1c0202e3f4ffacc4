"""The study layer's statistics against scipy.stats and against cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from dynamics.study.stats import (
    equivalent,
    greater,
    holm,
    less,
    mean_se,
    one_sample,
    paired,
    power_one_sided,
    required_n,
    slope,
)

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=3, max_size=20))
def test_paired_t_equals_scipy_ttest_rel(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    est = paired(a, b)
    d = np.subtract(a, b)
    if np.std(d) < 1e-9 * (1 + np.abs(d).max()):  # degenerate: scipy gives NaN, we give 0/1 by direction
        return
    for alt in ("two-sided", "greater", "less"):
        want = sps.ttest_rel(a, b, alternative=alt)
        assert est.p(alt) == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert est.t == pytest.approx(sps.ttest_rel(a, b).statistic, rel=1e-9)
    assert est.df == len(a) - 1
    lo, hi = est.ci(0.9)
    ci = sps.ttest_rel(a, b).confidence_interval(0.9)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)


def test_one_sided_tests_use_n_minus_one_degrees_of_freedom():
    """Three units at 3 standard errors is p 0.048 one-sided (t, 2 df), not the normal's 0.0013."""
    est = one_sample([1.0, 2.0, 3.0])  # mean 2, se 0.577: t = 3.46
    assert greater(est).p == pytest.approx(sps.t.sf(2 / (1 / math.sqrt(3)), 2))
    assert not greater(est, alpha=0.01).holds and greater(est, alpha=0.05).holds
    assert less(est).p == pytest.approx(1 - greater(est).p)
    assert not less(est, alpha=0.4).holds


def test_tost_needs_the_whole_interval_inside_the_margin():
    small = one_sample([0.001, -0.001, 0.002, 0.0, -0.002, 0.001])
    assert equivalent(small, margin=0.01).holds
    lo, hi = small.ci(1 - 2 * 0.01)
    assert -0.01 < lo and hi < 0.01
    # a small mean with a wide interval is not evidence of no effect
    noisy = one_sample([0.03, -0.03, 0.02, -0.02])
    assert abs(noisy.mean) < 0.01 and not equivalent(noisy, margin=0.01).holds
    # TOST p is the larger of the two one-sided p-values against the margins
    v = equivalent(noisy, margin=0.05)
    assert v.p == pytest.approx(max(noisy.p("greater", -0.05), noisy.p("less", 0.05)))
    with pytest.raises(ValueError, match="margin=0"):
        equivalent(small, margin=0)


def test_holm_matches_its_definition():
    ests = [one_sample(v) for v in ([1.0, 1.2, 0.9, 1.1], [0.2, 0.1, 0.3, 0.25], [0.1, -0.1, 0.2, 0.0])]
    raw = [greater(e, alpha=0.05) for e in ests]
    adj = holm(raw)
    ps = sorted(v.p for v in raw)
    want = [min(1, 3 * ps[0]), max(min(1, 3 * ps[0]), min(1, 2 * ps[1])), 0]
    want[2] = max(want[1], min(1, ps[2]))
    assert sorted(v.p for v in adj) == pytest.approx(want)
    assert [v.holds for v in adj] == [v.p < 0.05 for v in adj]
    assert all(a.p >= r.p for a, r in zip(adj, raw))


def test_power_agrees_with_simulation():
    rng = np.random.default_rng(0)
    n, effect, sd = 8, 0.8, 1.0
    x = rng.normal(effect, sd, size=(20000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    sim = float((t > sps.t.ppf(0.99, n - 1)).mean())
    assert power_one_sided(effect, sd, n, alpha=0.01) == pytest.approx(sim, abs=0.01)
    n_req = required_n(effect, sd, alpha=0.01, power=0.9)
    assert power_one_sided(effect, sd, n_req) >= 0.9 > power_one_sided(effect, sd, n_req - 1)


def test_degenerate_and_bad_input():
    assert mean_se([1.0, float("nan"), None, 3.0]) == (2.0, math.sqrt(2) / math.sqrt(2) * 1.0, 2)
    same = one_sample([0.5, 0.5, 0.5])
    assert same.p("greater") == 0.0 and same.p("less") == 1.0 and math.isinf(same.t)
    assert math.isnan(one_sample([1.0]).p("greater"))
    with pytest.raises(ValueError, match="same units"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="alternative 'up'"):
        same.p("up")
    with pytest.raises(ValueError, match="alpha=0.7"):
        greater(same, alpha=0.7)
    assert slope([1, 10], [3, 30]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every x is the same"):
        slope([1, 1], [1, 2])

"""The metric set: each metric checked on hand-built judgement tables and against its definition."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamics import metrics

bools = st.lists(st.booleans(), min_size=1, max_size=40)


def t(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_non_unification_is_share_of_own_rejections():
    own = t([True, True, False, False], [False, False, False, True])
    assert metrics.non_unification(own).tolist() == [0.5, 0.75]


def test_attribution_counts_external_agreement_among_own_rejections():
    own = t([False, False, False, True])
    ext = t([False, False, True, True])
    assert metrics.weak_generation_attribution(own, ext).item() == 2 / 3


def test_attribution_is_nan_when_nothing_rejected():
    assert math.isnan(metrics.weak_generation_attribution(t([True]), t([False])).item())


def test_win_rate_half_without_disagreement_and_reports_zero_denominator():
    same = t([True, False, True])
    rate, n = metrics.win_rate(same, same, t([False, False, True]))
    assert rate.item() == 0.5 and n.item() == 0


def test_win_rate_counts_only_disagreements():
    pre = t([True, True, False, True, False])
    cur = t([False, True, True, True, False])
    ext = t([False, False, False, True, True])
    # disagreements at 0 (cur right) and 2 (cur wrong)
    rate, n = metrics.win_rate(pre, cur, ext)
    assert (rate.item(), n.item()) == (0.5, 2)
    rate, n = metrics.win_rate(pre, cur, ~ext)
    assert (rate.item(), n.item()) == (0.5, 2)
    ext2 = t([False, False, True, True, True])
    assert metrics.win_rate(pre, cur, ext2)[0].item() == 1.0


@settings(max_examples=60, deadline=None)
@given(bools, st.data())
def test_rates_match_their_definitions(own_list, data):
    n = len(own_list)
    ext_list = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    own, ext = torch.tensor([own_list]), torch.tensor([ext_list])
    fp = metrics.false_positive_rate(own, ext).item()
    fn = metrics.false_negative_rate(own, ext).item()
    neg = [o for o, e in zip(own_list, ext_list) if not e]
    pos = [o for o, e in zip(own_list, ext_list) if e]
    assert (math.isnan(fp) and not neg) or fp == sum(neg) / len(neg)
    assert (math.isnan(fn) and not pos) or fn == sum(not o for o in pos) / len(pos)
    assert metrics.accuracy(ext).item() == sum(ext_list) / n
    # a perfect understanding has no false positives or negatives and wins every disagreement
    rate, _ = metrics.win_rate(own, ext, ext)
    assert rate.item() in (0.5, 1.0)


def test_replicas_are_reduced_separately():
    own = torch.stack([torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)])
    assert metrics.non_unification(own).tolist() == [0.0, 1.0]


def test_fp_corrections_flag_wrong_yes_turned_right_no():
    pre, cur, ext = t([True, True, False]), t([False, False, False]), t([False, True, False])
    assert metrics.false_positive_corrections(pre, cur, ext).tolist() == [[True, False, False]]


def test_a_probability_at_the_threshold_is_a_yes():
    """The one threshold rule (the loop's): P(yes) >= threshold; with '>' the middle entry would be a no."""
    p = torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64)
    assert metrics.accepts(p, 0.5).tolist() == [[False, True, True]]
    assert metrics.accepts(p, 0.75).tolist() == [[False, False, True]]
    assert metrics.non_unification(metrics.accepts(p, 0.5)).item() == pytest.approx(1 / 3)

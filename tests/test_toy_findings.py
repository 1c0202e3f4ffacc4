"""The paper's findings in the toy world (a multi-token unified transformer judged exactly), as
pre-registered hypothesis tests.

Design (``tests/conftest.py``): eight candidate pre-trained models (world 0, i.e. held-out split 0,
with seeds 0-4, and world 1 with seeds 0-2), of which those that pass the gap check enter the study (the main job's own
precondition; on the machine these tests were written on, world 1 seed 2 fails it: its understanding
is at 0.575 on balanced probes), one CLO round each with the default recipe, every arm from the same
weights and seed:
``self`` (the paper's method), ``all`` (the unfiltered control), ``corrupt:0.9`` (poor supervision).
Each claim is the per-unit change of an arm beyond the control's, tested one-sided at alpha = 0.01
with the paired t (n - 1 degrees of freedom), Holm-corrected within a family. The same claims are tested
on the same models with every weight moved by a relative 1e-6 by ``test_toy_findings_perturbed.py``:
both must hold.

What holds and what does not at this scale:

1. co-improvement: generation improves and Non falls beyond the control (tested). The trained
   understanding does not co-improve measurably: its false-positive rate beyond the control is
   -0.8 ± 0.6 points on seven units (two-sided p 0.23; an earlier three-seed reading on another
   machine, -1.5 ± 0.6, was read as an effect), it changes its verdict on about 2 % of the samples,
   and the win rate is 50.1 ± 5.1 on 19 disagreements per unit. Not asserted;
2. co-degradation under a corrupt judge: generation degrades beyond the control (tested); the paper's
   "Non still falls" does *not* hold, Non rises beyond the control (tested), because the trained
   understanding does not follow the generator;
3. the one-step change of ``log pi`` and ``log P(yes)`` of probe pairs matches the kernel module's
   first-order prediction, with an O(lr^2) residual (tested on one model, float64).
"""

from __future__ import annotations

import pytest
import torch

from dynamics.study.first_order import summary as one_step_summary
from dynamics.toy.study import judge_study, one_step_check, pretrained_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def arms(toy_findings):
    return judge_study(toy_findings["size"], toy_findings["judges"], skip_no_gap=True)


@pytest.mark.parametrize("family", ["co_improvement", "co_degradation"])
def test_claims_hold(arms, toy_findings, family):
    toy_findings["check"](toy_findings["claims"][family], arms)


def test_every_arm_reads_every_unit_before_and_after(arms, toy_findings):
    """Every arm has one record per included unit before and after the round, and nothing between
    (``eval_every``)."""
    size = toy_findings["size"]
    units = sorted({(r["world"], r["seed"]) for r in arms["all"]})
    assert len(units) >= toy_findings["min_units"]
    for label, recs in arms.items():
        assert sorted({r["epoch"] for r in recs}) == [0, size.clo.epochs], label
        for epoch in (0, size.clo.epochs):
            assert sorted((r["world"], r["seed"]) for r in recs if r["epoch"] == epoch) == units, label


def test_one_step_change_matches_the_first_order_prediction(toy_findings):
    """Finding 3 on the pre-trained model of seed 0: float64, one SGD step of a self-judged CLO
    minibatch, 24 probes per branch (half of them false positives where there are enough). A correct
    first-order prediction leaves a residual of order lr^2: relative error under 1 % at lr 1e-4 and a
    residual slope of 2; transformers' eager attention takes its softmax in float32 even in a float64
    model, which floors the relative error near 0.2 % and bends the slope over 1e-4..1e-1 to 1.8-2.0."""
    model = pretrained_model(toy_findings["size"], 0)
    rows = one_step_check(model, lrs=(1e-4, 1e-3, 1e-2, 1e-1), seed=0)
    summary = one_step_summary(rows)
    for branch in ("generation", "understanding"):
        s = summary[branch]
        assert s["probes"] == 24
        assert s["relative_error"][1e-4] < 0.01, s
        assert s["sign_agreement"] >= 0.95, s
        assert 1.7 < s["residual_slope"] < 2.3, s
    # the predictions are not trivially zero: the step moves both branches
    assert max(abs(r["predicted"]) for r in rows if r["branch"] == "understanding" and r["lr"] == 1e-2) > 1e-3

"""The paper's findings in the toy world (a multi-token unified transformer judged exactly).

Three pre-trained models (seeds 0, 1, 2; cached in ``cache/toy`` or ``$DYNAMICS_CACHE``, so only a
fresh machine pays the pre-training), one CLO round each with the default recipe, every arm from the
same weights and seed: ``self`` (the paper's method), ``all`` (the unfiltered control), ``oracle``
(the exact detector), ``corrupt:0.9`` (poor supervision). Effects are per-seed paired differences
against the control, required beyond ``Z`` standard errors. ``paper_figures/fig_toy_*.py`` draws the
same comparisons per category.

What holds and what does not (each stated as a test, so that a change of the code or of the world
that changes the answer is noticed):

1. co-improvement: generation improves and Non falls beyond the control (holds); the trained
   understanding moves the paper's way (fewer false positives than the control) but barely: it
   changes its verdict on a few percent of the samples in every arm, and the win rate stays within
   noise of 50 (holds only in direction);
2. co-degradation under a corrupt judge: generation degrades beyond the control (holds); Non does
   *not* fall, it rises, because understanding does not follow the generator;
3. the one-step change of ``log pi`` and ``log P(yes)`` of probe pairs matches the kernel module's
   first-order prediction, with an O(lr^2) residual (holds);
4. Janus-like against full sharing, and the Bayes link: see ``test_sharing_...``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from dynamics.figures.sim import paired_difference
from dynamics.figures.toy import study
from dynamics.toy.study import TOY_CLO, ToySize, one_step_check, one_step_summary, pretrained_model

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CACHE = os.environ.get("DYNAMICS_CACHE", str(ROOT / "cache" / "toy"))
SIZE = ToySize(seeds=(0, 1, 2), cache_dir=CACHE, clo=dataclasses.replace(TOY_CLO, progress=False))
Z = 3.0
N_SAMPLES = 126 * TOY_CLO.eval_candidates  # pre-trained samples the win rate is read on, per seed


def _beyond(stat, *, sign: float, z: float = Z, floor: float = 0.0):
    """``stat = (mean, se, n)``: the mean has the given sign, beyond ``z`` standard errors and ``floor``."""
    m, se, n = stat
    assert n == len(SIZE.seeds), stat
    assert sign * m > max(z * se, floor), stat


@pytest.fixture(scope="module")
def arms():
    return study(SIZE, ["self", "all", "oracle", "corrupt:0.9"])


def test_self_judge_improves_generation_and_lowers_non_beyond_the_control(arms):
    _beyond(paired_difference(arms["self"], arms["all"], "gen_acc"), sign=+1, floor=0.02)
    _beyond(paired_difference(arms["self"], arms["all"], "non_unification"), sign=-1, floor=0.02)
    # as good as the exact judge, within 3 points
    gap = paired_difference(arms["self"], arms["oracle"], "gen_acc")
    assert abs(gap[0]) < 0.03, gap
    # the win rate is reported with its denominator
    assert all(r["win_rate_n"] >= 0 for r in arms["self"])


def test_trained_understanding_moves_the_papers_way_but_barely(arms):
    """The disagreement with the paper at this scale. Clean data (self judge, exact judge) lower the
    understanding's false-positive rate on the pre-trained samples beyond the control and poor data
    raise it, as the paper has it; but by a point or two against a generation gain of about six, and
    the understanding changes its verdict on under 6 % of the pre-trained samples in every arm, so
    the win rate stays within noise of 50."""
    for label in ("self", "oracle"):
        fp = paired_difference(arms[label], arms["all"], "und_fp_rate")
        assert -0.05 < fp[0] < 0.0, (label, fp)
    fp = paired_difference(arms["corrupt:0.9"], arms["all"], "und_fp_rate")
    assert 0.0 < fp[0] < 0.05, fp
    for label, recs in arms.items():
        last = [r for r in recs if r["epoch"] == SIZE.clo.epochs]
        assert len(last) == len(SIZE.seeds)
        for r in last:
            assert r["win_rate_n"] < 0.06 * N_SAMPLES, (label, r["seed"], r["win_rate_n"])
    gen = paired_difference(arms["self"], arms["all"], "gen_acc")
    fp = paired_difference(arms["self"], arms["all"], "und_fp_rate")
    assert gen[0] > 2 * abs(fp[0]), (gen, fp)


def test_corrupt_judge_degrades_generation_and_non_rises(arms):
    """Generation degrades beyond the control; the paper's "Non still falls" does not hold here:
    understanding does not follow the generator, so Non rises with the damage."""
    _beyond(paired_difference(arms["corrupt:0.9"], arms["all"], "gen_acc"), sign=-1, floor=0.03)
    _beyond(paired_difference(arms["corrupt:0.9"], arms["all"], "non_unification"), sign=+1, floor=0.02)


def test_one_step_change_matches_the_first_order_prediction():
    """Finding 3 on the pre-trained model of seed 0: float64, one SGD step of a self-judged CLO
    minibatch, 24 probes per branch (half of them false positives)."""
    model = pretrained_model(SIZE, 0)
    rows = one_step_check(model, lrs=(1e-4, 1e-3, 1e-2, 1e-1), seed=0)
    summary = one_step_summary(rows)
    for branch in ("generation", "understanding"):
        s = summary[branch]
        assert s["probes"] == 24
        assert s["median_relative_error"][1e-4] < 0.01, s
        assert s["sign_agreement"] >= 0.95, s
        # transformers' eager attention takes its softmax in float32 even in a float64 model, which puts
        # a floor of about 0.2 % under the relative error: the slope over 1e-4..1e-1 is 1.8-2.0
        assert 1.7 < s["residual_slope"] < 2.3, s
    # the predictions are not trivially zero: the step moves both branches
    assert max(abs(r["predicted"]) for r in rows if r["branch"] == "understanding" and r["lr"] == 1e-2) > 1e-3

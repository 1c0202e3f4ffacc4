"""Poor supervision at the toy scale: judges that fail the way real judges fail, read against the
unfiltered control in the toy world's default (tied) network.

Pre-registered from an exploration on world 0 seeds 0-2 (``python paper_figures/fig_toy_poor_supervision.py``:
three units, beyond the unfiltered control, points, mean ± s.e.) and confirmed here on seven units the
exploration did not see: world 0 seeds 3-4, world 1 seeds 0-2 and world 2 seeds 0-2, of which those that
pass the gap check enter (at least six required; world 1 seed 2 failed it where this was written), one
CLO round of the default recipe, every arm from the same weights and seed. One-sided paired t (n - 1
df) at alpha = 0.01, Holm over the family.

Exploration (tied): ``pr:0.5,0.3`` (precision 0.50, recall 0.31, 99.5 % of its errors near misses) Gen
+2.1 ± 0.8, false positives -0.2 ± 0.9, Non -1.4 ± 1.2: near-miss positives halve the gain but do not
reverse it, and the understanding does not follow. ``pr:0.3,0.3`` (59 % near misses) Gen -3.9 ± 0.2,
false positives +0.4 ± 0.7, Non +4.0 ± 0.2: generation degrades and Non sees it. ``lookalike:1``
(precision 0.73) Gen +4.5 ± 0.8 against the oracle's +7.5 ± 1.1, false positives -0.8 ± 0.3 against
-0.7 ± 0.3. Under the Bayes link the same pattern (``pr:0.5,0.3`` Gen +2.1, false positives -1.1 ± 0.6).
No arm co-degraded; the alarm fired in no ``self`` or ``oracle`` unit (0 of 6) and missed every
degrading unit (its Non rose, which the alarm does not need to flag).

Pre-registered claims (Holm over the four):

1. a judge whose errors are near misses at precision 0.5 still raises Gen beyond the unfiltered control;
2. a judge of precision 0.3 lowers Gen beyond the control ...
3. ... and Non rises beyond it: the intrinsic metric sees this degradation;
4. near misses cost generation: ``lookalike:1`` raises Gen less than the exact judge.

Confirmation, in two runs: the pre-trained models as they are (seven units: world 1 seed 2 fails the
gap check) and the robustness run, every unit pre-trained again from initial weights moved by a relative
1e-6 (what another CPU's rounding does to 1,200 steps of Adam: a different pre-trained model per unit;
eight units pass the gap check there). Gen beyond the control, points, mean ± s.e., Holm p:

| claim | as pre-trained (7 units) | pre-trained from perturbed init (8 units) |
|---|---|---|
| 1. near misses at precision 0.5 still raise Gen | +1.8 ± 0.6, p 0.032 | +2.5 ± 0.5, p 0.0014 |
| 2. precision 0.3 lowers Gen | -2.4 ± 1.0, p 0.055 | -2.2 ± 0.8, p 0.030 |
| 3. ... and Non rises | +2.2 ± 1.3, p 0.066 | +1.5 ± 0.9, p 0.071 |
| 4. ``lookalike:1`` gains less than the exact judge | -2.2 ± 0.3, p 0.0012 | -2.0 ± 0.2, p 0.00013 |

Only claim 4 holds in both runs, and only it is asserted. Claim 1 holds in one run and not in the
other: its conclusion moves with the rounding of pre-training, so it is neither confirmed nor refuted
(an earlier version of this module asserted it not significant, which the robustness run contradicts).
Claims 2 and 3 point the exploration's way in both runs without reaching alpha = 0.01; they are
reported, not asserted either way.

Claims of the paper that show no significant effect here (one-sided, uncorrected, false-positive rate
beyond the comparison, points):

5. near misses alone raise the understanding's false positives (beyond the exact judge): +0.5 ± 0.2
   (p 0.010, at the level) and +0.7 ± 0.5 (p 0.11);
6. a near-miss judge of precision 0.5 raises the false positives beyond the control (co-degradation):
   -0.5 ± 0.4 (p 0.87) and +0.3 ± 0.2 (p 0.16).

Absence of significance is not absence of an effect, and the paper gives no effect size from which to
set an equivalence margin in advance, so neither is asserted: the toy shows no co-degradation, and this
module does not claim that it cannot.

Slow (``make test-slow``): about 35 CLO rounds per run (about 4 CPU-minutes) and the pre-trainings
of both runs a fresh machine has not cached (about 2 CPU-minutes each; the robustness run's units are
those of ``test_toy_findings_perturbed.py``'s slow run, plus world 2).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dynamics.study.claims import Claim, check, summary_lines
from dynamics.study.read import unit
from dynamics.toy.study import TOY_CLO, ToySize, judge_study
from tests.conftest import TOY_CACHE, units_of

torch.set_num_threads(1)

pytestmark = pytest.mark.slow

UNITS = ((0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2))  # not seen by the exploration
MIN_UNITS = 6
PERTURBATION = 1e-6
# The robustness run of every toy confirmation: each unit pre-trained again from initial weights moved by
# PERTURBATION (what another CPU's rounding does to 1,200 steps of Adam). Moving the pre-trained weights
# instead flips no sampled token or verdict at this size, so it could not show a conclusion that moves.
ROBUSTNESS = {"perturbation": PERTURBATION, "perturb_at": "init"}
NEAR, GENERIC = "pr:0.5,0.3", "pr:0.3,0.3"
JUDGES = ("all", "oracle", "lookalike:1", NEAR, GENERIC)


def _size():
    return ToySize(unit_list=UNITS, cache_dir=TOY_CACHE,
                   clo=dataclasses.replace(TOY_CLO, progress=False, eval_every=TOY_CLO.epochs))


@pytest.fixture(scope="module")
def arms():
    return judge_study(_size(), JUDGES, skip_no_gap=True)


@pytest.fixture(scope="module")
def perturbed():
    return judge_study(_size(), JUDGES, skip_no_gap=True, **ROBUSTNESS)


PREREGISTERED = [
    Claim("a near-miss judge of precision 0.5 still raises Gen beyond the unfiltered control", NEAR, "gen_acc",
          "greater", control="all"),
    Claim("a judge of precision 0.3 lowers Gen beyond the control", GENERIC, "gen_acc", "less", control="all"),
    Claim("... and Non rises beyond it", GENERIC, "non_unification", "greater", control="all"),
    Claim("near misses cost generation: lookalike:1 raises Gen less than the exact judge", "lookalike:1", "gen_acc",
          "less", control="oracle"),
]
ROBUST = 3  # the index of the one claim of PREREGISTERED that holds in both runs
PAPER_CLAIMS = [  # reported by the failure messages, not asserted (see the module docstring)
    Claim("near misses alone raise the false positives beyond the exact judge", "lookalike:1", "und_fp_rate",
          "greater", control="oracle"),
    Claim("a near-miss judge of precision 0.5 raises the false positives beyond the control", NEAR, "und_fp_rate",
          "greater", control="all"),
]


def test_near_miss_positives_cost_generation_in_both_runs(arms, perturbed):
    first, second = check(PREREGISTERED, arms), check(PREREGISTERED, perturbed)
    text = summary_lines(first, second) + "\n" + summary_lines(check(PAPER_CLAIMS, arms, correct=False),
                                                                check(PAPER_CLAIMS, perturbed, correct=False))
    assert len(units_of(arms)) >= MIN_UNITS and len(units_of(perturbed)) >= MIN_UNITS, text
    assert first[ROBUST].holds and second[ROBUST].holds, "\n" + text


def test_the_robustness_run_starts_from_other_models(arms, perturbed):
    """The perturbation is real: every unit the two runs share starts CLO from a model whose own sampled
    metrics differ (pre-training carried the 1e-6 to a different model)."""
    def before(a):
        return {unit(r): (r["gen_acc"], r["und_fp_rate"]) for r in a["all"] if r["epoch"] == 0}

    plain, moved = before(arms), before(perturbed)
    shared = plain.keys() & moved.keys()
    assert len(shared) >= MIN_UNITS and all(plain[u] != moved[u] for u in shared)


def test_the_pr_judges_realise_their_precision_and_recall(arms):
    """The loop's audit: each ``pr`` arm's training set has its set recall on every unit, and its set
    precision where the pool holds enough misaligned candidates. Precision 0.3 at recall 0.3 needs 0.7
    misaligned candidates per aligned one in the pool; a toy model that is right on about two samples
    in three offers about 0.5, so the judge accepts every misaligned candidate and realises a higher
    precision (0.32 on average in the exploration) instead."""
    for spec, (q, rec) in ((NEAR, (0.5, 0.3)), (GENERIC, (0.3, 0.3))):
        first = [r for r in arms[spec] if r["epoch"] == 0]
        assert len(first) == len(units_of(arms))
        assert all(abs(r["sft_recall"] - rec) < 0.03 for r in first), spec
        if spec == NEAR:
            assert all(abs(r["sft_precision"] - q) < 0.03 for r in first), spec
        else:
            assert all(r["sft_precision"] > q - 0.03 for r in first), spec
            assert sum(r["sft_precision"] for r in first) / len(first) > q, spec  # the pool's limit, above q

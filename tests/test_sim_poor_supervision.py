"""Poor supervision that fails the way real judges fail: when does one arm co-degrade beyond the control?

Pre-registered from an exploration on worlds 0-1 (``dynamics.sim.poor_supervision.poor_supervision_scan``
at this test's size, 16 units, beyond the unfiltered control ``all``, points, mean ± s.e.) and
confirmed here on worlds the exploration did not see (11-12), with the design of
``test_sim_findings.py``: 8 pre-trained replicas per world, every arm read against a control arm run
from the same models, one-sided paired t (n - 1 df) at alpha = 0.01 with Holm's correction, and every
claim again on a twin study whose initial weights are moved by a relative 1e-6 before pre-training.

Exploration (``bayes``): ``pr:0.5,0.3`` (an external judge of set precision 0.5 and recall 0.3 whose
errors are near misses first; realised precision 0.50, 76 % of its bad positives near misses) Gen
-4.9 ± 1.1, FP +3.5 ± 0.9, Non -8.9 ± 1.2, win rate 40.4 ± 1.5: the paper's full pattern, Non falling
beyond the control while both branches degrade. ``lookalike:1`` (the exact judge plus every near miss)
against the oracle: FP +9.7, Gen -11.8; against the unfiltered control it still improves both
(Gen +19.6 ± 0.7, FP -5.1 ± 0.7): its training set is the unfiltered one without the generic
misaligned samples, so no ``lookalike:p`` co-degrades against ``all``. ``tied`` (a trained yes/no head):
``pr:0.5,0.3`` Gen -16.3 ± 1.6, FP +0.5 ± 0.5, Non +15.2 ± 2.0: generation degrades, the understanding
does not follow, and Non rises, so the intrinsic metric sees it.

Claims:

1. ``bayes``, ``pr:0.5,0.3``: Gen falls, the false positives rise and Non falls beyond the control, and
   the understanding loses its disagreements (win rate < 50): co-degradation with Non still falling;
2. near misses alone raise the understanding's false positives and lower Gen: ``lookalike:1`` against
   the oracle (the two judges differ only in the near misses accepted: Proposition 1's bad positives
   that resemble misaligned probes);
3. ... yet ``lookalike:1`` improves both branches beyond the unfiltered control (what did not appear:
   a look-alike judge co-degrading against ``all``);
4. ``tied``, ``pr:0.5,0.3``: Gen falls and Non *rises* beyond the control (no co-degradation with a
   falling Non where the understanding has its own head).

The ``weak`` judge (the same replicas pre-trained for 13 of the 200 steps judge the data: the paper's
realistic poor supervision), added later, pre-registered from its own exploration on worlds 0-1
(``poor_supervision_scan`` at this size, 16 units; ``tied``): its accepted set is more precise than the
unfiltered one (0.82 against 0.71) but misses 43 % of the aligned candidates, and Gen moves +0.1 ± 2.5
beyond the control against +20.4 ± 1.5 for the model's own judge; false positives +2.2 ± 1.2, Non
-1.9 ± 2.3 beyond the control (trunk and decoupled alike: Gen -2.5 ± 3.9, -0.1 ± 3.6). Claims:

5. the weak judge's data raise Gen less than the model's own judge's (beyond the ``self`` arm);
6. the paper's expectation that self-judged data still help with a weaker judge, Gen beyond the
   unfiltered control, does *not* hold (tested as not significant at alpha = 0.01 in both runs: the
   weaker kind of "does not hold", an absence of evidence, not a test of no effect).
"""

import pytest
import torch

from dynamics.sim.study import SimSize, coupling_arms
from dynamics.study import phase_of
from dynamics.study.claims import Claim, robust, summary_lines
from dynamics.study.phase import PHASE_FP_MARGIN

torch.set_num_threads(1)

SIZE = SimSize(prompts=48, tokens=48, seeds=8, epochs=10, pretrain_steps=200)  # test_sim_findings' size
WORLDS = (11, 12)  # not seen by the exploration (worlds 0-1), nor by any other findings test
UNITS = SIZE.seeds * len(WORLDS)
PR = "pr:0.5,0.3"
JUDGES = {"bayes": ["all", "oracle", "lookalike:1", PR], "tied": ["all", PR, "self", "weak"]}
PERTURBATION = 1e-6  # as in test_sim_findings: before pre-training, another CPU's rounding


def _arms(perturbation: float) -> dict:
    return coupling_arms(SIZE, JUDGES, worlds=WORLDS, perturbation=perturbation, perturb_at="init")


@pytest.fixture(scope="module")
def arms():
    return _arms(0.0)


@pytest.fixture(scope="module")
def perturbed():
    return _arms(PERTURBATION)


CLAIMS = [
    Claim("bayes: a near-miss-first judge of precision 0.5 lowers Gen beyond the control", f"bayes/{PR}",
          "exact_gen_acc", "less", control="bayes/all"),
    Claim("... raises the understanding's false positives beyond it", f"bayes/{PR}", "exact_pre_fp_rate", "greater",
          control="bayes/all"),
    Claim("... and Non still falls beyond it", f"bayes/{PR}", "exact_non_unification", "less", control="bayes/all"),
    Claim("... while the understanding loses its disagreements (win rate < 50)", f"bayes/{PR}", "exact_win_rate",
          "less", final=True, minus=0.5),
    Claim("near misses alone raise the false positives beyond the exact judge", "bayes/lookalike:1",
          "exact_pre_fp_rate", "greater", control="bayes/oracle"),
    Claim("... and lower Gen beyond it", "bayes/lookalike:1", "exact_gen_acc", "less", control="bayes/oracle"),
    Claim("the look-alike judge still raises Gen beyond the unfiltered control", "bayes/lookalike:1",
          "exact_gen_acc", "greater", control="bayes/all"),
    Claim("... and lowers the false positives beyond it", "bayes/lookalike:1", "exact_pre_fp_rate", "less",
          control="bayes/all"),
    Claim("tied: the near-miss-first judge lowers Gen beyond the control", f"tied/{PR}", "exact_gen_acc", "less",
          control="tied/all"),
    Claim("... and Non rises beyond it: the intrinsic metric sees this degradation", f"tied/{PR}",
          "exact_non_unification", "greater", control="tied/all"),
]


def test_near_miss_errors_co_degrade_with_non_falling_only_under_the_bayes_link(arms, perturbed):
    first, second = robust(CLAIMS, arms, perturbed)
    text = summary_lines(first, second)
    assert all(v.estimate.n == UNITS for v in first + second), text
    assert all(v.holds for v in first), "\n" + text
    assert all(v.holds for v in second), "conclusion moved under a 1e-6 perturbation:\n" + text


WEAK_CLAIMS = [
    Claim("tied: the weak judge's data raise Gen less than the model's own judge's", "tied/weak", "exact_gen_acc",
          "less", control="tied/self"),
]
WEAK_DOES_NOT_HOLD = Claim("tied: the weak judge's data raise Gen beyond the unfiltered control", "tied/weak",
                           "exact_gen_acc", "greater", control="tied/all")


def test_a_weaker_checkpoints_judge_gives_no_measurable_gain(arms, perturbed):
    first, second = robust(WEAK_CLAIMS + [WEAK_DOES_NOT_HOLD], arms, perturbed, correct=False)
    text = summary_lines(first, second)
    assert all(v.estimate.n == UNITS for v in first + second), text
    assert first[0].holds and second[0].holds, "\n" + text
    assert not first[1].holds and not second[1].holds, "the weak judge's gain became significant:\n" + text


def test_the_audit_realises_the_judges_precision_and_recall(arms):
    """The loop's audit of the accepted set: the ``pr`` judge realises its precision and recall on the
    training candidates (to rounding), the look-alike judge its recall of 1."""
    last = [r for r in arms[f"bayes/{PR}"] if r["epoch"] == SIZE.epochs]
    assert len(last) == UNITS
    assert all(abs(r["sft_precision"] - 0.5) < 0.02 and abs(r["sft_recall"] - 0.3) < 0.02 for r in last)
    assert all(r["sft_recall"] == 1.0 for r in arms["bayes/lookalike:1"])


def test_the_pr_arm_is_placed_in_the_co_degradation_phase(arms, perturbed):
    """The phase reader agrees with the claims (one definition of the phases, two runs)."""
    for a in (arms, perturbed):
        ph = phase_of(a[f"bayes/{PR}"], a["bayes/all"], gen_key="exact_gen_acc", fp_key="exact_pre_fp_rate",
                      fp_margin=PHASE_FP_MARGIN)
        assert ph.phase == "co-degradation", ph.to_dict()

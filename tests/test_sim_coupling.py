"""Transfer without assuming it: does an understanding with its own yes/no head follow generation?

Pre-registered from an exploration on worlds 0-1 (``python paper_figures/fig_phase_diagram.py``; at
this test's size, 16 units, self judge beyond the unfiltered control: ``tied`` Gen +20.4 ± 1.5,
FP +1.4 ± 0.4; ``trunk`` Gen +19.4 ± 0.8, FP +0.8 ± 0.4) and confirmed here on worlds the
exploration did not see (8-10), with the design of ``test_sim_findings.py``: 8 pre-trained replicas
per world, every arm read against the ``all`` control from the same models, one-sided paired t
(n - 1 df) at alpha = 0.01 with Holm's correction, and every claim again on a twin study whose
initial weights are moved by a relative 1e-6 before pre-training.

The theory's co-improvement rests on the Bayes link (understanding *is* the generator's posterior,
``bayes``: ``test_sim_findings.py`` finding 1). With a trained yes/no head the claims are:

1. ``tied`` (the head reads the image-token embeddings generation scores against, Show-o / Emu3-like):
   generation improves and the understanding's false positives *rise* beyond the control: the
   branches drift apart (phase ``drift``);
2. ``trunk`` (the head reads images through its own embeddings, Janus-like): generation improves, and
   the understanding does not co-improve: its false-positive rate does not fall by the margin of
   ``no transfer`` (one point) beyond the control (a non-inferiority test against -1 point).

The kernel quantity behind it is the cross-branch alignment of :mod:`dynamics.transfer`.
"""

import pytest
import torch

from dynamics.sim.study import SimSize, coupling_arms
from dynamics.study import phase_of
from dynamics.study.claims import Claim, robust, summary_lines
from dynamics.study.phase import PHASE_FP_MARGIN

torch.set_num_threads(1)

SIZE = SimSize(prompts=48, tokens=48, seeds=8, epochs=10, pretrain_steps=200)  # test_sim_findings' size
WORLDS = (8, 9, 10)  # not seen by the exploration (worlds 0-1)
UNITS = SIZE.seeds * len(WORLDS)
COUPLINGS = ("tied", "trunk")
PERTURBATION = 1e-6  # as in test_sim_findings: before pre-training, another CPU's rounding


def _arms(perturbation: float) -> dict:
    return coupling_arms(SIZE, {c: ["all", "self"] for c in COUPLINGS}, worlds=WORLDS, perturbation=perturbation, perturb_at="init")


@pytest.fixture(scope="module")
def arms():
    return _arms(0.0)


@pytest.fixture(scope="module")
def perturbed():
    return _arms(PERTURBATION)


CLAIMS = [
    Claim("tied: self-judged CLO raises Gen beyond the control", "tied/self", "exact_gen_acc", "greater",
          control="tied/all"),
    Claim("tied: ... and raises the understanding's false positives beyond it (drift)", "tied/self",
          "exact_pre_fp_rate", "greater", control="tied/all"),
    Claim("trunk: self-judged CLO raises Gen beyond the control", "trunk/self", "exact_gen_acc", "greater",
          control="trunk/all"),
    Claim("trunk: ... and the false positives do not fall by the no-transfer margin (no co-improvement)",
          "trunk/self", "exact_pre_fp_rate", "greater", control="trunk/all", null=-PHASE_FP_MARGIN,
          why="the no-transfer margin of dynamics.study.phase: a fifth of the smallest understanding effect "
              "the paper reports"),
]


def test_a_trained_head_does_not_follow_generation(arms, perturbed):
    first, second = robust(CLAIMS, arms, perturbed)
    text = summary_lines(first, second)
    assert all(v.estimate.n == UNITS for v in first + second), text
    assert all(v.holds for v in first), "\n" + text
    assert all(v.holds for v in second), "conclusion moved under a 1e-6 perturbation:\n" + text


def test_the_tied_arm_is_placed_in_the_drift_phase(arms, perturbed):
    """The phase reader agrees with the claims (one definition of the phases, two runs)."""
    for a in (arms, perturbed):
        ph = phase_of(a["tied/self"], a["tied/all"], gen_key="exact_gen_acc", fp_key="exact_pre_fp_rate",
                      fp_margin=PHASE_FP_MARGIN)
        assert ph.phase == "drift", ph.to_dict()

"""The paper's findings on the single-token simulator, as pre-registered hypothesis tests.

Design. Eight worlds (world seeds 0-7) x eight pre-trained replicas (seeds 0-7, vectorised): 64 units.
Every arm of a unit runs from that unit's pre-trained model with the same CLO seed
(:func:`dynamics.sim.study.world_arms`), so each claim is read per unit against a control arm
(``all``: training on every own sample, unfiltered: what drift does anyway) and tested with the study
layer's statistics (:mod:`dynamics.study.stats`): one-sided paired t with ``n - 1`` degrees of
freedom at alpha = 0.01, TOST for a claim of no effect (margin stated), Holm's correction over the
claims of one test. Every claim is tested again on a twin study whose initial weights are moved by
a relative 1e-6 before pre-training (pre-training carries that to models as different as another
CPU's rounding makes them), and must reach the same conclusion there. Exact metrics (``exact_*``) are computed on the full tables;
``exact_pre_fp_rate`` is the understanding's false-positive rate on the pre-trained model's
misaligned samples (the population version of the paper's measurement).

Measured (``python -c`` of the fixtures, 32 units, mean ± s.e. beyond the ``all`` control, points):
self judge Gen +22.1 ± 0.9, FP -7.5 ± 0.6, Non -17.7 ± 0.7, win rate 66.9 ± 1.2;
``corrupt:0.6`` Gen -7.8 ± 0.9, FP +1.9 ± 0.5, win rate 41.6 ± 1.4, Non +0.0 ± 0.7 (its absolute fall,
-5.6 ± 1.2, is the control's drift); ``noisy:0.9`` FP +8.3 ± 0.6, Gen -32.9 ± 1.3 (18 units of
worlds 0-2; the closing note of the change that introduced this design gives the 32-unit numbers).

1. co-improvement with the self judge, beyond the unfiltered control (holds);
2. co-degradation under poor supervision: both branches degrade beyond the control (holds); the
   paper's "Non still falls" holds only in absolute terms: beyond the control Non does not move
   (equivalent to zero within 5 points): its fall is drift that the unfiltered control shows too;
3. decoupled coupling: the understanding cannot move when only generation trains (exact);
4. curriculum replay: the discard pool shrinks and the training set grows (bookkeeping of
   Algorithm 2); whether late replay beats early replay is measured by
   ``paper_figures/fig_curriculum.py``, not asserted;
5. theory tracking in the loop: the first-order error is small and shrinks as O(eta^2) (float64).
"""

import pytest
import torch

from dynamics.sim.study import (
    SimSize,
    curriculum_arms,
    eta_scaling,
    pretrained,
    replay_precision,
    run_arm,
    world_arms,
)
from dynamics.study import change, greater
from dynamics.study.claims import Claim, robust, summary_lines
from dynamics.study.stats import one_sample

torch.set_num_threads(1)

SIZE = SimSize(prompts=48, tokens=48, seeds=8, epochs=10, pretrain_steps=200)
WORLDS = tuple(range(8))
UNITS = SIZE.seeds * len(WORLDS)
JUDGES = ["self", "all", "oracle", "corrupt:0.6", "noisy:0.9"]
# Relative move of every initial weight, before pre-training: 200 steps of Adam carry it to pre-trained
# models as different as another CPU's rounding makes them (Gen accuracy moves by points per replica).
PERTURBATION = 1e-6

# Half the fall of Non the paper reports for co-improvement (Janus-Pro-7B, T2I-CompBench: 26.22 -> 16.98,
# 9.2 points): a change of Non smaller than this is not the paper's effect.
NON_MARGIN = 0.05


@pytest.fixture(scope="module")
def arms():
    return world_arms(SIZE, JUDGES, worlds=WORLDS)


@pytest.fixture(scope="module")
def perturbed():
    return world_arms(SIZE, JUDGES, worlds=WORLDS, perturbation=PERTURBATION, perturb_at="init")


def _holds_in_both(claims, arms, perturbed):
    first, second = robust(claims, arms, perturbed)
    for v in first + second:
        assert v.estimate.n == UNITS, summary_lines(first, second)
    assert all(v.holds for v in first), "\n" + summary_lines(first, second)
    assert all(v.holds for v in second), "conclusion moved under a 1e-6 perturbation:\n" + summary_lines(first, second)


def test_pretraining_leaves_the_gap_every_finding_starts_from(arms):
    """Understanding stronger than generation in every unit; most self-rejections are truly wrong
    (weak-generation attribution above one half: the generator, not the understanding, is at fault)."""
    rec0 = [r for r in arms["self"] if r["epoch"] == 0]
    assert len(rec0) == UNITS
    assert all(r["exact_und_acc"] > r["exact_gen_acc"] for r in rec0)
    assert all(r["attribution"] > 0.5 for r in rec0)
    assert all(0 < r["non_unification"] < 1 for r in rec0)


# ------------------------------------------------------------------------------------- finding 1

CO_IMPROVEMENT = [
    Claim("self judge raises Gen beyond the control", "self", "exact_gen_acc", "greater", control="all"),
    Claim("self judge lowers the understanding's false positives beyond the control", "self",
          "exact_pre_fp_rate", "less", control="all"),
    Claim("... also as the loop samples them", "self", "und_fp_rate", "less", control="all"),
    Claim("self judge lowers Non beyond the control", "self", "exact_non_unification", "less", control="all"),
    Claim("the trained understanding wins its disagreements (win rate > 50)", "self", "exact_win_rate",
          "greater", final=True, minus=0.5),
    Claim("... more often than after unfiltered training", "self", "exact_win_rate", "greater", control="all"),
    Claim("the exact judge is the ceiling: oracle raises Gen beyond the self judge", "oracle", "exact_gen_acc",
          "greater", control="self"),
]


def test_co_improvement_beyond_the_unfiltered_control(arms, perturbed):
    _holds_in_both(CO_IMPROVEMENT, arms, perturbed)


def test_win_rates_rest_on_disagreements(arms):
    """Every unit's win rate has a non-empty denominator (a 50 with no disagreement is no evidence)."""
    last = [r for r in arms["self"] if r["epoch"] == SIZE.epochs]
    assert len(last) == UNITS and min(r["win_rate_n"] for r in last) > 0


# ------------------------------------------------------------------------------------- finding 2

CO_DEGRADATION = [
    Claim("corrupt judge lowers Gen beyond the control", "corrupt:0.6", "exact_gen_acc", "less", control="all"),
    Claim("the understanding loses its disagreements (win rate < 50)", "corrupt:0.6", "exact_win_rate", "less",
          final=True, minus=0.5),
    Claim("Non still falls in absolute terms, as the paper reports", "corrupt:0.6", "exact_non_unification",
          "less"),
    Claim("... but not beyond the control: the fall is drift", "corrupt:0.6", "exact_non_unification",
          "equivalent", control="all", margin=NON_MARGIN,
          why="half the 9.2-point fall of Non the paper reports for co-improvement"),
    Claim("bad positives of every kind (noisy:0.9) raise the false positives beyond the control", "noisy:0.9",
          "exact_pre_fp_rate", "greater", control="all"),
    Claim("... and lower Gen beyond the control", "noisy:0.9", "exact_gen_acc", "less", control="all"),
]


def test_co_degradation_beyond_the_control_while_non_falls_only_with_it(arms, perturbed):
    """The paper's warning holds for generation; its "Non still falls" holds only as the unfiltered
    control's drift, which an intrinsic metric read without a control would mistake for
    unification."""
    _holds_in_both(CO_DEGRADATION, arms, perturbed)


def test_corrupt_judge_raises_the_understandings_false_positives(arms, perturbed):
    """The understanding's side of co-degradation, a small effect (about a point beyond the control:
    ``corrupt:p`` flips verdicts at random, so most of its bad positives are generic samples to which
    a Bayes understanding is blind), tested alone at alpha = 0.01: 64 units give it power of about
    0.9 at the effect measured on 32."""
    claim = Claim("corrupt judge raises the understanding's false positives beyond the control", "corrupt:0.6",
                  "exact_pre_fp_rate", "greater", control="all")
    _holds_in_both([claim], arms, perturbed)


def test_the_perturbation_moves_the_trajectories(arms, perturbed):
    """The robustness run is not the same run: the training loss differs in every unit."""
    key = lambda r: (r["world"], r["seed"], r["epoch"])
    a = {key(r): r["train_loss"] for r in arms["self"] if r["epoch"] == SIZE.epochs}
    b = {key(r): r["train_loss"] for r in perturbed["self"] if r["epoch"] == SIZE.epochs}
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


# ------------------------------------------------------------------------------------- finding 3


@pytest.fixture(scope="module")
def decoupled():
    world, m0 = pretrained(SIZE, coupling="decoupled")
    return run_arm(world, m0, SIZE.config(judge="self"))


def test_decoupled_understanding_does_not_move(decoupled):
    """With no shared parameters a generation-only update cannot move the understanding: its whole
    table is unchanged bit for bit, the win rate is 50 with an empty denominator at every epoch,
    while generation still improves (one-sided t over the replicas)."""
    assert torch.equal(decoupled.model.understanding_table(), decoupled.reference.und.to(torch.float32))
    assert decoupled.model.coupling == "decoupled"
    for r in decoupled.records:
        assert r["win_rate"] == 0.5 and r["win_rate_n"] == 0, r
        assert r["exact_win_mass"] == 0.0
    for key in ("exact_und_fp_rate", "exact_und_fn_rate", "exact_pre_fp_rate", "und_fp_rate"):
        assert change(decoupled.records, key)[2][0] == 0.0, key
    gen = [r["exact_gen_acc"] for r in decoupled.records if r["epoch"] == SIZE.epochs]
    gen0 = [r["exact_gen_acc"] for r in decoupled.records if r["epoch"] == 0]
    v = greater(one_sample(a - b for a, b in zip(gen, gen0)), claim="decoupled generation still improves")
    assert v.holds, str(v)


def test_shared_understanding_moves_where_decoupled_does_not():
    world, m0 = pretrained(SimSize.tiny())
    arm = run_arm(world, m0, SimSize.tiny().config(judge="self"))
    assert not torch.equal(arm.model.understanding_table(), arm.reference.und.to(arm.model.understanding_table().dtype))


# ------------------------------------------------------------------------------------- finding 4


@pytest.fixture(scope="module")
def curriculum():
    # one candidate per prompt leaves about a third of the prompts in the discard pool
    return curriculum_arms(SIZE, [2, 5], candidates=1)


@pytest.mark.parametrize("spec, epoch", [("epochs:2", 2), ("epochs:5", 5)])
def test_replay_shrinks_the_pool_and_grows_the_training_set(curriculum, spec, epoch):
    recs = curriculum[spec].records
    for seed in range(SIZE.seeds):
        rows = {r["epoch"]: r for r in recs if r["seed"] == seed}
        assert rows[0]["discard_size"] > 0
        before, at = rows[epoch - 1], rows[epoch]
        assert at["replayed_prompts"] > 0
        assert at["discard_size"] == before["discard_size"] - at["replayed_prompts"]
        assert at["sft_size"] >= before["sft_size"] + at["replayed_prompts"]
        assert all(rows[e]["discard_size"] == rows[0]["discard_size"] for e in range(epoch))
    off = curriculum["off"].records
    assert len({(r["discard_size"], r["sft_size"]) for r in off if r["seed"] == 0}) == 1


def test_replay_moves_only_prompts_with_an_accepted_candidate(curriculum):
    """Algorithm 2: a prompt leaves the pool exactly when the current model's regenerated candidates
    include one its current understanding accepts; the others stay in the pool."""
    for spec in ("epochs:2", "epochs:5"):
        d = curriculum[spec].data
        assert bool((d.accepted.any(-1) | d.pool).all())  # every prompt is trained on or still pooled
        assert bool((d.replayed & d.pool).sum() == 0)
        assert bool(d.accepted[d.replayed].any(-1).all())
        assert 0.0 <= min(replay_precision(curriculum[spec])) <= 1.0


# ------------------------------------------------------------------------------------- finding 5


@pytest.mark.parametrize("kw", [{}, {"loss": "dpo"}, {"coupling": "tied"}], ids=["sft", "dpo", "tied"])
def test_first_order_error_in_the_loop_is_small_and_shrinks_as_eta_squared(kw):
    """The first tracked CLO step from the same pre-trained model at three step sizes (float64): the
    measured Delta G and Delta U agree with Proposition 1 / Lemmas 3-4 (exact eNTK) to < 1 %, and the
    residual shrinks with slope 2 on log-log axes (the theory's O(eta^2): a wrong sign, G or kernel
    would leave an O(eta) residual, slope 1)."""
    size = SimSize(prompts=12, tokens=12, seeds=2, epochs=1, pretrain_steps=20, float64=True)
    rows = eta_scaling(size, [0.01, 0.02, 0.04], **kw)
    for key in ("g", "u"):
        assert rows[0][f"moved_{key}"][0] > 1e-5
        assert rows[0][f"rel_err_{key}"][0] < 0.01, rows[0]
        assert 1.8 < rows[-1][f"slope_{key}"] < 2.2, rows

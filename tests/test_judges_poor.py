"""Judges that fail the way real judges fail (``lookalike:p``, ``pr:precision,recall``): parsing, their
verdicts against their definitions, the world's near misses, and the loop's audit of what they accept."""

import math

import pytest
import torch

from dynamics.clo import CLOConfig, run_clo
from dynamics.judges import near_misses, parse_judge
from dynamics.sim.study import SimSize, pretrained
from dynamics.sim.study import run_arm as sim_arm
from dynamics.sim.world import SimWorld
from dynamics.testing import TableModel

torch.set_num_threads(1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pool(R=2, B=400, K=8, seed=0):
    """A large random candidate pool: P(yes), aligned (30 %) and near misses (40 % of the rest)."""
    g = gen(seed)
    p = torch.rand(R, B, K, generator=g, dtype=torch.float64)
    aligned = torch.rand(R, B, K, generator=g) < 0.3
    near = (torch.rand(R, B, K, generator=g) < 0.4) & ~aligned
    return p, aligned, near


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("spec, kind, p, recall, text", [
    ("lookalike:0.25", "lookalike", 0.25, None, "lookalike:0.25"),
    ("lookalike:1", "lookalike", 1.0, None, "lookalike:1"),
    ("pr:0.9,0.5", "pr", 0.9, 0.5, "pr:0.9,0.5"),
    ("pr:1, 1", "pr", 1.0, 1.0, "pr:1,1"),
])
def test_new_specs_parse_and_print_back(spec, kind, p, recall, text):
    j = parse_judge(spec)
    assert (j.kind, j.p, j.recall, j.spec) == (kind, p, recall, text)
    assert j.needs_external and j.needs_near_miss
    assert parse_judge(j.spec) == j


@pytest.mark.parametrize("spec, msg", [
    ("lookalike:1.5", "'lookalike:1.5': probability 1.5 is outside [0, 1]"),
    ("lookalike", "'lookalike' needs a probability"),
    ("lookalike:x", "'x' is not a number"),
    ("lookalike:nan", "not a finite number"),
    ("pr:0.9", "'pr:0.9' needs a precision and a recall, e.g. pr:0.9,0.5"),
    ("pr", "needs a precision and a recall"),
    ("pr:0.9,", "needs a precision and a recall"),
    ("pr:0.9,0.5,0.1", "needs a precision and a recall"),
    ("pr:x,y", "'pr:x,y': 'x' is not a number"),
    ("pr:0,0.5", "precision 0.0 is outside (0, 1]"),
    ("pr:0.5,1.5", "recall 1.5 is outside (0, 1]"),
    ("lookalikes:0.1", "unknown judge"),
])
def test_bad_specs_name_the_spec_and_the_cause(spec, msg):
    with pytest.raises(ValueError) as err:
        parse_judge(spec)
    assert msg in str(err.value)


def test_old_judges_need_no_near_misses():
    assert not any(parse_judge(s).needs_near_miss for s in ("self", "oracle", "all", "noisy:0.1", "corrupt:0.5"))


# ------------------------------------------------------------------------------------------ lookalike


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_lookalike_accepts_every_aligned_candidate_and_a_share_p_of_the_near_misses(p):
    probs, aligned, near = pool()
    acc = parse_judge(f"lookalike:{p}").score(probs, aligned, threshold=0.5, generator=gen(3), near_miss=near) >= 0.5
    assert bool((acc <= (aligned | near)).all())  # only aligned candidates or near misses
    assert bool(acc[aligned].all())
    share = acc[near].double().mean().item()
    n = int(near.sum())
    assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (share, p)


def test_lookalike_zero_is_the_oracle_and_keeps_the_order_by_p_yes():
    probs, aligned, near = pool(R=1, B=50)
    la = parse_judge("lookalike:0").score(probs, aligned, threshold=0.5, generator=gen(), near_miss=near)
    oracle = parse_judge("oracle").score(probs, aligned, threshold=0.5, generator=gen())
    assert torch.equal(la, oracle)


def test_a_near_miss_that_is_aligned_counts_as_aligned():
    probs = torch.full((1, 1, 2), 0.1, dtype=torch.float64)
    aligned, near = torch.tensor([[[True, False]]]), torch.tensor([[[True, True]]])
    acc = parse_judge("lookalike:0").score(probs, aligned, threshold=0.5, generator=gen(), near_miss=near) >= 0.5
    assert acc.tolist() == [[[True, False]]]


@pytest.mark.parametrize("spec", ["lookalike:0.5", "pr:0.8,0.5"])
def test_near_miss_judges_refuse_missing_inputs(spec):
    probs, aligned, near = pool(R=1, B=4)
    with pytest.raises(ValueError, match="needs an external judge"):
        parse_judge(spec).score(probs, None, threshold=0.5, generator=gen(), near_miss=near)
    with pytest.raises(ValueError, match="needs the world's near misses"):
        parse_judge(spec).score(probs, aligned, threshold=0.5, generator=gen())
    with pytest.raises(ValueError, match="must have the shape"):
        parse_judge(spec).score(probs, aligned, threshold=0.5, generator=gen(), near_miss=near[:, :2])


# ------------------------------------------------------------------------------------------ pr


@pytest.mark.parametrize("precision, recall", [(0.9, 0.5), (0.6, 0.8), (0.5, 0.3), (1.0, 1.0)])
def test_pr_realises_its_precision_and_recall_on_a_large_pool(precision, recall):
    probs, aligned, near = pool()
    acc = parse_judge(f"pr:{precision},{recall}").score(probs, aligned, threshold=0.5, generator=gen(1),
                                                        near_miss=near) >= 0.5
    for r in range(acc.shape[0]):
        a, n = acc[r], aligned[r]
        got_p = (a & n).sum().item() / a.sum().item()
        got_r = (a & n).sum().item() / n.sum().item()
        assert abs(got_p - precision) < 0.01 and abs(got_r - recall) < 0.01, (got_p, got_r)


def test_pr_draws_its_errors_from_near_misses_first():
    probs, aligned, near = pool(R=1)
    acc = parse_judge("pr:0.8,0.5").score(probs, aligned, threshold=0.5, generator=gen(), near_miss=near) >= 0.5
    assert bool((acc & ~aligned <= near).all())  # enough near misses: every error is one
    # too few near misses for precision 0.2: all of them, then generic misaligned candidates
    few = near & (torch.rand(near.shape, generator=gen(5)) < 0.05)
    acc = parse_judge("pr:0.2,0.5").score(probs, aligned, threshold=0.5, generator=gen(), near_miss=few) >= 0.5
    assert bool(acc[few].all()) and bool((acc & ~aligned & ~few).any())


def test_pr_caps_at_what_the_pool_holds():
    probs = torch.rand(1, 3, 4, generator=gen(), dtype=torch.float64)
    aligned = torch.zeros(1, 3, 4, dtype=torch.bool)
    aligned[0, 0, :2] = True
    acc = parse_judge("pr:0.1,1").score(probs, aligned, threshold=0.5, generator=gen(),
                                        near_miss=torch.zeros_like(aligned)) >= 0.5
    assert bool(acc.all())  # 2 true positives want 18 errors; the pool has 10
    none = parse_judge("pr:0.5,0.5").score(probs, torch.zeros_like(aligned), threshold=0.5, generator=gen(),
                                           near_miss=aligned) >= 0.5
    assert not bool(none.any())  # no aligned candidate: nothing to accept


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("spec", ["lookalike:0.5", "pr:0.6,0.5"])
def test_seeded_and_per_replica(spec):
    probs, aligned, near = pool(R=3, B=30)
    j = parse_judge(spec)
    one = j.score(probs, aligned, threshold=0.5, generator=[gen(10), gen(11), gen(12)], near_miss=near)
    two = j.score(probs, aligned, threshold=0.5, generator=[gen(10), gen(11), gen(12)], near_miss=near)
    assert torch.equal(one, two)
    alone = j.score(probs[1:2], aligned[1:2], threshold=0.5, generator=[gen(11)], near_miss=near[1:2])
    assert torch.equal(one[1:2], alone)
    other = j.score(probs, aligned, threshold=0.5, generator=[gen(20), gen(21), gen(22)], near_miss=near)
    assert not torch.equal(one, other)


# ------------------------------------------------------------------------------------------ the world's near misses


def test_simulator_near_misses_have_every_named_attribute_right_but_one():
    w = SimWorld(48, 48, seed=0)
    nm = w.near_misses
    assert nm.any() and not (nm & w.aligned).any() and bool((nm <= w.distractor).all())
    named = w.prompt_attrs >= 0
    wrong = ((w.prompt_attrs[:, None] != w.token_attrs[None]) & named[:, None]).sum(-1)
    assert bool((wrong[nm] == 1).all())
    ids = torch.arange(w.num_prompts)
    images = torch.arange(w.num_tokens).expand(2, w.num_prompts, -1)[..., None]
    assert torch.equal(w.near_miss(ids, images), nm.expand(2, -1, -1))
    assert torch.equal(near_misses(w.oracle, ids, images), nm.expand(2, -1, -1))  # found through the bound method
    with pytest.raises(ValueError, match="token ids"):
        w.near_miss(ids[:1], torch.full((1, 1, 1, 1), 99))


def test_a_judge_without_near_misses_is_refused_with_its_type():
    model = TableModel.random(prompts=4, tokens=6, seed=0)
    cfg = CLOConfig(candidates=4, epochs=1, lr=0.5, eval_candidates=2, progress=False, judge="lookalike:0.5")
    with pytest.raises(ValueError, match="offers no near_miss"):
        run_clo(model, cfg, external=model.oracle)
    with pytest.raises(ValueError, match="needs an external judge"):
        run_clo(model, cfg)


# ------------------------------------------------------------------------------------------ in the loop


@pytest.fixture(scope="module")
def tiny():
    return pretrained(SimSize.tiny(prompts=24, tokens=24, epochs=1, pretrain_steps=40))


@pytest.mark.parametrize("spec", ["lookalike:1", "pr:0.6,0.5", "oracle", "all"])
def test_the_audit_records_precision_and_recall_of_the_accepted_set(tiny, spec):
    world, m0 = tiny
    size = SimSize.tiny(prompts=24, tokens=24, epochs=1)
    arm = sim_arm(world, m0, size.config(judge=spec))
    d = arm.data
    ok = world.aligned[d.prompt_ids[None, :, None], d.images[..., 0]]
    near = world.near_misses[d.prompt_ids[None, :, None], d.images[..., 0]]
    for r in range(d.accepted.shape[0]):
        acc = d.accepted[r]
        rec = next(x for x in arm.records if x["replica"] == r and x["epoch"] == 1)
        assert rec["sft_precision"] == pytest.approx((acc & ok[r]).sum().item() / acc.sum().item())
        assert rec["sft_recall"] == pytest.approx((acc & ok[r]).sum().item() / ok[r].sum().item())
        if spec == "lookalike:1":
            assert torch.equal(acc, ok[r] | near[r])
        if spec in ("oracle", "all", "lookalike:1"):
            assert rec["sft_recall"] == 1.0
    again = sim_arm(world, m0, size.config(judge=spec))
    assert torch.equal(again.data.accepted, d.accepted)  # seeded: the same accepted set


def test_toy_near_misses_are_the_hard_negatives_of_the_scene_grammar():
    """Every scene drawn for a hard negative of a prompt (:meth:`SceneWorld.perturb`) that fails the
    prompt is a near miss of it; a scene satisfying the prompt, an empty one and a cluttered one are not."""
    import random

    from dynamics.toy.world import SceneWorld

    w = SceneWorld()
    judge = w.external_judge()
    specs = [m["spec"] for m in w.prompt_set().meta]
    rng = random.Random(0)
    ids, scenes, hard = [], [], []
    for i, spec in enumerate(specs):
        for _ in range(3):
            ids.append(i)
            neg = w.perturb(spec, rng)
            hard.append(neg in w.neighbours(spec))
            scenes.append(w.canonical_scene(neg, rng, distractors=0))
        ids.append(i)
        scenes.append(w.canonical_scene(spec, rng))
        hard.append(False)
    assert all(hard[k] for k in range(len(hard)) if k % 4 != 3)  # perturb draws among the neighbours
    images = torch.tensor(scenes)[None, :, None, :]
    pid = torch.tensor(ids)
    ok, near = judge(pid, images)[0, :, 0], judge.near_miss(pid, images)[0, :, 0]
    assert not bool((ok & near).any())
    fails = [k for k in range(len(ids)) if k % 4 != 3 and not ok[k]]
    assert len(fails) > len(specs) and all(bool(near[k]) for k in fails)
    empty = torch.zeros(1, len(specs), 1, w.cells, dtype=torch.long)
    full = torch.full((1, len(specs), 1, w.cells), w.code(0, 0))
    everything = torch.arange(len(specs))
    assert not judge.near_miss(everything, empty).any() and not judge.near_miss(everything, full).any()


def test_the_toy_detector_serves_the_near_miss_judges():
    from dynamics.toy.world import SceneWorld

    w = SceneWorld()
    i = w.prompt_set().texts.index("a red circle and a blue square")
    scene = torch.as_tensor(w.parse_scene("b.circle . . . / . . . . / . . . . / . . . r.square"))  # binding swapped
    other = torch.as_tensor(w.parse_scene("g.triangle . . . / . . . . / . . . . / . . . ."))
    images = torch.stack([scene, other])[None, None]  # (1, 1, 2, M)
    ids = torch.tensor([i])
    near = near_misses(w.external_judge(), ids, images)
    assert near.tolist() == [[[True, False]]]
    acc = parse_judge("lookalike:1").score(torch.full((1, 1, 2), 0.2, dtype=torch.float64), w.external_judge()(ids, images),
                                           threshold=0.5, generator=gen(), near_miss=near) >= 0.5
    assert acc.tolist() == [[[True, False]]]

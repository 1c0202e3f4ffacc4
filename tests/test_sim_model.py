"""The simulator's model: protocol, replicas, the Bayes link, the coupling knob, pre-training gap and
the co-improvement / co-degradation mechanism under a generation-only update."""

import copy
import math

import pytest
import torch

from dynamics.protocol import UnifiedModel
from dynamics.sim import COUPLINGS, PRIVATE_KEYS, SimModel, SimWorld, check_coupling
from dynamics.sim.pretrain import exact_metrics, pretrain, pretraining_data

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world():
    return SimWorld(prompts=20, tokens=20, seed=0)


def _sgd_sft(model, ids, images, weights, *, lr, steps):
    """Plain SGD on the CLO loop's SFT objective, generation parameters only."""
    opt = torch.optim.SGD(model.generation_parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        lp = model.image_logprob(ids, images)
        (-(weights * lp).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1)).sum().backward()
        opt.step()


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_protocol_and_shapes(world, coupling):
    m = SimModel(world, replicas=3, coupling=coupling, seed=1)
    assert isinstance(m, UnifiedModel) and m.image_length == 1
    ids = torch.tensor([0, 5, 7, 5])
    x = m.sample(ids, 6, seed=0)
    assert x.shape == (3, 4, 6, 1) and x.dtype == torch.long
    p = m.judge(ids, x)
    assert p.shape == (3, 4, 6) and not p.requires_grad and bool(((p >= 0) & (p <= 1)).all())
    lp = m.image_logprob(ids, x)
    assert lp.shape == (3, 4, 6) and lp.requires_grad
    assert torch.allclose(lp, torch.log_softmax(m.gen_logits(ids), -1).gather(2, x[..., 0]))
    table = m.understanding_table()
    assert table.shape == (3, 20, 20)
    r = torch.arange(3)[:, None, None]
    assert torch.allclose(table[r, ids[None, :, None], x[..., 0]], p, atol=1e-6)
    assert m.expected_aligned_mass(world.aligned).shape == (3,)


def test_sampling_is_seeded_per_replica_and_follows_pi(world):
    m = SimModel(world, replicas=2, seed=0)
    ids = torch.tensor([1, 2])
    a = m.sample(ids, 4000, seed=[7, 8])
    assert torch.equal(a, m.sample(ids, 4000, seed=7))
    assert torch.equal(a[1], m.sample(ids, 4000, seed=[1, 8])[1])  # replica 1 ignores replica 0's seed
    freq = torch.nn.functional.one_hot(a[..., 0], 20).double().mean(2)
    pi = torch.softmax(m.gen_logits(ids).double(), -1).detach()
    assert float((freq - pi).abs().max()) < 0.04


def test_replicas_are_independent_seeds(world):
    """R stacked replicas equal R one-replica models with seeds seed + r, also after a training step."""
    big = SimModel(world, replicas=3, seed=4, coupling="tied", dtype=torch.float64)
    ids = torch.arange(6)
    x = big.sample(ids, 3, seed=[0, 1, 2])
    w = torch.ones(3, 6, 3, dtype=torch.float64)
    _sgd_sft(big, ids, x, w, lr=0.3, steps=2)
    for r in range(3):
        one = SimModel(world, replicas=1, seed=4 + r, coupling="tied", dtype=torch.float64)
        _sgd_sft(one, ids, x[r : r + 1], w[r : r + 1], lr=0.3, steps=2)
        assert torch.allclose(one.gen_logits(ids)[0], big.gen_logits(ids)[r], atol=1e-12)
        assert torch.allclose(one.understanding_table()[0], big.understanding_table()[r], atol=1e-12)


def test_bayes_understanding_is_the_calibrated_posterior_of_generation(world):
    """P(yes) = sigmoid(a (log pi(y|x) + log P - c)) with log pi(y|x) from the generation branch alone."""
    m = SimModel(world, replicas=2, seed=0, coupling="bayes", bayes_scale=1.7, bayes_offset=0.3,
                 dtype=torch.float64)
    with torch.no_grad():
        m.gen_head["bias"].normal_(generator=torch.Generator().manual_seed(0))  # a generic preference
    logp = torch.log_softmax(m.gen_logits(torch.arange(20)), -1).detach()  # (R, P, V), with the bias
    post = logp - torch.logsumexp(logp, dim=1, keepdim=True)
    expect = torch.sigmoid(1.7 * (post + math.log(20) - 0.3))
    assert torch.allclose(m.understanding_table(), expect, atol=1e-12)
    assert len(m.und_head) == 0  # no parameter of its own


def test_functional_form_matches_the_batched_model(world):
    for coupling in COUPLINGS:
        m = SimModel(world, replicas=2, seed=3, coupling=coupling, dtype=torch.float64)
        understanding = m.understanding
        p = m.functional_params(1)
        assert set(p) == set(dict(m.named_parameters()))
        assert sorted(n for names in m.param_blocks().values() for n in names) == sorted(p)
        gen = torch.stack([m.functional_logits(p, torch.tensor(i)) for i in range(4)])
        assert torch.allclose(gen, m.gen_logits(torch.arange(4))[1], atol=1e-12)
        und = m.functional_logits(p, torch.tensor([6, 2]), branch="und")
        ids, img = torch.tensor([2]), torch.full((2, 1, 1, 1), 6)
        if understanding == "head":
            assert und.shape == (2,) and float(und[0]) == 0.0
            assert torch.allclose(und[1], m.und_logit(ids, img)[1, 0, 0], atol=1e-12)
        else:
            assert und.shape == (20,)
            post = torch.log_softmax(und, -1)[2]
            assert torch.allclose(post, m.posterior_logprob(ids, img)[1, 0, 0], atol=1e-12)


def test_generation_parameters_and_decoupled_understanding_cannot_move(world):
    """A generation-only update moves every coupling's understanding except ``decoupled``, whose
    understanding reads only private tensors; ``trunk`` reads private image embeddings only."""
    ids = torch.arange(20)
    tables = {}
    for coupling in COUPLINGS:
        m = SimModel(world, replicas=2, seed=0, coupling=coupling)
        private = {k for k in m.und_private}
        assert private == set(PRIVATE_KEYS[coupling])
        scope = {id(p) for p in m.generation_parameters()}
        assert not scope & {id(p) for p in m.understanding_parameters()}
        assert scope | {id(p) for p in m.understanding_parameters()} == {id(p) for p in m.parameters()}
        before = m.understanding_table()
        x = m.sample(ids, 4, seed=0)
        _sgd_sft(m, ids, x, torch.ones(2, 20, 4), lr=0.5, steps=3)
        tables[coupling] = float((m.understanding_table() - before).abs().max())
    assert tables["decoupled"] == 0.0
    assert min(tables["trunk"], tables["tied"], tables["bayes"]) > 1e-3


def test_trunk_coupling_reads_its_own_image_embeddings(world):
    """``trunk``: moving generation's image-token embeddings leaves the understanding unchanged;
    moving the shared trunk moves it. ``tied``: both move it."""
    for coupling, moved_by_images in (("trunk", False), ("tied", True)):
        m = SimModel(world, replicas=1, seed=0, coupling=coupling, dtype=torch.float64)
        before = m.understanding_table()
        with torch.no_grad():
            m.shared["image_emb"].add_(1.0)
        assert (float((m.understanding_table() - before).abs().max()) > 1e-6) == moved_by_images
        with torch.no_grad():
            m.shared["w1"].mul_(1.5)
        assert float((m.understanding_table() - before).abs().max()) > 1e-6


def test_check_coupling_and_bad_input(world):
    assert check_coupling("tied") == "tied"
    for bad in ("shared", "partial:0.5", "head"):
        with pytest.raises(ValueError, match="coupling"):
            check_coupling(bad)
    m = SimModel(world, replicas=2)
    with pytest.raises(ValueError, match="prompt_ids"):
        m.gen_logits(torch.tensor([20]))
    with pytest.raises(ValueError, match="replicas"):
        m.judge(torch.tensor([0]), torch.zeros(3, 1, 1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="coupling must be one of decoupled, trunk, tied, bayes; got 'both'"):
        SimModel(world, coupling="both")
    with pytest.raises(ValueError, match="gap"):
        pretrain(world, m, gap=1.5)


def test_pretraining_data_per_replica_seed(world):
    a = pretraining_data(world, 3, gap=0.3, seed=5)
    b = pretraining_data(world, 1, gap=0.3, seed=7)
    assert torch.equal(a["und_seen"][2], b["und_seen"][0]) and torch.equal(a["gen_target"][2], b["gen_target"][0])
    assert torch.allclose(a["gen_target"].sum(-1), torch.ones(3, 20, dtype=torch.float64))
    # mislabelled pairs are distractors only
    assert not bool((a["und_label"] & ~world.aligned & ~world.distractor).any())


def test_pretraining_replicas_equal_one_replica_runs():
    """Replica r of a vectorised pre-training run is the one-replica run with seeds seed + r."""
    w = SimWorld(prompts=8, tokens=8, seed=1)
    big = SimModel(w, replicas=2, seed=3, coupling="tied", dtype=torch.float64)
    pretrain(w, big, steps=5, seed=10)
    one = SimModel(w, replicas=1, seed=4, coupling="tied", dtype=torch.float64)
    pretrain(w, one, steps=5, seed=11)
    assert torch.allclose(big.gen_logits(torch.arange(8))[1], one.gen_logits(torch.arange(8))[0], atol=1e-10)
    assert torch.allclose(big.understanding_table()[1], one.understanding_table()[0], atol=1e-10)


@pytest.fixture(scope="module")
def pretrained(world):
    out = {}
    for coupling in ("bayes", "decoupled"):
        m = SimModel(world, replicas=2, seed=0, coupling=coupling)
        pretrain(world, m, steps=100, gap=0.3, seed=0)
        out[coupling] = m
    return out


def test_pretraining_leaves_a_gap(world, pretrained):
    """Understanding clearly better than generation, most self-rejections truly wrong (weak
    generation), Non in the paper's range, and false positives to correct."""
    stats = exact_metrics(world, pretrained["bayes"])
    assert bool((stats["und_acc"] > stats["gen_acc"] + 0.1).all())
    assert bool((stats["attribution"] > 0.5).all())
    assert bool(((stats["non_unification"] > 0.1) & (stats["non_unification"] < 0.4)).all())
    assert bool((stats["und_fp_rate"] > 0.02).all())


def _own_samples(world, m, ids):
    x = m.sample(ids, 8, seed=1)
    return x, world.oracle(ids, x)


def test_co_improvement_in_the_bayes_coupling_only(world, pretrained):
    """Generation-only SFT on clean (oracle-filtered) own samples lowers the understanding's
    false-positive rate when the branches share parameters, and leaves it exactly unchanged when
    they do not."""
    ids = torch.arange(20)
    for coupling, m0 in pretrained.items():
        m = copy.deepcopy(m0)
        before = exact_metrics(world, m)
        x, ok = _own_samples(world, m, ids)
        _sgd_sft(m, ids, x, ok.float(), lr=1.0, steps=20)
        after = exact_metrics(world, m)
        assert bool((after["gen_acc"] > before["gen_acc"] + 0.1).all())
        if coupling == "bayes":
            assert bool((after["und_fp_rate"] < before["und_fp_rate"]).all())
        else:
            assert torch.equal(after["und_fp_rate"], before["und_fp_rate"])


def test_co_degradation_on_bad_positives(world, pretrained):
    """Training on misaligned own samples as positives raises the false-positive rate (shared)."""
    ids = torch.arange(20)
    m = copy.deepcopy(pretrained["bayes"])
    before = exact_metrics(world, m)
    x, ok = _own_samples(world, m, ids)
    _sgd_sft(m, ids, x, (~ok).float(), lr=1.0, steps=20)
    after = exact_metrics(world, m)
    assert bool((after["gen_acc"] < before["gen_acc"]).all())
    assert bool((after["und_fp_rate"] > before["und_fp_rate"]).all())

"""The cross-branch kernel as a predictor of the understanding's change, and the Bayes-link distance.

What is tested: where understanding *is* the generator's posterior (the simulator's ``bayes``
coupling) the Bayes link holds up to its monotone calibration (Spearman 1, Pearson of the logit 1);
where understanding has private parameters only (``decoupled``) the cross kernel, the predicted and
the measured change of ``P(yes)`` are exactly zero; the first-order prediction matches a real step at a
tiny step size and the theory tracker's own prediction; and the readers (sign agreement, alignment,
correlations) on cases built by hand. Everything in float64 with fixed seeds.
"""

import copy
import dataclasses
import math

import pytest
import torch

from dynamics.clo import run_clo
from dynamics.kernels import sgd_step
from dynamics.protocol import TrainBatch
from dynamics.sim.study import SimSize
from dynamics.sim.tracking import default_probes, predict_step
from dynamics.sim.tracking import dominance_ratio as sim_dominance_ratio
from dynamics.study.first_order import relative_error
from dynamics.transfer import (
    Branches,
    Pairs,
    accepted_pairs,
    alignment,
    bayes_link,
    bayes_link_on_epoch,
    bayes_link_on_samples,
    cosine,
    cross_kernel,
    dominance_ratio,
    first_order_delta,
    kernel_delta,
    pearson,
    predict,
    sign_agreement,
    sim_bayes_link,
    sim_branches,
    sim_pairs,
    sim_transfer,
    spearman,
    transfer_report,
)

torch.set_num_threads(1)

SIZE = SimSize.tiny(float64=True, seeds=2, pretrain_steps=40)


def sim_model(coupling: str, size: SimSize = SIZE):
    """The one place this file builds a simulator model: the pre-trained replicas of ``coupling``."""
    from dynamics.sim.study import pretrained

    return pretrained(size, coupling=coupling)


@pytest.fixture(scope="module")
def models():
    return {c: sim_model(c) for c in ("decoupled", "tied", "bayes")}


def sgd_batch(model, seed: int = 0, prompts: int = 6, per_prompt: int = 3) -> TrainBatch:
    """A minibatch of the model's own samples, as the loop hands it to a step (every candidate kept)."""
    ids = torch.arange(prompts)
    images = model.sample(ids, per_prompt, seed=seed)
    return TrainBatch("sft", ids, torch.ones(model.replicas, prompts, per_prompt, dtype=torch.float64), images=images)


def accepted(model, replica: int = 0, **kw) -> Pairs:
    ids, imgs, ws = accepted_pairs([sgd_batch(model, **kw)], replica)
    return sim_pairs(ids, imgs[:, 0], weights=ws)


def probes_of(world, n_mis: int = 6, n_al: int = 2) -> Pairs:
    pr = default_probes(world, n_misaligned=n_mis, n_aligned=n_al, seed=0)
    return sim_pairs(pr[:, 0], pr[:, 1], labels=world.aligned[pr[:, 0], pr[:, 1]])


# ------------------------------------------------------------------------------------ the Bayes link


def test_bayes_coupling_is_the_bayes_link(models):
    world, model = models["bayes"]
    for link in sim_bayes_link(model, bins=4):
        assert link["spearman"] == pytest.approx(1.0, abs=1e-12)
        assert link["pearson_logit"] == pytest.approx(1.0, abs=1e-12)
        assert link["n"] == world.num_prompts * world.num_tokens
        assert 0.9 < link["pearson"] <= 1.0  # log P(yes) is a monotone, not an affine, map of the posterior
        cal = link["calibration"]
        assert [c["n"] for c in cal] == [36] * 4
        assert [c["p_yes"] for c in cal] == sorted(c["p_yes"] for c in cal)  # monotone calibration curve


def test_head_understanding_is_off_the_bayes_link(models):
    for coupling in ("decoupled", "tied"):
        for link in sim_bayes_link(models[coupling][1]):
            assert link["spearman"] < 0.99


def test_bayes_link_on_samples_reads_the_same_table(models):
    world, model = models["tied"]
    ids = torch.arange(world.num_prompts)
    images = model.sample(ids, 3, seed=1)
    got = bayes_link_on_samples(model, ids, images, bins=3, image_chunk=5)
    with torch.no_grad():
        log_pi = torch.log_softmax(model.gen_logits(ids).double(), -1)
        post = log_pi - torch.logsumexp(log_pi, 1, keepdim=True)
        yes = torch.nn.functional.logsigmoid(model.und_logit(ids).double())
    # the model's own posterior_logprob is the generation branch's posterior in every coupling here
    assert torch.allclose(model.posterior_logprob(ids, images).detach().double(),
                          post.gather(2, images[..., 0]), atol=1e-12)
    for r in range(model.replicas):
        tok = images[r, :, :, 0]
        want = bayes_link(yes[r][ids[:, None], tok], post[r][ids[:, None], tok], bins=3)
        assert got[r]["pearson"] == pytest.approx(want["pearson"], abs=1e-12)
        assert got[r]["spearman"] == pytest.approx(want["spearman"], abs=1e-12)
        for c_got, c_want in zip(got[r]["calibration"], want["calibration"], strict=True):
            assert c_got == pytest.approx(c_want, abs=1e-12)


def test_bayes_link_recorded_by_the_loop(models):
    world, model = models["bayes"]
    before = sim_bayes_link(model)
    m = copy.deepcopy(model)
    res = run_clo(m, SIZE.config(epochs=1), external=world.oracle, on_epoch=bayes_link_on_epoch(m, epochs={0, 1}))
    first = [r for r in res.metrics if r["epoch"] == 0]
    assert [r["bayes_link_spearman"] for r in first] == pytest.approx([b["spearman"] for b in before])
    assert all("bayes_link_pearson_logit" in r for r in res.metrics)


# ------------------------------------------------------------------------------------ the cross kernel


@pytest.mark.parametrize("coupling", ["decoupled", "tied", "bayes"])
def test_log_p_yes_is_the_models(models, coupling):
    world, model = models[coupling]
    ids = torch.arange(world.num_prompts)
    images = model.sample(ids, 2, seed=0)
    want = torch.nn.functional.logsigmoid(model.und_logit(ids, images)).detach()
    for r in range(model.replicas):
        b = sim_branches(model, r)
        pairs = sim_pairs(ids.repeat_interleave(2), images[r].reshape(-1))
        assert torch.allclose(b.und_values(pairs)(b.params), want[r].reshape(-1), atol=1e-12)


def test_decoupled_understanding_does_not_move(models):
    world, model = models["decoupled"]
    b = sim_branches(model, 0)
    probes, acc = probes_of(world), accepted(model)
    k = cross_kernel(b, probes.und_inputs, acc.gen_inputs)
    assert k.shape == (len(probes), len(acc), world.num_tokens)
    assert bool((k == 0).all())
    pred = predict(b, probes, acc, lr=0.5)
    assert bool((pred["delta_u"] == 0).all()) and bool((pred["cross_kernel_norm"] == 0).all())
    assert bool((pred["delta_g"] != 0).any())  # generation itself moves
    # a real generation-only step leaves P(yes) exactly where it was
    new = sgd_step(b.params, lambda p: -(acc.weights * b.gen_logprob(acc)(p)).sum(), 0.5, blocks=b.trainable)
    assert not torch.equal(new["shared.w1"], b.params["shared.w1"])
    assert torch.equal(b.und_values(probes)(new), b.und_values(probes)(b.params))


def test_decoupled_epoch_measures_zero(models):
    world, model = models["decoupled"]
    res = sim_transfer(world, model, SIZE.config(), n_random=4, n_fp=2)
    for rep in res["replicas"]:
        assert rep["accepted"] > 0
        assert rep["delta_u"] == [0.0] * len(rep["delta_u"]) and rep["pred_delta_u"] == [0.0] * len(rep["delta_u"])
        assert any(v != 0 for v in rep["delta_g"])
    s = res["summary"]
    assert s["sign_n"] == 0 and math.isnan(s["sign_agreement"][0])
    assert s["cross_kernel_norm"][0] == 0.0


@pytest.mark.parametrize("coupling", ["tied", "bayes"])
def test_one_step_prediction_matches_a_tiny_step(models, coupling):
    world, model = models[coupling]
    b = sim_branches(model, 1)
    probes, acc = probes_of(world), accepted(model, replica=1)
    lr = 1e-5
    pred = predict(b, probes, acc, lr=lr)
    assert bool((pred["cross_kernel_norm"] > 0).all())
    # the kernel contraction equals the kernel-free first-order probe
    direct = first_order_delta(b, b.und_values(probes), acc, lr=lr)
    assert torch.allclose(pred["delta_u"], direct, rtol=1e-9, atol=1e-15)
    new = sgd_step(b.params, lambda p: -(acc.weights * b.gen_logprob(acc)(p)).sum(), lr, blocks=b.trainable)
    measured_u = b.und_values(probes)(new) - b.und_values(probes)(b.params)
    measured_g = b.gen_logprob(probes)(new) - b.gen_logprob(probes)(b.params)
    assert relative_error(measured_u, pred["delta_u"]) < 1e-3
    assert relative_error(measured_g, pred["delta_g"]) < 1e-3


def test_prediction_is_the_trackers(models):
    """For a yes/no head the tracker's ``pred_delta_u`` is the same quantity: Delta log P(yes)."""
    world, model = models["tied"]
    batch = sgd_batch(model, seed=3)
    pr = default_probes(world, n_misaligned=6, n_aligned=2, seed=0)
    tracked = predict_step(model, batch, 0.1, pr)
    for r in range(model.replicas):
        ids, imgs, ws = accepted_pairs([batch], r)
        pred = predict(sim_branches(model, r), sim_pairs(pr[:, 0], pr[:, 1]), sim_pairs(ids, imgs[:, 0], weights=ws),
                       lr=0.1)
        assert torch.allclose(pred["delta_u"], tracked["pred_delta_u"][r], rtol=1e-8, atol=1e-12)
        assert torch.allclose(pred["delta_g"], tracked["pred_delta_g"][r], rtol=1e-8, atol=1e-12)


def test_dominance_ratio_is_the_trackers(models):
    _, model = models["bayes"]
    pr = torch.tensor([[0, 1], [3, 5], [3, 2]])
    train = torch.tensor([0, 2, 2, 7])
    comp = torch.tensor([4, 4, 9])
    got = dominance_ratio(sim_branches(model, 0), pr[:, 0], comp, train)
    want = sim_dominance_ratio(model, 0, pr, torch.tensor([0, 2, 7]), comp)
    assert torch.allclose(got, want, rtol=1e-10)


def test_report_smoke():
    rep = transfer_report(SIZE, ["tied"], n_random=8, n_fp=4)
    s = rep["tied"]["summary"]
    assert s["sign_n"] > 0 and 0.0 <= s["sign_agreement"][0] <= 1.0
    assert -1.0 <= s["alignment"][0] <= 1.0 and s["dominance_median"][0] > 0
    assert s["bayes_before_spearman"][2] == SIZE.seeds and s["first_order_valid"]


# ------------------------------------------------------------------------------------ readers by hand


def test_sign_agreement_by_hand():
    pred = [0.3, -0.2, 0.5, -1.0, 0.0, 2.0]
    meas = [0.1, -0.4, -0.2, 1e-5, 0.3, 0.05]
    out = sign_agreement(pred, meas, tol=1e-3)
    # counted: probes 0, 1, 2, 4, 5 (probe 3 moved less than tol); agree: 0, 1, 5; a zero prediction disagrees
    assert out == {"agreement": pytest.approx(3 / 5), "n": 5, "tol": 1e-3}
    assert math.isnan(sign_agreement([1.0], [0.0], tol=0.0)["agreement"])


def test_alignment_and_correlations_by_hand():
    out = alignment([1.0, -1.0, 2.0, 0.0], [2.0, 1.0, 1.0, 5.0])
    assert out["n"] == 3 and out["same_sign"] == pytest.approx(2 / 3)
    assert out["cosine"] == pytest.approx(3 / (math.sqrt(6) * math.sqrt(31)))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 5, 5, 9]) == pytest.approx(1.0)
    assert spearman([3, 1, 2], [30, 1, 2]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(cosine([0, 0], [1, 1]))


def test_kernel_delta_by_hand():
    k = torch.zeros(1, 2, 3, dtype=torch.float64)
    k[0, 0, 1], k[0, 1, 2] = 2.0, -1.0
    g = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert kernel_delta(k, g, lr=0.1).tolist() == pytest.approx([-0.1 * (2 * 0.5 - 1.0)])


# ------------------------------------------------------------------------------------ bad inputs


def _tiny_branches():
    p = {"w": torch.ones(3, 2, dtype=torch.float64), "u": torch.ones(2, dtype=torch.float64)}
    return Branches(p, ["w"], lambda p, h: p["w"] @ h, lambda p, h: torch.nn.functional.logsigmoid(p["u"] @ h))


def test_bad_inputs_raise():
    b = _tiny_branches()
    h = torch.ones(2, 2, dtype=torch.float64)
    pairs = Pairs(h, torch.tensor([0, 1]), und_inputs=h)
    with pytest.raises(ValueError, match="lr must be .* got -0.1"):
        predict(b, pairs, pairs, lr=-0.1)
    with pytest.raises(ValueError, match="lr must be .* got nan"):
        first_order_delta(b, b.und_values(pairs), pairs, lr=float("nan"))
    with pytest.raises(ValueError, match="tol must be .* got -1"):
        sign_agreement([1.0], [1.0], tol=-1)
    with pytest.raises(ValueError, match="bins must be .* got 0"):
        bayes_link([-1.0], [-1.0], bins=0)
    with pytest.raises(ValueError, match="unknown parameters \\['v'\\]"):
        Branches(b.params, ["v"], b.gen_logits, b.log_p_yes)
    with pytest.raises(ValueError, match="targets has shape \\(3,\\), expected \\(2, ...\\)"):
        Pairs(h, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="weights must be finite and >= 0, got min -1.0"):
        Pairs(h, torch.tensor([0, 1]), weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="und_inputs has 1 examples, gen_inputs 2"):
        Pairs(h, torch.tensor([0, 1]), und_inputs=h[:1])
    with pytest.raises(ValueError, match="probes.und_inputs is None"):
        predict(b, Pairs(h, torch.tensor([0, 1])), pairs, lr=0.1)
    with pytest.raises(ValueError, match=r"kernel \(1, 2, 3\) does not match G \(2, 4\)"):
        kernel_delta(torch.zeros(1, 2, 3), torch.zeros(2, 4), lr=0.1)
    with pytest.raises(ValueError, match="log_p_yes has 2 entries, log_posterior 1"):
        bayes_link([-1.0, -2.0], [-1.0])
    with pytest.raises(ValueError, match="log_posterior holds log-probabilities .* maximum of 0.5"):
        bayes_link([-1.0], [0.5])
    with pytest.raises(ValueError, match="2 probes but 1 competitors"):
        dominance_ratio(b, h, h[:1], h)
    with pytest.raises(ValueError, match="no minibatch recorded"):
        accepted_pairs([])
    dpo = TrainBatch("dpo", torch.tensor([0]), torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match="minibatch 0 is 'dpo'"):
        accepted_pairs([dpo])
    with pytest.raises(ValueError, match="pass samples"):
        bayes_link_on_epoch(object())
    with pytest.raises(TypeError, match="size must be a SimSize or a ToySize, got int"):
        transfer_report(3)


def test_sim_transfer_refuses_dpo(models):
    world, model = models["tied"]
    with pytest.raises(ValueError, match="cfg.loss='dpo'"):
        sim_transfer(world, model, dataclasses.replace(SIZE.config(), loss="dpo"))


def test_bayes_link_on_samples_checks_shapes(models):
    _, model = models["tied"]
    with pytest.raises(ValueError, match=r"images must be \(R, B, K, M\) with B = 3 prompts, got \(2, 2, 1, 1\)"):
        bayes_link_on_samples(model, torch.arange(3), torch.zeros(2, 2, 1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="image_chunk must be an integer >= 1, got 0"):
        bayes_link_on_samples(model, torch.arange(2), torch.zeros(2, 2, 1, 1, dtype=torch.long), image_chunk=0)


def test_toy_bayes_link_runs():
    from dynamics.toy.model import ToyConfig, ToyModel
    from dynamics.transfer import fixed_samples, toy_bayes_link

    model = ToyModel(ToyConfig.preset("tiny"), seed=0).double().eval()
    samples = fixed_samples(model, per_prompt=1, seed=0, prompt_ids=torch.arange(0, 126, 9))
    (link,) = toy_bayes_link(model, samples=samples, bins=2)
    assert link["n"] == 14 and -1.0 <= link["spearman"] <= 1.0 and len(link["calibration"]) == 2

"""Theory tracking: measured one-step changes against Proposition 1 / Lemmas 3-4 from the exact eNTK.

The paper's claim tested here: one plain-SGD step of size eta changes log-probabilities by
``-eta A K G + O(eta^2)``, for the generation branch (Delta G) and, through the Bayes link or a shared
trunk, for the understanding (Delta U). The residual of the first-order prediction must shrink as
eta^2 (log-log slope ~2); a wrong sign, a wrong G or a wrong kernel would leave an O(eta) residual.
"""

import copy
import math

import pytest
import torch

from dynamics.clo import CLOConfig, batch_loss
from dynamics.kernels import entk
from dynamics.protocol import TrainBatch
from dynamics.sim import SimModel, SimWorld
from dynamics.sim.pretrain import pretrain
from dynamics.sim.tracking import (
    TheoryTracker,
    _logit_gradient,
    default_probes,
    dpo_batch_loss,
    fp_correction_analysis,
    predict_step,
    probe_values,
    sft_loss,
)
from dynamics.theory import bayes_delta_u_first_order, first_order_delta, g_sft, posterior_weights

torch.set_num_threads(1)

IDS = torch.arange(6)


@pytest.fixture(scope="module")
def world():
    return SimWorld(prompts=12, tokens=12, seed=0)


def _model(world, coupling):
    m = SimModel(world, replicas=2, seed=0, coupling=coupling, dim=16, hidden=16, dtype=torch.float64)
    pretrain(world, m, steps=20, seed=0)
    return m


def _sft_batch(world, m):
    x = m.sample(IDS, 3, seed=0)
    return TrainBatch("sft", IDS, torch.ones(2, len(IDS), 3, dtype=torch.float64), images=x)


def _dpo_batch(world, m):
    x = m.sample(IDS, 2, seed=1)
    chosen, rejected = x[:, :, :1], x[:, :, 1:]
    with torch.no_grad():
        ref_c = m.image_logprob(IDS, chosen) + 0.3
        ref_r = m.image_logprob(IDS, rejected) - 0.2
    w = torch.ones(2, len(IDS), 1, dtype=torch.float64)
    w[1, 0] = 0.0  # replica 1 has no pair for prompt 0
    return TrainBatch("dpo", IDS, w, chosen=chosen, rejected=rejected, ref_chosen=ref_c, ref_rejected=ref_r)


def _step(m, batch, lr, loss_fn):
    opt = torch.optim.SGD(m.generation_parameters(), lr=lr)
    opt.zero_grad()
    loss_fn(m, batch).backward()
    opt.step()


def _residuals(world, m0, batch, lrs, loss_fn, tracker_kw):
    """The tracker's records around one plain-SGD step of each size, from the same start."""
    out = []
    for lr in lrs:
        m = copy.deepcopy(m0)
        tr = TheoryTracker(world, m, ratio_probes=0, **tracker_kw)
        tr.before_step(m, batch, lr)
        _step(m, batch, lr, loss_fn)
        out.append(tr.after_step(m, batch, lr))
    return out


def _slope(lrs, errs):
    return math.log(errs[0] / errs[-1]) / math.log(lrs[0] / lrs[-1])


@pytest.mark.parametrize("coupling, kind", [
    ("bayes", "sft"),
    ("tied", "sft"),
    ("trunk", "sft"),
    ("bayes", "dpo"),
])
def test_first_order_error_is_small_and_shrinks_as_eta_squared(world, coupling, kind):
    m0 = _model(world, coupling)
    if kind == "sft":
        batch, loss_fn, kw = _sft_batch(world, m0), sft_loss, {}
    else:
        batch = _dpo_batch(world, m0)
        kw = {"beta": 0.5, "nll_weight": 0.2}
        loss_fn = lambda m, b: dpo_batch_loss(m, b, beta=0.5, nll_weight=0.2)
    lrs = [0.04, 0.02, 0.01]
    recs = _residuals(world, m0, batch, lrs, loss_fn, kw)
    for key in ("g", "u"):
        for r in range(2):
            err = [max(abs(v) for v in rec[r][f"resid_{key}"]) for rec in recs]
            moved = max(abs(v) for v in recs[-1][r][f"delta_{key}"])
            assert moved > 1e-5, f"{key} did not move"
            assert recs[-1][r][f"rel_err_{key}"] < 0.05, (key, r, recs[-1][r][f"rel_err_{key}"])
            assert 1.7 < _slope(lrs, err) < 2.3, (key, r, err)


def test_decoupled_understanding_prediction_and_measurement_are_zero(world):
    m0 = _model(world, "decoupled")
    (recs,) = _residuals(world, m0, _sft_batch(world, m0), [0.05], sft_loss, {})
    for rec in recs:
        assert max(abs(v) for v in rec["delta_u"]) == 0.0
        assert max(abs(v) for v in rec["pred_delta_u"]) == 0.0
        assert max(abs(v) for v in rec["delta_g"]) > 1e-4


def test_tracker_loss_is_the_loops_loss(world):
    m = _model(world, "bayes")
    sft = _sft_batch(world, m)
    assert torch.allclose(sft_loss(m, sft), batch_loss(m, CLOConfig(loss="sft"), sft))
    dpo = _dpo_batch(world, m)
    cfg = CLOConfig(loss="dpo", beta=0.5, nll_weight=0.2)
    assert torch.allclose(dpo_batch_loss(m, dpo, beta=0.5, nll_weight=0.2), batch_loss(m, cfg, dpo))


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_closed_form_g_is_the_loss_gradient_at_the_logits(world, kind):
    m = _model(world, "bayes")
    batch = _sft_batch(world, m) if kind == "sft" else _dpo_batch(world, m)
    z = m.gen_logits(IDS).detach().requires_grad_(True)

    class Fixed:  # the loss as a function of the batch prompts' logits only
        def image_logprob(self, ids, images):
            return torch.log_softmax(z, -1).gather(2, images[..., 0])

    loss = sft_loss(Fixed(), batch) if kind == "sft" else dpo_batch_loss(Fixed(), batch, beta=0.5, nll_weight=0.2)
    (auto,) = torch.autograd.grad(loss, z)
    closed = _logit_gradient(m, batch, z.detach(), beta=0.5, variant="sigmoid", nll_weight=0.2)
    assert torch.allclose(auto, closed, atol=1e-12)


def test_matrix_free_prediction_equals_explicit_entk_and_proposition_1():
    """The tracker's contraction equals -eta A K G with K from dynamics.kernels.entk, and its Bayes
    Delta U equals dynamics.theory's Proposition 1 form."""
    w = SimWorld(prompts=6, tokens=6, seed=2)
    m = SimModel(w, replicas=1, seed=1, coupling="bayes", dim=8, hidden=8, dtype=torch.float64)
    ids = torch.tensor([0, 3])
    x = m.sample(ids, 2, seed=0)
    batch = TrainBatch("sft", ids, torch.tensor([[[1.0, 1.0], [1.0, 0.0]]], dtype=torch.float64), images=x)
    probes = torch.tensor([[1, 2], [3, 4]])
    lr = 0.1
    pred = predict_step(m, batch, lr, probes)
    params = m.functional_params(0)
    names = [n for n in params if n.startswith(("shared.", "gen_head."))]
    fn = m.gen_logits_fn()
    K = entk(fn, fn, params, torch.arange(6), ids, blocks=names)  # (P, B, V, V)
    z = m.gen_logits(torch.arange(6))[0].detach()
    G = pred["grad_logits"][0]  # (B, V)
    dg_all = torch.stack([
        torch.stack([first_order_delta(z[i], torch.tensor(x0), [K[i, b] for b in range(2)], [G[b] for b in range(2)], lr)
                     for i in range(6)])
        for _, x0 in probes.tolist()])  # (n, P): Delta log pi(x0 | y_i), Proposition 1's terms
    for j, (y0, x0) in enumerate(probes.tolist()):
        assert torch.allclose(dg_all[j, y0], pred["pred_delta_g"][0, j], atol=1e-12)
        wts = posterior_weights(torch.log_softmax(z, -1)[:, x0])
        order = [y0] + [i for i in range(6) if i != y0]  # Proposition 1 with the probe's prompt first
        du = bayes_delta_u_first_order(dg_all[j, order], wts[order], index=0)
        assert torch.allclose(du, pred["pred_delta_u"][0, j], atol=1e-12)


def test_records_every_kth_step_and_flag_non_sgd(world):
    m = _model(world, "bayes")
    batch = _sft_batch(world, m)
    tr = TheoryTracker(world, m, every=3, ratio_probes=1, config=CLOConfig(optimizer="adam"))
    got = []
    for _ in range(4):
        tr.before_step(m, batch, 0.01)
        _step(m, batch, 0.01, sft_loss)
        got.append(tr.after_step(m, batch, 0.01))
    assert [len(g) for g in got] == [2, 0, 0, 2]
    rec = got[0][0]
    assert rec["first_order_valid"] is False and "plain SGD" in rec["note"] and rec["optimizer"] == "adam"
    assert len(rec["delta_g"]) == len(rec["probe_prompt"]) == 32
    assert rec["dominance_ratio"][0] > 0 and "dominance_ratio" not in got[0][1]
    assert rec["u"] == "log_posterior" and sum(rec["probe_aligned"]) == 8


def test_probe_values_read_the_model(world):
    m = _model(world, "tied")
    pr = default_probes(world, n_misaligned=4, n_aligned=2, seed=1)
    v = probe_values(m, pr)
    lp = torch.log_softmax(m.gen_logits(torch.arange(12)).detach(), -1)[:, pr[:, 0], pr[:, 1]]
    assert torch.allclose(v["g"], lp)
    assert torch.allclose(v["u"], torch.log(v["p_yes"]))
    with pytest.raises(ValueError, match="probe tokens"):
        probe_values(m, torch.tensor([[0, 99]]))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        probe_values(m, torch.tensor([0, 1]))


def test_fp_correction_analysis_counts_and_groups(world):
    R, P, V = 1, 12, 12
    al = world.aligned
    before = torch.zeros(R, P, V)
    after = torch.zeros(R, P, V)
    fp = (~al).nonzero()[:5]
    before[0, fp[:, 0], fp[:, 1]] = 0.9  # five false positives ...
    after[0, fp[:3, 0], fp[:3, 1]] = 0.1  # ... three corrected, two kept
    after[0, fp[3:, 0], fp[3:, 1]] = 0.9
    g0 = torch.zeros(R, P, V, dtype=torch.float64)
    g1 = g0.clone()
    g1[0, fp[:3, 0], fp[:3, 1]] = -2.0
    (out,) = fp_correction_analysis(world, before, after, torch.arange(6), gen_logp_before=g0,
                                    gen_logp_after=g1, n_random=50)
    assert out["n_corrected"] == 3 and out["n_fp_before"] == 5
    assert sorted(map(tuple, out["corrected"])) == sorted(map(tuple, fp[:3].tolist()))
    assert out["corrected_delta_g"] == -2.0 and len(out["random_delta_g_values"]) == 50
    assert -1.0 <= out["corrected_similarity"] <= 1.0 and -1.0 <= out["random_similarity"] <= 1.0
    with pytest.raises(ValueError, match="both"):
        fp_correction_analysis(world, before, after, torch.arange(6), gen_logp_before=g0)


def test_g_sft_sign_convention():
    # the tracker reads A's rows as -g_sft: e_x - pi
    z = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    assert torch.allclose(-g_sft(z, torch.tensor(1)), torch.nn.functional.one_hot(torch.tensor(1), 3) - torch.softmax(z, -1))

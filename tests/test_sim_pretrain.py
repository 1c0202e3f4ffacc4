"""Pre-training of the simulator: the bayes model's one shared forward pass gives the numbers of two.

For the ``bayes`` coupling :func:`dynamics.sim.pretrain.pretrain` computes the generation log-probs
once for both objectives and runs one backward pass per objective; these tests hold it, bit for bit,
to the plain formulation (each objective its own forward pass through the model, one backward pass
of the summed loss), and the ``bayes`` understanding's row broadcast to the gather it replaces.
"""

from __future__ import annotations

import pytest
import torch

from dynamics.sim import SimModel, SimWorld, pretrain
from dynamics.sim.pretrain import pretraining_data


def _reference_pretrain(world, model, *, steps, seed, lr=0.05, gap=0.3, pos_weight=4.0):
    """The pre-training loop in its plain form: two forward passes, one backward pass per step."""
    data = pretraining_data(world, model.replicas, gap=gap, seed=seed)
    dtype = model.prompt_features.dtype
    pos = (data["und_seen"] & data["und_label"]).to(dtype)
    neg = (data["und_seen"] & ~data["und_label"]).to(dtype)
    norm = (pos_weight * pos + neg).sum((1, 2), keepdim=True).clamp_min(1)
    weight = pos_weight * pos / norm + neg / norm
    sign = torch.where(pos > 0, -1.0, 1.0).to(dtype)
    target = data["gen_target"].to(dtype)
    ids = torch.arange(model.num_prompts)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        und = (weight * torch.nn.functional.softplus(sign * model.und_logit(ids))).sum()
        gen = -(target * torch.log_softmax(model.gen_logits(ids), -1)).sum(-1).mean(-1).sum()
        (und + gen).backward()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bayes_pretraining_equals_two_forward_passes_bit_for_bit(dtype):
    world = SimWorld(12, 10, seed=3)
    fast = SimModel(world, replicas=3, seed=5, dtype=dtype)
    plain = SimModel(world, replicas=3, seed=5, dtype=dtype)
    pretrain(world, fast, steps=15, seed=7)
    _reference_pretrain(world, plain, steps=15, seed=7)
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        assert torch.equal(a, b), name


def test_bayes_logit_is_the_understanding_table_with_the_gather_gradient():
    world = SimWorld(9, 7, seed=1)
    model = SimModel(world, replicas=2, seed=0, dtype=torch.float64)
    ids = torch.arange(9)
    logp = torch.log_softmax(model.gen_logits(ids), -1).detach().requires_grad_()
    logit = model.bayes_logit(logp)
    assert torch.equal(logit, model.und_logit(ids))
    # the gradient of the understanding's log marginal is the gather's (rows summed in order)
    log_marg = torch.logsumexp(logp, dim=1)
    rows = torch.zeros((), dtype=torch.long).expand(*logp.shape)
    want = model.bayes_scale * (logp - torch.gather(log_marg[:, None, :], 1, rows) + torch.log(torch.tensor(9.0))
                                - model.bayes_offset)
    cot = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (g_fast,) = torch.autograd.grad(logit, logp, cot)
    (g_want,) = torch.autograd.grad(want, logp, cot)
    assert torch.equal(g_fast, g_want)


def test_bayes_logit_refuses_a_head_understanding():
    model = SimModel(SimWorld(6, 6), coupling="tied")
    with pytest.raises(ValueError, match="yes/no head"):
        model.bayes_logit(torch.zeros(1, 6, 6))

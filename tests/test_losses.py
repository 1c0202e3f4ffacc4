"""Unit and property tests of dynamics.losses: values, masks, broadcasting, stability, errors.

(The gradients with respect to the logits equal the theory's closed forms: tests/test_theory.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import DTYPE, THEORY, logits_and_targets

from dynamics.losses import DPO_VARIANTS, dpo_loss, preference_loss, sequence_logprob, sft_nll

torch.set_num_threads(1)


@THEORY
@given(logits_and_targets(masked=True))
def test_sequence_logprob_is_the_masked_sum_of_token_logprobs(case):
    logits, targets, mask = case
    got = sequence_logprob(logits, targets, mask)
    b, m, _ = logits.shape
    want = torch.zeros(b, dtype=DTYPE)
    for i in range(b):
        for k in range(m):
            if mask[i, k]:
                want[i] += logits[i, k, targets[i, k]] - torch.logsumexp(logits[i, k], -1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(sft_nll(logits, targets, mask), -want, atol=1e-12, rtol=0)
    assert (got <= 0).all()


def test_masked_positions_may_hold_padding_ids():
    z = torch.zeros(1, 3, 4, dtype=DTYPE)
    t = torch.tensor([[1, -100, 7]])
    lp = sequence_logprob(z, t, mask=torch.tensor([[1, 0, 0]]))
    assert float(lp) == pytest.approx(math.log(0.25))
    with pytest.raises(ValueError, match=r"targets\[0, 1\] = -100 is outside \[0, 4\) at an unmasked position"):
        sequence_logprob(z, t)


def test_sequence_logprob_errors_name_the_cause():
    z = torch.zeros(2, 3, 4, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"targets have shape \(2,\); expected \(2, 3\)"):
        sequence_logprob(z, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        sequence_logprob(z, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"mask has shape \(2,\)"):
        sequence_logprob(z, torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(2))
    with pytest.raises(ValueError, match="at least 2 dims"):
        sequence_logprob(torch.zeros(4, dtype=DTYPE), torch.zeros((), dtype=torch.long))


def test_dpo_loss_broadcasts_like_the_clo_loop():
    g = torch.Generator().manual_seed(0)
    lc, lr, rc, rr = (torch.randn(2, 5, 1, generator=g, dtype=DTYPE) for _ in range(4))
    for variant in DPO_VARIANTS:
        out = dpo_loss(lc, lr, rc, rr, beta=0.3, variant=variant)
        assert out.shape == (2, 5, 1)
        # elementwise: each entry is the loss of its own pair
        one = dpo_loss(lc[1, 3, 0], lr[1, 3, 0], rc[1, 3, 0], rr[1, 3, 0], beta=0.3, variant=variant)
        assert float(out[1, 3, 0]) == pytest.approx(float(one), abs=1e-14)
    assert dpo_loss(lc, lr, 0.0, 0.0).shape == (2, 5, 1)  # float references
    with pytest.raises(ValueError, match="shapes do not broadcast"):
        dpo_loss(lc, lr[:, :3], rc, rr)


def test_dpo_loss_reference_values():
    zero = torch.zeros((), dtype=DTYPE)
    assert float(dpo_loss(zero, zero, zero, zero, beta=0.5)) == pytest.approx(math.log(2))
    h = torch.tensor(2.0, dtype=DTYPE)  # chosen margin 2 over the reference
    beta = 0.25
    assert float(dpo_loss(h, zero, zero, zero, beta=beta, variant="ipo")) == pytest.approx((2.0 - 2.0) ** 2)
    assert float(dpo_loss(h, zero, zero, zero, beta=beta, variant="hinge", margin=1.0)) == pytest.approx(0.5)
    sig = float(dpo_loss(h, zero, zero, zero, beta=beta))
    for variant in ("robust", "conservative"):  # eps = 0 is plain DPO
        assert float(dpo_loss(h, zero, zero, zero, beta=beta, variant=variant, eps=0.0)) == pytest.approx(sig)


@THEORY
@given(st.floats(-50.0, 50.0), st.floats(0.05, 3.0), st.floats(0.0, 0.45))
def test_robust_dpo_is_unbiased_under_label_flips(h, beta, eps):
    """Chowdhury et al.: averaging rDPO over a flip with rate eps recovers the clean DPO loss."""
    ht, zero = torch.tensor(h, dtype=DTYPE), torch.zeros((), dtype=DTYPE)
    def rob(x):
        return dpo_loss(x, zero, zero, zero, beta=beta, variant="robust", eps=eps)

    clean = dpo_loss(ht, zero, zero, zero, beta=beta)
    torch.testing.assert_close((1 - eps) * rob(ht) + eps * rob(-ht), clean, atol=1e-9, rtol=1e-9)
    # cDPO is the expected loss under a label flipped with probability eps
    con = dpo_loss(ht, zero, zero, zero, beta=beta, variant="conservative", eps=eps)
    want = (1 - eps) * dpo_loss(ht, zero, zero, zero, beta=beta) + eps * dpo_loss(-ht, zero, zero, zero, beta=beta)
    torch.testing.assert_close(con, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("variant", DPO_VARIANTS)
def test_dpo_loss_is_finite_at_extreme_margins(variant):
    lc = torch.tensor([-1e4, 0.0, 1e4], dtype=DTYPE, requires_grad=True)
    loss = dpo_loss(lc, torch.zeros(3, dtype=DTYPE), 0.0, 0.0, beta=1.0, variant=variant, eps=0.1)
    (g,) = torch.autograd.grad(loss.sum(), lc)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    if variant == "sigmoid":
        assert float(loss[0].detach()) == pytest.approx(1e4)  # softplus, no overflow
        assert float(loss[2].detach()) == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize("variant", DPO_VARIANTS)
def test_preference_loss_gradcheck(variant):
    """Finite differences agree with autograd through sequence log-probs, masks and the NLL term."""
    g = torch.Generator().manual_seed(1)
    zc = torch.randn(2, 3, 4, generator=g, dtype=DTYPE, requires_grad=True)
    zr = torch.randn(2, 2, 4, generator=g, dtype=DTYPE, requires_grad=True)
    tc, tr = torch.randint(0, 4, (2, 3), generator=g), torch.randint(0, 4, (2, 2), generator=g)
    mc = torch.tensor([[1, 1, 0], [1, 0, 1]])

    def f(a, b):
        lc = sequence_logprob(a, tc, mc)
        lr = sequence_logprob(b, tr)
        return preference_loss(lc, lr, torch.tensor([0.1, -0.3], dtype=DTYPE), -0.2, beta=0.7, variant=variant,
                               eps=0.2, margin=5.0, nll_weight=0.5, nll_tokens=mc.sum(-1))

    assert torch.autograd.gradcheck(f, (zc, zr))


def test_preference_loss_nll_term_and_errors():
    lc, lr = torch.tensor([-4.0, -8.0], dtype=DTYPE), torch.tensor([-6.0, -6.0], dtype=DTYPE)
    base = dpo_loss(lc, lr, lc, lr, beta=0.1)
    got = preference_loss(lc, lr, lc, lr, beta=0.1, nll_weight=2.0, nll_tokens=torch.tensor([4, 8]))
    torch.testing.assert_close(got, base + 2.0 * torch.tensor([1.0, 1.0], dtype=DTYPE))
    torch.testing.assert_close(preference_loss(lc, lr, lc, lr, beta=0.1), base)
    with pytest.raises(ValueError, match="nll_weight must be >= 0"):
        preference_loss(lc, lr, lc, lr, nll_weight=-1.0)
    with pytest.raises(ValueError, match="nll_tokens must be > 0"):
        preference_loss(lc, lr, lc, lr, nll_weight=1.0, nll_tokens=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        dpo_loss(lc, lr, lc, lr, variant="orpo")
    with pytest.raises(ValueError, match=r"robust DPO needs a flip rate eps in \[0, 0.5\)"):
        dpo_loss(lc, lr, lc, lr, variant="robust", eps=0.5)
    with pytest.raises(ValueError, match="logp_chosen must be a floating tensor"):
        dpo_loss(torch.tensor([1, 2]), lr, lc, lr)


def test_sigmoid_dpo_matches_the_textbook_formula():
    g = torch.Generator().manual_seed(2)
    lc, lr, rc, rr = (torch.randn(7, generator=g, dtype=DTYPE) for _ in range(4))
    want = -F.logsigmoid(0.1 * ((lc - rc) - (lr - rr)))
    torch.testing.assert_close(dpo_loss(lc, lr, rc, rr), want, atol=1e-15, rtol=0)

"""Property 8: the sympy derivations are proved symbolically and equal the numerical code (lambdify).

Every claim of :mod:`dynamics.theory.symbolic` (derived first-order change == closed form) is proved
by simplification on small sizes; the lambdified expressions are then compared on random draws with
:mod:`dynamics.theory` and with one measured SGD step of the same model in torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from strategies import DTYPE, THEORY, seeds

import dynamics.theory as th
from dynamics.theory import symbolic as sym

torch.set_num_threads(1)

SETTINGS = THEORY


@functools.cache
def linear():
    return sym.linear_softmax(vocab=3, width=2, prompts=2, x0=0, xu=1)


@functools.cache
def two():
    return sym.two_head(vocab=3, vocab_und=2, width=2, feat=2, x0=0, xu=1, answer=0)


@functools.cache
def dpo():
    return sym.dpo_single_token(vocab=3, x_plus=0, x_minus=1)


@functools.cache
def signs():
    return sym.sign_conditions(vocab=3, x0=0, xu=1, prompts=3)


@functools.cache
def fn(derivation, key):
    return derivation().function(key)


def _prove(d, claims):
    assert claims
    for claim in claims:
        assert claim in d.claims
        assert d.verify([claim]), f"{d.name}: {claim} does not simplify to zero"


def test_fast_claims_are_proved_symbolically():
    """The DPO gradient, the sign-term identities, the kernels and Proposition 1's Delta G."""
    _prove(dpo(), dpo().claims)
    _prove(signs(), signs().claims)
    small = sym.linear_softmax(vocab=3, width=1, prompts=2)
    _prove(small, [c for c in small.claims if c[0] != "dU_direct"])
    small_two = sym.two_head(vocab=3, vocab_und=2, width=1, feat=1)
    _prove(small_two, [("K_GG", "K_GG_closed"), ("K_UG", "K_UG_closed")])


@pytest.mark.slow
def test_every_claim_is_proved_symbolically():
    """Every claim, including Proposition 1's Delta U and the two-head Delta G, Delta U (slower)."""
    for d in (sym.linear_softmax(vocab=3, width=1, prompts=2), sym.two_head(vocab=3, vocab_und=2, width=1, feat=1)):
        _prove(d, d.claims)


def test_a_false_claim_is_not_proved():
    d = dpo()
    wrong = sym.Derivation("wrong", d.inputs, {"grad": d.exprs["grad"], "flipped": -d.exprs["closed_form"]},
                           (("grad", "flipped"),))
    assert not wrong.verify()
    assert not signs().verify([("dG_iso", "dG_bad")])


def test_squeezing_boundary_is_the_root_of_the_squeezing_term():
    t = float(sym.squeezing_boundary())
    p = [(1 - t) / 2, (1 - t) / 2, t]
    assert abs(fn(signs, "squeeze")(p + p + [1.0, 0.1, 0.1, 1.0, 1.0, 0.0, 0.0])) < 1e-12
    assert abs(t - 1 / math.sqrt(3)) < 1e-15


def _rng(seed):
    return np.random.default_rng(seed)


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE)


@SETTINGS
@given(seeds)
def test_linear_softmax_matches_numerics(seed):
    r = _rng(seed)
    v, width, n = 3, 2, 2
    w = r.normal(size=(v, width))
    phis = r.normal(size=(n, width))
    phi_u = r.normal(size=width)
    values = list(w.ravel()) + list(phis.ravel()) + list(phi_u)
    wt, pt, ut = _t(w), _t(phis), _t(phi_u)
    x0, xu = torch.tensor(0), torch.tensor(1)
    probes = pt @ wt.T  # (N, V)
    kernels = torch.stack([float(pt[i] @ ut) * torch.eye(v, dtype=DTYPE) for i in range(n)])
    logits_u = wt @ ut
    for i in range(n):
        np.testing.assert_allclose(fn(linear, f"kernel_{i}")(values), kernels[i].numpy(), atol=1e-12)
        ref = float(th.prop1_delta_g(probes[i], x0, kernels[i], logits_u, xu, 1.0))
        assert fn(linear, f"dG_direct_{i}")(values) == pytest.approx(ref, abs=1e-12)
        assert fn(linear, f"dG_prop1_{i}")(values) == pytest.approx(ref, abs=1e-12)
    ref_u = float(th.prop1_delta_u(probes, x0, kernels, logits_u, xu, 1.0))
    assert fn(linear, "dU_direct")(values) == pytest.approx(ref_u, abs=1e-12)
    assert fn(linear, "dU_prop1")(values) == pytest.approx(ref_u, abs=1e-12)
    # the derivative also matches one measured torch SGD step (central difference in eta)
    def gen(weights):
        return torch.log_softmax(pt @ weights.T, -1)[:, 0]

    def stepped(eta):
        wq = wt.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(-torch.log_softmax(wq @ ut, -1)[1], wq)
        return gen(wt - eta * g)

    h = 1e-5
    fd = (stepped(h) - stepped(-h)) / (2 * h)
    assert fn(linear, "dG_direct_0")(values) == pytest.approx(float(fd[0]), abs=1e-7)


@SETTINGS
@given(seeds)
def test_two_head_matches_numerics(seed):
    r = _rng(seed)
    t, hg, hu = r.normal(size=(2, 2)), r.normal(size=(3, 2)), r.normal(size=(2, 2))
    f0, fu, c0 = r.normal(size=2), r.normal(size=2), r.normal(size=2)
    values = list(t.ravel()) + list(hg.ravel()) + list(hu.ravel()) + list(f0) + list(fu) + list(c0)
    k_gg, k_ug = fn(two, "K_GG")(values), fn(two, "K_UG")(values)
    np.testing.assert_allclose(k_gg, fn(two, "K_GG_closed")(values), atol=1e-12)
    np.testing.assert_allclose(k_ug, fn(two, "K_UG_closed")(values), atol=1e-12)
    tt, hgt, hut = _t(t), _t(hg), _t(hu)
    zg0, zgu, zu0 = hgt @ tt @ _t(f0), hgt @ tt @ _t(fu), hut @ tt @ _t(c0)
    g_u = th.g_sft(zgu, torch.tensor(1))
    ref_g = float(th.first_order_delta(zg0, torch.tensor(0), _t(k_gg), g_u, 1.0))
    ref_u = float(th.first_order_delta(zu0, torch.tensor(0), _t(k_ug), g_u, 1.0))
    assert fn(two, "dG_akg")(values) == pytest.approx(ref_g, abs=1e-11)
    assert fn(two, "dG_direct")(values) == pytest.approx(ref_g, abs=1e-11)
    assert fn(two, "dU_akg")(values) == pytest.approx(ref_u, abs=1e-11)
    assert fn(two, "dU_direct")(values) == pytest.approx(ref_u, abs=1e-11)


@SETTINGS
@given(seeds)
def test_dpo_single_token_matches_numerics(seed):
    r = _rng(seed)
    z = r.normal(size=3) * 2
    beta, r_plus, r_minus = float(r.uniform(0.05, 3.0)), float(r.normal()), float(r.normal())
    values = list(z) + [beta, r_plus, r_minus]
    grad = fn(dpo, "grad")(values).ravel()
    np.testing.assert_allclose(grad, fn(dpo, "closed_form")(values).ravel(), atol=1e-12)
    h = torch.tensor(fn(dpo, "margin")(values), dtype=DTYPE)
    logp = torch.log_softmax(_t(z), -1)
    torch.testing.assert_close(h, logp[0] - r_plus - logp[1] + r_minus, atol=1e-12, rtol=0)
    closed = th.g_dpo_shared_prompt(torch.tensor(0), torch.tensor(1), h, vocab=3, beta=beta)
    np.testing.assert_allclose(grad, closed.numpy(), atol=1e-12)
    gp, gm = th.g_dpo(_t(z), torch.tensor(0), _t(z), torch.tensor(1), h, beta=beta)
    np.testing.assert_allclose(grad, (gp + gm)[0].numpy(), atol=1e-12)


@SETTINGS
@given(seeds)
def test_sign_conditions_match_numerics(seed):
    r = _rng(seed)
    n, v = 3, 3
    logits = _t(r.normal(size=(n, v)) * 2)  # x0 = 0 after each prompt
    logits_u = _t(r.normal(size=v) * 2)  # the training input; xu = 1
    kappas = np.abs(r.normal(size=n)) * np.where(r.uniform(size=n) < 0.8, 1.0, 0.05)
    p = torch.softmax(logits, -1)
    pu = torch.softmax(logits_u, -1)
    x0, xu = torch.tensor(0), torch.tensor(1)
    g_u = th.g_sft(logits_u, xu)
    w = th.posterior_weights(torch.log_softmax(logits, -1)[:, 0])
    s = torch.stack([th.squeezing_term(logits[i], x0, logits_u, xu) for i in range(n)])
    values = list(p[0].numpy()) + list(pu.numpy()) + [kappas[0]] + list(w[1:].numpy()) + list(kappas[1:]) \
        + list(s[1:].numpy())
    assert fn(signs, "squeeze")(values) == pytest.approx(float(s[0]), abs=1e-12)
    kernels = torch.stack([float(kappas[i]) * torch.eye(v, dtype=DTYPE) for i in range(n)])
    ref_g = float(th.first_order_delta(logits[0], x0, kernels[0], g_u, 1.0))
    assert fn(signs, "dG_iso")(values) == pytest.approx(ref_g, abs=1e-12)
    assert fn(signs, "dG_squeeze")(values) == pytest.approx(ref_g, abs=1e-12)
    ref_u = float(th.prop1_delta_u(logits, x0, kernels, logits_u, xu, 1.0))
    assert fn(signs, "dU_iso")(values) == pytest.approx(ref_u, abs=1e-12)
    # the numerical sufficient conditions imply the exact (isotropic) symbolic sign conditions
    improve = bool(fn(signs, "co_improvement")(values))
    degrade = bool(fn(signs, "co_degradation")(values))
    assert improve == (ref_g < 0 and ref_u < 0)
    assert degrade == (ref_g > 0 and ref_u > 0)
    if th.co_improvement_condition(logits, x0, kernels, logits_u, xu).holds:
        assert improve
    if th.co_degradation_condition(logits, x0, kernels, logits_u, xu).holds:
        assert degrade
    # the bad positive's sum of non-negative terms matches its sign term
    assert fn(signs, "dG_bad_sum")(values) == pytest.approx(
        -kappas[0] * float(th.squeezing_term(logits[0], x0, logits_u, x0)), abs=1e-12)

"""Property tests of the learning-dynamics theory (float64): each test states one claim.

1. ``A 1 = 0``, ``pi^T A = 0``, ``||A||_F^2 = V ||pi||^2 + V - 2``, and A is the Jacobian of log-softmax.
2. The closed-form G of every loss equals autograd's gradient with respect to the logits.
5. Bayes link: ``Delta U = Delta G - Delta log pi(x0)`` exactly for any step; the first-order weighted
   form (and Proposition 1's kernel form) is accurate to O(eta^2).
6. Aligned dynamics: under the dominance condition, ``sign(Delta U) = sign(Delta G)``.
7. Co-improvement and co-degradation under their sufficient conditions, and the squeezing boundary.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import (
    DTYPE,
    THEORY,
    THEORY_SLOW,
    TwoBranch,
    dpo_cases,
    dynamics_cases,
    logits_and_targets,
    logits_arrays,
    random_two_branch,
    step_sizes,
)

import dynamics.theory as th
from dynamics.losses import dpo_loss, preference_loss, sequence_logprob, sft_nll

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# 1. A
# ---------------------------------------------------------------------------------------------


@THEORY
@given(st.integers(2, 9).flatmap(lambda v: logits_arrays((3, v))))
def test_a_matrix_identities(z):
    v = z.shape[-1]
    pi = torch.softmax(z, -1)
    a = th.a_matrix(z)
    assert a.shape == (3, v, v)
    torch.testing.assert_close(a @ torch.ones(v, dtype=DTYPE), torch.zeros(3, v, dtype=DTYPE), atol=1e-12, rtol=0)
    torch.testing.assert_close((pi.unsqueeze(-2) @ a).squeeze(-2), torch.zeros(3, v, dtype=DTYPE), atol=1e-12, rtol=0)
    frob = (a**2).sum((-1, -2))
    torch.testing.assert_close(frob, v * (pi**2).sum(-1) + v - 2, atol=1e-12, rtol=0)
    # A is d log softmax(z) / dz: row x is e_x - pi
    full = torch.autograd.functional.jacobian(lambda u: torch.log_softmax(u, -1), z)  # (3, V, 3, V)
    jac = torch.stack([full[i, :, i] for i in range(3)])
    torch.testing.assert_close(a, jac, atol=1e-12, rtol=0)


def test_a_matrix_rejects_integer_logits():
    with pytest.raises(ValueError, match="logits must be a floating tensor"):
        th.a_matrix(torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# 2. G equals autograd
# ---------------------------------------------------------------------------------------------


@THEORY
@given(logits_and_targets(masked=True))
def test_g_sft_equals_autograd(case):
    logits, targets, mask = case
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sft_nll(z, targets, mask).sum(), z)
    torch.testing.assert_close(grad, th.g_sft(logits, targets) * mask[..., None], atol=1e-12, rtol=0)


@THEORY
@given(dpo_cases())
def test_g_dpo_equals_autograd(c):
    zc = c.logits_chosen.clone().requires_grad_(True)
    zr = c.logits_rejected.clone().requires_grad_(True)
    lc = sequence_logprob(zc, c.target_chosen, c.mask_chosen)
    lr = sequence_logprob(zr, c.target_rejected, c.mask_rejected)
    h = (lc - c.ref_chosen) - (lr - c.ref_rejected)
    if c.variant == "hinge":  # the kink is a measure-zero set where only a subgradient exists
        assume(float((c.beta * h.detach() - c.margin).abs().min()) > 1e-9)
    loss = preference_loss(lc, lr, c.ref_chosen, c.ref_rejected, beta=c.beta, variant=c.variant, eps=c.eps,
                           margin=c.margin, nll_weight=c.nll_weight, nll_tokens=c.nll_tokens)
    gc, gr = torch.autograd.grad(loss.sum(), [zc, zr])
    gp, gm = th.g_dpo(c.logits_chosen, c.target_chosen, c.logits_rejected, c.target_rejected, h.detach(),
                      beta=c.beta, variant=c.variant, eps=c.eps, margin=c.margin, nll_weight=c.nll_weight,
                      nll_tokens=c.nll_tokens, mask_chosen=c.mask_chosen, mask_rejected=c.mask_rejected)
    torch.testing.assert_close(gp, gc, atol=1e-11, rtol=1e-9)
    torch.testing.assert_close(gm, gr, atol=1e-11, rtol=1e-9)


@THEORY
@given(dpo_cases())
def test_dpo_coefficients_equal_autograd(c):
    lc = sequence_logprob(c.logits_chosen, c.target_chosen, c.mask_chosen).requires_grad_(True)
    lr = sequence_logprob(c.logits_rejected, c.target_rejected, c.mask_rejected).requires_grad_(True)
    h = (lc - c.ref_chosen) - (lr - c.ref_rejected)
    if c.variant == "hinge":
        assume(float((c.beta * h.detach() - c.margin).abs().min()) > 1e-9)
    loss = dpo_loss(lc, lr, c.ref_chosen, c.ref_rejected, beta=c.beta, variant=c.variant, eps=c.eps, margin=c.margin)
    dc, dr = torch.autograd.grad(loss.sum(), [lc, lr])
    cp, cm = th.dpo_coefficients(h.detach(), beta=c.beta, variant=c.variant, eps=c.eps, margin=c.margin)
    torch.testing.assert_close(cp, dc, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(cm, dr, atol=1e-12, rtol=1e-10)


@THEORY
@given(st.integers(2, 7).flatmap(lambda v: st.tuples(logits_arrays((v,)), st.integers(0, v - 1),
                                                     st.integers(0, v - 1), st.sampled_from(th.DPO_VARIANTS),
                                                     st.floats(0.05, 3.0), st.floats(-5.0, 5.0))))
def test_single_token_shared_prompt_dpo_gradient(case):
    z, xp, xm, variant, beta, ref_gap = case
    zz = z.clone().requires_grad_(True)
    logp = torch.log_softmax(zz, -1)
    loss = dpo_loss(logp[xp], logp[xm], torch.tensor(ref_gap, dtype=DTYPE), torch.zeros((), dtype=DTYPE),
                    beta=beta, variant=variant, eps=0.2, margin=0.5)
    h = (logp[xp] - ref_gap - logp[xm]).detach()
    if variant == "hinge":
        assume(abs(beta * float(h) - 0.5) > 1e-9)
    (grad,) = torch.autograd.grad(loss, zz)
    closed = th.g_dpo_shared_prompt(torch.tensor(xp), torch.tensor(xm), h, vocab=z.shape[0], beta=beta,
                                    variant=variant, eps=0.2, margin=0.5)
    torch.testing.assert_close(closed, grad, atol=1e-12, rtol=1e-10)
    # the general per-sequence form agrees: G_plus + G_minus on shared logits
    gp, gm = th.g_dpo(z, torch.tensor(xp), z, torch.tensor(xm), h, beta=beta, variant=variant, eps=0.2, margin=0.5)
    torch.testing.assert_close((gp + gm)[0], grad, atol=1e-12, rtol=1e-10)
    if variant == "sigmoid":  # the stated fact: beta sigma(-beta h) (e_{x-} - e_{x+}), no pi left
        e = torch.eye(z.shape[0], dtype=DTYPE)
        torch.testing.assert_close(grad, beta * torch.sigmoid(-beta * h) * (e[xm] - e[xp]), atol=1e-12, rtol=1e-10)


def test_g_errors_name_the_cause():
    z = torch.zeros(2, 3, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"target has shape \(3,\); expected \(2,\)"):
        th.g_sft(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        th.g_sft(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer token ids"):
        th.g_sft(z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="variant must be one of"):
        th.dpo_coefficients(torch.zeros(()), beta=1.0, variant="kto")
    with pytest.raises(ValueError, match=r"eps in \[0, 0.5\)"):
        th.dpo_coefficients(torch.zeros(()), beta=1.0, variant="robust", eps=0.5)
    with pytest.raises(ValueError, match="beta must be"):
        th.dpo_coefficients(torch.zeros(()), beta=0.0)
    with pytest.raises(ValueError, match="does not match g"):
        th.first_order_delta(z[0], torch.tensor(0), torch.eye(3, dtype=DTYPE), torch.zeros(4, dtype=DTYPE), 0.1)


# ---------------------------------------------------------------------------------------------
# Helpers on the two-branch model
# ---------------------------------------------------------------------------------------------


def _sft_step(model: TwoBranch, yu: int, xu: torch.Tensor, lr: float) -> dict:
    return model.sgd_step(lambda p: sft_nll(model.logits_fn(p, torch.tensor(yu), xu), xu), lr)


def _direct_u(log_gen: torch.Tensor, log_prior, y: int) -> torch.Tensor:
    """``log pi(y | x0)`` straight from Bayes' rule (independent of dynamics.theory)."""
    n = log_gen.shape[-1]
    lp = torch.full((n,), -math.log(n), dtype=DTYPE) if log_prior is None else log_prior
    return log_gen[y] + lp[y] - torch.logsumexp(log_gen + lp, -1)


def _first_order_inputs(model: TwoBranch, x0, yu, xu):
    n = model.prompts
    probes = torch.stack([model.logits(i, x0) for i in range(n)])  # (N, M, V)
    kernels = model.probe_kernels(x0, yu, xu)  # (N, M, M, V, V)
    return probes, kernels, model.logits(yu, xu)


def _slope(residual, lr: float) -> float:
    r1, r2 = abs(float(residual(lr))), abs(float(residual(lr / 2)))
    return math.log2(r1 / r2)


# ---------------------------------------------------------------------------------------------
# 5. The Bayes link
# ---------------------------------------------------------------------------------------------


@THEORY
@given(dynamics_cases(max_length=3), st.sampled_from([1e-2, 0.3, 3.0]), st.booleans())
def test_bayes_link_exact_for_any_step(case, lr, nonuniform):
    model, x0, yu, xu = case.model, case.x0, case.yu, case.xu
    n = model.prompts
    if nonuniform:
        model.log_prior = torch.log_softmax(torch.linspace(-1.0, 1.0, n, dtype=DTYPE), -1)
    after = _sft_step(model, yu, xu, lr)
    before_g, after_g = model.gen_all(x0), model.gen_all(x0, after)
    du_direct = _direct_u(after_g, model.log_prior, 0) - _direct_u(before_g, model.log_prior, 0)
    du = th.bayes_delta_u(after_g - before_g, before_g, model.log_prior)
    torch.testing.assert_close(du, du_direct, atol=1e-12, rtol=1e-10)
    # and the pieces: Delta U = Delta G - Delta log pi(x0)
    dmarg = th.log_marginal(after_g, model.log_prior) - th.log_marginal(before_g, model.log_prior)
    torch.testing.assert_close(du, (after_g - before_g)[0] - dmarg, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(th.bayes_log_posterior(before_g, model.log_prior)[0],
                               _direct_u(before_g, model.log_prior, 0), atol=1e-12, rtol=0)
    w = th.posterior_weights(before_g, model.log_prior)
    direct_w = torch.stack([_direct_u(before_g, model.log_prior, i) for i in range(n)]).exp()
    torch.testing.assert_close(w, direct_w, atol=1e-12, rtol=1e-10)


@THEORY_SLOW
@given(dynamics_cases(max_length=3, similar=True, target="clean"), st.sampled_from([1e-3, 2e-3]), st.booleans())
def test_bayes_first_order_forms_are_second_order_accurate(case, lr, nonuniform):
    model, x0, yu, xu = case.model, case.x0, case.yu, case.xu
    prior = torch.log_softmax(torch.linspace(1.5, -1.5, model.prompts, dtype=DTYPE), -1) if nonuniform else None
    before = model.gen_all(x0)
    w = th.posterior_weights(before, prior)
    probes, kernels, logits_u = _first_order_inputs(model, x0, yu, xu)

    def exact_du(eta):
        dg = model.gen_all(x0, _sft_step(model, yu, xu, eta)) - before
        return dg, th.bayes_delta_u(dg, before, prior)

    def weighted_residual(eta):  # first-order weighted form with the measured Delta G
        dg, du = exact_du(eta)
        return du - th.bayes_delta_u_first_order(dg, w)

    def prop1_residual(eta):  # Proposition 1: kernels and closed forms only
        _, du = exact_du(eta)
        return du - th.prop1_delta_u(probes, x0, kernels, logits_u, xu, eta, log_prior=prior)

    du = float(exact_du(lr)[1])
    pred = float(th.prop1_delta_u(probes, x0, kernels, logits_u, xu, lr, log_prior=prior))
    assume(abs(pred) > 1e-3 * lr)  # a non-degenerate first-order term
    assert abs(du - pred) <= 0.25 * abs(pred)
    assert abs(_slope(prop1_residual, lr) - 2.0) <= 0.2
    dg = exact_du(lr)[0]
    assume(float((dg - (w * dg).sum()).abs().max()) > 1e-4 * lr)  # unequal Delta G_i (else exact)
    assert abs(_slope(weighted_residual, lr) - 2.0) <= 0.2


# ---------------------------------------------------------------------------------------------
# 6. Aligned dynamics
# ---------------------------------------------------------------------------------------------


def _aligned_model(case_seed: int, n: int, v: int, m: int, closeness: float) -> TwoBranch:
    return random_two_branch(case_seed, prompts=n, vocab=v, length=m, feat=16, head_scale=0.3, bias_scale=0.2,
                             similar=True, closeness=closeness)


@THEORY
@given(st.integers(0, 2**31 - 1), st.integers(2, 4), st.integers(3, 6), st.integers(1, 3),
       st.floats(0.9, 0.99), st.booleans())
def test_aligned_dynamics_sign(seed, n, v, m, closeness, clean):
    model = _aligned_model(seed, n, v, m, closeness)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, v, (m,), generator=g)
    xu = (x0 + torch.randint(1, v, (m,), generator=g)) % v if clean else x0.clone()
    yu = n  # the training prompt, outside the Bayes set, close to the probe's
    probes, kernels, logits_u = _first_order_inputs(model, x0, yu, xu)
    g_u = th.g_sft(logits_u, xu)
    cond = th.aligned_dynamics_condition(probes, x0, kernels, g_u)
    assume(cond.holds)
    lr = 1e-4
    dg_pred = th.first_order_delta_prompts(probes, x0, kernels, g_u, lr)
    du_pred = th.prop1_delta_u(probes, x0, kernels, logits_u, xu, lr)
    # first order: the sign is shared, and Delta U is within the proven band around (1 - w_0) Delta G
    assert torch.sign(du_pred) == torch.sign(dg_pred[0]) != 0
    w0 = th.posterior_weights(model.gen_all(x0))[0]
    assert abs(float(du_pred - (1 - w0) * dg_pred[0])) <= (1 - w0) * abs(float(dg_pred[0])) - lr * cond.margin + 1e-15
    # one measured SGD step: the prediction holds to O(eta^2) and the signs agree
    before = model.gen_all(x0)
    dg = model.gen_all(x0, _sft_step(model, yu, xu, lr)) - before
    du = th.bayes_delta_u(dg, before)
    assert abs(float(dg[0] - dg_pred[0])) <= 0.05 * abs(float(dg_pred[0]))
    assert torch.sign(du) == torch.sign(dg[0]) != 0


def test_aligned_condition_is_needed():
    """Outside the condition (the training prompt resembles a competing prompt), the signs can split."""
    found = 0
    for seed in range(12):
        model = random_two_branch(seed, prompts=3, vocab=4, length=1, feat=16, head_scale=0.3, bias_scale=0.2)
        # train on prompt 1 (a competitor), probe prompt 0
        x0 = torch.tensor([seed % 4])
        xu = torch.tensor([(seed + 1) % 4])
        probes, kernels, logits_u = _first_order_inputs(model, x0, 1, xu)
        cond = th.aligned_dynamics_condition(probes, x0, kernels, th.g_sft(logits_u, xu))
        before = model.gen_all(x0)
        dg = model.gen_all(x0, _sft_step(model, 1, xu, 1e-4)) - before
        du = th.bayes_delta_u(dg, before)
        if torch.sign(du) != torch.sign(dg[0]):
            assert not cond.holds
            found += 1
    assert found >= 1


# ---------------------------------------------------------------------------------------------
# 7. Co-improvement and co-degradation
# ---------------------------------------------------------------------------------------------


def _single_token_inputs(model: TwoBranch, x0: int, yu: int, xu: int):
    t0, tu = torch.tensor([x0]), torch.tensor([xu])
    probes = torch.stack([model.logits(i, t0)[0] for i in range(model.prompts)])  # (N, V)
    kernels = model.probe_kernels(t0, yu, tu)[:, 0, 0]  # (N, V, V)
    return probes, kernels, model.logits(yu, tu)[0]


def _measured(model: TwoBranch, x0: int, yu: int, xu: int, lr: float):
    t0, tu = torch.tensor([x0]), torch.tensor([xu])
    before = model.gen_all(t0)
    dg = model.gen_all(t0, _sft_step(model, yu, tu, lr)) - before
    return dg[0], th.bayes_delta_u(dg, before)


@THEORY
@given(st.integers(0, 2**31 - 1), st.integers(2, 4), st.integers(3, 6), st.floats(0.9, 0.99), st.booleans())
def test_co_improvement_and_co_degradation(seed, n, v, closeness, bad_positive):
    model = _aligned_model(seed, n, v, 1, closeness)
    g = torch.Generator().manual_seed(seed)
    x0 = int(torch.randint(0, v, (), generator=g))  # the probe's (misaligned) image for y0
    xu = x0 if bad_positive else (x0 + int(torch.randint(1, v, (), generator=g))) % v
    probes, kernels, logits_u = _single_token_inputs(model, x0, n, xu)
    check = th.co_degradation_condition if bad_positive else th.co_improvement_condition
    cond = check(probes, x0, kernels, logits_u, xu)
    assume(cond.holds)
    dg, du = _measured(model, x0, n, xu, 1e-4)
    pred = th.prop1_delta_g(probes[0], x0, kernels[0], logits_u, xu, 1e-4)
    assert abs(float(dg - pred)) <= 0.05 * abs(float(pred))
    if bad_positive:  # co-degradation: a misaligned positive raises the misaligned probe in both branches
        assert dg > 0 and du > 0
    else:  # co-improvement: a clean target lowers the false positive in both branches
        assert dg < 0 and du < 0


@THEORY
@given(st.integers(3, 6).flatmap(lambda v: st.tuples(
    logits_arrays((2, v)), logits_arrays((v,)), st.integers(0, v - 1), st.integers(0, v - 1),
    logits_arrays((v, v)), st.floats(0.0, 1.5), st.floats(0.1, 2.0))))
def test_isotropic_decomposition_bound_is_sufficient(case):
    """The generation part ``kappa s - ||E|| ||a_0|| ||G|| > 0`` forces ``Delta G < 0`` for any kernel."""
    probes, logits_u, x0, xu, noise, aniso, kappa = case
    kernel = kappa * torch.eye(probes.shape[-1], dtype=DTYPE) + aniso * noise / 6.0
    kernels = torch.stack([kernel, kernel])
    pred = float(th.prop1_delta_g(probes[0], torch.tensor(x0), kernel, logits_u, torch.tensor(xu), 1.0))
    up = th.co_improvement_condition(probes, x0, kernels, logits_u, xu).parts["generation"]
    down = th.co_degradation_condition(probes, x0, kernels, logits_u, xu).parts["generation"]
    assert not (up > 0 and down > 0)
    if up > 0:
        assert pred < 0 and -pred >= up - 1e-12  # the margin is a lower bound on |Delta G| / eta
    if down > 0:
        assert pred > 0 and pred >= down - 1e-12


def _squeeze_model(t: float) -> TwoBranch:
    """Head-only update of a linear model with orthonormal prompt features: ``K(Y_i, Y0) = delta_i0 I``.

    Prompt 0 puts mass ``t`` on a third token and ``(1 - t) / 2`` on each of x0 = 0 and xu = 1.
    """
    v, n = 3, 3
    pi0 = torch.tensor([(1 - t) / 2, (1 - t) / 2, t], dtype=DTYPE)
    head = torch.zeros(v, n, dtype=DTYPE)
    head[:, 0] = pi0.log()
    head[:, 1] = torch.tensor([0.3, -0.2, 0.1], dtype=DTYPE)
    head[:, 2] = torch.tensor([-0.5, 0.4, 0.2], dtype=DTYPE)
    params = {"T": torch.eye(n, dtype=DTYPE), "E": torch.zeros(v + 1, n, dtype=DTYPE),
              "P": torch.zeros(1, n, dtype=DTYPE), "H": head}
    return TwoBranch(params=params, features=torch.eye(n, dtype=DTYPE), vocab=v, length=1, bayes_prompts=n,
                     activation="identity", trainable=("H",))


def test_squeezing_boundary_flips_both_signs():
    """Clean SFT target on the probe's own prompt: co-improvement holds iff s > 0; mass t on a third
    token makes s = (1 - t^2)/2 - t^2, which crosses zero at t* = 1/sqrt(3) (the sympy derivation)."""
    from dynamics.theory.symbolic import squeezing_boundary

    t_star = float(squeezing_boundary())
    assert abs(t_star - 1 / math.sqrt(3)) < 1e-12
    for t, inside in [(t_star - 0.03, True), (t_star + 0.03, False)]:
        model = _squeeze_model(t)
        probes, kernels, logits_u = _single_token_inputs(model, 0, 0, 1)
        torch.testing.assert_close(kernels[0], torch.eye(3, dtype=DTYPE), atol=1e-12, rtol=0)
        s = float(th.squeezing_term(probes[0], 0, logits_u, 1))
        cond = th.co_improvement_condition(probes, 0, kernels, logits_u, 1)
        assert cond.holds is inside and (s > 0) is inside
        dg, du = _measured(model, 0, 0, 1, 1e-3)
        if inside:
            assert dg < 0 and du < 0
        else:  # just outside: the squeezing effect flips both signs although the target is clean
            assert dg > 0 and du > 0
            assert th.co_degradation_condition(probes, 0, kernels, logits_u, 1).holds


@THEORY
@given(st.integers(3, 7).flatmap(lambda v: st.tuples(logits_arrays((v,)), logits_arrays((v,)),
                                                     st.integers(0, v - 1))))
def test_bad_positive_squeezing_term_is_never_positive(case):
    """A bad positive copying the probe's token (xu = x0) has s = -(e - pi0).(e - pi^u) <= 0."""
    z0, zu, x = case
    assert float(th.squeezing_term(z0, x, zu, x)) <= 1e-15


# ---------------------------------------------------------------------------------------------
# The generic prediction, Proposition 1 and Lemmas 3-4 on the two-branch model (one step)
# ---------------------------------------------------------------------------------------------


@THEORY_SLOW
@given(dynamics_cases(max_length=2), step_sizes)
def test_prop1_and_lemmas_match_one_sgd_step(case, lr):
    model, x0, yu, xu = case.model, case.x0, case.yu, case.xu
    probes, kernels, logits_u = _first_order_inputs(model, x0, yu, xu)
    before = model.gen_all(x0)
    dg = model.gen_all(x0, _sft_step(model, yu, xu, lr)) - before
    pred = th.prop1_delta_g(probes[0], x0, kernels[0], logits_u, xu, lr)
    assert abs(float(dg[0] - pred)) <= 50 * lr**2
    # DPO (Lemmas 3-4): chosen xu, rejected x0, both for prompt yu
    beta, ref = 0.5, torch.tensor(0.3, dtype=DTYPE)

    def dpo(p):
        lc = sequence_logprob(model.logits_fn(p, torch.tensor(yu), xu), xu)
        lr_ = sequence_logprob(model.logits_fn(p, torch.tensor(yu), x0), x0)
        return dpo_loss(lc, lr_, ref, 0.0, beta=beta)

    after = model.sgd_step(dpo, lr)
    dg = model.gen_all(x0, after) - before
    du = th.bayes_delta_u(dg, before)
    h = model.logprob(yu, xu) - ref - model.logprob(yu, x0)
    k_minus = model.probe_kernels(x0, yu, x0)
    args = (kernels, k_minus, logits_u, xu, model.logits(yu, x0), x0, h, lr)
    pred_g = th.lemma_dpo_delta_g(probes[0], x0, kernels[0], k_minus[0], *args[2:], beta=beta)
    pred_u = th.lemma_dpo_delta_u(probes, x0, *args, beta=beta)
    assert abs(float(dg[0] - pred_g)) <= 50 * lr**2
    assert abs(float(du - pred_u)) <= 50 * lr**2

"""Property 4 of the theory: one step of plain SGD is ``-eta A K G`` up to O(eta^2) (float64).

For a two-branch model (shared tanh trunk, generation head over image tokens, understanding head
over answer tokens; see ``strategies.Model``), one plain-SGD step of size ``eta`` on a generation
objective (SFT, or DPO in its sigmoid, IPO and robust forms) changes the log-probabilities of a
probe (a generation probe or an understanding probe) by

    Delta log pi(o) = -eta A(o) sum_u K(o, u) G(u) + O(eta^2).

The test measures the change of the whole vector ``log pi(. | o)`` (every position, every token),
subtracts the prediction built from :mod:`dynamics.kernels` (the exact eNTK) and
:mod:`dynamics.theory` (A, G, the kernel contraction), and fits the log-log slope of the residual
over ``eta = base * 2^-k``, ``k = 4..9``: halving ``eta`` must divide the residual by about 4, so the
slope is 2 +- 0.2. Single-token (M = 1) and multi-position (M > 1, teacher-forced, every position
depending on the shared parameters) cases are covered. Run with ``-s`` to see the fitted slopes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import THEORY, make_inputs, make_model

import dynamics.theory as th
from dynamics.kernels import entk, sgd_step

torch.set_num_threads(1)
DT = torch.float64
EXPONENTS = np.arange(4, 10)  # eta = base * 2^-k
EPS_ROBUST = 0.1
ONE_STEP = settings(THEORY, max_examples=6)

OBJECTIVES = ["sft", "dpo-sigmoid", "dpo-ipo", "dpo-robust"]


def dpo_loss_of_margin(h: torch.Tensor, beta: float, variant: str) -> torch.Tensor:
    """The per-pair loss L(h), written out from the papers (independently of dynamics.losses)."""
    logsig = torch.nn.functional.logsigmoid
    if variant == "sigmoid":  # Rafailov et al. 2023
        return -logsig(beta * h)
    if variant == "ipo":  # Azar et al. 2024
        return (h - 1.0 / (2.0 * beta)) ** 2
    if variant == "robust":  # Chowdhury et al. 2024
        return (-(1 - EPS_ROBUST) * logsig(beta * h) + EPS_ROBUST * logsig(-beta * h)) / (1 - 2 * EPS_ROBUST)
    raise ValueError(variant)


def fit_slope(etas: np.ndarray, residuals: np.ndarray) -> float:
    return float(np.polyfit(np.log(etas), np.log(residuals), 1)[0])


def seq_logprob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1).sum(-1)


def one_step_case(seed: int, objective: str, probe: str, m: int, *, n_train: int, beta: float):
    """Everything one slope needs: the loss, the probe, and the theory's first-order prediction."""
    model = make_model(seed, d=3, v_gen=4, v_und=3, m=m, m_und=m)
    single = m == 1
    gen = model.gen1 if single else model.gen  # M = 1: bare (V,) logits, bare (V, V) kernels
    und = (lambda p, x: model.und(p, x)[0]) if single else model.und
    vgen = torch.func.vmap(model.gen, in_dims=(None, 0))

    g = torch.Generator().manual_seed(seed + 7)
    if probe == "gen":
        xs_o = make_inputs(seed + 3, model, 1)
        fn_o, target_o = gen, xs_o[1][0]
    else:
        xs_o = make_inputs(seed + 3, model, 1)
        fn_o, target_o = und, torch.randint(0, model.v_und, (m,), generator=g)
    x_o = (xs_o[0][0], xs_o[1][0])
    if single:
        target_o = target_o[0]

    def probe_logprobs(p):  # log pi(. | o): (M_o, V_o), or (V_o,) for M = 1
        return torch.log_softmax(fn_o(p, x_o), -1)

    params = model.params
    z_o = fn_o(params, x_o)
    if objective == "sft":
        xs_u = make_inputs(seed + 5, model, n_train)

        def loss(p):
            return -seq_logprob(vgen(p, xs_u), xs_u[1]).sum()

        logits_u = vgen(params, xs_u)  # (B, M, V)
        gs = th.g_sft(logits_u, xs_u[1])
        k = entk(fn_o, gen, params, xs_o, xs_u)[0]  # (B, [M_o, M,] V_o, V)
        kernels = [k[b] for b in range(n_train)]
        grads = [gs[b, 0] if single else gs[b] for b in range(n_train)]
    else:
        variant = objective.split("-")[1]
        prompts = make_inputs(seed + 5, model, n_train)[0]
        tok_c = torch.randint(0, model.v_gen, (n_train, m), generator=g)
        tok_r = (tok_c + torch.randint(1, model.v_gen, (n_train, m), generator=g)) % model.v_gen
        xs_c, xs_r = (prompts, tok_c), (prompts, tok_r)
        ref_c = -torch.rand(n_train, generator=g, dtype=DT) * 2 * m
        ref_r = -torch.rand(n_train, generator=g, dtype=DT) * 2 * m

        def margin(p):
            return (seq_logprob(vgen(p, xs_c), tok_c) - ref_c) - (seq_logprob(vgen(p, xs_r), tok_r) - ref_r)

        def loss(p):
            return dpo_loss_of_margin(margin(p), beta, variant).sum()

        g_plus, g_minus = th.g_dpo(
            vgen(params, xs_c),
            tok_c,
            vgen(params, xs_r),
            tok_r,
            margin(params),
            beta=beta,
            variant=variant,
            eps=EPS_ROBUST,
        )  # (B, M, V) each
        k_c = entk(fn_o, gen, params, xs_o, xs_c)[0]
        k_r = entk(fn_o, gen, params, xs_o, xs_r)[0]
        kernels = [k_c[b] for b in range(n_train)] + [k_r[b] for b in range(n_train)]
        grads = [gg[b, 0] if single else gg[b] for gg in (g_plus, g_minus) for b in range(n_train)]

    def predict(lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dz = th.predicted_delta_logits(kernels, grads, lr)  # -eta sum_u K(o, u) G(u)
        a = th.a_matrix(z_o)
        vector = torch.einsum("...vw,...w->...v", a, dz)  # A(o) applied position by position
        return vector, th.first_order_delta(z_o, target_o, kernels, grads, lr), dz

    return params, loss, probe_logprobs, target_o, predict


def residual_slope(seed, objective, probe, m, *, n_train=2, beta=1.0, scale=1.0):
    params, loss, probe_logprobs, target_o, predict = one_step_case(
        seed, objective, probe, m, n_train=n_train, beta=beta
    )
    # base step: one unit of parameter movement, so the etas probe the same regime for every draw
    grad_norm = math.sqrt(sum(float((v**2).sum()) for v in torch.func.grad(loss)(params).values()))
    assert grad_norm > 1e-8, "degenerate draw: the training gradient vanishes"
    base = scale / grad_norm
    etas = base * 2.0**-EXPONENTS
    before = probe_logprobs(params)
    residuals = []
    for eta in etas:
        measured = probe_logprobs(sgd_step(params, loss, float(eta))) - before
        vector, scalar, _ = predict(float(eta))
        # the scalar prediction at the probe's own tokens is the vector prediction read there
        at_target = (
            vector.gather(-1, target_o.reshape(-1, 1)).sum() if vector.dim() == 2 else vector[target_o]
        )
        torch.testing.assert_close(scalar, at_target, atol=1e-15, rtol=1e-10)
        residuals.append((measured - vector).abs().max().item())
    residuals = np.array(residuals)
    assert residuals.min() > 1e-12, f"residuals {residuals} too close to rounding to fit a slope"
    return fit_slope(etas, residuals), residuals


@pytest.mark.parametrize("m", [1, 3], ids=["M1", "M3"])
@pytest.mark.parametrize("probe", ["gen", "und"])
@pytest.mark.parametrize("objective", OBJECTIVES)
@ONE_STEP
@given(
    seed=st.integers(0, 2**31 - 1),
    n_train=st.integers(1, 2),
    beta=st.sampled_from([0.5, 1.0, 2.0]),
    scale=st.sampled_from([0.5, 1.0]),
)
def test_one_sgd_step_residual_is_second_order(objective, probe, m, seed, n_train, beta, scale):
    slope, residuals = residual_slope(seed, objective, probe, m, n_train=n_train, beta=beta, scale=scale)
    print(f"slope objective={objective} probe={probe} M={m} seed={seed}: {slope:.3f}")
    assert abs(slope - 2.0) <= 0.2, f"log-log slope {slope:.3f}, residuals {residuals}"


def test_first_order_prediction_is_not_trivially_small():
    """The prediction carries the change: the residual is far below the measured change itself."""
    params, loss, probe_logprobs, _, predict = one_step_case(3, "sft", "und", 3, n_train=2, beta=1.0)
    eta = 1e-3
    measured = probe_logprobs(sgd_step(params, loss, eta)) - probe_logprobs(params)
    vector, _, _ = predict(eta)
    assert measured.abs().max() > 1e-5
    assert (measured - vector).abs().max() < 1e-2 * measured.abs().max()


def test_slope_test_fails_for_a_wrong_prediction():
    """Without A (reading Delta log pi as the logits' change Delta z) the residual is O(eta): slope 1."""
    params, loss, probe_logprobs, _, predict = one_step_case(5, "sft", "gen", 3, n_train=1, beta=1.0)
    before = probe_logprobs(params)
    grad_norm = math.sqrt(sum(float((v**2).sum()) for v in torch.func.grad(loss)(params).values()))
    etas = 2.0**-EXPONENTS / grad_norm
    residuals = []
    for eta in etas:
        _, _, dz = predict(float(eta))
        residuals.append(
            ((probe_logprobs(sgd_step(params, loss, float(eta))) - before) - dz).abs().max().item()
        )
    assert abs(fit_slope(etas, np.array(residuals)) - 1.0) < 0.2

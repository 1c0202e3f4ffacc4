"""Tests of :mod:`dynamics.kernels`, including property 3 of the theory (float64).

Property 3 (the empirical NTK):
- the three implementations (Jacobian contraction, vjp/jvp products, per-logit backward loop) agree;
- ``K(a, b) = K(b, a)^T``;
- the stacked Gram matrix over all (example, position, logit) rows is positive semi-definite;
- a bias-free linear softmax head ``z = W h`` has ``K(o, u) = <h_o, h_u> I``;
- a generation-only update leaves the understanding logits unchanged when the two branches share
  no parameter (the cross-branch kernel block is zero and a real SGD step confirms it), and moves
  them when they share a trunk.

The model: a shared tanh trunk over prompt features, previous-token embeddings (teacher forcing)
and position embeddings; a generation head over ``V_g`` image tokens at ``M`` positions; an
understanding head over ``V_u`` answer tokens at ``M_u`` positions that reads the mean embedding
of the image tokens. With ``shared=False`` understanding has its own trunk.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import DT, THEORY, Model, make_inputs, make_model

from dynamics.kernels import (
    Implementation,
    entk,
    entk_blocks,
    entk_fn,
    first_order_probe,
    grad_inner_product,
    kernel_matrix,
    param_blocks,
    select_params,
    sgd_step,
)

torch.set_num_threads(1)
IMPLS = [i.value for i in Implementation]
KERNEL = THEORY  # shared settings: deterministic draws, no deadline


@st.composite
def cases(draw, shared=True):
    seed = draw(st.integers(0, 2**31 - 1))
    model = make_model(
        seed,
        d=draw(st.integers(2, 4)),
        v_gen=draw(st.integers(2, 4)),
        v_und=draw(st.integers(2, 3)),
        m=draw(st.integers(1, 3)),
        m_und=draw(st.integers(1, 2)),
        shared=shared,
    )
    xs_a = make_inputs(seed + 1, model, draw(st.integers(1, 3)))
    xs_b = make_inputs(seed + 2, model, draw(st.integers(1, 3)))
    return model, xs_a, xs_b


def branch_fns(model: Model) -> dict:
    return {"gen": model.gen, "und": model.und, "gen1": model.gen1}


def out_ndim(name: str) -> int:
    return 1 if name == "gen1" else 2


def sft_loss(model: Model, xs) -> callable:
    """Summed generation NLL of the image tokens ``xs[1]`` (targets = the teacher-forced tokens)."""

    def loss(p):
        logits = torch.func.vmap(model.gen, in_dims=(None, 0))(p, xs)
        return -torch.log_softmax(logits, -1).gather(-1, xs[1][..., None]).sum()

    return loss


# ---------------------------------------------------------------------------------------------
# property 3
# ---------------------------------------------------------------------------------------------


@KERNEL
@given(
    cases(),
    st.sampled_from([("gen", "gen"), ("gen", "und"), ("und", "gen"), ("gen1", "und"), ("gen1", "gen1")]),
    st.sampled_from(["all", "shared", "gen", "und"]),
)
def test_implementations_agree(case, pair, block):
    model, xs_a, xs_b = case
    fns = branch_fns(model)
    blocks = (
        None if block == "all" else param_blocks(model.params, shared="trunk", gen="gen", und="und")[block]
    )
    ks = {
        impl: entk(fns[pair[0]], fns[pair[1]], model.params, xs_a, xs_b, blocks=blocks, implementation=impl)
        for impl in IMPLS
    }
    ks["vjp_jvp/chunk2"] = entk(
        fns[pair[0]],
        fns[pair[1]],
        model.params,
        xs_a,
        xs_b,
        blocks=blocks,
        implementation="vjp_jvp",
        chunk_size=2,
    )
    ref = ks["loop"]
    lead_a = () if pair[0] == "gen1" else (model.m if pair[0] == "gen" else model.m_und,)
    lead_b = () if pair[1] == "gen1" else (model.m if pair[1] == "gen" else model.m_und,)
    v = {"gen": model.v_gen, "gen1": model.v_gen, "und": model.v_und}
    assert ref.shape == (len(xs_a[0]), len(xs_b[0]), *lead_a, *lead_b, v[pair[0]], v[pair[1]])
    for name, k in ks.items():
        assert k.shape == ref.shape, name
        torch.testing.assert_close(k, ref, atol=1e-10, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    assert ref.abs().max() > 0 or block in (
        "gen",
        "und",
    )  # a non-trivial kernel unless a head block misses a side


@KERNEL
@given(
    cases(),
    st.sampled_from(["gen", "und", "gen1"]),
    st.sampled_from(["gen", "und", "gen1"]),
    st.sampled_from(IMPLS),
)
def test_kernel_transpose_symmetry(case, a, b, impl):
    """``K(a, b) = K(b, a)^T`` as matrices over (example, position, logit) rows."""
    model, xs_a, xs_b = case
    fns = branch_fns(model)
    k_ab = entk(fns[a], fns[b], model.params, xs_a, xs_b, implementation=impl)
    k_ba = entk(fns[b], fns[a], model.params, xs_b, xs_a, implementation=impl)
    torch.testing.assert_close(
        kernel_matrix(k_ab, out_ndim(a)), kernel_matrix(k_ba, out_ndim(b)).T, atol=1e-12, rtol=1e-12
    )


@KERNEL
@given(cases(), st.sampled_from(["all", "shared", "gen"]), st.sampled_from(["jacobian", "vjp_jvp"]))
def test_stacked_gram_is_psd(case, block, impl):
    """The Gram matrix of every (example, position, logit) gradient of both branches is PSD."""
    model, xs_a, xs_b = case
    blocks = (
        None if block == "all" else param_blocks(model.params, shared="trunk", gen="gen", und="und")[block]
    )
    sides = [(model.gen, xs_a), (model.und, xs_b)]
    rows = []
    for fa, xa in sides:
        rows.append(
            torch.cat(
                [
                    kernel_matrix(entk(fa, fb, model.params, xa, xb, blocks=blocks, implementation=impl), 2)
                    for fb, xb in sides
                ],
                dim=1,
            )
        )
    gram = torch.cat(rows, dim=0)
    torch.testing.assert_close(gram, gram.T, atol=1e-12, rtol=1e-12)
    eig = torch.linalg.eigvalsh(gram)
    scale = max(1.0, eig.abs().max().item())
    assert eig.min().item() >= -1e-10 * scale, f"min eigenvalue {eig.min().item():.3e} (scale {scale:.3e})"


@KERNEL
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(2, 5),
    st.integers(1, 5),
    st.sampled_from(IMPLS),
)
def test_bias_free_linear_head_kernel_is_inner_product_times_identity(seed, n_a, n_b, v, d, impl):
    g = torch.Generator().manual_seed(seed)
    params = {"W": torch.randn(v, d, generator=g, dtype=DT)}
    h_a = torch.randn(n_a, d, generator=g, dtype=DT)
    h_b = torch.randn(n_b, d, generator=g, dtype=DT)
    k = entk(lambda p, h: p["W"] @ h, None, params, h_a, h_b, implementation=impl)
    expected = (h_a @ h_b.T)[:, :, None, None] * torch.eye(v, dtype=DT)
    assert k.shape == (n_a, n_b, v, v)
    torch.testing.assert_close(k, expected, atol=1e-12, rtol=1e-12)


@KERNEL
@given(cases(), st.sampled_from(IMPLS))
def test_head_block_of_two_branch_model_is_feature_inner_product(case, impl):
    """The generation head's weight block: ``K_{m,r}(o, u) = <h_{o,m}, h_{u,r}> I`` (trunk features h)."""
    model, xs_a, xs_b = case
    k = entk(model.gen, None, model.params, xs_a, xs_b, blocks=["gen.w"], implementation=impl)
    h_a = torch.func.vmap(model.gen_features, in_dims=(None, 0))(model.params, xs_a)  # (N_a, M, d)
    h_b = torch.func.vmap(model.gen_features, in_dims=(None, 0))(model.params, xs_b)
    inner = torch.einsum("imd,jrd->ijmr", h_a, h_b)
    torch.testing.assert_close(
        k, inner[..., None, None] * torch.eye(model.v_gen, dtype=DT), atol=1e-12, rtol=1e-12
    )


@KERNEL
@given(cases(shared=False), st.sampled_from(IMPLS), st.floats(0.01, 0.5))
def test_disjoint_branches_generation_update_leaves_understanding_unchanged(case, impl, lr):
    model, xs_gen, xs_und = case
    k = entk(model.und, model.gen, model.params, xs_und, xs_gen, implementation=impl)
    assert torch.count_nonzero(k) == 0
    before_und = torch.func.vmap(model.und, in_dims=(None, 0))(model.params, xs_und)
    before_gen = torch.func.vmap(model.gen, in_dims=(None, 0))(model.params, xs_gen)
    new = sgd_step(model.params, sft_loss(model, xs_gen), lr)  # every parameter is free to move
    after_und = torch.func.vmap(model.und, in_dims=(None, 0))(new, xs_und)
    after_gen = torch.func.vmap(model.gen, in_dims=(None, 0))(new, xs_gen)
    assert torch.equal(after_und, before_und)
    assert (after_gen - before_gen).abs().max() > 1e-8  # the step did something


@KERNEL
@given(cases(shared=True), st.sampled_from(IMPLS))
def test_shared_trunk_generation_update_moves_understanding(case, impl):
    model, xs_gen, xs_und = case
    k = entk(model.und, model.gen, model.params, xs_und, xs_gen, implementation=impl)
    k_shared = entk(
        model.und,
        model.gen,
        model.params,
        xs_und,
        xs_gen,
        blocks=model.trunk_names("gen"),
        implementation=impl,
    )
    assert k.abs().max() > 1e-6
    torch.testing.assert_close(k, k_shared, atol=1e-12, rtol=0)  # only the shared trunk couples the branches
    lr = 1e-3
    new = sgd_step(
        model.params, sft_loss(model, xs_gen), lr, blocks=model.trunk_names("gen") + ["gen.w", "gen.b"]
    )
    und = torch.func.vmap(model.und, in_dims=(None, 0))
    moved = und(new, xs_und) - und(model.params, xs_und)
    # first order: Delta z(und) = -lr sum_u K(und, u) G(u), with G = pi - e_x for the summed NLL
    logits_gen = torch.func.vmap(model.gen, in_dims=(None, 0))(model.params, xs_gen)
    g_sft = torch.softmax(logits_gen, -1) - torch.nn.functional.one_hot(xs_gen[1], model.v_gen).to(DT)
    predicted = -lr * torch.einsum("ijmrvw,jrw->imv", k, g_sft)
    assert moved.abs().max() > 0.1 * predicted.abs().max() > 0
    torch.testing.assert_close(moved, predicted, atol=50 * lr**2 * (1 + k.abs().max().item()) ** 2, rtol=0)


# ---------------------------------------------------------------------------------------------
# the rest of the API
# ---------------------------------------------------------------------------------------------


def test_kernel_shape_for_single_token_outputs_is_exact():
    model = make_model(0, m=1)
    xs = make_inputs(1, model, 3)
    und1 = lambda p, x: model.und(p, x)[0]
    k = entk(model.gen1, und1, model.params, xs, make_inputs(2, model, 2))
    assert k.shape == (3, 2, model.v_gen, model.v_und)


def test_entk_fn_blocks_and_pytree_batches():
    model = make_model(3, m=2, m_und=2)
    xs_a, xs_b = make_inputs(4, model, 2), make_inputs(5, model, 3)
    ntk = entk_fn(model.gen, model.und, implementation="vjp_jvp")
    k = ntk(model.params, xs_a, xs_b)
    torch.testing.assert_close(k, entk(model.gen, model.und, model.params, xs_a, xs_b), atol=1e-12, rtol=0)
    groups = param_blocks(model.params, shared="trunk", gen="gen", und="und")
    ks = entk_blocks(model.gen, model.und, model.params, xs_a, xs_b, blocks=groups)
    torch.testing.assert_close(ks["all"], k, atol=1e-12, rtol=0)
    assert torch.count_nonzero(ks["gen"]) == 0 and torch.count_nonzero(ks["und"]) == 0
    # a dict batch gives the same kernel as the tuple batch
    as_dict = lambda f: lambda p, x: f(p, (x["f"], x["t"]))
    k_dict = entk(
        as_dict(model.gen),
        as_dict(model.und),
        model.params,
        {"f": xs_a[0], "t": xs_a[1]},
        {"f": xs_b[0], "t": xs_b[1]},
    )
    torch.testing.assert_close(k_dict, k, atol=1e-12, rtol=0)
    # a predicate selects like the list of names
    k_pred = entk(model.gen, model.und, model.params, xs_a, xs_b, blocks=lambda n: n.startswith("trunk."))
    torch.testing.assert_close(k_pred, ks["shared"], atol=0, rtol=0)
    # a Gram matrix with fn_b = None, xs_b = None reuses side a
    torch.testing.assert_close(
        entk(model.gen, None, model.params, xs_a), entk(model.gen, model.gen, model.params, xs_a, tuple(xs_a))
    )


def test_kernel_has_no_graph_even_if_parameters_require_grad():
    model = make_model(1)
    params = {n: v.clone().requires_grad_(True) for n, v in model.params.items()}
    xs = make_inputs(2, model, 2)
    for impl in IMPLS:
        k = entk(model.gen, model.und, params, xs, xs, implementation=impl)
        assert not k.requires_grad
    with torch.no_grad():  # the loop reference works under no_grad too
        k_loop = entk(model.gen, model.und, params, xs, xs, implementation="loop")
    torch.testing.assert_close(k_loop, k, atol=1e-10, rtol=0)


def test_bad_inputs_raise_clear_errors():
    model = make_model(0)
    xs = make_inputs(1, model, 2)
    with pytest.raises(ValueError, match="unknown parameters.*'nope'"):
        entk(model.gen, None, model.params, xs, blocks=["trunk.w", "nope"])
    with pytest.raises(ValueError, match="selects no parameter"):
        entk(model.gen, None, model.params, xs, blocks=lambda n: False)
    with pytest.raises(ValueError, match="scalar per example"):
        entk(lambda p, x: model.gen(p, x).sum(), None, model.params, xs)
    with pytest.raises(ValueError, match="batch size"):
        entk(model.gen, None, model.params, (xs[0], xs[1][:1]))
    with pytest.raises(ValueError, match="empty batch"):
        entk(model.gen, None, model.params, (xs[0][:0], xs[1][:0]))
    with pytest.raises(ValueError, match="implementation 'fast'"):
        entk(model.gen, None, model.params, xs, implementation="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        entk(model.gen, None, model.params, xs, implementation="vjp_jvp", chunk_size=0)
    with pytest.raises(ValueError, match="mix dtypes"):
        select_params({"a": torch.zeros(2), "b": torch.zeros(2, dtype=DT)})
    with pytest.raises(ValueError, match="not floating"):
        select_params({"a": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match="several groups"):
        param_blocks(model.params, a="trunk", b=("trunk.w",))
    with pytest.raises(ValueError, match="match no parameter"):
        param_blocks(model.params, shared="trunk", head="nohead")
    with pytest.raises(ValueError, match="out_ndim_a"):
        kernel_matrix(torch.zeros(2, 2, 3, 3), out_ndim_a=2)
    with pytest.raises(ValueError, match="f_u must return a scalar"):
        grad_inner_product(lambda p: p["gen.w"].sum(), lambda p: p["gen.w"].sum(0), model.params)


def test_param_blocks_prefix_matching_and_rest():
    names = ["trunk.w", "trunk2.w", "gen.w", "gen"]
    assert param_blocks(names, shared="trunk", gen="gen") == {
        "shared": ["trunk.w"],
        "gen": ["gen.w", "gen"],
        "rest": ["trunk2.w"],
    }


def test_kernel_matrix_round_trip_for_sequences():
    model = make_model(7, m=3, m_und=2)
    xs_a, xs_b = make_inputs(8, model, 2), make_inputs(9, model, 3)
    k = entk(model.gen, model.und, model.params, xs_a, xs_b)  # (2, 3, M, M_u, V_g, V_u)
    mat = kernel_matrix(k, out_ndim_a=2)
    assert mat.shape == (2 * model.m * model.v_gen, 3 * model.m_und * model.v_und)
    i, m, v, j, r, w = 1, 2, 1, 2, 1, 0
    row = (i * model.m + m) * model.v_gen + v
    col = (j * model.m_und + r) * model.v_und + w
    assert mat[row, col] == k[i, j, m, r, v, w]


# ---------------------------------------------------------------------------------------------
# first-order probes and plain SGD
# ---------------------------------------------------------------------------------------------


def _logprob(fn, target):
    return lambda p, x: torch.log_softmax(fn(p, x), -1).gather(-1, target[..., None]).sum()


@pytest.mark.parametrize("probe", ["gen", "und"])
def test_grad_inner_product_equals_kernel_form_module_form_and_a_real_step(probe):
    model = make_model(11, m=2, m_und=2)
    xs_u = make_inputs(12, model, 1)
    x_u = (xs_u[0][0], xs_u[1][0])
    xs_o = make_inputs(13, model, 1)
    x_o = (xs_o[0][0], xs_o[1][0])
    y_o = torch.tensor([1, 0]) if probe == "und" else x_o[1]
    fn_o = model.und if probe == "und" else model.gen
    lp_o = _logprob(fn_o, y_o)
    lp_u = _logprob(model.gen, x_u[1])
    trunk = model.trunk_names("gen")
    eta = 1e-4
    pred = grad_inner_product(
        lambda p: lp_o(p, x_o), lambda p: lp_u(p, x_u), model.params, lr=eta, blocks=trunk
    )
    # the kernel form: eta sum_{k,r} (e_{y_k} - pi_k)^T K_{k,r}(o, u) (e_{x_r} - pi_r)
    k = entk(fn_o, model.gen, model.params, xs_o, xs_u, blocks=trunk)[0, 0]
    z_o, z_u = fn_o(model.params, x_o), model.gen(model.params, x_u)
    a_o = torch.nn.functional.one_hot(y_o, z_o.shape[-1]) - torch.softmax(z_o, -1)
    a_u = torch.nn.functional.one_hot(x_u[1], z_u.shape[-1]) - torch.softmax(z_u, -1)
    torch.testing.assert_close(pred, eta * torch.einsum("kv,krvw,rw->", a_o, k, a_u), atol=1e-14, rtol=1e-10)
    # the module form over a list of parameters
    leaves = {n: v.clone().requires_grad_(n in trunk) for n, v in model.params.items()}
    probe_mod = first_order_probe(
        lambda: lp_o(leaves, x_o), lambda: lp_u(leaves, x_u), [leaves[n] for n in trunk], lr=eta
    )
    torch.testing.assert_close(probe_mod, pred, atol=1e-14, rtol=1e-10)
    # a real SGD step that maximises log pi(u) (loss -log pi(u)) changes log pi(o) by pred + O(eta^2)
    new = sgd_step(model.params, lambda p: -lp_u(p, x_u), eta, blocks=trunk)
    measured = lp_o(new, x_o) - lp_o(model.params, x_o)
    assert abs(measured - pred) < 1e-3 * abs(pred)


def test_first_order_probe_vector_probes_and_errors():
    lin = torch.nn.Linear(3, 4, dtype=DT)
    h = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    lp_o = lambda: torch.log_softmax(lin(h[:3]), -1)[:, 0]
    lp_u = lambda: torch.log_softmax(lin(h[3]), -1)[2]
    out = first_order_probe(lp_o, lp_u, [lin.weight], lr=0.1)
    assert out.shape == (3,) and out.dtype == DT
    for i in range(3):
        one = first_order_probe(lambda i=i: lp_o()[i], lp_u, [lin.weight], lr=0.1)
        torch.testing.assert_close(out[i], one)
    # the bias of an unused module contributes zero; a frozen tensor is refused
    other = torch.nn.Linear(1, 1, dtype=DT)
    torch.testing.assert_close(first_order_probe(lp_o, lp_u, [lin.weight, other.bias], lr=0.1), out)
    with pytest.raises(ValueError, match="does not require grad"):
        first_order_probe(lp_o, lp_u, [torch.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="scalar tensor"):
        first_order_probe(lp_o, lp_o, [lin.weight], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        first_order_probe(lp_o, lp_u, [], lr=0.1)


def test_sgd_step_matches_manual_update_and_freezes_other_blocks():
    model = make_model(5)
    xs = make_inputs(6, model, 2)
    loss = sft_loss(model, xs)
    params = {n: v.clone().requires_grad_(True) for n, v in model.params.items()}
    grads = dict(zip(params, torch.autograd.grad(loss(params), list(params.values()), allow_unused=True)))
    new = sgd_step(model.params, loss, 0.3, blocks=["gen.w", "trunk.w"])
    for n, v in model.params.items():
        if n in ("gen.w", "trunk.w"):
            torch.testing.assert_close(new[n], v - 0.3 * grads[n], atol=1e-14, rtol=0)
        else:
            assert torch.equal(new[n], v)
    with pytest.raises(ValueError, match="scalar"):
        sgd_step(model.params, lambda p: p["gen.w"], 0.1)

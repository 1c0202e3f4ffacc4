"""Tests of the structured eNTK (``implementation="structured"``) and of ``implementation="auto"``.

The structured kernel is assembled from each layer's structure (input Grams times output-cotangent
Grams, index equality for embeddings, direct Jacobians for biases and norm scales); it must agree
with the three Jacobian-based implementations to 1e-10 in float64, on random architectures (MLPs of
depth 1-4 with or without biases, embeddings, norms), on the two-branch model of the theory's tests
and on the toy Llama, with and without ``blocks``.

One exception, by design of transformers' Llama: its RMSNorm computes in float32 inside a float64
model, so forward-mode tangents (``vjp_jvp``) are rounded to float32 there; on the toy Llama the
reverse-mode implementations (loop, jacobian, structured) agree to 1e-10 and ``vjp_jvp`` to 1e-6
relative.
"""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import DT, THEORY, make_inputs, make_model
from torch import nn

from dynamics import _structured
from dynamics.kernels import Implementation, entk, entk_fn, param_blocks, plan_entk

torch.set_num_threads(1)
FEW = settings(THEORY, max_examples=12)
MANY = settings(THEORY, max_examples=24)
REFERENCES = ("loop", "jacobian", "vjp_jvp")


def assert_agree(ks: dict, tol: float = 1e-10) -> None:
    """Every kernel equals the structured one to ``tol`` times the kernel's scale (at least 1)."""
    ref = ks["structured"]
    atol = tol * max(1.0, ref.abs().max().item())
    for name, k in ks.items():
        assert k.shape == ref.shape, name
        torch.testing.assert_close(k, ref, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def kernels(fn_a, fn_b, params, xs_a, xs_b, blocks=None, impls=("structured", "auto", *REFERENCES), **kw):
    return {i: entk(fn_a, fn_b, params, xs_a, xs_b, blocks=blocks, implementation=i, **kw) for i in impls}


def gram_everywhere():
    """Take the Gram contraction wherever it needs fewer multiply-adds, even over several positions
    where the cost model (which prices its small products) prefers the dense one on these tiny
    models: so that the tests exercise every rule."""
    return mock.patch.object(_structured, "GRAM_SEQUENCE_OVERHEAD", 0.0)


def as_fn(module: nn.Module):
    return lambda p, x: torch.func.functional_call(module, p, (x,))


def detached(module: nn.Module) -> dict:
    return {n: v.detach() for n, v in module.named_parameters()}


# ---------------------------------------------------------------------------------------------
# random architectures built from torch modules
# ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    """An MLP over a vector, or over token embeddings (then logits at every position)."""

    def __init__(self, depth, width, d_in, vocab, bias, act, norm, tokens, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.tokens = tokens
        if tokens:
            self.embed = nn.Embedding(d_in, width, padding_idx=0, dtype=DT)
            dims = [width] * (depth + 1)
        else:
            dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(dims[i], dims[i + 1], bias=bias, dtype=DT) for i in range(depth)
        )
        norms = {
            "none": nn.Identity,
            "layer": lambda: nn.LayerNorm(width, dtype=DT),
            "rms": lambda: nn.RMSNorm(width, dtype=DT),
        }
        self.norms = nn.ModuleList(norms[norm]() for _ in range(depth))
        self.act = {"tanh": torch.tanh, "gelu": nn.functional.gelu, "silu": nn.functional.silu}[act]
        self.head = nn.Linear(dims[-1], vocab, bias=bias, dtype=DT)

    def forward(self, x):
        h = self.embed(x) if self.tokens else x
        for layer, norm in zip(self.layers, self.norms):
            h = norm(self.act(layer(h)))
        return self.head(h)


@st.composite
def nets(draw):
    seed = draw(st.integers(0, 2**16))
    tokens = draw(st.booleans())
    net = Net(
        depth=draw(st.integers(1, 4)),
        width=draw(st.integers(2, 5)),
        d_in=draw(st.integers(3, 5)),
        vocab=draw(st.integers(2, 4)),
        bias=draw(st.booleans()),
        act=draw(st.sampled_from(["tanh", "gelu", "silu"])),
        norm=draw(st.sampled_from(["none", "layer", "rms"])),
        tokens=tokens,
        seed=seed,
    )
    g = torch.Generator().manual_seed(seed + 1)
    n_a, n_b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if tokens:
        length = draw(st.integers(1, 3))
        xs_a = torch.randint(0, net.embed.num_embeddings, (n_a, length), generator=g)  # 0 is the padding id
        xs_b = torch.randint(0, net.embed.num_embeddings, (n_b, length), generator=g)
    else:
        xs_a = torch.randn(n_a, net.layers[0].in_features, generator=g, dtype=DT)
        xs_b = torch.randn(n_b, net.layers[0].in_features, generator=g, dtype=DT)
    names = list(detached(net))
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    return net, xs_a, xs_b, chosen


@MANY
@given(nets(), st.booleans())
def test_structured_agrees_on_random_architectures(case, use_blocks):
    net, xs_a, xs_b, chosen = case
    params = detached(net)
    with gram_everywhere():
        ks = kernels(as_fn(net), None, params, xs_a, xs_b, blocks=chosen if use_blocks else None)
    assert_agree(ks)


def test_structured_uses_the_layer_rules():
    """Linear layers (with their biases) and embeddings are contracted as Grams; norm scales and
    biases by their own Jacobians."""
    net = Net(depth=2, width=32, d_in=40, vocab=8, bias=True, act="tanh", norm="layer", tokens=True, seed=0)
    xs = torch.randint(0, 40, (3, 2), generator=torch.Generator().manual_seed(1))
    plan = plan_entk(as_fn(net), None, detached(net), xs, implementation="structured")
    assert plan.modes == {
        "embed.weight": "gram",
        "layers.0.weight": "gram",
        "layers.0.bias": "gram",  # shares the layer's cotangents: one contraction for both
        "layers.1.weight": "gram",
        "layers.1.bias": "gram",
        "norms.0.weight": "dense",
        "norms.0.bias": "dense",
        "norms.1.weight": "dense",
        "norms.1.bias": "dense",
        "head.weight": "gram",
        "head.bias": "gram",
    }
    assert f"auto -> {plan.implementation.value}" in plan.summary()


# ---------------------------------------------------------------------------------------------
# the two-branch model of the theory's tests (sequences, tuple batches, row lookups, two heads)
# ---------------------------------------------------------------------------------------------


@FEW
@given(
    st.integers(0, 2**16),
    st.sampled_from([("gen", "gen"), ("gen", "und"), ("und", "gen1"), ("gen1", "gen1")]),
    st.sampled_from(["all", "shared", "gen"]),
    st.booleans(),
)
def test_structured_agrees_on_two_branch_model(seed, pair, block, shared):
    model = make_model(seed, d=3, v_gen=3, v_und=2, m=2, m_und=2, shared=shared)
    fns = {"gen": model.gen, "und": model.und, "gen1": model.gen1}
    xs_a, xs_b = make_inputs(seed + 1, model, 2), make_inputs(seed + 2, model, 3)
    blocks = (
        None if block == "all" else param_blocks(model.params, shared="trunk", gen="gen", und="und")[block]
    )
    ks = kernels(fns[pair[0]], fns[pair[1]], model.params, xs_a, xs_b, blocks=blocks)
    assert_agree(ks)
    # a Gram matrix (one side) reuses the features of side a
    gram = kernels(
        fns[pair[0]], None, model.params, xs_a, None, blocks=blocks, impls=("structured", "jacobian")
    )
    assert_agree(gram)


# ---------------------------------------------------------------------------------------------
# the toy Llama (transformers' LlamaModel: attention, rotary positions, RMSNorm, SwiGLU)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    from dynamics.toy.model import ToyConfig, ToyModel

    model = ToyModel(ToyConfig.preset("tiny"), seed=0).to(DT)
    trunk = model.trunk
    params = detached(trunk)
    g = torch.Generator().manual_seed(3)
    vocab = trunk.config.vocab_size
    params["head"] = 0.3 * torch.randn(vocab, trunk.config.hidden_size, generator=g, dtype=DT)

    def hidden(p, ids):
        trunk_p = {n: v for n, v in p.items() if n != "head"}
        return torch.func.functional_call(trunk, trunk_p, (), {"input_ids": ids[None]}).last_hidden_state[0]

    fns = {
        "tied_last": lambda p, ids: hidden(p, ids)[-1] @ p["embed_tokens.weight"].T,  # (V,)
        "head_all": lambda p, ids: hidden(p, ids) @ p["head"].T,  # (L, V)
    }
    pad = trunk.config.pad_token_id
    ids = torch.randint(0, vocab - 1, (5, 4), generator=g)
    ids = ids + (ids >= pad).long()  # no padding id ...
    ids[0, 1] = pad  # ... but here: the embedding's padding row gets no gradient
    return params, fns, ids


@pytest.mark.parametrize("fn_name", ["tied_last", "head_all"])
@pytest.mark.parametrize("block", ["all", "attention"])
def test_structured_agrees_on_toy_llama(toy, fn_name, block):
    params, fns, ids = toy
    fn = fns[fn_name]
    if fn_name == "tied_last":
        params = {n: v for n, v in params.items() if n != "head"}
    blocks = (lambda n: "self_attn" in n) if block == "attention" else None
    xs_a, xs_b = ids[:2], ids[2:]
    with gram_everywhere():
        ks = kernels(fn, None, params, xs_a, xs_b, blocks=blocks, impls=("structured", "loop", "jacobian"))
        modes = plan_entk(fn, None, params, xs_a, xs_b, blocks=blocks, implementation="structured").modes
    assert_agree(ks)
    # vjp_jvp: float32 inside RMSNorm rounds its tangents; and forward mode ignores the embedding's
    # padding_idx (reverse mode gives the padding row no gradient), so the padding id goes on side b
    k_vjp = entk(fn, None, params, xs_b, xs_a, blocks=blocks, implementation="vjp_jvp")
    k_str = entk(fn, None, params, xs_b, xs_a, blocks=blocks, implementation="structured")  # default plan
    torch.testing.assert_close(k_vjp, k_str, atol=1e-6 * k_str.abs().max().item(), rtol=0)
    linear = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    if block == "all":
        linear += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert {modes[f"layers.0.{m}.weight"] for m in linear} == {"gram"}
    if block == "all":
        assert modes["layers.0.input_layernorm.weight"] == "dense"
        assert modes["embed_tokens.weight"] == ("dense" if fn_name == "tied_last" else "gram")


# ---------------------------------------------------------------------------------------------
# the rules one by one
# ---------------------------------------------------------------------------------------------


def _rand(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


CASES = {
    # W @ X with X (k, S): the weight's columns take the inputs ("cols" layout), then a matrix-vector head
    "left_matmul": (
        lambda p, x: (p["v"] @ torch.tanh(p["w"] @ x.reshape(3, 2))).T,
        {"w": (4, 3), "v": (2, 4)},
        (6,),
    ),
    # one weight used twice (tied across layers): positions are concatenated
    "tied_layers": (
        lambda p, x: p["h"] @ torch.tanh(p["w"] @ torch.tanh(p["w"] @ x)),
        {"w": (3, 3), "h": (2, 3)},
        (3,),
    ),
    # x @ W (W as (in, out)) and a row lookup with negative indices
    "right_matmul_lookup": (
        lambda p, x: (torch.tanh(x @ p["w"]) + p["e"][torch.tensor([-1, 0])].sum(0)) @ p["h"].T,
        {"w": (3, 4), "e": (5, 4), "h": (2, 4)},
        (3,),
    ),
    # a weight used in an unrecognised way (squared): its own Jacobian or the vjp/jvp fall-back
    "unrecognised": (lambda p, x: (p["w"] ** 2) @ torch.sin(p["u"] @ x), {"w": (6, 3), "u": (3, 2)}, (2,)),
    # a weight used as W on one path and W^T on another: two layouts, its own Jacobian
    "two_layouts": (lambda p, x: p["w"] @ torch.tanh(p["w"].T @ x[:3]) + x[3:] @ p["w"], {"w": (3, 3)}, (6,)),
    # a bias-like vector, an elementwise scale, a 3-d parameter (no rule): direct Jacobians
    "vectors": (
        lambda p, x: torch.einsum("ijk,k->ij", p["t"], torch.tanh(p["s"] * (p["w"] @ x) + p["b"])).sum(1),
        {"w": (3, 2), "s": (3,), "b": (3,), "t": (2, 2, 3)},
        (2,),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("same", [False, True])
def test_structured_rules(name, same):
    fn, shapes, x_shape = CASES[name]
    params = {k: _rand(i, *s) for i, (k, s) in enumerate(shapes.items())}
    xs_a, xs_b = _rand(10, 3, *x_shape), _rand(11, 2, *x_shape)
    with gram_everywhere():
        ks = kernels(fn, None, params, xs_a, None if same else xs_b)
    assert_agree(ks)


def test_plan_modes_of_the_rules():
    def modes(name):
        fn, shapes, x_shape = CASES[name]
        params = {k: _rand(i, *s) for i, (k, s) in enumerate(shapes.items())}
        with gram_everywhere():
            return plan_entk(
                fn, None, params, _rand(10, 3, *x_shape), _rand(11, 2, *x_shape), implementation="structured"
            ).modes

    assert modes("left_matmul") == {"w": "gram", "v": "gram"}
    assert modes("tied_layers") == {"w": "gram", "h": "gram"}
    assert modes("right_matmul_lookup") == {"w": "gram", "e": "gram", "h": "gram"}
    assert modes("unrecognised")["w"] in ("dense", "vjp_jvp") and modes("unrecognised")["u"] == "gram"
    assert modes("two_layouts") == {"w": "dense"}
    assert modes("vectors") == {
        "w": "gram",
        "s": "dense",
        "b": "gram",
        "t": "dense",
    }  # b: a bias after a scale


def test_vjp_jvp_fallback_for_a_large_unrecognised_parameter():
    """A big weight used through an op without a rule costs more by its own Jacobian than by vjp/jvp."""
    params = {"w": _rand(0, 64, 64) / 8, "u": _rand(1, 64, 3)}
    fn = lambda p, x: torch.sin(p["w"]) @ torch.tanh(p["u"] @ x)
    xs_a, xs_b = _rand(2, 4, 3), _rand(3, 3, 3)
    assert plan_entk(fn, None, params, xs_a, xs_b, implementation="structured").modes == {
        "w": "vjp_jvp",
        "u": "gram",
    }
    assert_agree(kernels(fn, None, params, xs_a, xs_b, impls=("structured", "jacobian")))


def test_chunks_and_memory_budget_give_the_same_kernel(monkeypatch):
    model = make_model(4, m=3, m_und=2)
    xs_a, xs_b = make_inputs(5, model, 5), make_inputs(6, model, 4)
    ref = entk(model.gen, model.und, model.params, xs_a, xs_b, implementation="jacobian")
    for chunk in (1, 2, 3):
        k = entk(
            model.gen, model.und, model.params, xs_a, xs_b, implementation="structured", chunk_size=chunk
        )
        torch.testing.assert_close(k, ref, atol=1e-10, rtol=0)
    monkeypatch.setattr(_structured, "FEATURE_BUDGET_BYTES", 1)
    monkeypatch.setattr(_structured, "CONTRACT_BUDGET_BYTES", 1)
    for xs_b_ in (xs_b, None):  # cross kernel and Gram matrix, one example and one row block at a time
        k = entk(
            model.gen,
            None if xs_b_ is None else model.und,
            model.params,
            xs_a,
            xs_b_,
            implementation="structured",
        )
        r = ref if xs_b_ is not None else entk(model.gen, None, model.params, xs_a, implementation="jacobian")
        torch.testing.assert_close(k, r, atol=1e-10, rtol=0)


def test_auto_choices_follow_the_cost_model():
    # many logits, a wide layer: the structured contraction is by far the cheapest
    net = Net(
        depth=1, width=128, d_in=16, vocab=32, bias=False, act="tanh", norm="none", tokens=False, seed=0
    )
    xs = _rand(0, 16, 16)
    plan = plan_entk(as_fn(net), None, detached(net), xs, xs.flip(0))
    assert plan.implementation is Implementation.STRUCTURED
    assert plan.costs["structured"] < plan.costs["vjp_jvp"] < plan.costs["jacobian"]
    # a tiny problem: tracing costs more than it saves, the Jacobian contraction is cheapest
    fn1 = lambda p, x: (p["a"] * x).sum(0, keepdim=True)
    plan1 = plan_entk(fn1, None, {"a": _rand(1, 3)}, _rand(2, 4, 3))
    assert plan1.implementation is Implementation.JACOBIAN and "not traced" in plan1.note
    plan1 = plan_entk(fn1, None, {"a": _rand(1, 3)}, _rand(2, 4, 3), implementation="structured")
    assert plan1.costs["jacobian"] < plan1.costs["structured"] and plan1.modes == {"a": "dense"}
    with pytest.raises(ValueError, match="'auto' or 'structured', got 'loop'"):
        plan_entk(fn1, None, {"a": _rand(1, 3)}, _rand(2, 4, 3), implementation="loop")


def test_untraceable_fn_falls_back_to_vjp_jvp_with_a_warning(monkeypatch):
    def fail(*args):
        raise _structured.TraceError("no graph for this fn")

    monkeypatch.setattr(_structured, "trace", fail)
    params = {"w": _rand(0, 3, 2)}
    fn = lambda p, x: torch.tanh(p["w"] @ x)
    xs = _rand(1, 2, 2)
    with pytest.warns(RuntimeWarning, match="could not be traced.*no graph for this fn"):
        k = entk(fn, None, params, xs, implementation="structured")
    torch.testing.assert_close(k, entk(fn, None, params, xs, implementation="loop"), atol=1e-12, rtol=0)
    plan = plan_entk(fn, None, params, xs, implementation="structured")
    assert plan.implementation is Implementation.VJP_JVP
    assert plan.costs["structured"] == float("inf") and "no graph" in plan.note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entk(fn, None, params, xs, implementation="auto")


def test_graph_that_cannot_be_differentiated_falls_back_to_vjp_jvp(monkeypatch):
    def fail(self, start, stop):
        raise _structured.GraphRunError("no batching rule for some op")

    monkeypatch.setattr(_structured.SideRunner, "__call__", fail)
    params = {"w": _rand(0, 3, 2)}
    fn = lambda p, x: torch.tanh(p["w"] @ x)
    xs = _rand(1, 2, 2)
    with pytest.warns(RuntimeWarning, match="could not be differentiated.*no batching rule"):
        k = entk(fn, None, params, xs, implementation="structured")
    torch.testing.assert_close(k, entk(fn, None, params, xs, implementation="loop"), atol=1e-12, rtol=0)


def test_impure_fn_is_refused():
    calls = [0]

    def fn(p, x):
        calls[0] += 1
        return p["w"] @ x * calls[0]

    with pytest.raises(ValueError, match="does not reproduce fn"):
        entk(fn, None, {"w": _rand(0, 3, 2)}, _rand(1, 2, 2), implementation="structured")


def test_bad_implementation_names_the_value_and_results_carry_no_graph():
    params = {"w": _rand(0, 3, 2).requires_grad_(True)}
    fn = lambda p, x: p["w"] @ x
    with pytest.raises(
        ValueError, match=r"implementation 'structurd' is not one of \[.*'structured', 'auto'\]"
    ):
        entk(fn, None, params, _rand(1, 2, 2), implementation="structurd")
    with pytest.raises(ValueError, match="implementation 'fast'"):
        entk_fn(fn, implementation="fast")
    for impl in ("structured", "auto"):
        k = entk(fn, None, params, _rand(1, 2, 2), implementation=impl)
        assert not k.requires_grad
        torch.testing.assert_close(k[0, 1], (_rand(1, 2, 2)[0] @ _rand(1, 2, 2)[1]) * torch.eye(3, dtype=DT))

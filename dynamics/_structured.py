"""The structured empirical NTK: the kernel assembled parameter by parameter from each layer's structure.

Private helper of :mod:`dynamics.kernels` (``implementation="structured"``); see
:class:`dynamics.kernels.Implementation` for the cost model. The method is the one of Novak et al.
(2022), *Fast Finite Width Neural Tangent Kernel* ("structured derivatives"), written for any
``fn(params, x)`` that ``torch.func`` can transform.

How. ``fn`` is traced once, on one example, into an aten-level graph (``make_fx`` of
``functionalize(fn)``). Every selected parameter is then classified by how the graph uses it, through
pure aliases and transposes:

- a linear map ``y = W x`` (``mm``/``addmm``/``mv`` with ``W`` or ``W^T`` as one operand, at ``S``
  positions): ``dz_o/dW = sum_s delta_{o,s} x_s^T``, so
  ``<dz_o(a)/dW, dz_p(b)/dW> = sum_{s,t} (delta_{o,s}(a) . delta_{p,t}(b)) (x_s(a) . x_t(b))``:
  a Gram matrix of the layer's inputs times a Gram matrix of its output cotangents. Attention's
  query/key/value/output maps, MLP layers and linear heads are of this kind;
- an embedding or a row lookup ``y_s = E[i_s]`` (``embedding``, ``index``): the same with the input
  Gram replaced by index equality ``[i_s(a) == i_t(b)]`` (a padding index contributes nothing);
- a bias ``y + b`` (broadcast over ``y``'s leading axes, or ``addmm``'s first argument): the same
  with an all-ones input Gram; a bias added to a linear map's output shares the map's cotangents,
  so both go through one contraction with the sum of their input Grams;
- several uses of one parameter with the same layout (weights tied across positions or layers):
  their positions are concatenated;
- anything else (norm scales, a weight used through any other op or in two layouts, tensors of
  other ranks): the parameter's Jacobian is taken directly by reverse mode in the same pass and
  contracted as a matrix (cheap for the vectors that norm scales are); if that costs more than
  ``vjp_jvp`` restricted to those parameters, they go to ``vjp_jvp`` instead.

The cotangents ``delta`` are the derivatives of the logits with respect to a zero added to each
classified op's output: one reverse pass per logit (``jacrev``, vmapped over the examples), which
also gives the Jacobians of the unclassified parameters. Elementwise maps, norms, softmax attention
and residual sums are differentiated through by autograd and need no rule of their own. Per
parameter the cheaper of the Gram contraction and the dense Jacobian contraction is used (by the
cost model of :class:`dynamics.kernels.Implementation`), and every step is chunked over examples
within a memory budget. The graph is checked against ``fn`` on the first examples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.func import functionalize, jacrev, vmap
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten

# Memory: features (cotangents, inputs, direct Jacobians and the transients of the reverse passes)
# of the examples held at once, and the temporaries of one contraction step. The kernel itself
# (N_a O_a x N_b O_b numbers) comes on top.
FEATURE_BUDGET_BYTES = 1 << 30
CONTRACT_BUDGET_BYTES = 1 << 28

# The cost model counts multiply-adds; fixed per-op prices are converted at about 1e10 per second.
# vjp/jvp runs many small vmapped products: per multiply-add it is slower than one large matrix
# product by about this factor on CPU (measured on the benchmark's MLP).
VJP_JVP_OVERHEAD = 3.0
# The Gram contraction over S > 1 positions runs as small batched products and transposing copies:
# per multiply-add about this much slower than one large matrix product (measured on the toy Llama).
GRAM_SEQUENCE_OVERHEAD = 4.0
# A reverse pass per logit that also forms every parameter's gradient (per-logit outer products, in
# small batched products) costs about this many forward passes; without parameter gradients, 2.
PARAM_GRAD_PASS = 4.0
# One op of a vmapped pass dispatched from Python (about 50 microseconds).
OP_OVERHEAD_MACS = 5e5
# Tracing: about 5 ms plus 1 ms per op (make_fx records and describes every op).
TRACE_FIXED_MACS = 5e7
TRACE_OP_MACS = 1e7

GRAM, DENSE, VJP_JVP = "gram", "dense", "vjp_jvp"


class TraceError(RuntimeError):
    """``fn`` could not be traced into a graph that reproduces it."""


class GraphRunError(RuntimeError):
    """The traced graph could not be run under ``vmap(jacrev(...))`` (an op without a batching or
    differentiation rule at the aten level): the caller falls back to ``vjp_jvp``."""


# --------------------------------------------------------------------------------------------------
# batches as flat lists of tensors


def _flatten(x: Any) -> tuple[list[torch.Tensor], Any]:
    if isinstance(x, torch.Tensor):
        return [x], None
    if isinstance(x, (tuple, list)):
        leaves, specs = [], []
        for v in x:
            sub, spec = _flatten(v)
            leaves += sub
            specs.append((len(sub), spec))
        return leaves, (type(x), None, specs)
    if isinstance(x, Mapping):
        leaves, specs = [], []
        for v in x.values():
            sub, spec = _flatten(v)
            leaves += sub
            specs.append((len(sub), spec))
        return leaves, (dict, list(x), specs)
    raise TypeError(f"batches are tensors or tuples/lists/dicts of tensors, got {type(x).__name__}")


def same_structure(xs_a: Any, xs_b: Any) -> bool:
    """Whether two batches hold tensors of the same per-example shapes and dtypes, in the same nesting."""
    la, sa = _flatten(xs_a)
    lb, sb = _flatten(xs_b)
    return sa == sb and [(t.shape[1:], t.dtype) for t in la] == [(t.shape[1:], t.dtype) for t in lb]


def _slice(xs: Any, start: int, stop: int) -> Any:
    if isinstance(xs, torch.Tensor):
        return xs[start:stop]
    if isinstance(xs, (tuple, list)):
        return type(xs)(_slice(x, start, stop) for x in xs)
    return {k: _slice(x, start, stop) for k, x in xs.items()}


def _unflatten(spec: Any, leaves: list) -> Any:
    if spec is None:
        return leaves[0]
    kind, keys, specs = spec
    out, i = [], 0
    for count, sub in specs:
        out.append(_unflatten(sub, leaves[i : i + count]))
        i += count
    if kind is dict:
        return dict(zip(keys, out))
    return kind(out)


# --------------------------------------------------------------------------------------------------
# the trace and the classification of every parameter's uses


class _Unstructured(Exception):
    pass


_ALIASES = {aten.alias.default, aten.detach.default, aten.clone.default}
_RESHAPES = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default}


@dataclass
class Site:
    """One structured use of a parameter: the op ``node`` whose output gets a zero added (its
    cotangent is ``delta``), the node ``act`` holding the input (or the indices), their layouts, and
    the parameter's layout: ``act_dim`` is the parameter axis the input runs along."""

    node: Any
    act: Any  # None for a bias (its input is the constant 1)
    kind: str  # "linear", "index" or "bias"
    act_layout: str  # "rows" (S, d), "cols" (d, S), "vec" (d,), "ids" (any shape), "ones"
    cot_layout: str  # "rows", "cols", "vec", "embed" (*ids, d)
    act_dim: int
    positions: int
    rows: int = 0  # table rows (index kind)
    padding_idx: int | None = None

    @property
    def signature(self) -> tuple[str, int]:
        return self.kind, self.act_dim

    @property
    def cot_key(self) -> tuple:
        """Sites with equal keys have equal cotangents (as ``(S, d)``): they can share one contraction."""
        return self.node, self.cot_layout == "cols"


def _shape(node) -> tuple[int, ...]:
    return tuple(node.meta["val"].shape)


def _count(node, target) -> int:
    hits = [0]

    def see(a):
        if a is target:
            hits[0] += 1
        return a

    torch.fx.map_arg((node.args, node.kwargs), see)
    return hits[0]


def _is_transpose(u, v) -> bool:
    if len(_shape(v)) != 2:
        return False
    if u.target is aten.t.default:
        return True
    if u.target is aten.transpose.int:
        return sorted(d % 2 for d in u.args[1:3]) == [0, 1]
    if u.target is aten.permute.default:
        return [d % 2 for d in u.args[1]] == [1, 0]
    return False


def _site(u, v, transposed: bool, shape: tuple[int, int]) -> Site:
    """The structured use of the 2-D parameter view ``v`` by the op ``u`` (raises _Unstructured)."""
    if _count(u, v) != 1:
        raise _Unstructured
    t = u.target
    if t is aten.addmm.default:
        if u.args[0] is v or any(u.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")) or len(u.args) > 3:
            raise _Unstructured
        left, right = u.args[1], u.args[2]
    elif t is aten.mm.default:
        left, right = u.args
    elif t is aten.mv.default:
        if u.args[0] is not v:
            raise _Unstructured
        # y (m,) = W (m, k) x (k,): W's rows take the cotangent, its columns the input
        return Site(u, u.args[1], "linear", "vec", "vec", 1 ^ transposed, 1)
    elif t in (aten.embedding.default, aten.index.Tensor):
        if u.args[0] is not v or transposed:
            raise _Unstructured
        if t is aten.embedding.default:
            ids = u.args[1]
            pad = u.args[2] if len(u.args) > 2 else u.kwargs.get("padding_idx", -1)
            if (len(u.args) > 3 and u.args[3]) or u.kwargs.get("scale_grad_by_freq", False):
                raise _Unstructured
            padding = pad if pad >= 0 else None
        else:
            idx = u.args[1]
            if len(idx) != 1 or idx[0] is None or idx[0].meta["val"].dtype not in (torch.int64, torch.int32):
                raise _Unstructured
            ids, padding = idx[0], None
        positions = math.prod(_shape(ids))
        return Site(u, ids, "index", "ids", "embed", 0, positions, rows=shape[0], padding_idx=padding)
    else:
        raise _Unstructured
    if right is v:  # y (S, m) = A (S, k) W (k, m): W's rows take the input
        return Site(u, left, "linear", "rows", "rows", 0 ^ transposed, _shape(u)[0])
    # y (m, S) = W (m, k) B (k, S): W's columns take the input
    return Site(u, right, "linear", "cols", "cols", 1 ^ transposed, _shape(u)[1])


def _uses(node, transposed: bool, shape: tuple[int, int], out: list[Site]) -> None:
    for u in node.users:
        if u.op != "call_function":
            raise _Unstructured
        if u.target in _ALIASES or (u.target in _RESHAPES and _shape(u) == _shape(node)):
            if u.args[0] is not node or _count(u, node) != 1:
                raise _Unstructured
            _uses(u, transposed, shape, out)
        elif _is_transpose(u, node) and u.args[0] is node:
            _uses(u, not transposed, shape, out)
        else:
            out.append(_site(u, node, transposed, shape))


def _bias_uses(node, d: int, out: list[Site]) -> None:
    """Uses of a 1-D parameter ``b`` (d,) as a bias: ``y + b`` broadcast over ``y``'s leading axes,
    or ``addmm(b, A, B)``. ``d(y + b)/db`` sums the cotangent over the leading axes, which is a
    linear map with the constant input 1: the Gram rule with an all-ones input Gram."""
    for u in node.users:
        if u.op != "call_function" or _count(u, node) != 1:
            raise _Unstructured
        if u.target in _ALIASES and _shape(u) == _shape(node) and u.args[0] is node:
            _bias_uses(u, d, out)
        elif u.target is aten.add.Tensor and len(u.args) == 2 and not u.kwargs:
            y = u.args[1] if u.args[0] is node else u.args[0]
            if not isinstance(y, torch.fx.Node) or _shape(y)[-1:] != (d,) or _shape(u) != _shape(y):
                raise _Unstructured
            # d(y + b)/dy is the identity: inject at y when the add is its only use (so that a
            # linear map's bias shares the map's cotangent), else at the add
            inject = y if y.op == "call_function" and len(y.users) == 1 else u
            out.append(Site(inject, None, "bias", "ones", "embed", 0, math.prod(_shape(y)) // d))
        elif (
            u.target is aten.addmm.default
            and u.args[0] is node
            and len(u.args) == 3
            and not any(u.kwargs.get(k, 1) != 1 for k in ("beta", "alpha"))
            and _shape(u)[-1:] == (d,)
        ):
            out.append(Site(u, None, "bias", "ones", "rows", 0, _shape(u)[0]))
        else:
            raise _Unstructured


@contextlib.contextmanager
def _one_fake_mode():
    """Let make_fx describe every op's output with one fake-tensor mode instead of a new one per op
    (a new mode records a Python stack trace: half of the tracing time). Private torch API, so
    optional: without it tracing is only slower."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode

        ctx = tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))
    except Exception:  # noqa: BLE001 - any API change: trace without it
        ctx = contextlib.nullcontext()
    with ctx:
        yield


@dataclass
class Traced:
    """One side's function traced on one example, with its parameters classified."""

    gm: torch.fx.GraphModule
    names: list[str]
    spec: Any
    n_leaves: int
    sites: dict[str, list[Site]]  # the parameters with only structured uses
    macs: float  # multiply-adds of one forward pass (matrix products)
    activations: int  # floating-point numbers computed by one forward pass
    largest: int  # numbers of the largest floating-point intermediate value
    ops: int  # ops in the graph


def trace(f: Callable, active: dict, x: Any) -> Traced:
    """Trace ``f(active, x)`` for one example ``x`` into an aten graph and classify the parameters."""
    names = list(active)
    leaves, spec = _flatten(x)
    k = len(names)

    def flat(*args):
        return f(dict(zip(names, args[:k])), _unflatten(spec, list(args[k:])))

    args = [active[n] for n in names] + leaves
    try:
        try:
            with _one_fake_mode():
                gm = make_fx(functionalize(flat), tracing_mode="real")(*args)
        except Exception:  # noqa: BLE001 - retried without the private speed-up, which may be at fault
            gm = make_fx(functionalize(flat), tracing_mode="real")(*args)
    except Exception as err:  # any failure to trace: the caller falls back to vjp_jvp
        raise TraceError(f"{type(err).__name__}: {err}") from err
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    if (
        len(placeholders) != k + len(leaves)
        or len(outputs) != 1
        or not isinstance(outputs[0].args[0], torch.fx.Node)
    ):
        raise TraceError("the traced graph does not have one input per tensor and one output tensor")
    sites = {}
    for name, ph in zip(names, placeholders):
        shape = tuple(active[name].shape)
        found: list[Site] = []
        try:
            if len(shape) == 2:
                _uses(ph, False, shape, found)
            elif len(shape) == 1:
                _bias_uses(ph, shape[0], found)
        except _Unstructured:
            continue
        if found and len({s.signature for s in found}) == 1:
            sites[name] = found
    macs, acts, largest = 0.0, 0, 1
    for n in nodes:
        val = n.meta.get("val") if n.op == "call_function" else None
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        acts += val.numel()
        largest = max(largest, val.numel())
        if n.target in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default):
            a = n.args[-2] if n.target in (aten.addmm.default, aten.baddbmm.default) else n.args[0]
            macs += val.numel() * _shape(a)[-1]
        elif n.target is aten.mv.default:
            macs += math.prod(_shape(n.args[0]))
    ops = sum(1 for n in nodes if n.op == "call_function")
    return Traced(gm, names, spec, len(leaves), sites, macs, acts, largest, ops)


# --------------------------------------------------------------------------------------------------
# the plan: per parameter, Gram contraction, dense Jacobian or vjp/jvp


@dataclass
class Side:
    f: Callable
    xs: Any
    n: int
    o: int
    traced: Traced


@dataclass
class Plan:
    """Per parameter ``mode`` (``"gram"``, ``"dense"``, ``"vjp_jvp"``), the groups of Gram
    parameters that share their cotangents (a weight and its bias: one contraction with the sum of
    their input Grams) and the estimated multiply-adds of the whole computation (``cost``) and of
    its parts."""

    modes: dict[str, str]
    cost: float
    parts: dict[str, float] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)


def _gram_cost(n_a, n_b, o_a, o_b, s_a, s_b, d_x, d, kind, with_cot: bool = True) -> float:
    """Multiply-adds of one Gram contraction (the input Gram; with ``with_cot`` also the cotangent part)."""
    act = s_a * s_b * (d_x if kind == "linear" else 1)
    if not with_cot:
        return n_a * n_b * act
    if s_a == 1 and s_b == 1:
        return n_a * n_b * (act + o_a * o_b * (d + 1))
    order_a = o_a * s_a * s_b * d + o_a * o_b * s_b * d
    order_b = o_b * s_a * s_b * d + o_a * o_b * s_a * d
    return n_a * n_b * (act + GRAM_SEQUENCE_OVERHEAD * min(order_a, order_b))


def vjp_jvp_cost(n_a: int, n_b: int, o_b: int, macs_a: float, macs_b: float, ops: int) -> float:
    """Multiply-adds of ``vjp_jvp``: a reverse pass with parameter gradients per side-b logit, a
    forward-mode pass per (side-a example, side-b logit), about two forward passes each but
    slower per multiply-add; two vmapped passes of ``ops`` ops per side-b example."""
    return (
        n_b * o_b * (PARAM_GRAD_PASS * macs_b + 2 * VJP_JVP_OVERHEAD * n_a * macs_a)
        + 2 * n_b * ops * OP_OVERHEAD_MACS
    )


def jacobian_cost(
    rows: int, cols: int, n_params: int, macs_a: float, macs_b: float, ops: int, same: bool
) -> float:
    """Multiply-adds of ``jacobian``: a reverse pass with parameter gradients per logit of each side
    (``rows = N_a O_a``, ``cols = N_b O_b``), then the ``rows x cols x P`` contraction."""
    passes = PARAM_GRAD_PASS * (rows * macs_a + (0 if same else cols * macs_b))
    return passes + rows * cols * n_params + (1 if same else 2) * 2 * ops * OP_OVERHEAD_MACS


def make_plan(a: Side, b: Side, active: dict, same: bool) -> Plan:
    modes, parts = {}, {}
    keys = {}  # name -> (cotangent keys on side a, on side b) of a Gram parameter
    dense_cost, dense_names = 0.0, []

    def structured(name):
        sa, sb = a.traced.sites.get(name), b.traced.sites.get(name)
        if sa and sb and sa[0].signature == sb[0].signature:
            return sa, sb
        return None

    def is_bias(name):
        pair = structured(name)
        return bool(pair) and pair[0][0].kind == "bias"

    # weights first, then biases (a bias that shares its weight's cotangents costs only its input Gram)
    order = sorted(active, key=is_bias)
    for name in order:
        p = active[name]
        numel = p.numel()
        cost_dense = a.n * b.n * a.o * b.o * numel
        pair = structured(name)
        if pair:
            sa, sb = pair
            kind, act_dim = sa[0].signature
            s_a, s_b = sum(s.positions for s in sa), sum(s.positions for s in sb)
            d_x, d = (1, p.shape[0]) if kind == "bias" else (p.shape[act_dim], p.shape[1 - act_dim])
            key = (tuple(s.cot_key for s in sa), tuple(s.cot_key for s in sb))
            shared = any(keys.get(other) == key for other in keys)
            cost_gram = _gram_cost(a.n, b.n, a.o, b.o, s_a, s_b, d_x, d, kind, with_cot=not shared)
            # the dense alternative also forms sum_s delta_s x_s^T per logit in the reverse pass
            cost_dense += (a.n * a.o * s_a + (0 if same else b.n * b.o * s_b)) * numel
            if cost_gram <= cost_dense:
                modes[name], parts[name] = GRAM, cost_gram
                keys[name] = key
                continue
        modes[name], parts[name] = DENSE, cost_dense
        dense_cost += cost_dense
        dense_names.append(name)
    modes = {name: modes[name] for name in active}
    ops = max(a.traced.ops, b.traced.ops)
    fallback = vjp_jvp_cost(a.n, b.n, b.o, a.traced.macs, b.traced.macs, ops)
    if dense_names and dense_cost > fallback:
        for name in dense_names:
            modes[name] = VJP_JVP
            parts[name] = 0.0
        parts["vjp_jvp"] = fallback
    passes = 2 * (a.n * a.o * a.traced.macs + (0 if same else b.n * b.o * b.traced.macs))
    parts["reverse passes"] = passes
    # tracing (once when both sides share the graph), the vmapped passes and the contraction steps
    traces = 1 if a.traced is b.traced else 2
    parts["tracing"] = traces * (TRACE_FIXED_MACS + TRACE_OP_MACS * a.traced.ops)
    parts["overhead"] = OP_OVERHEAD_MACS * (3 * (a.traced.ops + b.traced.ops) + 4 * len(modes))
    groups: dict[tuple, list[str]] = {}
    for name in active:
        if modes[name] == GRAM:
            groups.setdefault(keys[name], []).append(name)
    return Plan(modes, sum(parts.values()), parts, list(groups.values()))


# --------------------------------------------------------------------------------------------------
# features: cotangents, inputs and direct Jacobians of a chunk of examples


def _executable(traced: Traced, sites: list[Site]) -> tuple[torch.fx.GraphModule, list, list[int]]:
    """A copy of the graph with a zero input added to the output of every site's op, returning
    ``(logits, *inputs of the sites that have one)``; also the per-example shapes and dtypes of
    those zeros (one per distinct op) and, per site, the index of its zero."""
    old = list(traced.gm.graph.nodes)
    new = torch.fx.Graph()
    env: dict = {}
    for n in old:
        if n.op == "placeholder":
            env[n] = new.node_copy(n, lambda m: env[m])
    site_nodes = list(dict.fromkeys(s.node for s in sites))
    eps = {node: new.placeholder(f"structured_eps_{i}") for i, node in enumerate(site_nodes)}
    result = None
    for n in old:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            result = n.args[0]
            continue
        env[n] = new.node_copy(n, lambda m: env[m])
        if n in eps:
            env[n] = new.call_function(aten.add.Tensor, (env[n], eps[n]))
    new.output((env[result], *[env[s.act] for s in sites if s.act is not None]))
    gm = torch.fx.GraphModule(traced.gm, new)
    zeros = [(tuple(node.meta["val"].shape), node.meta["val"].dtype) for node in site_nodes]
    return gm, zeros, [site_nodes.index(s.node) for s in sites]


@dataclass
class Features:
    n: int
    dense: torch.Tensor | None  # (n, O, P_dense)
    cot: list[torch.Tensor]  # per group of the plan: (n, O, S, d)
    act: dict[str, torch.Tensor | None]  # name -> (n, S, d_x) inputs, (n, S) indices (-1: none), None: ones
    positions: dict[str, int]  # name -> S
    basis: list[bool]  # per group: the cotangent is the standard basis (a head on the logits)


def _to_rows(t: torch.Tensor, layout: str, lead: int) -> torch.Tensor:
    """Per-example ``layout`` value with ``lead`` leading batch axes -> ``(*lead, S, d)``."""
    if layout == "rows":
        return t
    if layout == "cols":
        return t.transpose(-1, -2)
    if layout == "vec":
        return t.unsqueeze(-2)
    # "embed": (*ids, d) -> (S, d)
    return t.reshape(*t.shape[:lead], -1, t.shape[-1])


class SideRunner:
    """Computes :class:`Features` of one side for chunks of its examples."""

    def __init__(self, side: Side, active: dict, plan: Plan, dtype: torch.dtype) -> None:
        self.side, self.active, self.dtype, self.plan = side, active, dtype, plan
        tr = side.traced
        self.dense = [n for n in tr.names if plan.modes.get(n) == DENSE]
        self.gram = [n for group in plan.groups for n in group]
        self.sites = [(name, s) for name in self.gram for s in tr.sites[name]]
        self.gm, self.zero_shapes, self.eps_of = _executable(tr, [s for _, s in self.sites])
        o = side.o
        sites = sum(math.prod(s) for s, _ in self.zero_shapes)
        inputs = sum(math.prod(_shape(s.act)) for _, s in self.sites if s.act is not None)
        # kept: cotangents, inputs, direct Jacobians; passing: the forward's values and a few
        # cotangent buffers of the reverse pass, one per logit
        self.bytes_kept = 8 * (o * (sites + sum(active[n].numel() for n in self.dense)) + inputs)
        self.bytes_passing = 8 * (tr.activations + 4 * o * tr.largest)
        self.checked = False

    def __call__(self, start: int, stop: int) -> Features:
        tr, side = self.side.traced, self.side
        names, active = tr.names, self.active
        dense_names = self.dense
        x = _slice(side.xs, start, stop)
        leaves, _ = _flatten(x)
        ref = next(iter(active.values()))
        eps = [torch.zeros(s, dtype=dt, device=ref.device) for s, dt in self.zero_shapes]
        dense = [active[n] for n in dense_names]
        gm = self.gm

        def run(eps, dense, leaves):
            vals = dict(active)
            vals.update(zip(dense_names, dense))
            res = gm(*[vals[n] for n in names], *leaves, *eps)
            return res[0], (res[0], tuple(res[1:]))

        argnums = tuple(i for i, arg in ((0, eps), (1, dense)) if arg)
        try:
            if argnums:
                jac, (out, acts) = vmap(jacrev(run, argnums=argnums, has_aux=True), in_dims=(None, None, 0))(
                    eps, dense, tuple(leaves)
                )
                jac = dict(zip(argnums, jac))
            else:
                out, acts = vmap(run, in_dims=(None, None, 0))(eps, dense, tuple(leaves))[1]
                jac = {}
        except RuntimeError as err:
            if self.checked:  # it ran on an earlier chunk: not the graph's fault
                raise
            raise GraphRunError(f"{type(err).__name__}: {err}") from err
        n = stop - start
        if not self.checked:  # once per side: the graph computes what fn computes
            m = min(n, 2)
            with torch.no_grad():
                direct = vmap(side.f, in_dims=(None, 0))(active, _slice(x, 0, m))
            scale = 1.0 + direct.abs().max().item()
            if out[:m].shape != direct.shape or not torch.allclose(
                out[:m], direct, rtol=1e-6, atol=1e-6 * scale
            ):
                raise TraceError(
                    "the traced graph does not reproduce fn (is fn a pure function of (params, x) "
                    "without data-dependent control flow?)"
                )
            self.checked = True
        o = side.o
        dense_j = None
        if 1 in jac:
            dense_j = torch.cat([j.reshape(n, o, -1) for j in jac[1]], dim=2).to(self.dtype)
        cot: dict[str, list] = {}
        act: dict[str, list] = {}
        acts = iter(acts)
        for (name, s), e in zip(self.sites, self.eps_of):
            c = jac[0][e].reshape(n, o, *self.zero_shapes[e][0])
            cot.setdefault(name, []).append(_to_rows(c, s.cot_layout, 2).to(self.dtype))
            if s.kind == "bias":
                act.setdefault(name, []).append(None)
                continue
            a = next(acts)
            if s.kind == "index":
                ids = a.reshape(n, -1).long()
                if s.padding_idx is None:
                    ids = torch.where(ids < 0, ids + s.rows, ids)
                else:
                    ids = ids.masked_fill(ids == s.padding_idx, -1)
                act.setdefault(name, []).append(ids)
            else:
                act.setdefault(name, []).append(_to_rows(a, s.act_layout, 1).to(self.dtype))
        groups_cot, basis = [], []
        for group in self.plan.groups:
            parts = cot[group[0]]
            c = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
            groups_cot.append(c)
            is_basis = False
            if c.shape[2] == 1 and c.shape[3] == o:
                eye = torch.eye(o, dtype=c.dtype, device=c.device)
                is_basis = bool(torch.equal(c[:, :, 0, :], eye.expand(n, o, o)))
            basis.append(is_basis)
        acts_t, positions = {}, {}
        for name, parts in act.items():
            positions[name] = sum(c.shape[2] for c in cot[name])
            acts_t[name] = (
                None if parts[0] is None else torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            )
        return Features(n, dense_j, groups_cot, acts_t, positions, basis)


# --------------------------------------------------------------------------------------------------
# contraction


def _act_gram(fa: Features, fb: Features, name: str, kind: str, ia: slice, dtype) -> torch.Tensor:
    """``(x_s(a) . x_t(b))`` as ``(n_a, S_a, n_b, S_b)`` for the side-a examples ``ia``."""
    act_a, act_b = fa.act[name], fb.act[name]
    s_a, s_b = fa.positions[name], fb.positions[name]
    n_a = len(range(fa.n)[ia])
    if kind == "bias":
        return torch.ones(n_a, s_a, fb.n, s_b, dtype=dtype, device=fb.cot[0].device)
    act_a = act_a[ia]
    if kind == "index":
        ia_, ib_ = act_a.reshape(-1, 1), act_b.reshape(1, -1)
        g = ((ia_ == ib_) & (ia_ >= 0)).to(dtype)
    else:
        g = act_a.reshape(n_a * s_a, -1) @ act_b.reshape(fb.n * s_b, -1).T
    return g.view(n_a, s_a, fb.n, s_b)


def _gram_block(ca, gx, cb, basis: bool, blk: torch.Tensor, fresh: bool) -> None:
    """``blk (n_a O_a, n_b O_b) += sum_{s,t} gx[a, s, b, t] (delta_s(a) . delta_t(b))``; with
    ``fresh`` the block holds no value yet and is overwritten."""
    n_a, o_a, s_a, d = ca.shape
    n_b, o_b, s_b, _ = cb.shape
    if s_a == 1 and s_b == 1:
        g = gx[:, 0, :, 0]
        if basis:  # both cotangents are the standard basis: (x(a) . x(b)) I
            if fresh:
                blk.zero_()
            blk.view(n_a, o_a, n_b, o_b).diagonal(dim1=1, dim2=3).add_(g[:, :, None])
            return
        if fresh:
            if blk.is_contiguous():
                torch.mm(ca.reshape(n_a * o_a, d), cb.reshape(n_b * o_b, d).T, out=blk)
            else:
                blk.copy_(ca.reshape(n_a * o_a, d) @ cb.reshape(n_b * o_b, d).T)
            blk.view(n_a, o_a, n_b, o_b).mul_(g[:, None, :, None])
            return
        tmp = ca.reshape(n_a * o_a, d) @ cb.reshape(n_b * o_b, d).T
        tmp.view(n_a, o_a, n_b, o_b).mul_(g[:, None, :, None])
        blk.add_(tmp)
        return
    if fresh:
        blk.zero_()
    if o_a * s_a * s_b + o_a * o_b * s_b <= o_b * s_a * s_b + o_a * o_b * s_a:
        # T[a, o, k, b, t] = sum_s delta_a[o, s, k] G[a, s, b, t], then sum over (t, k) with delta_b
        t = torch.bmm(ca.permute(0, 1, 3, 2).reshape(n_a, o_a * d, s_a), gx.reshape(n_a, s_a, n_b * s_b))
        t = t.view(n_a, o_a, d, n_b, s_b).permute(3, 0, 1, 4, 2).reshape(n_b, n_a * o_a, s_b * d)
        r = torch.bmm(t, cb.reshape(n_b, o_b, s_b * d).transpose(1, 2))  # (n_b, n_a O_a, O_b)
        blk.view(n_a * o_a, n_b, o_b).add_(r.permute(1, 0, 2))
    else:
        g = gx.permute(2, 3, 0, 1).reshape(n_b, s_b, n_a * s_a)
        t = torch.bmm(cb.permute(0, 1, 3, 2).reshape(n_b, o_b * d, s_b), g)
        t = t.view(n_b, o_b, d, n_a, s_a).permute(3, 0, 1, 4, 2).reshape(n_a, n_b * o_b, s_a * d)
        r = torch.bmm(t, ca.reshape(n_a, o_a, s_a * d).transpose(1, 2))  # (n_a, n_b O_b, O_a)
        blk.view(n_a, o_a, n_b * o_b).add_(r.permute(0, 2, 1))


def _temp_per_a(ca, cb) -> int:
    """Numbers of the contraction temporaries per side-a example."""
    _, o_a, s_a, d = ca.shape
    n_b, o_b, s_b, _ = cb.shape
    if s_a == 1 and s_b == 1:
        return o_a * n_b * o_b
    return o_a * d * n_b * max(s_b, s_a) + n_b * o_a * o_b + s_a * n_b * s_b


def contract(fa: Features, fb: Features, plan: Plan, kinds: dict[str, str], blk: torch.Tensor) -> None:
    """Write the kernel block of the examples of ``fa`` x ``fb`` into ``blk (n_a O_a, n_b O_b)``."""
    o_a = blk.shape[0] // fa.n
    fresh = True
    # a group with one position per example can overwrite the whole block in one product
    order = sorted(range(len(plan.groups)), key=lambda g: fa.cot[g].shape[2] + fb.cot[g].shape[2] > 2)
    for g in order:
        ca, cb = fa.cot[g], fb.cot[g]
        names = plan.groups[g]
        basis = fa.basis[g] and fb.basis[g]
        direct = fresh and ca.shape[2] == 1 and cb.shape[2] == 1
        step = fa.n if basis or direct else max(1, CONTRACT_BUDGET_BYTES // (8 * _temp_per_a(ca, cb)))
        for i in range(0, fa.n, step):
            j = min(i + step, fa.n)
            rows = slice(i, j)
            gx = sum(_act_gram(fa, fb, name, kinds[name], rows, blk.dtype) for name in names)
            _gram_block(ca[rows], gx, cb, basis, blk[i * o_a : j * o_a], fresh)
        fresh = False
    if fa.dense is not None:
        a_mat, b_mat = fa.dense.reshape(blk.shape[0], -1), fb.dense.reshape(blk.shape[1], -1)
        if fresh:
            blk.copy_(a_mat @ b_mat.T)
        else:
            blk.addmm_(a_mat, b_mat.T)
        fresh = False
    if fresh:
        blk.zero_()


def structured_matrix(
    a: Side,
    b: Side,
    active: dict,
    plan: Plan,
    same: bool,
    chunk_size: int | None,
    vjp_jvp: Callable[[list[str]], torch.Tensor],
) -> torch.Tensor:
    """The kernel as a matrix ``(N_a O_a, N_b O_b)`` by ``plan``; ``vjp_jvp(names)`` computes the
    same matrix over the parameters ``names`` only (the fall-back)."""
    ref = next(iter(active.values()))
    dtype = ref.dtype
    k2 = torch.empty(a.n * a.o, b.n * b.o, dtype=dtype, device=ref.device)
    if any(m in (GRAM, DENSE) for m in plan.modes.values()):
        run_a = SideRunner(a, active, plan, dtype)
        run_b = run_a if same else SideRunner(b, active, plan, dtype)
        kinds = {name: a.traced.sites[name][0].kind for name in run_a.gram}

        def chunks(runner: SideRunner, n: int) -> list[tuple[int, int]]:
            size = chunk_size or max(
                1, FEATURE_BUDGET_BYTES // (2 * (runner.bytes_kept + runner.bytes_passing))
            )
            return [(i, min(i + size, n)) for i in range(0, n, size)]

        chunks_a, chunks_b = chunks(run_a, a.n), chunks(run_b, b.n)
        # side b's features are computed once and kept if they fit in half the budget
        kept_b = None
        if b.n * run_b.bytes_kept <= FEATURE_BUDGET_BYTES // 2:
            kept_b = [run_b(k, m) for k, m in chunks_b]
        for i, j in chunks_a:
            fa = kept_b[chunks_b.index((i, j))] if same and kept_b is not None else run_a(i, j)
            for index, (k, m) in enumerate(chunks_b):
                if kept_b is not None:
                    fb = kept_b[index]
                else:
                    fb = fa if same and (i, j) == (k, m) else run_b(k, m)
                contract(fa, fb, plan, kinds, k2[i * a.o : j * a.o, k * b.o : m * b.o])
    else:
        k2.zero_()
    fallback = [n for n, m in plan.modes.items() if m == VJP_JVP]
    if fallback:
        k2 += vjp_jvp(fallback)
    return k2

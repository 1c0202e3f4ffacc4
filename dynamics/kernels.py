"""The empirical neural tangent kernel (eNTK) of logits, and first-order probes, by torch.func.

The theory (:mod:`dynamics.theory`) predicts the one-step change of a probe's log-probabilities under
plain SGD as ``Delta log pi(o) = -eta A(o) K(o, u) G(u) + O(eta^2)`` where
``K(o, u) = J(o) J(u)^T`` is the empirical NTK of the logits: a ``V x V`` block per pair of examples
(and per pair of token positions), never traced or averaged here. With Adam or any preconditioned
optimizer the kernel is not ``J J^T``: everything in this module is the plain-SGD setting of the theory.

Example: a bias-free linear softmax head ``z = W h`` has ``K(o, u) = <h_o, h_u> I``::

    >>> import torch
    >>> from dynamics.kernels import entk
    >>> g = torch.Generator().manual_seed(0)
    >>> params = {"W": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    >>> fn = lambda p, h: p["W"] @ h                      # one example: (4,) -> (V,) = (3,)
    >>> hs = torch.randn(2, 4, generator=g, dtype=torch.float64)
    >>> k = entk(fn, fn, params, hs, hs)                   # (N_a, N_b, V_a, V_b)
    >>> k.shape
    torch.Size([2, 2, 3, 3])
    >>> torch.allclose(k[0, 1], (hs[0] @ hs[1]) * torch.eye(3, dtype=torch.float64))
    True

Conventions.

- ``fn(params, x)`` computes the logits of ONE example from a dict ``name -> tensor`` of parameters; it
  is batched with ``torch.func.vmap``, so it must be vmap-compatible (no ``.item()``, no data-dependent
  Python control flow). An ``nn.Module`` becomes such a function with
  ``lambda p, x: torch.func.functional_call(module, p, (x,))``.
- ``xs`` is a batch stacked on dim 0: a tensor, or a tuple/list/dict of tensors that all share dim 0.
- ``fn`` returns logits of shape ``(*lead, V)``: ``(V,)`` for one token, ``(M, V)`` for ``M`` positions.
  The kernel has shape ``(N_a, N_b, *lead_a, *lead_b, V_a, V_b)``: ``(N_a, N_b, V_a, V_b)`` for
  single-token outputs and ``(N_a, N_b, M_a, M_b, V_a, V_b)`` for sequences, so that ``k[i, j, m, r]``
  is the ``V_a x V_b`` block ``K_{m, r}`` of the theory. :func:`kernel_matrix` flattens it to the 2-D
  Gram matrix over (example, position, logit) rows.
- ``blocks`` restricts the sum over parameters: an iterable of parameter names (a single ``str`` is
  one name) or a predicate ``name -> bool``; :func:`param_blocks` builds the usual shared/head split.
  Parameters outside ``blocks`` are held fixed, as in a generation-only update of the shared trunk.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jacrev, jvp, vjp, vmap

from dynamics import _structured
from dynamics._structured import _slice  # slicing a batch (tensor, tuple/list or dict): one definition

__all__ = [
    "EntkPlan",
    "Implementation",
    "entk",
    "entk_blocks",
    "entk_fn",
    "first_order_probe",
    "grad_inner_product",
    "kernel_matrix",
    "param_blocks",
    "plan_entk",
    "select_params",
    "sgd_step",
]

Params = Mapping[str, torch.Tensor]
Blocks = None | str | Iterable[str] | Callable[[str], bool]
LogitsFn = Callable[[Params, Any], torch.Tensor]


class Implementation(str, enum.Enum):
    """How :func:`entk` computes ``K = J_a J_b^T``; all give the same kernel.

    Cost model, in multiply-adds, with ``N`` examples per side, ``O`` logits per example (``V``
    times the positions), ``P`` selected parameters and ``F`` the multiply-adds of one forward pass
    (``F ~ P`` for a dense net on one position, ``F ~ P L`` on ``L`` positions). A reverse pass per
    logit that forms every parameter's gradient costs about ``4 F`` (outer products in small
    batched products), one that stops at the activations ``2 F``; the constants are fitted on CPU
    (float64, one thread) and live in :mod:`dynamics._structured`:

    - ``JACOBIAN``: per-example Jacobians by ``vmap(jacrev(fn))``, then one matrix product per
      parameter tensor. Time ``4 F (N_a O_a + N_b O_b) + N_a O_a N_b O_b P``, memory
      ``(N_a O_a + N_b O_b) P``. Wins when ``O`` is small (a few logits, single tokens) or for a Gram
      matrix (``xs_b is xs_a`` and ``fn_b is fn_a`` reuse one Jacobian). The default.
    - ``VJP_JVP``: for each example of side b and each of its logits, a vjp gives the tangent
      ``J_b^T e``; a jvp pushes it through side a. Time ``4 F N_b O_b + 2 c F N_a N_b O_b``, where
      ``c ~ 3`` is the price of many small vmapped products against one large matrix product;
      memory ``O_b P`` per chunk of side-b examples (``chunk_size``). Avoids the ``O_a O_b P``
      contraction and is the lighter one in memory.
    - ``STRUCTURED``: structured derivatives (Novak et al. 2022, *Fast Finite Width Neural Tangent
      Kernel*). ``fn`` is traced once into an aten graph (about 5 ms plus 1 ms per op) and the
      kernel is assembled parameter by parameter from each layer's structure instead of from
      Jacobians. A linear map ``y = W x`` used at ``S`` positions contributes the Gram matrix of its
      inputs times the Gram matrix of its output cotangents,
      ``sum_{s,t} (x_s(a) . x_t(b)) (delta_s(a) . delta_t(b))``: ``N_a N_b O_a O_b d_out`` for
      ``S = 1`` against ``N_a N_b O_a O_b d_in d_out`` for its Jacobians, and
      ``N_a N_b (S^2 d_in + c' (O S^2 + O^2 S) d_out)`` for ``S > 1`` (``c' ~ 4``: small products).
      Likewise attention's query/key/value/output maps, weights tied across positions or layers
      (their positions add up), embeddings and row lookups (index equality instead of the input
      Gram; a padding index contributes nothing) and biases (an all-ones input Gram; a bias added
      to a linear map's output shares its cotangents, so it costs only ``N_a N_b S^2``). Norm
      scales and any parameter used in another way are contracted from their own Jacobians
      (``N_a O_a N_b O_b P_p``, cheap for vectors), or by ``vjp_jvp`` restricted to them when
      that is cheaper. Per parameter the cheaper of the Gram and the Jacobian contraction is
      taken. Plus ``2 F (N_a O_a + N_b O_b)`` for the reverse passes that give the cotangents.
      Memory: chunked over examples within about 1 GiB for the cotangents and 256 MiB for the
      contraction's temporaries, plus the kernel. ``fn`` must be traceable by
      ``torch.fx.experimental.proxy_tensor.make_fx`` (a vmap-compatible function of torch ops is);
      if it is not, a warning is issued and ``vjp_jvp`` is used.
    - ``AUTO``: the cheapest of the three by this model (:func:`plan_entk` says which and why).
      ``fn`` is traced only if the problem costs more than tracing; once traced, the tracing counts
      as paid. ``JACOBIAN`` only if its Jacobians fit in 4 GiB.
    - ``LOOP``: one ``torch.autograd.grad`` backward pass per (example, logit), then the dot products
      of the stacked gradients. The plain reference; it needs neither vmap nor forward-mode AD, and
      is slow.

    The torch.func implementations first drop the parameters that one side never reaches (read from
    the autograd graph of one example): across the branches of a two-head model only the shared
    trunk is contracted. ``LOOP`` keeps every parameter, so it also checks that pruning.

    Agreement: the reverse-mode implementations (``JACOBIAN``, ``STRUCTURED``, ``LOOP``) agree to
    float64 rounding. ``VJP_JVP`` differentiates side a in forward mode, which differs from reverse
    mode in two places: where ``fn`` computes in lower precision (transformers' Llama RMSNorm
    casts to float32 inside a float64 model) its tangents are rounded there; and an embedding's
    ``padding_idx`` row, which reverse mode gives no gradient, still moves side a's output in
    forward mode, so with a padding id in ``xs_a`` and a padding row that the side-b tangent
    reaches (e.g. a tied output head) ``VJP_JVP`` differs from the others.
    """

    JACOBIAN = "jacobian"
    VJP_JVP = "vjp_jvp"
    LOOP = "loop"
    STRUCTURED = "structured"
    AUTO = "auto"


# Jacobians larger than this are never chosen by ``implementation="auto"``.
JACOBIAN_MEMORY_LIMIT_BYTES = 4 << 30


# --------------------------------------------------------------------------------------------------
# parameters and blocks


def select_params(params: Params, blocks: Blocks = None) -> tuple[dict, dict]:
    """Split ``params`` into ``(active, frozen)`` dicts of detached tensors by ``blocks``.

    ``blocks`` is None (all parameters), one name, an iterable of names, or a predicate
    ``name -> bool``. Raises ValueError for unknown names or an empty selection.

    >>> import torch
    >>> p = {"trunk.w": torch.zeros(2), "gen.w": torch.zeros(3), "und.w": torch.zeros(1)}
    >>> active, frozen = select_params(p, lambda n: n.startswith("trunk"))
    >>> sorted(active), sorted(frozen)
    (['trunk.w'], ['gen.w', 'und.w'])
    """
    if not isinstance(params, Mapping) or len(params) == 0:
        raise ValueError(f"params must be a non-empty dict name -> tensor, got {type(params).__name__}")
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"params[{name!r}] is a {type(value).__name__}, not a tensor")
    if blocks is None:
        chosen = set(params)
    elif callable(blocks):
        chosen = {n for n in params if blocks(n)}
    else:
        names = [blocks] if isinstance(blocks, str) else list(blocks)
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"blocks name unknown parameters {unknown}; known: {sorted(params)}")
        chosen = set(names)
    if not chosen:
        raise ValueError(f"blocks selects no parameter out of {sorted(params)}")
    active = {n: v.detach() for n, v in params.items() if n in chosen}
    frozen = {n: v.detach() for n, v in params.items() if n not in chosen}
    bad = [n for n, v in active.items() if not v.is_floating_point()]
    if bad:
        raise ValueError(f"selected parameters {bad} are not floating point")
    dtypes = {v.dtype for v in active.values()}
    if len(dtypes) > 1:
        raise ValueError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; cast them to one dtype")
    return active, frozen


def param_blocks(params: Params | Iterable[str], **groups: str | Sequence[str]) -> dict[str, list[str]]:
    """Group parameter names into blocks by dotted-name prefix, e.g. shared trunk and heads.

    Each keyword is a block name and a prefix (or a sequence of prefixes); a prefix ``"trunk"``
    matches ``"trunk"`` and ``"trunk.*"`` but not ``"trunk2.*"``. Names that match no group are put
    in a block ``"rest"`` (present only when non-empty). Raises ValueError when a name matches two
    groups or a group matches nothing.

    >>> names = ["trunk.0.weight", "trunk.0.bias", "gen.weight", "und.weight"]
    >>> param_blocks(names, shared="trunk", gen="gen", und=("und",))
    {'shared': ['trunk.0.weight', 'trunk.0.bias'], 'gen': ['gen.weight'], 'und': ['und.weight']}
    """
    names = list(params)
    if not groups:
        raise ValueError("param_blocks needs at least one group, e.g. shared='trunk'")
    if "rest" in groups:
        raise ValueError("'rest' is reserved for the parameters that match no group")
    prefixes = {g: ((p,) if isinstance(p, str) else tuple(p)) for g, p in groups.items()}
    out: dict[str, list[str]] = {g: [] for g in groups}
    rest = []
    for name in names:
        hits = [g for g, ps in prefixes.items() if any(name == p or name.startswith(p + ".") for p in ps)]
        if len(hits) > 1:
            raise ValueError(f"parameter {name!r} matches several groups {hits}")
        (out[hits[0]] if hits else rest).append(name)
    empty = [g for g, ns in out.items() if not ns]
    if empty:
        raise ValueError(f"groups {empty} match no parameter; names: {names}")
    if rest:
        out["rest"] = rest
    return out


# --------------------------------------------------------------------------------------------------
# batches (a batch is a tensor or a tuple/list/dict of tensors stacked on dim 0)


def _leaves(xs: Any, where: str) -> list[tuple[str, torch.Tensor]]:
    # a small walker instead of torch.utils._pytree, which is private API
    if isinstance(xs, torch.Tensor):
        return [(where, xs)]
    if isinstance(xs, (tuple, list)):
        return [leaf for i, x in enumerate(xs) for leaf in _leaves(x, f"{where}[{i}]")]
    if isinstance(xs, Mapping):
        return [leaf for k, x in xs.items() for leaf in _leaves(x, f"{where}[{k!r}]")]
    raise TypeError(f"{where} is a {type(xs).__name__}; batches are tensors or tuples/lists/dicts of tensors")


def _batch_size(xs: Any, where: str) -> int:
    leaves = _leaves(xs, where)
    if not leaves:
        raise ValueError(f"{where} holds no tensor")
    sizes = {}
    for path, t in leaves:
        if t.dim() == 0:
            raise ValueError(f"{path} is a 0-d tensor; batches are stacked on dim 0")
        sizes[path] = t.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{where}: leaves disagree on the batch size (dim 0): {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"{where} is an empty batch")
    return n


def _index(xs: Any, i: int) -> Any:
    if isinstance(xs, torch.Tensor):
        return xs[i]
    if isinstance(xs, (tuple, list)):
        return type(xs)(_index(x, i) for x in xs)
    return {k: _index(x, i) for k, x in xs.items()}


# --------------------------------------------------------------------------------------------------
# the kernel


def _bind(fn: LogitsFn, frozen: dict) -> Callable:
    def f(active, x):
        return fn({**frozen, **active}, x)

    return f


def _out_shape(f: Callable, active: dict, xs: Any, which: str) -> torch.Size:
    """The per-example logits shape, from one cheap call on the first example."""
    with torch.no_grad():
        out = f(active, _index(xs, 0))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{which} returned a {type(out).__name__}, not a tensor of logits")
    if out.dim() == 0:
        raise ValueError(
            f"{which} returned a scalar per example; return logits of shape (V,) or (..., V) "
            "(reshape a scalar to (1,))"
        )
    if out.dtype != next(iter(active.values())).dtype:
        raise ValueError(
            f"{which} returned {out.dtype} logits from {next(iter(active.values())).dtype} parameters"
        )
    return out.shape


def _from_matrix(k2: torch.Tensor, n_a: int, out_a: torch.Size, n_b: int, out_b: torch.Size) -> torch.Tensor:
    """(N_a O_a, N_b O_b) -> (N_a, N_b, *lead_a, *lead_b, V_a, V_b)."""
    ra, rb = len(out_a), len(out_b)
    k = k2.reshape(n_a, *out_a, n_b, *out_b)
    # dims of k: 0 = N_a, 1..ra = out_a, ra+1 = N_b, ra+2..ra+1+rb = out_b
    perm = [0, ra + 1, *range(1, ra), *range(ra + 2, ra + 1 + rb), ra, ra + 1 + rb]
    return k.permute(perm)


def kernel_matrix(kernel: torch.Tensor, out_ndim_a: int = 1) -> torch.Tensor:
    """Flatten an :func:`entk` kernel to the 2-D matrix ``(N_a * O_a, N_b * O_b)``.

    ``out_ndim_a`` is the number of axes of ``fn_a``'s output (1 for ``(V,)``, 2 for ``(M, V)``).
    Rows run over (example, *positions, logit) of side a, columns likewise over side b, so
    ``kernel_matrix(entk(f, f, p, xs, xs))`` is the Gram matrix of all (example, logit) gradients.

    >>> import torch
    >>> k = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)     # (N_a, N_b, V_a, V_b)
    >>> m = kernel_matrix(k)
    >>> m.shape, bool(m[1 * 4 + 2, 0 * 5 + 3] == k[1, 0, 2, 3])
    (torch.Size([8, 15]), True)
    """
    ra = int(out_ndim_a)
    rb = kernel.dim() - 2 - ra
    if ra < 1 or rb < 1:
        raise ValueError(
            f"kernel of {kernel.dim()} axes cannot have out_ndim_a={out_ndim_a} (need 2 + ra + rb, ra, rb >= 1)"
        )
    # source axes: N_a, N_b, lead_a (ra-1), lead_b (rb-1), V_a, V_b
    lead_a = list(range(2, 2 + ra - 1))
    lead_b = list(range(2 + ra - 1, 2 + ra - 1 + rb - 1))
    va, vb = kernel.dim() - 2, kernel.dim() - 1
    k = kernel.permute([0, *lead_a, va, 1, *lead_b, vb])
    rows = math.prod(k.shape[: 1 + ra])
    return k.reshape(rows, -1)


def _jacobians(fn: Callable, active: dict, xs: Any, chunk_size: int | None) -> dict:
    return vmap(jacrev(fn, chunk_size=chunk_size), in_dims=(None, 0))(active, xs)


def _reached(f: Callable, active: dict, x: Any) -> set[str]:
    """Names of the parameters that reach ``f``'s output at all (in the autograd graph of one example).

    The others have an identically zero Jacobian: vmap allows no data-dependent control flow, so the
    graph's structure is the same for every example.
    """
    with torch.enable_grad():
        p = {n: v.detach().requires_grad_(True) for n, v in active.items()}
        out = f(p, x)
        if not out.requires_grad:
            return set()
        grads = torch.autograd.grad(out, list(p.values()), torch.ones_like(out), allow_unused=True)
    return {n for n, g in zip(p, grads) if g is not None}


def _entk_jacobian(f_a, f_b, active, xs_a, xs_b, n_a, n_b, out_a, out_b, same, chunk_size):
    jac_a = _jacobians(f_a, active, xs_a, chunk_size)
    jac_b = jac_a if same else _jacobians(f_b, active, xs_b, chunk_size)
    k2 = _zeros(active, n_a * math.prod(out_a), n_b * math.prod(out_b))
    for n in active:
        k2 += jac_a[n].reshape(k2.shape[0], -1) @ jac_b[n].reshape(k2.shape[1], -1).T
    return _from_matrix(k2, n_a, out_a, n_b, out_b)


def _vjp_jvp_matrix(f_a, f_b, active, xs_a, xs_b, n_a, n_b, out_a, out_b, chunk_size) -> torch.Tensor:
    """The kernel as a matrix ``(N_a O_a, N_b O_b)`` (a transposed view) by vjp/jvp products."""
    o_a, o_b = math.prod(out_a), math.prod(out_b)
    k2 = _zeros(active, n_b * o_b, n_a * o_a)

    def f_a_batch(p):
        return vmap(f_a, in_dims=(None, 0))(p, xs_a)

    def push(t):
        return jvp(f_a_batch, (active,), (t,))[1]

    step = 1 if chunk_size is None else chunk_size
    for start in range(0, n_b, step):
        stop = min(start + step, n_b)
        # the tangents J_b^T e for every logit e of this chunk of side-b examples (vjps, by jacrev),
        # each pushed through side a by one jvp
        tangents = _jacobians(f_b, active, _slice(xs_b, start, stop), None)
        tangents = {n: t.reshape(-1, *active[n].shape) for n, t in tangents.items()}
        k2[start * o_b : stop * o_b] = vmap(push)(tangents).reshape(-1, n_a * o_a)
    return k2.T


def _zeros(active: dict, rows: int, cols: int) -> torch.Tensor:
    ref = next(iter(active.values()))
    return torch.zeros(rows, cols, dtype=ref.dtype, device=ref.device)


def _loop_jacobian(f, active, xs, n, out_shape, which):
    rows = []
    for i in range(n):
        p = {k: v.clone().requires_grad_(True) for k, v in active.items()}
        out = f(p, _index(xs, i))
        if out.shape != out_shape:
            raise ValueError(
                f"{which} returned shape {tuple(out.shape)} for example {i}, {tuple(out_shape)} for example 0"
            )
        flat = out.reshape(-1)
        for o in range(flat.numel()):
            if not flat.requires_grad:  # no selected parameter reaches this output
                rows.append(torch.cat([torch.zeros_like(v).reshape(-1) for v in p.values()]))
                continue
            grads = torch.autograd.grad(flat[o], list(p.values()), retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [(torch.zeros_like(v) if g is None else g).reshape(-1) for g, v in zip(grads, p.values())]
                )
            )
    return torch.stack(rows)


def _entk_loop(f_a, f_b, active, xs_a, xs_b, n_a, n_b, out_a, out_b, same):
    ja = _loop_jacobian(f_a, active, xs_a, n_a, out_a, "fn_a")
    jb = ja if same else _loop_jacobian(f_b, active, xs_b, n_b, out_b, "fn_b")
    return _from_matrix(ja @ jb.T, n_a, out_a, n_b, out_b)


def entk(
    fn_a: LogitsFn,
    fn_b: LogitsFn | None,
    params: Params,
    xs_a: Any,
    xs_b: Any = None,
    *,
    blocks: Blocks = None,
    implementation: Implementation | str = Implementation.JACOBIAN,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The full empirical NTK ``K(a, b) = J_a J_b^T`` between two batches of logits.

    ``fn_a(params, x)`` gives the logits ``(*lead_a, V_a)`` of one example of ``xs_a`` (``fn_b``
    likewise for ``xs_b``; ``None`` reuses ``fn_a``/``xs_a``). Returns
    ``(N_a, N_b, *lead_a, *lead_b, V_a, V_b)``: ``(N_a, N_b, V_a, V_b)`` for ``(V,)`` logits. Nothing is
    traced or averaged. ``blocks`` restricts the sum over parameters (names or a predicate); the rest
    is held fixed. ``implementation``: see :class:`Implementation` (all agree to rounding).
    ``chunk_size`` bounds memory: for ``"vjp_jvp"`` the side-b examples processed at once (default 1),
    for ``"jacobian"`` the output basis vectors per backward batch (default all), for
    ``"structured"`` the examples per side whose cotangents are held at once (default: as many as
    fit in about 1 GiB). ``"auto"`` picks by the cost model of :class:`Implementation`
    (:func:`plan_entk` says which). The result carries no graph. Raises ValueError/TypeError on bad
    input before any Jacobian is formed.

    Shapes: ``params`` dict name -> tensor; ``xs_a`` ``(N_a, ...)``; ``xs_b`` ``(N_b, ...)``.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> p = {"trunk": torch.randn(5, 3, generator=g, dtype=torch.float64),
    ...      "gen": torch.randn(4, 5, generator=g, dtype=torch.float64),
    ...      "und": torch.randn(2, 5, generator=g, dtype=torch.float64)}
    >>> gen = lambda p, x: p["gen"] @ torch.tanh(p["trunk"] @ x)     # (V_a,) = (4,)
    >>> und = lambda p, x: p["und"] @ torch.tanh(p["trunk"] @ x)     # (V_b,) = (2,)
    >>> x = torch.randn(3, 3, generator=g, dtype=torch.float64)
    >>> k = entk(gen, und, p, x, x[:2])
    >>> k.shape
    torch.Size([3, 2, 4, 2])
    >>> k_shared = entk(gen, und, p, x, x[:2], blocks=["trunk"])   # only the shared trunk couples them
    >>> torch.allclose(k, k_shared)
    True
    >>> torch.allclose(k, entk(gen, und, p, x, x[:2], implementation="vjp_jvp"))
    True
    """
    impl = _implementation(implementation)
    call = _prepare(fn_a, fn_b, params, xs_a, xs_b, blocks, chunk_size)
    if impl is Implementation.LOOP:
        with torch.enable_grad():
            return _entk_loop(*call.loop_args())
    call.prune()
    if not call.active:
        return call.kernel(_zeros(call.params_ref, call.rows, call.cols))
    with torch.no_grad():
        plan = sides = None
        if impl is Implementation.AUTO:
            impl, plan, _, sides, _ = _auto(call)
        elif impl is Implementation.STRUCTURED:
            sides, note = call.trace()
            if sides is None:
                warnings.warn(
                    f"structured eNTK: fn could not be traced ({note}); using vjp_jvp instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
                impl = Implementation.VJP_JVP
            else:
                plan = _structured.make_plan(*sides, call.active, call.same)
        if impl is Implementation.STRUCTURED:
            try:
                k2 = _structured.structured_matrix(
                    *sides, call.active, plan, call.same, chunk_size, call.vjp_jvp_on
                )
                return call.kernel(k2)
            except _structured.TraceError as err:
                raise ValueError(f"structured eNTK: {err}") from None
            except _structured.GraphRunError as err:
                warnings.warn(
                    f"structured eNTK: the traced graph of fn could not be differentiated ({err}); "
                    "using vjp_jvp instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
                impl = Implementation.VJP_JVP
        if impl is Implementation.JACOBIAN:
            return _entk_jacobian(*call.func_args(), call.same, chunk_size)
        return call.kernel(_vjp_jvp_matrix(*call.func_args(), chunk_size))


class _Call:
    """The checked arguments of one :func:`entk` call."""

    def __init__(self, fn_a, fn_b, params, xs_a, xs_b, blocks, chunk_size) -> None:
        same = fn_b is None or fn_b is fn_a
        self.same = same and (xs_b is None or xs_b is xs_a)
        self.fn_a = fn_a
        self.fn_b = fn_a if fn_b is None else fn_b
        self.xs_a = xs_a
        self.xs_b = xs_a if xs_b is None else xs_b
        if not callable(self.fn_a) or not callable(self.fn_b):
            raise TypeError("fn_a and fn_b must be callables fn(params, x) -> logits")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.n_a = _batch_size(self.xs_a, "xs_a")
        self.n_b = _batch_size(self.xs_b, "xs_b")
        self.active, self.frozen = select_params(params, blocks)
        self.params_ref = dict(self.active)
        self._bind()
        self.out_a = _out_shape(self.f_a, self.active, self.xs_a, "fn_a")
        self.out_b = self.out_a if self.same else _out_shape(self.f_b, self.active, self.xs_b, "fn_b")
        self.o_a, self.o_b = math.prod(self.out_a), math.prod(self.out_b)
        self.rows, self.cols = self.n_a * self.o_a, self.n_b * self.o_b

    def _bind(self) -> None:
        self.f_a, self.f_b = _bind(self.fn_a, self.frozen), _bind(self.fn_b, self.frozen)

    def loop_args(self) -> tuple:
        return (
            self.f_a,
            self.f_b,
            self.active,
            self.xs_a,
            self.xs_b,
            self.n_a,
            self.n_b,
            self.out_a,
            self.out_b,
            self.same,
        )

    def func_args(self) -> tuple:
        return self.loop_args()[:-1]

    def prune(self) -> None:
        """Drop the parameters that one side never reaches (they contribute zero)."""
        live = _reached(self.f_a, self.active, _index(self.xs_a, 0))
        if not self.same:
            live &= _reached(self.f_b, self.active, _index(self.xs_b, 0))
        self.frozen = {**self.frozen, **{n: v for n, v in self.active.items() if n not in live}}
        self.active = {n: v for n, v in self.active.items() if n in live}
        self._bind()

    def kernel(self, k2: torch.Tensor) -> torch.Tensor:
        return _from_matrix(k2, self.n_a, self.out_a, self.n_b, self.out_b)

    def trace(self) -> tuple[tuple | None, str]:
        """Both sides traced for the structured implementation, or None and the reason."""
        try:
            a = _structured.Side(
                self.f_a,
                self.xs_a,
                self.n_a,
                self.o_a,
                _structured.trace(self.f_a, self.active, _index(self.xs_a, 0)),
            )
            if self.same:
                b = a
            elif self.fn_b is self.fn_a and _structured.same_structure(self.xs_a, self.xs_b):
                b = _structured.Side(self.f_b, self.xs_b, self.n_b, self.o_b, a.traced)  # one graph
            else:
                b = _structured.Side(
                    self.f_b,
                    self.xs_b,
                    self.n_b,
                    self.o_b,
                    _structured.trace(self.f_b, self.active, _index(self.xs_b, 0)),
                )
        except _structured.TraceError as err:
            return None, str(err)
        return (a, b), ""

    def vjp_jvp_on(self, names: list[str]) -> torch.Tensor:
        """The kernel matrix over the parameters ``names`` only, by vjp/jvp."""
        sub = {n: self.active[n] for n in names}
        frozen = {**self.frozen, **{n: v for n, v in self.active.items() if n not in sub}}
        f_a, f_b = _bind(self.fn_a, frozen), _bind(self.fn_b, frozen)
        return _vjp_jvp_matrix(
            f_a, f_b, sub, self.xs_a, self.xs_b, self.n_a, self.n_b, self.out_a, self.out_b, None
        )


def _prepare(fn_a, fn_b, params, xs_a, xs_b, blocks, chunk_size) -> _Call:
    return _Call(fn_a, fn_b, params, xs_a, xs_b, blocks, chunk_size)


def _auto(call: _Call):
    """``(implementation, plan, costs, sides, note)`` for ``"auto"``: ``fn`` is traced only when the
    untraced estimates of the other implementations exceed the price of tracing."""
    impl, plan, costs = _choose(call, None)
    if min(costs.values()) < _structured.TRACE_FIXED_MACS:
        return impl, plan, costs, None, "not traced: the problem is smaller than the price of tracing"
    sides, note = call.trace()
    impl, plan, costs = _choose(call, sides)
    return impl, plan, costs, sides, note


def _choose(call: _Call, sides: tuple | None):
    """``(implementation, structured plan or None, estimated multiply-adds per implementation)``."""
    n_p = sum(v.numel() for v in call.active.values())
    if sides is None:  # no graph: a dense net on one position, F ~ P, a few ops per parameter tensor
        macs_a = macs_b = float(n_p)
        ops = 4 * len(call.active)
    else:
        macs_a, macs_b = sides[0].traced.macs, sides[1].traced.macs
        ops = max(sides[0].traced.ops, sides[1].traced.ops)
    costs = {
        Implementation.JACOBIAN: _structured.jacobian_cost(
            call.rows, call.cols, n_p, macs_a, macs_b, ops, call.same
        )
    }
    if 8 * (call.rows + (0 if call.same else call.cols)) * n_p > JACOBIAN_MEMORY_LIMIT_BYTES:
        costs[Implementation.JACOBIAN] = math.inf
    costs[Implementation.VJP_JVP] = _structured.vjp_jvp_cost(
        call.n_a, call.n_b, call.o_b, macs_a, macs_b, ops
    )
    plan = None
    costs[Implementation.STRUCTURED] = math.inf
    if sides is not None:
        plan = _structured.make_plan(*sides, call.active, call.same)
        costs[Implementation.STRUCTURED] = plan.cost
    # once fn is traced, the tracing is paid whatever is chosen
    sunk = {Implementation.STRUCTURED: plan.parts["tracing"]} if plan is not None else {}
    best = min(costs, key=lambda k: costs[k] - sunk.get(k, 0.0))
    return best, plan, costs


@dataclass(frozen=True)
class EntkPlan:
    """What ``implementation="auto"`` does for one call (from :func:`plan_entk`).

    ``implementation``: the chosen one; ``costs``: the estimated multiply-adds of each candidate
    (``inf`` where not applicable); ``modes``: for the structured implementation, per parameter
    ``"gram"`` (Gram contraction of layer inputs and output cotangents), ``"dense"`` (its own
    Jacobian, contracted) or ``"vjp_jvp"`` (the fall-back); ``note``: why ``fn`` could not be
    traced, if it could not.
    """

    implementation: Implementation
    costs: dict[str, float]
    modes: dict[str, str]
    note: str = ""

    def summary(self) -> str:
        """One line: the choice and the estimated costs, e.g. for a benchmark's report."""
        costs = ", ".join(f"{k} {v:.3g}" for k, v in self.costs.items())
        counts = {m: sum(1 for v in self.modes.values() if v == m) for m in sorted(set(self.modes.values()))}
        modes = f"; structured parameters: {counts}" if counts else ""
        note = f"; not traced: {self.note}" if self.note else ""
        return f"auto -> {self.implementation.value} (estimated multiply-adds: {costs}{modes}{note})"


def plan_entk(
    fn_a: LogitsFn,
    fn_b: LogitsFn | None,
    params: Params,
    xs_a: Any,
    xs_b: Any = None,
    *,
    blocks: Blocks = None,
    implementation: Implementation | str = Implementation.AUTO,
) -> EntkPlan:
    """What :func:`entk` would do, and why, without computing the kernel (see
    :class:`Implementation` for the cost model).

    ``implementation="auto"``: the implementation it picks (``fn`` is traced only if the problem is
    larger than the price of tracing). ``implementation="structured"``: ``fn`` is traced and the
    plan's per-parameter ``modes`` are given (``vjp_jvp`` is reported if ``fn`` cannot be traced).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> p = {"w1": torch.randn(64, 8, generator=g, dtype=torch.float64),
    ...      "b1": torch.randn(64, generator=g, dtype=torch.float64),
    ...      "w2": torch.randn(16, 64, generator=g, dtype=torch.float64)}
    >>> fn = lambda p, x: p["w2"] @ torch.tanh(p["w1"] @ x + p["b1"])
    >>> xs = torch.randn(8, 8, generator=g, dtype=torch.float64)
    >>> plan_entk(fn, None, p, xs, implementation="structured").modes
    {'w1': 'gram', 'b1': 'gram', 'w2': 'gram'}
    >>> plan_entk(fn, None, p, xs[:2]).implementation.value   # too small to be worth tracing
    'jacobian'
    """
    impl = _implementation(implementation)
    if impl not in (Implementation.AUTO, Implementation.STRUCTURED):
        raise ValueError(f"plan_entk: implementation must be 'auto' or 'structured', got {implementation!r}")
    call = _prepare(fn_a, fn_b, params, xs_a, xs_b, blocks, None)
    call.prune()
    if not call.active:
        return EntkPlan(Implementation.JACOBIAN, {}, {}, "no selected parameter reaches both sides")
    with torch.no_grad():
        if impl is Implementation.AUTO:
            impl, plan, costs, _, note = _auto(call)
        else:
            sides, note = call.trace()
            impl, plan, costs = _choose(call, sides)
            impl = Implementation.STRUCTURED if sides is not None else Implementation.VJP_JVP
    return EntkPlan(impl, {k.value: v for k, v in costs.items()}, dict(plan.modes) if plan else {}, note)


def _implementation(implementation: Implementation | str) -> Implementation:
    try:
        return Implementation(implementation)
    except ValueError:
        choices = [i.value for i in Implementation]
        raise ValueError(f"implementation {implementation!r} is not one of {choices}") from None


def entk_fn(
    fn_a: LogitsFn,
    fn_b: LogitsFn | None = None,
    *,
    blocks: Blocks = None,
    implementation: Implementation | str = Implementation.JACOBIAN,
    chunk_size: int | None = None,
) -> Callable[..., torch.Tensor]:
    """A function ``ntk(params, xs_a, xs_b=None)`` computing :func:`entk` with these settings.

    >>> import torch
    >>> ntk = entk_fn(lambda p, h: p["W"] @ h, implementation="loop")
    >>> p = {"W": torch.ones(2, 3, dtype=torch.float64)}
    >>> ntk(p, torch.eye(3, dtype=torch.float64))[0, 0]          # <h_0, h_0> I
    tensor([[1., 0.],
            [0., 1.]], dtype=torch.float64)
    """
    impl = _implementation(implementation)

    def ntk(params: Params, xs_a: Any, xs_b: Any = None) -> torch.Tensor:
        return entk(fn_a, fn_b, params, xs_a, xs_b, blocks=blocks, implementation=impl, chunk_size=chunk_size)

    return ntk


def entk_blocks(
    fn_a: LogitsFn,
    fn_b: LogitsFn | None,
    params: Params,
    xs_a: Any,
    xs_b: Any = None,
    *,
    blocks: Mapping[str, Blocks],
    implementation: Implementation | str = Implementation.JACOBIAN,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """One :func:`entk` per named block (e.g. from :func:`param_blocks`), plus their sum ``"all"``.

    The blocks should partition the parameters for ``"all"`` to be the full kernel; the full kernel
    is the sum of the block kernels because ``J J^T`` sums over parameters.

    >>> import torch
    >>> p = {"trunk": torch.full((2, 2), 0.5, dtype=torch.float64), "head": torch.ones(3, 2, dtype=torch.float64)}
    >>> f = lambda p, x: p["head"] @ torch.tanh(p["trunk"] @ x)
    >>> ks = entk_blocks(f, f, p, torch.eye(2, dtype=torch.float64), blocks={"shared": ["trunk"], "head": ["head"]})
    >>> sorted(ks), torch.allclose(ks["all"], entk(f, f, p, torch.eye(2, dtype=torch.float64)))
    (['all', 'head', 'shared'], True)
    """
    if "all" in blocks:
        raise ValueError("the block name 'all' is reserved for the sum over blocks")
    if not blocks:
        raise ValueError("blocks must name at least one block")
    out = {
        name: entk(
            fn_a, fn_b, params, xs_a, xs_b, blocks=sel, implementation=implementation, chunk_size=chunk_size
        )
        for name, sel in blocks.items()
    }
    out["all"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------------------
# first-order probes and plain SGD


def grad_inner_product(
    f_o: Callable[[Params], torch.Tensor],
    f_u: Callable[[Params], torch.Tensor],
    params: Params,
    *,
    lr: float = 1.0,
    blocks: Blocks = None,
) -> torch.Tensor:
    """``lr * <grad f_o, grad f_u>`` over the selected parameters: a first-order probe.

    With ``f_o = log pi(o)`` and ``f_u = log pi(u)`` this is the predicted change of ``log pi(o)``
    after one plain-SGD step of size ``lr`` that maximises ``log pi(u)`` (SFT on ``u``), restricted to
    the ``blocks`` that the step updates: ``Delta log pi(o) = lr <g_o, g_u> + O(lr^2)``. For a step on a
    general loss ``L``, pass ``f_u = -L``. ``f_u`` must return a scalar; ``f_o`` may return any shape
    (several probes at once), and so does the result. One backward pass for ``f_u``, one per probe
    entry for ``f_o`` (vmapped).

    >>> import torch
    >>> p = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    >>> f_o = lambda p: p["w"] @ torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> f_u = lambda p: p["w"] @ torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> grad_inner_product(f_o, f_u, p, lr=0.1)
    tensor(0.3000, dtype=torch.float64)
    """
    active, frozen = select_params(params, blocks)

    def bound(f):
        return lambda p: f({**frozen, **p})

    with torch.no_grad():
        out_u, pull_u = vjp(bound(f_u), active)
        if out_u.dim() != 0:
            raise ValueError(f"f_u must return a scalar, got shape {tuple(out_u.shape)}")
        (g_u,) = pull_u(torch.ones_like(out_u))
        out_o, pull_o = vjp(bound(f_o), active)
        if out_o.dim() == 0:
            (g_o,) = pull_o(torch.ones_like(out_o))
            g_o = {k: v.unsqueeze(0) for k, v in g_o.items()}
        else:
            basis = torch.eye(out_o.numel(), dtype=out_o.dtype, device=out_o.device).reshape(-1, *out_o.shape)
            (g_o,) = vmap(pull_o)(basis)
        total = sum(g_o[k].reshape(g_o[k].shape[0], -1) @ g_u[k].reshape(-1) for k in active)
    return lr * total.reshape(out_o.shape)


def first_order_probe(
    logprob_o_fn: Callable[[], torch.Tensor],
    logprob_u_fn: Callable[[], torch.Tensor],
    parameters: Iterable[torch.Tensor],
    *,
    lr: float = 1.0,
) -> torch.Tensor:
    """Module form of :func:`grad_inner_product`: ``lr * <grad log pi(o), grad log pi(u)>``.

    ``logprob_o_fn()`` and ``logprob_u_fn()`` run the model (an ``nn.Module`` in their closure) and
    return ``log pi(o)`` (any shape: one entry per probe) and the scalar objective the SGD step
    maximises (``log pi(u)`` for SFT on ``u``; ``-loss`` in general). ``parameters`` is the subset the
    step updates (e.g. the shared LLM trunk); gradients are taken by plain ``torch.autograd.grad``
    (one backward for ``u``, one per probe entry), so no forward-mode AD or vmap is needed and large
    models work. Dot products accumulate in float64; the result is float64 without a graph, shaped
    like ``logprob_o_fn()``. Parameters that do not reach an objective contribute zero.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 3, bias=False, dtype=torch.float64)
    >>> _ = torch.nn.init.constant_(lin.weight, 0.1)
    >>> h_o = torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> h_u = torch.tensor([2.0, 1.0], dtype=torch.float64)
    >>> lp = lambda h, y: torch.log_softmax(lin(h), -1)[y]
    >>> first_order_probe(lambda: lp(h_o, 0), lambda: lp(h_u, 0), lin.parameters(), lr=0.5)
    tensor(0.6667, dtype=torch.float64)
    """
    parameters = list(parameters)
    if not parameters:
        raise ValueError("parameters is empty: pass the parameters the SGD step updates")
    for i, p in enumerate(parameters):
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError(
                f"parameters[{i}] (shape {tuple(getattr(p, 'shape', ()))}) does not require grad"
            )
    if len({id(p) for p in parameters}) != len(parameters):
        raise ValueError("parameters lists a tensor twice")

    def grads(out, which, retain):
        if not out.requires_grad:
            raise ValueError(f"{which} returned a tensor with no gradient path to the parameters")
        return torch.autograd.grad(out, parameters, retain_graph=retain, allow_unused=True)

    with torch.enable_grad():
        out_u = logprob_u_fn()
        if not isinstance(out_u, torch.Tensor) or out_u.dim() != 0:
            raise ValueError(
                f"logprob_u_fn() must return a scalar tensor, got {getattr(out_u, 'shape', out_u)}"
            )
        g_u = grads(out_u, "logprob_u_fn()", retain=False)
        del out_u
        out_o = logprob_o_fn()
        if not isinstance(out_o, torch.Tensor):
            raise TypeError(f"logprob_o_fn() must return a tensor, got {type(out_o).__name__}")
        flat = out_o.reshape(-1)
        values = []
        for i in range(flat.numel()):
            g_o = grads(flat[i], "logprob_o_fn()", retain=i + 1 < flat.numel())
            dot = torch.zeros((), dtype=torch.float64, device=flat.device)
            for a, b in zip(g_o, g_u):
                if a is not None and b is not None:
                    dot = dot + torch.dot(a.detach().reshape(-1).double(), b.reshape(-1).double())
            values.append(dot)
    return lr * torch.stack(values).reshape(out_o.shape)


def sgd_step(
    params: Params,
    loss_fn: Callable[[Params], torch.Tensor],
    lr: float,
    *,
    blocks: Blocks = None,
) -> dict[str, torch.Tensor]:
    """One plain-SGD step ``theta - lr * grad loss_fn(theta)`` on the selected parameters.

    Returns a new dict (parameters outside ``blocks`` unchanged, all detached); ``loss_fn(params)``
    must return a scalar. This is the setting of the first-order theory (not Adam).

    >>> import torch
    >>> p = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64), "b": torch.tensor(3.0, dtype=torch.float64)}
    >>> new = sgd_step(p, lambda p: (p["w"] ** 2).sum() + p["b"], lr=0.25, blocks=["w"])
    >>> new["w"], new["b"]
    (tensor([ 0.5000, -1.0000], dtype=torch.float64), tensor(3., dtype=torch.float64))
    """
    active, frozen = select_params(params, blocks)
    with torch.no_grad():
        loss, pull = vjp(lambda p: loss_fn({**frozen, **p}), active)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        if not torch.isfinite(loss):
            raise ValueError(f"loss_fn returned a non-finite loss {loss.item()}")
        (grads,) = pull(torch.ones_like(loss))
    new = {n: v.detach() for n, v in params.items()}
    new.update({n: active[n] - lr * grads[n] for n in active})
    return new

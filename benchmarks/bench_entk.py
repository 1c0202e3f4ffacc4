"""Benchmark: the eNTK implementations side by side, on three networks, against the per-logit loop.

Implementations (:class:`dynamics.kernels.Implementation`): the reference ``loop`` (one
``torch.autograd.grad`` per example and logit, then one matrix product of the stacked gradients),
``jacobian`` (vmapped Jacobians, contracted), ``vjp_jvp`` (NTK-vector products), ``structured``
(structured derivatives: layer-input Grams times output-cotangent Grams) and ``auto`` (the cheapest
by the cost model; the line ``auto -> ...`` says which it picked and why). All in float64 on the
full kernel, nothing traced or averaged.

Networks:

- (a) the script's own: a tanh MLP trunk with biases and two heads (generation, understanding); the
  kernel is the cross-branch block ``K(und probes, gen examples)``, ``(N, N, V, V)``;
- (b) the network of the eNTK issue: a two-layer tanh MLP without biases (input 32, width 256, 64
  logits), 32 x 32 examples;
- (c) the toy Llama (:mod:`dynamics.toy.model`, default config, 4 layers, width 64) on random token
  sequences, logits of the last position over its own vocabulary (tied embeddings), N x N sequences.

A fourth part checks memory: the full kernel of 128 x 128 examples with V = 64 on a two-head MLP of
about 1M parameters by ``structured`` (and ``auto``), in a fresh process, with its peak resident
memory (the kernel alone is 0.5 GB).

    python benchmarks/bench_entk.py              # everything (a few minutes on one core)
    python benchmarks/bench_entk.py --quick      # a seconds-long smoke run at tiny sizes
    python benchmarks/bench_entk.py --no-memory  # skip the 128 x 128 memory check

Targets: ``structured`` >= 5x faster than ``vjp_jvp`` on (b); the fastest torch.func implementation
>= 50x faster than the loop on (a); peak memory of the 128 x 128 check < 4 GB; every reverse-mode
implementation within 1e-10 (relative to the kernel's largest entry) of the loop. The script exits
with status 1 if an accuracy target is missed (a correctness failure); missed speed or memory
targets are printed, not fatal, since they depend on the machine.

``vjp_jvp`` differentiates in forward mode: on (c), transformers' RMSNorm computes in float32 inside
the float64 model and rounds the tangents there, so it is held to 1e-6 instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from dynamics.kernels import entk, param_blocks, plan_entk

SPEED_TARGET = 50.0  # loop / fastest torch.func on (a)
STRUCTURED_TARGET = 5.0  # vjp_jvp / structured on (b)
MEMORY_TARGET_GB = 4.0
DIFF_TARGET = 1e-10
DIFF_FORWARD_MODE_LOW_PRECISION = 1e-6  # vjp_jvp on (c): float32 inside RMSNorm
IMPLS = ("loop", "jacobian", "vjp_jvp", "structured", "auto")


# --------------------------------------------------------------------------------------------------
# (a) and the memory check: a two-head MLP


def make_two_head_mlp(
    *, in_dim: int, width: int, depth: int, vocab: int, seed: int, bias: bool = True
) -> dict[str, torch.Tensor]:
    """Float64 parameters of a tanh MLP trunk (``depth`` hidden layers of ``width``) and two linear heads."""
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim] + [width] * depth
    params = {}
    for i in range(depth):
        params[f"trunk.{i}.weight"] = (
            torch.randn(dims[i + 1], dims[i], generator=g, dtype=torch.float64) / dims[i] ** 0.5
        )
        if bias:
            params[f"trunk.{i}.bias"] = 0.1 * torch.randn(dims[i + 1], generator=g, dtype=torch.float64)
    for head in ("gen", "und"):
        params[f"{head}.weight"] = torch.randn(vocab, width, generator=g, dtype=torch.float64) / width**0.5
        if bias:
            params[f"{head}.bias"] = 0.1 * torch.randn(vocab, generator=g, dtype=torch.float64)
    return params


def _trunk(p: dict, x: torch.Tensor) -> torch.Tensor:
    i = 0
    while f"trunk.{i}.weight" in p:
        x = p[f"trunk.{i}.weight"] @ x
        if f"trunk.{i}.bias" in p:
            x = x + p[f"trunk.{i}.bias"]
        x = torch.tanh(x)
        i += 1
    return x


def _head(p: dict, name: str, h: torch.Tensor) -> torch.Tensor:
    z = p[f"{name}.weight"] @ h
    return z + p[f"{name}.bias"] if f"{name}.bias" in p else z


def gen_logits(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Generation-head logits ``(V,)`` of one input ``(in_dim,)``."""
    return _head(p, "gen", _trunk(p, x))


def und_logits(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Understanding-head logits ``(V,)`` of one input ``(in_dim,)``."""
    return _head(p, "und", _trunk(p, x))


# --------------------------------------------------------------------------------------------------
# the three cases


def case_a(args) -> dict:
    params = make_two_head_mlp(
        in_dim=args.in_dim, width=args.width, depth=args.depth, vocab=args.vocab, seed=args.seed
    )
    blocks = (
        None if args.blocks == "all" else param_blocks(params, shared="trunk", gen="gen", und="und")["shared"]
    )
    g = torch.Generator().manual_seed(args.seed + 1)
    x_und = torch.randn(args.n, args.in_dim, generator=g, dtype=torch.float64)
    x_gen = torch.randn(args.n, args.in_dim, generator=g, dtype=torch.float64)
    n_params = sum(v.numel() for v in params.values())
    return {
        "title": (
            f"(a) two-head MLP: in {args.in_dim}, width {args.width}, depth {args.depth}, V {args.vocab}, biases, "
            f"{n_params} parameters; K(und, gen) over {args.blocks} parameters, {args.n} x {args.n} examples"
        ),
        "call": (und_logits, gen_logits, params, x_und, x_gen, blocks),
        "tol": {},
    }


def case_b(args) -> dict:
    g = torch.Generator().manual_seed(args.seed + 2)
    d_in, width, vocab, n = (8, 32, 8, 4) if args.quick else (32, 256, 64, 32)
    params = {
        "w1": torch.randn(width, d_in, generator=g, dtype=torch.float64) / d_in**0.5,
        "w2": torch.randn(vocab, width, generator=g, dtype=torch.float64) / width**0.5,
    }

    def fn(p, x):
        return p["w2"] @ torch.tanh(p["w1"] @ x)

    xs_a = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    xs_b = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    return {
        "title": (
            f"(b) the issue's network: two-layer tanh MLP, no biases, input {d_in}, width {width}, {vocab} "
            f"logits; {n} x {n} examples"
        ),
        "call": (fn, fn, params, xs_a, xs_b, None),
        "tol": {},
    }


def case_c(args) -> dict:
    from dynamics.toy.model import ToyConfig, ToyModel

    config = ToyConfig.preset("tiny") if args.quick else ToyConfig()
    trunk = ToyModel(config, seed=args.seed).to(torch.float64).trunk
    params = {n: v.detach() for n, v in trunk.named_parameters()}

    def fn(p, ids):  # (L,) token ids -> (V,) logits of the last position, tied head
        h = torch.func.functional_call(trunk, p, (), {"input_ids": ids[None]}).last_hidden_state[0, -1]
        return h @ p["embed_tokens.weight"].T

    n, length = (2, 4) if args.quick else (args.toy_n, args.toy_len)
    vocab, pad = trunk.config.vocab_size, trunk.config.pad_token_id
    g = torch.Generator().manual_seed(args.seed + 3)
    xs_a, xs_b = (torch.randint(0, vocab - 1, (n, length), generator=g) for _ in range(2))
    xs_a, xs_b = xs_a + (xs_a >= pad).long(), xs_b + (xs_b >= pad).long()  # no padding token
    n_params = sum(v.numel() for v in params.values())
    return {
        "title": (
            f"(c) toy Llama ({config.layers} layers, width {config.hidden}, {n_params} parameters), last-position "
            f"logits over its vocabulary V {vocab}; {n} x {n} sequences of {length} tokens"
        ),
        "call": (fn, fn, params, xs_a, xs_b, None),
        "tol": {"vjp_jvp": DIFF_FORWARD_MODE_LOW_PRECISION},
    }


def _timed(fn, repeats: int, budget_s: float = 20.0) -> tuple[float, torch.Tensor]:
    """Best of ``repeats`` runs (fewer once ``budget_s`` seconds are spent; at least one): the
    minimum is the time least disturbed by other work on the machine."""
    best, out, spent = float("inf"), None, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return best, out


def run_case(case: dict, repeats: int) -> dict:
    fn_a, fn_b, params, xs_a, xs_b, blocks = case["call"]

    def run(impl, a=xs_a, b=xs_b):
        return lambda: entk(fn_a, fn_b, params, a, b, blocks=blocks, implementation=impl)

    for impl in IMPLS:  # warm-up on a few examples (one-off set-up costs of torch.func and tracing)
        run(impl, xs_a[:2], xs_b[:2])()
    times, diffs = {}, {}
    times["loop"], k_loop = _timed(run("loop"), 1)
    scale = max(1.0, k_loop.abs().max().item())
    for impl in IMPLS[1:]:
        times[impl], k = _timed(run(impl), repeats)
        diffs[impl] = (k - k_loop).abs().max().item() / scale
    plan = plan_entk(fn_a, fn_b, params, xs_a, xs_b, blocks=blocks)
    return {"times": times, "diffs": diffs, "plan": plan, "shape": tuple(k_loop.shape), "scale": scale}


# --------------------------------------------------------------------------------------------------
# memory: 128 x 128 examples, V = 64, ~1M parameters, in a fresh process


def _status_gb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc; the peak
    of ``getrusage`` is not used because a child process can inherit its parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def memory_child(args) -> None:
    torch.set_num_threads(args.threads)
    width, depth, n, vocab, in_dim = (64, 2, 16, 8, 8) if args.quick else (960, 2, 128, 64, 64)
    params = make_two_head_mlp(in_dim=in_dim, width=width, depth=depth, vocab=vocab, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed + 4)
    x_und = torch.randn(n, in_dim, generator=g, dtype=torch.float64)
    x_gen = torch.randn(n, in_dim, generator=g, dtype=torch.float64)
    entk(und_logits, gen_logits, params, x_und[:2], x_gen[:2], implementation="structured")  # warm-up
    base = _status_gb("VmRSS")
    out = {"params": sum(v.numel() for v in params.values()), "n": n, "vocab": vocab, "base_gb": base}
    for impl in ("structured", "auto"):
        start = time.perf_counter()
        k = entk(und_logits, gen_logits, params, x_und, x_gen, implementation=impl)
        out[f"{impl}_s"] = time.perf_counter() - start
        out["kernel_gb"] = k.numel() * k.element_size() / 2**30
        del k
    out["auto"] = plan_entk(und_logits, gen_logits, params, x_und, x_gen).implementation.value
    out["peak_gb"] = _status_gb("VmHWM")
    print(json.dumps(out))


def memory_check(args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory check failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=256, help="(a) trunk width (default 256)")
    parser.add_argument("--depth", type=int, default=1, help="(a) hidden layers in the trunk (default 1)")
    parser.add_argument("--in-dim", type=int, default=32, help="(a) input dimension (default 32)")
    parser.add_argument("--vocab", type=int, default=64, help="(a) logits per head, V (default 64)")
    parser.add_argument("--n", type=int, default=32, help="(a) examples per side: N x N pairs (default 32)")
    parser.add_argument(
        "--blocks",
        choices=["all", "shared"],
        default="all",
        help="(a) parameters summed over: all, or the shared trunk only (default all)",
    )
    parser.add_argument("--toy-n", type=int, default=8, help="(c) sequences per side (default 8)")
    parser.add_argument("--toy-len", type=int, default=12, help="(c) tokens per sequence (default 12)")
    parser.add_argument("--cases", default="abc", help="which of the cases a, b, c to run (default abc)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed repeats of the torch.func runs, best kept (fewer past 20 s per implementation; default 5)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the 128 x 128 memory check")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes for a smoke test (width 32, V 8, N 4; tiny toy Llama)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.vocab, args.n, args.in_dim, args.repeats = 32, 8, 4, 8, 1
    for name in ("width", "depth", "in_dim", "vocab", "n", "repeats", "threads", "toy_n", "toy_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.cases or set(args.cases) - set("abc"):
        parser.error(f"--cases must be letters out of 'abc', got {args.cases!r}")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0

    builders = {"a": case_a, "b": case_b, "c": case_c}
    results, ok = {}, True
    print(
        f"float64, {args.threads} thread(s); times in seconds, best of up to {args.repeats} runs (loop: one run)"
    )
    if args.quick:
        print("--quick: tiny sizes for a smoke test; the speed targets are meant for the full sizes")
    for key in sorted(set(args.cases)):
        case = builders[key](args)
        print(case["title"])
        res = run_case(case, args.repeats)
        res["tol"] = case["tol"]
        results[key] = res
        print(f"    kernel {res['shape']}, max |K| {res['scale']:.3g}; {res['plan'].summary()}")

    keys = sorted(results)
    print()
    print(
        f"{'implementation':<18}"
        + "".join(f"{'(' + k + ') time':>12}{'vs loop':>9}{'diff':>10}" for k in keys)
    )
    for impl in IMPLS:
        name = "loop (reference)" if impl == "loop" else f"torch.func {impl}" if impl != "auto" else "auto"
        row = f"{name:<18}"
        for k in keys:
            r = results[k]
            t = r["times"][impl]
            diff = r["diffs"].get(impl, 0.0)
            row += f"{t:>12.3f}{r['times']['loop'] / t:>8.1f}x{diff:>10.1e}"
        print(row)
    for k in keys:
        print(f"auto on ({k}): {results[k]['plan'].implementation.value}")

    worst = 0.0
    for k in keys:
        r = results[k]
        for impl, d in r["diffs"].items():
            tol = r["tol"].get(impl, DIFF_TARGET)
            if impl == "auto":
                tol = r["tol"].get(r["plan"].implementation.value, DIFF_TARGET)
            if d > tol:
                ok = False
                print(
                    f"accuracy MISSED: {impl} on ({k}) differs from the loop by {d:.2e} (relative; target {tol:.0e})"
                )
            if tol == DIFF_TARGET:
                worst = max(worst, d)
    print(
        f"max abs difference: {worst:.2e}  (relative to max |K|, reverse mode; target <= {DIFF_TARGET:.0e}: "
        f"{'met' if worst <= DIFF_TARGET else 'MISSED'})"
    )
    if "c" in results and "vjp_jvp" in results["c"]["diffs"]:
        print(
            f"  vjp_jvp on (c): {results['c']['diffs']['vjp_jvp']:.1e} (forward mode through transformers' "
            f"float32 RMSNorm; held to {DIFF_FORWARD_MODE_LOW_PRECISION:.0e})"
        )
    if "a" in results:
        t = results["a"]["times"]
        best = min(t[i] for i in IMPLS[1:])
        fastest = min(IMPLS[1:], key=lambda i: t[i])
        ratio = t["loop"] / best
        print(
            f"speed ratio (loop / fastest torch.func): {ratio:.1f}x on (a), by {fastest}  "
            f"(target >= {SPEED_TARGET:.0f}x: {'met' if ratio >= SPEED_TARGET else 'MISSED'})"
        )
    if "b" in results:
        t = results["b"]["times"]
        ratio = t["vjp_jvp"] / t["structured"]
        print(
            f"structured vs vjp_jvp on (b): {ratio:.1f}x faster  "
            f"(target >= {STRUCTURED_TARGET:.0f}x: {'met' if ratio >= STRUCTURED_TARGET else 'MISSED'})"
        )
    if "c" in results:
        t = results["c"]["times"]
        print(
            f"structured vs vjp_jvp on (c): {t['vjp_jvp'] / t['structured']:.1f}x faster; vs jacobian "
            f"{t['jacobian'] / t['structured']:.1f}x"
        )
    print(
        f"peak resident memory of this run (every implementation, the loop's gradients included): "
        f"{_status_gb('VmHWM'):.2f} GB"
    )
    if not args.no_memory:
        m = memory_check(args)
        met = m["peak_gb"] < MEMORY_TARGET_GB
        print(
            f"memory: full kernel of {m['n']} x {m['n']} examples, V {m['vocab']}, {m['params']} parameters "
            f"(kernel {m['kernel_gb']:.2f} GB): structured {m['structured_s']:.1f} s, auto ({m['auto']}) "
            f"{m['auto_s']:.1f} s; peak resident memory {m['peak_gb']:.2f} GB (process before the kernels "
            f"{m['base_gb']:.2f} GB; target < {MEMORY_TARGET_GB:.0f} GB: {'met' if met else 'MISSED'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

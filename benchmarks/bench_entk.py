"""Benchmark: the torch.func eNTK against the per-logit backward loop, on an MLP with two heads.

The model is a shared tanh trunk with a generation head and an understanding head (the two-branch
picture of the theory). The kernel is the cross-branch block ``K(und probes, gen training examples)``,
shape ``(N, N, V, V)``, over all parameters, in float64. One run times the reference
(``implementation="loop"``: one ``torch.autograd.grad`` per example and logit, then one matrix product
of the stacked gradients) and the two torch.func implementations, and prints the times, the speed
ratios and the maximum absolute difference from the reference.

    python benchmarks/bench_entk.py            # width 256, V = 64, 32 x 32 example pairs
    python benchmarks/bench_entk.py --quick    # a seconds-long smoke run

Targets: speed ratio (loop / fastest torch.func) >= 50, max abs difference <= 1e-10. The script exits
with status 1 if the difference target is missed (a correctness failure); a missed speed target is
printed, not fatal, since timings depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dynamics.kernels import Implementation, entk, param_blocks

SPEED_TARGET = 50.0
DIFF_TARGET = 1e-10


def make_two_head_mlp(
    *, in_dim: int, width: int, depth: int, vocab: int, seed: int
) -> dict[str, torch.Tensor]:
    """Float64 parameters of a tanh MLP trunk (``depth`` hidden layers of ``width``) and two linear heads."""
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim] + [width] * depth
    params = {}
    for i in range(depth):
        params[f"trunk.{i}.weight"] = (
            torch.randn(dims[i + 1], dims[i], generator=g, dtype=torch.float64) / dims[i] ** 0.5
        )
        params[f"trunk.{i}.bias"] = 0.1 * torch.randn(dims[i + 1], generator=g, dtype=torch.float64)
    for head in ("gen", "und"):
        params[f"{head}.weight"] = torch.randn(vocab, width, generator=g, dtype=torch.float64) / width**0.5
        params[f"{head}.bias"] = 0.1 * torch.randn(vocab, generator=g, dtype=torch.float64)
    return params


def _trunk(p: dict, x: torch.Tensor) -> torch.Tensor:
    i = 0
    while f"trunk.{i}.weight" in p:
        x = torch.tanh(p[f"trunk.{i}.weight"] @ x + p[f"trunk.{i}.bias"])
        i += 1
    return x


def gen_logits(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Generation-head logits ``(V,)`` of one input ``(in_dim,)``."""
    return p["gen.weight"] @ _trunk(p, x) + p["gen.bias"]


def und_logits(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Understanding-head logits ``(V,)`` of one input ``(in_dim,)``."""
    return p["und.weight"] @ _trunk(p, x) + p["und.bias"]


def _timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=256, help="trunk width (default 256)")
    parser.add_argument("--depth", type=int, default=1, help="hidden layers in the trunk (default 1)")
    parser.add_argument("--in-dim", type=int, default=32, help="input dimension (default 32)")
    parser.add_argument("--vocab", type=int, default=64, help="logits per head, V (default 64)")
    parser.add_argument("--n", type=int, default=32, help="examples per side: N x N pairs (default 32)")
    parser.add_argument(
        "--blocks",
        choices=["all", "shared"],
        default="all",
        help="parameters summed over: all, or the shared trunk only (default all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed repeats of the torch.func runs; best kept"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke test (width 32, V 8, N 4)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.vocab, args.n, args.in_dim, args.repeats = 32, 8, 4, 8, 1
    for name in ("width", "depth", "in_dim", "vocab", "n", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)

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
    print(
        f"two-head MLP: in {args.in_dim}, width {args.width}, depth {args.depth}, V {args.vocab}, "
        f"{n_params} parameters; K(und, gen) over {args.blocks} parameters, {args.n} x {args.n} example pairs, "
        f"float64, {args.threads} thread(s)"
    )

    def run(impl: Implementation, xs_a=x_und, xs_b=x_gen):
        return lambda: entk(und_logits, gen_logits, params, xs_a, xs_b, blocks=blocks, implementation=impl)

    # warm-up on two examples (first calls of torch.func pay one-off dispatch set-up costs)
    for impl in Implementation:
        run(impl, x_und[:2], x_gen[:2])()

    t_loop, k_loop = _timed(run(Implementation.LOOP), 1)
    rows = [("loop (reference)", t_loop, 1.0, 0.0)]
    best = float("inf")
    worst_diff = 0.0
    for impl in (Implementation.JACOBIAN, Implementation.VJP_JVP):
        t, k = _timed(run(impl), args.repeats)
        diff = (k - k_loop).abs().max().item()
        rows.append((f"torch.func {impl.value}", t, t_loop / t, diff))
        best = min(best, t)
        worst_diff = max(worst_diff, diff)
    print(f"kernel shape {tuple(k_loop.shape)}, max |K| {k_loop.abs().max().item():.3g}")
    print(f"{'implementation':<24}{'time [s]':>10}{'speed-up':>10}{'max |diff|':>13}")
    for name, t, ratio, diff in rows:
        print(f"{name:<24}{t:>10.3f}{ratio:>9.1f}x{diff:>13.2e}")
    ratio = t_loop / best
    print(
        f"speed ratio (loop / fastest torch.func): {ratio:.1f}x  (target >= {SPEED_TARGET:.0f}x: "
        f"{'met' if ratio >= SPEED_TARGET else 'MISSED'})"
    )
    print(
        f"max abs difference: {worst_diff:.2e}  (target <= {DIFF_TARGET:.0e}: "
        f"{'met' if worst_diff <= DIFF_TARGET else 'MISSED'})"
    )
    return 0 if worst_diff <= DIFF_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

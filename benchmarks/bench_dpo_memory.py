"""Benchmark the peak memory of one DPO step: precomputed reference log-probs vs a live reference model.

A DPO step needs ``log pi_ref`` of the chosen and rejected images. The conventional way keeps a frozen
copy of the model (the *live reference*) and runs it inside every step; the way this project's loop
allows computes them once per data round with the policy itself (which *is* the reference at the start
of the round, before any step) and stores the numbers, so no second model is resident. This script
measures the peak memory of one full DPO step (build the policy, reference log-probs, policy forward on
chosen + rejected, preference loss with an NLL term, backward, optimizer step) both ways, side by side.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` growth over the step. On CPU (Linux), each
variant runs in a forked child whose peak resident set (``VmHWM`` in ``/proc/self/status``, reset
through ``/proc/self/clear_refs``) is read against its resident set at the start: the growth is every
byte the variant allocated and touched (weights, reference copy, gradients, optimizer state,
activations), measured by the kernel, with the interpreter and libraries excluded.

The model is a width/depth-scaled Janus-Pro-1B shape (``--width-div``, ``--depth-div``; random weights).
Weights shrink with width squared but activations only with width, so a scaled model overweights
activations against weights (both variants carry them): ``--width-div 2`` is closer to the real
proportions than the default 4 and takes a few times longer. What a precomputed reference saves is one
copy of the weights, so the ratio is ``S / (S + W)`` with ``S`` the precomputed step's peak: below 0.6
only where trained state plus activations stay under half the weights (LoRA; not full-trunk AdamW). A closing estimate gives the resident-state ratio
(weights + gradients + optimizer state, activations excluded) of the real 1B/7B shapes from their
parameter counts. ``--quick`` is a seconds-long smoke run.

    python benchmarks/bench_dpo_memory.py
    python benchmarks/bench_dpo_memory.py --quick
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from dynamics.full.janus import JanusUnified
from dynamics.full.presets import build_from_config, build_preset
from dynamics.full.sampler import GenerationScorer, prompt_batch
from dynamics.losses import preference_loss

PROMPTS = [
    "a red cube",
    "two dogs on a bench",
    "a cat",
    "three blue cups",
    "a green apple",
    "four birds",
    "a black car",
    "a white house",
]
TARGET = 0.6


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--width-div", type=int, default=4, help="divide Janus-Pro-1B widths and vocabularies by this"
    )
    p.add_argument("--depth-div", type=int, default=4, help="divide Janus-Pro-1B layer counts by this")
    p.add_argument("--image-tokens", type=int, default=576, help="image tokens per image (perfect square)")
    p.add_argument("--pairs", type=int, default=2, help="DPO pairs (prompts) per step")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument("--nll-weight", type=float, default=1.0, help="weight of the NLL term on the chosen image")
    p.add_argument(
        "--setups",
        default="trunk:adamw,trunk:sgd,trunk+gen:adamw,lora:adamw",
        help="comma-separated scope:optimizer pairs (scope trunk|trunk+gen|lora, optimizer adamw|sgd)",
    )
    p.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="keep all LLM activations (default: gradient checkpointing, as 1B/7B training uses)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    p.add_argument(
        "--no-pin-malloc",
        action="store_true",
        help="leave this process's malloc settings alone (for in-process callers; children still pin theirs)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: a very small shape, 64 image tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.width_div, args.depth_div, args.image_tokens, args.setups = 16, 12, 64, "trunk:adamw"
    setups = []
    for item in args.setups.split(","):
        scope, _, opt = item.partition(":")
        if scope not in ("trunk", "trunk+gen", "lora") or opt not in ("adamw", "sgd"):
            p.error(f"--setups: bad entry {item!r} (want scope:optimizer)")
        setups.append((scope, opt))
    args.setups = setups
    grid = math.isqrt(args.image_tokens)
    if grid * grid != args.image_tokens or args.pairs < 1 or args.width_div < 1 or args.depth_div < 1:
        p.error("--image-tokens must be a perfect square; --pairs, --width-div, --depth-div >= 1")
    return args


def scaled_config(width_div: int, depth_div: int, image_tokens: int):
    """Janus-Pro-1B's config with widths, vocabularies and depths divided (head dims kept)."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    grid = math.isqrt(image_tokens)
    hidden = 2048 // width_div
    text = LlamaConfig(
        vocab_size=max(256, 102400 // width_div),
        hidden_size=hidden,
        intermediate_size=5632 // width_div,
        num_hidden_layers=max(1, 24 // depth_div),
        num_attention_heads=max(1, hidden // 128),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
    )
    vision = JanusVisionConfig(
        hidden_size=1024 // width_div,
        num_hidden_layers=max(1, 24 // depth_div),
        num_attention_heads=max(1, 1024 // width_div // 64),
        image_size=16 * grid,
        patch_size=16,
        projection_dim=hidden,
        num_image_tokens=image_tokens,
    )
    vq = JanusVQVAEConfig(
        num_embeddings=max(64, 16384 // width_div),
        base_channels=max(32, 128 // width_div),
        latent_channels=max(32, 256 // width_div),
        projection_dim=hidden,
        image_token_embed_dim=hidden,
    )
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def dpo_step(args, scope: str, optimizer: str, variant: str) -> dict:
    """Build the policy, run one DPO step with a live or precomputed reference; return its numbers."""
    dtype = getattr(torch, args.dtype)
    config = scaled_config(args.width_div, args.depth_div, args.image_tokens)
    model, processor = build_from_config(config, seed=args.seed, dtype=dtype, device=args.device)
    jm = JanusUnified(
        model, processor, PROMPTS[: args.pairs], scope=scope, gradient_checkpointing=not args.no_checkpointing
    )
    g = torch.Generator().manual_seed(args.seed + 1)
    m, v = jm.image_length, config.vq_config.num_embeddings
    chosen = torch.randint(0, v, (1, args.pairs, 1, m), generator=g)
    rejected = torch.randint(0, v, (1, args.pairs, 1, m), generator=g)
    pids = torch.arange(args.pairs)
    reference = None
    if variant == "precomputed":  # once per data round, by the policy before its first step
        with torch.no_grad():
            ref_c, ref_r = jm.image_logprob(pids, chosen), jm.image_logprob(pids, rejected)
    else:
        reference = GenerationScorer(copy.deepcopy(model).requires_grad_(False))
    params = jm.generation_parameters()
    opt = torch.optim.AdamW(params, lr=1e-5) if optimizer == "adamw" else torch.optim.SGD(params, lr=1e-5)
    if reference is not None:
        ids, mask = prompt_batch(processor, PROMPTS[: args.pairs], device=jm.device)
        with torch.no_grad():
            ref_c = reference(ids, mask, chosen[0, :, 0].to(jm.device)).reshape(1, -1, 1)
            ref_r = reference(ids, mask, rejected[0, :, 0].to(jm.device)).reshape(1, -1, 1)
    lc, lr_ = jm.image_logprob(pids, chosen), jm.image_logprob(pids, rejected)
    loss = preference_loss(
        lc, lr_, ref_c, ref_r, beta=args.beta, nll_weight=args.nll_weight, nll_tokens=m
    ).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {
        "loss": float(loss.detach()),
        "params": sum(p.numel() for p in model.parameters()),
        "scope_params": sum(p.numel() for p in params),
    }


def _pin_malloc() -> bool:
    """Serve every allocation above 64 KiB by its own mmap (glibc), so freed tensors leave the resident set
    and resident-set growth tracks live memory; returns False where this is unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 16)) and bool(libc.mallopt(m_trim_threshold, 1 << 16))
    except (OSError, AttributeError):
        return False


def _warm_up(args) -> None:
    """One small DPO step per scope and variant in the parent: imports and first-call initialisation
    happen before the children fork, so the children measure the step and nothing else."""
    small = argparse.Namespace(
        **{
            **vars(args),
            "width_div": 32,
            "depth_div": 24,
            "image_tokens": 16,
            "pairs": 1,
            "no_checkpointing": args.no_checkpointing,
        }
    )
    for scope in sorted({s for s, _ in args.setups}):
        for variant in ("live", "precomputed"):
            dpo_step(small, scope, "adamw", variant)


def _child(conn, args, scope, optimizer, variant):
    try:
        torch.set_num_threads(args.threads)
        _pin_malloc()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        base = _status_kb("VmRSS")
        out = dpo_step(args, scope, optimizer, variant)
        out["peak_bytes"] = (_status_kb("VmHWM") - base) * 1024
        conn.send(out)
    except Exception as err:  # noqa: BLE001 (any failure is reported to the parent, which would otherwise hang)
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def measure(args, scope: str, optimizer: str, variant: str) -> dict:
    """Peak memory growth of one DPO step (bytes), in a forked child on CPU or in-process on CUDA."""
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = dpo_step(args, scope, optimizer, variant)
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        torch.cuda.empty_cache()
        return out
    if not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError(
            "CPU peak memory needs Linux /proc/self/clear_refs; run on Linux or with --device cuda"
        )
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, args, scope, optimizer, variant))
    proc.start()
    child.close()
    out = parent.recv()
    proc.join()
    if "error" in out:
        raise RuntimeError(f"{variant} DPO step ({scope}, {optimizer}) failed: {out['error']}")
    return out


def resident_estimate(name: str, scope: str, slots: int, lora_rank: int = 16) -> float:
    """(W + T (1 + slots)) / (2 W + T (1 + slots)): weights W (the reference copy is another W), trained
    parameters T with their gradients and ``slots`` optimizer states (AdamW 2, SGD 0). Activations excluded."""
    model, _ = build_preset(name, device="meta")
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    if scope == "lora":  # rank r adapters on the trunk's q, k, v, o, gate, up, down projections
        t = sum(
            lora_rank * (m.in_features + m.out_features)
            for n, m in model.model.language_model.layers.named_modules()
            if n.rsplit(".", 1)[-1]
            in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        )
    else:
        t = sum(
            p.numel()
            for n, p in named.items()
            if n.startswith(("model.language_model.layers.", "model.language_model.norm."))
            or (scope == "trunk+gen" and n.startswith("model.generation_"))
        )
    return (total + t * (1 + slots)) / (2 * total + t * (1 + slots))


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = scaled_config(args.width_div, args.depth_div, args.image_tokens)
    print(
        f"DPO step peak memory, Janus-Pro-1B shape / width {args.width_div} / depth {args.depth_div} "
        f"(LLM {cfg.text_config.num_hidden_layers} x {cfg.text_config.hidden_size}), {args.image_tokens} image "
        f"tokens, {args.pairs} pairs, {args.dtype}, device {args.device}, gradient checkpointing "
        f"{'off' if args.no_checkpointing else 'on'}"
    )
    if not args.device.startswith("cuda"):
        pinned = False if args.no_pin_malloc else _pin_malloc()
        print(f"CPU peak resident-set growth in forked children (allocations > 64 KiB by mmap: {pinned})")
    _warm_up(args)
    print(
        f"{'scope':<10} {'optimizer':<9} {'params':>10} {'trained':>10} {'live ref MB':>12} "
        f"{'precomputed MB':>15} {'precomputed / live':>19}  target <= {TARGET}"
    )
    rows = []
    for scope, optimizer in args.setups:
        live = measure(args, scope, optimizer, "live")
        pre = measure(args, scope, optimizer, "precomputed")
        if not math.isclose(live["loss"], pre["loss"], rel_tol=1e-4, abs_tol=1e-4):
            raise RuntimeError(f"live and precomputed losses differ: {live['loss']} vs {pre['loss']}")
        ratio = pre["peak_bytes"] / live["peak_bytes"]
        rows.append(
            {
                "scope": scope,
                "optimizer": optimizer,
                "live_bytes": live["peak_bytes"],
                "precomputed_bytes": pre["peak_bytes"],
                "ratio": ratio,
                "loss": live["loss"],
            }
        )
        print(
            f"{scope:<10} {optimizer:<9} {live['params'] / 1e6:>9.1f}M {live['scope_params'] / 1e6:>9.2f}M "
            f"{live['peak_bytes'] / 2**20:>12.1f} {pre['peak_bytes'] / 2**20:>15.1f} {ratio:>19.3f}  "
            f"{'meets' if ratio <= TARGET else 'above'}"
        )
    if not args.quick:
        print(
            "\nresident-state estimate for the real shapes (weights + grads + optimizer state; no activations):"
        )
        for name in ("janus-pro-1b-shape", "janus-pro-7b-shape"):
            parts = [
                f"{s}:{o} {resident_estimate(name, s, 2 if o == 'adamw' else 0):.3f}" for s, o in args.setups
            ]
            print(f"  {name}: " + "   ".join(parts))
    sys.stdout.flush()
    return {"rows": rows}


if __name__ == "__main__":
    main()

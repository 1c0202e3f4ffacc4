"""Benchmark the Janus image-token sampler (dynamics.full.sampler) side by side with transformers.

1. Our sampler vs transformers' ``JanusForConditionalGeneration.generate(generation_mode="image")`` at
   equal settings (CFG scale, temperature, top-k off, KV cache) on the ``tiny`` preset with Janus-Pro's
   576 image tokens: identical tokens for the same seed, and the speed ratio (transformers time / ours;
   target >= 1.0). Also N candidates of one prompt (speed only: transformers draws all rows from one
   global generator, we draw each row from its own, so those tokens are not comparable).
2. Many prompts per batch (P prompts x N candidates, left-padded, one call) against a per-prompt loop
   (one call per prompt with its N candidates): identical candidates (per-row seeds), speed ratio
   (target >= 3x).

Times are the minimum over ``--repeats`` runs, the two contenders alternating: process CPU time on the CPU
(so other processes on shared cores do not distort the ratios), wall-clock time on a GPU. Random weights: the numbers
measure the code path, not image quality. ``--quick`` is a seconds-long smoke run (16 image tokens).

    python benchmarks/bench_sampler.py            # full run, 576 tokens
    python benchmarks/bench_sampler.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from dynamics.full.janus import JanusUnified
from dynamics.full.presets import build_preset
from dynamics.full.sampler import SamplingConfig, prompt_batch, sample_image_tokens

PROMPTS = [
    "a red cube",
    "two dogs on a wooden bench near a tree",
    "a cat",
    "three blue cups on a table",
    "a green apple left of a yellow banana",
    "a tall white house behind a small tree",
    "four birds",
    "a black car near a red house",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--image-tokens",
        type=int,
        default=576,
        help="image tokens per image (perfect square; Janus-Pro: 576)",
    )
    p.add_argument(
        "--prompts", type=int, default=8, help=f"prompts in the batched comparison (max {len(PROMPTS)})"
    )
    p.add_argument("--candidates", type=int, default=4, help="candidates N per prompt")
    p.add_argument(
        "--cfg-scale", type=float, default=5.0, help="classifier-free guidance scale g (> 1 to compare)"
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (the minimum is reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and sampling")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 16 tokens, 4 prompts x 2 candidates, 1 repeat"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.image_tokens, args.prompts, args.candidates, args.repeats = 16, 4, 2, 1
    if not 1 <= args.prompts <= len(PROMPTS):
        p.error(f"--prompts must be in [1, {len(PROMPTS)}]")
    if args.candidates < 1 or args.repeats < 1:
        p.error("--candidates and --repeats must be >= 1")
    if args.cfg_scale <= 1:
        p.error("--cfg-scale must be > 1: transformers' image generate fails at g = 1")
    return args


def _timed(fn, device: str):
    """``(fn(), seconds)``: process CPU time on the CPU (robust to other processes sharing the cores; torch
    runs ``--threads`` threads, 1 by default), synchronised wall-clock time on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, processor = build_preset(
        "tiny", seed=args.seed, image_tokens=args.image_tokens, device=args.device
    )
    g, temp, dev = args.cfg_scale, args.temperature, args.device
    print(
        f"tiny preset, {args.image_tokens} image tokens, cfg {g}, temperature {temp}, top-k off, "
        f"device {args.device}, {args.threads} thread(s); times: "
        f"{'wall-clock' if dev.startswith('cuda') else 'process CPU'} seconds"
    )

    # warm-up (first-call costs of both paths)
    ids, mask = prompt_batch(processor, PROMPTS[:1], device=args.device)
    sample_image_tokens(model, ids, mask, seeds=[0], cfg_scale=g, image_length=4)
    model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_mode="image",
        do_sample=True,
        guidance_scale=g,
        top_k=0,
        temperature=temp,
    )

    # 1. single prompt: identical tokens and speed
    ours_t, hf_t, identical = [], [], True
    for r in range(args.repeats):
        seed = args.seed + r
        ours, t = _timed(
            lambda s=seed: sample_image_tokens(model, ids, mask, seeds=[s], cfg_scale=g, temperature=temp),
            dev,
        )
        ours_t.append(t)
        torch.manual_seed(seed)
        ref, t = _timed(
            lambda: model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_mode="image",
                do_sample=True,
                guidance_scale=g,
                temperature=temp,
                top_k=0,
            ),
            dev,
        )
        hf_t.append(t)
        identical &= torch.equal(ours.cpu(), ref.cpu())
    speed = min(hf_t) / min(ours_t)
    print(
        f"\n[1] one prompt, one image:  transformers {min(hf_t):.3f} s   ours {min(ours_t):.3f} s   "
        f"speed ratio {speed:.2f}x (target >= 1.0)   identical tokens: {identical}"
    )

    n = args.candidates
    ours_n, hf_n = [], []
    rows_ids, rows_mask = ids.repeat(n, 1), mask.repeat(n, 1)
    for r in range(args.repeats):
        _, t = _timed(
            lambda: sample_image_tokens(
                model, rows_ids, rows_mask, seeds=list(range(n)), cfg_scale=g, temperature=temp
            ),
            dev,
        )
        ours_n.append(t)
        torch.manual_seed(r)
        _, t = _timed(
            lambda: model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_mode="image",
                do_sample=True,
                guidance_scale=g,
                temperature=temp,
                top_k=0,
                num_return_sequences=n,
            ),
            dev,
        )
        hf_n.append(t)
    speed_n = min(hf_n) / min(ours_n)
    print(
        f"    one prompt, {n} candidates:  transformers {min(hf_n):.3f} s   ours {min(ours_n):.3f} s   "
        f"speed ratio {speed_n:.2f}x"
    )

    # 2. many prompts per batch vs a per-prompt loop (the adapter's sample)
    jm = JanusUnified(
        model, processor, PROMPTS[: args.prompts], sampling=SamplingConfig(cfg_scale=g, temperature=temp)
    )
    pids = torch.arange(args.prompts)
    batch_t, loop_t, same = [], [], True
    for r in range(args.repeats):
        batched, t = _timed(lambda r=r: jm.sample(pids, n, seed=r), dev)
        batch_t.append(t)
        looped, t = _timed(
            lambda r=r: torch.cat([jm.sample(pids[i : i + 1], n, seed=r) for i in range(args.prompts)], 1),
            dev,
        )
        loop_t.append(t)
        same &= torch.equal(batched, looped)
    ratio = min(loop_t) / min(batch_t)
    images = args.prompts * n
    print(
        f"\n[2] {args.prompts} prompts x {n} candidates:  per-prompt loop {min(loop_t):.3f} s   "
        f"one batch {min(batch_t):.3f} s   ratio {ratio:.2f}x (target >= 3)   identical candidates: {same}"
    )
    print(
        f"    throughput: {images / min(batch_t):.2f} images/s batched vs {images / min(loop_t):.2f} images/s looped"
    )
    return {
        "identical": bool(identical),
        "speed_ratio": speed,
        "speed_ratio_candidates": speed_n,
        "batch_ratio": ratio,
        "batched_identical": bool(same),
    }


if __name__ == "__main__":
    main()

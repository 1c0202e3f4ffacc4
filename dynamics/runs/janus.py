"""The Janus-Pro run of ``python experiments/full_clo.py --model <hub id | local path | preset>``:
prompts (GenEval JSONL or text lists) and any external judge file (``file:``, ``detector:``) read and
checked before the model loads, the model through transformers' native Janus classes, CLO (prompts
sharded over ranks by the loop, training through the DDP-wrapped module under torchrun), the
co-degradation alarm where there is an external judge, records and, where asked, PNGs of the
samples. Flags and their checks: :mod:`dynamics.runs.full`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from dynamics.clo import CLOConfig, run_clo
from dynamics.runs.common import finish

__all__ = ["load_external", "load_prompt_sets", "run_janus"]


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_prompt_sets(args):
    """Training and evaluation prompt sets (validated before any model loads)."""
    from dynamics.full.data import concat, load_prompts

    train = load_prompts(*args.prompts, split=args.split)
    if args.max_prompts:
        train = train.subset(range(min(args.max_prompts, len(train))))
    if not args.eval_prompts:
        return train, None
    ev = load_prompts(*args.eval_prompts)
    if args.max_prompts:
        ev = ev.subset(range(min(args.max_prompts, len(ev))))
    return concat([train, ev]), len(train)


def run_janus(args, cfg: CLOConfig, out: Path, *, alarm=None) -> list[dict]:
    """Prompts and any external judge file checked, then the model loaded (DDP-wrapped under torchrun),
    CLO with ``alarm`` (e.g. :class:`dynamics.alarm.EpochAlarm`) as ``on_epoch`` on rank 0, records,
    summary and (``--save-images``) PNGs. Returns the records."""
    from dynamics.full.distributed import dist_info, init_distributed, wrap_ddp
    from dynamics.full.janus import JanusUnified, JudgeConfig
    from dynamics.full.sampler import SamplingConfig

    if args.seeds != 1:
        raise SystemExit("error: --seeds > 1 is for the toy world; launch one Janus run per seed")
    prompts, n_train = load_prompt_sets(args)
    vlm = args.external.startswith("vlm:")
    external = None if vlm else load_external(args, prompts)  # judgement and detection files: before the model
    sampling = SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k or None,
                              batch_size=args.sample_batch_size or None)
    jkw = {"mode": args.judge_mode, "batch_size": args.judge_batch_size}
    if args.question:
        jkw["question"] = args.question
    judge_cfg = JudgeConfig.score_format(**jkw) if args.answer_format == "score" else JudgeConfig(**jkw)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        init_distributed()
    info = dist_info()
    device = args.device or (f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    model = JanusUnified.from_pretrained(
        args.model, prompts, dtype=_dtype(args.precision), device=device, seed=cfg.seed, sampling=sampling,
        judge=judge_cfg, cfg_mode=args.cfg_mode, scope=args.scope, lora_rank=args.lora_rank,
        logprob_batch_size=args.logprob_batch_size or None, gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress)
    if info.world_size > 1:
        model.module = wrap_ddp(model.module)
    if vlm:
        external = load_external(args, prompts, model)
    train_ids = list(range(n_train)) if n_train is not None else None
    eval_ids = list(range(n_train, len(prompts))) if n_train is not None else None

    run_info = {"scale": "full", "model": args.model, "prompts": [str(p) for p in args.prompts],
                "eval_prompts": [str(p) for p in args.eval_prompts or []], "sampling": dataclasses.asdict(sampling),
                "judge": dataclasses.asdict(judge_cfg), "scope": args.scope, "cfg_mode": args.cfg_mode,
                "precision": args.precision, "external": args.external, "world_size": info.world_size}
    show = torch.tensor((eval_ids or list(range(len(prompts))))[: args.save_images])
    if args.save_images and info.rank == 0:
        model.save_images(show, model.sample(show, 2, seed=cfg.seed), out / "samples_before")
    result = run_clo(model, cfg, external=external, train_ids=train_ids, eval_ids=eval_ids, out_dir=str(out),
                     resume=args.resume, run_info=run_info, on_epoch=alarm if info.rank == 0 else None)
    if args.save_images and info.rank == 0:
        model.save_images(show, model.sample(show, 2, seed=cfg.seed), out / "samples_after")
    if info.rank == 0:
        finish(result.metrics, out, title=f"{args.model}: judge={cfg.judge} loss={cfg.loss} scope={args.scope}")
    return result.metrics


def load_external(args, prompts, model=None):
    """The external judge named by --external (None for 'none'). ``file:`` and ``detector:`` read and
    check their file (errors name file, line and field) and need no model; ``vlm:`` needs the model
    (its decoder turns image tokens into pixels)."""
    from dynamics.full.external import DetectorJudge, FileJudge, VLMJudge, model_decoder

    kind, _, arg = args.external.partition(":")
    if kind == "none":
        return None
    if kind == "file":
        return FileJudge(arg, prompts)
    if kind == "detector":
        return DetectorJudge.from_file(arg, prompts)
    if model is None:
        raise ValueError(f"--external {args.external}: a VLM judge needs the model's image decoder")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vlm = AutoModelForImageTextToText.from_pretrained(arg, dtype=_dtype(args.precision)).to(model.device).eval()
    return VLMJudge.from_transformers(vlm, AutoProcessor.from_pretrained(arg), prompts, model_decoder(model))

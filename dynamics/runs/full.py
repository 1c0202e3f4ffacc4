"""``python experiments/full_clo.py``: CLO on a unified model, the toy scene-world transformer (the
embedded default, CPU, minutes) or a real unified MLLM (Janus-Pro through transformers' native
classes: a hub id available offline, a local checkpoint, or a shape preset).

Toy: pre-train (cached by config and seed), check that understanding beats generation, run CLO
judged exactly, print the per-category table and write plots and before/after sample grids.
Janus: load prompts (validated before the model loads), load the model, optionally an external
judge (a file of judgements or a transformers VLM), run CLO (sharded over ranks under torchrun /
accelerate), write the records and, where asked, PNGs of the samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dynamics.cli import clo_config, clo_parser, parse_args
from dynamics.clo import CLOConfig, run_clo
from dynamics.runs.common import clean_errors, default_out, finish
from dynamics.toy.study import TOY_CLO

__all__ = ["TOY_DEFAULTS", "build_parser", "main"]

# The toy default (one self-judged round, curriculum replay after the model improved; Adam as in the
# calibration run; plain SGD, the theory's setting, is --optimizer sgd).
TOY_DEFAULTS = TOY_CLO


def build_parser() -> argparse.ArgumentParser:
    p = clo_parser(
        "CLO (self-judged data, generation-only training, curriculum replay) on a unified model. With no "
        "arguments: the toy scene-world transformer, pre-trained on first use, judged exactly. With --model: "
        "a Janus-Pro checkpoint (hub id available offline, or a local path) or a shape preset. CLO defaults "
        "below are the toy's; for Janus-Pro the paper used --candidates 10 --epochs 20 --curriculum epochs:10.",
        defaults=TOY_DEFAULTS)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="toy",
                   help="toy | a Janus preset (tiny, janus-pro-1b-shape, janus-pro-7b-shape) | a hub id (offline "
                        "cache) | a local checkpoint directory")
    g.add_argument("--prompts", nargs="+", type=Path, default=None,
                   help="prompt files or directories: GenEval JSONL (tags from the 'tag' field) or plain text "
                        "lists (T2I-CompBench; tag from the file name). Required for Janus; the toy uses its world")
    g.add_argument("--eval-prompts", nargs="+", type=Path, default=None,
                   help="held-out evaluation prompts (default: the training prompts)")
    g.add_argument("--split", default=None, choices=["train", "val"],
                   help="with directories: take only the *_train or *_val files")
    g.add_argument("--max-prompts", type=int, default=0, help="use at most this many prompts (0 = all)")
    g.add_argument("--seeds", type=int, default=1,
                   help="run seeds seed..seed+N-1 one after another (each in OUT/seed_<s>); the table shows "
                        "mean ± standard error")
    j = p.add_argument_group("Janus-Pro")
    j.add_argument("--scope", default="trunk", choices=["trunk", "trunk+gen", "lora"],
                   help="parameters the generation-only update touches: the LLM trunk (paper), trunk + generation "
                        "embeddings/head, or LoRA adapters on the trunk")
    j.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (--scope lora)")
    j.add_argument("--cfg-scale", type=float, default=5.0, help="classifier-free guidance g (1 = none)")
    j.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    j.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off)")
    j.add_argument("--cfg-mode", default="none", choices=["none", "combined"],
                   help="log-probs for training: conditional logits only, or CFG-combined")
    j.add_argument("--sample-batch-size", type=int, default=0, help="rows (prompt, candidate) per sampler call (0 = all)")
    j.add_argument("--judge-batch-size", type=int, default=16, help="images per understanding forward")
    j.add_argument("--logprob-batch-size", type=int, default=0, help="rows per teacher-forced forward (0 = all)")
    j.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute LLM activations in backward (less memory; use for 1B/7B)")
    j.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="model dtype")
    j.add_argument("--device", default=None, help="device (default: cuda if available, else cpu; per rank under "
                                                  "torchrun)")
    j.add_argument("--question", default=None, help="understanding question template with {prompt}")
    j.add_argument("--answer-format", default="yesno", choices=["yesno", "score"],
                   help="yesno: P(yes) from the first answer token; score: the paper's 'The score is 1/0'")
    j.add_argument("--judge-mode", default="logits", choices=["logits", "generate"],
                   help="read P(yes) from logits, or generate an answer and parse it")
    j.add_argument("--save-images", type=int, default=0,
                   help="decode and save PNGs of the first N evaluation prompts' samples before and after")
    e = p.add_argument_group("external judge")
    e.add_argument("--external", default="none",
                   help="none | file:<judgements.jsonl> | vlm:<local path or offline hub id of a transformers VLM>. "
                        "The toy always has its exact detector")
    e.add_argument("--alarm-tolerance", type=float, default=0.01,
                   help="co-degradation alarm: warn when external accuracy falls by more than this while Non falls")
    t = p.add_argument_group("toy world")
    t.add_argument("--toy-preset", default="default", choices=["default", "tiny"], help="toy model preset")
    t.add_argument("--sharing", default="full", choices=["full", "janus"],
                   help="full: one embedding table and trunk; janus: separate generation image embeddings/head")
    t.add_argument("--pretrain-steps", type=int, default=None, help="pre-training steps (default: the preset's)")
    t.add_argument("--gen-noise", type=float, default=None,
                   help="gap size: share of generation pre-training targets replaced by hard negatives")
    t.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DYNAMICS_CACHE", "cache/toy")),
                   help="pre-trained checkpoint cache (env DYNAMICS_CACHE)")
    t.add_argument("--understanding", default="head", choices=["head", "bayes"],
                   help="head: the trained yes/no answer; bayes: understanding read from the generator through the "
                        "Bayes link (posterior of the prompt against its hard negatives; dynamics.toy.bayes)")
    t.add_argument("--no-gap-check", action="store_true",
                   help="run CLO even when the pre-trained model lacks the internal gap (smoke runs of tiny models)")
    t.add_argument("--train-on", default="all", choices=["all", "train", "heldout"],
                   help="toy prompts CLO trains on (evaluation always covers every prompt)")
    return p


def _check(parser, args) -> CLOConfig:
    try:
        cfg = clo_config(args)
    except ValueError as e:
        parser.error(str(e))
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.max_prompts < 0:
        parser.error(f"--max-prompts must be >= 0, got {args.max_prompts}")
    if args.model != "toy" and not args.prompts:
        parser.error("--prompts is required for a Janus model (GenEval JSONL or text prompt lists)")
    if not 0.0 <= args.alarm_tolerance <= 1.0:
        parser.error(f"--alarm-tolerance must lie in [0, 1], got {args.alarm_tolerance}")
    kind = args.external.partition(":")[0]
    if kind not in ("none", "file", "vlm") or (kind != "none" and not args.external.partition(":")[2]):
        parser.error(f"--external {args.external!r}: expected none, file:<path> or vlm:<path or id>")
    return cfg


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parse_args(parser, argv)
    cfg = _check(parser, args)
    out = Path(args.out) if args.out else default_out("full_clo" if args.model != "toy" else "toy_clo")
    if args.model == "toy":
        return clean_errors(lambda: run_toy(args, cfg, out))
    return clean_errors(lambda: run_janus(args, cfg, out))


# ----------------------------------------------------------------------------------------------- toy


def toy_model(args, seed: int):
    """The pre-trained toy model for ``seed`` (from the cache when present), gap checked."""
    from dynamics.toy.pretrain import GapError, gap_report
    from dynamics.toy.study import ToySize, pretrained_model

    size = ToySize(preset=args.toy_preset, pretrain_steps=args.pretrain_steps, cache_dir=args.cache_dir,
                   overrides={} if args.gen_noise is None else {"gen_noise": args.gen_noise})
    try:
        model = pretrained_model(size, seed, sharing=args.sharing, understanding=args.understanding,
                                 check=not args.no_gap_check, progress=not args.no_progress)
    except GapError as e:
        raise SystemExit(f"error: {e}") from None
    return model, model.gap if not args.no_gap_check else gap_report(model, seed=seed)


def run_toy(args, cfg: CLOConfig, out: Path) -> list[dict]:
    from dynamics.toy import render

    torch.set_num_threads(1)  # measured fastest for a model this small; more threads only add overhead
    t0 = time.perf_counter()
    all_records: list[dict] = []
    for s in range(cfg.seed, cfg.seed + args.seeds):
        run_dir = out / f"seed_{s}" if args.seeds > 1 else out
        run_dir.mkdir(parents=True, exist_ok=True)
        model, gap = toy_model(args, s)
        world = model.world
        train_ids, heldout_ids = world.split_ids()
        ids = {"all": None, "train": train_ids, "heldout": heldout_ids}[args.train_on]
        show = _show_ids(model.prompts)
        before = model.sample(show, 6, seed=s)
        info = {"scale": "toy", "toy_config": model.config.to_dict(), "sharing": args.sharing,
                "understanding": args.understanding, "bayes_offset": getattr(model, "offset", None),
                "pretrain": {k: v for k, v in model.pretrain_info.items() if k != "loss_curve"},
                "gap_report": gap, "train_on": args.train_on}
        result = run_clo(model, dataclasses.replace(cfg, seed=s), external=world.external_judge(), train_ids=ids,
                         out_dir=str(run_dir), resume=args.resume, run_info=info)
        after = model.sample(show, 6, seed=s)
        judge = world.external_judge()
        for name, imgs in (("before", before), ("after", after)):
            render(imgs, run_dir / f"samples_{name}.png", world=world,
                   titles=[model.prompts.texts[i] for i in show.tolist()],
                   marks=judge(show, imgs)[0])
        all_records.extend(result.metrics)
    elapsed = time.perf_counter() - t0
    title = (f"toy world: judge={cfg.judge} loss={cfg.loss} sharing={args.sharing} understanding={args.understanding} "
             f"curriculum={cfg.curriculum} "
             f"({args.seeds} seed{'s' if args.seeds > 1 else ''}, {elapsed:.0f} s)")
    finish(all_records, out, title=title)
    return all_records


def _show_ids(prompts, per_tag: int = 1) -> torch.Tensor:
    """A few prompts to draw, one per category."""
    seen, ids = {}, []
    for i, tag in enumerate(prompts.tags):
        if seen.get(tag, 0) < per_tag:
            seen[tag] = seen.get(tag, 0) + 1
            ids.append(i)
    return torch.tensor(ids)


# ----------------------------------------------------------------------------------------------- Janus


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


def run_janus(args, cfg: CLOConfig, out: Path) -> list[dict]:
    from dynamics.full.distributed import dist_info, init_distributed, wrap_ddp
    from dynamics.full.external import CoDegradationAlarm
    from dynamics.full.janus import JanusUnified, JudgeConfig
    from dynamics.full.sampler import SamplingConfig

    prompts, n_train = load_prompt_sets(args)
    sampling = SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k or None,
                              batch_size=args.sample_batch_size or None)
    jkw = {"mode": args.judge_mode, "batch_size": args.judge_batch_size}
    if args.question:
        jkw["question"] = args.question
    judge_cfg = JudgeConfig.score_format(**jkw) if args.answer_format == "score" else JudgeConfig(**jkw)
    if args.seeds != 1:
        raise SystemExit("error: --seeds > 1 is for the toy world; launch one Janus run per seed")
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
    external = make_external(args, model, prompts)
    train_ids = list(range(n_train)) if n_train is not None else None
    eval_ids = list(range(n_train, len(prompts))) if n_train is not None else None
    alarm = CoDegradationAlarm(tolerance=args.alarm_tolerance) if external is not None else None

    def on_epoch(epoch, records):
        if alarm is not None and records and records[0].get("gen_acc") is not None:
            alarm.update(epoch, records[0]["gen_acc"], records[0]["non_unification"])

    run_info = {"scale": "full", "model": args.model, "prompts": [str(p) for p in args.prompts],
                "eval_prompts": [str(p) for p in args.eval_prompts or []], "sampling": dataclasses.asdict(sampling),
                "judge": dataclasses.asdict(judge_cfg), "scope": args.scope, "cfg_mode": args.cfg_mode,
                "precision": args.precision, "external": args.external, "world_size": info.world_size}
    show = torch.tensor((eval_ids or list(range(len(prompts))))[: args.save_images])
    if args.save_images and info.rank == 0:
        model.save_images(show, model.sample(show, 2, seed=cfg.seed), out / "samples_before")
    result = run_clo(model, cfg, external=external, train_ids=train_ids, eval_ids=eval_ids, out_dir=str(out),
                     resume=args.resume, run_info=run_info, on_epoch=on_epoch)
    if args.save_images and info.rank == 0:
        model.save_images(show, model.sample(show, 2, seed=cfg.seed), out / "samples_after")
    if info.rank == 0:
        finish(result.metrics, out, title=f"{args.model}: judge={cfg.judge} loss={cfg.loss} scope={args.scope}")
    return result.metrics


def make_external(args, model, prompts):
    """The external judge named by --external (None for 'none')."""
    from dynamics.full.external import FileJudge, VLMJudge, model_decoder

    kind, _, arg = args.external.partition(":")
    if kind == "none":
        return None
    if kind == "file":
        return FileJudge(arg, prompts)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vlm = AutoModelForImageTextToText.from_pretrained(arg, dtype=_dtype(args.precision)).to(model.device).eval()
    return VLMJudge.from_transformers(vlm, AutoProcessor.from_pretrained(arg), prompts, model_decoder(model))


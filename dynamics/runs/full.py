"""``python experiments/full_clo.py``: CLO on a unified model, the toy scene-world transformer (the
embedded default, CPU, minutes) or a real unified MLLM (Janus-Pro through transformers' native
classes: a hub id available offline, a local checkpoint, or a shape preset).

This module holds what both share: the flag set (:func:`build_parser`), its checks (made before any
expensive work) and the dispatch (:func:`main`). The runs themselves live in
:mod:`dynamics.runs.toy` (pre-train, gap check, CLO judged exactly, table, plots, sample grids) and
:mod:`dynamics.runs.janus` (prompts and external judge files checked before the model loads, CLO,
DDP under torchrun, records and PNGs). Both install the co-degradation alarm
(:class:`dynamics.alarm.EpochAlarm`, ``--alarm-tolerance``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dynamics.cli import (
    add_alarm_flag,
    alarm_hook,
    check_device,
    check_weak_judge,
    clo_config,
    clo_parser,
    content_hash,
    given_flags,
    parse_args,
    run_identity,
)
from dynamics.clo import CLOConfig
from dynamics.protocol import COUPLINGS
from dynamics.runs.common import check_size, clean_errors, run_dir
from dynamics.toy.recipe import TOY_CLO
from dynamics.trackers import add_tracking_flags

__all__ = ["EXTERNAL_KINDS", "SCALE_GROUPS", "TOY_DEFAULTS", "build_parser", "main", "model_identity"]

# The toy default (one self-judged round, curriculum replay after the model improved; Adam as in the
# calibration run; plain SGD, the theory's setting, is --optimizer sgd).
TOY_DEFAULTS = TOY_CLO

#: The kinds of ``--external`` (``none`` or ``<kind>:<argument>``).
EXTERNAL_KINDS = ("none", "file", "detector", "vlm")

#: The scale each flag group of :func:`build_parser` belongs to (``toy`` or ``model``, a real unified
#: model); a flag of the other scale's group given a non-default value is refused, not ignored. One line
#: per group.
SCALE_GROUPS = {"Janus-Pro": "model", "toy world": "toy"}

#: Flags outside those groups that only a real model reads.
MODEL_ONLY_FLAGS = ("prompts", "eval_prompts", "split", "max_prompts", "external")


def build_parser() -> argparse.ArgumentParser:
    p = clo_parser(
        "CLO (self-judged data, generation-only training, curriculum replay) on a unified model. With no "
        "arguments: the toy scene-world transformer, pre-trained on first use, judged exactly. With --model: "
        "a Janus-Pro checkpoint (hub id available offline, or a local path) or a shape preset. CLO defaults "
        "below are the toy's; for Janus-Pro the paper used --candidates 10 --epochs 20 --curriculum epochs:10.",
        defaults=TOY_DEFAULTS)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="toy",
                   help="toy | a Janus preset (tiny, janus-pro-1b-shape, janus-pro-7b-shape) | an Emu3 preset "
                        "(emu3-tiny; emu3-8b-shape is for benchmarks) | a hub id (offline cache) | a local checkpoint "
                        "directory. The family (Janus-Pro or Emu3) comes from the preset name or the checkpoint's "
                        "config.json model_type; an unknown family or a checkpoint without an image tokenizer is "
                        "refused before the model loads")
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
    j.add_argument("--parallel", default="auto", choices=["auto", "ddp", "fsdp"],
                   help="several processes (torchrun / accelerate launch): ddp (a full replica per rank) or fsdp "
                        "(FSDP2: trunk parameters, gradients and optimizer states sharded over ranks, sharded "
                        "checkpoints; what a 7B trunk needs); auto: fsdp under accelerate launch with an FSDP "
                        "config, else ddp. --batch-size is per rank")
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
                   help="none | file:<judgements.jsonl> (FileJudge: a label per prompt and candidate) | "
                        "detector:<detections.jsonl> (GenEval's rules over per-image detections, one JSON object a "
                        "line: {\"candidate\": candidate_hash of the image tokens, \"detections\": [{\"label\", "
                        "\"box\": [x0, y0, x1, y1], \"confidence\", \"color\"}]}; needs GenEval JSONL prompts; "
                        "dynamics.full.external.DetectionFile) | vlm:<local path or offline hub id of a transformers "
                        "VLM>. Files are checked before the model loads. The toy always has its exact detector")
    add_alarm_flag(e)
    add_tracking_flags(e)
    t = p.add_argument_group("toy world")
    t.add_argument("--toy-preset", default="default", choices=["default", "tiny"], help="toy model preset")
    t.add_argument("--coupling", default="tied", choices=list(COUPLINGS),
                   help="how understanding reads the generation branch: tied (one embedding table and trunk, "
                        "Chameleon/Emu3-like), trunk (shared trunk, separate image embeddings for reading and "
                        "writing, Janus-like), decoupled (understanding on its own copy of the trunk too), bayes "
                        "(the tied generator read through the Bayes link: posterior of the prompt against its hard "
                        "negatives; dynamics.toy.bayes)")
    t.add_argument("--pretrain-steps", type=int, default=None, help="pre-training steps (default: the preset's)")
    t.add_argument("--gen-noise", type=float, default=None,
                   help="gap size: share of generation pre-training targets replaced by hard negatives")
    t.add_argument("--cache-dir", type=Path, default=None,
                   help="pre-trained checkpoint cache (default: $DYNAMICS_CACHE, else the user's cache directory, "
                        "e.g. ~/.cache/dynamics/toy: dynamics.toy.study.default_cache_dir)")
    t.add_argument("--no-gap-check", action="store_true",
                   help="run CLO even when the pre-trained model lacks the internal gap (smoke runs of tiny models)")
    t.add_argument("--train-on", default="all", choices=["all", "train", "heldout"],
                   help="toy prompts CLO trains on (evaluation always covers every prompt)")
    return p


def _check(parser, args) -> CLOConfig:
    """Every check of the flags that needs no model (usage errors, exit 2): the CLO config, flags of the
    other scale, the device, input files, the memory the toy's candidates need."""
    try:
        cfg = clo_config(args)
    except ValueError as e:
        parser.error(str(e))
    toy = args.model == "toy"
    scale = "toy" if toy else "model"
    other = [a.dest for g in parser._action_groups if SCALE_GROUPS.get(g.title, scale) != scale
             for a in g._group_actions] + (list(MODEL_ONLY_FLAGS) if toy else [])
    refused = given_flags(parser, args, other)
    if refused:
        what = "the toy world" if toy else f"--model {args.model}"
        parser.error(f"{', '.join(refused)}: not used by {what}; remove {'it' if len(refused) == 1 else 'them'}")
    if toy:
        from dynamics.toy.model import ToyConfig
        from dynamics.toy.world import SceneWorld

        preset = ToyConfig.preset(args.toy_preset)
        check_weak_judge(parser, args, args.pretrain_steps if args.pretrain_steps is not None else preset.steps)
        world = SceneWorld(preset.world)
        n, cells = len(world.prompt_set()), world.cells
        rows = min(cfg.chunk_size, n) * max(cfg.candidates, cfg.eval_candidates)
        # candidates kept (images, verdicts: about 3 int64 copies) + one sampling chunk's activations
        need = 3 * n * cfg.candidates * cells * 8 + rows * (cells + 32) * 64 * 4 * 24 + 500 * 2**20
        check_size(parser, need, f"--candidates {cfg.candidates} x {n} toy prompts x {cells} cells",
                   work=n * cfg.candidates * args.seeds * max(1, cfg.epochs), slow=2e6)
        return cfg
    from dynamics.runs.janus import WEAK_UNSUPPORTED

    check_weak_judge(parser, args, None, unsupported=WEAK_UNSUPPORTED)
    if args.seeds != 1:
        parser.error(f"--seeds {args.seeds}: several seeds are for the toy world; launch one run per seed")
    if not args.prompts:
        parser.error("--prompts is required for a Janus model (GenEval JSONL or text prompt lists)")
    for flag, paths in (("--prompts", args.prompts), ("--eval-prompts", args.eval_prompts or [])):
        for path in paths:
            if not path.exists():
                parser.error(f"{flag} {path}: no such file or directory")
            if not (path.is_file() or path.is_dir()):
                parser.error(f"{flag} {path}: not a regular file or a directory")
    why = check_device(args.device)
    if why:
        parser.error(f"--device {args.device}: {why}")
    kind, _, arg = args.external.partition(":")
    if kind not in EXTERNAL_KINDS or (kind != "none" and not arg):
        parser.error(f"--external {args.external!r}: expected none, file:<path>, detector:<path> or vlm:<path or id>")
    if kind == "vlm":
        from dynamics.full.presets import checkpoint_source

        try:
            checkpoint_source(arg, family="transformers VLM", presets=())
        except (ValueError, FileNotFoundError) as e:
            parser.error(f"--external {args.external}: {e}")
    return cfg


def model_identity(name: str) -> str:
    """What identifies a model's weights without reading them: a preset's name, a local directory's
    ``config.json`` and file names and sizes (hashed), a hub id's cached revision."""
    path = Path(name).expanduser()
    if path.is_dir():
        import hashlib

        h = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
        return f"dir:{h.hexdigest()}"
    if "/" in name:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        return f"hub:{name}@{Path(cached).parent.name if isinstance(cached, str) else 'not cached'}"
    return name


def _identity(parser, args) -> dict:
    extra = {"scale": "toy" if args.model == "toy" else "model"}
    if args.model != "toy":
        from dynamics.full.distributed import dist_info

        extra["model"] = model_identity(args.model)
        extra["processes"] = dist_info().world_size  # training batches are split over ranks: it changes the run
        kind, _, arg = args.external.partition(":")
        if kind in ("file", "detector") and Path(arg).is_file():  # a missing file is refused by its loader
            extra["external"] = f"{kind}:sha256:{content_hash(arg)}"
        elif kind == "vlm":
            extra["external"] = f"vlm:{model_identity(arg)}"
    return run_identity(parser, args, **extra)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Parse and check the flags, then run the toy (:func:`dynamics.runs.toy.run_toy`) or a Janus
    model (:func:`dynamics.runs.janus.run_janus`); returns the records."""
    parser = build_parser()
    args = parse_args(parser, argv)
    cfg = _check(parser, args)
    alarm = alarm_hook(parser, args)
    out = run_dir(parser, args, "full_clo" if args.model != "toy" else "toy_clo", _identity(parser, args))
    if args.model == "toy":
        from dynamics.runs.toy import run_toy

        return clean_errors(lambda: run_toy(args, cfg, out, alarm=alarm))
    from dynamics.runs.janus import run_janus

    return clean_errors(lambda: run_janus(args, cfg, out, alarm=alarm))

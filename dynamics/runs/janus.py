"""The real-model run of ``python experiments/full_clo.py --model <hub id | local path | preset>``:
the model family (Janus-Pro or Emu3, from the preset name or the checkpoint's ``config.json``), prompts
(GenEval JSONL or text lists) and any external judge file (``file:``, ``detector:``) read and checked
before the model loads, the model through transformers' native Janus or Emu3 classes, CLO (prompts
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
from dynamics.trackers import tracking_hook

__all__ = ["WEAK_UNSUPPORTED", "load_external", "load_model", "load_prompt_sets", "run_janus"]

#: Why a real model has no ``weak`` data judge (``--judge weak`` is refused, exit 2): it needs a weaker
#: checkpoint of the *same* model (less understanding pre-training), which no released Janus-Pro or Emu3
#: provides, and a second multi-billion-parameter model in memory beside the trained one.
WEAK_UNSUPPORTED = ("not offered for Janus-Pro / Emu3: the weak judge is a weaker checkpoint of the same model (less "
                    "understanding pre-training), which no released checkpoint provides, and it would hold a second "
                    "full model in memory; use it at the simulator and toy scales (experiments/sim_clo.py, "
                    "experiments/full_clo.py --model toy), or a judge of dynamics.judges that needs no second model")


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
    summary and (``--save-images``) PNGs. Returns the records. Under torchrun the process group is
    ended once the run, and with it the wrapped model, is gone."""
    from dynamics.full.distributed import finish_distributed

    records = _run_janus(args, cfg, out, alarm=alarm)
    finish_distributed()
    return records


def _run_janus(args, cfg: CLOConfig, out: Path, *, alarm=None) -> list[dict]:
    from dynamics.full.distributed import dist_info, init_distributed, parallel_mode, wrap_ddp, wrap_fsdp
    from dynamics.full.presets import model_family

    if args.seeds != 1:
        raise SystemExit("error: --seeds > 1 is for the toy world; launch one Janus run per seed")
    from dynamics.judges import parse_judge

    if parse_judge(cfg.judge).needs_judge_model:  # refused by the flag checks already; this guards direct callers
        raise ValueError(f"--judge {cfg.judge}: {WEAK_UNSUPPORTED}")
    family = model_family(args.model)  # an unknown family or a checkpoint without an image tokenizer: before loading
    prompts, n_train = load_prompt_sets(args)
    vlm = args.external.startswith("vlm:")
    external = None if vlm else load_external(args, prompts)  # judgement and detection files: before the model
    parallel = parallel_mode(getattr(args, "parallel", "auto"))  # a bad launch is refused before the model loads
    if os.environ.get("WORLD_SIZE", "1") != "1":
        init_distributed()
    info = dist_info()
    device = args.device or (f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    model = load_model(args, args.model, prompts, seed=cfg.seed, device=device)
    sampling, judge_cfg = model.sampling, model.judge_config
    if info.world_size > 1:
        model.module = wrap_fsdp(model.module) if parallel == "fsdp" else wrap_ddp(model.module)
    if vlm:
        external = load_external(args, prompts, model)
    train_ids = list(range(n_train)) if n_train is not None else None
    eval_ids = list(range(n_train, len(prompts))) if n_train is not None else None

    run_info = {"scale": "full", "model": args.model, "family": family, "prompts": [str(p) for p in args.prompts],
                "eval_prompts": [str(p) for p in args.eval_prompts or []], "sampling": dataclasses.asdict(sampling),
                "judge": dataclasses.asdict(judge_cfg), "scope": args.scope, "cfg_mode": args.cfg_mode,
                "precision": args.precision, "external": args.external, "world_size": info.world_size,
                "parallel": parallel if info.world_size > 1 else "none"}
    show = torch.tensor((eval_ids or list(range(len(prompts))))[: args.save_images])
    grid: dict[str, tuple] = {}
    if args.save_images and info.rank == 0:
        grid["before"] = _shown(model, show, model.sample(show, 2, seed=cfg.seed), external)
        model.save_images(show, grid["before"][0], out / "samples_before")
    result = run_clo(model, cfg, external=external, train_ids=train_ids, eval_ids=eval_ids, out_dir=str(out),
                     resume=args.resume, run_info=run_info,
                     on_epoch=tracking_hook(args, alarm, out, model=model, config=cfg) if info.rank == 0 else None)
    if args.save_images and info.rank == 0:
        grid["after"] = _shown(model, show, model.sample(show, 2, seed=cfg.seed), external)
        model.save_images(show, grid["after"][0], out / "samples_after")
        _write_grids(model, show, grid, out, title=f"{args.model}: judge={cfg.judge}, same prompts and sampling seed",
                     threshold=cfg.threshold)
    if info.rank == 0:
        finish(result.metrics, out, title=f"{args.model}: judge={cfg.judge} loss={cfg.loss} scope={args.scope}")
    return result.metrics


def _shown(model, show: torch.Tensor, images: torch.Tensor, external) -> tuple:
    """Samples to draw with the model's own ``P(yes)`` on them (taken now: training changes the model) and
    the external judge's verdicts (``None`` where the judge has none, e.g. a judgement file without them)."""
    from dynamics.full.external import MissingJudgementError

    try:
        verdicts = None if external is None else external(show, images)[0].cpu()
    except MissingJudgementError:
        verdicts = None
    return images, model.judge(show, images)[0].float().cpu(), verdicts


def _write_grids(model, show: torch.Tensor, grid: dict[str, tuple], out: Path, *, title: str, threshold: float) -> None:
    """The decoded samples as sample grids (:func:`dynamics.figures.samples.write_sample_grids`): the
    external verdict (where the judge has one for every image) and the model's own ``P(yes)`` per image,
    before and after side by side."""
    from dynamics.figures.samples import write_sample_grids

    verdicts = None if any(v[2] is None for v in grid.values()) else {k: v[2] for k, v in grid.items()}
    write_sample_grids(out, {k: model.decode(v[0])[0] for k, v in grid.items()}, verdicts,
                       {k: v[1] for k, v in grid.items()}, prompts=[str(model.prompts.texts[i]) for i in show.tolist()],
                       threshold=threshold, title=title, verdict="external judge")


def load_model(args, name: str, prompts, *, seed: int, device: str):
    """The unified model ``name`` (a preset, a local checkpoint or an offline hub id) over ``prompts``,
    with the sampling, judging and training settings of the parsed flags (``--cfg-scale``,
    ``--temperature``, ``--top-k``, ``--sample-batch-size``, ``--judge-mode``, ``--judge-batch-size``,
    ``--question``, ``--answer-format``, ``--precision``, ``--cfg-mode``, ``--scope``, ``--lora-rank``,
    ``--logprob-batch-size``, ``--gradient-checkpointing``, ``--no-progress``; absent ones take their
    defaults): the one loader of the CLO run and the diagnosis. The adapter follows the model family
    (:func:`dynamics.full.presets.model_family`: Janus-Pro or Emu3), checked before anything loads."""
    from dynamics.full.emu3 import Emu3Unified
    from dynamics.full.janus import JanusUnified, JudgeConfig
    from dynamics.full.presets import model_family
    from dynamics.full.sampler import SamplingConfig

    adapter = {"janus": JanusUnified, "emu3": Emu3Unified}[model_family(name)]

    def get(flag, default):  # the diagnosis has no training flags
        return getattr(args, flag, default)

    sampling = SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k or None,
                              batch_size=args.sample_batch_size or None)
    jkw = {"mode": args.judge_mode, "batch_size": args.judge_batch_size}
    if args.question:
        jkw["question"] = args.question
    judge_cfg = JudgeConfig.score_format(**jkw) if args.answer_format == "score" else JudgeConfig(**jkw)
    return adapter.from_pretrained(
        name, prompts, dtype=_dtype(args.precision), device=device, seed=seed, sampling=sampling,
        judge=judge_cfg, cfg_mode=get("cfg_mode", "none"), scope=get("scope", "trunk"), lora_rank=get("lora_rank", 16),
        logprob_batch_size=get("logprob_batch_size", 0) or None,
        gradient_checkpointing=get("gradient_checkpointing", False), progress=not args.no_progress)


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

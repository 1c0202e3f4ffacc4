"""The toy run of ``python experiments/full_clo.py`` (the default, ``--model toy``): for each seed,
the pre-trained toy model (cached by config and seed), the check that understanding beats
generation (own verdicts at ``--threshold``, the loop's rule), CLO judged by the world's exact
detector with the co-degradation alarm, the per-category table, curves and before/after sample
grids. Flags and their checks: :mod:`dynamics.runs.full`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import torch

from dynamics.clo import CLOConfig, run_clo
from dynamics.runs.common import finish, report_weak_judge, write_bayes_link
from dynamics.trackers import tracking_hook

__all__ = ["run_toy", "toy_model", "toy_size", "weak_judge"]


def toy_size(args):
    """The :class:`~dynamics.toy.study.ToySize` of parsed flags (preset, pre-training steps, cache, gap)."""
    from dynamics.toy.study import ToySize, default_cache_dir

    cache = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    return ToySize(preset=args.toy_preset, pretrain_steps=args.pretrain_steps, cache_dir=cache,
                   overrides={} if args.gen_noise is None else {"gen_noise": args.gen_noise})


def toy_model(args, seed: int, threshold: float = 0.5):
    """The pre-trained toy model for ``seed`` (from the cache when present) and its gap report,
    gap checked (unless ``--no-gap-check``) with own verdicts at the CLO ``threshold`` (``--threshold``)."""
    from dynamics.toy.pretrain import GapError, gap_report
    from dynamics.toy.study import pretrained_model

    size = toy_size(args)
    try:
        model = pretrained_model(size, seed, coupling=args.coupling, check=not args.no_gap_check,
                                 progress=not args.no_progress, threshold=threshold)
    except GapError as e:
        raise SystemExit(f"error: {e}") from None
    return model, model.gap if not args.no_gap_check else gap_report(model, seed=seed, threshold=threshold)


def weak_judge(args, model, cfg: CLOConfig, seed: int):
    """The judge model of ``--judge weak`` for ``seed`` (None for other judges) and its report: the same
    config, seed and coupling pre-trained for ``--weak-pretrain-steps`` (default
    :data:`dynamics.toy.study.WEAK_FRACTION` of the run's; cached), and the quality of its verdicts and
    of the model's own on the model's samples (:func:`dynamics.toy.study.judge_quality`). Warns when it
    is no weaker a judge than the model's own understanding."""

    from dynamics.judges import parse_judge
    from dynamics.toy.study import judge_quality, weak_model, weak_steps

    if not parse_judge(cfg.judge).needs_judge_model:
        return None, None
    size = toy_size(args)
    steps = weak_steps(size, args.weak_pretrain_steps, coupling=args.coupling)
    weak = weak_model(size, seed, steps=steps, coupling=args.coupling, progress=not args.no_progress)
    kw = {"n": cfg.candidates, "seed": seed, "threshold": cfg.threshold}
    report = {"pretrain_steps": steps, "weak": judge_quality(model, weak, **kw), "own": judge_quality(model, model, **kw)}
    report_weak_judge(steps, report["weak"]["balanced_acc"], report["own"]["balanced_acc"],
                      f"seed {seed}, on the model's {report['own']['n']} samples, exact detector")
    return weak, report


def run_toy(args, cfg: CLOConfig, out: Path, *, alarm=None) -> list[dict]:
    """Every seed of ``--seeds`` in turn: pre-trained model, CLO judged by the exact detector (with
    ``alarm``, e.g. :class:`dynamics.alarm.EpochAlarm`, as ``on_epoch``), sample grids before and
    after; then the summary table and curves of all seeds. Returns the records."""
    from dynamics.figures.samples import write_sample_grids
    from dynamics.toy.world import draw_scene
    from dynamics.transfer import fixed_samples, toy_bayes_link

    torch.set_num_threads(1)  # measured fastest for a model this small; more threads only add overhead
    t0 = time.perf_counter()
    all_records: list[dict] = []
    for s in range(cfg.seed, cfg.seed + args.seeds):
        run_dir = out / f"seed_{s}" if args.seeds > 1 else out
        run_dir.mkdir(parents=True, exist_ok=True)
        model, gap = toy_model(args, s, cfg.threshold)
        world = model.world
        train_ids, heldout_ids = world.split_ids()
        ids = {"all": None, "train": train_ids, "heldout": heldout_ids}[args.train_on]
        show = _show_ids(model.prompts)
        before = model.sample(show, 6, seed=s)
        p_before = model.judge(show, before)[0]  # the model's own verdicts, before training changes it
        info = {"scale": "toy", "toy_config": model.config.to_dict(), "coupling": args.coupling,
                "bayes_offset": getattr(model, "offset", None),
                "pretrain": {k: v for k, v in model.pretrain_info.items() if k != "loss_curve"},
                "gap_report": gap, "train_on": args.train_on}
        judge_model, weak = weak_judge(args, model, cfg, s)
        if weak is not None:
            info["weak_judge"] = weak
        link_samples = fixed_samples(model, per_prompt=2, seed=s)  # the same pairs before and after
        link_before = toy_bayes_link(model, samples=link_samples)
        result = run_clo(model, dataclasses.replace(cfg, seed=s), external=world.external_judge(), train_ids=ids,
                         out_dir=str(run_dir), resume=args.resume, run_info=info,
                         on_epoch=tracking_hook(args, alarm, run_dir, model=model, config=dataclasses.replace(cfg, seed=s)),
                         judge_model=judge_model)
        write_bayes_link(run_dir, link_before, toy_bayes_link(model, samples=link_samples))
        after = model.sample(show, 6, seed=s)
        judge = world.external_judge()
        write_sample_grids(run_dir, {"before": before[0], "after": after[0]},
                           {"before": judge(show, before)[0], "after": judge(show, after)[0]},
                           {"before": p_before, "after": model.judge(show, after)[0]},
                           prompts=[model.prompts.texts[i] for i in show.tolist()], threshold=cfg.threshold,
                           draw=functools.partial(draw_scene, world=world),
                           title=f"toy world, seed {s}: judge={cfg.judge}, same prompts and sampling seed")
        all_records.extend(result.metrics)
    elapsed = time.perf_counter() - t0
    title = (f"toy world: judge={cfg.judge} loss={cfg.loss} coupling={args.coupling} "
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

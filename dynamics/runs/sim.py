"""``python experiments/sim_clo.py``: CLO on the single-token simulator, N seeds vectorised.

Builds a compositional world, pre-trains R = ``--seeds`` models side by side (leaving the
internal gap: understanding stronger than generation), runs CLO through :func:`dynamics.clo.run_clo`
with theory tracking (measured against predicted one-step changes) and writes into ``--out``:
config.json, metrics.jsonl (one line per seed and epoch), theory.jsonl, curves.png, summary.txt.
The world's alignment table is the exact external judge, so the co-degradation alarm
(:class:`dynamics.alarm.EpochAlarm`, ``--alarm-tolerance``) watches every seed.

Before any work: every flag typed and in range (:func:`dynamics.cli.parse_args`), the world built
(cheap) and the probe set and the memory of the run's tables checked against it, and with
``--resume`` the run's identity compared with the one in ``--out``
(:func:`dynamics.runs.common.run_dir`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from dynamics.cli import (
    add_alarm_flag,
    alarm_hook,
    check_weak_judge,
    clo_config,
    clo_parser,
    parse_args,
    run_identity,
)
from dynamics.clo import CLOConfig, run_clo
from dynamics.runs.common import (
    check_size,
    clean_errors,
    finish,
    report_weak_judge,
    run_dir,
    write_bayes_link,
)
from dynamics.sim.model import COUPLINGS
from dynamics.trackers import add_tracking_flags, tracking_hook

__all__ = ["build", "build_parser", "main", "peak_bytes", "weak_judge"]

SIM_DEFAULTS = CLOConfig(candidates=8, epochs=20, lr=0.5, batch_size=16, eval_candidates=16, chunk_size=64)


def build_parser() -> argparse.ArgumentParser:
    p = clo_parser("CLO on the single-token simulator (theory scale): a shared-trunk two-head model over a "
                   "compositional world, N seeds trained side by side in one process.", defaults=SIM_DEFAULTS)
    g = p.add_argument_group("simulator")
    g.add_argument("--prompts", type=int, default=64, help="P, prompts in the world")
    g.add_argument("--tokens", type=int, default=64, help="V, image tokens in the world")
    g.add_argument("--seeds", type=int, default=1, help="N seeds run vectorised in one process (seed, seed+1, ...)")
    g.add_argument("--world-seed", type=int, default=0, help="seed of the world (shared by every model seed)")
    g.add_argument("--coupling", default="bayes", choices=list(COUPLINGS),
                   help="how understanding reads the generation branch: decoupled (a yes/no head on private "
                        "copies of everything), trunk (shared trunk, own image embeddings), tied (shared trunk "
                        "reading generation's image-token embeddings), bayes (the generator's posterior: the "
                        "paper's assumption)")
    g.add_argument("--gap", type=float, default=0.3, help="pre-training gap size: share of noisy generation examples")
    g.add_argument("--pretrain-steps", type=int, default=300, help="pre-training steps (never wall time)")
    g.add_argument("--track-every", type=int, default=5, help="theory tracking every k-th training step (0 = off)")
    g.add_argument("--probes", type=int, default=32,
                   help="probe pairs tracked by the theory tracker (3/4 misaligned, 1/4 aligned)")
    g.add_argument("--float64", action="store_true", help="float64 parameters (theory checks)")
    add_alarm_flag(g)
    add_tracking_flags(g)
    return p


def peak_bytes(args: argparse.Namespace, cfg: CLOConfig) -> int:
    """Estimated peak memory of a run: the model's (R, P, V) tables (logits, log-probs, posteriors,
    gradients, optimizer state: about 36 copies, measured at P = V = 256 with 2 to 32 seeds) and the
    (R, P, N) candidate tensors, plus the interpreter and torch (about 0.45 GiB)."""
    item = 8 if args.float64 else 4
    table = args.seeds * args.prompts * args.tokens * item
    cands = args.seeds * args.prompts * max(cfg.candidates, cfg.eval_candidates) * 8 * 8
    return 36 * table + cands + 450 * 2**20


def build(args: argparse.Namespace, world=None, *, steps: int | None = None):
    """World (unless given), pre-trained model and pre-training metrics for parsed arguments (``steps``:
    pre-training steps other than ``--pretrain-steps``, e.g. the weak judge's)."""
    from dynamics.sim import SimModel, SimWorld
    from dynamics.sim.pretrain import pretrain

    world = world if world is not None else SimWorld(args.prompts, args.tokens, seed=args.world_seed)
    model = SimModel(world, replicas=args.seeds, seed=args.seed, coupling=args.coupling,
                     dtype=torch.float64 if args.float64 else torch.float32)
    pre = pretrain(world, model, steps=args.pretrain_steps if steps is None else steps, gap=args.gap, seed=args.seed)
    return world, model, pre


def weak_judge(args: argparse.Namespace, world, model, cfg: CLOConfig):
    """The judge model of ``--judge weak`` (None for other judges) and its report: the same world,
    replicas and seeds pre-trained for ``--weak-pretrain-steps`` (default
    :data:`dynamics.sim.study.WEAK_FRACTION` of ``--pretrain-steps``), and the exact quality of its
    verdicts and of the model's own on the model's candidates (:func:`dynamics.sim.study.weak_judge_quality`).
    Warns when it is no weaker a judge than the model's own understanding."""

    from dynamics.judges import parse_judge
    from dynamics.sim.study import SimSize, weak_judge_quality, weak_steps

    if not parse_judge(cfg.judge).needs_judge_model:
        return None, None
    steps = weak_steps(SimSize(pretrain_steps=args.pretrain_steps), args.weak_pretrain_steps)
    _, weak, _ = build(args, world, steps=steps)
    report = {"pretrain_steps": steps, "weak": weak_judge_quality(world, model, weak, threshold=cfg.threshold),
              "own": weak_judge_quality(world, model, model, threshold=cfg.threshold)}
    mean = {k: sum(report[k]["balanced_acc"]) / len(report[k]["balanced_acc"]) for k in ("weak", "own")}
    report_weak_judge(steps, mean["weak"], mean["own"], f"on the model's candidates, exact, mean over {args.seeds} "
                                                        f"seed(s), coupling {args.coupling}")
    return weak, report


def hooks_for(args, world, model, cfg):
    if args.track_every <= 0:
        return []
    from dynamics.sim.tracking import TheoryTracker

    return [TheoryTracker.with_probes(world, model, args.probes, every=args.track_every, seed=args.seed, config=cfg)]


def _world(parser, args):
    """The world of ``args`` (cheap), with the probe set checked against it: usage errors."""
    from dynamics.sim import SimWorld

    try:
        world = SimWorld(args.prompts, args.tokens, seed=args.world_seed)
    except ValueError as e:
        parser.error(f"--prompts {args.prompts} --tokens {args.tokens}: {e}")
    if args.track_every > 0:
        n_mis = max(1, (3 * args.probes) // 4)
        n_al = max(1, args.probes - n_mis)
        mis, al = int((~world.aligned).sum()), int(world.aligned.sum())
        if n_mis > mis or n_al > al:
            parser.error(f"--probes {args.probes}: needs {n_mis} misaligned and {n_al} aligned (prompt, token) pairs, "
                         f"the world has {mis} and {al}; lower --probes")
    return world


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        cfg = clo_config(args)
    except ValueError as e:
        parser.error(str(e))
    alarm = alarm_hook(parser, args)
    check_weak_judge(parser, args, args.pretrain_steps)
    check_size(parser, peak_bytes(args, cfg), f"--seeds {args.seeds} x --prompts {args.prompts} x --tokens "
               f"{args.tokens}" + (" (float64)" if args.float64 else ""),
               work=args.seeds * args.prompts * args.tokens * (args.pretrain_steps + cfg.epochs), slow=5e9)
    world = _world(parser, args)
    out = run_dir(parser, args, "sim_clo", run_identity(parser, args, scale="sim"))
    return clean_errors(lambda: _run(args, cfg, out, alarm, world))


def _run(args, cfg, out, alarm=None, world=None) -> list[dict]:
    world, model, pre = build(args, world)
    info = {"scale": "sim", "prompts": args.prompts, "tokens": args.tokens, "seeds": args.seeds,
            "world_seed": args.world_seed, "coupling": args.coupling,
            "gap": args.gap, "pretrain_steps": args.pretrain_steps, "track_every": args.track_every,
            "probes": args.probes, "float64": args.float64, "pretrain_metrics": pre}
    from dynamics.transfer import sim_bayes_link

    judge_model, weak = weak_judge(args, world, model, cfg)
    if weak is not None:
        info["weak_judge"] = weak
    link_before = sim_bayes_link(model)
    result = run_clo(model, cfg, external=world.oracle, out_dir=str(out), resume=args.resume,
                     hooks=hooks_for(args, world, model, cfg), run_info=info,
                     on_epoch=tracking_hook(args, alarm, out, model=model, config=cfg), judge_model=judge_model)
    write_bayes_link(out, link_before, sim_bayes_link(model))
    finish(result.metrics, out, title=f"simulator: judge={cfg.judge} loss={cfg.loss} coupling={args.coupling}")
    return result.metrics

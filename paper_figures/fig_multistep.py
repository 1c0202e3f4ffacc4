"""Dynamics over many steps: the linearised (eNTK-flow) prediction of every probe's cumulative change
of log pi and log P(yes) over a CLO run, re-linearised every k steps, against the run itself at the
training learning rates (simulator: plain SGD, lr 0.5; toy: Adam, lr 1e-4).

    python paper_figures/fig_multistep.py            # simulator and toy, default sizes (toy pre-training cached)
    python paper_figures/fig_multistep.py --quick    # a smoke run (small simulator, tiny toy preset)
    python paper_figures/fig_multistep.py --seeds 2  # two seeds of each scale

Writes fig_multistep.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.study.multistep.multistep_experiment`,
drawing: :func:`dynamics.figures.multistep.draw_multistep`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Multi-step check of the learning-dynamics theory: linearised prediction of the probes' "
                    "cumulative change over a CLO run, re-linearised every k steps (k = 1, 10, one per epoch, "
                    "one per run), against the measured change (simulator SGD lr 0.5, toy Adam lr 1e-4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "out", help="output directory")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (no conclusion at this size)")
    p.add_argument("--seed", type=int, default=0, help="first seed (model and CLO seed of each scale)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per scale: seed, seed+1, ...")
    p.add_argument("--sim-epochs", type=int, default=None, help="CLO epochs of the simulator run (default: its 20)")
    p.add_argument("--toy-epochs", type=int, default=None, help="CLO epochs of the toy run (default: the recipe's 4)")
    p.add_argument("--no-toy", action="store_true", help="the simulator only")
    p.add_argument("--cache-dir", default="cache/toy", help="toy pre-training cache")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from dynamics.figures.multistep import draw_multistep
    from dynamics.sim.study import SimSize
    from dynamics.study.multistep import format_table, multistep_experiment
    from dynamics.toy.study import ToySize

    torch.set_num_threads(1)
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.quick:
        from dynamics.toy.experiments import QUICK

        sim_size, toy_size = SimSize.quick(), QUICK
    else:
        sim_size, toy_size = SimSize(), ToySize(cache_dir=args.cache_dir)
    result = multistep_experiment(sim_size=sim_size, toy_size=toy_size, sim_seeds=seeds,
                                  toy_seeds=[] if args.no_toy else seeds, sim_epochs=args.sim_epochs,
                                  toy_epochs=args.toy_epochs)
    result["summary"]["size"] = {"quick": args.quick, "seeds": seeds, "sim": dataclasses.asdict(sim_size),
                                 "toy_preset": toy_size.preset}
    paths = draw_multistep(result, args.out)
    for path in paths:
        print(path)
    print(format_table(result["summary"]))
    return result


if __name__ == "__main__":
    main()

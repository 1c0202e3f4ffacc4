"""Curriculum replay where it can matter: for every number of candidates N, loss (C-SFT, C-DPO) and
replay (none, early at a fifth of training, late at half of it, adaptive), the discard pool, the
prompts replay recovers, the precision of the replayed data against the first round's, and Gen / the
understanding's false-positive rate beyond no replay (paired by unit), overall and per difficulty tier.

    python paper_figures/fig_curriculum_map.py          # P = V = 64, 4 seeds, 20 epochs, worlds 0-1
    python paper_figures/fig_curriculum_map.py --quick  # a seconds-long smoke run

Writes fig_curriculum_map.png, .pdf and .json (the numbers: summary["rows"], one per N x loss x replay,
and summary["why"], replayed precision against gain per unit) into --out (default paper_figures/out).

Experiment: :func:`dynamics.sim.ablations.curriculum_map`,
drawing: :func:`dynamics.figures.ablations.draw_curriculum_map`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.runs.figures import add_sim_size_flags, sim_size

OUT = Path(__file__).resolve().parent / "out"


def parse(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="a small size for smoke tests (seconds): P = 24, 2 seeds, 4 epochs, world 0, N in 1, 2, 8")
    add_sim_size_flags(p)
    p.add_argument("--worlds", type=int, nargs="+", default=None, help="world seeds; default 0 1, quick 0")
    p.add_argument("--ns", type=int, nargs="+", default=None,
                   help="candidates per prompt; default 1 2 4 8 10, quick 1 2 8")
    p.add_argument("--losses", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"], help="losses")
    return p, p.parse_args(argv)


def main(argv=None) -> dict:
    p, args = parse(argv)
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from dynamics.figures.ablations import draw_curriculum_map
    from dynamics.sim.ablations import curriculum_map

    torch.set_num_threads(1)
    size = sim_size(p, args)
    worlds = args.worlds or ((0,) if args.quick else (0, 1))
    ns = args.ns or ((1, 2, 8) if args.quick else (1, 2, 4, 8, 10))
    result = curriculum_map(size, ns=ns, losses=args.losses, worlds=worlds)
    for path in draw_curriculum_map(result, args.out):
        print(path)
    return result


if __name__ == "__main__":
    main()

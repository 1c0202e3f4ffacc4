"""Gains against the initial gap (the paper: Spearman rho = 0.53): per task tag x difficulty tier, the
initial non-unification against the Gen gain of self-judged SFT; Spearman's rho per unit (world,
seed) and its mean with a 95 % t interval over units, also against the initial generation error
(headroom) and for the gain beyond the unfiltered control.

    python paper_figures/fig_gap_gain.py          # P = V = 64, 4 seeds, 20 epochs, worlds 0-1
    python paper_figures/fig_gap_gain.py --quick  # a seconds-long smoke run

Writes fig_gap_gain.png, .pdf and .json (summary["rho"], ["rho_headroom"], ["rho_beyond_control"],
["cells"], ["groups"]) into --out (default paper_figures/out).

Experiment: :func:`dynamics.sim.ablations.gap_gain`,
drawing: :func:`dynamics.figures.ablations.draw_gap_gain`.
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
                   help="a small size for smoke tests (seconds): P = 24, 2 seeds, 4 epochs, world 0")
    add_sim_size_flags(p)
    p.add_argument("--worlds", type=int, nargs="+", default=None, help="world seeds; default 0 1, quick 0")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the interval of the mean rho")
    return p, p.parse_args(argv)


def main(argv=None) -> dict:
    p, args = parse(argv)
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from dynamics.figures.ablations import draw_gap_gain
    from dynamics.sim.ablations import gap_gain

    torch.set_num_threads(1)
    size = sim_size(p, args)
    worlds = args.worlds or ((0,) if args.quick else (0, 1))
    result = gap_gain(size, worlds=worlds, level=args.level)
    for path in draw_gap_gain(result, args.out):
        print(path)
    return result


if __name__ == "__main__":
    main()

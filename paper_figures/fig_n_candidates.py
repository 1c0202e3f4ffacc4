"""The N-candidates ablation (the paper: 254 against 2,265 training samples): for every number of
candidates per prompt N, self-judged SFT without replay: the training-set size, the discard pool,
the first round's precision, and the change of Gen and of the understanding's false-positive rate,
with each N read against the largest (paired by unit).

    python paper_figures/fig_n_candidates.py          # P = V = 64, 4 seeds, 20 epochs, worlds 0-1
    python paper_figures/fig_n_candidates.py --quick  # a seconds-long smoke run

Writes fig_n_candidates.png, .pdf and .json (summary["rows"], one per N, and summary["rho_size_gain"])
into --out (default paper_figures/out).

Experiment: :func:`dynamics.sim.ablations.n_candidates`,
drawing: :func:`dynamics.figures.ablations.draw_n_candidates`.
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
    return p, p.parse_args(argv)


def main(argv=None) -> dict:
    p, args = parse(argv)
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from dynamics.figures.ablations import draw_n_candidates
    from dynamics.sim.ablations import n_candidates

    torch.set_num_threads(1)
    size = sim_size(p, args)
    worlds = args.worlds or ((0,) if args.quick else (0, 1))
    ns = args.ns or ((1, 2, 8) if args.quick else (1, 2, 4, 8, 10))
    result = n_candidates(size, ns=ns, worlds=worlds)
    for path in draw_n_candidates(result, args.out):
        print(path)
    return result


if __name__ == "__main__":
    main()

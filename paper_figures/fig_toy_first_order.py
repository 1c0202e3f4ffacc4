"""Toy world, finding 3: measured one-step change of log pi and log P(yes) of probe pairs against
the first-order prediction of the kernel module.

    python paper_figures/fig_toy_first_order.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_first_order.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_first_order.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.experiments.toy_first_order`,
drawing: :func:`dynamics.figures.toy.draw_toy_first_order`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_first_order", default_out=Path(__file__).resolve().parent / "out")

"""Toy world, what it would take: the self judge against the unfiltered control under stronger or
longer generation training (lr x 10, three times the epochs, plain SGD).

    python paper_figures/fig_toy_recipes.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_recipes.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_recipes.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.experiments.toy_recipes`,
drawing: :func:`dynamics.figures.toy.draw_toy_recipes`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_recipes", default_out=Path(__file__).resolve().parent / "out")

"""Toy world, findings 1 and 2: the self judge against the unfiltered control, the exact judge
and a corrupt judge, per GenEval category.

    python paper_figures/fig_toy_judges.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_judges.py --understanding bayes   # understanding through the Bayes link
    python paper_figures/fig_toy_judges.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_judges.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.experiments.toy_judges`,
drawing: :func:`dynamics.figures.toy.draw_toy_judges`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_judges", default_out=Path(__file__).resolve().parent / "out")

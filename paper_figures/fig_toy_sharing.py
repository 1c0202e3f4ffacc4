"""Toy world, finding 4: the understanding gain beyond the control as the coupling of the branches
grows (Janus-like sharing, full sharing, the Bayes link).

    python paper_figures/fig_toy_sharing.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_sharing.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_sharing.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.experiments.toy_sharing`,
drawing: :func:`dynamics.figures.toy.draw_toy_sharing`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_sharing", default_out=Path(__file__).resolve().parent / "out")

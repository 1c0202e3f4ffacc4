"""Aligned (shared) against decoupled sharing: the understanding moves only through shared parameters.

    python paper_figures/fig_sharing.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_sharing.py --quick  # a seconds-long smoke run

Writes fig_sharing.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.sharing`,
drawing: :func:`dynamics.figures.sim.draw_sharing`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("sharing", default_out=Path(__file__).resolve().parent / "out")

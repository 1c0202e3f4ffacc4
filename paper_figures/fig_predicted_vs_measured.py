"""Measured against first-order predicted ``Delta G`` / ``Delta U`` over a self-judged SFT run.

    python paper_figures/fig_predicted_vs_measured.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_predicted_vs_measured.py --quick  # a seconds-long smoke run

Writes fig_predicted_vs_measured.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.predicted_vs_measured`,
drawing: :func:`dynamics.figures.sim.draw_predicted_vs_measured`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("predicted_vs_measured", default_out=Path(__file__).resolve().parent / "out")

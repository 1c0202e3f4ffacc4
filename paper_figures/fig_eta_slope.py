"""The first-order residual against the step size (slope 2 on log-log axes: ``O(eta^2)``), for SFT and DPO
with ``bayes`` understanding and SFT with the ``head`` understanding (float64).

    python paper_figures/fig_eta_slope.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_eta_slope.py --quick  # a seconds-long smoke run

Writes fig_eta_slope.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.eta_slope`,
drawing: :func:`dynamics.figures.sim.draw_eta_slope`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("eta_slope", default_out=Path(__file__).resolve().parent / "out")

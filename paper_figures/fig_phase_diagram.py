"""The phase diagram at the simulator scale: coupling (decoupled, trunk, tied, bayes) x judge quality
(self, oracle, corrupt:0.6), each arm's change beyond the unfiltered control and its phase
(co-improvement, drift, no transfer, co-degradation).

    python paper_figures/fig_phase_diagram.py          # P = V = 64, 4 seeds x 2 worlds, 20 epochs
    python paper_figures/fig_phase_diagram.py --quick  # a seconds-long smoke run

Writes fig_phase_diagram.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.phase_diagram`,
drawing: :func:`dynamics.figures.sim.draw_phase_diagram`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("phase_diagram", default_out=Path(__file__).resolve().parent / "out")

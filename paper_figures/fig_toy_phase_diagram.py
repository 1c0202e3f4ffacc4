"""Toy world, the phase diagram: coupling (decoupled, trunk, tied, bayes) x judge quality (self,
oracle, corrupt:0.9), each arm's change beyond the unfiltered control and its phase
(co-improvement, drift, no transfer, co-degradation).

    python paper_figures/fig_toy_phase_diagram.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_phase_diagram.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_phase_diagram.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.experiments.toy_phase_diagram`,
drawing: :func:`dynamics.figures.toy.draw_toy_phase_diagram`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_phase_diagram", default_out=Path(__file__).resolve().parent / "out")

"""Self judge (co-improvement) against ``corrupt:p`` (poor supervision), with the unfiltered and oracle
controls: Gen accuracy, the understanding's false-positive rate, Non.

    python paper_figures/fig_co_improvement_vs_degradation.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_co_improvement_vs_degradation.py --quick  # a seconds-long smoke run

Writes fig_co_improvement_vs_degradation.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.co_improvement_vs_degradation`,
drawing: :func:`dynamics.figures.sim.draw_co_improvement_vs_degradation`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("co_improvement_vs_degradation", default_out=Path(__file__).resolve().parent / "out")

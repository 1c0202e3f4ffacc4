"""The paper's training curves (Gen, Und win rate, Non) for SFT, DPO and curriculum SFT with the self
judge, against the unfiltered control, from one pre-trained model (the legend gives the curriculum's
initial discard-pool size: replay has nothing to do when it is empty).

    python paper_figures/fig_training_curves.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_training_curves.py --quick  # a seconds-long smoke run

Writes fig_training_curves.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.training_curves`,
drawing: :func:`dynamics.figures.sim.draw_training_curves`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("training_curves", default_out=Path(__file__).resolve().parent / "out")

"""The false-positive-correction mechanism (paper Fig. 7) on a self-judged SFT run that trains on a random
``train_share`` of the prompts: the dominance ratio of corrected against random misaligned pairs, their
``Delta G``, their similarity to the training prompts, and the share of false positives corrected on
trained against held-out prompts.

    python paper_figures/fig_fp_correction.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_fp_correction.py --quick  # a seconds-long smoke run

Writes fig_fp_correction.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.fp_correction`,
drawing: :func:`dynamics.figures.sim.draw_fp_correction`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("fp_correction", default_out=Path(__file__).resolve().parent / "out")

"""Curriculum replay early against late (after the model improved; the paper's epochs 4 and 10 of 20 by
default), and the adaptive trigger: discard pool, SFT-set size, the SFT set's precision, Gen accuracy,
false positives. One candidate per prompt, so that a third of the prompts start in the discard pool
(with 8 the pool is empty here).

    python paper_figures/fig_curriculum.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_curriculum.py --quick  # a seconds-long smoke run

Writes fig_curriculum.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.curriculum`,
drawing: :func:`dynamics.figures.sim.draw_curriculum`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("curriculum", default_out=Path(__file__).resolve().parent / "out")

"""The whole ``corrupt:p`` curve: the paired change of Gen accuracy, the false-positive rate and Non
against ``p``, with the controls.

    python paper_figures/fig_corrupt_scan.py          # P = V = 64, 4 seeds, 20 epochs
    python paper_figures/fig_corrupt_scan.py --quick  # a seconds-long smoke run

Writes fig_corrupt_scan.png, .pdf and .json (the numbers) into --out
(default paper_figures/out).

Experiment: :func:`dynamics.sim.experiments.corrupt_scan`,
drawing: :func:`dynamics.figures.sim.draw_corrupt_scan`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("corrupt_scan", default_out=Path(__file__).resolve().parent / "out")

"""Toy world, poor supervision that fails the way real judges fail: the look-alike judge (the exact
detector that also accepts each near miss of the prompt with probability p) and an external judge of
set precision and recall (errors near misses first), in the tied and Bayes-linked couplings, each arm
against the unfiltered control, with the realised precision, recall and near-miss share of its
training set and the co-degradation alarm in every arm.

    python paper_figures/fig_toy_poor_supervision.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_poor_supervision.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_poor_supervision.png, .pdf, .json (the numbers) and fig_toy_poor_supervision_phase.png,
.pdf into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.ablations.toy_poor_supervision`,
drawing: :func:`dynamics.figures.poor_supervision.draw_poor_supervision`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_poor_supervision", default_out=Path(__file__).resolve().parent / "out")

"""Figure logic for ``paper_figures/``: each figure is a function that runs its experiments at a
given size and draws; the figure scripts only call them.

- :mod:`dynamics.figures.sim`: the simulator and theory figures (training curves, co-improvement
  against co-degradation, the corrupt-judge scan, parameter sharing, curriculum replay, the
  false-positive-correction mechanism, predicted against measured one-step changes, the
  ``O(eta^2)`` slope), the experiments behind them (:func:`~dynamics.figures.sim.judge_arms` and
  friends: arms run from one pre-trained model and read against controls, seed by seed) and the
  command line every simulator figure script shares (:func:`~dynamics.figures.sim.main`);
- :mod:`dynamics.figures.toy`: the toy-world figures (findings per category against controls, the
  first-order one-step check, Janus-like / full sharing / the Bayes link, stronger recipes) and
  their command line (:func:`~dynamics.figures.toy.main`); imported on use (it loads transformers).

Example::

    >>> from dynamics.figures import FIGURES, SimSize
    >>> sorted(FIGURES)[:3], SimSize().prompts
    (['co_improvement_vs_degradation', 'corrupt_scan', 'curriculum'], 64)
"""

from __future__ import annotations

from .sim import FIGURES, SimSize

__all__ = ["FIGURES", "SimSize"]

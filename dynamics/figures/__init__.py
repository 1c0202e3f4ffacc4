"""Drawing the figures of ``paper_figures/``: each draw function takes the result dict of an
experiment and an output directory, draws, and writes PNG, PDF and the JSON of its numbers. Nothing
here runs a model or computes a statistic: the experiments are :mod:`dynamics.sim.experiments` and
:mod:`dynamics.toy.experiments`, the command line pairing each experiment with its draw function is
:mod:`dynamics.runs.figures`.

- :mod:`dynamics.figures.sim`: the simulator and theory figures (training curves, co-improvement
  against co-degradation, the corrupt-judge scan, the phase diagram, curriculum replay, the
  false-positive-correction mechanism, predicted against measured one-step changes, the
  ``O(eta^2)`` slope), and the panels they are made of (``plot_curves``, ...);
- :mod:`dynamics.figures.toy`: the toy-world figures (findings per category against controls, the
  first-order one-step check, the phase diagram, stronger recipes);
- :mod:`dynamics.figures.phase`: the phase-diagram panel both scales share;
- :mod:`dynamics.figures.diagnose`: the diagnosis of models without training (Non and attribution per
  task, Non per tier; drawn by ``experiments/diagnose.py``);
- :mod:`dynamics.figures.samples`: sample grids that show the self-contradiction (the exact verdict
  against the model's own ``P(yes)`` per image, before and after side by side);
- :mod:`dynamics.figures.style`: the one figure style every drawing uses (sizes, legends outside the
  data, colour and line style per arm, the caption naming the bands, smoke-test marking);
- :mod:`dynamics.figures.common`: pyplot (the backend is not forced), writing a figure and its numbers.

Panel titles come from :data:`dynamics.report.LABELS`.
"""

from __future__ import annotations

from .common import finish, pyplot, save_figure, write_summary

__all__ = ["finish", "pyplot", "save_figure", "write_summary"]

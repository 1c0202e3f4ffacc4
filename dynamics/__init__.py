"""dynamics: learning dynamics of unified multimodal models.

Unified models that both generate and understand images contradict themselves: they generate
images their own understanding rejects. This package makes the analysis of that gap, and its use
for self-improvement (CLO: self-judged data, generation-only training, curriculum replay),
executable at three scales through one model protocol:

- :mod:`dynamics.theory`   closed forms (A, G, Proposition 1, Lemmas 3-4, the Bayes link), sympy;
- :mod:`dynamics.kernels`  the empirical NTK (torch.func) and first-order probes;
- :mod:`dynamics.losses`   SFT and DPO-family objectives;
- :mod:`dynamics.protocol` the model protocol every scale implements;
- :mod:`dynamics.clo`      Algorithms 1-2 (self-judged data building, curriculum replay), training;
- :mod:`dynamics.metrics`  non-unification, attribution, win rate, false-positive correction, and
  the one threshold rule (``P(yes) >= threshold``);
- :mod:`dynamics.alarm`    the co-degradation alarm (external accuracy falls while Non falls);
- :mod:`dynamics.sim`      the single-token simulator; :mod:`dynamics.toy` the scene-world
  transformer; :mod:`dynamics.full` real unified MLLMs (Janus-Pro).
"""

__version__ = "0.1.0"

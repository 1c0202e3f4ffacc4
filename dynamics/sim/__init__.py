"""The single-token simulator: a compositional world, a two-branch model, pre-training, theory tracking.

- :mod:`dynamics.sim.world`    :class:`SimWorld`: prompts and image tokens from attributes, the
  ground-truth table, task tags and difficulty tiers, the oracle (external) judge;
- :mod:`dynamics.sim.model`    :class:`SimModel`: ``R`` replicas of a two-branch model whose
  understanding reads the generation branch as its ``coupling`` says (``decoupled``, ``trunk``,
  ``tied`` or ``bayes``);
- :mod:`dynamics.sim.pretrain` :func:`pretrain`: the recipe that leaves an internal gap;
- :mod:`dynamics.sim.tracking` :class:`TheoryTracker`: measured against predicted one-step changes.

Example::

    >>> import torch
    >>> from dynamics.sim import SimWorld, SimModel, pretrain
    >>> world = SimWorld(prompts=16, tokens=16, seed=0)
    >>> model = SimModel(world, replicas=2, coupling="bayes", seed=0)
    >>> _ = pretrain(world, model, steps=10, seed=0)
    >>> images = model.sample(torch.arange(4), 3, seed=0)           # (R, B, n, 1)
    >>> world.oracle(torch.arange(4), images).shape                  # the external judge
    torch.Size([2, 4, 3])
"""

from .model import COUPLINGS, PRIVATE_KEYS, SHARED_KEYS, SimModel, check_coupling
from .pretrain import exact_metrics, pretrain, pretraining_data
from .tracking import TheoryTracker, default_probes, fp_correction_analysis, predict_step
from .world import TAGS, TIERS, SimWorld, grid_shape

__all__ = [
    "COUPLINGS",
    "PRIVATE_KEYS",
    "SHARED_KEYS",
    "TAGS",
    "TIERS",
    "SimModel",
    "SimWorld",
    "TheoryTracker",
    "check_coupling",
    "default_probes",
    "exact_metrics",
    "fp_correction_analysis",
    "grid_shape",
    "predict_step",
    "pretrain",
    "pretraining_data",
]

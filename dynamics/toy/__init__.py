"""The toy scale: a small unified transformer over a synthetic scene world with an exact judge.

- :mod:`dynamics.toy.world`    scenes on a grid, GenEval's six prompt categories, the exact detector
  (the external judge of this scale), a PNG renderer;
- :mod:`dynamics.toy.model`    :class:`ToyModel`, a Llama trunk that generates scenes and answers
  "Does this image describe {prompt}?", with full or Janus-like sharing (the model protocol, R = 1);
- :mod:`dynamics.toy.pretrain` the step-budgeted pre-training recipe, its checkpoint cache, and the
  check that understanding beats generation;
- :mod:`dynamics.toy.bayes`    :class:`BayesLinked`, understanding read from the generator through the
  Bayes link (the strongest sharing);
- :mod:`dynamics.toy.recipe`   ``TOY_CLO``, the toy's CLO recipe (the defaults of the toy entry point);
- :mod:`dynamics.toy.study`    CLO arms read against their controls, per category, and the one-step
  first-order check (the experiments behind ``paper_figures/fig_toy_*.py``).

Example::

    >>> import torch
    >>> from dynamics.toy import SceneWorld, ToyConfig, ToyModel
    >>> model = ToyModel(ToyConfig.preset("tiny"), seed=0)
    >>> ids = torch.tensor([0, 1, 2])
    >>> x = model.sample(ids, 4, seed=0)                  # (1, 3, 4, 16) cell codes
    >>> truth = model.world.external_judge()(ids, x)      # exact verdicts, (1, 3, 4) bool
    >>> truth.shape, model.judge(ids, x).shape
    (torch.Size([1, 3, 4]), torch.Size([1, 3, 4]))
"""

import importlib

# Names are imported on first use, so that the world (numpy, torch) loads without transformers.
_WHERE = {
    "world": ("CATEGORIES", "TIERS", "WorldConfig", "Vocab", "SceneWorld", "ExactJudge", "render"),
    "model": ("SHARING", "ToyConfig", "ToyModel"),
    "pretrain": ("pretrain", "cache_key", "save_checkpoint", "load_checkpoint", "gap_report", "check_gap",
                 "GapError"),
    "bayes": ("BayesLinked", "alternative_prompts"),
    "recipe": ("TOY_CLO",),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"dynamics.toy.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'dynamics.toy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_MODULE_OF))


__all__ = [
    "CATEGORIES",
    "SHARING",
    "TIERS",
    "TOY_CLO",
    "BayesLinked",
    "ExactJudge",
    "GapError",
    "SceneWorld",
    "ToyConfig",
    "ToyModel",
    "Vocab",
    "WorldConfig",
    "alternative_prompts",
    "cache_key",
    "check_gap",
    "gap_report",
    "load_checkpoint",
    "pretrain",
    "render",
    "save_checkpoint",
]

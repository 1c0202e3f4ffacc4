"""The study layer, shared by every scale: arms run from one pre-trained model per unit and read
against their controls (:mod:`~dynamics.study.arms`, :mod:`~dynamics.study.read`), the statistics of
those comparisons (:mod:`~dynamics.study.stats`: paired t, one-sided and equivalence tests, Holm),
pre-registered claims checked again under a rounding-level perturbation
(:mod:`~dynamics.study.claims`), an arm's phase (co-improvement, co-degradation, drift, no transfer:
:mod:`~dynamics.study.phase`), and the one-step first-order check (:mod:`~dynamics.study.first_order`).

Scale-specific sizes and model factories stay with their scale (:mod:`dynamics.sim.study`,
:mod:`dynamics.toy.study`); figures (:mod:`dynamics.figures`) only draw what a study returns.

Names are loaded on first use, so that reading statistics (``dynamics.study.stats``) does not import
the training loop.
"""

from __future__ import annotations

import importlib

_HOME = {
    "Arm": "arms", "judge_configs": "arms", "perturb": "arms", "run_arm": "arms", "run_arms": "arms",
    "snapshot": "arms",
    "beyond": "read", "change": "read", "delta": "read", "final": "read", "final_values": "read",
    "flatten_groups": "read", "paired_difference": "read", "vs_control": "read",
    "Estimate": "stats", "Verdict": "stats", "equivalent": "stats", "greater": "stats", "holm": "stats",
    "less": "stats", "mean_se": "stats", "one_sample": "stats", "paired": "stats", "power_one_sided": "stats",
    "required_n": "stats", "slope": "stats",
    "PHASES": "phase", "Phase": "phase", "phase_of": "phase", "phase_table": "phase",
}

__all__ = [
    "PHASES",
    "Arm",
    "Estimate",
    "Phase",
    "Verdict",
    "beyond",
    "change",
    "delta",
    "equivalent",
    "final",
    "final_values",
    "flatten_groups",
    "greater",
    "holm",
    "judge_configs",
    "less",
    "mean_se",
    "one_sample",
    "paired",
    "paired_difference",
    "perturb",
    "phase_of",
    "phase_table",
    "power_one_sided",
    "required_n",
    "run_arm",
    "run_arms",
    "slope",
    "snapshot",
    "vs_control",
]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dynamics.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dynamics.study.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return __all__

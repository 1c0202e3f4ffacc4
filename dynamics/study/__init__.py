"""The study layer, shared by every scale: arms run from one pre-trained model per replica and read
against their controls (:mod:`~dynamics.study.arms`, :mod:`~dynamics.study.read`), the statistics of
those comparisons (:mod:`~dynamics.study.stats`: paired t, one-sided and equivalence tests, Holm),
pre-registered claims checked again under a rounding-level perturbation
(:mod:`~dynamics.study.claims`), and the one-step first-order check
(:mod:`~dynamics.study.first_order`).

Scale-specific sizes and model factories stay with their scale (:mod:`dynamics.sim.study`,
:mod:`dynamics.toy.study`); figures (:mod:`dynamics.figures`) only draw what a study returns.
"""

from dynamics.study.arms import Arm, judge_configs, perturb, run_arm, run_arms, snapshot
from dynamics.study.read import (
    beyond,
    change,
    delta,
    final,
    final_values,
    flatten_groups,
    paired_difference,
    vs_control,
)
from dynamics.study.stats import (
    Estimate,
    Verdict,
    equivalent,
    greater,
    holm,
    less,
    mean_se,
    one_sample,
    paired,
    power_one_sided,
    required_n,
    slope,
)

__all__ = [
    "Arm",
    "Estimate",
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
    "power_one_sided",
    "required_n",
    "run_arm",
    "run_arms",
    "slope",
    "snapshot",
    "vs_control",
]

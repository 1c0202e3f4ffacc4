"""Shared settings of the test suite: the toy checkpoint cache and the toy findings' design.

The toy findings are tested twice, by two modules that pytest-xdist runs side by side
(``--dist loadscope``): ``test_toy_findings.py`` on the pre-trained models as they are and
``test_toy_findings_perturbed.py`` on the same models with every weight moved by a relative 1e-6.
Both take their design and their pre-registered claims from here, so the two runs test the same
hypotheses; the pre-trained checkpoints are cached (``cache/toy`` or ``$DYNAMICS_CACHE``) and
file-locked, so each is pre-trained once.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from dynamics.study.claims import Claim, check, summary_lines
from dynamics.toy.study import TOY_CLO, ToySize

ROOT = Path(__file__).resolve().parents[1]
# the repository's cache, for every default cache of the suite (in-process and in subprocesses), so that
# nothing pre-trains twice between runs; outside the tests the default is the user's cache directory
TOY_CACHE = os.environ.setdefault("DYNAMICS_CACHE", str(ROOT / "cache" / "toy"))

# Eight candidate pre-trained models, the default recipe: world 0 (held-out split 0) with seeds 0-4 and
# world 1 (split 1) with seeds 0-2. A unit enters the study only if its pre-trained model passes the
# gap check, the precondition the main job enforces (CLO needs understanding ahead of generation). At
# least TOY_MIN_UNITS must: seven units give the weakest claim (self judge lowers Non beyond the
# control, -4.9 ± 1.0 points on six units) power 0.94 at alpha = 0.01, six only 0.87. The arms are
# evaluated before and after the round (the claims read nothing in between; skipping the intermediate
# evaluations leaves training unchanged).
TOY_FINDINGS_SIZE = ToySize(unit_list=((0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2)),
                            cache_dir=TOY_CACHE,
                            clo=dataclasses.replace(TOY_CLO, progress=False, eval_every=TOY_CLO.epochs))
TOY_MIN_UNITS = 7
TOY_JUDGES = ("self", "all", "corrupt:0.9")

TOY_CLAIMS = {
    "co_improvement": [
        Claim("self judge raises Gen beyond the unfiltered control", "self", "gen_acc", "greater", control="all"),
        Claim("self judge lowers Non beyond the unfiltered control", "self", "non_unification", "less",
              control="all"),
    ],
    "co_degradation": [
        Claim("corrupt judge lowers Gen beyond the control", "corrupt:0.9", "gen_acc", "less", control="all"),
        Claim("Non rises beyond the control (the paper's 'Non still falls' does not hold here)", "corrupt:0.9",
              "non_unification", "greater", control="all"),
    ],
}


@pytest.fixture(scope="session")
def toy_findings():
    """The design and the claims of the toy findings (see the module docstring)."""
    return {"size": TOY_FINDINGS_SIZE, "judges": TOY_JUDGES, "claims": TOY_CLAIMS, "check": check_claims,
            "min_units": TOY_MIN_UNITS}


def units_of(arms) -> list[tuple[int, int]]:
    """The ``(world, seed)`` units a study's records hold."""
    return sorted({(r["world"], r["seed"]) for recs in arms.values() for r in recs})


def check_claims(claims, arms, *, perturbed: bool = False) -> None:
    """Assert that every claim holds on ``arms`` (Holm over the family), each read on every unit of
    the study, and that the study kept at least ``TOY_MIN_UNITS`` units; the failure message lists
    every verdict."""
    units = units_of(arms)
    assert len(units) >= TOY_MIN_UNITS, f"only {len(units)} units passed the gap check: {units}"
    verdicts = check(claims, arms)
    text = summary_lines(verdicts)
    assert all(v.estimate.n == len(units) for v in verdicts), text
    what = "under a 1e-6 perturbation of the weights" if perturbed else ""
    assert all(v.holds for v in verdicts), f"claims that do not hold {what}:\n{text}"

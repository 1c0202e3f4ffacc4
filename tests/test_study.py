"""The study layer's arms: restored weights, shared draws before training, perturbation, claims."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dynamics.clo import CLOConfig, run_clo
from dynamics.study import judge_configs, perturb, run_arm, run_arms, snapshot
from dynamics.study.claims import Claim, check
from dynamics.testing import TableModel

JUDGES = ["self", "all", "oracle", "noisy:0.3", "corrupt:0.4"]


def _cfg(**kw):
    base = {"candidates": 4, "epochs": 3, "lr": 0.5, "seed": 1, "eval_candidates": 4, "batch_size": 3,
            "progress": False, "curriculum": "epochs:2"}
    return CLOConfig(**{**base, **kw})


@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_arms_sharing_their_draws_equal_separate_runs(loss):
    """Arms of one model draw their evaluation set, candidates and epoch-0 evaluation once; every
    record equals that of a run that drew them itself, for judges with and without random flips."""
    model = TableModel.random(prompts=7, tokens=6, seed=2, replicas=2)
    cfg = _cfg(loss=loss)
    judges = [j for j in JUDGES if not (loss == "dpo" and j == "all")]  # accepting all leaves no DPO pair
    shared = run_arms(model, judge_configs(cfg, judges), external=model.oracle)
    for j in judges:
        alone = TableModel.random(prompts=7, tokens=6, seed=2, replicas=2)
        want = run_clo(alone, dataclasses.replace(cfg, judge=j), external=alone.oracle).metrics
        got = [{k: v for k, v in r.items() if "@" not in k} for r in shared[j].records]
        assert got == want, j


def test_arms_start_from_the_same_weights_and_restore_them():
    model = TableModel.random(prompts=5, tokens=6, seed=0)
    before = snapshot(model)
    arms = run_arms(model, judge_configs(_cfg(), ["self", "all"]), external=model.oracle, keep_models=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(arms["self"].model.state_dict()["gen"], before["gen"])
    assert arms["self"].records[0]["epoch"] == 0 and arms["all"].config.judge == "all"


def test_weights_are_restored_when_an_arm_fails():
    model = TableModel.random(prompts=5, tokens=6, seed=0)
    before = snapshot(model)
    with pytest.raises(Exception, match="accepted none"):
        run_arm(model, _cfg(threshold=1.0), external=model.oracle)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_perturb_is_relative_seeded_and_refuses_zero():
    a, b = TableModel.random(prompts=3, tokens=4, seed=0), TableModel.random(prompts=3, tokens=4, seed=0)
    w = a.state_dict()["gen"].clone()
    perturb(a, rel=1e-6, seed=5)
    perturb(b, rel=1e-6, seed=5)
    assert torch.equal(a.state_dict()["gen"], b.state_dict()["gen"])
    rel = ((a.state_dict()["gen"] - w) / w).abs()
    assert 0 < rel.max() < 1e-5
    with pytest.raises(ValueError, match="rel=0"):
        perturb(a, rel=0.0)


def test_claims_refuse_a_margin_without_its_reason_and_name_missing_arms():
    with pytest.raises(ValueError, match="state why"):
        Claim("no effect", "self", "x", "equivalent", margin=0.1)
    with pytest.raises(ValueError, match="needs a margin"):
        Claim("no effect", "self", "x", "equivalent")
    c = Claim("x rises", "self", "x", "greater", control="all")
    with pytest.raises(KeyError, match="no arm 'all'"):
        check([c], {"self": [{"epoch": 0, "seed": 0, "x": 0.0}]})

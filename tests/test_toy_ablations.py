"""The toy-scale ablations' machinery (dynamics.toy.ablations, dynamics.study.supervision,
dynamics.study.curriculum): trainable parts that are really the only ones trained, the near-miss share
and the replayed precision computed from the audit's verdicts as from the world itself, and the scans'
bookkeeping on a tiny model. Their findings are tested in test_toy_poor_supervision.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dynamics.clo import run_clo
from dynamics.study.curriculum import replay_precision
from dynamics.study.supervision import near_miss_share
from dynamics.toy.experiments import QUICK
from dynamics.toy.model import SCOPES, ToyConfig, ToyModel

torch.set_num_threads(1)


def _tiny(seed=0):
    return ToyModel(ToyConfig.preset("tiny"), seed=seed).eval()


@pytest.mark.parametrize("scope", SCOPES)
def test_clo_changes_exactly_the_parameters_of_its_scope(scope):
    model = _tiny().set_scope(scope)
    trained = {id(p) for p in model.generation_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = dataclasses.replace(QUICK.clo, judge="all", lr=1e-2, seed=0)
    run_clo(model, cfg, external=model.world.external_judge())
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (id(p) in trained), (scope, name, moved)


def test_scopes_partition_the_tied_models_parameters_and_a_bad_scope_is_named():
    model = _tiny()
    names = {s: {n for n, p in model.named_parameters() if any(p is q for q in model.set_scope(s).generation_parameters())}
             for s in SCOPES}
    assert names["trunk"] | names["embeddings"] == names["all"] and not names["trunk"] & names["embeddings"]
    assert names["trunk+heads"] == names["trunk"] | {"trunk.embed_tokens.weight"}  # the tied head is the embedding
    with pytest.raises(ValueError, match="scope must be one of .* got 'heads'"):
        model.set_scope("heads")


def test_near_miss_share_and_replayed_precision_by_hand_on_a_toy_run():
    """The shares computed from the audit's verdicts equal a computation from the world's own
    detector and near-miss rule, candidate by candidate."""
    model = _tiny()
    ext = model.world.external_judge()
    cfg = dataclasses.replace(QUICK.clo, judge="noisy:0.3", candidates=2, curriculum="epochs:1", threshold=0.5,
                              seed=1)
    data = run_clo(model, cfg, external=ext).data
    ids, imgs = data.prompt_ids, data.images
    aligned = ext(ids, imgs)[0].bool()
    near = torch.stack([model.world.near_miss_batch(ids, imgs[0, :, k]) for k in range(imgs.shape[2])], -1)
    bad = data.accepted[0] & ~aligned
    want = float((bad & near).sum()) / int(bad.sum()) if int(bad.sum()) else math.nan
    got = near_miss_share(data, ext)[0]
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    replayed = data.accepted[0] & data.replayed[0][:, None]
    want = float((replayed & aligned).sum()) / int(replayed.sum()) if int(replayed.sum()) else math.nan
    got = replay_precision(data)[0]
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert int(bad.sum()) and int(replayed.sum())  # both shares were computed: the comparison is not vacuous


def test_replayed_precision_equals_the_simulators_alignment_table():
    """At the simulator scale the audit's verdicts are the world's alignment table."""
    from dynamics.sim.study import SimSize, pretrained, run_arm

    size = SimSize.tiny()
    world, model = pretrained(size)
    arm = run_arm(world, model, size.config(curriculum="epochs:1", candidates=1))
    d = arm.data
    acc = d.accepted & d.replayed[..., None]
    ok = world.aligned[d.prompt_ids[None, :, None], d.images[..., 0]]
    want = [float((acc[r] & ok[r]).sum()) / int(acc[r].sum()) if int(acc[r].sum()) else math.nan
            for r in range(acc.shape[0])]
    got = replay_precision(d)
    assert [round(x, 12) if not math.isnan(x) else "nan" for x in got] == \
        [round(x, 12) if not math.isnan(x) else "nan" for x in want]
    assert any(not math.isnan(x) for x in got)  # something was replayed: the comparison is not vacuous


def test_toy_scan_records_carry_the_alarm_and_the_near_miss_share():
    from dynamics.toy.ablations import toy_poor_supervision

    out = toy_poor_supervision(QUICK, couplings=("tied",), lookalike_ps=(1.0,), precisions=(0.5,), recall=0.5)
    s = out["summary"]
    rows = s["rows"]["tied"]
    assert set(rows) == {"all", "self", "oracle", "lookalike:1", "pr:0.5,0.5", "weak"}
    for j, row in rows.items():  # the realised quality of every training set, read from the audit
        assert {"precision", "recall", "near_miss_share", "alarm_rate", "gen_change"} <= set(row), j
        assert row["precision"][2] == len(QUICK.units()), j
    assert s["alarm"]["tied"]["false_alarm_rate"][2] == 2 * len(QUICK.units())  # self and oracle, every unit
    assert s["units"]["tied"] == [list(u) for u in QUICK.units()]


def test_a_bad_judge_parameter_is_refused_before_any_training(monkeypatch):
    from dynamics.toy import ablations

    monkeypatch.setattr("dynamics.toy.study.pretrained_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match="lookalike"):
        ablations.toy_poor_supervision(QUICK, couplings=("tied",), lookalike_ps=(1.5,), precisions=(0.5,))
    with pytest.raises(ValueError, match="recall"):
        ablations.toy_poor_supervision(QUICK, couplings=("tied",), recall=0.0)

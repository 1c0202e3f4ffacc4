"""The ``weak`` data judge: a weaker checkpoint's understanding in a judge slot of its own, while the
external judge stays the ground truth of the audit and the evaluation."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from dynamics.clo import CLOConfig, _adaptive_trigger, build_data, replay, replica_seeds, run_clo
from dynamics.judges import parse_judge
from dynamics.study import judge_configs, run_arms
from dynamics.testing import TableModel

THRESHOLD = 0.5


def _cfg(**kw) -> CLOConfig:
    base = {"candidates": 4, "epochs": 2, "lr": 0.5, "seed": 3, "eval_candidates": 4, "batch_size": 3,
            "progress": False, "judge": "weak", "threshold": THRESHOLD}
    return CLOConfig(**{**base, **kw})


def _models(replicas: int = 2, noise: float = 2.0, seed: int = 1) -> tuple[TableModel, TableModel]:
    """A model and a judge model of the same world: the same tables, understanding logits moved by noise
    (a worse judge)."""
    m = TableModel.random(prompts=9, tokens=6, replicas=replicas, seed=seed)
    j = copy.deepcopy(m)
    with torch.no_grad():
        j.und.add_(noise * torch.randn(j.und.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    return m, j


def _constant_judge(m: TableModel, logit: float) -> TableModel:
    """A judge model that answers yes (logit > 0) or no (logit < 0) to everything."""
    j = copy.deepcopy(m)
    with torch.no_grad():
        j.und.fill_(logit)
        j.token_emb.zero_()
    return j


def test_spec_and_scores():
    j = parse_judge("weak")
    assert j.needs_judge_model and not j.needs_external and j.spec == "weak"
    with pytest.raises(ValueError, match="takes no argument"):
        parse_judge("weak:0.5")
    p = torch.tensor([[[0.9, 0.1]]], dtype=torch.float64)
    with pytest.raises(ValueError, match="needs the judge model's P\\(yes\\)"):
        j.score(p, None, threshold=0.5, generator=torch.Generator())
    with pytest.raises(ValueError, match="must have the shape"):
        j.score(p, None, threshold=0.5, generator=torch.Generator(), judge_yes=torch.zeros(1, 1, 3))


def test_accepts_exactly_where_the_judge_model_says_yes():
    """Algorithm 1 with the weak judge: accepted == the judge model's P(yes) >= threshold on the very
    candidates; the model's own P(yes) is kept as its own; the two judges disagree somewhere."""
    m, j = _models()
    cfg = _cfg()
    ids = torch.arange(9)
    data = build_data(m, cfg, ids, external=m.oracle, seeds=replica_seeds(cfg, 2, 2), judge_model=j)
    weak_yes = j.judge(ids, data.images).double()
    assert torch.equal(data.accepted, weak_yes >= THRESHOLD)
    assert torch.equal(data.score, weak_yes)
    own = m.judge(ids, data.images).double()
    assert torch.equal(data.p_yes, own)
    assert bool(((own >= THRESHOLD) != data.accepted).any())  # a different judge than the self judge
    assert torch.equal(data.pool, ~data.accepted.any(-1))


def test_audit_and_evaluation_stay_against_the_external_judge():
    """sft_precision / sft_recall of the weak judge's set are those of a hand computation against the
    external judge; the evaluation's metrics are those of a self-judged run of the same model before
    training (the external judge is the ground truth, whatever the data judge)."""
    m, j = _models()
    cfg = _cfg(epochs=1)
    res = run_clo(copy.deepcopy(m), cfg, external=m.oracle, judge_model=j)
    ids = res.data.prompt_ids
    acc = j.judge(ids, res.data.images) >= THRESHOLD
    ext = m.oracle(ids, res.data.images).bool()
    for r in range(2):
        rec = next(x for x in res.metrics if x["epoch"] == 0 and x["replica"] == r)
        tp = int((acc[r] & ext[r]).sum())
        assert rec["sft_precision"] == pytest.approx(tp / int(acc[r].sum()), abs=1e-12)
        assert rec["sft_recall"] == pytest.approx(tp / int(ext[r].sum()), abs=1e-12)
        assert rec["sft_size"] == int(acc[r].sum())
    self_run = run_clo(copy.deepcopy(m), dataclasses.replace(cfg, judge="self"), external=m.oracle)
    keep = ("gen_acc", "und_acc", "und_fp_rate", "non_unification")
    assert [{k: x[k] for k in keep} for x in res.metrics if x["epoch"] == 0] == \
        [{k: x[k] for k in keep} for x in self_run.metrics if x["epoch"] == 0]


def test_the_full_checkpoint_as_judge_model_is_the_self_judge():
    """With the pre-trained model itself in the judge slot (no replay), the weak judge is the self
    judge: every record equal."""
    m, _ = _models()
    cfg = _cfg(epochs=2)
    weak = run_clo(copy.deepcopy(m), cfg, external=m.oracle, judge_model=copy.deepcopy(m)).metrics
    own = run_clo(copy.deepcopy(m), dataclasses.replace(cfg, judge="self"), external=m.oracle).metrics
    assert weak == own


def test_replay_and_the_adaptive_trigger_use_the_judge_model():
    """Curriculum replay re-judges the pool with the judge model: one that says yes to everything moves
    every pool prompt, one that says no moves none; the adaptive trigger probes alike."""
    m, j = _models(noise=4.0)
    cfg = _cfg()
    ids = torch.arange(9)
    base = build_data(m, cfg, ids, external=m.oracle, seeds=replica_seeds(cfg, 2, 2), judge_model=j)
    assert int(base.pool.sum()) > 0
    yes, no = _constant_judge(m, 20.0), _constant_judge(m, -20.0)
    seeds = replica_seeds(cfg, 2, 6, 1)
    d = copy.deepcopy(base)
    moved = replay(m, cfg, d, external=m.oracle, seeds=seeds, judge_model=yes)["replay_moved"]
    assert moved.tolist() == base.pool.sum(1).tolist() and not bool(d.pool.any())
    assert bool(d.accepted[base.pool].all())  # every candidate of a replayed prompt accepted
    replayed_own = m.judge(ids, d.images).double()
    torch.testing.assert_close(d.p_yes, replayed_own, rtol=0, atol=1e-12)  # the model's own P(yes), new candidates
    d = copy.deepcopy(base)
    assert replay(m, cfg, d, external=m.oracle, seeds=seeds, judge_model=no)["replay_moved"].tolist() == [0, 0]
    assert torch.equal(d.pool, base.pool) and torch.equal(d.images, base.images)
    probe = {jm: _adaptive_trigger(m, cfg, base, 0.5, external=m.oracle, seeds=seeds, judge_model=jm)
             for jm in (yes, no)}
    assert probe[yes] == (True, 1.0) and probe[no] == (False, 0.0)


def test_a_missing_or_mismatched_judge_model_is_refused_before_sampling():
    m, _ = _models()

    def no_sampling(*a, **k):
        raise AssertionError("sampled before the judge slot was checked")

    m.sample = no_sampling
    with pytest.raises(ValueError, match="needs a judge model"):
        run_clo(m, _cfg(), external=m.oracle)
    other = TableModel.random(prompts=9, tokens=6, replicas=3, seed=1)
    with pytest.raises(ValueError, match="the judge model has 3 replicas, the model 2"):
        run_clo(m, _cfg(), external=m.oracle, judge_model=other)
    with pytest.raises(ValueError, match="judge model"):
        build_data(m, _cfg(), torch.arange(9), external=m.oracle, seeds=[0, 1],
                   candidates={"images": torch.zeros(2, 9, 4, 1, dtype=torch.long),
                               "p_yes": torch.zeros(2, 9, 4, dtype=torch.float64),
                               "external_yes": torch.zeros(2, 9, 4, dtype=torch.bool)})


@pytest.mark.parametrize("order", [("weak", "self", "oracle"), ("self", "oracle", "weak")])
def test_shared_start_arms_are_unaffected(order):
    """A weak arm run beside others (sharing their draws before training) gives the records it gives
    alone, and the other arms give theirs without the judge slot: no verdict leaks through the cache."""
    m, j = _models()
    cfg = _cfg(curriculum="epochs:1", candidates=2)
    together = run_arms(m, judge_configs(cfg, order), external=m.oracle, judge_model=j)
    for label in order:
        alone = run_clo(copy.deepcopy(m), dataclasses.replace(cfg, judge=label), external=m.oracle,
                        judge_model=j if label == "weak" else None).metrics
        assert [{k: v for k, v in r.items() if "@" not in k} for r in together[label].records] == alone, label


def test_sim_weak_checkpoint_is_a_weaker_judge():
    """At the default size (tied coupling), the default weak checkpoint's verdicts on the full model's
    candidates are clearly worse than the model's own and clearly above chance, on every replica."""
    from dynamics.sim.study import SimSize, pretrained, weak_judge_quality, weak_pretrained, weak_steps

    size = SimSize(seeds=2, coupling="tied")
    world, model = pretrained(size)
    weak = weak_pretrained(size)
    assert weak_steps(size) == 20
    q_weak, q_own = weak_judge_quality(world, model, weak), weak_judge_quality(world, model, model)
    for w, o in zip(q_weak["balanced_acc"], q_own["balanced_acc"]):
        assert 0.6 < w < o - 0.05, (w, o)
    with pytest.raises(ValueError, match="must be an integer in 1..300"):
        weak_steps(size, 301)


def test_sim_arms_give_weak_arms_their_judge_model():
    """judge_arms builds the weak checkpoint (same world, replicas, seeds, fewer steps) for weak arms."""
    from dynamics.sim.study import SimSize, judge_arms, pretrained, run_arm, weak_pretrained

    size = SimSize.tiny(epochs=1, pretrain_steps=30)
    arms = judge_arms(size, ["weak", "self"], weak_steps=6)
    world, model = pretrained(size)
    want = run_arm(world, model, size.config(judge="weak"), judge_model=weak_pretrained(size, steps=6)).records
    assert arms["weak"].records == want
    assert arms["weak"].records != arms["self"].records


def test_toy_judge_study_gives_weak_arms_the_weak_model():
    from dynamics.toy.study import ToySize, judge_study, pretrained_model, run_arms, weak_model, weak_steps

    clo = dataclasses.replace(ToySize.tiny().clo, threshold=0.3)
    size = ToySize.tiny(seeds=(0,), pretrain_steps=8, clo=clo)
    got = judge_study(size, ["weak"], check=False, weak_steps=3)["weak"]
    weak = weak_model(size, 0, steps=3)
    assert weak.pretrain_info["steps"] == 3 and weak_steps(size) == 5
    want = run_arms(pretrained_model(size, 0, check=False), dataclasses.replace(clo, seed=0), ["weak"],
                    tags={"world": 0}, judge_model=weak)["weak"]
    assert got == want


# --------------------------------------------------------------------------------- entry points

SIM = ["--prompts", "12", "--tokens", "12", "--seeds", "2", "--epochs", "1", "--pretrain-steps", "30",
       "--candidates", "4", "--eval-candidates", "4", "--track-every", "0", "--coupling", "tied", "--no-progress"]
TOY = ["--toy-preset", "tiny", "--pretrain-steps", "20", "--no-gap-check", "--epochs", "1", "--candidates", "2",
       "--eval-candidates", "2", "--curriculum", "off", "--no-progress"]


def test_sim_cli_weak_judge(tmp_path):
    from dynamics.runs.sim import main

    recs = main([*SIM, "--judge", "weak", "--weak-pretrain-steps", "5", "--out", str(tmp_path / "run")])
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["config"]["judge"] == "weak" and info["run"]["weak_judge"]["pretrain_steps"] == 5
    q = info["run"]["weak_judge"]
    assert all(w < o for w, o in zip(q["weak"]["balanced_acc"], q["own"]["balanced_acc"]))
    assert {r["epoch"] for r in recs} == {0, 1} and all("sft_precision" in r for r in recs)
    ident = json.loads((tmp_path / "run" / "identity.json").read_text())
    assert ident["weak_pretrain_steps"] == 5


@pytest.mark.slow  # about 10 s on an idle core, most of it the run's sample grids
def test_toy_cli_weak_judge(tmp_path):
    from dynamics.runs.full import main

    # at this size understanding is near chance, and the 10-step checkpoint judges better than the 20-step
    # model at this threshold: the run says so
    with pytest.warns(RuntimeWarning, match="no weaker a judge than the model's own"):
        recs = main([*TOY, "--judge", "weak", "--weak-pretrain-steps", "10", "--threshold", "0.35",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    q = info["run"]["weak_judge"]
    assert q["pretrain_steps"] == 10 and q["weak"]["balanced_acc"] >= q["own"]["balanced_acc"]
    assert all("sft_precision" in r for r in recs)


@pytest.mark.parametrize("scale,argv,message", [
    ("sim", ["--weak-pretrain-steps", "5"], "--weak-pretrain-steps 5: only the weak judge"),
    ("sim", ["--judge", "weak", "--weak-pretrain-steps", "0"], "--weak-pretrain-steps must be >= 1"),
    ("sim", ["--judge", "weak", "--weak-pretrain-steps", "30"], "--weak-pretrain-steps 30: must be fewer"),
    ("sim", ["--judge", "weak", "--weak-pretrain-steps", "x"], "--weak-pretrain-steps: invalid int value"),
    ("toy", ["--weak-pretrain-steps", "5"], "--weak-pretrain-steps 5: only the weak judge"),
    ("toy", ["--judge", "weak", "--weak-pretrain-steps", "20"], "--weak-pretrain-steps 20: must be fewer"),
    ("janus", ["--model", "tiny", "--judge", "weak"], "--judge weak: not offered for Janus-Pro / Emu3"),
])
def test_bad_weak_flags_exit_2_naming_the_flag(tmp_path, capsys, scale, argv, message):
    from dynamics.runs import full, sim

    main, base = {"sim": (sim.main, SIM), "toy": (full.main, TOY), "janus": (full.main, ["--no-progress"])}[scale]
    with pytest.raises(SystemExit) as e:
        main([*base, *argv, "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work

"""The CLO loop (Algorithms 1-2, training, evaluation, records, resume) on the table model."""

import json

import pytest
import torch

from dynamics.clo import (
    CLOConfig,
    EmptyTrainingSetError,
    NonFiniteLossError,
    build_data,
    replica_seeds,
    run_clo,
)
from dynamics.records import ConfigMismatchError
from dynamics.testing import TableModel


def cfg(**kw):
    base = {"candidates": 6, "epochs": 3, "lr": 0.5, "seed": 0, "eval_candidates": 6, "batch_size": 4, "progress": False}
    base.update(kw)
    return CLOConfig(**base)


def model(**kw):
    return TableModel.random(prompts=kw.pop("prompts", 12), tokens=kw.pop("tokens", 8), seed=kw.pop("seed", 0), **kw)


def test_algorithm1_sets_match_the_judge():
    m = model()
    c = cfg(judge="self", threshold=0.6)
    data = build_data(m, c, torch.arange(12), external=m.oracle, seeds=replica_seeds(c, 1, 2))
    assert data.images.shape == (1, 12, 6, 1)
    assert torch.equal(data.accepted, data.p_yes >= 0.6)
    assert torch.equal(data.pool, ~data.accepted.any(-1))
    assert data.sft_size().item() == int(data.accepted.sum())


def test_dpo_pairs_take_most_and_least_yes_like():
    m = model()
    c = cfg(loss="dpo", threshold=0.5)
    data = build_data(m, c, torch.arange(12), external=m.oracle, seeds=replica_seeds(c, 1, 2))
    for p in range(12):
        acc = data.accepted[0, p]
        if not data.pair[0, p]:
            assert acc.all() or (~acc).all()
            continue
        ch, rj = data.chosen[0, p].item(), data.rejected[0, p].item()
        assert acc[ch] and not acc[rj]
        assert data.score[0, p, ch] == data.score[0, p][acc].max()
        assert data.score[0, p, rj] == data.score[0, p][~acc].min()
        ref = m.image_logprob(torch.tensor([p]), data.images[:, p : p + 1, ch : ch + 1])
        assert torch.allclose(ref.double().flatten(), data.ref_chosen[0, p : p + 1])


@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_training_on_oracle_data_raises_generation_accuracy(loss):
    m = model(prompts=32, tokens=10)
    res = run_clo(m, cfg(judge="oracle", loss=loss, epochs=4, eval_candidates=16, lr=5.0 if loss == "sft" else 20.0),
                  external=m.oracle)
    first, last = res.metrics[0], res.metrics[-1]
    assert last["gen_acc"] > first["gen_acc"] + 0.1
    assert last["non_unification"] < first["non_unification"] or last["gen_acc"] > 0.9


def test_only_generation_parameters_move():
    m = model()
    und0 = m.und.detach().clone()
    gen0 = m.gen.detach().clone()
    run_clo(m, cfg(epochs=1), external=m.oracle)
    assert torch.equal(m.und, und0)
    assert not torch.equal(m.gen, gen0)
    assert m.und.requires_grad  # frozen only for the run


def test_all_judge_accepts_every_candidate():
    m = model()
    res = run_clo(m, cfg(judge="all", epochs=1), external=m.oracle)
    assert res.metrics[0]["sft_size"] == 12 * 6 and res.metrics[0]["discard_size"] == 0


def test_empty_sft_set_is_a_clear_error():
    m = model()
    with pytest.raises(EmptyTrainingSetError, match="accepted none"):
        run_clo(m, cfg(threshold=1.0), external=m.oracle)


def test_bad_config_values_are_named():
    m = model()
    for kw, field in [({"candidates": 0}, "candidates"), ({"threshold": 1.5}, "threshold"), ({"lr": -1.0}, "lr"),
                      ({"loss": "ppo"}, "loss"), ({"curriculum": "sometimes"}, "curriculum")]:
        with pytest.raises(ValueError, match=field):
            run_clo(m, cfg(**kw), external=m.oracle)


def test_curriculum_replay_moves_pool_prompts_into_training():
    m = model(prompts=24, tokens=12)
    res = run_clo(m, cfg(judge="self", threshold=0.8, candidates=2, epochs=3, curriculum="epochs:2"),
                  external=m.oracle)
    by_epoch = {r["epoch"]: r for r in res.metrics}
    assert by_epoch[0]["discard_size"] > 0
    assert by_epoch[1]["discard_size"] == by_epoch[0]["discard_size"]
    moved = by_epoch[2]["replay_moved"]
    assert by_epoch[2]["replay"] and by_epoch[2]["replay_prompts"] == by_epoch[0]["discard_size"]
    assert by_epoch[2]["discard_size"] == by_epoch[0]["discard_size"] - moved
    assert by_epoch[2]["replayed_prompts"] == moved
    assert by_epoch[2]["sft_size"] >= by_epoch[0]["sft_size"] + moved
    assert torch.equal(res.data.pool, ~res.data.accepted.any(-1))


def test_adaptive_trigger_records_its_probe():
    m = model(prompts=24, tokens=12)
    res = run_clo(m, cfg(threshold=0.8, candidates=2, epochs=2, curriculum="adaptive:0.01"), external=m.oracle)
    assert all("replay_probe_rate" in r for r in res.metrics if r["epoch"] > 0)


def test_run_directory_records_and_resume_equal_uninterrupted(tmp_path):
    c = cfg(epochs=4, curriculum="epochs:2")
    full = tmp_path / "full"
    run_clo(model(), c, external=model().oracle, out_dir=str(full))

    part = tmp_path / "part"

    class Kill(Exception):
        pass

    def die(epoch, _records):
        if epoch == 3:
            raise Kill

    with pytest.raises(Kill):
        run_clo(model(), c, external=model().oracle, out_dir=str(part), on_epoch=die)
    assert json.loads((part / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 3
    run_clo(model(), c, external=model().oracle, out_dir=str(part), resume=True)
    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    cfgfile = json.loads((full / "config.json").read_text())
    assert cfgfile["config"]["curriculum"] == "epochs:2" and "torch" in cfgfile["versions"]
    assert (full / "data.safetensors").exists()


def test_resume_refuses_another_config(tmp_path):
    run_clo(model(), cfg(epochs=1), external=model().oracle, out_dir=str(tmp_path))
    with pytest.raises(ConfigMismatchError, match="lr"):
        run_clo(model(), cfg(epochs=1, lr=0.1), external=model().oracle, out_dir=str(tmp_path), resume=True)


def test_existing_run_without_resume_is_refused(tmp_path):
    run_clo(model(), cfg(epochs=1), external=model().oracle, out_dir=str(tmp_path))
    with pytest.raises(FileExistsError, match="resume"):
        run_clo(model(), cfg(epochs=1), external=model().oracle, out_dir=str(tmp_path))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    m = model()
    calls = {"n": 0}
    orig = m.image_logprob

    def poisoned(ids, images):
        out = orig(ids, images)
        return out * float("nan") if torch.is_grad_enabled() and m.gen.requires_grad and calls["n"] >= 1 else out

    def on_epoch(epoch, _):
        calls["n"] = epoch

    m.image_logprob = poisoned
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        run_clo(m, cfg(epochs=3), external=m.oracle, out_dir=str(tmp_path), on_epoch=on_epoch)
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    assert state["epoch"] == 1


def test_vectorised_replicas_equal_one_replica_runs():
    """Replica r of an R-replica run follows a one-replica run with seed cfg.seed + r."""
    base = TableModel.random(prompts=10, tokens=7, replicas=3, seed=5)
    res = run_clo(base, cfg(seed=11, judge="corrupt:0.2", epochs=2), external=base.oracle)
    fresh = TableModel.random(prompts=10, tokens=7, replicas=3, seed=5)
    for r in range(3):
        single = TableModel(fresh.gen.detach()[r : r + 1], fresh.und.detach()[r : r + 1],
                            fresh.token_emb.detach()[r : r + 1], fresh.aligned)
        one = run_clo(single, cfg(seed=11 + r, judge="corrupt:0.2", epochs=2), external=single.oracle)
        mine = [m for m in res.metrics if m["replica"] == r]
        for a, b in zip(mine, one.metrics):
            assert a["seed"] == b["seed"] == 11 + r
            for k in ("gen_acc", "non_unification", "sft_size", "win_rate", "und_fp_rate"):
                assert a[k] == pytest.approx(b[k], abs=1e-12, nan_ok=True), (r, a["epoch"], k)


def test_without_external_judge_only_intrinsic_metrics():
    m = model()
    res = run_clo(m, cfg(epochs=1), external=None)
    rec = res.metrics[-1]
    assert "non_unification" in rec and "gen_acc" not in rec and "sft_precision" not in rec
    with pytest.raises(ValueError, match="needs an external judge"):
        run_clo(m, cfg(judge="oracle"), external=None)


def test_sft_precision_audits_the_self_judged_set():
    m = model()
    res = run_clo(m, cfg(epochs=0, judge="oracle"), external=m.oracle)
    assert res.metrics[0]["sft_precision"] == 1.0
    res = run_clo(model(), cfg(epochs=0, judge="all"), external=m.oracle)
    assert res.metrics[0]["sft_precision"] == pytest.approx(res.data.external_yes.double().mean().item())


def test_skipping_evaluations_leaves_training_unchanged():
    """``eval_every`` only thins the records: evaluation draws its own seeds, so the epochs both runs
    evaluate hold the same numbers, and the last epoch is always evaluated."""
    recs = {}
    for k in (1, 3):
        model = TableModel.random(prompts=6, tokens=8, seed=3)
        cfg = CLOConfig(candidates=4, epochs=4, lr=0.5, seed=0, eval_candidates=4, progress=False, eval_every=k,
                        curriculum="epochs:2")
        recs[k] = {r["epoch"]: r for r in run_clo(model, cfg, external=model.oracle).metrics}
    assert sorted(recs[3]) == [0, 3, 4]
    for e in (0, 3, 4):
        assert recs[3][e] == recs[1][e]
    with pytest.raises(ValueError, match="eval_every=0"):
        CLOConfig(eval_every=0).validate()

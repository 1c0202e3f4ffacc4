"""Reading a run directory (:mod:`dynamics.study.run`): runs made here by the entry points (a tiny
Janus run, a toy run of two seeds, a simulator run) opened, their tables, statistics and audit read
against the records on disk, the checkpoint rebuilt into the model that wrote it, the first-order
check on it; bad paths refused naming the path.

The toy run's sample grids and Bayes-link report are replaced by stubs that write the same files: their
drawing and numbers are tested elsewhere (``test_figures.py``, ``test_transfer.py``) and take most of a
toy run's time."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from dynamics.records import DamagedRunError
from dynamics.study.run import (
    NotARunError,
    ShardedCheckpointError,
    audit,
    changes,
    first_order,
    format_audit,
    format_changes,
    format_first_order,
    load_model,
    open_run,
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run several times slower on threads that share the suite's two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    from dynamics.runs.full import main as full_clo
    from dynamics.runs.sim import main as sim_clo

    tmp = tmp_path_factory.mktemp("runs")
    prompts = tmp / "color_val.txt"
    prompts.write_text("a red cube\na blue ball\na green cone\n")
    for name, model, epochs in (("janus", "tiny", "2"), ("emu3", "emu3-tiny", "1")):
        full_clo(["--model", model, "--prompts", str(prompts), "--epochs", epochs, "--save-images", "2", "--judge", "all",
                  "--candidates", "2", "--eval-candidates", "2", "--curriculum", "off", "--cfg-scale", "2", "--lr", "0.01",
                  "--out", str(tmp / name), "--no-progress"])
    with pytest.MonkeyPatch.context() as mp:
        from dynamics import transfer
        from dynamics.figures import samples

        def grids(out_dir, images, *a, **k):  # the files write_sample_grids writes, without drawing
            for name in [*(f"samples_{b}.png" for b in images), "samples.png"]:
                (Path(out_dir) / name).write_bytes(b"png")

        mp.setattr(samples, "write_sample_grids", grids)
        mp.setattr(transfer, "fixed_samples", lambda *a, **k: None)
        mp.setattr(transfer, "toy_bayes_link", lambda *a, **k: [{"spearman": 0.0}])
        full_clo(["--toy-preset", "tiny", "--pretrain-steps", "5", "--no-gap-check", "--judge", "all", "--epochs", "2",
                  "--candidates", "2", "--eval-candidates", "1", "--curriculum", "off", "--seeds", "2",
                  "--cache-dir", str(tmp / "cache"), "--out", str(tmp / "toy"), "--no-progress"])
    sim_clo(["--prompts", "16", "--tokens", "16", "--seeds", "2", "--epochs", "2", "--pretrain-steps", "30",
             "--track-every", "1", "--probes", "4", "--out", str(tmp / "sim"), "--no-progress"])
    return {"janus": tmp / "janus", "emu3": tmp / "emu3", "toy": tmp / "toy", "sim": tmp / "sim", "prompts": prompts}


# ------------------------------------------------------------------------------------ real model


def test_janus_run_reads_its_records_grids_and_no_audit(runs):
    run = open_run(runs["janus"])
    assert (run.scale, run.model_name, run.seeds, run.epochs) == ("full", "tiny", [0], [0, 1, 2])
    assert run.records == _lines(runs["janus"] / "metrics.jsonl")
    assert run.grids() == [runs["janus"] / "samples.png"]
    assert sum(p.parent.name == "samples_after" for p in run.images) == 4  # 2 prompts x 2 samples
    assert audit(run) == [] and "no audit recorded" in format_audit(audit(run))  # no external judge
    assert run.table() == (runs["janus"] / "summary.txt").read_text().split("\n", 1)[1].rstrip("\n")
    assert "tiny" in run.describe() and "1 process" in run.describe()


@pytest.mark.parametrize("family", ["janus", "emu3"])
def test_real_model_checkpoint_rebuilds_the_trained_model(runs, tmp_path, family):
    """The rebuilt model is the one the run ended with: it samples the same tokens at the run's seed, so
    its decoded PNGs equal the ``samples_after`` the run saved, byte for byte."""
    run = open_run(runs[family])
    assert run.info["family"] == family
    model = load_model(run, device="cpu")
    saved = torch.load(runs[family] / "state.pt", weights_only=False)["model"]["parameters"]
    for name, p in model.model.named_parameters():
        if name in saved:
            assert torch.equal(p.detach(), saved[name]), name
    show = torch.tensor([0, 1])
    paths = model.save_images(show, model.sample(show, 2, seed=run.clo["seed"]), tmp_path)
    for p in paths:
        assert p.read_bytes() == (runs[family] / "samples_after" / p.name).read_bytes(), p.name
    # first order on the checkpoint (float64): the residual is second order, so the relative error falls with lr
    model64 = load_model(run, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model64.model.parameters()} == {torch.float64}
    res = first_order(run, model64, lrs=(1e-3, 1e-2), n_probes=2)
    assert {r["branch"] for r in res["rows"]} == {"generation", "understanding"} and len(res["rows"]) == 2 * 2 * 2
    for branch, s in res["summary"].items():
        assert s["relative_error"][1e-3] < s["relative_error"][1e-2] / 4, (branch, s)
        assert 1.5 < s["residual_slope"] < 2.5, (branch, s)
    assert "residual slope" in format_first_order(res)


def test_a_changed_prompt_file_is_refused_before_the_model_loads(runs, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(runs["janus"], run_dir)
    moved = tmp_path / "color_val.txt"
    moved.write_text(runs["prompts"].read_text() + "a yellow bird\n")
    config = json.loads((run_dir / "config.json").read_text())
    config["run"]["prompts"] = [str(moved)]
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{moved}: changed since the run"):
        load_model(open_run(run_dir))


# ----------------------------------------------------------------------------- toy, two seeds


def test_toy_seeds_are_read_from_their_subdirectories_with_statistics_across_seeds(runs):
    run = open_run(runs["toy"])
    assert run.scale == "toy" and [p.name for p in run.parts] == ["seed_0", "seed_1"] and run.seeds == [0, 1]
    per_seed = [_lines(runs["toy"] / f"seed_{s}" / "metrics.jsonl") for s in (0, 1)]
    assert run.records == per_seed[0] + per_seed[1]
    assert "2 seeds" in run.table() and len(run.grids()) == 2
    rows = changes(run, ("gen_acc", "und_fp_rate"))
    overall = {r["metric"]: r for r in rows if r["category"] == "overall"}
    for key, r in overall.items():  # the paired change per seed, as the records on disk give it
        diffs = [recs[-1][key] - recs[0][key] for recs in per_seed]
        assert r["change"].n == 2 and math.isclose(r["change"].mean, sum(diffs) / 2, abs_tol=1e-12)
    tagged = {r["category"] for r in rows}
    assert {"tag:counting", "tier:easy"} <= tagged
    assert "p" in format_changes(rows).splitlines()[0]
    # the audit: the exact detector judged the self-judged set at every epoch, in both seeds
    rows = audit(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    sizes = [[r["sft_size"] for r in recs] for recs in per_seed]
    assert all(r["sft_size"][0] == (sizes[0][i] + sizes[1][i]) / 2 and r["sft_precision"][2] == 2
               for i, r in enumerate(rows))


def test_toy_checkpoint_of_each_seed_and_its_first_order_check(runs):
    run = open_run(runs["toy"])
    model = load_model(run, part=1)
    saved = torch.load(runs["toy"] / "seed_1" / "state.pt", weights_only=False)["model"]
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    res = first_order(run, model, lrs=(1e-3, 1e-2), n_probes=4)
    for branch in ("generation", "understanding"):
        assert 1.8 < res["summary"][branch]["residual_slope"] < 2.2, res["summary"]


# -------------------------------------------------------------------------------------- simulator


def test_sim_run_and_its_tracked_first_order_check(runs):
    run = open_run(runs["sim"])
    assert run.scale == "sim" and run.seeds == [0, 1] and run.grids() == []
    assert [r["sft_precision"][2] for r in audit(run)] == [2, 2, 2]  # the alignment table audits both seeds
    res = first_order(run)
    theory = _lines(runs["sim"] / "theory.jsonl")

    def rel(t, m, p):
        num = sum((a - b) ** 2 for a, b in zip(t[m], t[p])) ** 0.5
        return num / sum(b * b for b in t[p]) ** 0.5

    for branch, m, p in (("generation", "delta_g", "pred_delta_g"), ("understanding", "delta_u", "pred_delta_u")):
        expected = sum(rel(t, m, p) for t in theory) / len(theory)
        assert math.isclose(res["summary"][branch]["relative_error"][0.5], expected, rel_tol=1e-9)
    model = load_model(run)
    saved = torch.load(runs["sim"] / "state.pt", weights_only=False)["model"]
    assert model.replicas == 2 and all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_sharded_checkpoint_is_named_and_not_loaded(runs, tmp_path):
    run_dir = tmp_path / "fsdp"
    shutil.copytree(runs["sim"], run_dir)
    (run_dir / "state-2.dcp").mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["run"].update(world_size=2, parallel="fsdp")
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShardedCheckpointError, match=r"state-2\.dcp: a sharded FSDP checkpoint written by 2 "
                                                     r"processes.*--nproc_per_node 2"):
        load_model(open_run(run_dir))


# ------------------------------------------------------------------------------------ bad paths


def test_bad_paths_are_refused_naming_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such run directory"):
        open_run(missing)
    assert not missing.exists()  # reading never creates the directory
    a_file = tmp_path / "metrics.jsonl"
    a_file.write_text("{}\n")
    with pytest.raises(NotADirectoryError, match=f"{a_file}: not a directory"):
        open_run(a_file)
    with pytest.raises(NotARunError, match=f"{tmp_path}: not a run directory"):
        open_run(tmp_path)
    (tmp_path / "seed_0").mkdir()
    (tmp_path / "seed_0" / "config.json").write_text('{"config": {}, "run": {"scale": "toy"}}')
    with pytest.raises(NotARunError, match="seed_0: holds config.json but no metrics.jsonl"):
        open_run(tmp_path)
    (tmp_path / "seed_0" / "config.json").write_text('{"config": ')
    with pytest.raises(DamagedRunError, match=r"seed_0/config.json is damaged \(line 1"):
        open_run(tmp_path)

"""Experiment tracking (``dynamics.trackers``, ``--report-to``): TensorBoard event files, read back with
TensorBoard's own reader, hold every per-epoch record value (overall, per category, the judge's audit)
and a sample grid at each scale; the tracker hook keeps the co-degradation alarm working; an unknown
tracker or a missing package is a usage error before any work."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from dynamics.alarm import CoDegradationWarning, EpochAlarm
from dynamics.trackers import EpochTracker, metric_values

pytest.importorskip("tensorboard")


def events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    acc = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return runs[0].name, acc


def assert_logged(acc, records: list[dict], *, several: bool) -> None:
    """Every value of every record is a scalar at step = epoch, and nothing else was logged."""
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    expected: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in metric_values(r, prefix=f"seed_{r['seed']}/" if several else "").items():
            expected.setdefault(k, {})[r["epoch"]] = v
    assert set(logged) == set(expected)
    for tag, steps in expected.items():
        assert set(logged[tag]) == set(steps), tag
        for step, v in steps.items():
            assert logged[tag][step] == pytest.approx(v, rel=1e-6, abs=1e-6), (tag, step)


def read(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_simulator_logs_every_record_per_seed(tmp_path):
    from dynamics.runs.sim import main

    out = tmp_path / "sim"
    main(["--prompts", "16", "--tokens", "16", "--seeds", "2", "--epochs", "2", "--pretrain-steps", "30",
          "--track-every", "0", "--out", str(out), "--no-progress", "--report-to", "tensorboard", "--run-name", "t"])
    name, acc = events(out / "tracking")
    assert name == "t-seed0"
    records = read(out)
    assert_logged(acc, records, several=True)
    tags = acc.Tags()["scalars"]
    assert "seed_1/audit/sft_precision" in tags and any("/tier_" in t for t in tags)
    images = acc.Images("samples")
    assert [e.step for e in images] == [0, 1, 2] and images[0].width == 2 * 16 * 6  # generator | understanding


def test_toy_hook_logs_categories_audit_and_scene_grids(tmp_path):
    import argparse
    import dataclasses

    from conftest import TOY_CACHE

    from dynamics.clo import run_clo
    from dynamics.toy.study import ToySize, pretrained_model
    from dynamics.trackers import add_tracking_flags, tracking_hook

    size = ToySize.tiny(cache_dir=TOY_CACHE)
    model = pretrained_model(size, 0, check=False)
    parser = argparse.ArgumentParser()
    add_tracking_flags(parser)
    args = parser.parse_args(["--report-to", "tensorboard", "--log-images", "2", "--run-name", "toy"])
    cfg = dataclasses.replace(size.clo, judge="all", seed=3)
    ids = list(range(0, len(model.prompts), 12))  # a few prompts of most categories
    result = run_clo(model, cfg, external=model.world.external_judge(), train_ids=ids, eval_ids=ids,
                     on_epoch=tracking_hook(args, None, tmp_path, model=model, config=cfg))
    name, acc = events(tmp_path / "tracking")
    assert name == "toy-seed3"
    assert_logged(acc, result.metrics, several=False)
    tags = acc.Tags()["scalars"]
    assert {"tag_counting/gen_acc", "tier_hard/non_unification", "audit/sft_precision"} <= set(tags)
    assert [e.step for e in acc.Images("samples")] == [0, 1]


def test_janus_entry_point_logs_to_tensorboard(tmp_path):
    from dynamics.runs.full import main

    prompts = tmp_path / "color_val.txt"
    prompts.write_text("a red cube\na blue ball\n")
    janus = tmp_path / "janus"
    main(["--model", "tiny", "--prompts", str(prompts), "--candidates", "2", "--epochs", "1", "--curriculum", "off",
          "--eval-candidates", "2", "--cfg-scale", "2", "--lr", "0.01", "--judge", "all", "--out", str(janus),
          "--no-progress", "--report-to", "tensorboard", "--log-images", "1", "--tracking-dir", str(tmp_path / "tb")])
    _, acc = events(tmp_path / "tb")
    assert_logged(acc, read(janus), several=False)  # no external judge: the intrinsic metrics only
    assert "overall/non_unification" in acc.Tags()["scalars"]
    grid = acc.Images("samples")[0]
    assert grid.height > 8 and grid.width > 4 * 8  # one prompt x four decoded samples


class _Recorder:
    name = "recorder"

    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, values, step=None):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_tracking_keeps_the_alarm_and_finishes_at_the_last_epoch():
    rec = _Recorder()
    hook = EpochTracker(lambda: [rec], then=EpochAlarm(tolerance=0.01), last_epoch=1)
    hook(0, [{"epoch": 0, "seed": 0, "gen_acc": 0.6, "non_unification": 0.3}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook(1, [{"epoch": 1, "seed": 0, "gen_acc": 0.4, "non_unification": 0.1}])
    assert any(issubclass(w.category, CoDegradationWarning) for w in caught)
    assert rec.logged == [(0, {"overall/gen_acc": 0.6, "overall/non_unification": 0.3}),
                          (1, {"overall/gen_acc": 0.4, "overall/non_unification": 0.1})]
    assert rec.finished


@pytest.mark.parametrize("module", ["dynamics.runs.sim", "dynamics.runs.full"])
def test_unknown_or_missing_tracker_is_a_usage_error(module, monkeypatch, capsys):
    import importlib
    import importlib.util

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--report-to", "neptune", "--epochs", "1"])
    assert e.value.code == 2 and "unknown tracker 'neptune'" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        main(["--report-to", "tensorboard,wandb"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'wandb' package" in err and "pip install wandb" in err

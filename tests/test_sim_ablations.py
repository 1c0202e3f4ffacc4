"""The ablation experiments of :mod:`dynamics.sim.ablations` at a tiny size: their shapes and keys,
the replay bookkeeping against the loop's own records, the exact group metrics against the overall
ones, Spearman's rho and its interval against numbers computed by hand, and the drawing of every
result (also after a JSON round trip)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

from dynamics.figures.ablations import draw_curriculum_map, draw_gap_gain, draw_n_candidates
from dynamics.records import to_jsonable
from dynamics.sim.ablations import (
    arm_label,
    curriculum_map,
    curriculum_runs,
    exact_group_metrics,
    gap_gain,
    gap_gain_records,
    gap_gain_summary,
    groups_of,
    n_candidates,
    n_candidates_summary,
    replay_spec,
    spearman_by_unit,
    summarise_curriculum,
)
from dynamics.sim.study import Reference, SimSize, exact_epoch_metrics, pretrained
from dynamics.sim.world import TIERS

torch.set_num_threads(1)

SIZE = SimSize.tiny(prompts=24, tokens=24, epochs=3)
TIER_KEYS = [f"tier:{t}" for t in TIERS]


@pytest.fixture(scope="module")
def runs():
    return curriculum_runs(SIZE, ns=(1, 2), replays=("off", "early", "late", "adaptive"), worlds=(0, 1))


def test_replay_names_and_labels():
    assert [replay_spec(r, 20) for r in ("off", "early", "late", "adaptive")] == ["off", "epochs:4", "epochs:10",
                                                                                  "adaptive"]
    assert replay_spec("epochs:2,5", 20) == "epochs:2,5"
    assert arm_label(2, "dpo", "early") == "dpo N=2 early"


def test_the_map_has_every_arm_but_one_candidate_dpo(runs):
    want = {arm_label(n, loss, r) for n in (1, 2) for loss in ("sft", "dpo") for r in ("off", "early", "late",
                                                                                         "adaptive")}
    assert set(runs) == want - {arm_label(1, "dpo", r) for r in ("off", "early", "late", "adaptive")}
    for recs in runs.values():
        assert {(r["world"], r["seed"]) for r in recs} == {(w, s) for w in (0, 1) for s in range(SIZE.seeds)}
        assert len(recs) == 2 * SIZE.seeds * (SIZE.epochs + 1)


def test_replay_bookkeeping_matches_the_loop(runs):
    """pool_start is the loop's epoch-0 discard pool; the pool left at the end is what replay did not
    recover; the per-tier counts add up; an arm without replay recovers nothing and has no replay
    precision."""
    for label, recs in runs.items():
        rows = {(r["world"], r["seed"], r["epoch"]): r for r in recs}
        for (w, s, e), end in rows.items():
            if e != SIZE.epochs:
                continue
            start = rows[(w, s, 0)]
            assert end["pool_start"] == start["discard_size"]
            assert end["discard_size"] == end["pool_start"] - end["replayed_prompts"]
            assert sum(end[f"pool_start@{t}"] for t in TIER_KEYS) == end["pool_start"]
            assert sum(end[f"replayed_prompts@{t}"] for t in TIER_KEYS) == end["replayed_prompts"]
            prec = end["replay_precision"]
            if end["replayed_prompts"] == 0:
                assert prec is None and end["replay_precision_gap"] is None
            else:
                assert 0.0 <= prec <= 1.0
                assert end["replay_precision_gap"] == pytest.approx(prec - start["sft_precision"])
            if label.endswith(" off"):
                assert end["replayed_prompts"] == 0 and end["replay_rounds"] == 0
            if label.endswith(" late") and end["pool_start"]:
                assert end["first_replay_epoch"] == int(replay_spec("late", SIZE.epochs).split(":")[1])
    one = [r for r in runs[arm_label(1, "sft", "late")] if r["epoch"] == SIZE.epochs]
    assert sum(r["pool_start"] for r in one) > 0 and sum(r["replayed_prompts"] for r in one) > 0


def test_replay_precision_per_tier_combines_to_the_overall():
    """The candidates replay moved, counted per tier, give the overall replayed precision."""
    from dynamics.sim.ablations import replay_stats
    from dynamics.sim.study import run_arm

    world, m0 = pretrained(SIZE)
    arm = run_arm(world, m0, SIZE.config(curriculum="epochs:1", candidates=1))
    groups = {k: v for k, v in groups_of(world).items() if k.startswith("tier:")}
    stats_ = replay_stats(arm, groups)
    d = arm.data
    moved = (d.accepted & d.replayed[..., None]).sum(-1)  # (R, P) replayed candidates per prompt
    for r, s in enumerate(stats_):
        if s["replay_precision"] is None:
            continue
        weights = {g: int(moved[r, ids].sum()) for g, ids in groups.items()}
        combined = sum(s[f"replay_precision@{g}"] * n for g, n in weights.items() if n) / sum(weights.values())
        assert combined == pytest.approx(s["replay_precision"])


def test_exact_group_metrics_agree_with_the_overall_ones():
    world, m0 = pretrained(SIZE)
    ref = Reference.of(m0)
    with torch.no_grad():
        for p in m0.generation_parameters():  # move the model so that current and reference differ
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    groups = groups_of(world)
    got = exact_group_metrics(world, m0, ref, groups={**groups, "all": range(SIZE.prompts)})
    want = exact_epoch_metrics(world, m0, ref)
    for g, w in zip(got, want):
        for key in ("exact_gen_acc", "exact_pre_fp_rate", "exact_non_unification"):
            assert g[f"{key}@all"] == pytest.approx(w[key], abs=1e-12)
        # Gen accuracy is a mean over prompts: the tiers' means weighted by their sizes give it
        combined = sum(g[f"exact_gen_acc@{t}"] * len(groups[t]) for t in TIER_KEYS) / SIZE.prompts
        assert combined == pytest.approx(w["exact_gen_acc"], abs=1e-6)  # float32 tables: rows sum to 1 +- 1e-7
    cells = [k for k in groups if k.startswith("cell:")]
    assert sum(len(groups[c]) for c in cells) == SIZE.prompts


def _records(values: dict, cells: str = "abcde") -> list[dict]:
    """Records of units ``{(world, seed): (xs, gains)}``: ``x@<cell>`` at epoch 0, ``y@<cell>`` from
    0 to the gain at epoch 1."""
    out = []
    for (w, s), (xs, gains) in values.items():
        for e in (0, 1):
            rec = {"epoch": e, "world": w, "seed": s}
            rec.update({f"x@{c}": v for c, v in zip(cells, xs)})
            rec.update({f"y@{c}": e * v for c, v in zip(cells, gains)})
            out.append(rec)
    return out


def test_spearman_by_unit_by_hand():
    # ranks of the gains 2 1 4 3 5 against 1..5: d^2 = 1 + 1 + 1 + 1 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8
    recs = _records({(0, 0): ([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.1, 0.4, 0.3, 0.5]),
                     (0, 1): ([0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 2.0, 3.0, 4.0, 5.0]),
                     (1, 0): ([0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0])})
    rho = spearman_by_unit(recs, list("abcde"), x="x", y="y")
    assert rho[(0, 0)] == pytest.approx(0.8)
    assert rho[(0, 1)] == pytest.approx(-1.0)
    assert math.isnan(rho[(1, 0)])  # a constant side has no rank correlation
    # a unit missing a cell is read on the cells it has
    recs = [r for r in _records({(0, 0): ([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.1, 0.4, 0.3, 0.5])})]
    for r in recs:
        del r["x@e"]
    assert spearman_by_unit(recs, list("abcde"), x="x", y="y")[(0, 0)] == pytest.approx(1.0 - 6 * 4 / (4 * 15))


def test_gap_gain_summary_mean_and_interval_by_hand():
    """Three units whose rhos are 0.8, -1.0 and 0.5 (by hand): the mean, its s.e. and the 95 % t
    interval with 2 degrees of freedom."""
    cells = [f"cell:{c}" for c in "abcde"]
    units = {(0, 0): ([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.1, 0.4, 0.3, 0.5]),
             (0, 1): ([0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 2.0, 3.0, 4.0, 5.0]),
             # ranks 3 1 2 5 4 against 1..5: d^2 = 4 + 1 + 1 + 1 + 1 = 8, rho = 1 - 48 / 120 = 0.6
             (1, 0): ([0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.1, 0.2, 0.5, 0.4])}
    recs = _records(units, cells=cells)
    for r in recs:  # the names gap_gain_summary reads
        for c in cells:
            r[f"exact_non_unification@{c}"] = r.pop(f"x@{c}")
            r[f"exact_gen_acc@{c}"] = r.pop(f"y@{c}")
            r[f"exact_pre_fp_rate@{c}"] = 0.0
    s = gap_gain_summary(recs)
    rhos = [0.8, -1.0, 0.6]
    mean = sum(rhos) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in rhos) / 2 / 3)
    q = stats.t.ppf(0.975, 2)
    assert s["rho"]["mean"] == pytest.approx(mean) and s["rho"]["se"] == pytest.approx(se)
    assert s["rho"]["ci"] == pytest.approx([mean - q * se, mean + q * se])
    assert s["rho"]["per_unit"] == pytest.approx({"0,0": 0.8, "0,1": -1.0, "1,0": 0.6})
    assert sorted(s["cells"]) == cells
    tagged = gap_gain_records(recs)
    assert sorted(r["gap_gain_rho"] for r in tagged if r["epoch"] == 1) == pytest.approx(sorted(rhos))
    assert all("gap_gain_rho" not in r for r in tagged if r["epoch"] == 0)


def test_curriculum_map_summary(runs):
    result = curriculum_map(SIZE, ns=(1, 2), replays=("off", "late"), losses=("sft", "dpo"), worlds=(0,))
    s = result["summary"]
    assert [(r["n"], r["loss"], r["replay"]) for r in s["rows"]] == [
        (1, "sft", "off"), (1, "sft", "late"), (2, "sft", "off"), (2, "sft", "late"), (2, "dpo", "off"),
        (2, "dpo", "late")]
    assert s["skipped"] == [{"n": 1, "loss": "dpo", "why": "DPO needs two candidates to form a pair"}]
    for row in s["rows"]:
        assert ("vs_off" in row) == (row["replay"] != "off")
        assert sorted(row["tiers"]) == sorted(TIERS)
        assert row["pool"][2] == SIZE.seeds
        if row["loss"] == "dpo":
            assert "dpo_pairs_start" in row
    for p in s["why"]["points"]:
        assert p["replay"] == "late" and 0.0 <= p["replay_precision"] <= 1.0
    json.dumps(to_jsonable(result), allow_nan=False)


def test_n_candidates_summary_and_experiment():
    result = n_candidates(SIZE, ns=(1, 2, 4), worlds=(0,))
    rows = result["summary"]["rows"]
    assert [r["n"] for r in rows] == [1, 2, 4]
    sizes = [r["train_size"][0] for r in rows]
    assert sizes[0] < sizes[1] < sizes[2]
    assert "vs_largest" in rows[0] and "vs_largest" not in rows[-1]
    # the summary reads records: two units, N = 1 and 2, hand-made
    recs = {n: [{"epoch": e, "seed": s, "sft_size": 10 * n + s, "discard_size": 0, "sft_precision": 0.8,
                 "exact_gen_acc": 0.5 + e * 0.1 * n, "exact_pre_fp_rate": 0.2, "exact_non_unification": 0.3}
                for e in (0, 1) for s in (0, 1)] for n in (1, 2)}
    s = n_candidates_summary(recs)
    assert s["rows"][0]["vs_largest"]["exact_gen_acc"][0] == pytest.approx(-0.1)
    assert s["rho_size_gain"] == pytest.approx(stats.spearmanr([10, 11, 20, 21], [0.1, 0.1, 0.2, 0.2]).statistic)


def test_gap_gain_experiment_and_drawings(tmp_path, runs):
    """Every result draws; the curriculum map from its JSON round trip (tuples as lists, NaN as null),
    writing the numbers it was given."""
    gg = gap_gain(SIZE, worlds=(0,), control="all")
    assert gg["summary"]["rho"]["n"] <= SIZE.seeds and "rho_beyond_control" in gg["summary"]
    gg = {k: v for k, v in gg.items() if k != "records"}
    replays = ("off", "early", "late", "adaptive")
    cm = {"name": "fig_curriculum_map", "plot": {},
          "summary": {"judge": "self", **summarise_curriculum(runs, ns=(1, 2), replays=replays, losses=("sft", "dpo"))}}
    cm = json.loads(json.dumps(to_jsonable(cm), allow_nan=False))
    nc = {"name": "fig_n_candidates", "plot": {}, "summary": n_candidates_summary(
        {n: runs[arm_label(n, "sft", "off")] for n in (1, 2)})}
    for result, draw in ((cm, draw_curriculum_map), (gg, draw_gap_gain), (nc, draw_n_candidates)):
        paths = draw(result, tmp_path)
        assert [p.suffix for p in paths] == [".png", ".pdf", ".json"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "fig_curriculum_map.json").read_text()) == cm["summary"]


def test_the_drawing_module_runs_nothing():
    code = ("import sys, dynamics.figures.ablations\n"
            "bad = ('dynamics.sim', 'dynamics.toy', 'dynamics.study', 'dynamics.clo', 'transformers')\n"
            "print(sorted(m for m in sys.modules if m.startswith(bad)))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr

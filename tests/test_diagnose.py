"""The diagnosis (``dynamics.diagnose``, ``experiments/diagnose.py``): Non, attribution and the
understanding's error rates against hand-counted verdicts; the samples and verdicts are those of a CLO
run's first round; the command on the toy world and full-scale presets together; bad input stops with
exit status 2 before any model loads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TOY_CACHE

from dynamics.diagnose import Diagnosis, check_model, cross_model_table, diagnose
from dynamics.protocol import PromptSet
from dynamics.testing import TableModel

# Three prompts (tasks a, a, b; tiers easy, hard, hard), four samples each, verdicts written by hand.
PROMPTS = PromptSet(texts=["p0", "p1", "p2"], tags=["a", "a", "b"], tiers=["easy", "hard", "hard"])
OWN = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
EXT = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
# Counted by hand from the tables above, per group:
#   Non = own no / samples; attribution = (own no & ext no) / own no;
#   FP = (own yes & ext no) / ext no; FN = (own no & ext yes) / ext yes; Gen = ext yes / samples.
HAND = {
    "overall": {"non_unification": 7 / 12, "attribution": 4 / 7, "und_fp_rate": 2 / 6, "und_fn_rate": 3 / 6,
                "gen_acc": 6 / 12, "rejected": 7, "misaligned": 6, "aligned": 6},
    "tag:a": {"non_unification": 6 / 8, "attribution": 4 / 6, "und_fp_rate": 1 / 5, "und_fn_rate": 2 / 3,
              "gen_acc": 3 / 8, "rejected": 6, "misaligned": 5, "aligned": 3},
    "tag:b": {"non_unification": 1 / 4, "attribution": 0 / 1, "und_fp_rate": 1 / 1, "und_fn_rate": 1 / 3,
              "gen_acc": 3 / 4, "rejected": 1, "misaligned": 1, "aligned": 3},
    "tier:easy": {"non_unification": 2 / 4, "attribution": 1 / 2, "und_fp_rate": 1 / 2, "und_fn_rate": 1 / 2,
                  "gen_acc": 2 / 4, "rejected": 2, "misaligned": 2, "aligned": 2},
    "tier:hard": {"non_unification": 5 / 8, "attribution": 3 / 5, "und_fp_rate": 1 / 4, "und_fn_rate": 2 / 4,
                  "gen_acc": 4 / 8, "rejected": 5, "misaligned": 4, "aligned": 4},
}


def hand_diagnosis(external=True) -> Diagnosis:
    p_yes = torch.where(OWN, 0.75, 0.25).double()
    return Diagnosis("hand", PROMPTS, p_yes, OWN, EXT if external else None, threshold=0.5)


def test_rows_equal_hand_counted_verdicts():
    rows = {r["group"]: r for r in hand_diagnosis().rows()}
    assert list(rows) == ["overall", "tag:a", "tag:b", "tier:easy", "tier:hard"]
    for group, expected in HAND.items():
        for key, value in expected.items():
            assert rows[group][key] == pytest.approx(value, abs=1e-12), (group, key)
        assert rows[group]["samples"] == 4 * rows[group]["prompts"]


def test_without_an_external_judge_only_non_is_defined():
    rows = {r["group"]: r for r in hand_diagnosis(external=False).rows()}
    assert rows["tag:a"]["non_unification"] == pytest.approx(6 / 8)
    assert all(math.isnan(rows["overall"][k]) for k in ("attribution", "gen_acc", "und_fp_rate", "und_fn_rate"))
    table = cross_model_table([hand_diagnosis(), hand_diagnosis(external=False)])
    assert "58.3" in table and "n/a" in table  # 7/12 overall Non; attribution undefined without a judge


def test_verdicts_are_the_models_own_on_a_clo_rounds_samples():
    from dynamics.clo import CLOConfig, replica_seeds, sample_candidates

    model = TableModel.random(prompts=6, tokens=9, seed=3)
    d = diagnose(model, candidates=5, seed=7, external=model.oracle, threshold=0.6, name="t", progress=False)
    # re-judged from scratch: the verdicts belong to the returned samples
    images = d.images[None]
    ids = torch.arange(6)
    assert torch.equal(d.own_yes, model.judge(ids, images)[0] >= 0.6)
    assert torch.equal(d.external_yes, model.oracle(ids, images)[0].bool())
    # and the samples are a CLO run's first-round candidates with the same seed
    cfg = CLOConfig(candidates=5, seed=7, threshold=0.6, progress=False)
    got = sample_candidates(model, cfg, ids, external=model.oracle, seeds=replica_seeds(cfg, 1, 2))
    assert torch.equal(got["images"][0], d.images)
    overall = d.rows()[0]
    assert overall["non_unification"] == pytest.approx((~d.own_yes).double().mean().item())


def test_check_model_names_the_bad_model(tmp_path):
    assert check_model("tiny") == "tiny"
    with pytest.raises(ValueError, match="'janus-pro-3b'"):
        check_model("janus-pro-3b")
    with pytest.raises(ValueError, match="no config.json"):
        check_model(str(tmp_path))  # a directory, not a checkpoint
    with pytest.raises(ValueError, match="no such checkpoint directory"):
        check_model(str(tmp_path / "missing"))


def test_command_on_the_toy_and_full_scale_presets(tmp_path, capsys):
    from dynamics.runs.diagnose import main

    (tmp_path / "color_val.txt").write_text("a red cube\na blue ball\n")
    (tmp_path / "spatial_val.txt").write_text("a cube left of a ball\n")
    models = ["toy", "tiny", "emu3-tiny"]
    out = tmp_path / "out"
    diagnoses = main(["--model", *models, "--toy-preset", "tiny", "--pretrain-steps", "5", "--cache-dir", TOY_CACHE,
                      "--max-prompts", "24", "--prompts", str(tmp_path / "color_val.txt"),
                      str(tmp_path / "spatial_val.txt"), "--candidates", "2", "--cfg-scale", "2", "--out", str(out),
                      "--no-progress"])
    printed = capsys.readouterr().out
    assert [d.name for d in diagnoses] == ["toy-tiny-tied", *models[1:]]
    for name in ("diagnosis.json", "diagnosis.txt", "diagnosis.png", "diagnosis.pdf"):
        assert (out / name).exists(), name
    saved = json.loads((out / "diagnosis.json").read_text())["models"]
    for i, model in enumerate(saved):
        # the written rows recount from the written per-sample verdicts
        verdicts = [json.loads(line) for line in (out / f"verdicts_{i}.jsonl").read_text().splitlines()]
        overall = model["rows"][0]
        assert overall["samples"] == len(verdicts) == 2 * overall["prompts"]
        assert overall["non_unification"] == pytest.approx(sum(not v["own_yes"] for v in verdicts) / len(verdicts))
        assert all(v["own_yes"] == (v["p_yes"] >= 0.5) for v in verdicts)
    toy_rows = {r["group"]: r for r in saved[0]["rows"]}
    assert toy_rows["overall"]["prompts"] == 24 and not math.isnan(toy_rows["overall"]["attribution"])
    assert {"tier:easy", "tier:medium"} & set(toy_rows)
    janus = {r["group"]: r for r in saved[1]["rows"]}  # no external judge given: only Non
    assert set(janus) == {"overall", "tag:color", "tag:spatial", "tier:medium"} and janus["overall"]["samples"] == 6
    assert janus["overall"]["attribution"] is None
    assert [m["rows"][0]["samples"] for m in saved[1:]] == [6, 6]
    assert "overall rates" in printed and "toy-tiny-tied" in printed and "emu3-tiny" in printed


@pytest.mark.parametrize("argv, message", [
    (["--model", "toy", "janus-pro-3b"], "--model 'janus-pro-3b'"),
    (["--model", "tiny", "--prompts", "no/such/prompts.txt"], "no/such/prompts.txt"),
    (["--model", "tiny"], "--prompts is required"),
    (["--model", "toy", "--external", "oracle"], "--external 'oracle'"),
    (["--model", "toy", "--candidates", "0"], "--candidates must be >= 1"),
])
def test_bad_input_exits_2_before_any_model_loads(argv, message, monkeypatch, capsys):
    from dynamics.runs import janus, toy
    from dynamics.runs.diagnose import main

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(janus, "load_model", refuse)
    monkeypatch.setattr(toy, "toy_model", refuse)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err

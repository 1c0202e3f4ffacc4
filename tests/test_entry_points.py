"""The entry points: --help of every script, a smoke run of each scale, and the bad inputs of
issue-level contracts (each a clear error naming the cause, raised before expensive work)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GENEVAL = SHARED / "geneval" / "evaluation_metadata.jsonl"
SCRIPTS = sorted((ROOT / "experiments").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")) + sorted(
    (ROOT / "paper_figures").glob("*.py"))


def run(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=kw.pop("timeout", 300), **kw)


# every script's --help in one interpreter (runpy, as `python script.py --help` runs it), so that torch and
# transformers are imported once rather than once per script
_HELP = """
import contextlib, io, json, runpy, sys, traceback
out = {}
for path in json.loads(sys.argv[1]):
    sys.argv = [path, "--help"]
    buf = io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = e.code
    except Exception:
        code = traceback.format_exc()
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def help_texts():
    scripts = [str(p) for p in SCRIPTS if not p.name.startswith("_")]
    r = run(["-c", _HELP, json.dumps(scripts)], timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_documents_its_flags(script, help_texts):
    if script.name.startswith("_"):
        pytest.skip("module, not a script")
    code, text = help_texts[str(script)]
    assert code in (0, None), code
    assert "usage" in text.lower() and "--help" in text


def full_clo(argv, out=None):
    from dynamics.runs.full import main

    return main([*map(str, argv), *(["--out", str(out)] if out else []), "--no-progress"])


def tiny(tmp_path, *extra, prompts=None):
    prompts = prompts or make_prompts(tmp_path)
    return ["--model", "tiny", "--prompts", prompts, "--max-prompts", "4", "--candidates", "2", "--epochs", "1",
            "--curriculum", "off", "--eval-candidates", "2", "--cfg-scale", "2", "--lr", "0.01", *extra]


def make_prompts(tmp_path):
    f = tmp_path / "color_val.txt"
    f.write_text("a red cube\na blue ball\na green cone\na black cat\n")
    return f


def test_sim_clo_smoke_writes_every_record(tmp_path):
    from dynamics.runs.sim import main

    out = tmp_path / "sim"
    recs = main(["--prompts", "16", "--tokens", "16", "--seeds", "2", "--epochs", "2", "--pretrain-steps", "30",
                 "--track-every", "1", "--probes", "4", "--out", str(out), "--no-progress"])
    assert {r["seed"] for r in recs} == {0, 1}
    for name in ("config.json", "metrics.jsonl", "theory.jsonl", "curves.png", "summary.txt"):
        assert (out / name).exists(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "gen_acc", "und_fp_rate", "und_fn_rate", "non_unification", "win_rate", "win_rate_n",
            "sft_size", "discard_size", "seed"} <= set(lines[0])
    assert len(lines) == 2 * 3
    link = json.loads((out / "bayes_link.json").read_text())  # the distance from the Bayes link, per seed
    assert len(link["before"]) == len(link["after"]) == 2 and link["after"][0]["n"] == 16 * 16
    assert -1.0 <= link["after"][1]["spearman"] <= 1.0


def test_full_clo_janus_tiny_smoke(tmp_path):
    recs = full_clo(tiny(tmp_path, "--judge", "all"), tmp_path / "run")
    assert [r["epoch"] for r in recs] == [0, 1]
    assert "non_unification" in recs[-1]


@pytest.mark.parametrize("model", ["janus", "toy"])
def test_full_clo_resume_continues_to_the_same_records(tmp_path, monkeypatch, model):
    from dynamics import clo

    if model == "janus":
        args = tiny(tmp_path, "--judge", "all", "--epochs", "3")
    else:
        args = ["--toy-preset", "tiny", "--pretrain-steps", "5", "--no-gap-check", "--judge", "all", "--epochs", "3",
                "--candidates", "2", "--eval-candidates", "2", "--curriculum", "off", "--cache-dir", tmp_path / "cache"]
    full_clo(args, tmp_path / "a")
    # killed at epoch 2 after its metrics were written, before its checkpoint
    real_save = clo._save

    def dying_save(run, model, opt, data, eval_set, *, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        real_save(run, model, opt, data, eval_set, epoch=epoch, **kw)

    monkeypatch.setattr(clo, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        full_clo(args, tmp_path / "b")
    monkeypatch.setattr(clo, "_save", real_save)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3
    full_clo(args + ["--resume"], tmp_path / "b")
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


# ------------------------------------------------------------------------------- bad inputs


def test_malformed_prompt_file_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}\n'
                 '{"tag": "single_object", "prompt": \n')
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, prompts=f))
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and ":2" in err


def test_unknown_tag_is_named(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"tag": "single_objekt", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}\n')
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, prompts=f))
    assert "single_objekt" in capsys.readouterr().err


def test_empty_prompt_set(tmp_path, capsys):
    f = tmp_path / "color_val.txt"
    f.write_text("\n\n")
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, prompts=f))
    assert "empty" in capsys.readouterr().err.lower()


def test_model_not_available_offline(tmp_path, capsys):
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path)[2:] + ["--model", "deepseek-community/Janus-Pro-1B"])
    err = capsys.readouterr().err
    assert "deepseek-community/Janus-Pro-1B" in err


def test_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path)[2:] + ["--model", "janus-pro-3b-shape"])
    assert "janus-pro-3b-shape" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--candidates", "0"), ("--threshold", "1.5"), ("--lr", "-1"),
                                        ("--judge", "corrupt:1.5"), ("--external", "oracle-ish")])
def test_invalid_flag_values(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, flag, value))
    assert value in capsys.readouterr().err


def test_resume_on_directory_of_another_config(tmp_path, capsys):
    full_clo(tiny(tmp_path, "--judge", "all"), tmp_path / "r")
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, "--judge", "all", "--lr", "0.5", "--resume"), tmp_path / "r")
    assert "lr" in capsys.readouterr().err


def test_judge_that_accepts_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, "--threshold", "1.0"), tmp_path / "r")
    assert "empty SFT set" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys, monkeypatch):
    from dynamics.full.janus import JanusUnified

    real = JanusUnified.image_logprob
    calls = {"n": 0}

    def poisoned(self, prompt_ids, images):
        out = real(self, prompt_ids, images)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 2:  # training steps after the first two
                return out * float("nan")
        return out

    import torch

    monkeypatch.setattr(JanusUnified, "image_logprob", poisoned)
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, "--judge", "all", "--epochs", "3", "--batch-size", "2"), tmp_path / "r")
    err = capsys.readouterr().err
    assert "loss is nan" in err and "checkpoint (epoch 1)" in err
    assert torch.load(tmp_path / "r" / "state.pt", weights_only=False)["epoch"] == 1


def test_toy_main_path_stops_clearly_without_a_gap(tmp_path, capsys):
    """The no-argument main job's path: pre-training (tiny, a few steps) and the gap check, which
    must stop a model whose understanding is at chance before any CLO work."""
    with pytest.raises(SystemExit) as stop:
        full_clo(["--toy-preset", "tiny", "--pretrain-steps", "5", "--epochs", "2",
                  "--cache-dir", tmp_path / "cache"], tmp_path / "run")
    assert "lacks the internal gap" in str(stop.value.code)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_toy_main_path_runs_end_to_end_on_a_tiny_model(tmp_path, capsys):
    """The whole toy path (pre-training, CLO, table, curves, sample grids) on the tiny preset, with the
    gap check skipped (a tiny model has no gap), decoupled and with the Bayes-linked understanding."""
    for coupling in ("decoupled", "bayes"):
        out = tmp_path / coupling
        recs = full_clo(["--toy-preset", "tiny", "--pretrain-steps", "5", "--epochs", "1", "--candidates", "2",
                         "--eval-candidates", "2", "--judge", "all", "--curriculum", "off", "--no-gap-check",
                         "--coupling", coupling, "--cache-dir", tmp_path / "cache"], out)
        assert [r["epoch"] for r in recs] == [0, 1]
        for name in ("summary.txt", "curves.png", "samples_before.png", "samples_after.png", "metrics.jsonl",
                     "bayes_link.json"):
            assert (out / name).exists(), name
        assert "tag:counting" in (out / "summary.txt").read_text()
        info = json.loads((out / "config.json").read_text())["run"]
        assert info["coupling"] == coupling
    assert "coupling=bayes" in capsys.readouterr().out


def test_bench_toy_default_quick(tmp_path):
    r = run([ROOT / "benchmarks" / "bench_toy_default.py", "--quick"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cold (empty cache: pre-training included)" in r.stdout and "warm (checkpoint cached)" in r.stdout
    assert "target <= 300 s (cold)" in r.stdout


def test_toy_figure_scripts_exist_and_one_runs_quick(tmp_path):
    from dynamics.runs.figures import FIGURES

    assert {f"fig_{n}" for n in FIGURES} <= {p.stem for p in (ROOT / "paper_figures").glob("fig_*.py")}
    r = run([ROOT / "paper_figures" / "fig_toy_judges.py", "--quick", "--seeds", "2", "--out", tmp_path], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "fig_toy_judges.json").read_text())
    assert {row["judge"] for row in summary["rows"]} == {"self", "all", "oracle", "corrupt:0.9"}
    assert (tmp_path / "fig_toy_judges.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ the threshold and the external judges


def test_threshold_reaches_the_toy_gap_check(tmp_path, monkeypatch):
    """--threshold is the gap check's threshold too (one rule: P(yes) >= threshold)."""
    from dynamics.toy import pretrain as toy_pretrain

    seen = []
    real = toy_pretrain.gap_report
    monkeypatch.setattr(toy_pretrain, "gap_report", lambda *a, **k: seen.append(k.get("threshold")) or real(*a, **k))
    with pytest.raises(SystemExit, match="lacks the internal gap"):  # a 5-step model has no gap
        full_clo(["--toy-preset", "tiny", "--pretrain-steps", "5", "--threshold", "0.7",
                  "--cache-dir", tmp_path / "cache"], tmp_path / "run")
    assert seen == [0.7]


GENEVAL_TINY = [
    {"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]},
    {"tag": "single_object", "prompt": "a photo of a cup", "include": [{"class": "cup", "count": 1}]},
    {"tag": "two_object", "prompt": "a photo of a cat and a dog",
     "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]},
    {"tag": "colors", "prompt": "a photo of a red car", "include": [{"class": "car", "count": 1, "color": "red"}]},
]


def _geneval_prompts(tmp_path):
    f = tmp_path / "geneval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_TINY))
    return f


def _detections(candidate: str):
    """A detector's output, as a function of the image: every class or nothing."""
    from dynamics.full.geneval import Detection

    if int(candidate[0], 16) % 2:
        return []
    return [Detection(c, (30 * i, 0, 30 * i + 20, 20), 0.9, color="red") for i, c in enumerate(("cat", "cup", "dog", "car"))]


def test_external_detector_file_on_tiny_janus_equals_the_file_of_its_verdicts(tmp_path, monkeypatch):
    """--external detector:<file>: the run's candidates scored by GenEval's rules over a file of per-image
    detections give the records of a run judged by a file of those verdicts (--external file:)."""
    import torch

    from dynamics.full.external import DetectionFile, FileJudge, candidate_hash
    from dynamics.full.geneval import score
    from dynamics.full.janus import JanusUnified
    from dynamics.protocol import PromptSet

    prompts = _geneval_prompts(tmp_path)
    args = tiny(tmp_path, "--judge", "all", prompts=prompts)
    sampled = []
    real_sample = JanusUnified.sample
    monkeypatch.setattr(JanusUnified, "sample",
                        lambda self, ids, n, *, seed: sampled.append((ids.clone(), out := real_sample(self, ids, n, seed=seed)))
                        or out)
    full_clo(args, tmp_path / "plain")
    monkeypatch.setattr(JanusUnified, "sample", real_sample)
    ps = PromptSet([r["prompt"] for r in GENEVAL_TINY], tags=[r["tag"] for r in GENEVAL_TINY])
    dets, labels = tmp_path / "detections.jsonl", tmp_path / "labels.jsonl"
    for ids, images in sampled:
        per = [[[_detections(candidate_hash(images[r, b, k])) for k in range(images.shape[2])]
                for b in range(images.shape[1])] for r in range(images.shape[0])]
        DetectionFile.write(dets, images, per, append=True)
        ok = torch.tensor([[[score(GENEVAL_TINY[int(i)], per[r][b][k])[0] for k in range(images.shape[2])]
                            for b, i in enumerate(ids.tolist())] for r in range(images.shape[0])])
        FileJudge.write(labels, ps, ids, images, ok, append=True)
    by_detector = full_clo(args + ["--external", f"detector:{dets}"], tmp_path / "detector")
    by_file = full_clo(args + ["--external", f"file:{labels}"], tmp_path / "file")
    assert by_detector == by_file
    accs = [r["gen_acc"] for r in by_detector]
    assert len(accs) == 2 and any(0.0 < a < 1.0 for a in accs + [r["sft_precision"] for r in by_detector])
    assert "und_fp_rate" in by_detector[0] and "win_rate" in by_detector[-1]


@pytest.mark.parametrize("content, match", [
    ('{"candidate": "' + "0" * 64 + '", "detections": [{"label": "cat", "box": [0, 0, 9], "confidence": 0.9}]}\n',
     r"detections\.jsonl:1: field 'detections\[0\]\.box' must be \[x0, y0, x1, y1\]"),
    ('{"candidate": "' + "0" * 64 + '", "detections": []}\n{"detections": []}\n',
     r"detections\.jsonl:2: missing field 'candidate'"),
    (None, r"no detection file at .*missing\.jsonl"),
], ids=["bad-box", "no-candidate", "no-file"])
def test_external_detector_file_is_checked_before_the_model_loads(tmp_path, monkeypatch, capsys, content, match):
    import re

    from dynamics.full.janus import JanusUnified

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the detection file was checked")

    monkeypatch.setattr(JanusUnified, "from_pretrained", no_model)
    path = tmp_path / ("detections.jsonl" if content is not None else "missing.jsonl")
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, "--external", f"detector:{path}", prompts=_geneval_prompts(tmp_path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(match, err[0]), err


def test_external_detector_needs_geneval_rules(tmp_path, monkeypatch, capsys):
    """Text prompt lists carry no GenEval rules: refused, naming the prompt, before the model loads."""
    from dynamics.full.janus import JanusUnified

    monkeypatch.setattr(JanusUnified, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    dets = tmp_path / "d.jsonl"
    dets.write_text('{"candidate": "' + "0" * 64 + '", "detections": []}\n')
    with pytest.raises(SystemExit):
        full_clo(tiny(tmp_path, "--external", f"detector:{dets}"))
    assert "prompt 0 'a red cube' (" in capsys.readouterr().err

"""The GPU check (benchmarks/gpu_check.py) off the GPU: the CPU smoke run measures every item on the tiny
presets with token-identical samplers and replaces only the marked section of its --out file; without CUDA it
says so, writes nothing and exits 0; the time budget stops it cleanly; every flag is documented."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
DOC = ROOT / "docs" / "benchmarks.md"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()


def _run(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}, check=False)


def _outside(text: str) -> tuple[str, str]:
    return text.split(gc.BEGIN)[0], text.split(gc.END)[1]


def test_cpu_quick_measures_every_item_and_replaces_only_the_marked_section(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    original = DOC.read_text()
    out.write_text(original)
    res = gc.main(["--device", "cpu", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert res["done"] == list(gc.ITEMS) and res["stopped"] is None and res["skipped"] == []
    # the samplers draw transformers' generate's tokens at the same seed (Janus, Emu3 with the layout constraint)
    assert [r["identical"] for r in res["janus"]] == [True] and [r["identical"] for r in res["emu3"]] == [True]
    assert all(r["first_difference"] is None and r["speed_ratio"] > 0 for r in res["janus"] + res["emu3"])
    assert res["bandwidth"] > 1e8  # bytes/s of a 64 MB host copy
    d = res["decode"]
    assert d["tokens"] == 16 and d["floor_s"] == pytest.approx(d["weight_bytes"] / res["bandwidth"])
    assert d["ratio"] == pytest.approx(d["per_token_s"] / d["floor_s"]) and d["floor_kv_s"] > d["floor_s"]
    assert [r["batch"] for r in res["throughput"]] == [1, 2, 4]
    assert all(r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"]) for r in res["throughput"])
    (row,) = res["dpo"]
    assert row["precomputed_bytes"] < row["live_bytes"]  # the precomputed step holds no reference copy
    assert row["loss_live"] == pytest.approx(row["loss_precomputed"], rel=1e-3)
    text = out.read_text()
    assert _outside(text) == _outside(original) and text.count(gc.BEGIN) == 1
    section = text.split(gc.BEGIN)[1].split(gc.END)[0]
    assert "`python benchmarks/gpu_check.py --device cpu --quick --out" in section and "on CPU" in section
    for item in ("memory bandwidth", "Janus sampler vs generate", "decode time per token", "batched-prompt throughput",
                 "Emu3 sampler vs generate", "DPO step memory"):
        assert f"| {item} |" in section and f"| {item} |" in printed
    assert section.count("identical tokens;") == 2 and "Not measured yet" not in section
    assert DOC.read_text() == original  # a CPU run never touches the recorded table


def test_emu3_comparison_without_a_processor_is_identical_on_a_rectangular_grid():
    # The emu3-8b-shape item has no tokenizer: its prompt is built from the vocabulary map (text-range ids) and
    # generate's layout constraint is written from it; on emu3-tiny the two samplers still agree token for token.
    from dynamics.full.emu3 import SPECIAL_TOKENS, build_emu3

    model, _ = build_emu3("emu3-tiny", seed=3)
    ids, mask, neg = gc.emu3_prompt(model, None, height=3, width=5, seed=1, device="cpu")
    vocab = model.config.vocabulary_map
    special = {vocab[t] for t in SPECIAL_TOKENS} | set(model.vocabulary_mapping.image_tokens)
    assert ids.shape == (1, 15) and not special & set(ids[0, 1:-2].tolist()) and bool(mask.all())
    assert neg[0].tolist() == [ids[0, 0], ids[0, -2], ids[0, -1]]
    r = gc.compare_emu3(model, None, height=3, width=5, seed=7, cfg_scale=3.0, repeats=1, device="cpu")
    assert r["identical"] and r["tokens"] == 15


def test_first_difference_and_decode_bytes():
    assert gc.first_difference(torch.tensor([[4, 5, 6]]), torch.tensor([[4, 5, 6]])) is None
    assert gc.first_difference(torch.tensor([[4, 5, 6, 7]]), torch.tensor([[4, 9, 6, 0]])) == 1
    # The floor's numerator: every parameter of the real 1B shape except the parts an image-token step does not
    # read (vision tower, VQ model, text embeddings and head, understanding aligner, all but one generation
    # embedding row).
    from dynamics.full.presets import build_preset

    model, _ = build_preset("janus-pro-1b-shape", device="meta")
    inner = model.model
    unread = [inner.vision_model, inner.vqmodel, inner.language_model.embed_tokens, model.lm_head, inner.aligner,
              inner.generation_embeddings]
    total = sum(p.numel() for p in model.parameters())
    skipped = sum(p.numel() for p in {id(p): p for m in unread for p in m.parameters()}.values())  # head tied
    row = inner.generation_embeddings.weight.shape[1]
    assert gc.janus_decode_bytes(model) == 4 * (total - skipped + row)  # float32 on meta
    assert 1.2e9 < (total - skipped) < 1.4e9


def test_the_budget_stops_the_running_item_and_names_the_skipped(capsys):
    log = []
    items = [("a", lambda: log.append("a")), ("slow", lambda: time.sleep(30)), ("c", lambda: log.append("c"))]
    t = time.monotonic()
    res = gc.run_items(items, budget_s=1.0, start=time.monotonic())
    assert time.monotonic() - t < 10 and log == ["a"]
    assert res == {"done": ["a"], "stopped": "slow", "skipped": ["c"], "failed": {}}
    out = capsys.readouterr().out
    assert "budget of 1 s spent: slow stopped" in out and "skipped (budget spent): c" in out


def test_a_failing_item_is_reported_and_the_others_still_run(capsys):
    log = []

    def broken():
        raise RuntimeError("CUDA out of memory")

    res = gc.run_items([("x", broken), ("y", lambda: log.append("y"))], budget_s=60, start=time.monotonic())
    assert res == {"done": ["y"], "stopped": None, "skipped": [], "failed": {"x": "RuntimeError: CUDA out of memory"}}
    assert log == ["y"] and "x failed: RuntimeError: CUDA out of memory" in capsys.readouterr().out


def test_a_spent_budget_skips_every_item_and_says_so(tmp_path, capsys):
    out = tmp_path / "b.md"
    out.write_text("# Benchmarks\n\ntext\n")
    res = gc.main(["--device", "cpu", "--quick", "--budget-s", "1e-9", "--out", str(out)])
    assert res["skipped"] == list(gc.ITEMS) and res["rows"] == []
    assert "skipped (budget spent): bandwidth, janus, decode, throughput, emu3, dpo" in capsys.readouterr().out
    text = out.read_text()  # no markers: the section is appended under a GPU heading
    assert text.startswith("# Benchmarks\n\ntext\n\n## GPU\n\n" + gc.BEGIN) and text.endswith(gc.END + "\n")
    assert "Skipped (budget spent): bandwidth, janus, decode, throughput, emu3, dpo." in text


def test_without_cuda_it_says_so_writes_nothing_and_exits_0(tmp_path):
    out = tmp_path / "never.md"
    before = DOC.read_text()
    proc = _run("--out", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check needs a CUDA GPU" in proc.stdout and "nothing written" in proc.stdout
    assert not out.exists() and DOC.read_text() == before


def test_help_documents_every_flag():
    proc = _run("--help")
    assert proc.returncode == 0
    actions = [a for a in gc.build_parser()._actions if a.dest != "help"]
    assert all(a.help for a in actions)
    flags = [s for a in actions for s in a.option_strings]
    assert {"--quick", "--out", "--device", "--budget-s", "--items", "--repeats", "--batch-sizes", "--emu3-grid",
            "--cfg-scale", "--dtype", "--seed", "--threads"} <= set(flags)
    for flag in flags:
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("argv,message", [
    (["--items", "janus,foo"], "--items: unknown item(s) 'foo'"),
    (["--device", "cpu"], "--device cpu runs only with --quick"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--budget-s", "0"], "--budget-s must be a positive number"),
    (["--batch-sizes", "1,x"], "--batch-sizes must be comma-separated integers, got '1,x'"),
    (["--cfg-scale", "1"], "--cfg-scale must be > 1"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_out_file_with_broken_markers_is_refused_before_any_work(tmp_path, capsys):
    f = tmp_path / "b.md"
    f.write_text(f"x\n{gc.END}\n{gc.BEGIN}\n")
    with pytest.raises(SystemExit) as e:
        gc.parse_args(["--device", "cpu", "--quick", "--out", str(f)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--out: {f}: want one" in err and "found 1 begin and 1 end" in err

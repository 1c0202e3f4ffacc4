"""Smoke tests of the eNTK and seed-sweep benchmark scripts: each runs, prints its ratios and its
accuracy check, and exits 0."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_entk.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        check=False,
    )


def test_bench_entk_quick_prints_ratio_and_difference():
    proc = _run("--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for name in ("loop (reference)", "torch.func jacobian", "torch.func vjp_jvp", "torch.func structured"):
        assert name in out
    for case in "abc":
        assert re.search(rf"auto on \({case}\): (jacobian|vjp_jvp|structured)", out), out
    assert re.search(r"structured vs vjp_jvp on \(b\): [0-9.]+x faster", out)
    assert re.search(r"memory: full kernel of .* peak resident memory [0-9.]+ GB", out)
    ratio = re.search(r"speed ratio \(loop / fastest torch.func\): ([0-9.]+)x", out)
    diff = re.search(r"max abs difference: ([0-9.e+-]+)", out)
    assert ratio and float(ratio.group(1)) > 0
    assert diff and float(diff.group(1)) <= 1e-10


def test_bench_entk_help_and_bad_arguments():
    proc = _run("--help")
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--width" in proc.stdout
    bad = _run("--n", "0")
    assert bad.returncode == 2 and "--n must be >= 1" in bad.stderr
    bad = _run("--cases", "ax")
    assert bad.returncode == 2 and "--cases must be letters out of 'abc', got 'ax'" in bad.stderr


def test_bench_sim_seeds_quick_checks_the_computation_and_prints_its_ratios(capsys):
    """The seed-sweep benchmark runs, prints each phase's ratio and the cost model, and passes its
    float64 identity check (replica r of the vectorised run is the one-seed run with seed + r)."""
    spec = importlib.util.spec_from_file_location("bench_sim_seeds", SCRIPT.parent / "bench_sim_seeds.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets its own thread count
    out = capsys.readouterr().out
    assert re.search(r"speed ratio \(loop / vectorised\)\s+[0-9.]+x\s+[0-9.]+x\s+[0-9.]+x", out), out
    assert re.search(r"speed ratio \(loop / vectorised\): [0-9.]+x", out), out
    assert "cost model:" in out and "same computation: yes" in out and "timed runs:" in out, out

"""Golden records: a seeded simulator run and a seeded toy run give the records stored in
``tests/golden/`` (as TRL's invariant tests do for its trainers).

They pin the science, not the code: a refactor must leave every record as it was, and a change of
the loop, a model, a judge or a metric that moves any number fails here loudly, with the field named.
Counts and verdict-derived rates compare exactly up to float formatting; losses and theory errors to a
relative 1e-5 (float32 toy) or 1e-9 (float64 simulator), so another CPU's rounding passes and a
changed computation does not. After a deliberate change of the science, regenerate with
``DYNAMICS_REGEN_GOLDEN=1 pytest tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"

SIM_ARGS = ["--prompts", "16", "--tokens", "16", "--seeds", "2", "--epochs", "3", "--pretrain-steps", "30",
            "--float64", "--track-every", "2", "--no-progress"]
TOY_ARGS = ["--toy-preset", "tiny", "--pretrain-steps", "300", "--no-gap-check", "--epochs", "2", "--candidates", "4",
            "--eval-candidates", "2", "--curriculum", "epochs:1", "--lr", "1e-3", "--no-progress"]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _compare(got, want, where: str, rtol: float) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _compare(got[k], want[k], f"{where}.{k}", rtol)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{where}[{i}]", rtol)
    elif isinstance(want, float) or isinstance(got, float):
        if want is None or got is None:
            assert got == want, f"{where}: {got} != {want}"
        else:
            assert math.isclose(got, want, rel_tol=rtol, abs_tol=1e-12), f"{where}: {got!r} != golden {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != golden {want!r}"


def _check(run_dir: Path, name: str, files: tuple[str, ...], rtol: float) -> None:
    for f in files:
        got = _read(run_dir / f)
        golden = GOLDEN / f"{name}_{f}"
        if os.environ.get("DYNAMICS_REGEN_GOLDEN"):
            golden.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in got))
            continue
        want = _read(golden)
        assert len(got) == len(want), f"{name}/{f}: {len(got)} records, golden {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{name}/{f}[{i}] (epoch {w.get('epoch')}, seed {w.get('seed')})", rtol)


def test_seeded_simulator_run_gives_the_golden_records(tmp_path):
    from dynamics.runs.sim import main

    main([*SIM_ARGS, "--out", str(tmp_path / "sim")])
    _check(tmp_path / "sim", "sim", ("metrics.jsonl", "theory.jsonl"), rtol=1e-9)


def test_seeded_toy_run_gives_the_golden_records(tmp_path):
    from dynamics.runs.full import main

    main([*TOY_ARGS, "--out", str(tmp_path / "toy"), "--cache-dir", str(tmp_path / "cache")])
    _check(tmp_path / "toy", "toy", ("metrics.jsonl",), rtol=1e-5)


def test_a_changed_number_is_named():
    with pytest.raises(AssertionError, match=r"r\[0\]\.gen_acc: 0.5 != golden 0.25"):
        _compare([{"gen_acc": 0.5}], [{"gen_acc": 0.25}], "r", 1e-9)
    with pytest.raises(AssertionError, match="r.n: 3 != golden 4"):
        _compare({"n": 3}, {"n": 4}, "r", 1e-9)

"""Fault injection: runs killed (SIGKILL) at seeded random moments and resumed, damaged run files,
and bad input, each against the entry points.

Kills: every run is a child of one fork server (``multiprocessing`` ``forkserver`` with the package
preloaded, so that a child costs a fork, not an interpreter). A child counts the events of five
phases (pre-training steps, sampling/judging chunks, training steps, checkpoint writes, record and
file writes) and SIGKILLs itself at the k-th event of one phase, k drawn from a seeded generator over
the events an uninterrupted run has; a kill while writing first leaves half the bytes (half a line, half
a checkpoint in the temporary file). The killed run is resumed (``--resume``) and every file of its
run directory compared with an uninterrupted run's: byte for byte, but for the wall-clock fields of the
toy's pre-training record and title (masked) and the plots whose title holds that time.

Damaged files: empty, random and half checkpoints, cut ``config.json`` / ``identity.json``, a cut
last record line (recovered), a damaged record line before the last, a deleted ``metrics.jsonl``
(refused), a temporary file left by a kill. Bad input: each a usage error (exit 2) naming the cause,
called in-process (``main(argv)``), before any expensive work.

The default suite kills the simulator once per phase; the matrix over the simulator, the toy and tiny
Janus is ``slow``.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("pretraining", "sampling", "training", "checkpointing", "writing")

SIM = ["--prompts", "16", "--tokens", "16", "--pretrain-steps", "10", "--epochs", "2", "--track-every", "1",
       "--probes", "4", "--candidates", "4", "--eval-candidates", "4", "--batch-size", "4", "--curriculum",
       "epochs:2", "--no-progress"]
TOY = ["--toy-preset", "tiny", "--pretrain-steps", "5", "--no-gap-check", "--judge", "all", "--epochs", "2",
       "--candidates", "2", "--eval-candidates", "2", "--curriculum", "off", "--no-progress"]


def janus_args(tmp: Path) -> list[str]:
    prompts = tmp / "color_val.txt"
    prompts.write_text("a red cube\na blue ball\na green cone\na black cat\n")
    return ["--model", "tiny", "--prompts", str(prompts), "--max-prompts", "4", "--candidates", "2", "--epochs", "2",
            "--curriculum", "off", "--eval-candidates", "2", "--cfg-scale", "2", "--lr", "0.01", "--judge", "all",
            "--batch-size", "2", "--no-progress"]


# ------------------------------------------------------------------------------------------ the child


def _child(entry: str, argv: list[str], phase: str | None, k: int, counts_path: str | None) -> None:
    """One run of ``entry`` (``sim`` or ``full``) with the phase events counted; SIGKILL at the k-th
    event of ``phase`` (None: run to the end and write the counts to ``counts_path``)."""
    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from dynamics import clo, records

    counts = dict.fromkeys(PHASES, 0)
    state = {"pretraining": False}

    def hit(p: str) -> bool:
        counts[p] += 1
        return p == phase and counts[p] == k

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_backward = torch.Tensor.backward

    def backward(self, *a, **kw):
        if state["pretraining"] and hit("pretraining"):
            die()
        return real_backward(self, *a, **kw)

    torch.Tensor.backward = backward
    for mod in map(importlib.import_module, ("dynamics.sim.pretrain", "dynamics.toy.pretrain")):
        real = mod.pretrain

        def pretrain(*a, _real=real, **kw):
            state["pretraining"] = True
            try:
                return _real(*a, **kw)
            finally:
                state["pretraining"] = False

        mod.pretrain = pretrain

    real_map = clo._map_prompts

    def map_prompts(fn, *a, **kw):
        def one(*b, **c):
            if hit("sampling"):
                die()
            return fn(*b, **c)
        return real_map(one, *a, **kw)

    clo._map_prompts = map_prompts
    real_loss = clo.batch_loss

    def batch_loss(*a, **kw):
        if torch.is_grad_enabled() and hit("training"):
            die()
        return real_loss(*a, **kw)

    clo.batch_loss = batch_loss
    real_save = records.RunDir.save_state

    def save_state(self, name, st):
        if hit("checkpointing"):  # half a checkpoint in the temporary file, then the kill
            tmp = self.file(records._tmp_name(name))
            torch.save(st, tmp)
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            die()
        return real_save(self, name, st)

    records.RunDir.save_state = save_state
    real_append = records.RunDir.append_jsonl

    def append_jsonl(self, name, record):
        if hit("writing"):  # half a line, then the kill
            line = json.dumps(records.to_jsonable(record), sort_keys=True)
            with open(self.file(name), "a") as f:
                f.write(line[: len(line) // 2])
            die()
        return real_append(self, name, record)

    records.RunDir.append_jsonl = append_jsonl
    real_atomic = records.RunDir._atomic_write

    def atomic_write(self, name, write):
        if not name.endswith(".pt") and hit("writing"):  # a kill inside an atomic write: the temporary file only
            write(self.file(records._tmp_name(name)))
            die()
        return real_atomic(self, name, write)

    records.RunDir._atomic_write = atomic_write
    if entry == "sim":
        from dynamics.runs.sim import main
    else:
        from dynamics.runs.full import main
    try:
        main(argv)
    finally:
        if counts_path:
            Path(counts_path).write_text(json.dumps(counts))


@pytest.fixture(scope="module")
def forks():
    """Run ``_child`` in a fresh fork of a server that has the package imported; returns its exit code."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "matplotlib.pyplot", "dynamics.runs.sim", "dynamics.runs.common", "dynamics.clo"])

    def run(*a) -> int:
        p = ctx.Process(target=_child, args=a)
        p.start()
        p.join(600)
        return p.exitcode

    return run


# ------------------------------------------------------------------------------------------ comparison

_WALL = re.compile(r'"(wall_s|cache_hit|path|threads)": [^,\n}]+|\d+ s\)')  # pre-training record, title


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same_run(a: Path, b: Path, *, masked=("config.json", "summary.txt"), skipped=("curves.png",)) -> None:
    """Every file of run directory ``b`` equals ``a``'s (same names; bytes; checkpoints by content;
    ``masked`` files with wall-clock fields masked; ``skipped`` plots only present)."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb), f"files differ: {sorted(set(fa) ^ set(fb))}"
    for name in fa:
        base = Path(name).name
        if base in skipped:
            continue
        if base.endswith(".pt"):
            sa, sb = torch.load(a / name, weights_only=False), torch.load(b / name, weights_only=False)
            assert _same(sa, sb), name
        elif base in masked:
            assert _WALL.sub("", fa[name].decode()) == _WALL.sub("", fb[name].decode()), name
        else:
            assert fa[name] == fb[name], name


def _same(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y, strict=True))
    if torch.is_tensor(x):
        return torch.equal(x, y)
    return x == y


def kill_and_resume(forks, entry, argv, tmp: Path, phases, kills_per_phase: int, seed: int, *,
                    own_cache: bool = False) -> dict:
    """The uninterrupted run, then per phase ``kills_per_phase`` runs killed at a seeded random event
    and resumed; each compared with the uninterrupted one. ``own_cache``: each run (and its resumption)
    gets its own toy checkpoint cache, so that each pre-trains. Returns the kill counts by phase."""

    def args(out: Path) -> list[str]:
        return argv + ["--out", str(out)] + (["--cache-dir", f"{out}-cache"] if own_cache else [])

    ref = tmp / "ref"
    counts_path = tmp / "counts.json"
    assert forks(entry, args(ref), None, 0, str(counts_path)) == 0
    counts = json.loads(counts_path.read_text())
    rng = random.Random(seed)
    done = {}
    for phase in phases:
        assert counts[phase] > 0, (phase, counts)
        for i in range(kills_per_phase):
            k = rng.randint(1, counts[phase])
            out = tmp / f"{phase}-{i}"
            code = forks(entry, args(out), phase, k, None)
            assert code == -signal.SIGKILL, (phase, k, code)
            assert forks(entry, args(out) + ["--resume"], None, 0, None) == 0, (phase, k)
            assert_same_run(ref, out)
            done[phase] = done.get(phase, 0) + 1
    return done


def test_the_simulator_killed_once_in_every_phase_resumes_to_the_same_files(forks, tmp_path):
    done = kill_and_resume(forks, "sim", SIM, tmp_path, PHASES, 1, seed=0)
    assert done == dict.fromkeys(PHASES, 1)


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["sim", "toy", "janus"])
def test_kill_matrix(forks, tmp_path, scale):
    """Three kills per phase at each scale (tiny Janus has no pre-training phase)."""
    if scale == "sim":
        entry, argv, phases = "sim", SIM, PHASES
    elif scale == "toy":
        entry, argv, phases = "full", TOY, PHASES
    else:
        entry, argv, phases = "full", janus_args(tmp_path), PHASES[1:]
    done = kill_and_resume(forks, entry, argv, tmp_path, phases, 3, seed=1, own_cache=scale == "toy")
    assert done == dict.fromkeys(phases, 3)


# ------------------------------------------------------------------------------------------ damaged files


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    """An uninterrupted simulator run and one stopped after epoch 1's records, before its checkpoint."""
    from dynamics import clo
    from dynamics.runs.sim import main

    tmp = tmp_path_factory.mktemp("sim_runs")
    main(SIM + ["--out", str(tmp / "full")])
    real = clo._save

    def dying(run, *a, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        real(run, *a, epoch=epoch, **kw)

    clo._save = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            main(SIM + ["--out", str(tmp / "cut")])
    finally:
        clo._save = real
    return tmp


def _resume(out: Path):
    from dynamics.runs.sim import main

    return main(SIM + ["--out", str(out), "--resume"])


def _copy(sim_runs, name, tmp_path) -> Path:
    out = tmp_path / name
    shutil.copytree(sim_runs / name, out)
    return out


@pytest.mark.parametrize("damage", ["empty", "random", "half"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(sim_runs, tmp_path, capsys, damage):
    out = _copy(sim_runs, "cut", tmp_path)
    data = (out / "state.pt").read_bytes()
    (out / "state.pt").write_bytes({"empty": b"", "random": random.Random(0).randbytes(4096),
                                    "half": data[: len(data) // 2]}[damage])
    with pytest.raises(SystemExit) as e:
        _resume(out)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert f"{out / 'state.pt'} is damaged" in err[0] and "--resume to start this run over" in err[0]


@pytest.mark.parametrize("name", ["config.json", "identity.json"])
def test_a_cut_json_file_is_named(sim_runs, tmp_path, capsys, name):
    out = _copy(sim_runs, "cut", tmp_path)
    text = (out / name).read_text()
    (out / name).write_text(text[: len(text) // 2])
    with pytest.raises(SystemExit) as e:
        _resume(out)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{out / name} is damaged (line" in err


@pytest.mark.parametrize("name", ["metrics.jsonl", "theory.jsonl"])
def test_a_cut_last_record_is_dropped_and_derived_again(sim_runs, tmp_path, name):
    out = _copy(sim_runs, "cut", tmp_path)
    with open(out / name, "a") as f:
        f.write('{"epoch": 2, "gen_a')
    (out / "data.tmp.safetensors").write_bytes(b"half a write")  # a kill inside an atomic write
    _resume(out)
    assert_same_run(sim_runs / "full", out)


def test_a_damaged_record_before_the_last_is_refused(sim_runs, tmp_path, capsys):
    out = _copy(sim_runs, "cut", tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[0] = lines[0][:10] + "\n"
    (out / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(SystemExit) as e:
        _resume(out)
    assert e.value.code == 2 and f"{out / 'metrics.jsonl'}:1: not valid JSON" in capsys.readouterr().err


def test_a_deleted_metrics_file_is_refused_not_half_written(sim_runs, tmp_path, capsys):
    out = _copy(sim_runs, "cut", tmp_path)
    (out / "metrics.jsonl").unlink()
    with pytest.raises(SystemExit) as e:
        _resume(out)
    assert e.value.code == 2 and "lacks the records of epoch(s) [0, 1]" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()


def test_a_display_flag_does_not_block_resume(sim_runs, tmp_path):
    from dynamics.runs.sim import main

    out = _copy(sim_runs, "cut", tmp_path)
    main([a for a in SIM if a != "--no-progress"] + ["--out", str(out), "--resume"])
    assert_same_run(sim_runs / "full", out)


def test_resume_refuses_every_differing_setting_one_line_each(sim_runs, tmp_path, capsys):
    from dynamics.runs.sim import main

    out = _copy(sim_runs, "cut", tmp_path)
    before = _files(out)
    with pytest.raises(SystemExit) as e:
        main(SIM + ["--world-seed", "1", "--tokens", "32", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "world_seed: 0 there, 1 now" in err and "tokens: 16 there, 32 now" in err
    assert _files(out) == before


def test_divergence_stops_naming_epoch_step_and_checkpoint(tmp_path, capsys):
    from dynamics.runs.sim import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(SIM + ["--lr", "1e6", "--epochs", "8", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    m = re.search(r"epoch (\d+) step (\d+): .*not finite|epoch (\d+) step (\d+): .*nan", err)
    assert e.value.code == 1 and m, err
    epoch = int(m.group(1) or m.group(3))
    assert f"last good checkpoint (epoch {epoch - 1}) is kept in {out / 'state.pt'}" in err
    assert torch.load(out / "state.pt", weights_only=False)["epoch"] == epoch - 1
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == list(range(epoch))  # intact: every epoch before, none after


# ------------------------------------------------------------------------------------------ bad input


def _sim(argv):
    from dynamics.runs.sim import main

    return main(argv)


def _full(argv):
    from dynamics.runs.full import main

    return main(argv)


def _bad_inputs(tmp: Path) -> list[tuple[str, object, list[str], str]]:
    cfg = {}
    for name, value in {"epochs": {"epochs": 2.5}, "lr": {"lr": None}, "tokens": {"tokens": 16.7},
                        "float64": {"float64": "false"}, "prompts": {"prompts": "file.jsonl"}}.items():
        cfg[name] = tmp / f"{name}.json"
        cfg[name].write_text(json.dumps(value))
    binary = tmp / "binary.json"
    binary.write_bytes(bytes(range(256)) * 4)
    prompts = tmp / "p.txt"
    prompts.write_text("a red cube\n")
    out = ["--out", str(tmp / "never")]
    return [
        ("lr inf", _sim, ["--lr", "inf"], "--lr must be a finite number"),
        ("weight decay nan", _sim, ["--weight-decay", "nan"], "--weight-decay must be a finite number"),
        ("grad clip nan", _sim, ["--grad-clip", "nan"], "--grad-clip must be a finite number"),
        ("adaptive probe 0", _sim, ["--adaptive-probe", "0"], "--adaptive-probe must be >= 1, got 0"),
        ("epochs 2.5 flag", _sim, ["--epochs", "2.5"], "--epochs: invalid int value: '2.5'"),
        ("config epochs 2.5", _sim, ["--config", cfg["epochs"]], "epochs expected an integer, got 2.5"),
        ("config lr null", _sim, ["--config", cfg["lr"]], "lr expected a value, got null"),
        ("config tokens 16.7", _sim, ["--config", cfg["tokens"]], "tokens expected an integer, got 16.7"),
        ("config float64 'false'", _sim, ["--config", cfg["float64"]], "float64 expected true or false, got 'false'"),
        ("config binary", _sim, ["--config", binary], "not a JSON text file"),
        ("config prompts string", _full, ["--config", cfg["prompts"]], "prompts expected a list of paths"),
        ("resume without out", _sim, ["--resume"], "--resume needs --out"),
        ("resume on nothing", _sim, ["--resume", *out], "holds no run to continue"),
        ("sim too large", _sim, ["--prompts", "2338", "--tokens", "2000", "--seeds", "64"], "GiB of memory"),
        ("sim world too small", _sim, ["--prompts", "512", "--tokens", "16"], "--prompts 512 --tokens 16"),
        ("probes", _sim, ["--prompts", "4", "--tokens", "4", "--probes", "64"], "--probes 64"),
        ("seeds 0", _sim, ["--seeds", "0"], "--seeds must be >= 1, got 0"),
        ("toy candidates 100000", _full, ["--candidates", "100000"], "GiB of memory"),
        ("toy --scope", _full, ["--scope", "lora"], "--scope: not used by the toy world"),
        ("toy --max-prompts", _full, ["--max-prompts", "3"], "--max-prompts: not used by the toy world"),
        ("toy --prompts", _full, ["--prompts", prompts], "--prompts: not used by the toy world"),
        ("janus --toy-preset", _full, ["--model", "tiny", "--prompts", prompts, "--toy-preset", "tiny"],
         "--toy-preset: not used by --model tiny"),
        ("device gpu0", _full, ["--model", "tiny", "--prompts", prompts, "--device", "gpu0"],
         "--device gpu0: not a torch device name"),
        ("prompts /dev/null", _full, ["--model", "tiny", "--prompts", "/dev/null"],
         "--prompts /dev/null: not a regular file or a directory"),
        ("prompts missing", _full, ["--model", "tiny", "--prompts", tmp / "none.txt"], "no such file or directory"),
        ("external vlm", _full, ["--model", "tiny", "--prompts", prompts, "--external", "vlm:/nonexistent"],
         "--external vlm:/nonexistent: /nonexistent: no such checkpoint directory"),
        ("janus seeds", _full, ["--model", "tiny", "--prompts", prompts, "--seeds", "3"], "--seeds 3: several seeds"),
        ("alarm", _full, ["--alarm-tolerance", "1.5"], "--alarm-tolerance must lie in [0, 1], got 1.5"),
    ]


def test_every_bad_input_is_a_usage_error_naming_its_cause(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    if torch.cuda.is_available():
        cases = [c for c in cases if "cuda" not in c[0]]
    else:
        cases.append(("device cuda", _full, ["--model", "tiny", "--prompts", tmp_path / "p.txt", "--device", "cuda"],
                      "this torch has no CUDA device"))
    failures = []
    for name, entry, argv, message in cases:
        try:
            entry([str(a) for a in argv])
            failures.append(f"{name}: no error")
            continue
        except SystemExit as e:
            err = capsys.readouterr().err
            if e.code != 2 or message not in err:
                failures.append(f"{name}: exit {e.code}, {err.strip().splitlines()[-1:]!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "never").exists()


def _write_identity(entry_module, argv, out: Path) -> None:
    """The identity of a run of ``argv`` in ``out``, as a first run would write it."""
    from dynamics.cli import parse_args
    from dynamics.records import RunDir

    parser = entry_module.build_parser()
    args = parse_args(parser, argv)
    ident = (entry_module._identity(parser, args) if hasattr(entry_module, "_identity")
             else __import__("dynamics.cli", fromlist=["run_identity"]).run_identity(parser, args, scale="sim"))
    RunDir(out).write_json("identity.json", ident)


@pytest.mark.parametrize("changed,field", [
    (["--train-on", "heldout"], "train_on: 'all' there, 'heldout' now"),
    (["--seeds", "3"], "seeds: 1 there, 3 now"),
    (["--coupling", "bayes"], "coupling: 'tied' there, 'bayes' now"),
])
def test_toy_resume_refuses_another_setting_before_any_work(tmp_path, capsys, changed, field):
    from dynamics.runs import full

    out = tmp_path / "run"
    _write_identity(full, TOY, out)
    with pytest.raises(SystemExit) as e:
        full.main(TOY + changed + ["--out", str(out), "--resume"])
    assert e.value.code == 2 and field in capsys.readouterr().err


def test_janus_resume_refuses_other_prompts_by_content(tmp_path, capsys):
    from dynamics.runs import full

    argv = janus_args(tmp_path)
    out = tmp_path / "run"
    _write_identity(full, argv, out)
    (tmp_path / "color_val.txt").write_text("a red cube\na blue ball\na green cone\na white dog\n")
    with pytest.raises(SystemExit) as e:
        full.main(argv + ["--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "prompts: ['sha256:" in err


def test_a_fresh_run_refuses_a_directory_holding_one(sim_runs, tmp_path, capsys):
    out = _copy(sim_runs, "cut", tmp_path)
    with pytest.raises(SystemExit) as e:
        _sim(SIM + ["--out", str(out)])
    assert e.value.code == 2 and "holds a run already" in capsys.readouterr().err


def test_default_run_directories_are_unique_within_a_second(tmp_path, monkeypatch):
    from dynamics.runs.common import default_out

    monkeypatch.chdir(tmp_path)
    dirs = [default_out("x") for _ in range(5)]
    assert len(set(dirs)) == 5 and all(d.is_dir() for d in dirs)


def test_the_toy_cache_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from dynamics.toy.study import ToySize, default_cache_dir

    monkeypatch.delenv("DYNAMICS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    here = default_cache_dir()
    monkeypatch.chdir(ROOT)
    assert default_cache_dir() == here and Path(here).is_absolute() and Path(here).name == "toy"
    assert ToySize().cache_dir == here
    monkeypatch.setenv("DYNAMICS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == str(tmp_path / "c")

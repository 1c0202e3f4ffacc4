"""The fully sharded engine on two CPU processes (gloo): CLO on tiny Janus with its trunk sharded by
FSDP2 gives the records of one process training on the whole batch (within float64 rounding), and a
run killed (SIGKILL) after a sharded checkpoint resumes from it to the same records. Bad launches are
refused with the cause named."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamics.clo import CLOConfig, run_clo
from dynamics.full import distributed as D

WORLD = 2
TEXTS = ["a red cube", "a blue ball", "a green cone", "a black cat", "a white dog", "a pink car"]
# chunk_size 6 over 6 prompts: rank 0 samples and judges every prompt, rank 1 none, which only works when
# inference runs on gathered parameters and its forwards leave no trace in FSDP's backward prefetch order
# (a stale order deadlocked the first backward); Adam: its state is sharded and checkpointed
CFG = {"candidates": 2, "epochs": 2, "judge": "all", "lr": 0.01, "optimizer": "adam", "eval_candidates": 2,
       "chunk_size": 6, "curriculum": "off", "progress": False}
BATCH = 2  # per rank; one process trains on WORLD * BATCH prompts per step
TOL = 1e-9  # float64: the sharded reductions differ from one process's in rounding only


def tiny_model(family: str = "janus"):
    """Tiny Janus (``tiny``) or Emu3 (``emu3-tiny``), float64, over :data:`TEXTS`."""
    from dynamics.full.sampler import SamplingConfig

    if family == "emu3":
        from dynamics.full.emu3 import Emu3Unified as cls
    else:
        from dynamics.full.janus import JanusUnified as cls
    return cls.from_pretrained("emu3-tiny" if family == "emu3" else "tiny", TEXTS, dtype=torch.float64, seed=1,
                               sampling=SamplingConfig(cfg_scale=2.0))


def close(a: list[dict], b: list[dict], tol: float = TOL) -> list[str]:
    """The fields where two record lists differ beyond ``tol`` (relative, NaN equal to NaN)."""
    bad = []
    if len(a) != len(b):
        return [f"{len(a)} records vs {len(b)}"]
    for i, (ra, rb) in enumerate(zip(a, b)):
        if ra.keys() != rb.keys():
            bad.append(f"record {i}: keys differ")
            continue
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                if not (math.isnan(va) and math.isnan(vb)) and abs(va - vb) > tol * max(1.0, abs(va)):
                    bad.append(f"record {i} {k}: {va} vs {vb}")
            elif va != vb:
                bad.append(f"record {i} {k}: {va!r} vs {vb!r}")
    return bad


def _worker(out_dir: str, mode: str, family: str) -> None:
    torch.set_num_threads(1)
    info = D.init_distributed(backend="gloo", timeout_s=120)
    model = tiny_model(family)
    full = sum(p.numel() for p in model.generation_parameters())
    D.wrap_fsdp(model.module)
    params = model.generation_parameters()
    res = {"rank": info.rank, "sharded": D.is_sharded(model.module),
           "dtensor": all(type(p).__name__ == "DTensor" for p in params),
           "local": sum(p.to_local().numel() for p in params), "full": full}
    Path(out_dir, f"rank{info.rank}.json").write_text(json.dumps(res))

    def kill_after_first_epoch(epoch, records):  # a SIGKILL right after the epoch-1 checkpoint
        if mode == "kill" and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    run_clo(model, CLOConfig(batch_size=BATCH, **CFG), out_dir=str(Path(out_dir) / "run"), resume=mode == "resume",
            run_info={"world_size": info.world_size}, on_epoch=kill_after_first_epoch if info.rank == 0 else None)
    del model, params  # the sharded module holds the process group: released before it is ended
    D.finish_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, mode: str, family: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """This file under torchrun, 2 CPU processes (fresh interpreters)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), __file__, str(tmp_path), mode, family]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process FSDP run ({mode}) did not finish in time")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["janus", pytest.param("emu3", marks=pytest.mark.slow)])
def test_fsdp_run_killed_and_resumed_equals_one_process(tmp_path, family):
    killed = _launch(tmp_path, "kill", family)
    assert killed.returncode != 0  # rank 0 was SIGKILLed after the epoch-1 checkpoint
    run = tmp_path / "run"
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["epoch"] == 1 and state["sharded"] == "state-1.dcp" and state["model"] is None
    assert sorted(p.name for p in run.glob("state-*.dcp")) == ["state-1.dcp"]  # the epoch-0 shards removed
    for r in range(WORLD):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        # the trainable trunk is really sharded: each rank holds a part of it, as DTensor shards
        assert res["sharded"] and res["dtensor"] and 0 < res["local"] < res["full"]
    resumed = _launch(tmp_path, "resume", family)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    two = _records(run)
    assert [r["epoch"] for r in two] == [0, 1, 2]

    alone = tiny_model(family)
    one = run_clo(alone, CLOConfig(batch_size=WORLD * BATCH, **CFG)).metrics
    assert not close(two, json.loads(json.dumps(one))), close(two, json.loads(json.dumps(one)))
    assert two[-1]["train_loss"] != two[1]["train_loss"]  # training moved the model

    # a resume with another number of processes is refused, naming both
    with pytest.raises(Exception, match=r"run of 2 process\(es\), this one has 1"):
        run_clo(tiny_model(family), CLOConfig(batch_size=BATCH, **CFG), out_dir=str(run), resume=True)


def test_bad_parallel_launches_are_named():
    assert D.parallel_mode("auto", world_size=1) == "ddp" and D.parallel_mode("ddp", world_size=4) == "ddp"
    with pytest.raises(ValueError, match="--parallel fsdp shards over several processes, but WORLD_SIZE=1"):
        D.parallel_mode("fsdp", world_size=1)
    with pytest.raises(ValueError, match="--parallel must be one of auto, ddp, fsdp, got 'zero3'"):
        D.parallel_mode("zero3")


def test_parallel_mode_follows_accelerate_launch(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert D.parallel_mode("auto", world_size=2) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed config; this package shards with FSDP2"):
        D.parallel_mode("auto", world_size=2)


def test_one_process_helpers_are_identities():
    x = torch.tensor([1.0, 2.0])
    assert D.global_sum(x) is x
    m = torch.nn.Linear(3, 2)
    m(torch.ones(1, 3)).sum().backward()
    assert torch.equal(D.grad_sq_norm(m.parameters()),
                       sum((p.grad.double() ** 2).sum() for p in m.parameters()))
    assert D.wrap_fsdp(m) is m and not D.is_sharded(m)
    D.set_phase(m, True)  # no-op


def test_resume_with_another_number_of_processes_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from tests.test_entry_points import full_clo, tiny

    full_clo(tiny(tmp_path, "--judge", "all"), tmp_path / "r")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 would start it

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("dynamics.runs.janus.load_model", no_model)
    with pytest.raises(SystemExit) as e:
        full_clo(tiny(tmp_path, "--judge", "all", "--resume"), tmp_path / "r")
    assert e.value.code == 2 and "processes" in capsys.readouterr().err


if __name__ == "__main__":  # one rank, launched by torchrun from _launch
    _worker(sys.argv[1], sys.argv[2], sys.argv[3])

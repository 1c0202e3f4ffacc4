"""The one distributed path, on two CPU processes (gloo): the CLO loop shards prompts over ranks and
gathers them back (so the data and the records do not depend on the number of ranks), and training
through the DDP-wrapped module keeps the ranks' models identical, where the unwrapped one lets them
drift apart."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dynamics.clo import CLOConfig, run_clo
from dynamics.full import distributed as D
from dynamics.testing import TableModel

WORLD = 2
CFG = CLOConfig(candidates=3, epochs=2, lr=0.5, batch_size=2, eval_candidates=3, chunk_size=3, progress=False)


class Scorer(nn.Module):
    """The training forward of a :class:`TableModel` (its generation parameters, shared with it), as
    ``JanusUnified.module`` is Janus's: the module the run wraps in DDP."""

    def __init__(self, table: TableModel):
        super().__init__()
        self.gen, self.token_emb = table.gen, table.token_emb

    def forward(self, prompt_ids, images):
        logp = torch.log_softmax(self.gen[:, prompt_ids] + self.token_emb[:, None, :], -1)
        return logp.gather(2, images[..., 0])


class WrappedTable:
    """A :class:`TableModel` seen through the model protocol with its training log-probabilities
    computed by ``self.module`` (wrapped by :func:`dynamics.full.distributed.wrap_ddp` as the Janus run does)."""

    replicas, image_length = 1, 1

    def __init__(self, seed: int = 0):
        self.table = TableModel.random(prompts=10, tokens=6, seed=seed)
        self.table.und.requires_grad_(False)  # outside the generation scope, as Janus's frozen parts
        self.prompts, self.module = self.table.prompts, Scorer(self.table)

    def sample(self, prompt_ids, n, *, seed):
        return self.table.sample(prompt_ids, n, seed=seed)

    def judge(self, prompt_ids, images):
        return self.table.judge(prompt_ids, images)

    def image_logprob(self, prompt_ids, images):
        return self.module(prompt_ids, images)

    def generation_parameters(self):
        return self.table.generation_parameters()

    def state_dict(self):
        return self.table.state_dict()

    def load_state_dict(self, state):
        return self.table.load_state_dict(state)

    def params(self) -> list[list[float]]:
        return [p.detach().flatten().tolist() for p in self.generation_parameters()]


def records_json(records) -> list[str]:
    """Records as text (NaN compares equal)."""
    return [json.dumps(r, sort_keys=True) for r in records]


def _spread(model: WrappedTable) -> float:
    """Largest elementwise spread (max minus min over ranks) of the generation parameters."""
    worst = 0.0
    for p in model.generation_parameters():
        hi, lo = p.detach().clone(), p.detach().clone()
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        worst = max(worst, float((hi - lo).abs().max()))
    return worst


def _worker(out_dir):
    torch.set_num_threads(1)
    info = D.init_distributed(backend="gloo", timeout_s=60)
    res = {"rank": info.rank, "world": info.world_size}
    # the run path: the loop's own prompt sharding, training through the DDP-wrapped module
    model = WrappedTable()
    model.module = D.wrap_ddp(model.module)
    res["wrapped_is_ddp"] = isinstance(model.module, nn.parallel.DistributedDataParallel)
    res["records"] = records_json(run_clo(model, CFG, external=model.table.oracle).metrics)
    res["params"], res["spread"] = model.params(), _spread(model)
    # the same run through the unwrapped module: every rank trains on its own share only
    drift = WrappedTable()
    res["unwrapped_records"] = records_json(run_clo(drift, CFG, external=drift.table.oracle).metrics)
    res["unwrapped_spread"] = _spread(drift)
    (Path(out_dir) / f"rank{info.rank}.json").write_text(json.dumps(res))
    del model, drift  # the DDP module holds the process group: released before it is ended
    D.finish_distributed()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(tmp_path, timeout=180):
    """Launch this file under torchrun with 2 CPU processes (a fresh interpreter each: forking from
    a test runner that holds threads can deadlock)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), __file__, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process run did not finish in time")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_two_processes_run_clo_through_ddp(tmp_path):
    res = run_workers(tmp_path)
    alone = WrappedTable()
    one = records_json(run_clo(alone, CFG, external=alone.table.oracle).metrics)
    for r, out in enumerate(res):
        assert out["rank"] == r and out["world"] == WORLD and out["wrapped_is_ddp"]
        # prompts sharded over ranks and gathered back: the pre-training evaluation and the self-judged
        # data equal one process's, bit for bit
        assert out["records"][0] == one[0] and out["unwrapped_records"][0] == one[0]
    # each rank normalises its share by the whole batch's count: through DDP the run equals one process
    # training on the whole batch (batch_size is per rank), train_loss included, up to rounding
    whole = WrappedTable()
    ref = run_clo(whole, dataclasses.replace(CFG, batch_size=CFG.batch_size * WORLD), external=whole.table.oracle)
    from tests.test_fsdp import close

    assert not close([json.loads(r) for r in res[0]["records"]], json.loads(json.dumps(ref.metrics)), tol=1e-12)
    # every rank holds the same records and, trained through DDP, the same model
    assert res[0]["records"] == res[1]["records"] and len(res[0]["records"]) == CFG.epochs + 1
    assert res[0]["params"] == res[1]["params"] and res[0]["spread"] == 0.0
    assert res[0]["params"] != WrappedTable().params()  # training moved it
    # through the unwrapped module each rank trains on its share alone: the models drift apart
    assert res[0]["unwrapped_spread"] > 1e-3 and res[0]["unwrapped_spread"] == res[1]["unwrapped_spread"]


# ---------------------------------------------------------------- one process


def test_single_process_identities_and_bad_launch_environment(monkeypatch):
    info = D.dist_info()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    m = nn.Linear(2, 1)
    assert D.wrap_ddp(m) is m and D.init_distributed().world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="inconsistent launch environment: RANK=5, WORLD_SIZE=2"):
        D.dist_info()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set"):
        D.init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="WORLD_SIZE='x' is not an integer"):
        D.dist_info()


# ---------------------------------------------------------------- the shipped launch config

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def test_accelerate_configs_parse():
    """``accelerate launch --config_file experiments/configs/{ddp,fsdp}.yaml`` starts the processes torchrun
    would."""
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    assert str(cfg.distributed_type).endswith("MULTI_GPU") and cfg.mixed_precision == "bf16"
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp.yaml", "fsdp.yaml"]
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    # accelerate then sets ACCELERATE_USE_FSDP, which --parallel auto reads (tests/test_fsdp.py)
    assert str(fsdp.distributed_type).endswith("FSDP") and fsdp.fsdp_config["fsdp_version"] == 2


if __name__ == "__main__":  # one rank, launched by torchrun from run_workers
    _worker(sys.argv[1])

"""Two CPU processes (gloo): sharding and gathering, and DDP training that keeps replicas identical
only when log-probabilities go through the wrapped module's forward."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dynamics.full import distributed as D

WORLD = 2
STEPS = 6


class TinyGen(nn.Module):
    """Teacher-forced image-token log-probabilities: a prompt-conditioned bigram model.
    forward(prompt_ids (B,), images (B, K, M)) -> (B, K) summed log pi(x_m | y, x_{m-1})."""

    def __init__(self, n_prompts=5, vocab=7, dim=6, length=4):
        super().__init__()
        self.prompt = nn.Embedding(n_prompts, dim)
        self.tok = nn.Embedding(vocab + 1, dim)  # last row: begin-of-image
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.1)
        self.head = nn.Linear(dim, vocab)
        self.frozen = nn.Linear(dim, dim)  # outside the trainable scope
        self.frozen.requires_grad_(False)
        self.vocab = vocab

    def forward(self, prompt_ids, images):
        B, K, M = images.shape
        prev = torch.cat([torch.full((B, K, 1), self.vocab), images[..., :-1]], dim=-1)
        h = torch.tanh(self.prompt(prompt_ids)[:, None, None] + self.tok(prev) + self.pos[:M])
        logp = torch.log_softmax(self.head(h), dim=-1)
        return logp.gather(-1, images[..., None]).squeeze(-1).sum(-1)


def make_model():
    torch.manual_seed(0)
    return TinyGen().double()


def rank_data(rank, step):
    """Different data on each rank, and uneven: rank r holds 2 + r prompts per step."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    n = 2 + rank
    return torch.randint(0, 5, (n,), generator=g), torch.randint(0, 7, (n, 3, 4), generator=g)


def train(module, loss_of, steps=STEPS, lr=0.5):
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        opt.zero_grad()
        loss_of(step).backward()
        opt.step()


def _worker(rank, world, out_dir):
    torch.set_num_threads(1)
    info = D.init_distributed(backend="gloo", timeout_s=60)
    res = {"rank": info.rank, "world": info.world_size}

    # --- sharding and gathering, in the original order
    ids = torch.arange(7)
    local = D.shard(ids)
    judged = torch.stack([local * 10, local * 10 + 1], dim=-1)[None]  # (R=1, B_local, K=2)
    res["gather"] = D.gather(judged, dim=1).tolist()
    padded = D.shard(ids, pad=True)
    res["padded_len"] = len(padded)
    res["gather_padded"] = D.gather(padded * 2, total=7).tolist()
    res["gather_bool"] = D.gather((local % 2 == 0)[None, :, None], dim=1, total=7).flatten().tolist()
    res["gather_objects"] = D.gather_objects([f"p{int(i)}" for i in D.shard(ids, pad=True)], total=7)
    total = sum(len(rank_data(r, 0)[0]) for r in range(world))

    # --- arm 1: log-probs through the DDP-wrapped module's forward
    ddp = D.wrap_ddp(make_model())
    assert isinstance(ddp, nn.parallel.DistributedDataParallel)

    def loss_wrapped(step):
        p, x = rank_data(rank, step)
        return D.sharded_mean(-ddp(p, x).sum(), total)

    train(ddp, loss_wrapped)
    res["wrapped_divergence"] = D.replica_divergence(ddp)
    res["wrapped_params"] = [p.detach().flatten().tolist() for p in D.unwrap(ddp).parameters()]

    # --- arm 2: the same, but log-probs from the unwrapped module: gradients are never averaged
    ddp2 = D.wrap_ddp(make_model())

    def loss_unwrapped(step):
        p, x = rank_data(rank, step)
        return D.sharded_mean(-D.unwrap(ddp2)(p, x).sum(), total)

    train(ddp2, loss_unwrapped)
    res["unwrapped_divergence"] = D.replica_divergence(ddp2)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(res))
    torch.distributed.destroy_process_group()


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


def test_two_processes_shard_gather_and_ddp_replicas(tmp_path):
    res = run_workers(tmp_path)
    expect = [[[10 * i, 10 * i + 1] for i in range(7)]]
    for r, out in enumerate(res):
        assert out["rank"] == r and out["world"] == WORLD
        assert out["gather"] == expect  # uneven shards (4 + 3), original order, on every rank
        assert out["padded_len"] == 4
        assert out["gather_padded"] == [2 * i for i in range(7)]  # padding dropped
        assert out["gather_bool"] == [i % 2 == 0 for i in range(7)]
        assert out["gather_objects"] == [f"p{i}" for i in range(7)]
    # wrapped forward: replicas bit-identical after training on different data per rank
    assert res[0]["wrapped_divergence"] == 0.0 and res[1]["wrapped_divergence"] == 0.0
    assert res[0]["wrapped_params"] == res[1]["wrapped_params"]
    # unwrapped forward: the replicas drift apart
    assert res[0]["unwrapped_divergence"] > 1e-3
    assert res[0]["unwrapped_divergence"] == res[1]["unwrapped_divergence"]
    # and the DDP run equals one process training on the union of both ranks' data (global mean)
    model = make_model()
    total = sum(len(rank_data(r, 0)[0]) for r in range(WORLD))

    def loss_all(step):
        return -sum(model(*rank_data(r, step)).sum() for r in range(WORLD)) / total

    train(model, loss_all)
    ref = [p.detach().flatten().tolist() for p in model.parameters()]
    for got, want in zip(res[0]["wrapped_params"], ref):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-10)
    moved = [p.detach().flatten().tolist() for p in make_model().parameters()]
    assert any(a != b for a, b in zip(ref, moved))


# ---------------------------------------------------------------- one process


def test_shard_bounds_cover_every_item_once():
    for n in range(12):
        for w in range(1, 5):
            bounds = D.shard_bounds(n, w)
            covered = [i for a, b in bounds for i in range(a, b)]
            assert covered == list(range(n))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1
            if n:
                padded = [D.shard(list(range(n)), rank=r, world_size=w, pad=True) for r in range(w)]
                assert {len(p) for p in padded} == {-(-n // w)}


def test_single_process_identities_and_bad_input(monkeypatch):
    x = torch.arange(6).reshape(1, 3, 2)
    assert torch.equal(D.shard(x, dim=1), x)
    assert torch.equal(D.gather(x, dim=1), x)
    assert D.dist_info().world_size == 1
    with pytest.raises(ValueError, match="give both rank and world_size"):
        D.shard(x, rank=0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        D.shard(x, rank=2, world_size=2)
    with pytest.raises(ValueError, match="sequences are sharded along dim 0 only"):
        D.shard([1, 2], dim=1)
    with pytest.raises(ValueError, match="global_count must be >= 1"):
        D.sharded_mean(torch.tensor(1.0), 0)
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


def test_prepare_single_process_and_scope_errors():
    m = make_model()
    p = D.prepare(m, lambda ps: torch.optim.SGD(ps, lr=0.1), strategy="auto")
    assert p.strategy == "none" and p.module is m
    n_trainable = sum(1 for q in m.parameters() if q.requires_grad)
    assert len(p.optimizer.param_groups[0]["params"]) == n_trainable < len(list(m.parameters()))
    before = m.frozen.weight.clone()
    loss = -p.module(*rank_data(0, 0)).mean()
    p.backward(loss)
    p.optimizer.step()
    assert torch.equal(m.frozen.weight, before)
    with pytest.raises(RuntimeError, match="needs several processes"):
        D.prepare(make_model(), lambda ps: torch.optim.SGD(ps, lr=0.1), strategy="ddp")
    with pytest.raises(ValueError, match="strategy 'fsdp' unknown"):
        D.prepare(m, lambda ps: torch.optim.SGD(ps, lr=0.1), strategy="fsdp")
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        D.prepare(m, lambda ps: torch.optim.SGD(ps, lr=0.1))


def test_prepare_through_accelerate_single_process():
    pytest.importorskip("accelerate")
    m = make_model()
    p = D.prepare(m, lambda ps: torch.optim.SGD(ps, lr=0.1), strategy="accelerate")
    assert p.accelerator is not None and p.unwrapped is m
    before = [q.detach().clone() for q in m.parameters()]
    p.backward(-p.module(*rank_data(0, 0)).mean())
    p.optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


# ---------------------------------------------------------------- shipped launch configs

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


@pytest.mark.parametrize(
    "name, kind",
    [("ddp.yaml", "MULTI_GPU"), ("fsdp_7b.yaml", "FSDP"), ("deepspeed_zero3_7b.yaml", "DEEPSPEED")],
)
def test_accelerate_configs_parse(name, kind):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert str(cfg.distributed_type).endswith(kind)
    assert cfg.mixed_precision == "bf16"
    if kind == "FSDP":
        import importlib.util

        # the layer classes exist in transformers' Janus-Pro (its trunk is Llama); read, not imported
        sources = "".join(
            Path(importlib.util.find_spec(f"transformers.models.{m}.modeling_{m}").origin).read_text()
            for m in ("janus", "llama")
        )
        for cls in cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
            assert f"class {cls}(" in sources, cls
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 3


if __name__ == "__main__":  # one rank, launched by torchrun from run_workers
    _worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1])

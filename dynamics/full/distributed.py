"""Many processes: rank detection, prompt sharding, gathering judgements, wrapped training.

Runs launched with ``torchrun --nproc_per_node K experiments/full_clo.py ...`` or ``accelerate
launch --config_file experiments/configs/<config>.yaml experiments/full_clo.py ...`` split the work
this way:

1. every rank holds the whole prompt set; :func:`shard` gives each rank a contiguous block of
   prompt ids (``pad=True`` makes the blocks equal, which FSDP/ZeRO-3 need: their forward passes
   are collective, so every rank must run as many);
2. each rank samples and judges its block; :func:`gather` brings the candidates and judgements
   back to every rank in the original prompt order, so every rank builds the same SFT/DPO sets;
3. training runs through the wrapped module (:func:`wrap_ddp` or :func:`prepare`): the
   log-probabilities must come from the *wrapped* module's ``forward``, because DDP averages
   gradients only for forward passes it has seen. Calling the unwrapped model trains each replica
   on its own data and they drift apart (:func:`replica_divergence` measures it).

Without a process group everything degrades to the one-process identity, so the same code runs
on one device.

Example (one process)::

    >>> import torch
    >>> ids = torch.arange(5)
    >>> shard_bounds(5, 2)
    [(0, 3), (3, 5)]
    >>> shard(ids, rank=1, world_size=2)
    tensor([3, 4])
    >>> gather(shard(ids))  # world size 1: the identity
    tensor([0, 1, 2, 3, 4])
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "Prepared",
    "dist_info",
    "gather",
    "gather_objects",
    "init_distributed",
    "prepare",
    "replica_divergence",
    "shard",
    "shard_bounds",
    "sharded_mean",
    "unwrap",
    "wrap_ddp",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node.

    >>> DistInfo(rank=0, world_size=1, local_rank=0).is_main
    True
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes records and checkpoints)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_info() -> DistInfo:
    """Rank and world size: from the process group when one is initialised, else from the
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables torchrun and accelerate set, else one process.

    >>> dist_info().world_size >= 1
    True
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent launch environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, _env_int("LOCAL_RANK", 0), None)


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group when launched with several processes (env://).

    ``backend``: ``"nccl"`` when CUDA is available, else ``"gloo"``, unless given. Sets the CUDA
    device to ``LOCAL_RANK``. With one process (or an already initialised group) it only reports.

    >>> init_distributed().rank  # one process: nothing to initialise
    0
    """
    info = dist_info()
    if dist.is_initialized() or not info.is_distributed:
        return info
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={info.world_size} but {name} is not set: launch with torchrun or accelerate launch"
            )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist_info()


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is None:
        info = dist_info()
        return info.rank, info.world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return rank, world_size


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` blocks of ``n`` items over ranks; the first ``n % world_size``
    ranks get one more.

    >>> shard_bounds(7, 3)
    [(0, 3), (3, 5), (5, 7)]
    >>> shard_bounds(1, 3)
    [(0, 1), (1, 1), (1, 1)]
    """
    if n < 0 or world_size < 1:
        raise ValueError(f"shard_bounds: need n >= 0 and world_size >= 1, got n={n}, world_size={world_size}")
    base, extra = divmod(n, world_size)
    out, start = [], 0
    for r in range(world_size):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def shard(
    x: torch.Tensor | Sequence[T],
    *,
    dim: int = 0,
    pad: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> torch.Tensor | list[T]:
    """This rank's contiguous block of ``x`` along ``dim`` (:func:`shard_bounds`).

    Args:
        x: a tensor, or a sequence (then ``dim`` must be 0).
        pad: repeat the block's last item (or ``x``'s last, for an empty block) so every rank
            gets ``ceil(n / world_size)`` items; :func:`gather` with ``total=n`` drops the copies.
        rank, world_size: default: this process (:func:`dist_info`).

    >>> [shard(list("abcde"), rank=r, world_size=3, pad=True) for r in range(3)]
    [['a', 'b'], ['c', 'd'], ['e', 'e']]
    """
    rank, world = _world(rank, world_size)
    is_tensor = isinstance(x, torch.Tensor)
    if not is_tensor and dim != 0:
        raise ValueError("shard: sequences are sharded along dim 0 only")
    n = x.shape[dim] if is_tensor else len(x)
    start, stop = shard_bounds(n, world)[rank]
    if is_tensor:
        local = x.narrow(dim, start, stop - start)
    else:
        local = list(x[start:stop])
    if not pad or world == 1:
        return local
    if n == 0:
        raise ValueError("shard: cannot pad a shard of an empty input")
    need = -(-n // world) - (stop - start)
    if need == 0:
        return local
    if is_tensor:
        src = local if stop > start else x
        last = src.narrow(dim, src.shape[dim] - 1, 1)
        return torch.cat([local] + [last] * need, dim=dim)
    last_item = local[-1] if local else x[-1]
    return local + [last_item] * need


def _real_counts(sizes: list[int], total: int | None, world: int) -> list[int]:
    if total is None:
        return sizes
    counts = [b - a for a, b in shard_bounds(total, world)]
    for r, (have, want) in enumerate(zip(sizes, counts)):
        if have < want:
            raise ValueError(f"gather: rank {r} holds {have} items but its shard of total={total} has {want}")
    return counts


def gather(x: torch.Tensor, *, dim: int = 0, total: int | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``, in rank order, on every rank.

    Shards may differ in size along ``dim`` (the other dims must agree). With ``total`` (the
    unsharded length), each rank's block is cut to its :func:`shard_bounds` size, dropping the
    padding of ``shard(..., pad=True)``. Judgements ``(R, B, K)`` and candidates ``(R, B, K, M)``
    are sharded over prompts, so gather them with ``dim=1``.

    >>> gather(torch.ones(1, 3, 2), dim=1, total=2).shape  # one process: cut to total
    torch.Size([1, 2, 2])
    """
    dim = dim % max(x.dim(), 1)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x if total is None else x.narrow(dim, 0, total)
    world = dist.get_world_size()
    size = torch.tensor([x.shape[dim]], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    counts = _real_counts(sizes, total, world)
    payload = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool all_gather
    biggest = max(sizes)
    if payload.shape[dim] < biggest:
        pad_shape = list(payload.shape)
        pad_shape[dim] = biggest - payload.shape[dim]
        payload = torch.cat([payload, payload.new_zeros(pad_shape)], dim=dim)
    payload = payload.contiguous()
    parts = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(parts, payload)
    out = torch.cat([p.narrow(dim, 0, c) for p, c in zip(parts, counts)], dim=dim)
    return out.to(torch.bool) if x.dtype == torch.bool else out


def gather_objects(items: Sequence[T], *, total: int | None = None) -> list[T]:
    """:func:`gather` for picklable Python objects (decoded images, reason strings), along the list.

    >>> gather_objects(["a", "b"])
    ['a', 'b']
    """
    items = list(items)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items if total is None else items[:total]
    world = dist.get_world_size()
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, items)
    counts = _real_counts([len(p) for p in parts], total, world)
    return [obj for p, c in zip(parts, counts) for obj in p[:c]]


def sharded_mean(local_sum: torch.Tensor, global_count: int) -> torch.Tensor:
    """The local share of a global mean, for uneven shards under DDP: ``local_sum * world /
    global_count``. DDP *averages* gradients over ranks, so backpropagating this on every rank
    gives the gradient of ``(sum over all ranks) / global_count``, whatever each rank's share.

    >>> sharded_mean(torch.tensor(6.0), 3)  # one process: the plain mean
    tensor(2.)
    """
    if global_count < 1:
        raise ValueError(f"sharded_mean: global_count must be >= 1, got {global_count}")
    return local_sum * (dist_info().world_size / global_count)


def wrap_ddp(
    module: nn.Module,
    *,
    device_ids: list[int] | None = None,
    find_unused_parameters: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Wrap the trainable module in ``DistributedDataParallel`` when a process group with more than
    one rank exists (else return it unchanged). Only parameters with ``requires_grad`` are
    synchronised. Compute training log-probabilities through the *returned* module's forward.

    ``device_ids`` default: ``[LOCAL_RANK]`` for a CUDA module, none for CPU.

    >>> m = nn.Linear(2, 1)
    >>> wrap_ddp(m) is m  # one process
    True
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return module
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError("wrap_ddp: the module has no trainable parameters (check the parameter scope)")
    if device_ids is None:
        dev = next(module.parameters()).device
        device_ids = (
            [dev.index if dev.index is not None else dist_info().local_rank] if dev.type == "cuda" else None
        )
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **kwargs
    )


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / FSDP1 / ``torch.compile`` wrappers (for saving, sampling).

    >>> m = nn.Linear(2, 1)
    >>> unwrap(m) is m
    True
    """
    wrappers: tuple[type, ...] = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers += (FullyShardedDataParallel,)
    except ImportError:  # pragma: no cover - builds without FSDP
        pass
    while True:
        if isinstance(module, wrappers):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile
            module = module._orig_mod
        else:
            return module


@torch.no_grad()
def replica_divergence(module: nn.Module) -> float:
    """Largest elementwise spread (max minus min over ranks) of the trainable parameters; 0.0
    means the replicas are identical. One process: 0.0. Costs two all-reduces per parameter:
    a diagnostic, not for every step.

    >>> replica_divergence(nn.Linear(2, 1))
    0.0
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64)
    for p in unwrap(module).parameters():
        if not p.requires_grad:
            continue
        hi, lo = p.detach().clone(), p.detach().clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        worst = torch.maximum(worst, (hi - lo).abs().max().double().cpu())
    return float(worst)


@dataclass
class Prepared:
    """A module and optimizer ready for (possibly distributed) training.

    ``module``: call *this* for the training forward pass; ``backward(loss)``: the right backward
    for the strategy; ``unwrapped``: the plain module (sampling, judging, saving).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: str
    accelerator: Any = None

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, or the accelerator's (needed under DeepSpeed and mixed precision)."""
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    @property
    def unwrapped(self) -> nn.Module:
        if self.accelerator is not None:
            return self.accelerator.unwrap_model(self.module)
        return unwrap(self.module)


STRATEGIES = ("auto", "none", "ddp", "accelerate")


def prepare(
    module: nn.Module,
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    *,
    strategy: str = "auto",
    **ddp_kwargs: Any,
) -> Prepared:
    """Wrap ``module`` for training and build its optimizer over the trainable parameters.

    Strategies: ``"none"`` (one process), ``"ddp"`` (:func:`wrap_ddp`, torchrun),
    ``"accelerate"`` (``accelerate.Accelerator().prepare``: FSDP / DeepSpeed ZeRO-3 / DDP as the
    ``accelerate launch --config_file`` config says). ``"auto"``: accelerate when launched by
    ``accelerate launch`` with FSDP or DeepSpeed, else DDP when several processes, else none.

    >>> p = prepare(nn.Linear(2, 1), lambda ps: torch.optim.SGD(ps, lr=0.1))
    >>> p.strategy, p.unwrapped is p.module
    ('none', True)
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"prepare: strategy {strategy!r} unknown; allowed: {', '.join(STRATEGIES)}")
    if strategy == "auto":
        launched = any(
            os.environ.get(v, "").lower() == "true"
            for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
        )
        strategy = "accelerate" if launched else ("ddp" if dist_info().is_distributed else "none")
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("prepare: the module has no trainable parameters (check the parameter scope)")
    if strategy == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator()
        optimizer = make_optimizer(trainable)
        wrapped, optimizer = accelerator.prepare(module, optimizer)
        return Prepared(wrapped, optimizer, strategy, accelerator)
    if strategy == "ddp":
        if not dist_info().is_distributed:
            raise RuntimeError("prepare: strategy 'ddp' needs several processes (launch with torchrun)")
        init_distributed()
        wrapped = wrap_ddp(module, **ddp_kwargs)
        return Prepared(
            wrapped, make_optimizer([p for p in wrapped.parameters() if p.requires_grad]), strategy
        )
    return Prepared(module, make_optimizer(trainable), "none")

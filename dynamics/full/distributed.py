"""Many processes: rank detection, the process group, the DDP wrapper.

Runs launched with ``torchrun --nproc_per_node K experiments/full_clo.py ...`` (or ``accelerate
launch --config_file experiments/configs/ddp.yaml experiments/full_clo.py ...``, which starts the
same processes) split the work this way:

1. :func:`init_distributed` joins the process group the launcher describes (``RANK``,
   ``WORLD_SIZE``, ``MASTER_ADDR``...); every rank holds the whole prompt set and the whole model;
2. the CLO loop shards itself: :func:`dynamics.clo.run_clo` gives each rank every ``world``-th
   chunk of prompts to sample and judge, gathers the results back to every rank in prompt order
   (so every rank builds the same SFT/DPO sets and records) and splits each training batch over
   the ranks;
3. training runs through the module :func:`wrap_ddp` returns (``JanusUnified.module``): the
   log-probabilities must come from the *wrapped* module's ``forward``, because DDP averages
   gradients only for forward passes it has seen; calling the unwrapped model would train each
   replica on its own data and they would drift apart.

Without a process group everything degrades to one process, so the same code runs on one device.

Example (one process)::

    >>> from torch import nn
    >>> dist_info().world_size, init_distributed().rank
    (1, 0)
    >>> m = nn.Linear(2, 1)
    >>> wrap_ddp(m) is m
    True
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "dist_info", "init_distributed", "wrap_ddp"]


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

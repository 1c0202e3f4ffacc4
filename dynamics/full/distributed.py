"""Many processes: rank detection, the process group, the DDP wrapper and FSDP2 sharding.

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

Fully sharded (``--parallel fsdp``, or ``accelerate launch --config_file experiments/configs/fsdp.yaml``):
:func:`wrap_fsdp` shards the training module with FSDP2 (``torch.distributed.fsdp.fully_shard``: each
transformer layer, then the root), so parameters, gradients and optimizer states are split over the
ranks (AdamW on a 7B trunk does not fit one 80 GB device unsharded). Training steps run sharded; the
loop gathers the full parameters on every rank for sampling and judging (:func:`set_phase`: inference
fits one device, and a gathered model needs no collective per forward, so ranks may sample different
numbers of chunks); checkpoints are sharded too (:func:`save_sharded`, :func:`load_sharded`, through
``torch.distributed.checkpoint``).

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
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["PARALLEL", "DistInfo", "dist_info", "finish_distributed", "global_sum", "grad_sq_norm", "init_distributed",
           "is_sharded", "load_sharded", "parallel_mode", "save_sharded", "set_phase", "wrap_ddp", "wrap_fsdp"]

#: How a multi-process run splits the training module: ``ddp`` (a full replica per rank, gradients
#: all-reduced) or ``fsdp`` (FSDP2: parameters, gradients and optimizer states sharded over ranks);
#: ``auto`` is ``fsdp`` under ``accelerate launch`` with an FSDP config, else ``ddp``.
PARALLEL = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node.

    >>> DistInfo(rank=0, world_size=1, local_rank=0).world_size
    1
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None = None


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
    if dist.is_initialized() or info.world_size == 1:
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


def finish_distributed() -> None:
    """End a multi-process run that completed: collect what still holds the process group, wait for every
    rank, then destroy the default process group.

    Call it after the DDP- or FSDP-wrapped modules are released. ``destroy_process_group`` only drops
    this module's references: a wrapped module keeps the gloo backend (and its worker threads) alive until
    interpreter shutdown, where tearing it down can abort the process ("terminate called without an
    active exception", SIGABRT) after the run's results are written. Measured on two CPU ranks
    (``tests/test_distributed.py``'s worker): 3 of 26 runs aborted so with the wrapped modules alive,
    with or without ``destroy_process_group``, 1 of 56 with only a barrier before it, none of 65 with the
    wrapped modules released first (40 of them through this function). Call it on the success
    path only (a rank that failed never reaches the barrier). With one process it does nothing.

    >>> finish_distributed()  # one process: nothing to end
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # wrapped modules caught in reference cycles hold the backend too
        dist.barrier()
        dist.destroy_process_group()


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


def parallel_mode(requested: str = "auto", world_size: int | None = None) -> str:
    """The parallel mode a run uses: ``requested`` (one of :data:`PARALLEL`) resolved against the
    launch. ``auto`` reads accelerate's ``ACCELERATE_USE_FSDP``; ``fsdp`` needs several processes
    (ValueError naming the launch otherwise), and DeepSpeed launches are refused with the reason.

    >>> parallel_mode("auto", world_size=1)
    'ddp'
    """
    if requested not in PARALLEL:
        raise ValueError(f"--parallel must be one of {', '.join(PARALLEL)}, got {requested!r}")
    world = dist_info().world_size if world_size is None else world_size
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ValueError("accelerate launched this run with a DeepSpeed config; this package shards with FSDP2 "
                         "(experiments/configs/fsdp.yaml or --parallel fsdp under torchrun)")
    mode = requested
    if mode == "auto":
        mode = "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else "ddp"
    if mode == "fsdp" and world < 2:
        raise ValueError(f"--parallel fsdp shards over several processes, but WORLD_SIZE={world}: launch with "
                         "torchrun --nproc_per_node K (K >= 2) or accelerate launch --config_file "
                         "experiments/configs/fsdp.yaml")
    return mode


def _units(module: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: those whose class a transformers model lists in
    ``_no_split_modules`` (its transformer layers), found in ``module``'s tree."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in module.modules() if type(m).__name__ in names and m is not module]


def wrap_fsdp(module: nn.Module, *, units: list[nn.Module] | None = None, **kwargs: Any) -> nn.Module:
    """Shard ``module`` in place with FSDP2 (``fully_shard``) when a process group with more than one
    rank exists: each of ``units`` (default: the transformer layers, see ``_no_split_modules``), then
    ``module`` itself (everything left, frozen parameters included). Returns ``module``. Build the
    optimizer over its parameters *after* this call (they become sharded ``DTensor``s), and compute
    training log-probabilities through its forward.

    >>> m = nn.Linear(2, 1)
    >>> wrap_fsdp(m) is m and not is_sharded(m)  # one process: unchanged
    True
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return module
    from torch.distributed.fsdp import fully_shard

    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError("wrap_fsdp: the module has no trainable parameters (check the parameter scope)")
    for unit in _units(module) if units is None else units:
        fully_shard(unit, **kwargs)
    fully_shard(module, **kwargs)
    # FSDP initialises lazily in the root's first forward and refuses a first forward through a unit;
    # the judge reads images through the vision layers directly, so initialise now (no public call does this)
    module._get_fsdp_state()._lazy_init()
    return module


def _sharded(module: nn.Module | None) -> list[nn.Module]:
    if module is None or not (dist.is_available() and dist.is_initialized()):
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: nn.Module | None) -> bool:
    """Whether ``module`` (or any submodule) was sharded by :func:`wrap_fsdp`."""
    return bool(_sharded(module))


def set_phase(module: nn.Module | None, training: bool) -> None:
    """Put a sharded module in its training layout (parameters sharded, gathered per layer in each
    forward and freed after it) or its inference layout (every parameter gathered on every rank and
    kept: forwards then need no collective, so ranks may run different numbers of them, as the
    loop's prompt sharding does). A collective: every rank calls it at the same point. No-op for a
    module that is not sharded."""
    mods = _sharded(module)
    if not mods:
        return
    for m in mods:
        m.set_reshard_after_forward(training, recurse=False)
        if training:
            m.reshard()
            _forget_forward_order(m)
        else:
            m.unshard()


def _forget_forward_order(module) -> None:
    """Drop the forward order FSDP recorded for backward prefetching. FSDP records it in every forward,
    inference included, and clears it only after a backward; the ranks' inference forwards differ in
    number (prompt sharding), so a stale order would make them prefetch different layers in backward
    and deadlock. FSDP offers no public call for this, hence the private attributes."""
    state = module._get_fsdp_state()
    state._comm_ctx.post_forward_order.clear()
    for group in state._fsdp_param_groups:
        group._post_forward_indices.clear()


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks of the process group (a copy; ``x`` itself with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def grad_sq_norm(params) -> torch.Tensor:
    """The squared global norm of the gradients of ``params`` in float64. Sharded gradients
    (``DTensor``) contribute their local shards and are summed over ranks; shards partition the
    elements, so the result equals the unsharded model's."""
    from torch.distributed.tensor import DTensor

    local = torch.zeros((), dtype=torch.float64)
    sharded = False
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            sharded, g = True, g.to_local()
        local = local + (g.detach().double() ** 2).sum().cpu()
    return global_sum(local) if sharded else local


def save_sharded(path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the sharded module's and optimizer's state to the directory ``path`` with
    ``torch.distributed.checkpoint`` (each rank its own shards). An optimizer that has not stepped yet
    has no state and none is written (reading it through ``get_optimizer_state_dict`` would create one
    with a zero step, which advances Adam's step count). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    set_phase(module, True)  # the state dict is read in the sharded layout
    state = {"model": get_model_state_dict(module)}
    if optimizer.state:
        state["optimizer"] = get_optimizer_state_dict(module, optimizer)
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore :func:`save_sharded`'s directory ``path`` into ``module`` and ``optimizer`` (resharded
    to this run's ranks by ``torch.distributed.checkpoint``). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_phase(module, True)
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {"model": get_model_state_dict(module)}
    if any(k.startswith("optimizer") for k in saved):
        state["optimizer"] = get_optimizer_state_dict(module, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(module, state["model"])
    if "optimizer" in state:
        set_optimizer_state_dict(module, optimizer, state["optimizer"])

"""Data-parallel training of one run with torch.distributed (`torchrun -m sparsebench run ...`).

Every rank trains on an equal share of each minibatch, so the global batch stays the preset's (a process
count that does not divide the batch sizes is refused: `batch_share`); gradients are averaged across ranks
before masking and the optimizer step, so every rank sees the same gradients and takes the same topology
decisions; after each topology update the masks are also broadcast from rank 0, so they stay identical even
where floating-point reductions differ. Only rank 0 writes the results store, checkpoints are kept per rank.

Batch normalisation is not synchronised: G's BatchNorm layers normalise over each rank's share of the batch,
not over the global batch, as BigGAN-PyTorch's multi-GPU training does by default (per-device statistics,
its `--cross_replica` off). They are not converted to torch's SyncBatchNorm: it runs on CUDA only (CPU runs
under gloo could not use it), and the conversion would replace the architectures' own BatchNorm, dropping
BigGAN's sampling with batch statistics in eval mode. A run's process count is in its run id, so an
N-process run is never mistaken for a one-process one.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from sparsebench import SparsebenchError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


TIMEOUT_ENV = "SPARSEBENCH_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 360.0


def timeout() -> timedelta:
    """How long a rank waits in a collective before the process group fails: rank 0 alone prepares the data
    and reference statistics (preflight) and runs every curve and final evaluation, while the other ranks wait
    in a barrier or the next collective. NCCL's default of 10 minutes (gloo's 30) ends a run whose final
    evaluation with all metrics, or whose reference statistics of a large data set, take longer; 6 hours by
    default, `SPARSEBENCH_DIST_TIMEOUT_MIN` minutes when set (a rank that really hangs is reported that late)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0 or minutes == float("inf"):
        raise SparsebenchError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {raw!r}")
    return timedelta(minutes=minutes)


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment, with a long timeout (`timeout`);
    returns the rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo", timeout=timeout())
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def batch_share(spec, world: int, run: str = "this run"):
    """`spec` with each of `world` ranks' equal share of its global batch sizes; refused when `world` does not
    divide them: rounding each share down would silently shrink the global batch (the BigGAN paper's 50 on
    4 ranks would train with 48)."""
    if world <= 1:
        return spec
    sizes = {"batch size": spec.batch_size, "G batch size": spec.g_batch_size}
    uneven = {what: n for what, n in sizes.items() if n % world}
    if uneven:
        named = " and the ".join(f"{what} {n}" for what, n in uneven.items())
        raise SparsebenchError(
            f"{world} processes cannot share the {named} of {run} evenly (the global batch would shrink); run "
            f"torchrun with a process count that divides {' and '.join(str(n) for n in sorted(set(uneven.values())))}"
        )
    return spec.replace(batch_size=spec.batch_size // world, g_batch_size=spec.g_batch_size // world)


def average_gradients(model: nn.Module) -> None:
    """All-reduce the gradients of `model` to their mean over ranks (one flat buffer)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None and p.requires_grad]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


@torch.no_grad()
def broadcast_masks(masks) -> None:
    """Make every rank's masks (and the weights they gate) equal to rank 0's."""
    if masks is None:
        return
    for name, m in masks.masks.items():
        dist.broadcast(m, 0)
        dist.broadcast(masks.params[name].data, 0)
    masks.apply()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (e.g. its claim decision for a cell)."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


# -- decisions every rank takes together ----------------------------------------------------------------------
# A decision taken from a rank-local value (a signal, a claim check, a loss, a balance ratio) makes ranks act at
# different steps: one rank enters a collective (a mask broadcast, the next gradient average) that the others
# never reach, and the run hangs until the process group's timeout. Such decisions go through these first.

_host_group = None  # a gloo group for flags kept on the host (under NCCL, see `_flags_group`)


def _flags_group():
    """The group that agrees on host-side flags: the default one under gloo; under NCCL a gloo group of its own,
    so that agreeing on a flag never waits for the GPU's queue (an NCCL collective runs on device tensors).
    Created on first use, which every rank reaches at the same point (the first agreement of a run)."""
    global _host_group
    if dist.get_backend() != "nccl":
        return dist.group.WORLD
    if _host_group is None:
        _host_group = dist.new_group(backend="gloo", timeout=timeout())
    return _host_group


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each of `flags`, raised if any rank raised it (the flags themselves in one process)."""
    if world_size() <= 1:
        return tuple(bool(f) for f in flags)
    raised = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64)
    dist.all_reduce(raised, op=dist.ReduceOp.MAX, group=_flags_group())
    return tuple(bool(v) for v in raised.tolist())


def spread(value: int) -> tuple[int, int]:
    """The least and the greatest of every rank's `value` (`value` twice in one process)."""
    if world_size() <= 1:
        return value, value
    both = torch.tensor([value, -value], dtype=torch.int64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=_flags_group())
    return -int(both[1]), int(both[0])


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of every rank's `values` (a tensor on the run's device, left there: nothing is read)."""
    if world_size() <= 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total.div_(dist.get_world_size())


def min_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The least of every rank's `values` (a tensor on the run's device, left there: nothing is read)."""
    if world_size() <= 1:
        return values
    least = values.clone()
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    return least

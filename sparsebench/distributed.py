"""Data-parallel training of one run with torch.distributed (`torchrun -m sparsebench run ...`).

Every rank trains on its share of each minibatch (the global batch stays the preset's); gradients
are averaged across ranks before masking and the optimizer step, so every rank sees the same
gradients and takes the same topology decisions; after each topology update the masks are also
broadcast from rank 0, so they stay identical even where floating-point reductions differ.
Only rank 0 writes the results store, checkpoints are kept per rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment; returns the rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


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

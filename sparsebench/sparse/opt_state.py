"""Optimizer-state policy of the sparse engine: what Adam's moments hold at inactive and regrown positions.

Adam's step counter is per tensor, so by the time a weight is regrown it is large and Adam's bias
correction no longer inflates small moments. A regrown weight whose moments start at zero takes
first updates of about lr * sqrt((1 - beta2^t) / (1 - beta2)): ~31x lr at beta2 = 0.999, ~3x at 0.9.
How that is avoided is a choice that changes results, so it is part of every run's config:

- `dense` (default; the STU-GAN authors'): gradients are not masked, so Adam's moments follow the
  dense gradient at every position, and a regrown weight starts with warm state. Topology updates
  leave the optimizer alone.
- `mean` (sparselearning, Dettmers & Zettlemoyer): gradients are masked between updates; at an
  update every per-element state tensor (exp_avg, exp_avg_sq, ...) is set, at each grown position,
  to the layer's mean over its surviving active positions, and zeroed at pruned positions.
- `zero`: gradients are masked between updates; state at pruned and grown positions is zeroed.

Under every policy the weights are masked after every optimizer step (MaskState.apply), so no
moment, momentum or weight decay can revive a pruned weight. Adam is elementwise, so masks that
never change (static, PF, GAN Tickets) train identically under all three; regrowth is what differs.
"""

from __future__ import annotations

import torch

from sparsebench import defaults

POLICIES = ("dense", "mean", "zero")
DEFAULT_POLICY = defaults.OPT_STATE


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown optimizer-state policy {policy!r}; known: {', '.join(POLICIES)}")
    return policy


def masks_gradients(policy: str) -> bool:
    """Whether gradients are masked before each optimizer step under `policy`."""
    return check_policy(policy) != "dense"


@torch.no_grad()
def on_topology_update(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    pruned: torch.Tensor,
    grown: torch.Tensor,
    survivors: torch.Tensor,
    policy: str,
) -> None:
    """Set `param`'s per-element optimizer state after a topology update (flat bool position sets)."""
    if check_policy(policy) == "dense":
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if not (isinstance(value, torch.Tensor) and value.shape == param.shape):
            continue  # e.g. Adam's per-tensor step counter
        # the flat position sets index the logical (row-major) order: shaped as the state, they select the
        # same elements whatever its memory format (a channels-last state has no flat view)
        kept, off, on = (positions.view(value.shape) for positions in (survivors, pruned, grown))
        if policy == "mean":
            fill = value[kept].mean() if survivors.any() else value.new_zeros(())
            value[off] = 0
            value[on] = fill
        else:
            value[off | on] = 0

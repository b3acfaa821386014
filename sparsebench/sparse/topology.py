"""Topology updates: prune the smallest active weights, regrow as many inactive ones.

Per layer (as RigL and the STU-GAN authors), so per-layer densities, and with them the FLOPs,
stay constant. Counts are exact, ties are broken by position, grown weights start at zero, and a
position pruned in this update is not regrown in the same update.

What the optimizer state holds at pruned and grown positions follows the masks' optimizer-state
policy (`dense`, `mean` or `zero`, see sparsebench.sparse.opt_state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.opt_state import on_topology_update


@dataclass(frozen=True)
class CosineSchedule:
    """Update fraction p(t) decaying from p0 to p_min over `total` G steps by a half cosine."""

    p0: float = 0.5
    p_min: float = 0.005
    total: int = 1

    def __call__(self, step: int) -> float:
        t = min(max(step, 0), self.total) / max(self.total, 1)
        return self.p_min + 0.5 * (self.p0 - self.p_min) * (1.0 + math.cos(math.pi * t))


@dataclass
class UpdateResult:
    pruned: dict[str, torch.Tensor]  # bool, positions switched off
    grown: dict[str, torch.Tensor]  # bool, positions switched on
    counts: dict[str, int]


@torch.no_grad()
def prune_and_regrow(
    masks: MaskState,
    fraction: float,
    grads: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> UpdateResult:
    """Prune `fraction` of each layer's active weights by |w|, regrow as many by |grad| (or at random).

    `grads` holds the dense gradients of the current minibatch; None means random regrowth
    (SET-style), drawn from `generator`. With `optimizer`, its state at the changed positions is set
    by `masks.opt_state`.
    """
    pruned, grown, counts = {}, {}, {}
    for name, p in masks.params.items():
        mask = masks.masks[name]
        active = mask.bool().flatten()
        n_active = int(active.sum())
        k = min(round(fraction * n_active), int((~active).sum()))
        counts[name] = k
        if k == 0:
            pruned[name] = torch.zeros_like(mask, dtype=torch.bool)
            grown[name] = torch.zeros_like(mask, dtype=torch.bool)
            continue
        w = p.detach().abs().flatten().float()
        score = torch.where(active, w, torch.full_like(w, math.inf))
        drop = torch.argsort(score, stable=True)[:k]
        off = torch.zeros_like(active)
        off[drop] = True
        candidates = ~active  # inactive before this update: excludes what was just pruned
        if grads is None:
            noise = torch.rand(w.shape, generator=generator).to(w.device)
            gscore = torch.where(candidates, noise, torch.full_like(w, -1.0))
        else:
            g = grads[name].detach().abs().flatten().float()
            gscore = torch.where(candidates, g, torch.full_like(g, -1.0))
        grow = torch.argsort(gscore, descending=True, stable=True)[:k]
        on = torch.zeros_like(active)
        on[grow] = True
        new = (active & ~off) | on
        masks.masks[name] = new.view_as(mask).to(mask.dtype)
        masks.ever_active[name] |= on.view_as(mask)
        p.view(-1)[off | on] = 0.0  # pruned weights vanish; grown weights start at zero
        pruned[name], grown[name] = off.view_as(mask), on.view_as(mask)
        if optimizer is not None:
            on_topology_update(optimizer, p, off, on, active & ~off, masks.opt_state)
    return UpdateResult(pruned, grown, counts)


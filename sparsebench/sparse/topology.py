"""Topology updates: prune the smallest active weights, regrow as many inactive ones.

Per layer (as RigL and the STU-GAN authors), so per-layer densities, and with them the FLOPs,
stay constant, or with one global ranking (ADAPT and its SDST baselines), so densities move between
layers. Counts are exact and grown weights start at zero. Ties are broken by position, unless the drop
score carries RigL's tie-breaking noise (`noisy_magnitude`). By default a position pruned in an update is
not regrown in the same update (STU-GAN); with `regrow_pruned` it may be (RigL and ADAPT's reference): it
then simply stays, with its weight and optimizer state. `change_density` moves a network's total density
(ADAPT's D).

What the optimizer state holds at pruned and grown positions follows the masks' optimizer-state
policy (`dense`, `mean` or `zero`, see sparsebench.sparse.opt_state).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


ScoreFn = Callable[[str], torch.Tensor]  # layer name -> flat float scores over the layer's weight


def magnitude(masks: MaskState) -> ScoreFn:
    """|w| of each layer: the drop score of RigL, SET and STU-GAN (smallest first)."""
    return lambda name: masks.params[name].detach().abs().flatten().float()


RIGL_DROP_NOISE = 1e-5  # RigL's `noise_std`: N(0, 1e-5) added to |w| before ranking what to drop


def noisy_magnitude(masks: MaskState, generator: torch.Generator | None, std: float = RIGL_DROP_NOISE) -> ScoreFn:
    """|w| plus N(0, std) noise from `generator`: RigL's drop score (`sparse_optimizers_base`), whose noise
    breaks ties between equal magnitudes at random rather than by position. The noise comes from the run's
    seeded stream, so an update is reproducible and survives a resume."""

    def score(name: str) -> torch.Tensor:
        w = masks.params[name].detach().abs().flatten().float()
        noise = torch.randn(w.numel(), generator=generator) * std
        return w + noise.to(w.device)

    return score


def random_scores(masks: MaskState, generator: torch.Generator | None) -> ScoreFn:
    """Uniform noise from `generator`: SET-style random growth (one draw per layer that grows)."""
    return lambda name: torch.rand(masks.params[name].numel(), generator=generator).to(masks.params[name].device)


def gradient_magnitude(grads: dict[str, torch.Tensor]) -> ScoreFn:
    """|grad| of the current minibatch: RigL's and STU-GAN's growth score (largest first)."""
    return lambda name: grads[name].detach().abs().flatten().float()


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
    grow = random_scores(masks, generator) if grads is None else gradient_magnitude(grads)
    return update_topology(masks, fraction, magnitude(masks), grow, optimizer)


@torch.no_grad()
def update_topology(
    masks: MaskState,
    fraction: float,
    drop_score: ScoreFn,
    grow_score: ScoreFn,
    optimizer: torch.optim.Optimizer | None = None,
    per_layer: bool = True,
    regrow_pruned: bool = False,
) -> UpdateResult:
    """Drop `fraction` of the active weights with the lowest `drop_score`, grow as many with the highest
    `grow_score` among the inactive ones: those inactive before this update, or (`regrow_pruned`) those
    inactive after its drop, as RigL (`reinit_when_same=False`) and ADAPT's reference do. A position dropped
    and grown in one update is left as it was: active, its weight and optimizer state kept, reported in
    neither `pruned` nor `grown`.

    Per layer, each layer's count is its own, so per-layer densities stay constant; globally (`per_layer`
    False) one ranking spans all layers, so densities move between layers while the total stays exact.
    Scores are asked for only where something changes (random scores draw only then).
    """
    names = list(masks.params)
    active = {n: masks.masks[n].bool().flatten() for n in names}
    groups = [[n] for n in names] if per_layer else [names]
    off = {n: torch.zeros_like(active[n]) for n in names}
    on = {n: torch.zeros_like(active[n]) for n in names}
    counts = dict.fromkeys(names, 0)
    for group in groups:
        act = torch.cat([active[n] for n in group])
        k = min(round(fraction * int(act.sum())), int((~act).sum()))
        if k == 0:
            continue
        score = torch.cat([torch.where(active[n], drop_score(n), math.inf) for n in group])
        drop = _split(torch.argsort(score, stable=True)[:k], act, group, active)
        # candidates: inactive before this update, or (regrow_pruned) after its drop
        candidate = {n: ~(active[n] & ~drop[n]) if regrow_pruned else ~active[n] for n in group}
        gscore = torch.cat([torch.where(candidate[n], grow_score(n), -math.inf) for n in group])
        grow = _split(torch.argsort(gscore, descending=True, stable=True)[:k], act, group, active)
        for n in group:
            off[n], on[n] = drop[n] & ~grow[n], grow[n] & ~drop[n]  # dropped and regrown: unchanged
            counts[n] = int(on[n].sum())
    return _commit(masks, active, off, on, optimizer, counts)


def _commit(masks: MaskState, active: dict, off: dict, on: dict, optimizer, counts: dict) -> UpdateResult:
    """Switch the flat positions `off` off and `on` on in each layer, with weights and optimizer state."""
    pruned, grown = {}, {}
    for n, p in masks.params.items():
        mask = masks.masks[n]
        if off[n].any() or on[n].any():
            masks.masks[n] = ((active[n] & ~off[n]) | on[n]).view_as(mask).to(mask.dtype)
            masks.ever_active[n] |= on[n].view_as(mask)
            p[(off[n] | on[n]).view(p.shape)] = 0.0  # pruned weights vanish; grown weights start at zero
            if optimizer is not None:
                on_topology_update(optimizer, p, off[n], on[n], active[n] & ~off[n], masks.opt_state)
        pruned[n], grown[n] = off[n].view_as(mask), on[n].view_as(mask)
    return UpdateResult(pruned, grown, counts)


def _split(index: torch.Tensor, flat: torch.Tensor, group: list[str], active: dict) -> dict[str, torch.Tensor]:
    """Positions `index` into the concatenation of `group`'s flat tensors, as one bool tensor per layer."""
    chosen = torch.zeros_like(flat)
    chosen[index] = True
    return dict(zip(group, torch.split(chosen, [active[n].numel() for n in group])))


@torch.no_grad()
def change_density(
    masks: MaskState,
    density: float,
    drop_score: ScoreFn,
    grow_score: ScoreFn,
    optimizer: torch.optim.Optimizer | None = None,
) -> UpdateResult:
    """Bring the masks to round(density * N) non-zeros over all layers together: drop the active weights
    with the lowest `drop_score`, or grow the inactive ones with the highest `grow_score` (at zero)."""
    names = list(masks.params)
    active = {n: masks.masks[n].bool().flatten() for n in names}
    flat = torch.cat([active[n] for n in names])
    change = round(density * flat.numel()) - int(flat.sum())
    none = {n: torch.zeros_like(active[n]) for n in names}
    off, on = dict(none), dict(none)
    if change < 0:
        score = torch.cat([torch.where(active[n], drop_score(n), math.inf) for n in names])
        off = _split(torch.argsort(score, stable=True)[:-change], flat, names, active)
    elif change > 0:
        score = torch.cat([torch.where(active[n], -math.inf, grow_score(n)) for n in names])
        on = _split(torch.argsort(score, descending=True, stable=True)[:change], flat, names, active)
    counts = {n: int(on[n].sum()) - int(off[n].sum()) for n in names}
    return _commit(masks, active, off, on, optimizer, counts)

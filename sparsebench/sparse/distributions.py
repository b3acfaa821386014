"""Layer-wise sparsity distributions and exact-count mask sampling.

ERK / ER follow RigL's `get_sparsities_erdos_renyi`: a raw score per layer (sum(shape)/prod(shape),
or (n_in + n_out)/(n_in * n_out) for ER), an epsilon solved so that the kept weights add up to the
target, and while the top-scored layer's density would exceed 1, that layer is made dense and
epsilon solved again. Per-layer
counts are exact integers whose sum is exactly round(density * N).
"""

from __future__ import annotations

import math

import torch


def _raw_score(shape: tuple[int, ...], kind: str, power: float) -> float:
    if kind == "erk":
        score = sum(shape) / math.prod(shape)
    elif kind == "er":
        n_out, n_in = shape[0], shape[1] if len(shape) > 1 else 1
        score = (n_in + n_out) / (n_in * n_out)
    else:
        raise ValueError(kind)
    return score**power


def layer_densities(
    shapes: dict[str, tuple[int, ...]], density: float, kind: str = "erk", power: float = 1.0
) -> dict[str, float]:
    """Per-layer density for a target overall `density` over the layers in `shapes`."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    if density == 1.0:
        return {name: 1.0 for name in shapes}
    if kind == "uniform":
        return {name: density for name in shapes}
    if kind not in ("erk", "er"):
        raise ValueError(f"unknown distribution {kind!r}; known: erk, er, uniform (global needs weights)")
    n = {name: math.prod(s) for name, s in shapes.items()}
    total = sum(n.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(n[name] for name in dense)
        divisor = sum(_raw_score(shapes[name], kind, power) * n[name] for name in shapes if name not in dense)
        eps = budget / divisor
        live = {name: _raw_score(shapes[name], kind, power) for name in shapes if name not in dense}
        top = max(live.values())
        if eps * top <= 1:
            break
        # As RigL: the layers with the largest score become dense, then epsilon is solved again.
        dense.update(name for name, score in live.items() if score == top)
    return {name: 1.0 if name in dense else eps * _raw_score(shapes[name], kind, power) for name in shapes}


def exact_counts(shapes: dict[str, tuple[int, ...]], densities: dict[str, float], density: float) -> dict[str, int]:
    """Integer non-zero counts per layer that follow `densities` and add up to round(density*N).

    Largest-remainder rounding: floors first, then the leftover ones to the largest fractions.
    """
    n = {name: math.prod(s) for name, s in shapes.items()}
    target = round(density * sum(n.values()))
    raw = {name: densities[name] * n[name] for name in shapes}
    counts = {name: min(n[name], math.floor(raw[name])) for name in shapes}
    left = target - sum(counts.values())
    order = sorted(shapes, key=lambda name: (-(raw[name] - counts[name]), name))
    i = 0
    while left > 0 and i < 10 * len(order):
        name = order[i % len(order)]
        if counts[name] < n[name]:
            counts[name] += 1
            left -= 1
        i += 1
    return counts


def random_masks(
    shapes: dict[str, tuple[int, ...]], counts: dict[str, int], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Masks with exactly `counts[name]` ones placed uniformly at random (deterministic per generator)."""
    masks = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        flat = torch.zeros(numel)
        flat[torch.randperm(numel, generator=generator)[: counts[name]]] = 1.0
        masks[name] = flat.view(shape)
    return masks


def magnitude_masks(
    weights: dict[str, torch.Tensor], density: float, how: str, active: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Keep the largest-|w| weights: one threshold across layers (`global`) or per layer (`uniform`).

    `density` is relative to all weights; positions outside `active` are never kept. Exact counts;
    ties are broken by position (stable sort), so the result is deterministic.
    """

    def score(name: str, w: torch.Tensor) -> torch.Tensor:
        s = w.detach().abs().float()
        if active is not None:
            s = torch.where(active[name].bool(), s, torch.full_like(s, -1.0))
        return s.flatten().cpu()

    if how == "uniform":
        masks = {}
        for name, w in weights.items():
            k = round(density * w.numel())
            masks[name] = _keep_top(score(name, w), k).view_as(w).to(w.device)
        return masks
    if how != "global":
        raise ValueError(f"unknown magnitude pruning {how!r}; known: global, uniform")
    flat = torch.cat([score(name, w) for name, w in weights.items()])
    keep = _keep_top(flat, round(density * flat.numel()))
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset : offset + w.numel()].view_as(w).to(w.device)
        offset += w.numel()
    return masks


def _keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.float32)
    mask[order[:k]] = 1.0
    return mask

"""Helpers for the built-in data sets: resizing to uint8 3-channel images, deterministic splits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsebench.interfaces import ImageData


def to_uint8_rgb(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Float N x C x H x W in [0, 1] -> uint8 N x 3 x R x R (bilinear, antialiased when shrinking)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != resolution or images.shape[-2] != resolution:
        images = F.interpolate(
            images,
            size=(resolution, resolution),
            mode="bilinear",
            align_corners=False,
            antialias=images.shape[-1] > resolution,
        )
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def split(data: ImageData, heldout_fraction: float, seed: int = 0) -> tuple[ImageData, ImageData]:
    """A deterministic train / held-out split (a fixed permutation, independent of the run's seed)."""
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * heldout_fraction))
    held, train = perm[:k].sort().values, perm[k:].sort().values
    pick = lambda idx: ImageData(data.images[idx], data.labels[idx], data.num_classes)  # noqa: E731
    return pick(train), pick(held)

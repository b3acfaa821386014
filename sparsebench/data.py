"""In-memory image sets: the data types shared by the plugin base classes (a `Dataset` returns them)
and the training loop (its `Batcher` draws from them). They live here, apart from both, so that
neither imports the other's module for them (`sparsebench.ImageData` and `sparsebench.api.ImageData`
name the same class)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageData:
    """An in-memory image set: uint8 N x 3 x H x W, int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DataSplits:
    train: ImageData
    heldout: ImageData | None

"""`digits`: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes).

The embedded default data: no network. Resized to the preset's resolution, 3 channels; a fixed
80 / 20 train / held-out split.
"""

from __future__ import annotations

import torch

from sparsebench.hookspecs import hookimpl
from sparsebench.interfaces import Dataset, DataSplits, ImageData
from sparsebench_builtins.datasets.common import split, to_uint8_rgb


class Digits(Dataset):
    name = "digits"
    description = "scikit-learn's bundled handwritten digits (1,797 images, 10 classes; no download)"

    def load(self, resolution: int, data_dir: str | None = None, **options) -> DataSplits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        data = ImageData(to_uint8_rgb(images, resolution), torch.tensor(bunch.target, dtype=torch.long), 10)
        train, heldout = split(data, 0.2)
        return DataSplits(train, heldout)


@hookimpl
def register_datasets(register):
    register(Digits())

"""`cifar10`: CIFAR-10 through torchvision (train split for training and as FID reference).

Looks in `--data-dir` (default `$SPARSEBENCH_DATA` or `./data`) for torchvision's layout
`cifar-10-batches-py/`, and downloads it there when the network allows.
"""

from __future__ import annotations

import os

import torch

from sparsebench import SparsebenchError
from sparsebench.hookspecs import hookimpl
from sparsebench.interfaces import Dataset, DataSplits, ImageData
from sparsebench.options import Option
from sparsebench_builtins.datasets.common import to_uint8_rgb


def default_data_dir() -> str:
    return os.environ.get("SPARSEBENCH_DATA", "data")


class Cifar10(Dataset):
    name = "cifar10"
    description = "CIFAR-10 (50,000 train / 10,000 test images, 10 classes) via torchvision"
    options = (Option("download", bool, True, "download into the data directory when missing"),)

    def load(self, resolution: int, data_dir: str | None = None, download: bool = True, **options) -> DataSplits:
        from torchvision.datasets import CIFAR10

        root = data_dir or default_data_dir()
        try:
            train = CIFAR10(root, train=True, download=download)
            test = CIFAR10(root, train=False, download=download)
        except Exception as exc:  # noqa: BLE001 - torchvision raises URLError, RuntimeError, OSError...
            raise SparsebenchError(
                f"CIFAR-10 is not in {os.path.abspath(root)}/cifar-10-batches-py/ and could not be downloaded "
                f"({type(exc).__name__}); fetch https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
                f"unpack it there, or pass --data-dir DIR"
            ) from None

        def convert(ds) -> ImageData:
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
            return ImageData(to_uint8_rgb(images, resolution), torch.tensor(ds.targets, dtype=torch.long), 10)

        return DataSplits(convert(train), convert(test))


@hookimpl
def register_datasets(register):
    register(Cifar10())

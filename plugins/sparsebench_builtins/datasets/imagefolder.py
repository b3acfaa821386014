"""`imagefolder`: your own class-per-folder images (`DIR/<class>/<image>`), e.g. ImageNet at 128.

Images are centre-cropped and resized to the preset's resolution and held in memory; a fixed
5 % is held out.
"""

from __future__ import annotations

import os

import torch

from sparsebench import SparsebenchError
from sparsebench.hookspecs import hookimpl
from sparsebench.interfaces import Dataset, DataSplits, ImageData
from sparsebench.options import Option
from sparsebench_builtins.datasets.common import split


class ImageFolderData(Dataset):
    name = "imagefolder"
    description = "your own images, one folder per class (pass --data-dir DIR)"
    options = (Option("heldout", float, 0.05, "fraction held out for the metric floor", interval="(0, 1)"),)

    def load(self, resolution: int, data_dir: str | None = None, heldout: float = 0.05, **options) -> DataSplits:
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        if not data_dir or not os.path.isdir(data_dir):
            raise SparsebenchError(
                f"imagefolder needs --data-dir DIR with one sub-folder of images per class; got {data_dir!r}"
            )
        tf = transforms.Compose(
            [transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.PILToTensor()]
        )
        try:
            ds = ImageFolder(data_dir, transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise SparsebenchError(f"imagefolder: {exc}") from None
        images = torch.stack([_image(ds, i)[:3].expand(3, -1, -1) for i in range(len(ds))])
        data = ImageData(images.to(torch.uint8), torch.tensor(ds.targets, dtype=torch.long), len(ds.classes))
        train, held = split(data, heldout)
        return DataSplits(train, held)


def _image(ds, index: int) -> torch.Tensor:
    """Image `index` of `ds`; a file that is not a readable image is named in a one-line error."""
    try:
        return ds[index][0]
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for unreadable or truncated files
        path = ds.samples[index][0]
        raise SparsebenchError(f"imagefolder: cannot read image {path}: {exc}; remove or replace it") from None


@hookimpl
def register_datasets(register):
    register(ImageFolderData())

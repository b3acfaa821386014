"""Sampling a generator and computing metrics with torch-fidelity.

Class-conditional generators are sampled through our own loop (uniform labels), not through
torch-fidelity's module wrapper, whose num_classes > 0 path fails on current NumPy. Samples are
converted to uint8 as the references do: x * 127.5 + 127.5, clamped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench import SparsebenchError
from sparsebench.api import DataSplits, ImageData
from sparsebench.metrics import digits_extractor

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class UInt8Images(torch.utils.data.Dataset):
    """A uint8 N x 3 x H x W tensor as a torch-fidelity input."""

    def __init__(self, images: torch.Tensor):
        self.images = images.cpu()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@torch.no_grad()
def sample(G: nn.Module, n: int, z_dim: int, num_classes: int, device, seed: int, batch: int = 250) -> torch.Tensor:
    """`n` uint8 samples of G in eval mode (labels uniform over the classes when conditional)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = G.training
    G.eval()
    out = []
    for i in range(0, n, batch):
        b = min(batch, n - i)
        z = torch.randn(b, z_dim, generator=gen).to(device)
        y = torch.randint(max(num_classes, 1), (b,), generator=gen).to(device)
        x = G(z, y)
        out.append(x.mul(127.5).add(127.5).clamp(0, 255).to(torch.uint8).cpu())
    G.train(was_training)
    return torch.cat(out)


def inception_weights(path: str | None) -> str | None:
    """The Inception weights to use: `path`, or torch.hub's cached copy, or None to download."""
    if path:
        if not os.path.isfile(path):
            raise SparsebenchError(f"--inception-weights {path}: no such file")
        return path
    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return str(hub) if hub.is_file() else None


class Evaluator:
    """Metrics of generated samples against one data set's train split, with one extractor.

    torch-fidelity is called once per sample set for all requested metrics; reference features
    are cached under `cache_dir`.
    """

    def __init__(self, data: DataSplits, dataset: str, extractor: str, cache_dir: Path, device: torch.device,
                 inception_path: str | None = None):
        self.data = data
        self.dataset = dataset
        self.extractor = extractor
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.extractor_accuracy: float | None = None
        self.weights_path: str | None = None
        if extractor == digits_extractor.NAME:
            if data.heldout is None or data.train.num_classes != 10:
                raise SparsebenchError(
                    f"the quick preset scores with the {extractor} extractor, which only fits the digits data; "
                    f"use --preset paper (Inception features) for {dataset}"
                )
            digits_extractor.register()
            path, acc = digits_extractor.ensure_weights(self.cache_dir, data.train, data.heldout)
            self.weights_path, self.extractor_accuracy = str(path), acc
        elif extractor == INCEPTION:
            self.weights_path = inception_weights(inception_path)
        else:
            raise SparsebenchError(f"unknown feature extractor {extractor!r}; known: {digits_extractor.NAME}, {INCEPTION}")

    def _reference_name(self) -> str:
        res = self.data.train.images.shape[-1]
        return f"sb-{self.dataset}-{res}-train-{len(self.data.train)}"

    def compute(self, images: torch.Tensor, flags: set[str], reference: ImageData | None = None) -> dict[str, float]:
        """torch-fidelity metrics (`flags` among isc, fid, kid, prc) of `images` vs the train split."""
        import torch_fidelity

        kwargs: dict[str, Any] = dict(
            input1=UInt8Images(images), cuda=self.device.type == "cuda", verbose=False,
            feature_extractor=self.extractor, feature_extractor_weights_path=self.weights_path,
            cache_root=str(self.cache_dir / "fidelity"), batch_size=100, save_cpu_ram=True,
            isc="isc" in flags, fid="fid" in flags, kid="kid" in flags, prc="prc" in flags,
            kid_subset_size=min(1000, len(images), len(self.data.train)),
        )
        if flags & {"fid", "kid", "prc"}:
            kwargs["input2"] = UInt8Images((reference or self.data.train).images)
            if reference is None:
                kwargs["input2_cache_name"] = self._reference_name()
        try:
            return torch_fidelity.calculate_metrics(**kwargs)
        except Exception as exc:  # noqa: BLE001 - torch-fidelity raises plain exceptions for a missing download
            if self.extractor == INCEPTION and self.weights_path is None:
                hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
                raise SparsebenchError(
                    f"Inception weights could not be downloaded ({type(exc).__name__}); put {INCEPTION_FILE} at "
                    f"{hub} or pass --inception-weights PATH"
                ) from None
            raise

    def floor(self, flags: set[str]) -> dict[str, float]:
        """The metrics between the held-out and the train split of real data (cached)."""
        if self.data.heldout is None:
            return {}
        key = f"{self._reference_name()}-{self.extractor}-floor.json"
        path = self.cache_dir / "floors" / key
        if path.exists():
            cached = json.loads(path.read_text())
            if flags <= set(cached["flags"]):
                return cached["values"]
        values = self.compute(self.data.heldout.images, flags & {"fid", "kid", "prc", "isc"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"flags": sorted(flags), "values": values}))
        return values


class SampleSet:
    """One generator's samples, handed to every metric plugin of a run.

    Built-in torch-fidelity metrics share one `calculate_metrics` call through `fidelity()`.
    """

    def __init__(self, evaluator: Evaluator, images: torch.Tensor, flags: set[str]):
        self.evaluator = evaluator
        self.images = images
        self.flags = set(flags)
        self._fidelity: dict[str, float] | None = None

    def fidelity(self) -> dict[str, float]:
        if self._fidelity is None:
            self._fidelity = self.evaluator.compute(self.images, self.flags)
        return self._fidelity

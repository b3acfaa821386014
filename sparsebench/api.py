"""Base classes for plugin objects: what a method, architecture, data set or metric provides.

Plugins subclass these and hand instances to `register` in their hook implementations. The core
only ever talks to plugins through these interfaces, so it knows no method or network by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sparsebench.options import Option

if TYPE_CHECKING:  # pragma: no cover
    from sparsebench.config import TrainSpec
    from sparsebench.train.context import RunContext


class PluginObject:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()


class Method(PluginObject):
    """A way of obtaining a (sparse) generator.

    `fixed` pins grid axes the method defines for itself (e.g. PF trains a dense D: {"sd": 0.0});
    the grid records those values and does not repeat the method along them.
    `width` scales the channels of G and D (small-dense uses 0.5).
    """

    fixed: ClassVar[dict[str, float]] = {}
    width: ClassVar[float] = 1.0
    requires: ClassVar[tuple[str, ...]] = ()  # methods whose finished run this one builds on

    def run(self, ctx: "RunContext") -> None:
        """Train, leaving the final models in `ctx` (see `RunContext.finish`)."""
        raise NotImplementedError

    def flop_phases(self, ctx: "FlopPlan") -> list["Phase"]:
        """The training phases with their densities, for FLOP accounting without training."""
        raise NotImplementedError


@dataclass(frozen=True)
class Phase:
    """A stretch of training at fixed per-layer densities (None means dense)."""

    steps: int
    g_density: dict[str, float] | None
    d_density: dict[str, float] | None
    label: str = "train"


@dataclass
class FlopPlan:
    """What `Method.flop_phases` may use: the run's config and the models' scope shapes."""

    config: Any
    g_shapes: dict[str, tuple[int, ...]]
    d_shapes: dict[str, tuple[int, ...]]


class Architecture(PluginObject):
    """A generator/discriminator pair with its reference training settings per preset."""

    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, "TrainSpec"]] = {}

    def build(self, spec: "TrainSpec", num_classes: int, width: float = 1.0, **options: Any):
        """Return (G, D), initialised as the reference does. Seed torch before calling."""
        raise NotImplementedError


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


class Dataset(PluginObject):
    """A data set that loads at a given resolution."""

    def load(self, resolution: int, data_dir: str | None = None, **options: Any) -> DataSplits:
        raise NotImplementedError


class Metric(PluginObject):
    """An evaluation metric over generated samples; returns named floats."""

    def compute(self, ev: Any, **options: Any) -> dict[str, float]:
        raise NotImplementedError

"""The plugin contract: what a method, architecture, data set, metric or feature extractor provides, and
what a method trains with (`MethodContext`, `GANState`, `Callbacks`).

Plugins subclass these and hand instances to `register` in their pluggy hook implementations. The core
only ever talks to plugins through these interfaces, so it knows no method or network by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from sparsebench.data import DataSplits as DataSplits  # re-exported: part of the plugin contract
from sparsebench.data import ImageData as ImageData
from sparsebench.options import Option

__all__ = [
    "PluginObject",
    "VersionedPlugin",
    "RunArtifacts",
    "MethodContext",
    "Method",
    "Phase",
    "DensePass",
    "FlopPlan",
    "Architecture",
    "Dataset",
    "Metric",
    "ExtractorWeights",
    "FeatureExtractor",
    "GANState",
    "GStep",
    "Callbacks",
    "CallbackList",
    "DataSplits",
    "ImageData",
    "Option",
]

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from sparsebench.config import RunConfig, TrainSpec
    from sparsebench.sparse.masks import MaskState
    from sparsebench.sparse.sema import SparseEMA


class PluginObject:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()


class VersionedPlugin(PluginObject):
    """A plugin object whose code version is part of every run id it takes part in.

    None means the version of the distribution that provides the plugin; set a string and bump it
    when the object's behaviour changes, so a fixed plugin does not reuse the results of the old one.
    """

    version: ClassVar[str | None] = None


@dataclass
class RunArtifacts:
    """A finished run a method depends on: its id, config, results and saved weights."""

    run_id: str
    config: dict
    results: dict
    init_path: Path
    final_path: Path

    def load(self, which: str = "final") -> dict:
        """The saved state dicts ("init": G and D as first built; "final": the trained models and masks)."""
        path = self.final_path if which == "final" else self.init_path
        return torch.load(path, map_location="cpu", weights_only=True)


@runtime_checkable
class MethodContext(Protocol):
    """What `Method.run` is given: the run's settings and the only ways a method builds, trains and
    finishes, so that every method is seeded, counted and stored alike."""

    @property
    def config(self) -> RunConfig:
        """The run's configuration (method, arch, sparsities `sg`/`sd`, seed, scope, distribution...)."""

    @property
    def options(self) -> dict[str, Any]:
        """The method's validated options, by name."""

    @property
    def spec(self) -> TrainSpec:
        """The preset's training settings (steps, batch sizes, learning rates, explore interval...)."""

    @property
    def num_classes(self) -> int:
        """Classes of the training data (conditional architectures)."""

    def rng(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from the run's seed and `name`: one independent stream per name."""

    def batch(self, n: int, stream: str = "batch") -> tuple[torch.Tensor, torch.Tensor]:
        """`n` real training images in [-1, 1] and their labels, on the run's device, drawn without replacement
        from the named stream `stream` (the same batch for the same name; training's own minibatches are not
        touched), for methods that score weights on data (SNIP-style)."""

    def build_models(self) -> tuple[nn.Module, nn.Module]:
        """G and D, initialised deterministically from the run's seed."""

    def masks(
        self, model: nn.Module, sparsity: float, distribution: str | None = None, stream: str = "masks"
    ) -> MaskState | None:
        """Random masks of `sparsity` over the run's scope (None when dense), drawn from `rng(stream)`.
        Side effect: zeroes `model`'s weights outside the masks, in place."""

    def state(self, G: nn.Module, D: nn.Module, g_masks: MaskState | None, d_masks: MaskState | None) -> GANState:
        """Fresh optimizers and the (sparse) EMA of G for a training phase."""

    def train(
        self, state: GANState, steps: int | None = None, hooks: Callbacks | None = None, label: str = "train"
    ) -> None:
        """One training phase, with FLOP accounting, statistics, checkpoints and resume; `hooks`: the method's
        `Callbacks` for this phase."""

    def require(self, method: str, **changes: Any) -> RunArtifacts:
        """The finished run of `method` this run builds on; its training FLOPs count towards this run's."""

    def finish(self, state: GANState, **info: Any) -> None:
        """Declare `state` the result; `info` goes into the stored results."""

    def count(self, work: DensePass) -> None:
        """Add work done outside `train` (a dense scoring pass) to the run's training FLOPs, once per call;
        declare the same work in `Method.flop_phases`."""


class Method(VersionedPlugin):
    """A way of obtaining a (sparse) generator.

    `fixed` pins grid axes the method defines for itself (e.g. PF trains a dense D: {"sd": 0.0});
    the grid records those values and does not repeat the method along them.
    `width` scales the channels of G and D (small-dense uses 0.5).
    The remaining attributes tell the command line and the report how to present the method, so a
    plugin's method is shown exactly as the built-ins are; the core knows no method by name.
    """

    fixed: ClassVar[dict[str, float]] = {}
    width: ClassVar[float] = 1.0
    requires: ClassVar[tuple[str, ...]] = ()  # methods whose finished run this one builds on
    title: ClassVar[str] = ""  # its name in tables and figures ("": the method's name)
    # an option setting ("name=value") -> the name of runs with it, so that they never read as the method's own
    variant_titles: ClassVar[dict[str, str]] = {}
    scope: ClassVar[str] = ""  # the sparse scope its reference uses ("": the run's --scope, conv by default)
    group: ClassVar[str] = ""  # a `--methods` shorthand it shares with sibling methods, e.g. "pf"
    order: ClassVar[float] = 100.0  # table rows sort by it, then by name (the built-ins use 10 to 70)
    reference: ClassVar[str] = ""  # the method Table 1 gives its FID difference to ("": none)
    result_columns: ClassVar[tuple[str, ...]] = ()  # result keys it stores beyond the core's: results columns
    length_option: ClassVar[str] = ""  # its option that multiplies the training length: runs above 1x fill Table 3
    # Its masks never change while a phase trains (no regrowth): Adam is elementwise and masked weights are
    # zeroed after every step, so the optimizer-state policy cannot change its results (dense kernels), and a
    # method compared with it at another --opt-state is compared with its runs at the default policy.
    fixed_masks: ClassVar[bool] = False

    def run(self, ctx: MethodContext) -> None:
        """Train, leaving the final models in `ctx` (see `MethodContext.finish`)."""
        raise NotImplementedError

    def grid_point(self, sg: float, sd: float, options: dict[str, Any]) -> tuple[float, float]:
        """The (s_G, s_D) a run of this method records at grid point (sg, sd), under its options: the axes in
        `fixed` pinned (a method whose D starts at G's sparsity returns (sg, sg))."""
        return self.fixed.get("sg", sg), self.fixed.get("sd", sd)

    def flop_phases(self, plan: FlopPlan) -> list[Phase | DensePass]:
        """The FLOP plan of a run with `plan.config` (its options included), for `sparsebench flops` and
        `describe` (no training): its training phases with their densities and the steps whose backward
        computes dense weight gradients, and any one-off `DensePass` (in the order they run). The default:
        one phase of the preset's steps at the run's initial per-layer densities (a 'global' distribution
        counted as uniform, marked an `estimate`: its layer densities depend on the weights), no extra work.
        Override it when an option changes densities or lengths, or the method does work the loop does not
        count (declare the same work in `run` with `ctx.count`); mark a phase whose densities depend on data or
        trained weights `estimate=True`. A run's own FLOPs always follow the densities it really trains at."""
        from sparsebench.sparse.distributions import layer_densities

        c = plan.config
        kind = "uniform" if c.distribution == "global" else c.distribution
        g = layer_densities(plan.g_shapes, 1.0 - c.sg, kind) if c.sg > 0 else None
        d = layer_densities(plan.d_shapes, 1.0 - c.sd, kind) if c.sd > 0 else None
        return [Phase(c.train.steps, g, d, estimate=kind != c.distribution and (g, d) != (None, None))]


@dataclass(frozen=True)
class Phase:
    """A stretch of training at fixed per-layer densities (None means dense).

    `g_dense_grad_steps` of its steps compute G's weight gradients densely in G's backward (a score reads
    them, e.g. gradient regrowth every delta_t steps); `d_dense_grad_steps` compute D's in the last D
    backward of the G step. Each costs the dense weight gradient's extra over the sparse one: per image,
    (1 - density) x the layer's forward FLOPs (fvcore counts a backward as 2 x forward, half of it the
    weight gradient). The training loop counts the same from `Callbacks.dense_weight_grads`.

    `estimate`: the densities are a prediction, not the layout the run will train at, which depends on the data
    or on trained weights (a global magnitude or saliency cut, a global ranking that moves density between
    layers, a density steered during training); `sparsebench flops` and `describe` mark such a plan as an
    estimate. A run's stored FLOPs follow the densities it really trains at either way.
    """

    steps: int
    g_density: dict[str, float] | None
    d_density: dict[str, float] | None
    label: str = "train"
    g_dense_grad_steps: int = 0
    d_dense_grad_steps: int = 0
    estimate: bool = False


@dataclass(frozen=True)
class DensePass:
    """One-off work outside the training steps: `g_images` images through G and `d_images` through D, all
    dense, forward and backward (e.g. SNIP's saliency: G on one batch, D on the fakes for G's loss and on
    real and fake for D's). Declare it in `Method.flop_phases` and count it in `run` with `ctx.count`."""

    g_images: int
    d_images: int
    label: str = "dense pass"


@dataclass
class FlopPlan:
    """What `Method.flop_phases` may use: the run's config, the models' scope shapes and the method's options
    resolved as its run gets them (`MethodContext.options`: the declared defaults, overridden by the run's)."""

    config: Any
    g_shapes: dict[str, tuple[int, ...]]
    d_shapes: dict[str, tuple[int, ...]]
    options: dict[str, Any] = field(default_factory=dict)


class Architecture(VersionedPlugin):
    """A generator/discriminator pair with its reference training settings per preset."""

    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, TrainSpec]] = {}

    def build(self, spec: TrainSpec, num_classes: int, width: float = 1.0, **options: Any):
        """Return (G, D), initialised as the reference does. Seed torch before calling. `width` is a multiplier
        (1.0: the preset's models) of `spec.width`, the reference code's integer channel base `ch`."""
        raise NotImplementedError


class Dataset(PluginObject):
    """A data set that loads at a given resolution.

    `extractor` names a registered `FeatureExtractor` that scores this data in place of the preset's
    ("": the preset's, e.g. Inception with the paper preset).
    """

    extractor: ClassVar[str] = ""

    def load(self, resolution: int, data_dir: str | None = None, **options: Any) -> DataSplits:
        raise NotImplementedError


class Metric(PluginObject):
    """An evaluation metric over generated samples; returns named floats."""

    def compute(self, ev: Any, **options: Any) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class ExtractorWeights:
    """What `FeatureExtractor.prepare` readied for one data set."""

    path: Any = None  # what torch-fidelity's `feature_extractor_weights_path` gets (None: see `FeatureExtractor.load`)
    accuracy: float | None = None  # held-out accuracy of an extractor trained on the data, stored with every result
    check_now: bool = True  # build the extractor at once, so that unusable weights fail before any training


class FeatureExtractor(PluginObject):
    """The feature space in which the torch-fidelity metrics (FID, IS, KID, PRC) compare samples with data.

    A data set whose images Inception features do not fit can bring its own (offline) extractor and
    name it in `Dataset.extractor`. `fidelity_class` is registered with torch-fidelity under `name`;
    `prepare` readies the weights for one data set before any training (trains and caches a
    classifier, or checks a local file); `load` hands torch-fidelity the weights when it is built.
    """

    needs_heldout: ClassVar[bool] = False  # fitted on the train split and validated on the held-out one

    def fidelity_class(self) -> type | None:
        """The torch-fidelity `FeatureExtractorBase` subclass to register under `name` (None: torch-fidelity's own)."""
        return None

    def prepare(
        self, data: DataSplits, dataset: str, data_key: str, cache_dir: Path, weights_file: str | None
    ) -> ExtractorWeights:
        """Ready the weights for `data` (content hash `data_key`), offline; `weights_file` is the user's local file."""
        return ExtractorWeights(weights_file, check_now=weights_file is not None)

    def load(self, prepared: ExtractorWeights, weights_file: str | None) -> Any:
        """What torch-fidelity's `feature_extractor_weights_path` gets when the extractor is built."""
        return prepared.path

    def unusable(self, weights_file: str | None, error: Exception) -> str | None:
        """The one-line message for weights torch-fidelity could not load (None: let `error` through)."""
        return None


@dataclass
class GANState:
    """Everything that evolves during training of one G/D pair."""

    G: nn.Module
    D: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    g_masks: MaskState | None = None
    d_masks: MaskState | None = None
    ema: SparseEMA | None = None
    step: int = 0
    flops: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # wall time of each G step of this phase (checkpointed)
    # measured at this G step (see sparsebench.balance): a 0-dim float64 tensor on the device, left unread (float()
    # reads it, and waits for the device); NaN (a float) at steps nothing measured it
    balance_ratio: float | torch.Tensor = math.nan
    curve: list[tuple[int, float]] = field(default_factory=list)  # (G step, FID) of this phase's evaluation curve
    # (G step, values) of every statistic this phase logged, kept in its checkpoints: a resumed run stores
    # them again (rows a killed process had not stored yet are not lost) and rebuilds its balance ratios
    logged: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.G


@dataclass
class GStep:
    """What one G step trained on, for callbacks that measure around G's update: `x`, `y` D's last real
    minibatch, `z`, `yf` the noise and labels of G's last minibatch, `d_gen` D's outputs on those fakes (G's
    loss read them, before G's update), `logged` whether the loop logs this step.

    `measure(x, y, z=None)`: D's outputs (fp32, no gradients) on `x`, or on G(z, y) when `z` is given, computed
    as `d_gen` was: through the same forwards (compiled or not) under the same precision, so that a
    measurement compared with `d_gen` compares like with like. None: G's and D's modules in fp32."""

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    yf: torch.Tensor
    d_gen: torch.Tensor
    logged: bool
    measure: Callable[..., torch.Tensor] | None = None


class Callbacks:
    """A method's extension points in the training loop (subclass and override), for one training phase.

    G steps are numbered from 1; a phase of N steps ends with `step=N`. The order inside one G step: n_critic
    x [D backward -> `after_d_backward` -> D's update], G backward -> `after_g_backward` -> `before_g_update`
    -> G's update -> `after_g_update` -> (S)EMA -> `after_g_step`.
    """

    def after_d_backward(self, state: GANState, step: int) -> None:
        """D's dense gradients of this D step are in `.grad` (before masking); called n_critic times per G step."""

    def after_g_backward(self, state: GANState, step: int) -> None:
        """G's dense gradients of this minibatch are in `.grad` (before masking)."""

    def before_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        """G's gradients are final, its weights not yet updated (a measurement of G_pre)."""

    def after_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        """G's weights were just updated and masked, before the (S)EMA and `after_g_step` (G_post)."""

    def after_g_step(self, state: GANState, step: int) -> bool:
        """After G's optimizer step and the (S)EMA update. Return True if any mask changed."""
        return False

    def dense_weight_grads(self, step: int) -> str:
        """The networks ("g", "d", "gd"; "" none) whose weight gradients G step `step` computes densely because
        a score reads them (gradient regrowth): their extra cost is added to the step's training FLOPs, as
        `Phase.g_dense_grad_steps` / `d_dense_grad_steps` declare it for `sparsebench flops`."""
        return ""

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        """Extra statistics to log at this step."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint must keep of the callbacks (counters, random generators)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CallbackList(Callbacks):
    """Several callbacks as one, called in order (a probe before the method's own)."""

    def __init__(self, callbacks: list[Callbacks]):
        self.callbacks = callbacks

    def after_d_backward(self, state: GANState, step: int) -> None:
        for c in self.callbacks:
            c.after_d_backward(state, step)

    def after_g_backward(self, state: GANState, step: int) -> None:
        for c in self.callbacks:
            c.after_g_backward(state, step)

    def before_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        for c in self.callbacks:
            c.before_g_update(state, step, batch)

    def after_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        for c in self.callbacks:
            c.after_g_update(state, step, batch)

    def after_g_step(self, state: GANState, step: int) -> bool:
        changed = [c.after_g_step(state, step) for c in self.callbacks]  # every one, whatever the others return
        return any(changed)

    def dense_weight_grads(self, step: int) -> str:
        asked = "".join(c.dense_weight_grads(step) for c in self.callbacks)
        return "".join(net for net in "gd" if net in asked)

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.callbacks:
            out.update(c.stats(state, step))
        return out

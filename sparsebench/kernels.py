"""Sparse CPU kernels (SparseProp) as an execution backend for masked layers.

Sparse training keeps every sparse layer's weight as a dense tensor times a mask; the `dense`
backend (the default) computes with that masked dense tensor. The `sparseprop` backend computes a
layer with SparseProp's sparse convolution / linear kernels instead, where the layer is sparse
enough and a short measurement in place shows the kernels faster (SparseProp's own rule).

The dense weight stays the layer's parameter. A swapped layer gathers its active values from it
at every forward (through the spectral-norm parametrization where there is one, so sigma is still
that of the masked original), and the kernel's value gradient lands in the dense `.grad` at the
active positions. Masks, Adam, SEMA, spectral norm, checkpoints and state dicts therefore keep
their meaning; nothing has to be synced back. What changes:

- gradients at inactive positions are zero, as if masked. That is exact where gradients are
  masked anyway (optimizer-state policies `mean` and `zero`); forwards that take gradients on a
  step whose dense gradients are read (a regrowth step; every step under the `dense` policy) run
  densely (KernelHooks), while forwards without gradients (G's samples for D) always may use the
  kernels;
- the kernels' index structure follows the mask, not the non-zero pattern (a regrown weight is
  active at value zero), and must be rebuilt after each topology update (`backend.rebuild()`).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench import SparsebenchError
from sparsebench.config import KERNELS as BACKENDS
from sparsebench.interfaces import Callbacks, GANState, GStep
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.opt_state import masks_gradients
from sparsebench.sparse.scope import weight_tensor

DEFAULT_THRESHOLD = 0.8  # minimum sparsity of a layer worth trying (SparseProp's)
_EXACT_FLOAT_INDEX = 2**24  # positions are carried through the kernels' format as float32 values
_ATTR = "_sparsebench_kernel"
log = logging.getLogger("sparsebench.run")


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise SparsebenchError(f"unknown kernels {name!r}; known: {', '.join(BACKENDS)}")
    return name


def require_sparseprop():
    """SparseProp's modules, or one clear error naming the extra that installs them."""
    try:
        from sparseprop.modules import functions, utils
    except Exception as exc:  # noqa: BLE001 - ImportError, or a compiled extension that fails to load
        raise SparsebenchError(
            f"--kernels sparseprop needs SparseProp, which is not usable here ({type(exc).__name__}: {exc}); "
            "install it with: pip install pybind11 wheel && pip install --no-build-isolation 'sparsebench[kernels]'"
        ) from None
    return functions, utils


def available() -> bool:
    try:
        require_sparseprop()
    except SparsebenchError:
        return False
    return True


@dataclass
class LayerChoice:
    """What the backend decided for one sparse layer, and why."""

    name: str
    kind: str  # "conv" or "linear"
    shape: tuple
    input_shape: tuple | None
    density: float
    dense_ms: float | None = None  # forward + backward at the measured input shape
    sparse_ms: float | None = None  # the faster of SparseProp's variants
    variant: str = ""  # "over_on" / "over_b" (conv), "csr" (linear); "" = dense
    dense_fwd_ms: float | None = None  # forward without gradients (sampling, D's steps)
    sparse_fwd_ms: float | None = None
    infer_variant: str = ""
    reason: str = ""

    @property
    def chosen(self) -> bool:
        return bool(self.variant or self.infer_variant)


class _Kernel:
    """Index structure of one swapped layer; `positions[i]` is the flat dense index of value i."""

    def __init__(self, kind: str, module: nn.Module, variant: str, enabled: list[bool], infer_variant: str = ""):
        self.kind = kind
        self.variant = variant  # for forwards that take gradients ("": dense)
        self.infer_variant = infer_variant  # for forwards without
        self.enabled = enabled  # shared by every layer of a backend: False runs the dense forward
        self.positions = torch.empty(0, dtype=torch.long)
        self.idx: tuple = ()
        if kind == "conv":
            self.out_channels, self.k = module.out_channels, module.kernel_size[0]
            self.padding, self.stride = module.padding[0], module.stride[0]
        else:
            self.out_features = module.out_features

    def build(self, mask: torch.Tensor) -> None:
        _, utils = require_sparseprop()
        flat = mask.detach().reshape(-1).to(torch.float32)
        labelled = (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float32)).view(mask.shape)
        if self.kind == "conv":
            values, self.idx = utils.to_sparse_format_conv2d(labelled.contiguous())
        else:
            values, self.idx = utils.to_csr_2d(labelled.contiguous())
        self.positions = values.round().long() - 1

    def variant_for(self, batch: int, grad: bool = True) -> str | None:
        """The variant to run a batch of `batch` with (None: dense, by choice or because none is correct).

        SparseProp's batch-vectorized conv is only correct for batches in multiples of 8, and its
        output-vectorized conv only at stride 1 (its stride-2 backward is wrong); both checked in
        tests/test_kernels.py.
        """
        variant = self.variant if grad else self.infer_variant
        if not variant:
            return None
        if self.kind == "linear":
            return variant
        if variant == "over_b" and batch % 8 == 0:
            return "over_b"
        return "over_on" if self.stride == 1 else None

    def run(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: str | None = None
    ) -> torch.Tensor:
        functions, _ = require_sparseprop()
        variant = variant or self.variant
        values = weight.reshape(-1)[self.positions]
        x = x.contiguous()
        if self.kind == "linear":
            return functions.SparseLinearFunction.apply(x, values, self.idx, bias, self.out_features)
        over_on = variant == "over_on"
        out = functions.SparseConvFunction.apply(
            x, values, self.idx, bias, self.out_channels, self.k, self.padding, self.stride, over_on, over_on
        )
        return _ContiguousGrad.apply(out)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: SparseProp's output-vectorized conv
    backward reads its gradient's memory as contiguous (a transposed one, e.g. from a linear layer
    after a flatten, gives wrong input gradients)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def conv_variants(stride: int, batch: int) -> tuple[str, ...]:
    """SparseProp's conv variants that are correct at this stride and batch size."""
    return tuple(v for v, ok in (("over_on", stride == 1), ("over_b", batch % 8 == 0)) if ok)


def _sparse_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    kernel: _Kernel = getattr(self, _ATTR)
    grad = torch.is_grad_enabled()
    variant = kernel.variant_for(x.shape[0], grad) if kernel.enabled[0] or not grad else None
    if variant is None or x.dtype != torch.float32 or x.device.type != "cpu":
        return type(self).forward(self, x)
    return kernel.run(x, self.weight, self.bias, variant)  # `self.weight` runs the spectral norm, if any


def unsupported(module: nn.Module) -> str:
    """Why SparseProp's kernels cannot compute `module` ('' when they can)."""
    w = weight_tensor(module)
    if w is None or w.dtype != torch.float32 or w.device.type != "cpu":
        return "kernels need a float32 weight on the CPU"
    if w.numel() >= _EXACT_FLOAT_INDEX:
        return "layer too large for the index format"
    if isinstance(module, nn.Linear):
        return ""
    if not isinstance(module, nn.Conv2d):
        return "neither a Conv2d nor a Linear"
    if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros":
        return "grouped, dilated or non-zero padded conv"
    if module.kernel_size[0] != module.kernel_size[1] or module.kernel_size[0] > 255:
        return "non-square kernel"
    if module.stride[0] != module.stride[1] or module.stride[0] not in (1, 2):
        return "stride other than 1 or 2"
    if not isinstance(module.padding, tuple) or module.padding[0] != module.padding[1]:
        return "asymmetric padding"
    if module.in_channels >= 2**15:
        return "too many input channels"
    return ""


def _time_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _measure(
    module: nn.Module, kind: str, mask: torch.Tensor, input_shape: tuple, repeats: int, enabled: list[bool]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median times (ms) of the dense layer and of each kernel variant, interleaved: forward + backward,
    and forward without gradients.

    Works on detached copies of the weight and bias, so no parameter, gradient or spectral-norm
    vector of the model changes.
    """
    weight = (weight_tensor(module).detach() * mask).requires_grad_()
    bias = module.bias.detach().clone().requires_grad_() if module.bias is not None else None
    x = torch.randn(input_shape, requires_grad=True)
    kernels = {}
    for variant in conv_variants(module.stride[0], input_shape[0]) if kind == "conv" else ("csr",):
        kernels[variant] = _Kernel(kind, module, variant, enabled)
        kernels[variant].build(mask)

    def dense() -> torch.Tensor:
        return module._conv_forward(x, weight, bias) if kind == "conv" else nn.functional.linear(x, weight, bias)

    def train(forward):
        return lambda: forward().sum().backward()

    def infer(forward):
        return lambda: torch.no_grad()(forward)()

    forwards = {"dense": dense, **{v: (lambda k=k: k.run(x, weight, bias)) for v, k in kernels.items()}}
    runs = {
        (mode, name): wrap(fn) for mode, wrap in (("train", train), ("infer", infer)) for name, fn in forwards.items()
    }
    for fn in runs.values():  # warm-up (first-touch allocations)
        fn()
    samples: dict[tuple, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            samples[key].append(_time_ms(fn, 1))
    medians = {key: statistics.median(ts) for key, ts in samples.items()}
    return (
        {n: t for (m, n), t in medians.items() if m == "train"},
        {n: t for (m, n), t in medians.items() if m == "infer"},
    )


def _input_shapes(model: nn.Module, names: list[str], example: tuple) -> dict[str, tuple]:
    """The input shape each named layer sees in one forward of `model` on `example`."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    handles = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    was_training = model.training
    try:
        model.eval()  # no BN statistic or spectral-norm vector moves
        with torch.no_grad():
            model(*example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


class KernelBackend:
    """SparseProp kernels swapped into the layers of `model` that qualify; `restore()` undoes it."""

    def __init__(
        self,
        model: nn.Module,
        masks: MaskState,
        example: tuple,
        threshold: float = DEFAULT_THRESHOLD,
        repeats: int = 5,
        always: bool = False,
    ):
        """Decide per layer of `masks`: at least `threshold` sparse, supported, and (unless `always`)
        measured faster than the dense layer at the input shape `example` produces."""
        require_sparseprop()
        self.model = model
        self.masks = masks
        self._enabled = [True]
        self.layers: list[LayerChoice] = []
        self._kernels: dict[str, _Kernel] = {}
        modules = dict(model.named_modules())
        names = list(masks.params)
        shapes = _input_shapes(model, names, example)
        for name in names:
            module = modules[name]
            kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            density = float(masks.masks[name].mean())
            choice = LayerChoice(name, kind, tuple(weight_tensor(module).shape), shapes.get(name), density)
            self.layers.append(choice)
            reason = unsupported(module)
            if reason:
                choice.reason = reason
            elif choice.input_shape is None:
                choice.reason = "not used by the forward pass"
            elif kind == "linear" and len(choice.input_shape) != 2:
                choice.reason = "linear input is not a matrix"
            elif kind == "conv" and not conv_variants(module.stride[0], choice.input_shape[0]):
                choice.reason = "stride 2 needs a batch in multiples of 8"
            elif 1.0 - density < threshold:
                choice.reason = f"sparsity {1.0 - density:.3f} below {threshold}"
            if choice.reason:
                continue
            train, infer = _measure(module, kind, masks.masks[name], choice.input_shape, repeats, self._enabled)
            choice.dense_ms, choice.dense_fwd_ms = train.pop("dense"), infer.pop("dense")
            variant, choice.sparse_ms = min(train.items(), key=lambda item: item[1])
            infer_variant, choice.sparse_fwd_ms = min(infer.items(), key=lambda item: item[1])
            choice.variant = variant if always or choice.sparse_ms < choice.dense_ms else ""
            choice.infer_variant = infer_variant if always or choice.sparse_fwd_ms < choice.dense_fwd_ms else ""
            choice.reason = "forced" if always else "faster" if choice.chosen else "kernels slower"
            if choice.chosen:
                self._swap(name, module, choice)

    def _swap(self, name: str, module: nn.Module, choice: LayerChoice) -> None:
        kernel = _Kernel(choice.kind, module, choice.variant, self._enabled, choice.infer_variant)
        kernel.build(self.masks.masks[name])
        setattr(module, _ATTR, kernel)
        module.forward = types.MethodType(_sparse_forward, module)
        self._kernels[name] = kernel

    @property
    def swapped(self) -> list[str]:
        return list(self._kernels)

    def rebuild(self) -> None:
        """Follow the masks after a topology update (the kernels' structure is the mask's)."""
        for name, kernel in self._kernels.items():
            kernel.build(self.masks.masks[name])

    def set_dense_grads(self, dense: bool) -> None:
        """Whether forwards with gradients run densely (steps that need dense gradients)."""
        self._enabled[0] = not dense

    @contextlib.contextmanager
    def dense(self) -> Iterator[None]:
        """Run every swapped layer's gradient-taking forwards densely inside."""
        previous = self._enabled[0]
        self._enabled[0] = False
        try:
            yield
        finally:
            self._enabled[0] = previous

    def restore(self) -> None:
        """Give every layer its dense forward back."""
        modules = dict(self.model.named_modules())
        for name in self._kernels:
            module = modules[name]
            del module.forward
            delattr(module, _ATTR)
        self._kernels = {}

    def table(self) -> str:
        """One line per sparse layer: shape, density, dense and kernel ms (forward + backward, and forward
        without gradients), and what runs."""

        def ms(value: float | None) -> str:
            return f"{value:9.2f}" if value is not None else f"{'-':>9}"

        def use(variant: str) -> str:
            return variant or "dense"

        header = (
            f"{'layer':<24} {'shape':<14} {'density':>7} {'dense ms':>9} {'sparse ms':>9} {'train':<8} "
            f"{'fwd dense':>9} {'fwd sparse':>10} {'no-grad':<8} chosen"
        )
        rows = [header]
        for c in self.layers:
            shape = "x".join(str(s) for s in c.shape)
            decision = "yes" if c.chosen else f"no ({c.reason})"
            train = use(c.variant) if c.dense_ms is not None else "-"
            infer = use(c.infer_variant) if c.dense_ms is not None else "-"
            rows.append(
                f"{c.name:<24} {shape:<14} {c.density:7.3f} {ms(c.dense_ms)} {ms(c.sparse_ms)} {train:<8} "
                f"{ms(c.dense_fwd_ms)} {ms(c.sparse_fwd_ms):>10} {infer:<8} {decision}"
            )
        return "\n".join(rows)


def needs_dense_grads(hooks: Callbacks, step: int) -> bool:
    """Whether `hooks` read dense gradients (G's, or D's) at G step `step` (a regrowth step).

    Hooks say so through `needs_dense_grads(step)`; hooks that read gradients without saying when
    are taken to read them at every step.
    """
    ask = getattr(hooks, "needs_dense_grads", None)
    if ask is not None:
        return bool(ask(step))
    return any(
        getattr(type(hooks), name) is not getattr(Callbacks, name) for name in ("after_g_backward", "after_d_backward")
    )


class KernelHooks(Callbacks):
    """A method's hooks, plus what the backends need: dense gradient-taking forwards on the steps that
    read dense gradients, and a rebuild after every topology update."""

    def __init__(self, inner: Callbacks, g: KernelBackend | None, d: KernelBackend | None):
        self.inner, self.g, self.d = inner, g, d

    def prepare(self, step: int) -> None:
        """Set up the backends for G step `step` (call before it starts)."""
        for backend in (self.g, self.d):
            if backend is not None:
                dense = not masks_gradients(backend.masks.opt_state)  # the policy keeps dense gradients
                # a step whose gradients a method reads (G's, or D's for updates of D) runs densely
                backend.set_dense_grads(dense or needs_dense_grads(self.inner, step))

    def after_d_backward(self, state: GANState, step: int) -> None:
        self.inner.after_d_backward(state, step)

    def after_g_backward(self, state: GANState, step: int) -> None:
        self.inner.after_g_backward(state, step)

    def before_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        self.inner.before_g_update(state, step, batch)

    def after_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        self.inner.after_g_update(state, step, batch)

    def after_g_step(self, state: GANState, step: int) -> bool:
        changed = self.inner.after_g_step(state, step)
        if changed:
            for backend in (self.g, self.d):
                if backend is not None:
                    backend.rebuild()
        self.prepare(step + 1)
        return changed

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        return self.inner.stats(state, step)

    def dense_weight_grads(self, step: int) -> str:
        return self.inner.dense_weight_grads(step)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class Attached:
    """The backends of one training phase (none for the `dense` backend) and the hooks to train with."""

    def __init__(
        self, hooks: Callbacks, g: KernelBackend | None = None, d: KernelBackend | None = None, next_step: int = 1
    ):
        self.g, self.d = g, d
        self.hooks = hooks if g is None and d is None else KernelHooks(hooks, g, d)
        if isinstance(self.hooks, KernelHooks):
            self.hooks.prepare(next_step)

    def detach(self) -> None:
        for backend in (self.g, self.d):
            if backend is not None:
                backend.restore()

    def layers(self) -> list[LayerChoice]:
        return [c for b in (self.g, self.d) if b is not None for c in b.layers]


def describe(net: str, layers: list[LayerChoice]) -> str:
    """The swapped layers of `net`, as stored with a run: `G.name:train/sampling` per layer, where each
    side is SparseProp's variant or `dense`; empty when no layer was swapped."""
    return ",".join(f"{net}.{c.name}:{c.variant or 'dense'}/{c.infer_variant or 'dense'}" for c in layers if c.chosen)


def for_sampling(
    backend: str, model: nn.Module, masks: MaskState | None, spec, batch: int, **choice
) -> KernelBackend | None:
    """Kernels swapped into the generator that is evaluated (`model`, e.g. the SEMA copy, whose zeros are
    `masks`' zeros), measured at the sampling batch (`choice`: KernelBackend's threshold / always); None
    for the `dense` backend or a dense G.
    The caller restores the model when sampling is done."""
    if check_backend(backend) == "dense" or masks is None:
        return None
    require_sparseprop()
    with torch.random.fork_rng(devices=[]):
        example = (torch.randn(batch, spec.z_dim), torch.zeros(batch, dtype=torch.long))
        chosen = KernelBackend(model, masks, example, **choice)
    log.info("sparse kernels in the evaluated G:\n%s", chosen.table())
    return chosen


def attach(backend: str, state: GANState, hooks: Callbacks, spec) -> Attached:
    """Swap the kernels into `state`'s sparse G and D for a training phase (nothing for `dense`).

    The measurement runs on random inputs of the training shapes, outside the run's random streams.
    """
    if check_backend(backend) == "dense":
        return Attached(hooks)
    require_sparseprop()
    with torch.random.fork_rng(devices=[]):
        y = torch.zeros(spec.g_batch_size, dtype=torch.long)
        g = d = None
        if state.g_masks is not None:
            g = KernelBackend(state.G, state.g_masks, (torch.randn(spec.g_batch_size, spec.z_dim), y))
        if state.d_masks is not None:
            x = torch.randn(spec.batch_size, 3, spec.resolution, spec.resolution)
            d = KernelBackend(state.D, state.d_masks, (x, torch.zeros(spec.batch_size, dtype=torch.long)))
    for net, chosen in (("G", g), ("D", d)):
        if chosen is not None:
            log.info("sparse kernels in %s:\n%s", net, chosen.table())
    return Attached(hooks, g, d, state.step + 1)

"""Sparse layers on SparseProp's kernels: availability, which layers to swap (measured in place), the swapped
forward that gathers its values from the dense weight, and a network's backend (`KernelBackend`)."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsebench import SparsebenchError
from sparsebench.config import KERNELS as BACKENDS
from sparsebench.sparse.masks import MaskState
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

    def __init__(self, kind: str, module: Any, variant: str, enabled: list[bool], infer_variant: str = ""):
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


def _sparse_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
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
    module: Any, kind: str, mask: torch.Tensor, input_shape: tuple, repeats: int, enabled: list[bool]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median times (ms) of the dense layer and of each kernel variant, interleaved: forward + backward,
    and forward without gradients.

    Works on detached copies of the weight and bias, so no parameter, gradient or spectral-norm
    vector of the model changes.
    """
    original: Any = weight_tensor(module)  # a supported layer has a weight
    weight = (original.detach() * mask).requires_grad_()
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

    forwards: dict[str, Callable[[], torch.Tensor]] = {"dense": dense}
    for v, k in kernels.items():
        forwards[v] = lambda k=k: k.run(x, weight, bias)  # type: ignore[misc]  # bound per kernel
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
            module: Any = modules[name]
            kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            density = float(masks.masks[name].mean())
            shape = tuple(module.weight.shape if weight_tensor(module) is None else weight_tensor(module).shape)  # type: ignore[union-attr]
            choice = LayerChoice(name, kind, shape, shapes.get(name), density)
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
            assert choice.input_shape is not None  # no reason found: the forward used the layer
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
            module: Any = modules[name]
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

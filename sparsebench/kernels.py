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
  masked anyway (optimizer-state policies `mean` and `zero`); a step whose dense gradients are
  needed (a regrowth step, every step under the `dense` policy) runs under `backend.dense()`;
- the kernels' index structure follows the mask, not the non-zero pattern (a regrown weight is
  active at value zero), and must be rebuilt after each topology update (`backend.rebuild()`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench import SparsebenchError
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.scope import weight_tensor

BACKENDS = ("dense", "sparseprop")
DEFAULT_BACKEND = "dense"
DEFAULT_THRESHOLD = 0.8  # minimum sparsity of a layer worth trying (SparseProp's)
_EXACT_FLOAT_INDEX = 2**24  # positions are carried through the kernels' format as float32 values
_ATTR = "_sparsebench_kernel"


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
            "install it with: pip install pybind11 && pip install --no-build-isolation 'sparsebench[kernels]'"
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
    variant: str = ""  # "over_on" / "over_b" (conv), "csr" (linear)
    chosen: bool = False
    reason: str = ""


class _Kernel:
    """Index structure of one swapped layer; `positions[i]` is the flat dense index of value i."""

    def __init__(self, kind: str, module: nn.Module, variant: str, enabled: list[bool]):
        self.kind = kind
        self.variant = variant
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

    def variant_for(self, batch: int) -> str | None:
        """The variant that computes a batch of `batch` correctly (None: none does, run dense).

        SparseProp's batch-vectorized conv is only correct for batches in multiples of 8, and its
        output-vectorized conv only at stride 1 (its stride-2 backward is wrong); both checked in
        tests/test_kernels.py.
        """
        if self.kind == "linear":
            return self.variant
        if self.variant == "over_b" and batch % 8 == 0:
            return "over_b"
        return "over_on" if self.stride == 1 else None

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            variant: str | None = None) -> torch.Tensor:
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
    variant = kernel.variant_for(x.shape[0]) if kernel.enabled[0] else None
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


def _measure(module: nn.Module, kind: str, mask: torch.Tensor, input_shape: tuple, repeats: int,
             enabled: list[bool]) -> dict[str, float]:
    """Median forward + backward time (ms) of the dense layer and of each kernel variant, interleaved.

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

    def dense() -> None:
        out = module._conv_forward(x, weight, bias) if kind == "conv" else nn.functional.linear(x, weight, bias)
        out.sum().backward()

    def sparse(k: _Kernel):
        return lambda: k.run(x, weight, bias).sum().backward()

    runs = {"dense": dense, **{v: sparse(k) for v, k in kernels.items()}}
    for fn in runs.values():  # warm-up (first-touch allocations)
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            samples[name].append(_time_ms(fn, 1))
    return {name: statistics.median(ts) for name, ts in samples.items()}


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

    def __init__(self, model: nn.Module, masks: MaskState, example: tuple, threshold: float = DEFAULT_THRESHOLD,
                 repeats: int = 5, always: bool = False):
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
            ms = _measure(module, kind, masks.masks[name], choice.input_shape, repeats, self._enabled)
            choice.dense_ms = ms.pop("dense")
            choice.variant, choice.sparse_ms = min(ms.items(), key=lambda item: item[1])
            if always or choice.sparse_ms < choice.dense_ms:
                choice.chosen = True
                choice.reason = "faster" if choice.sparse_ms < choice.dense_ms else "forced"
                self._swap(name, module, choice)
            else:
                choice.reason = "kernels slower"

    def _swap(self, name: str, module: nn.Module, choice: LayerChoice) -> None:
        kernel = _Kernel(choice.kind, module, choice.variant, self._enabled)
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

    @contextlib.contextmanager
    def dense(self) -> Iterator[None]:
        """Run every swapped layer densely inside (for steps that need dense gradients)."""
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
        """One line per sparse layer: shape, density, dense and kernel ms, decision."""
        rows = [f"{'layer':<28} {'shape':<18} {'density':>7} {'dense ms':>9} {'sparse ms':>9}  chosen"]
        for c in self.layers:
            shape = "x".join(str(s) for s in c.shape)
            dense = f"{c.dense_ms:9.2f}" if c.dense_ms is not None else f"{'-':>9}"
            sparse = f"{c.sparse_ms:9.2f}" if c.sparse_ms is not None else f"{'-':>9}"
            decision = f"yes ({c.variant})" if c.chosen else f"no ({c.reason})"
            rows.append(f"{c.name:<28} {shape:<18} {c.density:7.3f} {dense} {sparse}  {decision}")
        return "\n".join(rows)

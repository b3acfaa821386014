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

from sparsebench.kernels.layers import (  # noqa: F401 - the backend's surface
    _ATTR,
    _EXACT_FLOAT_INDEX,
    BACKENDS,
    DEFAULT_THRESHOLD,
    KernelBackend,
    LayerChoice,
    _ContiguousGrad,
    _input_shapes,
    _Kernel,
    _measure,
    _sparse_forward,
    _time_ms,
    available,
    check_backend,
    conv_variants,
    require_sparseprop,
    unsupported,
)
from sparsebench.kernels.phase import (  # noqa: F401
    Attached,
    KernelHooks,
    attach,
    describe,
    for_sampling,
    needs_dense_grads,
)

"""Which tensors of a model are sparse.

`conv` (the authors' choice) makes every Conv2d weight sparse; `conv+linear` adds Linear weights.
Embeddings, norms, biases and spectral-norm u/v always stay dense. Under a spectral-norm
parametrization the *original* weight is the sparse tensor, so sigma is computed from the masked
matrix.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

_KINDS = {"conv": (nn.Conv2d,), "conv+linear": (nn.Conv2d, nn.Linear)}


def weight_tensor(module: nn.Module) -> nn.Parameter | None:
    """The trainable tensor behind `module.weight` (the original under a parametrization).

    Never reads `module.weight` itself: under spectral norm that runs a power iteration and
    changes the module's u/v vectors.
    """
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module._parameters.get("weight")


def scope_parameters(model: nn.Module, scope: str = "conv") -> dict[str, nn.Parameter]:
    """Module name -> sparse weight tensor, in module order."""
    if scope not in _KINDS:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(_KINDS)}")
    kinds = _KINDS[scope]
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, kinds) and weight_tensor(module) is not None:
            out[name] = weight_tensor(module)
    return out

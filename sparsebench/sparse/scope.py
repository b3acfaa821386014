"""Which tensors of a model are sparse.

`conv` (the authors' choice) makes every Conv2d and ConvTranspose2d weight sparse; `conv+linear` adds
Linear weights. `weights` is ADAPT's reference scope (`sparselearning/core.py`, `Masking.add_module`): every
weight but biases, norm layers, embeddings and the layers whose name holds `gain`, `bias` or `classifier`,
i.e. conv+linear without the linears of conditional norms (BigGAN's gains and biases under a shared
embedding) or a layer named `classifier` (the reference's BigGAN-32 D output layer; ours is `linear` and
stays sparse, as the reference's SNGAN D output `l5` does: 256 of D's 4.2 M weights).

A ConvTranspose2d weight is in_ch x out_ch x k x k, the transpose of a Conv2d's; the ERK and ER scores
are symmetric in the two fans, so they need no special case. Other convolutions
(1-D, 3-D) are refused by name rather than silently left dense. Embeddings, norms, biases and
spectral-norm u/v always stay dense. Under a spectral-norm parametrization the *original* weight is
the sparse tensor, so sigma is computed from the masked matrix.
"""

from __future__ import annotations

from typing import cast

from torch import nn
from torch.nn.utils import parametrize

from sparsebench import SparsebenchError

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_KINDS = {"conv": _CONVS, "conv+linear": (*_CONVS, nn.Linear), "weights": (*_CONVS, nn.Linear)}
_DENSE_BY_NAME = {"weights": ("gain", "bias", "classifier")}  # ADAPT's reference: `remove_weight_partial_name`


def weight_tensor(module: nn.Module) -> nn.Parameter | None:
    """The trainable tensor behind `module.weight` (the original under a parametrization).

    Never reads `module.weight` itself: under spectral norm that runs a power iteration and
    changes the module's u/v vectors.
    """
    if parametrize.is_parametrized(module, "weight"):
        parametrizations = cast(nn.ModuleDict, module.parametrizations)
        return cast(nn.Parameter, parametrizations["weight"].original)
    return module._parameters.get("weight")


def scope_parameters(model: nn.Module, scope: str = "conv") -> dict[str, nn.Parameter]:
    """Module name -> sparse weight tensor, in module order."""
    if scope not in _KINDS:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(_KINDS)}")
    kinds, dense_names = _KINDS[scope], _DENSE_BY_NAME.get(scope, ())
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if any(part in name for part in dense_names):
            continue
        weight = weight_tensor(module) if isinstance(module, kinds) else None
        if weight is not None:
            out[name] = weight
        elif isinstance(module, nn.modules.conv._ConvNd):
            covered = "Conv2d, ConvTranspose2d" + (", Linear" if scope != "conv" else "")
            raise SparsebenchError(
                f"layer {name!r} is a {type(module).__name__}, which the sparse scope does not cover ({covered})"
            )
    return out

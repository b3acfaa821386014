"""The sparse engine: parameter scope, layer-wise distributions, masks, topology updates, SEMA.

This is the public API for method plugins (documented in docs/plugins.md).
"""

from sparsebench.sparse.distributions import layer_densities, magnitude_masks, random_masks
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.scope import scope_parameters
from sparsebench.sparse.sema import SparseEMA
from sparsebench.sparse.topology import CosineSchedule, prune_and_regrow

__all__ = [
    "CosineSchedule",
    "MaskState",
    "SparseEMA",
    "layer_densities",
    "magnitude_masks",
    "prune_and_regrow",
    "random_masks",
    "scope_parameters",
]

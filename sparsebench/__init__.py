"""sparsebench: a plugin-based benchmark suite for sparse GAN training.

Everything a plugin or a notebook needs is importable from here (see docs/plugins.md for what is
stable). The names are resolved on first access, so `import sparsebench` stays cheap: the command
line starts without importing torch until a command needs it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("sparsebench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"


class SparsebenchError(Exception):
    """An error caused by the user's input or environment; the CLI prints it on one line."""

    exit_code = 2


_PUBLIC = {
    "hookimpl": "sparsebench.hookspecs",
    "Option": "sparsebench.options",
    "Method": "sparsebench.interfaces",
    "Architecture": "sparsebench.interfaces",
    "Dataset": "sparsebench.interfaces",
    "Metric": "sparsebench.interfaces",
    "Phase": "sparsebench.interfaces",
    "FlopPlan": "sparsebench.interfaces",
    "DensePass": "sparsebench.interfaces",
    "ImageData": "sparsebench.data",
    "DataSplits": "sparsebench.data",
    "MethodContext": "sparsebench.interfaces",
    "RunArtifacts": "sparsebench.interfaces",
    "RunConfig": "sparsebench.config",
    "TrainSpec": "sparsebench.config",
    "Callbacks": "sparsebench.interfaces",
    "GANState": "sparsebench.interfaces",
    "GStep": "sparsebench.interfaces",
    "MaskState": "sparsebench.sparse",
    "SparseEMA": "sparsebench.sparse",
    "CosineSchedule": "sparsebench.sparse",
    "prune_and_regrow": "sparsebench.sparse",
    "layer_densities": "sparsebench.sparse",
    "magnitude_masks": "sparsebench.sparse",
    "random_masks": "sparsebench.sparse",
    "scope_parameters": "sparsebench.sparse",
    "SparseGANMethod": "sparsebench.kit",
    "TopologyUpdate": "sparsebench.kit",
    "GradientGrowth": "sparsebench.kit",
    "DynamicSparseMethod": "sparsebench.kit",
    "with_dense_grads": "sparsebench.kit",
    "gradient_magnitude": "sparsebench.sparse.topology",
    "magnitude": "sparsebench.sparse.topology",
    "noisy_magnitude": "sparsebench.sparse.topology",
    "change_density": "sparsebench.sparse.topology",
    "update_topology": "sparsebench.sparse.topology",
    "d_hinge_loss": "sparsebench.train.loop",
    "g_hinge_loss": "sparsebench.train.loop",
    "balance_ratio": "sparsebench.balance",
    "BalanceProbe": "sparsebench.balance",
    "FeatureExtractor": "sparsebench.interfaces",
    "ExtractorWeights": "sparsebench.interfaces",
    "RunSettings": "sparsebench.settings",
    "results": "sparsebench.grid",
    "run": "sparsebench.grid",
}
# Old names, kept for one minor version: each warns and resolves to its new name. Left out of __all__, so
# that `from sparsebench import *` and the API reference never touch them.
_DEPRECATED = {"Hooks": "Callbacks"}
__all__ = ["SparsebenchError", "__version__"]
__all__ += list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        import warnings

        warnings.warn(
            f"sparsebench.{name} is deprecated; use sparsebench.{_DEPRECATED[name]}", DeprecationWarning, stacklevel=2
        )
        return __getattr__(_DEPRECATED[name])
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sparsebench' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

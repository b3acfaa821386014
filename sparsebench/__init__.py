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
    "Method": "sparsebench.api",
    "Architecture": "sparsebench.api",
    "Dataset": "sparsebench.api",
    "Metric": "sparsebench.api",
    "Phase": "sparsebench.api",
    "FlopPlan": "sparsebench.api",
    "DensePass": "sparsebench.api",
    "ImageData": "sparsebench.data",
    "DataSplits": "sparsebench.data",
    "MethodContext": "sparsebench.api",
    "RunArtifacts": "sparsebench.api",
    "RunConfig": "sparsebench.config",
    "TrainSpec": "sparsebench.config",
    "Hooks": "sparsebench.train.loop",
    "GANState": "sparsebench.train.loop",
    "MaskState": "sparsebench.sparse",
    "SparseEMA": "sparsebench.sparse",
    "CosineSchedule": "sparsebench.sparse",
    "prune_and_regrow": "sparsebench.sparse",
    "layer_densities": "sparsebench.sparse",
    "magnitude_masks": "sparsebench.sparse",
    "random_masks": "sparsebench.sparse",
    "scope_parameters": "sparsebench.sparse",
    "TopologyUpdate": "sparsebench.sparse.dynamic",
    "DynamicSparseMethod": "sparsebench.sparse.dynamic",
    "with_dense_grads": "sparsebench.sparse.dynamic",
    "gradient_magnitude": "sparsebench.sparse.topology",
    "magnitude": "sparsebench.sparse.topology",
    "noisy_magnitude": "sparsebench.sparse.topology",
    "change_density": "sparsebench.sparse.topology",
    "update_topology": "sparsebench.sparse.topology",
    "d_hinge_loss": "sparsebench.train.loop",
    "g_hinge_loss": "sparsebench.train.loop",
    "balance_ratio": "sparsebench.train.loop",
    "FeatureExtractor": "sparsebench.api",
    "ExtractorWeights": "sparsebench.api",
    "results": "sparsebench.session",
    "run": "sparsebench.session",
}
__all__ = ["SparsebenchError", "__version__"]
__all__ += list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sparsebench' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

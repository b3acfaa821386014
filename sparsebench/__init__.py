"""sparsebench: a plugin-based benchmark suite for sparse GAN training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparsebench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"


class SparsebenchError(Exception):
    """An error caused by the user's input or environment; the CLI prints it on one line."""

    exit_code = 2

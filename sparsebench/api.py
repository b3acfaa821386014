"""Deprecated alias of `sparsebench.interfaces` (the plugin contract), kept for one minor version: import the
names from `sparsebench` itself (`from sparsebench import Method`)."""

from sparsebench.interfaces import *  # noqa: F403
from sparsebench.interfaces import __all__ as __all__  # noqa: F401

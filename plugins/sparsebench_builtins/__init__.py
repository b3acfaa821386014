"""The built-in sparsebench plugins: methods, architectures, data sets and metrics.

Each module registers itself through the `sparsebench` entry-point group, like any third-party
plugin would.
"""

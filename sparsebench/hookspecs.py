"""The plugin contract: the hooks a sparsebench plugin may implement.

Each hook receives a `register` callable; call it once per object you provide. Objects carry a
stable `name`, a one-line `description` and an `options` tuple of `sparsebench.options.Option`.
See docs/plugins.md for a complete example.
"""

import pluggy

hookspec = pluggy.HookspecMarker("sparsebench")
hookimpl = pluggy.HookimplMarker("sparsebench")


@hookspec
def register_methods(register):
    """Register training methods (subclasses of `sparsebench.api.Method`)."""


@hookspec
def register_architectures(register):
    """Register GAN architectures (subclasses of `sparsebench.api.Architecture`)."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics (subclasses of `sparsebench.api.Metric`)."""


@hookspec
def register_datasets(register):
    """Register data sets (subclasses of `sparsebench.api.Dataset`)."""


@hookspec
def register_feature_extractors(register):
    """Register feature extractors for the metrics (subclasses of `sparsebench.api.FeatureExtractor`)."""

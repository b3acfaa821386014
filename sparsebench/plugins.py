"""Plugin loading: entry points of the group `sparsebench`, one registry per kind of object.

Built-in plugins come through the very same entry-point path as third-party ones. A plugin that
fails (import error, duplicate name, a hook that raises) costs one warning naming it and its
distribution; everything else keeps working.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass, field
from typing import Any

import pluggy

from sparsebench import SparsebenchError, hookspecs

GROUP = "sparsebench"
BUILTIN_DIST = "sparsebench"


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; the rest of sparsebench still works."""


@dataclass
class Entry:
    obj: Any
    source: str  # "built-in" or the distribution name of the providing package
    plugin: str  # entry-point (or in-process) plugin name
    dist_version: str = "unknown"  # version of the providing distribution

    @property
    def version(self) -> str:
        """The object's code version: its own `version`, else its distribution's."""
        declared = getattr(self.obj, "version", None)
        return str(declared) if declared is not None else self.dist_version


@dataclass
class Registry:
    """Registered objects of one kind, by name."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Any:
        if name not in self.entries:
            known = ", ".join(self.names()) or "none installed"
            raise SparsebenchError(f"unknown {self.kind} {name!r}; known: {known}")
        return self.entries[name].obj

    def objects(self) -> dict[str, Any]:
        """The registered objects by name."""
        return {name: entry.obj for name, entry in self.entries.items()}

    def source(self, name: str) -> str:
        return self.entries[name].source

    def __contains__(self, name: str) -> bool:
        return name in self.entries


_HOOKS = {
    "register_methods": "method",
    "register_architectures": "architecture",
    "register_metrics": "metric",
    "register_datasets": "dataset",
    "register_feature_extractors": "feature extractor",
}


class Plugins:
    """The loaded plugin set: one registry per kind and the warnings raised while filling them."""

    def __init__(self, load_entrypoints: bool = True, extra: list[tuple[str, Any]] | tuple = ()):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in _HOOKS.values()}
        self.warnings: list[str] = []
        self._source: dict[str, str] = {}
        self._dist_version: dict[str, str] = {}
        if load_entrypoints:
            self._load_entrypoints()
        for name, module in extra:
            self.pm.register(module, name=name)
            self._source[name] = "in-process"
        self._collect()

    @property
    def methods(self) -> Registry:
        return self.registries["method"]

    @property
    def archs(self) -> Registry:
        return self.registries["architecture"]

    @property
    def metrics(self) -> Registry:
        return self.registries["metric"]

    @property
    def datasets(self) -> Registry:
        return self.registries["dataset"]

    @property
    def extractors(self) -> Registry:
        return self.registries["feature extractor"]

    def method_groups(self) -> dict[str, list[str]]:
        """The groups the methods declare, each with its methods in table order (`Method.group`)."""
        from sparsebench.interfaces import Method

        groups: dict[str, list[str]] = {}
        methods = self.methods.objects()
        for name in sorted(methods, key=lambda n: (getattr(methods[n], "order", Method.order), n)):
            group = getattr(methods[name], "group", "")
            if group and group not in methods:  # a method's own name always means that method
                groups.setdefault(group, []).append(name)
        return groups

    def code(self, method: str, arch: str) -> tuple:
        """The code versions a run of `method` on `arch` depends on, for its run id: rerunning after
        a plugin or sparsebench changed its version trains anew instead of reusing the old result."""
        from sparsebench import __version__

        return (
            ("arch", self.archs.entries[arch].version),
            ("method", self.methods.entries[method].version),
            ("sparsebench", __version__),
        )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def _load_entrypoints(self) -> None:
        seen = set()
        for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            source = "built-in" if dist == BUILTIN_DIST else dist
            if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the suite
                self._warn(f"plugin {ep.name!r} from {dist} failed to load: {type(exc).__name__}: {exc}")
                continue
            self._source[ep.name] = source
            self._dist_version[ep.name] = ep.dist.version if ep.dist is not None else "unknown"

    def _collect(self) -> None:
        for hook_name, kind in _HOOKS.items():
            registry = self.registries[kind]
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                source = self._source.get(plugin, "unknown")

                def register(obj, _plugin=plugin, _source=source, _registry=registry):
                    name = getattr(obj, "name", None)
                    if not isinstance(name, str) or not name:
                        raise TypeError(f"{_registry.kind} object {obj!r} has no name")
                    if name in _registry.entries:
                        first = _registry.entries[name]
                        self._warn(
                            f"plugin {_plugin!r} from {_source} registers {_registry.kind} {name!r}, "
                            f"already registered by {first.plugin!r} from {first.source}; ignored"
                        )
                        return
                    _registry.entries[name] = Entry(obj, _source, _plugin, self._dist_version.get(_plugin, "unknown"))

                try:
                    impl.function(register=register)
                except Exception as exc:  # noqa: BLE001
                    self._warn(f"plugin {plugin!r} from {source} failed in {hook_name}: {type(exc).__name__}: {exc}")


_PLUGINS: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = Plugins()
    return _PLUGINS


def reset_plugins() -> None:
    """Forget the loaded plugin set (tests install plugins and reload)."""
    global _PLUGINS
    _PLUGINS = None

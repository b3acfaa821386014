"""Runs that other runs build on (PF and GAN Tickets start from the dense run of the same arch, data, preset
and seed): which config such a run has, and its stored artifacts once done. The scheduler trains them first
(`Method.requires`); a run only reads them."""

from __future__ import annotations

from typing import Any

from sparsebench.config import RunConfig
from sparsebench.interfaces import RunArtifacts
from sparsebench.options import validate_options
from sparsebench.store.sinks import RunReader


def dependency(config: RunConfig, method_name: str, plugins: Any, changes: dict | None = None) -> RunConfig:
    """The config of the `method_name` run that `config` builds on (same arch, data, seed...)."""
    method = plugins.methods.get(method_name)
    return config.replace(
        method=method_name,
        code=plugins.code(method_name, config.arch),
        sg=method.fixed.get("sg", config.sg),
        sd=method.fixed.get("sd", config.sd),
        method_options=tuple(sorted(validate_options(method.options, {}, method_name).items())),
        **(changes or {}),
    ).without_unused_settings()


def dependencies(config: RunConfig, plugins: Any) -> list[RunConfig]:
    """The configs of the runs `config`'s method declares it builds on (`Method.requires`)."""
    return [dependency(config, name, plugins) for name in plugins.methods.get(config.method).requires]


class Dependencies:
    """The finished runs one run builds on, read through `reader` (the store, or the scheduler's rows)."""

    def __init__(self, plugins: Any, reader: RunReader):
        self.plugins, self.reader = plugins, reader

    def artifacts(self, config: RunConfig, method_name: str, changes: dict | None = None) -> RunArtifacts:
        dep = dependency(config, method_name, self.plugins, changes)
        row = self.reader.get(dep.run_id)
        status = row["status"] if row else None
        if status != "done":
            how = f"ended {status}" if status else "has not run (a method declares the runs it builds on in `requires`)"
            raise RuntimeError(f"the {method_name} run {dep.run_id} this run builds on {how}")
        assert row is not None
        run_dir = self.reader.run_dir(dep.run_id)
        return RunArtifacts(dep.run_id, dep.to_dict(), row["results"], run_dir / "init.pt", run_dir / "final.pt")

"""The Python API, and the one path every grid takes: `Grid.open(request, settings, plugins)` (what
`sparsebench run` calls with the objects it parsed), `run(...)` (the same from keyword arguments, returning
its rows), and the results table as a pandas DataFrame (`results`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench import SparsebenchError, defaults
from sparsebench.config import GridRequest
from sparsebench.settings import RunSettings


def results_frame(store, methods=None):
    """The flat results table of an open store, one row per run (`sparsebench results`' columns: the
    core's, the result columns the registered `methods` declare, then `other`)."""
    import pandas as pd

    from sparsebench.store import int_columns, method_columns, table_columns

    if methods is None:
        from sparsebench.plugins import get_plugins

        methods = get_plugins().methods
    declared = method_columns(methods.objects().values())
    table = store.results_table(declared)
    df = pd.DataFrame(table, columns=table_columns(declared))
    for col in int_columns(table, declared):
        df[col] = df[col].astype("Int64")
    return df


def results(store: str | os.PathLike | None = None):
    """The flat results table of the store at `store` (default: as `sparsebench results`) as a pandas
    DataFrame, one row per run; the store is opened read-only."""
    from sparsebench.store import Store

    opened = Store(store, readonly=True)
    try:
        return results_frame(opened)
    finally:
        opened.close()


@dataclass
class Grid:
    """A grid ready to run: its configs and the scheduler that runs them on its store."""

    configs: list
    scheduler: Any
    settings: RunSettings

    @classmethod
    def open(cls, req: GridRequest, settings: RunSettings, plugins) -> Grid:
        """Validate the request, join torchrun's process group (if any), open (or create) the store, and
        prepare data and extractors before anything trains."""
        from sparsebench import distributed
        from sparsebench.config import expand_grid
        from sparsebench.runner import Runner
        from sparsebench.scheduler import Scheduler
        from sparsebench.store import Store, default_store_path

        if settings.pooled and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SparsebenchError(
                "under torchrun, use the local executor with --jobs 1 (each rank runs the same grid)"
            )
        if req.kernels == "sparseprop" and settings.device == "cuda":
            raise SparsebenchError(
                "--kernels sparseprop runs SparseProp's CPU kernels and cannot run with --device cuda; "
                "use --kernels dense on a GPU"
            )
        if req.kernels == "sparseprop":
            from sparsebench.kernels import require_sparseprop

            require_sparseprop()
        if req.deterministic and settings.device.startswith("cuda"):  # before any CUDA work: preflight's, NCCL's
            from sparsebench.speed import prepare_cublas

            prepare_cublas()
        settings = settings.replace(device=distributed.init_from_env(settings.device))
        configs = expand_grid(req, plugins)  # after joining the process group: its size is in the run ids
        for config in configs:  # a process count that does not divide the batch is refused before anything runs
            distributed.batch_share(config.train, distributed.world_size(), f"the {config.preset} preset")
        leader = distributed.rank() == 0
        if leader:
            store = Store(settings.store)
            distributed.barrier()
        else:  # rank 0 creates the store first; the other ranks only read it
            distributed.barrier()
            store = Store(settings.store or default_store_path(), readonly=True)
        runner = Runner(plugins, settings.replace(progress=settings.progress and not settings.pooled and leader))
        if leader:  # data and extractor caches are prepared once, before the other ranks read them
            runner.resources.preflight(configs, store, settings.rerun)
        distributed.barrier()
        return cls(configs, Scheduler(store, runner), settings)

    @property
    def runner(self):
        return self.scheduler.runner

    @property
    def store(self):
        return self.scheduler.store

    @property
    def leader(self) -> bool:
        return self.scheduler.leader

    @property
    def outcomes(self) -> list:
        """Every run looked at, the runs cells build on included, in order."""
        return self.scheduler.outcomes

    def close(self) -> None:
        """Close the store (its lease renewals stop): after the grid ran, or stopped."""
        self.store.close()

    def execute(self, on_start: Callable | None = None, on_done: Callable | None = None) -> list:
        """Run every cell (done ones are skipped, unless rerun); returns the grid's outcomes."""
        quiet = lambda *args: None
        return self.scheduler.run(
            self.configs,
            on_start if on_start and self.leader else quiet,
            on_done if on_done and self.leader else quiet,
        )


def _items(value: Any) -> list:
    return [value] if isinstance(value, (str, int, float)) else list(value)


def expand_methods(methods: str | Iterable[str], plugins) -> list[str]:
    """Method names, comma-separated or listed, as the grid's methods: a group the methods declare
    stands for all of its methods (`pf` = pf-global,pf-uniform), each method once, in order."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [m.strip() for m in items if m.strip()]
    if not names:
        raise SparsebenchError("--methods is empty; give a comma-separated list")
    known, groups = plugins.methods.names(), plugins.method_groups()
    out: list[str] = []
    for name in names:
        for m in groups.get(name, [name]):
            if m not in known:
                listed = ", ".join(f"{g} (= {','.join(ms)})" for g, ms in groups.items()) or "none"
                raise SparsebenchError(f"unknown method {m!r}; known: {', '.join(known)}; groups: {listed}")
            if m not in out:
                out.append(m)
    return out


def run(
    methods: str | Iterable[str],
    arch: str,
    sg: float | Iterable[float] = defaults.SG,
    sd: float | Iterable[float] = defaults.SD,
    seeds: int | Iterable[int] = defaults.SEED,
    preset: str = defaults.PRESET,
    steps: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | Iterable[str] | None = None,
    store: str | os.PathLike | None = None,
    dataset: str | None = None,
    scope: str | None = None,  # None: each method's own at the preset (sparsebench.config.default_scope)
    distribution: str = defaults.DISTRIBUTION,
    opt_state: str = defaults.OPT_STATE,
    kernels: str = defaults.KERNELS,
    precision: str = defaults.PRECISION,
    compile: bool = False,
    channels_last: bool = False,
    deterministic: bool = False,
    threads: int = defaults.THREADS,
    metrics: Iterable[str] = defaults.METRICS,
    device: str = defaults.DEVICE,
    data_dir: str | None = None,
    inception_weights: str | None = None,
    checkpoint_every: int = defaults.CHECKPOINT_EVERY,
    retry_failed: bool = False,
    rerun: bool = False,
    jobs: int = defaults.JOBS,
    progress: bool = False,
    on_start: Callable | None = None,
    on_done: Callable | None = None,
):
    """Run a grid in this process as `sparsebench run` does, and return the results rows of its runs
    (the runs they build on, trained on the way, included) as a pandas DataFrame.

    `methods` and the grid axes take one value or a list; `options` maps a plugin to its options
    ({"stugan": {"explore": "gd"}}) or lists "PLUGIN.NAME=VALUE" strings, as `-o` does. `precision`
    ("fp32" or "bf16"), `compile`, `channels_last` and `deterministic` are the opt-in speed modes of
    `sparsebench run` (its --precision, --compile, --channels-last and --deterministic); `threads` the CPU
    threads each run trains with (part of the run id when not 1, as `--threads`). Progress:
    `on_start(config, i, total)` before each cell, `on_done(config, outcome)` after it.
    """
    from sparsebench.options import parse_option_strings
    from sparsebench.plugins import get_plugins

    plugins = get_plugins()
    if options is None:
        parsed: dict = {}
    elif isinstance(options, Mapping):
        parsed = {target: dict(values) for target, values in options.items()}
    else:
        parsed = parse_option_strings(_items(options))
    req = GridRequest(
        methods=expand_methods(methods, plugins),
        arch=arch,
        dataset=dataset,
        sg=[float(v) for v in _items(sg)],
        sd=[float(v) for v in _items(sd)],
        seeds=[int(v) for v in _items(seeds)],
        preset=preset,
        steps=steps,
        scope=scope,
        distribution=distribution,
        opt_state=opt_state,
        kernels=kernels,
        threads=threads,
        precision=precision,
        compile=compile,
        channels_last=channels_last,
        deterministic=deterministic,
        options=parsed,
        metrics=tuple(_items(metrics)),
    )
    settings = RunSettings(
        store=None if store is None else str(store),
        device=device,
        data_dir=data_dir,
        inception_weights=inception_weights,
        checkpoint_every=checkpoint_every,
        retry_failed=retry_failed,
        rerun=rerun,
        progress=progress,
        jobs=jobs,
    )
    grid = Grid.open(req, settings, plugins)
    try:
        grid.execute(on_start, on_done)
    finally:
        grid.close()
    order = {o.run_id: i for i, o in enumerate(grid.outcomes)}
    df = results(Path(grid.store.path))
    df = df[df["run_id"].isin(order)]
    return df.sort_values("run_id", key=lambda ids: ids.map(order)).reset_index(drop=True)

"""The Python path to what the command line does: the results table as a pandas DataFrame, and a
grid run in this process (the same code `sparsebench run` and `sparsebench results` use)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench import SparsebenchError


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
    """A grid ready to run: its configs, the runner that trains them and the store they go to."""

    configs: list
    runner: Any
    store: Any
    executor: str = "local"
    jobs: int = 1
    address: str | None = None
    leader: bool = True

    @classmethod
    def open(
        cls,
        req,
        plugins,
        store_path: str | os.PathLike | None = None,
        device: str = "cpu",
        inception_weights: str | None = None,
        progress: bool = True,
        checkpoint_every: int = 500,
        retry_failed: bool = False,
        rerun: bool = False,
        executor: str = "local",
        jobs: int = 1,
        address: str | None = None,
    ) -> Grid:
        """Validate the request, open (or create) the store, and prepare data and extractors."""
        from sparsebench import distributed
        from sparsebench.config import expand_grid
        from sparsebench.executors import EXECUTORS
        from sparsebench.runner import Runner
        from sparsebench.store import FollowerStore, RunStore, Store, default_store_path

        if device not in ("cpu", "cuda"):
            raise SparsebenchError(f"--device {device!r}: allowed: cpu, cuda")
        if (executor != "local" or jobs > 1) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SparsebenchError(
                "under torchrun, use the local executor with --jobs 1 (each rank runs the same grid)"
            )
        if checkpoint_every < 0:
            raise SparsebenchError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
        if executor not in EXECUTORS:
            raise SparsebenchError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
        if jobs < 1:
            raise SparsebenchError(f"--jobs must be >= 1, got {jobs}")
        if req.kernels == "sparseprop" and device == "cuda":
            raise SparsebenchError(
                "--kernels sparseprop runs SparseProp's CPU kernels and cannot run with --device cuda; "
                "use --kernels dense on a GPU"
            )
        if req.kernels == "sparseprop":
            from sparsebench.kernels import require_sparseprop

            require_sparseprop()
        device = distributed.init_from_env(device)
        configs = expand_grid(req, plugins)  # after joining the process group: its size is in the run ids
        leader = distributed.rank() == 0
        store: RunStore  # a Store, or under torchrun a FollowerStore on the other ranks
        if leader:
            store = Store(store_path)
            distributed.barrier()
        else:  # rank 0 creates the store first; the other ranks only read it
            distributed.barrier()
            store = FollowerStore(Store(store_path or default_store_path(), readonly=True))
        runner = Runner(
            store,
            plugins,
            device=device,
            data_dir=req.data_dir,
            inception_weights=inception_weights,
            progress=progress and executor == "local" and jobs == 1 and leader,
            checkpoint_every=checkpoint_every,
            retry_failed=retry_failed,
            rerun=rerun,
        )
        if leader:  # data and extractor caches are prepared once, before the other ranks read them
            runner.preflight(configs)
        distributed.barrier()
        return cls(configs, runner, store, executor, jobs, address, leader)

    def execute(self, on_start: Callable | None = None, on_done: Callable | None = None) -> list:
        """Run every cell (done ones are skipped, unless rerun); returns the grid's outcomes."""
        from sparsebench.executors import execute

        quiet = lambda *args: None
        return execute(
            self.configs,
            self.runner,
            self.store,
            self.executor,
            self.jobs,
            self.address,
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
    sg: float | Iterable[float] = 0.9,
    sd: float | Iterable[float] = 0.5,
    seeds: int | Iterable[int] = 0,
    preset: str = "quick",
    steps: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | Iterable[str] | None = None,
    store: str | os.PathLike | None = None,
    dataset: str | None = None,
    scope: str | None = None,  # None: each method's own scope (conv unless it declares one)
    distribution: str = "erk",
    opt_state: str = "dense",
    kernels: str = "dense",
    precision: str = "fp32",
    compile: bool = False,
    channels_last: bool = False,
    deterministic: bool = False,
    threads: int = 1,
    metrics: Iterable[str] = ("fid", "is"),
    device: str = "cpu",
    data_dir: str | None = None,
    inception_weights: str | None = None,
    checkpoint_every: int = 500,
    retry_failed: bool = False,
    rerun: bool = False,
    jobs: int = 1,
    progress: bool = False,
    on_start: Callable | None = None,
    on_done: Callable | None = None,
):
    """Run a grid in this process as `sparsebench run` does, and return the results rows of its runs
    (dependencies trained on the way included) as a pandas DataFrame.

    `methods` and the grid axes take one value or a list; `options` maps a plugin to its options
    ({"stugan": {"explore": "gd"}}) or lists "PLUGIN.NAME=VALUE" strings, as `-o` does. `precision`
    ("fp32" or "bf16"), `compile`, `channels_last` and `deterministic` are the opt-in speed modes of
    `sparsebench run` (its --precision, --compile, --channels-last and --deterministic); `threads` the CPU
    threads each run trains with (part of the run id when not 1, as `--threads`). Progress:
    `on_start(config, i, total)` before each cell, `on_done(config, outcome)` after it.
    """
    from sparsebench.config import GridRequest
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
        data_dir=data_dir,
    )
    grid = Grid.open(
        req,
        plugins,
        store,
        device=device,
        inception_weights=inception_weights,
        progress=progress,
        checkpoint_every=checkpoint_every,
        retry_failed=retry_failed,
        rerun=rerun,
        jobs=jobs,
    )
    grid.execute(on_start, on_done)
    order = {o.run_id: i for i, o in enumerate(grid.runner.outcomes)}
    df = results(Path(grid.store.path))
    df = df[df["run_id"].isin(order)]
    return df.sort_values("run_id", key=lambda ids: ids.map(order)).reset_index(drop=True)

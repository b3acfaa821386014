"""Grid executors: where the cells of a grid run.

`local` with one job runs cells in this process. `local` with several jobs, and `ray`, run each
cell in a worker; a worker never writes the SQLite store: it records the writes it would make
and sends them back with its result, and the driver alone applies them (so SQLite is never
written from another machine or over a network filesystem). Model weights go to the store's
artifacts folder, which workers must see (local disk, or a shared filesystem on a cluster).

Cells that build on other runs (PF and GAN Tickets on the dense run) are scheduled after those
runs, so a dependency is trained once, not once per worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from sparsebench import SparsebenchError
from sparsebench.config import RunConfig
from sparsebench.runner import Outcome, Runner
from sparsebench.store import ArtifactPaths, Store

EXECUTORS = ("local", "ray")


@dataclass
class CellJob:
    config: dict
    store_path: str
    known: dict[str, dict]  # run_id -> stored row, for the dependencies this cell may read
    device: str
    data_dir: str | None
    inception_weights: str | None
    checkpoint_every: int
    retry_failed: bool
    threads: int = 0


class RecordingStore(ArtifactPaths):
    """The part of Store a Runner uses, reading from a snapshot and recording every write."""

    def __init__(self, path: str, known: dict[str, dict]):
        self.path = Path(path)
        self.known = dict(known)
        self.ops: list[tuple[str, tuple]] = []

    def get(self, run_id: str) -> dict | None:
        return self.known.get(run_id)

    def status(self, run_id: str) -> str | None:
        row = self.known.get(run_id)
        return row["status"] if row else None

    def start_run(self, config: RunConfig, env: dict) -> None:
        self.ops.append(("start_run", (config.to_dict(), env)))

    def finish_run(self, run_id: str, status: str, results: dict, wall_s: float | None) -> None:
        self.ops.append(("finish_run", (run_id, status, results, wall_s)))
        self.known[run_id] = {"run_id": run_id, "status": status, "results": results}

    def log_stats(self, run_id: str, rows: list) -> None:
        if rows:
            self.ops.append(("log_stats", (run_id, list(rows))))


def apply_ops(store: Store, ops: list[tuple[str, tuple]]) -> None:
    for name, args in ops:
        if name == "start_run":
            store.start_run(RunConfig.from_dict(args[0]), args[1])
        else:
            getattr(store, name)(*args)


def run_cell(job: CellJob) -> tuple[list, dict]:
    """Run one grid cell in a worker; returns (recorded store writes, outcome summary)."""
    import warnings

    import torch

    from sparsebench.plugins import get_plugins

    warnings.filterwarnings("ignore")
    if job.threads:
        torch.set_num_threads(job.threads)
    sink = RecordingStore(job.store_path, job.known)
    runner = Runner(sink, get_plugins(), device=job.device, data_dir=job.data_dir,
                    inception_weights=job.inception_weights, progress=False,
                    checkpoint_every=job.checkpoint_every, retry_failed=job.retry_failed)
    config = RunConfig.from_dict(job.config)
    try:
        outcome = runner.run(config)
        summary = {"status": outcome.status, "results": outcome.results, "skipped": outcome.skipped}
    except SparsebenchError as exc:
        summary = {"status": "failed", "results": {"error": str(exc)}, "skipped": False}
    return sink.ops, summary


def waves(configs: list[RunConfig], runner: Runner) -> list[list[RunConfig]]:
    """Dependencies first: wave 0 holds the runs others build on, wave 1 the rest."""
    first: dict[str, RunConfig] = {}
    for cfg in configs:
        for dep_name in runner.plugins.methods.get(cfg.method).requires:
            dep = runner.dependency(cfg, dep_name)
            first.setdefault(dep.run_id, dep)
    rest = [c for c in configs if c.run_id not in first]
    return [list(first.values()), rest]


def execute(configs: list[RunConfig], runner: Runner, store: Store, executor: str, jobs: int,
            address: str | None, on_start: Callable[[RunConfig, int, int], None],
            on_done: Callable[[RunConfig, Outcome], None]) -> list[Outcome]:
    """Run `configs` with the chosen executor; the callbacks run in the driver."""
    if executor not in EXECUTORS:
        raise SparsebenchError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if executor == "local" and jobs <= 1:
        out = []
        for i, cfg in enumerate(configs, 1):
            on_start(cfg, i, len(configs))
            outcome = runner.run(cfg)
            on_done(cfg, outcome)
            out.append(outcome)
        return out
    submit, close = (_ray_pool(address, runner) if executor == "ray" else _process_pool(jobs))
    outcomes: list[Outcome] = []
    plan = waves(configs, runner)
    total, started = sum(len(w) for w in plan), 0
    try:
        for wave in plan:
            pending = []
            for cfg in wave:
                known = {r["run_id"]: r for r in (store.get(i) for i in _dep_ids(cfg, runner) + [cfg.run_id]) if r}
                job = CellJob(cfg.to_dict(), str(store.path), known, str(runner.device), runner.data_dir,
                              runner.inception_weights, runner.checkpoint_every, runner.retry_failed,
                              threads=max(1, (os.cpu_count() or 1) // max(jobs, 1)) if executor == "local" else 0)
                started += 1
                on_start(cfg, started, total)
                pending.append((cfg, submit(job)))
            for cfg, result in _as_completed(pending):
                ops, summary = result
                apply_ops(store, ops)
                outcome = Outcome(cfg.run_id, cfg, summary["status"], summary["results"], summary["skipped"])
                runner.outcomes.append(outcome)
                on_done(cfg, outcome)
                outcomes.append(outcome)
    finally:
        close()
    return outcomes


def _dep_ids(cfg: RunConfig, runner: Runner) -> list[str]:
    return [runner.dependency(cfg, d).run_id for d in runner.plugins.methods.get(cfg.method).requires]


def _process_pool(jobs: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    return (lambda job: pool.submit(run_cell, job)), (lambda: pool.shutdown(cancel_futures=True))


def _ray_pool(address: str | None, runner: Runner):
    try:
        import ray
    except ImportError:
        raise SparsebenchError("the ray executor needs Ray: pip install 'sparsebench[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    gpus = 1 if runner.device.type == "cuda" else 0
    remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(run_cell)

    class RayFuture:
        def __init__(self, ref):
            self.ref = ref

        def result(self):
            return ray.get(self.ref)

    def close():
        if started:
            ray.shutdown()

    return (lambda job: RayFuture(remote.remote(job))), close


def _as_completed(pending: list[tuple[RunConfig, Any]]) -> Iterator[tuple[RunConfig, Any]]:
    """Results in submission order (each is waited for; the workers run concurrently meanwhile)."""
    for cfg, future in pending:
        yield cfg, future.result()

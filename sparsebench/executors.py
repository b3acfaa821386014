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

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench import SparsebenchError
from sparsebench.config import RunConfig
from sparsebench.runner import POLL_S, Outcome, Runner
from sparsebench.store import ArtifactPaths, RunStore, Store
from sparsebench.train.loop import Interrupted

EXECUTORS = ("local", "ray")
log = logging.getLogger("sparsebench.run")


class GridInterrupted(Interrupted):
    """The grid stopped on request; every running cell checkpointed first."""

    def __str__(self) -> str:
        return "interrupted; every cell that was running saved a checkpoint"


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
    rerun: bool = False  # the driver holds this finished cell to train it again
    threads: int = 0
    owner: str = ""  # the driver's claim on this cell, which the worker trains under
    parent_pid: int = 0  # a local worker stops (checkpointing) when this process is gone
    artifacts_name: str = "artifacts"  # the store's artifacts folder beside it (Store.artifacts_name)


class RecordingStore(ArtifactPaths):
    """The part of Store a Runner uses, reading from a snapshot and recording every write.

    The driver claimed the cell before sending it, so a claim here only checks the snapshot.
    """

    def __init__(self, path: str, known: dict[str, dict], artifacts_name: str = "artifacts"):
        self.path = Path(path)
        self.artifacts_name = artifacts_name
        self.known = dict(known)
        self.ops: list[tuple[str, tuple]] = []

    def get(self, run_id: str) -> dict | None:
        return self.known.get(run_id)

    def status(self, run_id: str) -> str | None:
        row = self.known.get(run_id)
        return row["status"] if row else None

    def holder(self, run_id: str) -> str | None:
        return None

    def holds(self, run_id: str, owner: str) -> bool:
        """Whether the driver's claim stands, read from the store when this worker can see it (a local
        worker; a remote one cannot tell and trains on: the driver refuses its result if the claim is gone)."""
        import sqlite3

        try:
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
            try:
                row = conn.execute("SELECT owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return True
        return row is not None and row[0] == owner

    def claim(self, config: RunConfig, env: dict, owner: str, retry_failed: bool = False, rerun: bool = False) -> str:
        status = self.status(config.run_id)
        if rerun and status not in (None, "running"):
            return "rerun"
        if status == "done" or (status in ("failed", "diverged") and not retry_failed):
            return status
        self.ops.append(("update_env", (config.run_id, env)))
        return "claimed"

    def keep_alive(self, owner: str) -> None:
        pass  # the driver renews its claims

    def finish_run(
        self,
        run_id: str,
        status: str,
        results: dict,
        wall_s: float | None,
        owner: str,
        env: dict | None = None,
        stats: list | None = None,
    ) -> bool:
        self.ops.append(("finish_run", (run_id, status, results, wall_s, env, stats)))
        self.known[run_id] = {"run_id": run_id, "status": status, "results": results}
        return True

    def remove_checkpoints(self, run_id: str) -> None:
        self.ops.append(("remove_checkpoints", (run_id,)))

    def release(self, run_id: str, owner: str) -> None:
        self.ops.append(("release", (run_id,)))

    def log_stats(self, run_id: str, rows: list) -> None:
        if rows:
            self.ops.append(("log_stats", (run_id, list(rows))))


def apply_ops(store: Store, ops: list[tuple[str, tuple]], owner: str) -> None:
    """Make a worker's recorded writes, under the driver's claim `owner`."""
    finished: dict[str, bool] = {}
    for name, args in ops:
        if name == "update_env":
            store.update_env(args[0], args[1], owner)
        elif name == "finish_run":
            run_id, status, results, wall_s, env, stats = args
            finished[run_id] = store.finish_run(run_id, status, results, wall_s, owner, env=env, stats=stats)
        elif name == "release":
            store.release(args[0], owner)
        elif name == "remove_checkpoints":
            if finished.get(args[0]):  # only once the outcome is committed
                store.remove_checkpoints(*args)
        else:
            getattr(store, name)(*args)


_busy = False  # this worker is running a cell
_watching = False  # this worker's parent watch has started


def _watch_parent(parent_pid: int) -> None:
    """Stop this worker when its driver is gone: an idle worker exits at once; a running cell gets
    SIGTERM, which makes it checkpoint and stop (run_cell then exits), or is ended a minute later."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        if _busy:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="sparsebench-parent-watch").start()


def run_cell(job: CellJob) -> tuple[list, dict]:
    """Run one grid cell in a worker; returns (recorded store writes, outcome summary)."""
    import warnings

    import torch

    from sparsebench.plugins import get_plugins

    warnings.filterwarnings("ignore")
    if job.threads:
        torch.set_num_threads(job.threads)
    sink = RecordingStore(job.store_path, job.known, job.artifacts_name)
    runner = Runner(
        sink,
        get_plugins(),
        device=job.device,
        data_dir=job.data_dir,
        inception_weights=job.inception_weights,
        progress=False,
        checkpoint_every=job.checkpoint_every,
        retry_failed=job.retry_failed,
        owner=job.owner,
        rerun=job.rerun,
    )
    try:
        runner.install_signal_handlers()  # SIGTERM from the driver: checkpoint and stop
    except ValueError:  # not the main thread (some Ray workers): the driver waits for the cell instead
        pass
    global _busy, _watching
    if job.parent_pid and not _watching:
        _watching = True
        _watch_parent(job.parent_pid)
    config = RunConfig.from_dict(job.config)
    _busy = True
    try:
        outcome = runner.run(config)
        summary = {"status": outcome.status, "results": outcome.results, "skipped": outcome.skipped}
    except Interrupted as exc:
        summary = {
            "status": "running",
            "results": {"interrupted_step": exc.step},
            "skipped": False,
            "interrupted": True,
        }
    except SparsebenchError as exc:
        summary = {"status": "failed", "results": {"error": str(exc)}, "skipped": False}
    finally:
        _busy = False
    if job.parent_pid and os.getppid() != job.parent_pid:  # the driver is gone: nobody takes the result
        os._exit(1)
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


def execute(
    configs: list[RunConfig],
    runner: Runner,
    store: RunStore,
    executor: str,
    jobs: int,
    address: str | None,
    on_start: Callable[[RunConfig, int, int], None],
    on_done: Callable[[RunConfig, Outcome], None],
) -> list[Outcome]:
    """Run `configs` with the chosen executor; the callbacks run in the driver.

    Cells another live process holds are left to it and looked at again once the rest is done
    (taken over if that process died), so several commands can share one grid.
    """
    if executor not in EXECUTORS:
        raise SparsebenchError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if executor == "local" and jobs <= 1:
        return _serial(configs, runner, on_start, on_done)
    assert isinstance(store, Store), "worker pools run in the driver, which holds the SQLite store"
    pool = _ray_pool(address, runner) if executor == "ray" else _ProcessPool(jobs)
    outcomes: list[Outcome] = []
    plan = waves(configs, runner)
    total, counter = sum(len(w) for w in plan), iter(range(1, 10**9))
    try:
        for wave in plan:
            outcomes += _run_wave(
                wave,
                runner,
                store,
                pool,
                jobs if executor == "local" else 10**9,
                executor,
                lambda cfg: on_start(cfg, next(counter), total),
                on_done,
                {c.run_id for c in configs},
            )
    finally:
        pool.close()
    return outcomes


def _serial(configs, runner: Runner, on_start, on_done) -> list[Outcome]:
    """One cell after another in this process, the runs others build on first (so no run trains
    another inside itself); those are reused, never rerun, unless the grid names them."""
    requested = {c.run_id for c in configs}
    plan = [cfg for wave in waves(configs, runner) for cfg in wave]
    out: list[Outcome] = []
    waiting: list[RunConfig] = []
    for i, cfg in enumerate(plan, 1):
        on_start(cfg, i, len(plan))
        outcome = runner.run(cfg, rerun=None if cfg.run_id in requested else False)
        on_done(cfg, outcome)
        if outcome.taken:
            waiting.append(cfg)
        else:
            out.append(outcome)
    for cfg in waiting:  # held by other processes: wait for them (or take over a dead one's claim)
        outcome = runner.run(cfg, wait=True, rerun=None if cfg.run_id in requested else False)
        on_done(cfg, outcome)
        out.append(outcome)
    return out


def _run_wave(
    wave, runner: Runner, store: Store, pool, slots: int, executor: str, on_start, on_done, requested: set[str]
):
    from concurrent.futures import FIRST_COMPLETED, wait

    outcomes: list[Outcome] = []
    queue, waiting, inflight = list(wave), [], {}
    reruns: set[str] = set()
    announced: set[str] = set()
    retried: set[str] = set()  # cells whose worker died once
    while queue or waiting or inflight:
        if runner.stop:
            pool.interrupt()
        while queue and len(inflight) < slots and not runner.stop:
            cfg = queue.pop(0)
            decision = runner.claim(cfg, rerun=None if cfg.run_id in requested else False)
            if decision == "taken":
                if cfg.run_id not in announced:
                    announced.add(cfg.run_id)
                    outcome = Outcome(cfg.run_id, cfg, "running", {"owner": store.holder(cfg.run_id)}, True, True)
                    on_done(cfg, outcome)
                waiting.append(cfg)
                continue
            if cfg.run_id not in retried:
                on_start(cfg)
            if decision not in ("claimed", "rerun"):
                row = store.get(cfg.run_id)
                outcome = Outcome(cfg.run_id, cfg, decision, row["results"] if row else {}, skipped=True)
                runner._record(outcome)
                on_done(cfg, outcome)
                outcomes.append(outcome)
                continue
            known = {r["run_id"]: r for r in (store.get(i) for i in _dep_ids(cfg, runner) + [cfg.run_id]) if r}
            job = CellJob(
                cfg.to_dict(),
                str(store.path),
                known,
                str(runner.device),
                runner.data_dir,
                runner.inception_weights,
                runner.checkpoint_every,
                runner.retry_failed,
                decision == "rerun",
                threads=cfg.threads,
                owner=runner.owner,
                parent_pid=os.getpid() if executor == "local" else 0,
                artifacts_name=store.artifacts_name,
            )
            if decision == "rerun":  # from scratch: the worker only records its store writes
                store.remove_checkpoints(cfg.run_id)
                reruns.add(cfg.run_id)
            inflight[pool.submit(job)] = cfg
        if not inflight:
            if runner.stop:
                break
            if waiting and not queue:  # only cells others hold are left: look again in a while
                time.sleep(POLL_S)
                queue, waiting = waiting, []
            continue
        done, _ = wait(list(inflight), timeout=0.5, return_when=FIRST_COMPLETED)
        for future in done:
            cfg = inflight.pop(future)
            try:
                ops, summary = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died costs its own cell only, the grid goes on
                if cfg.run_id not in retried and not runner.stop:  # tried once more, from its checkpoint
                    retried.add(cfg.run_id)
                    log.warning("run %s: %s; trying it once more", cfg.run_id, exc)
                    queue.insert(0, cfg)
                    continue
                error = f"worker died: {exc}" + (" (also when tried again)" if cfg.run_id in retried else "")
                ops, summary = [], {"status": "failed", "results": {"error": error}, "skipped": False}
                if cfg.run_id in reruns:  # the outcome stored before the rerun stays
                    store.release(cfg.run_id, runner.owner)
                else:
                    store.finish_run(cfg.run_id, "failed", summary["results"], None, runner.owner)
            apply_ops(store, ops, runner.owner)
            if summary.get("interrupted"):
                continue
            outcome = runner._record(
                Outcome(cfg.run_id, cfg, summary["status"], summary["results"], summary["skipped"])
            )
            on_done(cfg, outcome)
            outcomes.append(outcome)
    if runner.stop:
        raise GridInterrupted(0)
    return outcomes


def _dep_ids(cfg: RunConfig, runner: Runner) -> list[str]:
    return [runner.dependency(cfg, d).run_id for d in runner.plugins.methods.get(cfg.method).requires]


class WorkerDied(RuntimeError):
    """A worker process ended without returning its cell's result (killed, or exited inside a plugin)."""

    def __init__(self, exitcode: int | None):
        import signal

        if exitcode is not None and exitcode < 0:
            try:
                how = f"was killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"was killed by signal {-exitcode}"
        else:
            how = f"exited with code {exitcode}"
        super().__init__(f"the worker process training this cell {how} before returning its result")


def _cell_process(job: CellJob, conn) -> None:
    """A worker process's body: one cell, its result sent back through `conn`."""
    try:
        result: tuple[str, Any] = ("ok", run_cell(job))
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, which stores the cell's outcome
        result = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(result)
    conn.close()


class _ProcessPool:
    """One spawned worker process per cell (so no state is inherited, and a worker that dies costs
    only its own cell: the other cells' processes go on); SIGTERM is forwarded to them on stop."""

    def __init__(self, jobs: int):
        import multiprocessing

        self.mp = multiprocessing.get_context("spawn")
        self.procs: set[Any] = set()  # the live worker processes
        self.signalled = False

    def submit(self, job: CellJob):
        import threading
        from concurrent.futures import Future

        receiver, sender = self.mp.Pipe(duplex=False)
        proc = self.mp.Process(target=_cell_process, args=(job, sender), name="sparsebench-cell")
        proc.start()
        sender.close()
        self.procs.add(proc)
        future: Future = Future()
        future.set_running_or_notify_cancel()

        def collect() -> None:
            try:
                kind, value = receiver.recv()
            except (EOFError, OSError):
                kind, value = "died", None
            proc.join()
            self.procs.discard(proc)
            if kind == "ok":
                future.set_result(value)
            elif kind == "error":
                future.set_exception(RuntimeError(value))
            else:
                future.set_exception(WorkerDied(proc.exitcode))

        threading.Thread(target=collect, daemon=True, name="sparsebench-cell-result").start()
        return future

    def interrupt(self) -> None:
        """Ask every running cell to checkpoint and stop (once)."""
        import signal

        if not self.signalled:
            self.signalled = True
            for proc in list(self.procs):
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)

    def close(self) -> None:
        """Cells still running (the driver stopped on an error) checkpoint and stop; wait for them."""
        self.interrupt()
        for proc in list(self.procs):
            proc.join()


def _ray_pool(address: str | None, runner: Runner):
    try:
        import ray
    except ImportError:
        raise SparsebenchError("the ray executor needs Ray: pip install 'sparsebench[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},
        )
    gpus = 1 if runner.device.type == "cuda" else 0
    remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(run_cell)

    class RayPool:
        """Ray tasks as futures; on stop, cells already running finish (no new ones start)."""

        def submit(self, job: CellJob):
            return remote.remote(job).future()

        def interrupt(self) -> None:
            pass

        def close(self) -> None:
            if started:
                ray.shutdown()

    return RayPool()

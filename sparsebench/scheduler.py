"""The scheduler of a grid: which cell runs when and where, under whose claim.

It alone claims cells in the store (`sparsebench.store.claims`): a cell another live process holds is left
to it and looked at again once the rest is done (taken over if that process died), so several commands can
share one grid; failed cells are retried only on request; a rerun holds a finished cell until its new outcome
replaces the old. Cells that build on other runs (PF and GAN Tickets on the dense run) are scheduled after
those runs, so a dependency is trained once, not once per worker.

Where a claimed cell trains: `local` with one job in this process (`Runner.train` with a `StoreSink`); `local`
with several jobs, and `ray`, in a worker, which never writes the SQLite store: it records the writes it
would make (`RecordingSink`) and sends them back with its result, and the scheduler makes them under its
claim. Model weights go to the store's artifacts folder, which workers must see (local disk, or a shared
filesystem on a cluster). Under torchrun every rank runs the same schedule; rank 0 claims and writes for the
group, the other ranks train through a `FollowerSink`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sparsebench import SparsebenchError, distributed
from sparsebench.config import RunConfig
from sparsebench.dependencies import dependencies
from sparsebench.resources import environment
from sparsebench.runner import Outcome, Runner
from sparsebench.settings import RunSettings
from sparsebench.store import Store, process_owner
from sparsebench.store.sinks import FollowerSink, RecordingSink, Snapshot, StoreSink, apply_ops
from sparsebench.train.loop import Interrupted

log = logging.getLogger("sparsebench.run")
POLL_S = 2.0  # seconds between looks at a cell another process holds


class GridInterrupted(Interrupted):
    """The grid stopped on request; every running cell checkpointed first."""

    def __str__(self) -> str:
        return "interrupted; every cell that was running saved a checkpoint"


@dataclass
class CellJob:
    """One claimed cell, as a worker gets it."""

    config: dict
    store_path: str
    known: dict[str, dict]  # run_id -> stored row, for the runs this cell builds on
    settings: RunSettings
    rerun: bool = False  # the scheduler holds this finished cell to train it again
    owner: str = ""  # the scheduler's claim on this cell, which the worker trains under
    parent_pid: int = 0  # a local worker stops (checkpointing) when this process is gone
    artifacts_name: str = "artifacts"  # the store's artifacts folder beside it (Store.artifacts_name)


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
    """Run one claimed cell in a worker; returns (recorded store writes, outcome summary)."""
    import warnings

    import torch

    from sparsebench.plugins import get_plugins

    warnings.filterwarnings("ignore")
    config = RunConfig.from_dict(job.config)
    torch.set_num_threads(config.threads)
    sink = RecordingSink(config.run_id, job.store_path, job.artifacts_name, job.owner)
    reader = Snapshot(job.store_path, job.known, job.artifacts_name)
    runner = Runner(get_plugins(), job.settings.replace(progress=False))
    try:
        runner.install_signal_handlers()  # SIGTERM from the scheduler: checkpoint and stop
    except ValueError:  # not the main thread (some Ray workers): the scheduler waits for the cell instead
        pass
    global _busy, _watching
    if job.parent_pid and not _watching:
        _watching = True
        _watch_parent(job.parent_pid)
    _busy = True
    try:
        outcome = runner.train(config, sink, reader, job.rerun)
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
    if job.parent_pid and os.getppid() != job.parent_pid:  # the scheduler is gone: nobody takes the result
        os._exit(1)
    return sink.ops, summary


class Scheduler:
    """Runs a grid's cells on `store` with `runner`, claiming each under `owner`; `outcomes` holds every run
    looked at (the runs cells build on included), one per run id, the latest."""

    def __init__(self, store: Any, runner: Runner, owner: str | None = None):
        self.store, self.runner, self.settings = store, runner, runner.settings
        self.plugins = runner.plugins
        self.owner = owner or process_owner()
        self.leader = distributed.rank() == 0
        self.outcomes: list[Outcome] = []

    # -- claims ---------------------------------------------------------------------------------
    def claim(self, config: RunConfig, wait: bool = False, rerun: bool | None = None) -> str:
        """The store's decision on `config` for this scheduler (see `Store.claim`), rank 0's under torchrun;
        with `wait`, a cell another process holds is waited for until it is done or its claim goes stale."""
        rerun = self.settings.rerun if rerun is None else rerun
        while True:
            decision = "claimed"  # a placeholder on the other ranks: rank 0's decision is broadcast
            if self.leader:
                env = environment(self.runner.device, config)
                decision = self.store.claim(config, env, self.owner, self.settings.retry_failed, rerun)
            if distributed.world_size() > 1:
                decision = distributed.broadcast_object(decision)
            if decision in ("claimed", "rerun") and self.leader:
                self.store.keep_alive(self.owner)
            if decision != "taken" or not wait:
                return decision
            if self.runner.stop:
                raise Interrupted(0)
            time.sleep(POLL_S)

    def holder(self, run_id: str) -> dict:
        return {"owner": self.store.holder(run_id) if self.leader else None}

    def record(self, outcome: Outcome) -> Outcome:
        """Keep one outcome per run id, the latest (a cell first found taken may be finished later)."""
        self.outcomes = [o for o in self.outcomes if o.run_id != outcome.run_id] + [outcome]
        return outcome

    # -- one cell in this process -----------------------------------------------------------------
    def run_one(self, config: RunConfig, wait: bool = False, rerun: bool | None = None) -> Outcome:
        """Claim and train `config` here, after the runs it builds on (each trained first when missing, waited
        for when another process holds it)."""
        for dep in dependencies(config, self.plugins):
            self.run_one(dep, wait=True, rerun=False)
        run_id = config.run_id
        decision = self.claim(config, wait, rerun)
        if decision == "taken":
            return self.record(Outcome(run_id, config, "running", self.holder(run_id), skipped=True, taken=True))
        if decision not in ("claimed", "rerun"):
            stored = self.store.get(run_id)
            return self.record(Outcome(run_id, config, decision, stored["results"] if stored else {}, skipped=True))
        if decision == "rerun" and self.leader:  # from scratch: its old checkpoints go
            self.store.remove_checkpoints(run_id)
        sink = StoreSink(self.store, run_id, self.owner) if self.leader else FollowerSink(self.store, run_id)
        outcome = self.runner.train(config, sink, self.store, rerun=decision == "rerun")
        if outcome.taken:
            outcome.results = self.holder(run_id)
        return self.record(outcome)

    # -- a grid -----------------------------------------------------------------------------------
    def waves(self, configs: list[RunConfig]) -> list[list[RunConfig]]:
        """Dependencies first: wave 0 holds the runs others build on, wave 1 the rest."""
        first: dict[str, RunConfig] = {}
        for cfg in configs:
            for dep in dependencies(cfg, self.plugins):
                first.setdefault(dep.run_id, dep)
        rest = [c for c in configs if c.run_id not in first]
        return [list(first.values()), rest]

    def run(
        self,
        configs: list[RunConfig],
        on_start: Callable[[RunConfig, int, int], None],
        on_done: Callable[[RunConfig, Outcome], None],
    ) -> list[Outcome]:
        """Run `configs` where the settings say; the callbacks run in this process."""
        if not self.settings.pooled:
            return self._serial(configs, on_start, on_done)
        assert isinstance(self.store, Store), "worker pools run in the scheduler, which holds the SQLite store"
        pool = _ray_pool(self.settings) if self.settings.executor == "ray" else _ProcessPool(self.settings.jobs)
        outcomes: list[Outcome] = []
        plan = self.waves(configs)
        total, counter = sum(len(w) for w in plan), iter(range(1, 10**9))
        slots = self.settings.jobs if self.settings.executor == "local" else 10**9
        try:
            for wave in plan:
                outcomes += self._run_wave(
                    wave, pool, slots, lambda cfg: on_start(cfg, next(counter), total), on_done,
                    {c.run_id for c in configs},
                )  # fmt: skip
        finally:
            pool.close()
        return outcomes

    def _serial(self, configs: list[RunConfig], on_start, on_done) -> list[Outcome]:
        """One cell after another in this process, the runs others build on first; those are reused, never
        rerun, unless the grid names them."""
        requested = {c.run_id for c in configs}
        plan = [cfg for wave in self.waves(configs) for cfg in wave]
        out: list[Outcome] = []
        waiting: list[RunConfig] = []
        for i, cfg in enumerate(plan, 1):
            on_start(cfg, i, len(plan))
            outcome = self.run_one(cfg, rerun=None if cfg.run_id in requested else False)
            on_done(cfg, outcome)
            if outcome.taken:
                waiting.append(cfg)
            else:
                out.append(outcome)
        for cfg in waiting:  # held by other processes: wait for them (or take over a dead one's claim)
            outcome = self.run_one(cfg, wait=True, rerun=None if cfg.run_id in requested else False)
            on_done(cfg, outcome)
            out.append(outcome)
        return out

    def _run_wave(self, wave, pool, slots: int, on_start, on_done, requested: set[str]) -> list[Outcome]:
        from concurrent.futures import FIRST_COMPLETED, wait

        store, runner = self.store, self.runner
        outcomes: list[Outcome] = []
        queue: list[RunConfig] = list(wave)
        waiting: list[RunConfig] = []
        inflight: dict[Any, RunConfig] = {}
        reruns: set[str] = set()
        announced: set[str] = set()
        retried: set[str] = set()  # cells whose worker died once
        while queue or waiting or inflight:
            if runner.stop:
                pool.interrupt()
            while queue and len(inflight) < slots and not runner.stop:
                cfg = queue.pop(0)
                decision = self.claim(cfg, rerun=None if cfg.run_id in requested else False)
                if decision == "taken":
                    if cfg.run_id not in announced:
                        announced.add(cfg.run_id)
                        on_done(cfg, Outcome(cfg.run_id, cfg, "running", self.holder(cfg.run_id), True, True))
                    waiting.append(cfg)
                    continue
                if cfg.run_id not in retried:
                    on_start(cfg)
                if decision not in ("claimed", "rerun"):
                    row = store.get(cfg.run_id)
                    outcome = self.record(
                        Outcome(cfg.run_id, cfg, decision, row["results"] if row else {}, skipped=True)
                    )
                    on_done(cfg, outcome)
                    outcomes.append(outcome)
                    continue
                deps = [d.run_id for d in dependencies(cfg, self.plugins)]
                known = {r["run_id"]: r for r in (store.get(i) for i in deps + [cfg.run_id]) if r}
                job = CellJob(
                    cfg.to_dict(),
                    str(store.path),
                    known,
                    self.settings,
                    decision == "rerun",
                    owner=self.owner,
                    parent_pid=os.getpid() if self.settings.executor == "local" else 0,
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
                except Exception as exc:  # noqa: BLE001 - a worker that died costs its own cell only
                    if cfg.run_id not in retried and not runner.stop:  # tried once more, from its checkpoint
                        retried.add(cfg.run_id)
                        log.warning("run %s: %s; trying it once more", cfg.run_id, exc)
                        queue.insert(0, cfg)
                        continue
                    error = f"worker died: {exc}" + (" (also when tried again)" if cfg.run_id in retried else "")
                    ops, summary = [], {"status": "failed", "results": {"error": error}, "skipped": False}
                    if cfg.run_id in reruns:  # the outcome stored before the rerun stays
                        store.release(cfg.run_id, self.owner)
                    else:
                        store.finish_run(cfg.run_id, "failed", summary["results"], None, self.owner)
                apply_ops(store, ops, self.owner)
                if summary.get("interrupted"):
                    continue
                outcome = self.record(
                    Outcome(cfg.run_id, cfg, summary["status"], summary["results"], summary["skipped"])
                )
                on_done(cfg, outcome)
                outcomes.append(outcome)
        if runner.stop:
            raise GridInterrupted(0)
        return outcomes


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


def _ray_pool(settings: RunSettings):
    try:
        import ray
    except ImportError:
        raise SparsebenchError("the ray executor needs Ray: pip install 'sparsebench[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=settings.address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},
        )
    gpus = 1 if settings.device.startswith("cuda") else 0
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

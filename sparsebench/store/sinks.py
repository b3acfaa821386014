"""Sinks: where one claimed run writes its statistics and its outcome.

The scheduler of a grid claims each cell in the store (`sparsebench.store.claims`) and hands the run a sink
bound to it: `StoreSink` writes to the store under the scheduler's claim (a run in the scheduler's process);
`RecordingSink` records the writes for the scheduler to make (a run in a worker process or a Ray task: SQLite
is never written from another machine or over a network filesystem); `FollowerSink` drops them (a non-zero
rank under torchrun, whose rank 0 writes for the group). A run reads the runs it builds on through a
`RunReader`: the store, or the rows the scheduler sent with the cell.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from sparsebench.store.database import LEGACY_ARTIFACTS, ArtifactPaths


class RunSink(Protocol):
    """What a run writes, under the claim of the scheduler that started it."""

    run_id: str

    def run_dir(self) -> Path: ...  # the run's folder of checkpoints and weights (created)
    def holds(self) -> bool: ...  # whether the claim still stands (a paused process may have lost it)
    def started(self, env: dict) -> None: ...  # the environment the run trains in
    def log_stats(self, rows: list[tuple[int, str, float]]) -> None: ...
    def finish(
        self, status: str, results: dict, wall_s: float | None, env: dict | None = None, stats: list | None = None
    ) -> bool: ...  # the outcome ("running": interrupted); env, stats: a rerun's, replacing the old outcome's
    def release(self) -> None: ...  # give the claim up, leaving the stored row (an interrupted rerun)
    def remove_checkpoints(self) -> None: ...  # after the outcome is committed


class RunReader(Protocol):
    """What a run reads of the runs it builds on."""

    def get(self, run_id: str) -> dict | None: ...
    def run_dir(self, run_id: str) -> Path: ...


class StoreSink:
    """Writes to the store, under `owner`'s claim."""

    def __init__(self, store: Any, run_id: str, owner: str):
        self.store, self.run_id, self.owner = store, run_id, owner

    def run_dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    def holds(self) -> bool:
        return self.store.holds(self.run_id, self.owner)

    def started(self, env: dict) -> None:
        self.store.update_env(self.run_id, env, self.owner)

    def log_stats(self, rows: list[tuple[int, str, float]]) -> None:
        self.store.log_stats(self.run_id, rows)

    def finish(
        self, status: str, results: dict, wall_s: float | None, env: dict | None = None, stats: list | None = None
    ) -> bool:
        return self.store.finish_run(self.run_id, status, results, wall_s, self.owner, env=env, stats=stats)

    def release(self) -> None:
        self.store.release(self.run_id, self.owner)

    def remove_checkpoints(self) -> None:
        self.store.remove_checkpoints(self.run_id)


class Snapshot(ArtifactPaths):
    """The rows the scheduler sent with a cell (the runs it may build on), beside the store at `path`."""

    def __init__(self, path: str | Path, known: dict[str, dict], artifacts_name: str = LEGACY_ARTIFACTS):
        self.path = Path(path)
        self.artifacts_name = artifacts_name
        self.known = dict(known)

    def get(self, run_id: str) -> dict | None:
        return self.known.get(run_id)


class RecordingSink:
    """Records a run's writes in `ops`, for the scheduler to make under its claim (`apply_ops`)."""

    def __init__(self, run_id: str, store_path: str | Path, artifacts_name: str = LEGACY_ARTIFACTS, owner: str = ""):
        self.run_id, self.owner = run_id, owner
        self.paths = Snapshot(store_path, {}, artifacts_name)
        self.ops: list[tuple[str, tuple]] = []

    def run_dir(self) -> Path:
        return self.paths.run_dir(self.run_id)

    def holds(self) -> bool:
        """Whether the scheduler's claim stands, read from the store when this worker can see it (a local
        worker; a remote one cannot tell and trains on: the scheduler refuses its result if the claim is gone)."""
        try:
            uri = f"{self.paths.path.absolute().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30)
            try:
                row = conn.execute("SELECT owner FROM runs WHERE run_id = ?", (self.run_id,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return True
        return row is not None and row[0] == self.owner

    def started(self, env: dict) -> None:
        self.ops.append(("update_env", (self.run_id, env)))

    def log_stats(self, rows: list[tuple[int, str, float]]) -> None:
        if rows:
            self.ops.append(("log_stats", (self.run_id, list(rows))))

    def finish(
        self, status: str, results: dict, wall_s: float | None, env: dict | None = None, stats: list | None = None
    ) -> bool:
        self.ops.append(("finish_run", (self.run_id, status, results, wall_s, env, stats)))
        return True

    def release(self) -> None:
        self.ops.append(("release", (self.run_id,)))

    def remove_checkpoints(self) -> None:
        self.ops.append(("remove_checkpoints", (self.run_id,)))


class FollowerSink:
    """A non-zero rank's sink under torchrun: rank 0 writes and holds the claim for the whole group."""

    def __init__(self, paths: ArtifactPaths, run_id: str):
        self.paths, self.run_id = paths, run_id

    def run_dir(self) -> Path:
        return self.paths.run_dir(self.run_id)

    def holds(self) -> bool:
        return True

    def started(self, env: dict) -> None:
        pass

    def log_stats(self, rows: list[tuple[int, str, float]]) -> None:
        pass

    def finish(
        self, status: str, results: dict, wall_s: float | None, env: dict | None = None, stats: list | None = None
    ) -> bool:
        return True

    def release(self) -> None:
        pass

    def remove_checkpoints(self) -> None:
        pass


def apply_ops(store: Any, ops: list[tuple[str, tuple]], owner: str) -> None:
    """Make a worker's recorded writes, under the scheduler's claim `owner`."""
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
        elif name == "log_stats":
            store.log_stats(*args)
        else:
            raise ValueError(f"unknown store write {name!r}")

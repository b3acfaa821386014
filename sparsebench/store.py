"""The results store: one SQLite file (WAL mode, versioned schema) holding every run.

Each write is one short transaction, so several `sparsebench run` processes can share a store.
Model weights live beside it in `artifacts/<run_id>/`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from sparsebench import SparsebenchError

SCHEMA_VERSION = 1
DEFAULT_STORE = "sparsebench-results/results.db"
STATUSES = ("running", "done", "failed", "diverged")

RESULT_COLUMNS = [
    "run_id", "method", "arch", "dataset", "preset", "sg", "sd", "seed", "status",
    "density_g", "density_d", "fid", "is_mean", "is_std", "train_flops", "test_flops",
    "train_flops_rel", "test_flops_rel", "wall_s",
]
EXTRA_COLUMNS = [
    "kid_mean", "kid_std", "precision", "recall", "fid_floor", "exploration_rate", "reached_sg",
    "rounds", "pruned_from", "scope", "opt_state", "eval_weights", "extractor", "extractor_accuracy",
    "eval_samples", "steps", "diverged_step", "interrupted_step", "variant", "error",
]
INT_COLUMNS = ["seed", "rounds", "eval_samples", "steps", "diverged_step", "interrupted_step"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    method TEXT NOT NULL, arch TEXT NOT NULL, dataset TEXT NOT NULL, preset TEXT NOT NULL,
    sg REAL NOT NULL, sd REAL NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '{}',
    env TEXT NOT NULL DEFAULT '{}',
    wall_s REAL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, step, key)
);
"""


def default_store_path() -> Path:
    return Path(os.environ.get("SPARSEBENCH_STORE") or DEFAULT_STORE)


class ArtifactPaths:
    """Where a store at `self.path` keeps model weights: `artifacts/<run_id>/` beside it."""

    path: Path

    @property
    def artifacts_dir(self) -> Path:
        return self.path.parent / "artifacts"

    def run_dir(self, run_id: str) -> Path:
        d = self.artifacts_dir / run_id
        d.mkdir(parents=True, exist_ok=True)
        return d


class Store(ArtifactPaths):
    """A results store at `path` (created on first use)."""

    def __init__(self, path: str | os.PathLike | None = None, readonly: bool = False):
        self.path = Path(path) if path is not None else default_store_path()
        hint = "pass --store PATH or set SPARSEBENCH_STORE to a writable location"
        if readonly:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=120, isolation_level=None)
            return
        if self.path.is_dir():
            raise SparsebenchError(f"results store {self.path} is a directory; {hint}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path.parent, os.W_OK) or (
                self.path.exists() and not os.access(self.path, os.W_OK)
            ):
                raise PermissionError("permission denied")
            self.conn = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 120000")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise SparsebenchError(
                f"{self.path} is not a sparsebench results store (not a SQLite database: {exc}); {hint}"
            ) from None
        except OSError as exc:
            raise SparsebenchError(f"cannot write results store {self.path}: {exc.strerror or exc}; {hint}") from None

    # -- schema -------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - filesystems without shared memory
            raise sqlite3.DatabaseError(f"cannot enable WAL mode (got {mode})")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self.conn.execute(stmt)
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise SparsebenchError(
                    f"results store {self.path} has schema version {row[0]}, this sparsebench reads "
                    f"version {SCHEMA_VERSION}; use another --store"
                )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    # -- writes (each one short transaction) ----------------------------------------------------
    def _write(self, sql: str, params: Iterable[Any] = ()) -> None:
        for attempt in range(20):
            try:
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    self.conn.execute(sql, tuple(params))
                    return
            except sqlite3.OperationalError as exc:  # pragma: no cover - only under heavy contention
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise SparsebenchError(f"results store {self.path} stayed locked; try again")

    def start_run(self, config, env: dict) -> None:
        now = time.time()
        self._write(
            """INSERT INTO runs (run_id, method, arch, dataset, preset, sg, sd, seed, status, config,
                                 results, env, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, '{}', ?, ?, ?)
               ON CONFLICT(run_id) DO UPDATE SET status = 'running', env = excluded.env,
                                                 updated_at = excluded.updated_at""",
            (config.run_id, config.method, config.arch, config.dataset, config.preset, config.sg,
             config.sd, config.seed, json.dumps(config.to_dict(), sort_keys=True), json.dumps(env), now, now),
        )

    def finish_run(self, run_id: str, status: str, results: dict, wall_s: float | None) -> None:
        if status not in STATUSES:
            raise ValueError(f"bad status {status!r}")
        self._write(
            "UPDATE runs SET status = ?, results = ?, wall_s = ?, updated_at = ? WHERE run_id = ?",
            (status, json.dumps(results, sort_keys=True, default=float), wall_s, time.time(), run_id),
        )

    def log_stats(self, run_id: str, rows: list[tuple[int, str, float]]) -> None:
        if not rows:
            return
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR REPLACE INTO stats VALUES (?, ?, ?, ?)", [(run_id, s, k, v) for s, k, v in rows]
            )

    # -- reads ----------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict | None:
        row = self.conn.execute(
            "SELECT run_id, status, config, results, env, wall_s FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        return {
            "run_id": row[0], "status": row[1], "config": json.loads(row[2]),
            "results": json.loads(row[3]), "env": json.loads(row[4]), "wall_s": row[5],
        }

    def find(self, prefix: str) -> dict | None:
        rows = self.conn.execute("SELECT run_id FROM runs WHERE run_id LIKE ?", (prefix + "%",)).fetchall()
        if len(rows) > 1:
            raise SparsebenchError(f"run id prefix {prefix!r} is ambiguous ({len(rows)} runs); give more characters")
        return self.get(rows[0][0]) if rows else None

    def status(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def stats(self, run_id: str) -> list[tuple[int, str, float]]:
        return self.conn.execute(
            "SELECT step, key, value FROM stats WHERE run_id = ? ORDER BY step, key", (run_id,)
        ).fetchall()

    def stats_rows(self, keys: list[str]) -> list[tuple[str, int, str, float]]:
        """(run_id, step, key, value) for every run and the given keys."""
        marks = ",".join("?" * len(keys))
        return self.conn.execute(
            f"SELECT run_id, step, key, value FROM stats WHERE key IN ({marks}) ORDER BY run_id, step", keys
        ).fetchall()

    def all_runs(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT run_id, method, arch, dataset, preset, sg, sd, seed, status, results, wall_s, config "
            "FROM runs ORDER BY created_at"
        ).fetchall()
        return [
            {"run_id": r[0], "method": r[1], "arch": r[2], "dataset": r[3], "preset": r[4], "sg": r[5],
             "sd": r[6], "seed": r[7], "status": r[8], "results": json.loads(r[9]), "wall_s": r[10],
             "config": json.loads(r[11])}
            for r in rows
        ]

    def results_table(self) -> list[dict]:
        """The flat results table: one row per run, RESULT_COLUMNS then EXTRA_COLUMNS."""
        table = []
        for run in self.all_runs():
            res = run["results"]
            row = {c: None for c in RESULT_COLUMNS + EXTRA_COLUMNS}
            row.update({k: run[k] for k in ("run_id", "method", "arch", "dataset", "preset", "sg", "sd",
                                            "seed", "status", "wall_s")})
            for key in RESULT_COLUMNS + EXTRA_COLUMNS:
                if key in res and key not in ("run_id", "status", "wall_s"):
                    row[key] = res[key]
            row["steps"] = run["config"]["train"]["steps"]
            row["scope"] = run["config"].get("scope")
            row["opt_state"] = run["config"].get("opt_state", "zero")  # stored before the choice existed: zero
            table.append(row)
        return table


class FollowerStore:
    """Reads through to a store; writes are dropped (rank 0 writes for the whole process group)."""

    def __init__(self, store: Store):
        self._store = store
        self.path = store.path

    def __getattr__(self, name):
        return getattr(self._store, name)

    def start_run(self, *args, **kwargs) -> None:
        pass

    def finish_run(self, *args, **kwargs) -> None:
        pass

    def log_stats(self, *args, **kwargs) -> None:
        pass

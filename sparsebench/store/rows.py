"""The rows of a results store: writing a run's outcome and logged statistics, and reading runs back.

Each write is one short transaction (`Database._transaction`); only the owner of a `running` row can finish
it, so a late failure never replaces `done`."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sparsebench import SparsebenchError
from sparsebench.compat import current_balance_ratios, without_stale_balance_ratios
from sparsebench.config import check_run_id
from sparsebench.store.database import STATUSES

log = logging.getLogger("sparsebench.store")


def _insert_stats(conn: sqlite3.Connection, run_id: str, rows: Iterable[tuple[int, str, float]]) -> None:
    """Logged (step, key, value) rows of a run; a row logged again at its step replaces the old one."""
    conn.executemany("INSERT OR REPLACE INTO stats VALUES (?, ?, ?, ?)", [(run_id, s, k, v) for s, k, v in rows])


class RowsMixin:
    """The reads and writes of a `Store`'s rows (see the module docstring)."""

    path: Path
    conn: sqlite3.Connection
    artifacts_dir: Path
    _transaction: Callable[[Callable[[sqlite3.Connection], Any]], Any]
    _write: Callable[..., int]

    def update_env(self, run_id: str, env: dict, owner: str) -> None:
        self._write("UPDATE runs SET env = ? WHERE run_id = ? AND owner = ?", (json.dumps(env), run_id, owner))

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
        """Store a run's outcome and release its claim; only the claim's owner can (returns whether it did).

        `status` "running" stores an interrupted run, left for the next command to resume. A rerun's
        claim holds a finished row, which its own outcome replaces, in one transaction with the rerun's
        `env` and its logged `stats` (every statistic of the old outcome goes): the row never shows one
        run's results beside another's environment or curves.
        """
        if status not in STATUSES:
            raise ValueError(f"bad status {status!r}")

        def body(conn: sqlite3.Connection) -> int:
            changed = conn.execute(
                """UPDATE runs SET status = ?, results = ?, wall_s = ?, updated_at = ?, owner = NULL,
                                   lease_until = NULL, env = COALESCE(?, env)
                   WHERE run_id = ? AND owner = ?""",
                (
                    status,
                    json.dumps(results, sort_keys=True, default=float),
                    wall_s,
                    time.time(),
                    None if env is None else json.dumps(env),
                    run_id,
                    owner,
                ),
            ).rowcount
            if changed and stats is not None:
                conn.execute("DELETE FROM stats WHERE run_id = ?", (run_id,))
                _insert_stats(conn, run_id, stats)
            return changed

        changed = self._transaction(body)
        if not changed:
            log.warning(
                "run %s is no longer held by this process (taken over or finished elsewhere); "
                "its %s result is not stored",
                run_id,
                status,
            )
        return bool(changed)

    def release(self, run_id: str, owner: str) -> None:
        """Give up a claim that never started training (a row it created is removed again)."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM runs WHERE run_id = ? AND owner = ? AND status = 'running' AND results = '{}'"
                " AND NOT EXISTS (SELECT 1 FROM stats WHERE stats.run_id = runs.run_id)",
                (run_id, owner),
            )
            conn.execute(
                "UPDATE runs SET owner = NULL, lease_until = NULL WHERE run_id = ? AND owner = ?", (run_id, owner)
            )

        self._transaction(body)

    def remove_checkpoints(self, run_id: str) -> None:
        """A finished run's phase checkpoints are spent: delete them (after its row is committed)."""
        for path in (self.artifacts_dir / check_run_id(run_id)).glob("checkpoint-*.pt"):
            path.unlink(missing_ok=True)

    def log_stats(self, run_id: str, rows: list[tuple[int, str, float]]) -> None:
        if not rows:
            return
        self._transaction(lambda conn: _insert_stats(conn, run_id, rows))

    # -- reads ----------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict | None:
        row = self.conn.execute(
            "SELECT run_id, status, config, results, env, wall_s FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        env = json.loads(row[4])
        return {
            "run_id": row[0],
            "status": row[1],
            "config": json.loads(row[2]),
            "results": without_stale_balance_ratios(json.loads(row[3]), env),
            "env": env,
            "wall_s": row[5],
        }

    def find(self, prefix: str) -> dict | None:
        """The run whose id starts with `prefix` (its characters taken literally, `_` and `%` too)."""
        prefix = prefix.lower()
        if not prefix or not all(c in "0123456789abcdef" for c in prefix):
            raise SparsebenchError(f"run id {prefix!r}: expected hexadecimal characters 0-9a-f (a run id or its start)")
        rows = self.conn.execute(
            "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
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

    def stats_rows(self, keys: list[str] | None) -> list[tuple[str, int, str, float]]:
        """(run_id, step, key, value) for every run and the given keys, or every key logged (None); balance
        ratios only where current."""
        if keys is None:
            rows = self.conn.execute("SELECT run_id, step, key, value FROM stats ORDER BY run_id, step").fetchall()
        else:
            marks = ",".join("?" * len(keys))
            rows = self.conn.execute(
                f"SELECT run_id, step, key, value FROM stats WHERE key IN ({marks}) ORDER BY run_id, step", keys
            ).fetchall()
        if keys is not None and "balance_ratio" not in keys:
            return rows
        envs = self.conn.execute("SELECT run_id, env FROM runs").fetchall()
        current = {run_id for run_id, env in envs if current_balance_ratios(json.loads(env or "{}"))}
        return [r for r in rows if r[2] != "balance_ratio" or r[0] in current]

    def last_change(self) -> float | None:
        """When a run was last claimed or finished (seconds since the epoch; None for an empty store): what a
        report built from the store is as of, so the same store always builds the same report."""
        (value,) = self.conn.execute("SELECT MAX(updated_at) FROM runs").fetchone()
        return None if value is None else float(value)

    def all_runs(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT run_id, method, arch, dataset, preset, sg, sd, seed, status, results, wall_s, config, env "
            "FROM runs ORDER BY created_at"
        ).fetchall()
        runs = []
        for r in rows:
            env = json.loads(r[12] or "{}")
            runs.append(
                {
                    "run_id": r[0],
                    "method": r[1],
                    "arch": r[2],
                    "dataset": r[3],
                    "preset": r[4],
                    "sg": r[5],
                    "sd": r[6],
                    "seed": r[7],
                    "status": r[8],
                    "results": without_stale_balance_ratios(json.loads(r[9]), env),
                    "wall_s": r[10],
                    "config": json.loads(r[11]),
                    "env": env,
                }
            )
        return runs

    def results_table(self, declared: Iterable[str] = ()) -> list[dict]:
        """The flat results table: one row per run with the keys `table_columns(declared)`."""
        from sparsebench.store.table import results_table

        return results_table(self.all_runs(), declared)

"""Claims on a store's cells: which process trains which run.

A process trains a cell only after claiming it: the claim names its owner and carries a lease that the
owner's heartbeat renews, so no two processes train one cell; a claim whose owner died (same host, process
gone) or whose lease expired is taken over and the run resumes from its checkpoint. Only the scheduler of a
grid (the driver process, rank 0 under torchrun) claims; its runs write through sinks
(`sparsebench.store.sinks`) under its claim.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("sparsebench.store")

LEASE_S = 300.0  # a claim not renewed for this long is stale (its owner is taken as gone)
HEARTBEAT_S = 30.0


def process_owner() -> str:
    """This process's claim owner: host, pid and a token that is new in every process."""
    return f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _alive(owner: str) -> bool:
    """False when `owner` ran on this host and its process is gone; True when we cannot tell."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != platform.node() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def decide(row: tuple | None, owner: str, retry_failed: bool, now: float, rerun: bool = False) -> str:
    """What a process may do with a cell whose row is (status, owner, lease_until), or None when absent.

    "rerun": a finished cell is held for training again while its stored outcome stays in place.
    """
    if row is None:
        return "claimed"
    status, holder, lease = row
    if rerun and status != "running":
        decision = "rerun"
    elif status == "done":
        return "done"
    elif status in ("failed", "diverged") and not retry_failed:
        return status
    else:
        decision = "claimed"
    if holder and holder != owner and (lease or 0) > now and _alive(holder):  # a live claim (a rerun's too)
        return "taken"
    return decision


class Heartbeat(threading.Thread):
    """Renews the leases of one owner's claims on its own connection until it is stopped (the store closes)
    or the process ends. Stopped, it closes its connection: the store's last connection to close then folds
    the write-ahead log into the database file, which can be copied on its own."""

    def __init__(self, path: Path, owner: str):
        super().__init__(daemon=True, name="sparsebench-heartbeat")
        self.path, self.owner = path, owner
        self._stopped = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            while not self._stopped.wait(HEARTBEAT_S):
                try:
                    renew(conn, self.owner)
                except sqlite3.Error as exc:
                    log.warning("could not renew the claims of this process: %s", exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2 * 60)  # a renewal waits at most its connection's 60 s busy timeout


def renew(conn: sqlite3.Connection, owner: str) -> int:
    """Extend every claim of `owner` by LEASE_S from now; returns how many."""
    with conn:
        return conn.execute("UPDATE runs SET lease_until = ? WHERE owner = ?", (time.time() + LEASE_S, owner)).rowcount


class ClaimsMixin:
    """The claim operations of a `Store` (see the module docstring)."""

    path: Path
    conn: sqlite3.Connection
    _transaction: Callable[[Callable[[sqlite3.Connection], Any]], Any]
    _heartbeat: Heartbeat | None = None

    def claim(self, config, env: dict, owner: str, retry_failed: bool = False, rerun: bool = False) -> str:
        """Take the cell of `config` for `owner`, atomically.

        Returns "claimed" (the caller trains it now), "done", "failed" or "diverged" (stored before,
        left alone), "taken" (another live process holds it), or, with `rerun`, "rerun" for a finished
        cell: held by `owner` under its stored status and results until the new outcome replaces them.
        """

        def body(conn: sqlite3.Connection) -> str:
            now = time.time()
            row = conn.execute(
                "SELECT status, owner, lease_until FROM runs WHERE run_id = ?", (config.run_id,)
            ).fetchone()
            decision = decide(row, owner, retry_failed, now, rerun)
            if decision == "rerun":  # the stored outcome keeps its env until the rerun's replaces both
                conn.execute(
                    "UPDATE runs SET owner = ?, lease_until = ? WHERE run_id = ?",
                    (owner, now + LEASE_S, config.run_id),
                )
            if decision != "claimed":
                return decision
            conn.execute(
                """INSERT INTO runs (run_id, method, arch, dataset, preset, sg, sd, seed, status, config,
                                     results, env, created_at, updated_at, owner, lease_until)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status = 'running', env = excluded.env,
                       updated_at = excluded.updated_at, owner = excluded.owner,
                       lease_until = excluded.lease_until""",
                (
                    config.run_id,
                    config.method,
                    config.arch,
                    config.dataset,
                    config.preset,
                    config.sg,
                    config.sd,
                    config.seed,
                    json.dumps(config.to_dict(), sort_keys=True),
                    json.dumps(env),
                    now,
                    now,
                    owner,
                    now + LEASE_S,
                ),
            )
            return "claimed"

        return self._transaction(body)

    def holder(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def holds(self, run_id: str, owner: str) -> bool:
        """Whether `owner`'s claim on the run stands (a process paused past its lease may have lost it)."""
        return self.holder(run_id) == owner

    def keep_alive(self, owner: str) -> None:
        """Renew `owner`'s leases every HEARTBEAT_S seconds from a background thread (started once)."""
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.path, owner)
            self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        """Stop renewing leases (the store is closing: its runs are finished or stopped)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

"""The results store's database: one SQLite file (WAL mode, versioned schema) holding every run, its logged
statistics and its outcome.

Each write is one short transaction, so several `sparsebench run` processes can share a store. Status
changes are guarded: only the owner of a `running` row can finish it, so a late failure never replaces
`done` (who owns a row is `sparsebench.store.claims`' business). Model weights, checkpoints and samples live
beside the database in the store's own artifacts folder, `<store-stem>-artifacts/<run_id>/`, named in its
metadata (`artifacts_dir`), so two stores in one folder never share a file; a store made before that keeps
the `artifacts/` folder its runs were saved in.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sparsebench import SparsebenchError
from sparsebench.config import check_run_id

log = logging.getLogger("sparsebench.store")

SCHEMA_VERSION = 2
DEFAULT_STORE = "sparsebench-results/results.db"
STATUSES = ("running", "done", "failed", "diverged")

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
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    owner TEXT, lease_until REAL
);
CREATE TABLE IF NOT EXISTS stats (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, step, key)
);
"""
TABLES = {"meta", "runs", "stats"}
HINT = "pass --store PATH or set SPARSEBENCH_STORE"
NAME_MAX = 255  # the longest file name (in bytes) of common filesystems
JOURNAL_SUFFIX = "-journal"  # the longest suffix SQLite adds to the store's file name (beside -wal, -shm)


def default_store_path() -> Path:
    return Path(os.environ.get("SPARSEBENCH_STORE") or DEFAULT_STORE)


ARTIFACTS_KEY = "artifacts_dir"  # meta key: the store's artifacts folder, a name beside the database
LEGACY_ARTIFACTS = "artifacts"  # where stores made before ARTIFACTS_KEY keep their runs' files


def own_artifacts_name(store_path: Path) -> str:
    """The artifacts folder of a new store: named after the database, so stores in one folder never share one."""
    return f"{store_path.stem}-artifacts"


class ArtifactPaths:
    """Where a store at `self.path` keeps model weights: `<artifacts_name>/<run_id>/` beside it."""

    path: Path
    artifacts_name: str = LEGACY_ARTIFACTS

    @property
    def artifacts_dir(self) -> Path:
        return self.path.parent / self.artifacts_name

    def run_dir(self, run_id: str) -> Path:
        d = self.artifacts_dir / check_run_id(run_id)
        d.mkdir(parents=True, exist_ok=True)
        return d


def _check_name_length(path: Path, create: bool) -> None:
    """Refuse a store whose file name SQLite cannot add its journal's suffix to (the journal could not be
    created, and every write would fail as 'unable to open database file') or, for a store to be created, whose
    artifacts folder's name would be too long, before anything is created."""
    longest = NAME_MAX - len(JOURNAL_SUFFIX)
    if len(os.fsencode(path.name)) > longest:
        raise SparsebenchError(
            f"results store {path}: its file name has {_length(path.name)}, at most {longest} are allowed (SQLite "
            f"adds '{JOURNAL_SUFFIX}' to it, and a file name may have at most {NAME_MAX}); {HINT} to a shorter name"
        )
    artifacts = own_artifacts_name(path)
    if create and len(os.fsencode(artifacts)) > NAME_MAX:
        raise SparsebenchError(
            f"results store {path}: its artifacts folder, named '<name without suffix>-artifacts', would have "
            f"{_length(artifacts)}, at most {NAME_MAX} are allowed; {HINT} to a shorter name (or one ending in .db)"
        )


def _length(name: str) -> str:
    size = len(os.fsencode(name))
    return f"{size} characters" if size == len(name) else f"{size} bytes"


class Database(ArtifactPaths):
    """The SQLite file of a results store at `path`: created on first use, or opened `readonly` (then it must
    exist, and neither it nor its folder is changed). Its runs' rows, logged statistics and outcomes; claims
    are `sparsebench.store.claims`'."""

    def __init__(self, path: str | os.PathLike | None = None, readonly: bool = False):
        self.path = Path(path) if path is not None else default_store_path()
        try:
            self.path.is_dir()
        except OSError as exc:  # a name too long for the filesystem, a loop of links...
            raise SparsebenchError(f"results store {self.path}: {exc.strerror or exc}; {HINT}") from None
        if self.path.is_dir():
            raise SparsebenchError(f"results store {self.path} is a directory; {HINT}")
        _check_name_length(self.path, create=not readonly and not self.path.exists())
        if readonly:
            if not self.path.exists():
                raise SparsebenchError(f"no results store at {self.path.absolute()}; {HINT}")
            try:
                self.conn = self._connect_readonly()
                version = self._schema_version()
            except sqlite3.OperationalError as exc:
                raise SparsebenchError(f"cannot read results store {self.path}: {exc}; {HINT}") from None
            except sqlite3.DatabaseError as exc:
                raise SparsebenchError(self._not_a_store(exc)) from None
            if version is None:
                raise SparsebenchError(f"{self.path} is not a sparsebench results store (an empty database); {HINT}")
            self.artifacts_name = self._artifacts_name() or LEGACY_ARTIFACTS
            return
        self._open_writable()

    def _open_writable(self) -> None:
        """Open (or create) the store for writing, its schema made or migrated; failures in one line."""
        hint = f"{HINT} to a writable location"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path.parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
                raise PermissionError("permission denied")
            if not self.path.exists():
                self._create()
            self.conn = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 120000")
            self._init_schema()
            self.artifacts_name = self._own_artifacts()
        except sqlite3.OperationalError as exc:  # the file is a database, but it cannot be written
            raise SparsebenchError(f"cannot write results store {self.path}: {exc}; {hint}") from None
        except sqlite3.DatabaseError as exc:  # not about writing: no writable location helps
            raise SparsebenchError(self._not_a_store(exc)) from None
        except OSError as exc:
            raise SparsebenchError(f"cannot write results store {self.path}: {exc.strerror or exc}; {hint}") from None

    def _create(self) -> None:
        """Make a new store whole, so no process ever opens it half made.

        Several `sparsebench run` commands started at once on one new store would otherwise all create it in
        place: while one switched the empty file to WAL mode the others failed ('database is locked', 'disk I/O
        error'), and a failed one removed the empty file another had open. The database is built under a
        temporary name beside the store (WAL mode, schema, artifacts folder), closed, and hard-linked to the
        store's name, which fails where another process got there first: its store is used, and either way the
        temporary name is removed. A filesystem without hard links gets the store built in place."""
        tmp = self.path.with_name(f".{self.path.name[:40]}.{uuid.uuid4().hex[:12]}.tmp")
        wal, shm, journal = (tmp.with_name(tmp.name + suffix) for suffix in ("-wal", "-shm", "-journal"))
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                self.conn = conn
                self._init_schema()
                self._own_artifacts()
                # everything into the file itself before it is linked: the -wal stays behind under the
                # temporary name, and a close that cannot fold it in (a full disk) says nothing
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:  # pragma: no cover - nothing else knows the temporary name
                    raise sqlite3.OperationalError("the new store could not be checkpointed")
            finally:
                conn.close()
            if wal.exists() and wal.stat().st_size:
                raise sqlite3.OperationalError("the new store's write-ahead log was not folded into it")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created the store first
            except OSError as exc:  # no hard links here (EPERM, ENOTSUP, ENOSYS...): built in place
                log.debug("no hard links at %s (%s): the store is created in place", self.path.parent, exc)
        finally:
            for leftover in (tmp, wal, shm, journal):
                leftover.unlink(missing_ok=True)

    def _not_a_store(self, exc: sqlite3.DatabaseError) -> str:
        """Why the file cannot be read as a store: a damaged (e.g. truncated) SQLite file, or something else."""
        try:
            with open(self.path, "rb") as f:
                damaged = f.read(16) == b"SQLite format 3\x00"
        except OSError:
            damaged = False
        if damaged:
            return (
                f"results store {self.path} is damaged or truncated ({exc}); restore it from a copy, "
                f"or {HINT} to start another"
            )
        return f"{self.path} is not a sparsebench results store (not a SQLite database: {exc}); {HINT}"

    # -- schema -------------------------------------------------------------------------------
    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that reads the store, writes nothing to it and leaves no file beside it.

        SQLite reads a WAL database through its `-wal` and `-shm` files and creates them where they are absent;
        a connection opened `mode=ro` cannot remove them again, so reading a store whose writers had all closed
        left both beside it. This one is opened read-write (`mode=rw`: never created) and refuses every write
        (`PRAGMA query_only`), so SQLite removes the two files itself when the last connection to the store
        closes, and only then: it takes the database's exclusive lock first, so a `sparsebench run` writing the
        store meanwhile keeps its files, and the reader sees every row committed before its read. (`immutable=1`
        creates no file either, but reads past a live writer's `-wal`, missing or tearing its rows: it is used
        only below, where nothing can write.) The one write such a close can make is SQLite's own recovery:
        transactions a killed writer committed to the `-wal` are copied into the database file, as the next
        writer would. A write-protected store file is opened read-only, as with `mode=ro`."""
        uri = self.path.absolute().as_uri()  # percent-encoded: '?' or '#' in a path stay part of it
        conn = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=120, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc):
                raise
        # A WAL store on a read-only filesystem: SQLite cannot create the shared-memory file it reads
        # through, but nothing can write there either, so the file is read as it stands.
        conn.close()
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _schema_version(self) -> int | None:
        """The store's schema version, None for an empty database; a database of anything else is refused
        before anything is written to it."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        row = None
        if TABLES <= tables:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise SparsebenchError(
                f"{self.path} is not a sparsebench results store (a SQLite database without its tables); {HINT}"
            )
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise SparsebenchError(
                f"results store {self.path} has an unreadable schema version {row[0]!r}; use another --store"
            ) from None
        if version not in (1, SCHEMA_VERSION):  # version 1 is read as it is, and migrated before a write
            raise SparsebenchError(
                f"results store {self.path} has schema version {row[0]}, this sparsebench reads "
                f"version {SCHEMA_VERSION}; use another --store"
            )
        return version

    def _artifacts_name(self) -> str | None:
        """The artifacts folder the store's metadata names (None: a store made before it was recorded)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (ARTIFACTS_KEY,)).fetchone()
        if row is None:
            return None
        name = str(row[0])
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise SparsebenchError(f"results store {self.path} names an invalid artifacts folder {name!r}; {HINT}")
        return name

    def _own_artifacts(self) -> str:
        """The store's artifacts folder, recorded on first write: its own for a new store; for one made before
        the folder was recorded, `artifacts/`, where its runs' files already are."""
        name = self._artifacts_name()
        if name is not None:
            return name
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = self.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
            name = own_artifacts_name(self.path) if fresh else LEGACY_ARTIFACTS
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (ARTIFACTS_KEY, name))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return self._artifacts_name() or name

    def _init_schema(self) -> None:
        version = self._schema_version()
        if version == 1:  # version 1 had no claims: add the owner and lease columns
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if self._schema_version() == 1:  # still, now that we hold the write lock
                    self.conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
                    self.conn.execute("ALTER TABLE runs ADD COLUMN lease_until REAL")
                    self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        if version is not None:
            return
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - filesystems without shared memory
            raise sqlite3.DatabaseError(f"cannot enable WAL mode (got {mode})")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self.conn.execute(stmt)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    # -- writes (each one short transaction) ----------------------------------------------------
    def _transaction(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `body(conn)` inside one IMMEDIATE transaction, retrying while another writer holds the lock."""
        for attempt in range(20):
            try:
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    return body(self.conn)
            except sqlite3.OperationalError as exc:
                if "full" in str(exc):
                    raise SparsebenchError(
                        f"results store {self.path}: the disk is full ({exc}); free space and run the same "
                        f"command again (finished runs are kept)"
                    ) from None
                if "locked" not in str(exc) and "busy" not in str(exc):  # pragma: no cover
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise SparsebenchError(f"results store {self.path} stayed locked; try again")

    def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        return self._transaction(lambda conn: conn.execute(sql, tuple(params)).rowcount)

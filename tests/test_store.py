"""The SQLite results store: schema and WAL, the results table, migration of old stores, store names the
file system cannot hold, read-only use (missing, read-only and closed stores, a reader beside a writer),
damaged and foreign files, each store's own artifacts folder, and a full disk."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import EXE, RESULTS, TINY, one_error_line, one_line, one_run_store, rows, run_cli, run_grid

from sparsebench import SparsebenchError
from sparsebench.config import GridRequest, expand_grid
from sparsebench.store import RESULT_COLUMNS, Store
from sparsebench.store.sinks import Snapshot

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--methods", "static", "--arch", "sngan", "--steps", "2"]


# -- schema, WAL and the results table -----------------------------------------------------------------------
def test_wal_and_schema_version(store):
    run_grid(store, "static")
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"


def test_results_csv_contract_and_skip_done(store):
    first = run_grid(store, "static,dense")
    summary = first.stdout.strip().splitlines()
    assert summary[-1].startswith("quick preset: a smoke test of the pipeline (4 G steps)")  # under the table
    assert "not converged" in summary[-1] and summary[-2].split()[0] in ("static", "dense")
    table = rows(store)
    assert len(table) == 2
    assert list(table[0].keys())[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    by_method = {r["method"]: r for r in table}
    assert by_method["dense"]["sd"] == "0.0" and by_method["dense"]["sg"] == "0.0"  # fixed axes recorded
    assert abs(float(by_method["static"]["density_g"]) - 0.1) < 1e-4  # exact count: round(0.1 * N) / N
    for row in table:  # measured time beside FLOPs: a G step's median and the sampling time per image
        assert 0 < float(row["train_s_per_step"]) < float(row["wall_s"])
        assert 0 < float(row["infer_ms_per_image"]) < 1000 * float(row["wall_s"])
        assert int(row["threads"]) >= 1
        assert float(row["load_per_core"]) >= 0 and "cores" in row["machine"]  # where and how busy
    again = run_grid(store, "static,dense")
    assert again.stderr.count("already done, skipped") == 2
    as_json = json.loads(run_cli("results", "--store", str(store), "--format", "json", check=True).stdout)
    assert {r["run_id"] for r in as_json["runs"]} == {r["run_id"] for r in table}
    cells = {c["method"]: c for c in as_json["cells"]}
    assert set(cells) == {"static", "dense"} and cells["static"]["reference"] == "dense"
    assert cells["static"]["n"] == 1 and cells["static"]["fid_mean"] == float(by_method["static"]["fid"])
    shown = json.loads(run_cli("show", table[0]["run_id"][:8], "--store", str(store), check=True).stdout)
    assert shown["config"]["method"] == table[0]["method"]


def test_dense_is_not_repeated_per_sd(store):
    run_grid(store, "dense", "sngan", "--sd", "0.5,0.7", "--sg", "0.8,0.9")
    assert len(rows(store)) == 1


# -- migration of stores written by earlier versions ---------------------------------------------------------
def test_a_version_1_store_is_migrated(tmp_path, plugins):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, method TEXT NOT NULL, arch TEXT NOT NULL,
                dataset TEXT NOT NULL, preset TEXT NOT NULL, sg REAL NOT NULL, sd REAL NOT NULL,
                seed INTEGER NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL,
                results TEXT NOT NULL DEFAULT '{}', env TEXT NOT NULL DEFAULT '{}', wall_s REAL,
                created_at REAL NOT NULL, updated_at REAL NOT NULL);
            CREATE TABLE stats (run_id TEXT NOT NULL, step INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
                PRIMARY KEY (run_id, step, key));
            INSERT INTO runs VALUES ('0123456789abcdef', 'dense', 'sngan', 'digits', 'quick', 0, 0, 0, 'done',
                '{}', '{"fid": 3.5}', '{}', 1.0, 0, 0);
        """)
    store = Store(path)
    assert store.get("0123456789abcdef")["results"] == {"fid": 3.5}
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=3), plugins)[0]
    assert store.claim(cfg, {}, "me") == "claimed"


def test_a_store_made_before_its_folder_was_recorded_keeps_artifacts(tmp_path, plugins):
    db = tmp_path / "results.db"
    store = Store(db)
    store.claim(expand_grid(GridRequest(methods=["dense"], arch="sngan"), plugins)[0], {}, "filler")
    store.close()
    with sqlite3.connect(db) as conn:  # as a store with runs made before the folder was recorded
        conn.execute("DELETE FROM meta WHERE key = 'artifacts_dir'")
    assert Store(db, readonly=True).artifacts_dir == tmp_path / "artifacts"
    assert Store(db).artifacts_dir == tmp_path / "artifacts"  # recorded on the first write
    assert Store(db, readonly=True).artifacts_dir == tmp_path / "artifacts"
    fresh = Store(tmp_path / "other.db")
    assert fresh.artifacts_dir == tmp_path / "other-artifacts"


def test_malformed_schema_version_is_one_line(tmp_path, plugins):
    db = tmp_path / "results.db"
    one_run_store(db, plugins)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    conn.close()
    for args in (["results"], ["run", "--methods", "static", "--arch", "sngan", *TINY]):
        assert "unreadable schema version 'abc'" in one_error_line(run_cli(*args, "--store", str(db)))


# -- store names the file system cannot hold -----------------------------------------------------------------
@pytest.mark.parametrize("command", [["results"], ["run", "--methods", "static", "--arch", "sngan", "--steps", "2"]])
def test_a_store_name_longer_than_the_filesystem_allows_is_one_line(tmp_path, command):
    path = tmp_path / ("a" * 300 + ".db")
    line = one_line(run_cli(*command, "--store", str(path)))
    assert "File name too long" in line and "--store" in line


@pytest.mark.parametrize("command", [RUN, ["results"]])
def test_a_store_name_too_long_for_its_journal_is_refused_before_anything_is_created(tmp_path, command):
    path = tmp_path / "d" / ("a" * 247 + ".db")  # 250 characters: '-journal' would make 258, over the 255 allowed
    line = one_line(run_cli(*command, "--store", str(path)))
    assert "its file name has 250 characters, at most 247 are allowed" in line and "-journal" in line, line
    assert list(tmp_path.iterdir()) == []  # no store, no folder, no artifacts


def test_a_new_store_whose_artifacts_folder_name_would_be_too_long_is_refused(tmp_path):
    path = tmp_path / ("a" * 247)  # fits with '-journal', but 'aaa...-artifacts' would have 257 characters
    line = one_line(run_cli(*RUN, "--store", str(path)))
    assert "artifacts folder" in line and "would have 257 characters, at most 255 are allowed" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_store_name_of_the_longest_length_allowed_works(tmp_path):
    path = tmp_path / ("a" * 244 + ".db")  # 247 characters
    Store(path).close()
    Store(path, readonly=True).close()


def test_a_failed_create_leaves_no_empty_file(tmp_path, monkeypatch):
    from sparsebench.store.database import Database

    def failing(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Database, "_init_schema", failing)
    with pytest.raises(SparsebenchError, match="disk I/O error"):
        Store(tmp_path / "r.db")
    assert list(tmp_path.iterdir()) == []


def _open_store_at_once(path, barrier, results):
    barrier.wait()
    try:
        Store(path).close()
        results.put("ok")
    except Exception as exc:  # pragma: no cover - the failure this test looks for
        results.put(repr(exc))


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path):
    """Several runs started together on a new store each open it: none fails as 'database is locked' or
    'disk I/O error', none removes the file another has open, and no temporary file is left beside it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for trial in range(8):
        path = tmp_path / str(trial) / "results.db"
        barrier, results = ctx.Barrier(4, timeout=60), ctx.Queue()
        procs = [ctx.Process(target=_open_store_at_once, args=(path, barrier, results), daemon=True) for _ in range(4)]
        try:
            for p in procs:
                p.start()
            outcomes = [results.get(timeout=120) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():  # pragma: no cover - a hung opener
                    p.terminate()
        assert outcomes == ["ok"] * 4, (trial, outcomes)
        store = Store(path, readonly=True)  # the last connection: SQLite removes -wal and -shm as it closes
        assert store.artifacts_name == "results-artifacts"
        store.close()
        assert sorted(f.name for f in path.parent.iterdir()) == ["results.db"], trial


# -- read-only use: commands that only read a store write nothing --------------------------------------------
def test_read_commands_on_a_missing_store_create_nothing(tmp_path):
    missing = tmp_path / "typo" / "results.db"
    for args in (["results"], ["show", "abc"], ["report", "--out", str(tmp_path / "rep")]):
        line = one_error_line(run_cli(*args, "--store", str(missing)))
        assert f"no results store at {missing}" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only():
    """Makes a folder read-only: a read-only bind mount as root (permissions do not bind root), else chmod."""
    undo = []

    def seal(folder: Path) -> Path:
        if os.geteuid() != 0:
            for p in folder.iterdir():
                p.chmod(0o444)
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(0o755))
            return folder
        view = folder.with_name(folder.name + "-ro")
        view.mkdir()
        if subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder here (no bind mounts)")
        undo.append(lambda: subprocess.run(["umount", str(view)], check=True))
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder here (no read-only remount)")
        return view

    yield seal
    for step in reversed(undo):
        step()


def test_read_commands_work_on_a_read_only_filesystem(tmp_path, plugins, read_only):
    folder = tmp_path / "data"
    run_id = one_run_store(folder / "results.db", plugins)
    before = (folder / "results.db").read_bytes()
    db = read_only(folder) / "results.db"
    with pytest.raises(OSError):
        (db.parent / "probe").write_text("x")
    assert run_id in run_cli("results", "--store", str(db), check=True).stdout
    assert json.loads(run_cli("show", run_id[:6], "--store", str(db), check=True).stdout)["run_id"] == run_id
    run_cli("report", "--store", str(db), "--out", str(tmp_path / "rep"), check=True)
    assert (tmp_path / "rep" / "table1.md").exists()
    assert (folder / "results.db").read_bytes() == before


def listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_results_show_and_report_leave_the_folder_of_a_closed_store_as_it_was(tmp_path, plugins):
    folder = tmp_path / "data"
    run_id = one_run_store(folder / "results.db", plugins)  # its writer closed: no -wal, no -shm
    before = listing(folder)
    assert before == ["results.db"]
    for args in (["results"], ["results", "--format", "json"], ["show", run_id[:6]],
                 ["report", "--out", str(tmp_path / "rep")]):  # fmt: skip
        proc = run_cli(*args, "--store", str(folder / "results.db"), check=True)
        assert run_id in proc.stdout or args[0] == "report"
        assert listing(folder) == before, args


def test_a_reader_beside_a_live_writer_sees_its_committed_rows_and_leaves_its_files(tmp_path, plugins):
    path = tmp_path / "results.db"
    writer = Store(path)
    first, second = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.8, 0.9]), plugins)
    writer.claim(first, {}, "writer")
    writer.finish_run(first.run_id, "done", RESULTS, 1.0, "writer")
    reader = Store(path, readonly=True)
    assert [r["run_id"] for r in reader.all_runs()] == [first.run_id]
    writer.claim(second, {}, "writer")  # committed while the reader is open
    assert [r["run_id"] for r in reader.all_runs()] == [first.run_id, second.run_id]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM runs")
    reader.close()  # not the last connection: the writer's -wal and -shm stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db", "results.db-shm", "results.db-wal"]
    writer.finish_run(second.run_id, "done", RESULTS, 1.0, "writer")
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]
    assert [r["status"] for r in Store(path, readonly=True).all_runs()] == ["done", "done"]


# -- damaged, foreign and unwritable files -------------------------------------------------------------------
def test_a_truncated_store_is_called_damaged(tmp_path, plugins):
    path = tmp_path / "r.db"
    one_run_store(path, plugins)
    path.write_bytes(path.read_bytes()[:3000])
    for command in (["results"], ["run", "--methods", "static", "--arch", "sngan", "--steps", "2"]):
        line = one_line(run_cli(*command, "--store", str(path)))
        assert "damaged or truncated" in line and "writable" not in line, line


def test_foreign_sqlite_file_is_refused_untouched_by_every_command(tmp_path):
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    with conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()
    before = foreign.read_bytes()
    for args in (
        ["run", "--methods", "static", "--arch", "sngan", *TINY],
        ["results"],
        ["show", "abc"],
        ["report", "--out", str(tmp_path / "rep")],
    ):
        line = one_error_line(run_cli(*args, "--store", str(foreign)))
        assert "not a sparsebench results store (a SQLite database without its tables)" in line, (args, line)
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_store_that_is_not_sqlite(tmp_path):
    bogus = tmp_path / "results.db"
    bogus.write_bytes(b"this is not a database, just text" * 100)
    proc = run_grid(bogus, "static", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a sparsebench results store" in lines[0]
    assert bogus.read_bytes() == b"this is not a database, just text" * 100
    proc = run_cli("results", "--store", str(bogus))
    assert proc.returncode != 0 and "not a sparsebench results store" in proc.stderr


def test_unwritable_store_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = ro / "sub" / "results.db"
    proc = run_grid(target, "static", check=False)
    ro.chmod(0o700)
    if os.geteuid() == 0 and proc.returncode == 0:
        pytest.skip("running as root: directory permissions do not bind")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot write results store" in proc.stderr


def test_store_path_under_a_file_is_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_grid(blocker / "r.db", "static", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write results store" in lines[0]


# -- each store's own artifacts folder -----------------------------------------------------------------------
def test_artifact_folders_refuse_bad_run_ids(tmp_path):
    for holder in (Store(tmp_path / "r.db"), Snapshot(tmp_path / "r.db", {})):
        for bad in ("../x", "/tmp/x", "0123456789abcde", "0123456789abcdef0"):
            with pytest.raises(SparsebenchError, match="invalid run id"):
                holder.run_dir(bad)
    assert (
        not (tmp_path / "r-artifacts").exists()
        and not (tmp_path / "artifacts").exists()
        and not (tmp_path / "x").exists()
    )


def test_two_stores_in_one_folder_train_their_own_cell_at_once(tmp_path):
    stores = [tmp_path / "a.db", tmp_path / "b.db"]
    cmd = ["run", "--methods", "static", "--arch", "sngan", "--steps", "12", "--checkpoint-every", "1"]
    procs = [
        subprocess.Popen([EXE, *cmd, "--store", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for s in stores
    ]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        errs.append(err)
    for err in errs:
        assert "resuming" not in err, err  # neither store picked up the other's checkpoint
    opened = [Store(s, readonly=True) for s in stores]
    (row_a,), (row_b,) = (s.all_runs() for s in opened)
    assert row_a["run_id"] == row_b["run_id"]  # the same cell in both stores
    assert row_a["status"] == row_b["status"] == "done"
    dirs = [s.artifacts_dir for s in opened]
    assert dirs[0] != dirs[1]
    for d in dirs:
        assert (d / row_a["run_id"] / "final.pt").exists()
        assert not list(d.glob("*/checkpoint-*"))
    assert not (tmp_path / "artifacts").exists()  # no shared folder was made


def test_the_committed_small_store_finds_its_dense_weights(tmp_path):
    """What reports/small/commands.sh restores: the snapshot store with its dense runs' files in its artifacts."""
    small = ROOT / "reports" / "small"
    (tmp_path / "small").mkdir()  # what a clean checkout has of the grid (no live store/)
    for name in ("results.db", "snapshot.sh", "dense-artifacts", "checkpoints"):
        if (small / name).exists():
            subprocess.run(["cp", "-r", str(small / name), str(tmp_path / "small" / name)], check=True)
    subprocess.run(["bash", str(tmp_path / "small" / "snapshot.sh"), "restore"], check=True)
    store = Store(tmp_path / "small" / "store" / "results.db")
    dense = [r for r in store.all_runs() if r["method"] == "dense" and r["status"] == "done"]
    assert dense
    found = [r for r in dense if (store.artifacts_dir / r["run_id"] / "final.pt").exists()]
    assert found and len(found) == len(list((tmp_path / "small" / "dense-artifacts").iterdir()))
    folder = tmp_path / "small" / "store"
    assert run_cli("results", "--store", str(folder / "results.db"), check=True).stdout


# -- a full disk ---------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_clear_error(tmp_path, plugins):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=3), plugins)[0]
    store = Store(tmp_path / "r.db")
    store.claim(cfg, {}, "me")
    store.conn.execute("PRAGMA max_page_count = 8")  # the database cannot grow: as on a full disk
    with pytest.raises(SparsebenchError, match="disk is full"):
        store.log_stats(cfg.run_id, [(s, f"key{k}", 1.0) for s in range(2000) for k in range(5)])

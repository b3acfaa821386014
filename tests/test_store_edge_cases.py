"""Edge cases of the store found by trying to break it: a process that loses its claim while a file of the run
is half written, a store name SQLite cannot add its journal suffix to, and commands that only read a store."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import torch
from conftest import run_cli, scheduler

from sparsebench.config import GridRequest, expand_grid
from sparsebench.store import Store


# -- a claim lost while a file of the run is being written ----------------------------------------------
def files_of(folder) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


@pytest.mark.parametrize("name", ["checkpoint-phase1.pt", "samples.pt", "final.pt"])
def test_a_claim_lost_while_writing_a_file_of_the_run_leaves_its_folder_alone(
    tmp_path, plugins, monkeypatch, caplog, name
):
    """The process is paused while it writes `name` (past its lease); another process takes the run over and
    stores it done; the paused one continues: it completes the temporary file, looks at its claim before the
    rename, stops with ClaimLost and leaves the run's folder as the takeover found it."""
    store = Store(tmp_path / "r.db")
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.8], sd=[0.5], steps=2), plugins)[0]
    run_dir = store.run_dir(cfg.run_id)
    save, found = torch.save, {}

    def paused_while_saving(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if str(f).startswith(f"{run_dir / name}.") and str(f).endswith(".tmp"):  # complete, not yet renamed
            found.update({k: v for k, v in files_of(run_dir).items() if not k.endswith(".tmp")})
            with sqlite3.connect(store.path) as conn:  # meanwhile the other process finished the run
                conn.execute("UPDATE runs SET status = 'done', results = ?, owner = NULL, lease_until = NULL",
                             ('{"fid": 1.5}',))  # fmt: skip
            found["taken over"] = (0, 0)

    monkeypatch.setattr(torch, "save", paused_while_saving)
    with caplog.at_level(logging.WARNING, logger="sparsebench.run"):
        outcome = scheduler(store, plugins).run_one(cfg)
    assert found.pop("taken over", None), f"no temporary file of {name} was written"
    assert outcome.taken and outcome.skipped  # the runner caught ClaimLost: the run is left to the new holder
    assert "taken over by another process" in caplog.text
    assert files_of(run_dir) == found  # nothing written, renamed or removed; no temporary file left
    assert store.get(cfg.run_id)["status"] == "done" and store.get(cfg.run_id)["results"] == {"fid": 1.5}
    store.close()


def test_atomic_save_removes_its_temporary_when_the_check_before_the_rename_raises(tmp_path, monkeypatch):
    from sparsebench.recorder import ClaimLost, RunRecorder
    from sparsebench.train.checkpoint import atomic_save

    class Sink:  # the claim stands until the temporary file is written
        run_id, held = "r1", True

        def holds(self):
            return self.held

    sink, save = Sink(), torch.save

    def written_then_lost(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        sink.held = False

    monkeypatch.setattr(torch, "save", written_then_lost)
    recorder = RunRecorder(sink)
    with pytest.raises(ClaimLost, match="taken over"):
        atomic_save({"x": torch.zeros(2)}, tmp_path / "checkpoint-phase1.pt", lambda: recorder.holding(every=0.0))
    assert list(tmp_path.iterdir()) == []


# -- a store name SQLite cannot add its journal suffix to -------------------------------------------------
def one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    return lines[0]


RUN = ["run", "--methods", "static", "--arch", "sngan", "--steps", "2"]


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
    from sparsebench import SparsebenchError
    from sparsebench.store.database import Database

    def failing(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Database, "_init_schema", failing)
    with pytest.raises(SparsebenchError, match="disk I/O error"):
        Store(tmp_path / "r.db")
    assert list(tmp_path.iterdir()) == []


# -- commands that only read a store leave no file beside it ---------------------------------------------
def listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_results_show_and_report_leave_the_folder_of_a_closed_store_as_it_was(tmp_path, plugins):
    from test_hardening import one_run_store

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
    from test_hardening import RESULTS

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

"""Claims and leases on a store: several processes on one store or one grid train each cell once, a lease runs
out and is taken over, a process paused past its lease stops, a process that lost its claim writes no file of
the run, and a rerun replaces a run's outcome together or not at all."""

from __future__ import annotations

import logging
import platform
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, EXE, LONG, TINY, rows, scheduler, wait_for_file

from sparsebench.config import GridRequest, expand_grid
from sparsebench.store import LEASE_S, Store


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


# -- several processes on one store --------------------------------------------------------------------------
@pytest.mark.slow
def test_four_processes_on_one_grid_train_each_cell_once(tmp_path):
    store = tmp_path / "r.db"
    cmd = [
        EXE,
        "run",
        "--methods",
        "static,dense",
        "--arch",
        "sngan",
        "--seeds",
        "0,1",
        "--steps",
        "4",
        "--store",
        str(store),
    ]  # progress on: stderr is a pipe, so each trained cell prints "G step 4/4" once
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(4)
    ]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        errs.append(err)
    assert sum(err.count("G step 4/4") for err in errs) == 4  # every cell trained exactly once
    got = rows(store)
    assert len(got) == 4 and all(r["status"] == "done" for r in got)
    assert not list((tmp_path / "r-artifacts").glob("*/*.tmp"))


@pytest.mark.slow
def test_two_concurrent_runs_share_one_store(store):
    env_args = ["--arch", "sngan", "--store", str(store), *TINY]
    procs = [
        subprocess.Popen(
            [EXE, "run", "--methods", "static", "--seeds", "0,1", *env_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [EXE, "run", "--methods", "dense", "--seeds", "0,1", *env_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    table = rows(store)
    assert sorted((r["method"], r["seed"]) for r in table) == [
        ("dense", "0"),
        ("dense", "1"),
        ("static", "0"),
        ("static", "1"),
    ]
    assert all(r["status"] == "done" for r in table)


# -- claims and leases ---------------------------------------------------------------------------------------
def test_claims_leases_and_guarded_status(tmp_path, plugins):
    a, b = expand_grid(GridRequest(methods=["static"], arch="sngan", seeds=[0, 1], steps=3), plugins)
    store = Store(tmp_path / "r.db")
    assert store.claim(a, {}, "elsewhere:1:x") == "claimed"
    assert store.claim(a, {}, "me") == "taken"  # another host's live lease
    with sqlite3.connect(store.path) as conn:  # its lease expires
        conn.execute("UPDATE runs SET lease_until = ?", (time.time() - 1,))
    assert store.claim(a, {}, "me") == "claimed"  # taken over
    assert store.finish_run(a.run_id, "done", {"fid": 1.0}, 1.0, "me")
    assert not store.finish_run(a.run_id, "failed", {"error": "late"}, 1.0, "elsewhere:1:x")  # never replaces done
    assert store.get(a.run_id)["status"] == "done" and store.claim(a, {}, "x") == "done"
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert store.claim(b, {}, f"{platform.node()}:{dead.pid}:t") == "claimed"
    with sqlite3.connect(store.path) as conn:
        lease = conn.execute("SELECT lease_until FROM runs WHERE run_id = ?", (b.run_id,)).fetchone()[0]
    assert lease > time.time() + LEASE_S / 2
    assert store.claim(b, {}, "me") == "claimed"  # same host, its process is gone: stale at once


# -- a process that lost its claim touches nothing of the run ------------------------------------------------
@pytest.mark.slow
def test_a_process_paused_past_its_lease_stops_and_touches_no_file_of_the_run(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--steps", "400", "--checkpoint-every", "10", "--store", str(store)]
    proc = subprocess.Popen([EXE, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    ckpt = wait_for_file(store.parent / "r-artifacts", "*/checkpoint-phase1.pt")
    proc.send_signal(signal.SIGSTOP)
    # meanwhile its lease ran out, another process took the cell over and finished it
    (ckpt.parent / "final.pt").write_bytes(b"the other process's weights")
    with sqlite3.connect(store) as conn:
        conn.execute(
            "UPDATE runs SET status = 'done', results = ?, owner = NULL, lease_until = NULL", ('{"fid": 1.5}',)
        )
    before = files_of(ckpt.parent)
    time.sleep(0.05)
    proc.send_signal(signal.SIGCONT)
    try:
        _, err = proc.communicate(timeout=120)  # it stops at its next step instead of training on
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process that lost its claim trained on") from None
    assert proc.returncode == 0, err
    assert "taken over by another process" in err
    assert files_of(ckpt.parent) == before  # no checkpoint, weights, samples written or removed
    (row,) = rows(store)
    assert row["status"] == "done" and row["fid"] == "1.5"


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
    from sparsebench.files import atomic_save
    from sparsebench.recorder import ClaimLost, RunRecorder

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


# -- reruns --------------------------------------------------------------------------------------------------
def test_a_rerun_replaces_results_env_and_curves_together_or_not_at_all(tmp_path, plugins):
    (cfg,) = expand_grid(GridRequest(methods=["static"], arch="sngan", seeds=[0], steps=3), plugins)
    store = Store(tmp_path / "r.db")
    assert store.claim(cfg, {"cpu": "old machine"}, "me") == "claimed"
    store.log_stats(cfg.run_id, [(1, "loss_g", 1.0), (2, "loss_g", 2.0), (2, "old_only", 5.0)])
    assert store.finish_run(cfg.run_id, "done", {"fid": 1.0}, 1.0, "me")
    stats = lambda: sorted(store.conn.execute("SELECT step, key, value FROM stats").fetchall())  # noqa: E731
    old = (store.get(cfg.run_id), stats())
    assert store.claim(cfg, {"cpu": "new machine"}, "again", rerun=True) == "rerun"
    assert (store.get(cfg.run_id), stats()) == old  # the old outcome, under its own env, while the rerun trains
    store.release(cfg.run_id, "again")  # a rerun stopped before its outcome
    assert (store.get(cfg.run_id), stats()) == old
    assert store.claim(cfg, {"cpu": "new machine"}, "again", rerun=True) == "rerun"
    new_stats = [(1, "loss_g", 3.0), (2, "loss_g", 4.0)]
    assert store.finish_run(cfg.run_id, "done", {"fid": 2.0}, 2.0, "again", env={"cpu": "new machine"}, stats=new_stats)
    run = store.get(cfg.run_id)
    assert run["results"]["fid"] == 2.0 and run["env"] == {"cpu": "new machine"}
    assert stats() == [(1, "loss_g", 3.0), (2, "loss_g", 4.0)]  # none of the old run's curves stays

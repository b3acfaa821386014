"""Reliability: claims on shared grids, stats flushed with checkpoints, driver signals, thread
counts on resume, corrupt checkpoints, disk full, leftovers, progress in logs."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import EXE, run_cli

from sparsebench import SparsebenchError
from sparsebench.config import GridRequest, expand_grid
from sparsebench.store import LEASE_S, Store

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
LONG = ["run", "--methods", "stugan", "--arch", "sngan", "--sg", "0.8", "-o", "stugan.delta_t=7", "--no-progress"]


def rows(store) -> list[dict]:
    return list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))


def wait_for_file(folder: Path, pattern: str, timeout: float = 120) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = list(folder.glob(pattern)) if folder.exists() else []
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} appeared under {folder}")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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
    import platform

    assert store.claim(b, {}, f"{platform.node()}:{dead.pid}:t") == "claimed"
    with sqlite3.connect(store.path) as conn:
        lease = conn.execute("SELECT lease_until FROM runs WHERE run_id = ?", (b.run_id,)).fetchone()[0]
    assert lease > time.time() + LEASE_S / 2
    assert store.claim(b, {}, "me") == "claimed"  # same host, its process is gone: stale at once


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


@pytest.mark.slow
def test_stats_reach_the_store_with_each_checkpoint(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--steps", "200", "--checkpoint-every", "25", "--store", str(store)]
    proc = subprocess.Popen([EXE, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    folder = store.parent / f"{store.stem}-artifacts"
    ckpt = wait_for_file(folder, "*/checkpoint-phase1.pt")
    from sparsebench.train.checkpoint import load_plain

    t0 = time.time()
    while load_plain(ckpt)["step"] < 50 and time.time() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load_plain(ckpt)["step"]
    run_id = ckpt.parent.name
    with sqlite3.connect(store) as conn:
        logged = {s for (s,) in conn.execute("SELECT DISTINCT step FROM stats WHERE run_id = ?", (run_id,))}
    assert step >= 50 and {1} | set(range(10, step + 1, 10)) <= logged
    run_cli(*cmd, check=True)
    with sqlite3.connect(store) as conn:
        logged = {
            s for (s,) in conn.execute("SELECT DISTINCT step FROM stats WHERE run_id = ? AND key = 'loss_g'", (run_id,))
        }
    assert logged == {1} | set(range(10, 201, 10))  # the resumed run's curve is complete


def _grid_driver(store: Path) -> subprocess.Popen:
    cmd = [
        EXE,
        *LONG,
        "--sg",
        "0.8,0.9",
        "--steps",
        "3000",
        "--jobs",
        "2",
        "--checkpoint-every",
        "10",
        "--store",
        str(store),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )


@pytest.mark.slow
def test_jobs_driver_killed_takes_its_workers_along(tmp_path):
    store = tmp_path / "r.db"
    driver = _grid_driver(store)
    wait_for_file(store.parent / f"{store.stem}-artifacts", "*/checkpoint-phase1.pt")
    workers = [p for p in children(driver.pid) if alive(p)]
    assert workers
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    t0 = time.time()
    while any(alive(p) for p in workers) and time.time() - t0 < 60:
        time.sleep(0.2)
    assert not any(alive(p) for p in workers), "workers outlived their driver"


@pytest.mark.slow
def test_jobs_driver_sigterm_checkpoints_every_worker(tmp_path):
    store = tmp_path / "r.db"
    driver = _grid_driver(store)
    folder = store.parent / f"{store.stem}-artifacts"
    t0 = time.time()
    while len(list(folder.glob("*/checkpoint-phase1.pt"))) < 2 and time.time() - t0 < 180:
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err
    assert "run the same command to resume" in err
    got = rows(store)
    assert len(got) == 2 and all(r["status"] == "running" and int(r["interrupted_step"]) > 0 for r in got), got
    with sqlite3.connect(store) as conn:  # claims released: the next command resumes at once
        assert conn.execute("SELECT COUNT(*) FROM runs WHERE owner IS NOT NULL").fetchone()[0] == 0


@pytest.mark.slow
def test_a_resume_continues_with_the_thread_count_it_started_with(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--steps", "400", "--checkpoint-every", "5", "--store", str(store)]
    proc = subprocess.Popen(
        [EXE, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**ENV, "OMP_NUM_THREADS": "1"}
    )
    wait_for_file(store.parent / f"{store.stem}-artifacts", "*/checkpoint-phase1.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_cli(*cmd, "--steps", "400", env={"OMP_NUM_THREADS": "2"}, check=True)  # the run's own count, not the env's
    assert rows(store)[0]["threads"] == "1"


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_set_aside_and_the_grid_goes_on(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--steps", "60", "--checkpoint-every", "5", "--store", str(store)]
    proc = subprocess.Popen([EXE, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    ckpt = wait_for_file(store.parent / f"{store.stem}-artifacts", "*/checkpoint-phase1.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    again = run_cli(*cmd, "--seeds", "0,1")
    assert again.returncode == 0, again.stderr
    assert "cannot be read" in again.stderr and "restarts from scratch" in again.stderr
    assert list(ckpt.parent.glob("checkpoint-phase1.pt.bad-*"))
    assert [r["status"] for r in rows(store)] == ["done", "done"]


def test_a_full_disk_is_one_clear_error(tmp_path, plugins):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=3), plugins)[0]
    store = Store(tmp_path / "r.db")
    store.claim(cfg, {}, "me")
    store.conn.execute("PRAGMA max_page_count = 8")  # the database cannot grow: as on a full disk
    with pytest.raises(SparsebenchError, match="disk is full"):
        store.log_stats(cfg.run_id, [(s, f"key{k}", 1.0) for s in range(2000) for k in range(5)])


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from sparsebench.train import checkpoint

    def broken(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"x": 1}, tmp_path / "final.pt")
    assert list(tmp_path.iterdir()) == []


def test_samples_keep_only_the_grid_and_logs_get_periodic_lines(tmp_path):
    store = tmp_path / "r.db"
    proc = run_cli("run", "--methods", "static", "--arch", "sngan", "--steps", "40", "--store", str(store), check=True)
    lines = [line for line in proc.stderr.splitlines() if "G step" in line]
    assert 1 <= len(lines) <= 11 and "G step 40/40" in lines[-1]
    assert "\r" not in proc.stderr  # no redrawn bar in a log
    samples = next((tmp_path / "r-artifacts").glob("*/samples.pt"))
    images = torch.load(samples, weights_only=True)["images"]
    assert images.shape[0] == 64 and samples.stat().st_size < 3 * images.numel()

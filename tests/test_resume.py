"""Checkpoints and automatic resume: a run killed (SIGKILL) or stopped (SIGTERM) resumes to the results of an
uninterrupted one, its logged stats reach the store with each checkpoint, corrupt, tampered or foreign
checkpoints are set aside unexecuted, and failed writes and killed processes leave no temporary file."""

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
from conftest import ENV, EXE, LONG, logged_steps, plugin_env, rows, run_cli, run_grid, wait_for_file

CMD = [*LONG, "--steps", "80", "--checkpoint-every", "5"]
KEYS = ["fid", "is_mean", "is_std", "density_g", "density_d", "exploration_rate", "train_flops", "test_flops"]


def started(store) -> bool:
    """Whether the store holds a run yet (a store just created may not hold its tables for an instant)."""
    proc = run_cli("results", "--store", str(store))
    return proc.returncode == 0 and bool(list(csv.DictReader(io.StringIO(proc.stdout))))


KILL_PLUGIN = """
import os
import signal
import sqlite3

from sparsebench import Metric, hookimpl


class KillOnce(Metric):
    name = "killonce"
    description = "kills its own process the first time it is computed (when its marker file is absent)"

    def compute(self, ev, **options):
        marker = os.environ["KILLONCE_MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"killonce": 1.0}


@hookimpl
def register_metrics(register):
    register(KillOnce())
"""


# results that measure the process rather than the model (times, load, threads): they differ between two runs
RESULT_TIMES = {
    "wall_s",
    "train_s_per_step",
    "train_s_per_step_median",
    "infer_ms_per_image",
    "load_per_core",
    "threads",
}


# -- SIGKILL, SIGTERM and resume -----------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_metrics(tmp_path):
    ref_store, store = tmp_path / "ref" / "r.db", tmp_path / "kill" / "r.db"
    run_cli(*CMD, "--store", str(ref_store), check=True)
    proc = subprocess.Popen(
        [EXE, *CMD, "--store", str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    ckpt = wait_for_file(store.parent / f"{store.stem}-artifacts", "*/checkpoint-phase1.pt")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(store)[0]["status"] == "running"
    resumed = run_cli(*CMD, "--store", str(store), check=True)
    assert "resuming run" in resumed.stderr
    step = int(resumed.stderr.split("from G step ")[1].split()[0])
    assert 5 <= step < 80
    a, b = rows(ref_store)[0], rows(store)[0]
    assert b["status"] == "done" and a["run_id"] == b["run_id"]
    for key in KEYS:
        assert a[key] == b[key], key
    assert not ckpt.exists()  # spent checkpoints are removed once the run is done


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops(tmp_path):
    store = tmp_path / "r.db"
    proc = subprocess.Popen(
        [EXE, *CMD, "--checkpoint-every", "0", "--steps", "400", "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    t0 = time.time()
    while time.time() - t0 < 120 and not (store.exists() and started(store)):
        time.sleep(0.1)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err
    row = rows(store)[0]
    assert row["status"] == "running" and int(row["interrupted_step"]) > 0
    assert list((store.parent / f"{store.stem}-artifacts").glob("*/checkpoint-phase1.pt"))


@pytest.mark.slow
def test_a_run_killed_during_evaluation_resumes_to_the_uninterrupted_results(tmp_path):
    cmd = [*LONG, "--steps", "30", "--checkpoint-every", "10", "--metrics", "fid,killonce"]
    ref, killed = tmp_path / "ref" / "r.db", tmp_path / "killed" / "r.db"
    marker = tmp_path / "marker"
    env = {**plugin_env(tmp_path, "killonce", KILL_PLUGIN), "KILLONCE_MARKER": str(marker)}
    first = run_cli(*cmd, "--store", str(killed), env=env)
    assert first.returncode == -signal.SIGKILL and marker.exists()  # killed inside the evaluation
    run_cli(*cmd, "--store", str(killed), env=env, check=True)  # resumed
    run_cli(*cmd, "--store", str(ref), env=env, check=True)  # uninterrupted
    (a,), (b,) = rows(ref), rows(killed)
    assert a["balance_ratio"] and a["balance_ratio_last10"]
    differ = {k for k in a if a[k] != b.get(k)} - RESULT_TIMES
    assert not differ, {k: (a[k], b.get(k)) for k in differ}
    assert logged_steps(ref) == logged_steps(killed)


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


# -- corrupt, tampered and foreign checkpoints ---------------------------------------------------------------
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


def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    from sparsebench.train.checkpoint import CheckpointError, load_plain

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"G": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused without loading"):
        load_plain(path)
    assert not marker.exists()


@pytest.mark.slow
def test_a_tampered_checkpoint_is_set_aside_unexecuted(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*CMD, "--steps", "120", "--store", str(store)]
    proc = subprocess.Popen([EXE, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    ckpt = wait_for_file(store.parent / f"{store.stem}-artifacts", "*/checkpoint-phase1.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'executed'}",))

    torch.save({"config": "x", "G": Payload()}, ckpt)
    again = run_cli(*cmd)
    assert again.returncode == 0, again.stderr
    assert "refused without loading" in again.stderr and "restarts from scratch" in again.stderr
    assert not (tmp_path / "executed").exists()
    assert rows(store)[0]["status"] == "done"
    assert list(ckpt.parent.glob("checkpoint-phase1.pt.bad-*"))


def test_checkpoint_from_other_settings_is_refused(tmp_path, plugins):
    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.train.checkpoint import Checkpoint, CheckpointError

    a, b = expand_grid(GridRequest(methods=["static"], arch="sngan", seeds=[0, 1], steps=3), plugins)
    path = tmp_path / "c.pt"
    torch.save({"config": "{}", "G": {}}, path)
    with pytest.raises(CheckpointError, match="other settings"):
        Checkpoint(path, a).restore(None, None, None, None)


# -- temporary files: a failed write, a full disk, a killed process ------------------------------------------
def test_a_failed_write_leaves_no_temporary_file_and_a_full_disk_says_so(tmp_path, monkeypatch):
    """A checkpoint or weights file whose write fails leaves nothing behind, and a write that failed because the
    disk is full says so even where torch reports it as a RuntimeError of its own."""
    import shutil

    from sparsebench import files

    def broken(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.torch, "save", broken)
    with pytest.raises(OSError):
        files.atomic_save({"x": 1}, tmp_path / "final.pt")
    assert list(tmp_path.iterdir()) == []

    def full(obj, path):
        Path(path).write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0; file write failed")

    monkeypatch.setattr(files.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match="the disk is full"):
        files.atomic_save({"x": 1}, tmp_path / "checkpoint-phase1.pt")
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_processes_are_removed_when_the_run_runs_again(tmp_path, plugins):
    from sparsebench.config import GridRequest, expand_grid

    (cfg,) = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2), plugins)
    folder = tmp_path / "r-artifacts" / cfg.run_id  # the store r.db's own artifacts folder
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = folder / f"init.pt.{dead.pid}.tmp"
    stale.write_bytes(b"")
    live = folder / f"final.pt.{os.getpid()}.tmp"  # a live process's write is left alone
    live.write_bytes(b"")
    run_grid(tmp_path / "r.db", "static", steps=2, spawn=True)
    assert not stale.exists() and live.exists()

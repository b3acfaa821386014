"""Checkpoints and automatic resume; failure isolation."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import EXE, run_cli

CMD = [
    "run",
    "--methods",
    "stugan",
    "--arch",
    "sngan",
    "--sg",
    "0.8",
    "--steps",
    "80",
    "-o",
    "stugan.delta_t=7",
    "--checkpoint-every",
    "5",
    "--no-progress",
]
KEYS = ["fid", "is_mean", "is_std", "density_g", "density_d", "exploration_rate", "train_flops", "test_flops"]


def results(store):
    return list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))


def started(store) -> bool:
    """Whether the store holds a run yet (a store just created may not hold its tables for an instant)."""
    proc = run_cli("results", "--store", str(store))
    return proc.returncode == 0 and bool(list(csv.DictReader(io.StringIO(proc.stdout))))


def wait_for(pattern_dir, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = list(pattern_dir.glob("*/checkpoint-phase1.pt")) if pattern_dir.exists() else []
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_metrics(tmp_path):
    ref_store, store = tmp_path / "ref" / "r.db", tmp_path / "kill" / "r.db"
    run_cli(*CMD, "--store", str(ref_store), check=True)
    proc = subprocess.Popen(
        [EXE, *CMD, "--store", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    ckpt = wait_for(store.parent / f"{store.stem}-artifacts")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert results(store)[0]["status"] == "running"
    resumed = run_cli(*CMD, "--store", str(store), check=True)
    assert "resuming run" in resumed.stderr
    step = int(resumed.stderr.split("from G step ")[1].split()[0])
    assert 5 <= step < 80
    a, b = results(ref_store)[0], results(store)[0]
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
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    t0 = time.time()
    while time.time() - t0 < 120 and not (store.exists() and started(store)):
        time.sleep(0.1)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err
    row = results(store)[0]
    assert row["status"] == "running" and int(row["interrupted_step"]) > 0
    assert list((store.parent / f"{store.stem}-artifacts").glob("*/checkpoint-phase1.pt"))


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
    proc = subprocess.Popen(
        [EXE, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    ckpt = wait_for(store.parent / f"{store.stem}-artifacts")
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
    assert results(store)[0]["status"] == "done"
    assert list(ckpt.parent.glob("checkpoint-phase1.pt.bad-*"))


def test_checkpoint_from_other_settings_is_refused(tmp_path, plugins):
    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.train.checkpoint import Checkpoint, CheckpointError

    a, b = expand_grid(GridRequest(methods=["static"], arch="sngan", seeds=[0, 1], steps=3), plugins)
    path = tmp_path / "c.pt"
    torch.save({"config": "{}", "G": {}}, path)
    with pytest.raises(CheckpointError, match="other settings"):
        Checkpoint(path, a).restore(None, None, None, None)


def test_failed_cells_are_skipped_until_retry_failed(tmp_path):
    store = tmp_path / "r.db"
    run_cli(
        "run",
        "--methods",
        "static",
        "--arch",
        "sngan",
        "--steps",
        "3",
        "--no-progress",
        "--store",
        str(store),
        check=True,
    )
    import sqlite3

    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET status = 'failed', results = '{\"error\": \"x\"}'")
    again = run_cli(
        "run", "--methods", "static", "--arch", "sngan", "--steps", "3", "--no-progress", "--store", str(store)
    )
    assert again.returncode == 1 and "failed before, skipped" in again.stderr
    run_cli(
        "run",
        "--methods",
        "static",
        "--arch",
        "sngan",
        "--steps",
        "3",
        "--no-progress",
        "--store",
        str(store),
        "--retry-failed",
        check=True,
    )
    assert results(store)[0]["status"] == "done"

"""The scheduler and its executors: one sink protocol, workers that never write the store, a killed worker
or driver (and a stopped driver), Ray, dependencies trained first and never again, grid planning, the same
thread count in every executor and on resume, retries of failed cells, and what a run prints and keeps."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ENV,
    EXE,
    LONG,
    alive,
    children,
    logged_steps,
    plugin_env,
    rows,
    run_cli,
    run_grid,
    scheduler,
    wait_for_file,
    workers,
)

from sparsebench.config import GridRequest, expand_grid
from sparsebench.scheduler import CellJob, run_cell
from sparsebench.settings import RunSettings
from sparsebench.store import Store
from sparsebench.store.sinks import FollowerSink, RecordingSink, RunSink, StoreSink, apply_ops

CRASH_PLUGIN = """
import os

from sparsebench import Method, hookimpl


class Crash(Method):
    name = "crash"
    description = "a method whose worker process exits in the middle of training"

    def run(self, ctx):
        os._exit(3)


@hookimpl
def register_methods(register):
    register(Crash())
"""


def _grid_driver(store: Path) -> subprocess.Popen:
    """A --jobs 2 driver of two STU-GAN cells far too long to finish, in a session of its own."""
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


# -- only the scheduler writes the store ---------------------------------------------------------------------
def test_every_sink_a_run_is_given_speaks_one_protocol(tmp_path):
    store = Store(tmp_path / "r.db")
    run_id = "0123456789abcdef"
    members = [name for name in vars(RunSink) if not name.startswith("_")]
    for sink in (StoreSink(store, run_id, "me"), RecordingSink(run_id, store.path), FollowerSink(store, run_id)):
        for name in members:
            assert hasattr(sink, name), (type(sink).__name__, name)
        assert sink.run_dir() == store.artifacts_dir / run_id or isinstance(sink, RecordingSink)


def test_a_worker_never_touches_the_store(tmp_path, plugins):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=3), plugins)[0]
    db = tmp_path / "store" / "results.db"
    store = Store(db)
    store.conn.close()
    db.rename(db.with_suffix(".moved"))  # the worker must not need the database
    job = CellJob(cfg.to_dict(), str(db), {}, RunSettings(checkpoint_every=0), owner="driver")
    job.artifacts_name = store.artifacts_name
    ops, summary = run_cell(job)
    assert summary["status"] == "done"
    assert not db.exists()  # the worker recorded its writes instead of making them
    db.with_suffix(".moved").rename(db)
    names = [op for op, _ in ops]
    assert names[0] == "update_env" and names[-2:] == ["finish_run", "remove_checkpoints"]
    run_dir = store.artifacts_dir / cfg.run_id
    assert (run_dir / "checkpoint-phase1.pt").exists()  # kept until the driver has committed the outcome
    store = Store(db)
    assert store.claim(cfg, {}, "driver") == "claimed"
    apply_ops(store, ops, "driver")
    assert store.get(cfg.run_id)["status"] == "done"
    assert (run_dir / "final.pt").exists() and not list(run_dir.glob("checkpoint-*"))


# -- a dead worker costs only its own cell -------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_worker_costs_only_its_cell_which_is_tried_again(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--sg", "0.7,0.8,0.9", "--steps", "150", "--jobs", "2", "--checkpoint-every", "10"]
    driver = subprocess.Popen(
        [EXE, *cmd, "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    folder = store.parent / "r-artifacts"  # the store r.db's own artifacts folder
    t0 = time.time()
    while len(list(folder.glob("*/checkpoint-phase1.pt"))) < 2 and time.time() - t0 < 300:
        time.sleep(0.05)
    victims = workers(driver.pid)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    out, err = driver.communicate(timeout=900)
    assert driver.returncode == 0, err
    assert "Traceback" not in err and "trying it once more" in err
    got = rows(store)
    assert len(got) == 3 and all(r["status"] == "done" for r in got), got


@pytest.mark.slow
def test_a_worker_that_exits_in_a_plugin_fails_its_cell_with_its_cause_and_the_grid_goes_on(tmp_path):
    store = tmp_path / "r.db"
    env = plugin_env(tmp_path, "crash", CRASH_PLUGIN)
    proc = run_grid(store, "crash,static", "sngan", "--sg", "0.8,0.9", "--jobs", "2", steps=30, check=False, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    by = {(r["method"], r["sg"]): r for r in rows(store)}
    assert len(by) == 4, by
    assert by[("static", "0.8")]["status"] == by[("static", "0.9")]["status"] == "done"
    for sg in ("0.8", "0.9"):
        crashed = by[("crash", sg)]
        assert crashed["status"] == "failed" and "exited with code 3" in crashed["error"], crashed


# -- a killed or stopped --jobs driver -----------------------------------------------------------------------
@pytest.mark.slow
def test_jobs_driver_killed_takes_its_workers_along_and_loses_no_logged_row(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--sg", "0.8,0.9", "--steps", "60", "--jobs", "2", "--checkpoint-every", "10"]
    driver = subprocess.Popen(
        [EXE, *cmd, "--store", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    from sparsebench.train.checkpoint import load_plain

    folder = store.parent / "r-artifacts"  # the store r.db's own artifacts folder
    t0 = time.time()
    while time.time() - t0 < 300:
        ckpts = list(folder.glob("*/checkpoint-phase1.pt"))
        try:
            if len(ckpts) == 2 and min(load_plain(c)["step"] for c in ckpts) >= 20:
                break
        except Exception:  # noqa: BLE001 - a checkpoint being replaced
            pass
        time.sleep(0.05)
    assert workers(driver.pid)
    victims = [p for p in children(driver.pid) if alive(p)]  # its workers and multiprocessing's helpers
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    t0 = time.time()
    while any(alive(p) for p in victims) and time.time() - t0 < 60:
        time.sleep(0.2)
    assert not any(alive(p) for p in victims), "workers outlived their driver"
    run_cli(*cmd, "--store", str(store), check=True)
    steps = logged_steps(store)
    assert len(steps) == 2
    assert all(s == {1} | set(range(10, 61, 10)) for s in steps.values()), steps


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


# -- Ray -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_executor_runs_a_4_cell_grid(tmp_path):
    pytest.importorskip("ray")
    store = tmp_path / "r.db"
    run_grid(store, "static,dense", "sngan", "--seeds", "0,1", "--executor", "ray", timeout=900)
    got = rows(store)
    assert len(got) == 4 and all(r["status"] == "done" for r in got)


# -- dependencies train first, once --------------------------------------------------------------------------
@pytest.mark.slow
def test_local_jobs_run_dependencies_once(tmp_path):
    store = tmp_path / "r.db"
    proc = run_grid(store, "pf,static", "sngan", "--seeds", "0,1", "--jobs", "2")
    got = rows(store)
    assert sorted(r["method"] for r in got) == ["dense"] * 2 + ["pf-global"] * 2 + ["pf-uniform"] * 2 + ["static"] * 2
    assert all(r["status"] == "done" for r in got)
    assert "[8/8]" in proc.stderr
    dense = {r["seed"]: r["run_id"] for r in got if r["method"] == "dense"}
    assert all(r["pruned_from"] == dense[r["seed"]] for r in got if r["method"].startswith("pf"))


def test_dependencies_train_first_as_their_own_cells_and_are_never_rerun(store):
    first = run_grid(store, "pf-global", "sngan", "--sg", "0.8", steps=2)
    lines = [line for line in first.stderr.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/2] dense") and lines[1].startswith("[2/2] pf-global"), first.stderr
    dense = {r["method"]: r for r in rows(store)}["dense"]
    run_grid(store, "pf-global", "sngan", "--sg", "0.8", "--rerun", steps=2)
    again = {r["method"]: r for r in rows(store)}
    assert again["dense"] == dense  # the run it builds on is reused, not trained again
    assert again["pf-global"]["pruned_from"] == dense["run_id"]


def test_a_dense_run_is_the_same_under_every_policy_and_backend(plugins, store):
    def ids(**changes):
        req = GridRequest(methods=["dense", "static"], arch="sngan", sg=[0.8], steps=2, **changes)
        return {c.method: c for c in expand_grid(req, plugins)}

    default, zero, kernels = ids(), ids(opt_state="zero"), ids(kernels="sparseprop")
    assert default["dense"].run_id == zero["dense"].run_id == kernels["dense"].run_id
    assert zero["dense"].opt_state == "dense" and kernels["dense"].kernels == "dense"
    assert len({default["static"].run_id, zero["static"].run_id, kernels["static"].run_id}) == 3
    run_grid(store, "dense", "sngan", "--sg", "0.8", steps=2)
    run_grid(store, "pf-uniform", "sngan", "--sg", "0.8", "--opt-state", "zero", steps=2)
    methods = sorted(r["method"] for r in rows(store))
    assert methods == ["dense", "pf-uniform"]  # PF under another policy reused the one dense run


# -- a grid of many cells starts its first cell without delay ------------------------------------------------
def test_a_large_grid_hashes_each_cell_once_and_prepares_each_data_set_once(tmp_path, plugins, monkeypatch):
    from sparsebench.config import RunConfig
    from sparsebench.resources import Resources

    hashed, prepared = [], []
    to_dict = RunConfig.to_dict
    monkeypatch.setattr(RunConfig, "to_dict", lambda self: hashed.append(1) or to_dict(self))

    class Floor:
        def floor(self, metrics):
            prepared.append(metrics)

    monkeypatch.setattr(Resources, "evaluator", lambda self, config: Floor())
    req = GridRequest(methods=["static", "stugan"], arch="sngan", sg=[0.8, 0.9], seeds=list(range(500)))
    configs = expand_grid(req, plugins)
    store = Store(tmp_path / "r.db")
    cells = scheduler(store, plugins)
    cells.runner.resources.preflight(configs, store)
    plan = cells.waves(configs)
    assert len(configs) == sum(len(w) for w in plan) == 2000
    assert len({c.run_id for c in configs}) == 2000
    assert len(hashed) <= len(configs) + 10  # each cell's run id is computed once (it was 4 times, deep copies each)
    assert len(prepared) == 1  # the data set's reference features are prepared once, not once per cell


# -- thread counts: one run id, one result -------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_id_trains_with_the_same_threads_in_every_executor_and_environment(tmp_path):
    got = {}
    for name, extra, omp in (("one", [], "1"), ("two", [], "2"), ("jobs", ["--sg", "0.8,0.9", "--jobs", "2"], "4")):
        store = tmp_path / name / "r.db"
        run_grid(store, "static", "sngan", *extra, steps=20, env={"OMP_NUM_THREADS": omp})
        got[name] = next(r for r in rows(store) if r["sg"] == "0.9")
    assert got["one"]["run_id"] == got["two"]["run_id"] == got["jobs"]["run_id"]
    assert got["one"]["threads"] == got["two"]["threads"] == got["jobs"]["threads"] == "1"
    for key in ("fid", "is_mean", "balance_ratio"):
        assert got["one"][key] == got["two"][key] == got["jobs"][key], key
    store = tmp_path / "three" / "r.db"
    run_grid(store, "static", "sngan", "--threads", "2", steps=20)  # an explicit count is its own cell
    (row,) = rows(store)
    assert row["threads"] == "2" and row["run_id"] != got["one"]["run_id"]


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


# -- retries of failed cells ---------------------------------------------------------------------------------
def test_failed_cells_are_skipped_until_retry_failed(tmp_path):
    store = tmp_path / "r.db"
    run_grid(store, "static", steps=3)
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET status = 'failed', results = '{\"error\": \"x\"}'")
    again = run_grid(store, "static", steps=3, check=False)
    assert again.returncode == 1 and "failed before, skipped" in again.stderr
    run_grid(store, "static", "sngan", "--retry-failed", steps=3)
    assert rows(store)[0]["status"] == "done"


# -- what a run prints and keeps -----------------------------------------------------------------------------
def test_samples_keep_only_the_grid_and_logs_get_periodic_lines(tmp_path):
    store = tmp_path / "r.db"
    proc = run_grid(store, "static", steps=40, progress=True)
    lines = [line for line in proc.stderr.splitlines() if "G step" in line]
    assert 1 <= len(lines) <= 11 and "G step 40/40" in lines[-1]
    assert "\r" not in proc.stderr  # no redrawn bar in a log
    samples = next((tmp_path / "r-artifacts").glob("*/samples.pt"))
    images = torch.load(samples, weights_only=True)["images"]
    assert images.shape[0] == 64 and samples.stat().st_size < 3 * images.numel()

"""The scheduler's executors: worker processes and Ray; only the scheduler writes the store."""

from __future__ import annotations

import csv
import io

import pytest
from conftest import run_cli

from sparsebench.config import GridRequest, expand_grid
from sparsebench.scheduler import CellJob, run_cell
from sparsebench.settings import RunSettings
from sparsebench.store import Store
from sparsebench.store.sinks import apply_ops

TINY = ["--steps", "4", "--no-progress"]


def rows(store):
    return list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))


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


@pytest.mark.slow
def test_local_jobs_run_dependencies_once(tmp_path):
    store = tmp_path / "r.db"
    proc = run_cli(
        "run",
        "--methods",
        "pf,static",
        "--arch",
        "sngan",
        "--seeds",
        "0,1",
        "--jobs",
        "2",
        "--store",
        str(store),
        *TINY,
        check=True,
    )
    got = rows(store)
    assert sorted(r["method"] for r in got) == ["dense"] * 2 + ["pf-global"] * 2 + ["pf-uniform"] * 2 + ["static"] * 2
    assert all(r["status"] == "done" for r in got)
    assert "[8/8]" in proc.stderr
    dense = {r["seed"]: r["run_id"] for r in got if r["method"] == "dense"}
    assert all(r["pruned_from"] == dense[r["seed"]] for r in got if r["method"].startswith("pf"))


@pytest.mark.slow
def test_ray_executor_runs_a_4_cell_grid(tmp_path):
    pytest.importorskip("ray")
    store = tmp_path / "r.db"
    run_cli(
        "run",
        "--methods",
        "static,dense",
        "--arch",
        "sngan",
        "--seeds",
        "0,1",
        "--executor",
        "ray",
        "--store",
        str(store),
        *TINY,
        check=True,
        timeout=900,
    )
    got = rows(store)
    assert len(got) == 4 and all(r["status"] == "done" for r in got)

"""Faults and bad input: dead workers, killed drivers, resumes that must equal an uninterrupted run,
processes that lost their claim, thread counts, long paths, orphaned workers and clear one-line errors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXE, run_cli, scheduler
from test_hardening import RESULTS
from test_reliability import ENV, LONG, alive, children, rows, wait_for_file

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


KILL_PLUGIN = """
import os
import signal
import sqlite3

from sparsebench import Metric, hookimpl


class KillOnce(Metric):
    name = "killonce"
    description = "kills its own process the first time it is computed (when its marker file is absent)"

    def compute(self, ev, **options):
        marker = os.environ["BATTERY_MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"killonce": 1.0}


@hookimpl
def register_metrics(register):
    register(KillOnce())
"""


def plugin_env(tmp_path: Path, name: str, source: str) -> dict:
    """The environment of a process that sees the plugin module `source` (entry point `name`)."""
    site = tmp_path / f"site-{name}"
    dist = site / f"{name}_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[sparsebench]\n{name} = {name}_plugin_module\n")
    (site / f"{name}_plugin_module.py").write_text(source)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def workers(driver: int) -> list[int]:
    """The cell worker processes of a `--jobs` driver (not multiprocessing's helper processes)."""
    out = []
    for pid in children(driver):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in cmdline and alive(pid):
            out.append(pid)
    return out


# -- a dead worker costs only its own cell ----------------------------------------------------------
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
    proc = run_cli(
        "run", "--methods", "crash,static", "--arch", "sngan", "--sg", "0.8,0.9", "--steps", "30", "--jobs", "2",
        "--no-progress", "--store", str(store), env=plugin_env(tmp_path, "crash", CRASH_PLUGIN),
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    by = {(r["method"], r["sg"]): r for r in rows(store)}
    assert len(by) == 4, by
    assert by[("static", "0.8")]["status"] == by[("static", "0.9")]["status"] == "done"
    for sg in ("0.8", "0.9"):
        crashed = by[("crash", sg)]
        assert crashed["status"] == "failed" and "exited with code 3" in crashed["error"], crashed


# -- a killed run's logged rows and results are those of an uninterrupted run -------------------------
def logged_steps(store: Path, key: str = "loss_g") -> dict[str, set[int]]:
    with sqlite3.connect(store) as conn:
        out: dict[str, set[int]] = {}
        for run_id, step in conn.execute("SELECT run_id, step FROM stats WHERE key = ?", (key,)):
            out.setdefault(run_id, set()).add(step)
    return out


@pytest.mark.slow
def test_jobs_driver_killed_loses_no_logged_row(tmp_path):
    store = tmp_path / "r.db"
    cmd = [*LONG, "--sg", "0.8,0.9", "--steps", "60", "--jobs", "2", "--checkpoint-every", "10"]
    driver = subprocess.Popen(
        [EXE, *cmd, "--store", str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
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
    victims = workers(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    t0 = time.time()
    while any(alive(p) for p in victims) and time.time() - t0 < 120:
        time.sleep(0.2)
    run_cli(*cmd, "--store", str(store), check=True)
    steps = logged_steps(store)
    assert len(steps) == 2
    assert all(s == {1} | set(range(10, 61, 10)) for s in steps.values()), steps


RESULT_TIMES = {
    "wall_s",
    "train_s_per_step",
    "train_s_per_step_median",
    "infer_ms_per_image",
    "load_per_core",
    "threads",
}


@pytest.mark.slow
def test_a_run_killed_during_evaluation_resumes_to_the_uninterrupted_results(tmp_path):
    cmd = [*LONG, "--steps", "30", "--checkpoint-every", "10", "--metrics", "fid,killonce"]
    ref, killed = tmp_path / "ref" / "r.db", tmp_path / "killed" / "r.db"
    marker = tmp_path / "marker"
    env = {**plugin_env(tmp_path, "killonce", KILL_PLUGIN), "BATTERY_MARKER": str(marker)}
    first = run_cli(*cmd, "--store", str(killed), env=env)
    assert first.returncode == -signal.SIGKILL and marker.exists()  # killed inside the evaluation
    run_cli(*cmd, "--store", str(killed), env=env, check=True)  # resumed
    run_cli(*cmd, "--store", str(ref), env=env, check=True)  # uninterrupted
    (a,), (b,) = rows(ref), rows(killed)
    assert a["balance_ratio"] and a["balance_ratio_last10"]
    differ = {k for k in a if a[k] != b.get(k)} - RESULT_TIMES
    assert not differ, {k: (a[k], b.get(k)) for k in differ}
    assert logged_steps(ref) == logged_steps(killed)


# -- one run id, one result --------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_id_trains_with_the_same_threads_in_every_executor_and_environment(tmp_path):
    cmd = ["run", "--methods", "static", "--arch", "sngan", "--steps", "20", "--no-progress"]
    got = {}
    for name, extra, omp in (("one", [], "1"), ("two", [], "2"), ("jobs", ["--sg", "0.8,0.9", "--jobs", "2"], "4")):
        store = tmp_path / name / "r.db"
        run_cli(*cmd, *extra, "--store", str(store), env={"OMP_NUM_THREADS": omp}, check=True)
        got[name] = next(r for r in rows(store) if r["sg"] == "0.9")
    assert got["one"]["run_id"] == got["two"]["run_id"] == got["jobs"]["run_id"]
    assert got["one"]["threads"] == got["two"]["threads"] == got["jobs"]["threads"] == "1"
    for key in ("fid", "is_mean", "balance_ratio"):
        assert got["one"][key] == got["two"][key] == got["jobs"][key], key
    store = tmp_path / "three" / "r.db"
    run_cli(*cmd, "--threads", "2", "--store", str(store), check=True)  # an explicit count is its own cell
    (row,) = rows(store)
    assert row["threads"] == "2" and row["run_id"] != got["one"]["run_id"]


def test_threads_out_of_range_is_one_line(store):
    proc = run_cli("run", "--methods", "static", "--arch", "sngan", "--threads", "0", "--store", str(store))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "threads must be an integer in [1, 1024], got 0" in proc.stderr


# -- a process that lost its claim touches nothing of that run ----------------------------------------
def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


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


# -- a report renders whatever metrics were computed ------------------------------------------------
@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_report_of_runs_that_computed_only_fid(tmp_path, plugins, fmt):
    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.store import Store

    store = Store(tmp_path / "r.db")
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", metrics=("fid",)), plugins)[0]
    store.claim(cfg, {"torch": "x", "device": "cpu"}, "filler")
    store.finish_run(cfg.run_id, "done", {k: v for k, v in RESULTS.items() if not k.startswith("is_")}, 1.0, "filler")
    store.close()
    out = tmp_path / "rep"
    proc = run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), "--format", fmt)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    text = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".md", ".tex"))
    assert "50.00" in text and "n/a" in text


# -- one-line errors ------------------------------------------------------------------------------------
def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["results"], ["run", "--methods", "static", "--arch", "sngan", "--steps", "2"]])
def test_a_store_name_longer_than_the_filesystem_allows_is_one_line(tmp_path, command):
    path = tmp_path / ("a" * 300 + ".db")
    line = one_line(run_cli(*command, "--store", str(path)))
    assert "File name too long" in line and "--store" in line


def test_a_truncated_store_is_called_damaged(tmp_path, plugins):
    from test_hardening import one_run_store

    path = tmp_path / "r.db"
    one_run_store(path, plugins)
    path.write_bytes(path.read_bytes()[:3000])
    for command in (["results"], ["run", "--methods", "static", "--arch", "sngan", "--steps", "2"]):
        line = one_line(run_cli(*command, "--store", str(path)))
        assert "damaged or truncated" in line and "writable" not in line, line


@pytest.mark.parametrize("prefix", ["5_66", "%", "_"])
def test_show_takes_a_prefix_literally(tmp_path, plugins, prefix):
    from test_hardening import one_run_store

    run_id = one_run_store(tmp_path / "r.db", plugins)
    line = one_line(run_cli("show", prefix, "--store", str(tmp_path / "r.db")))
    assert "expected hexadecimal characters" in line
    shown = run_cli("show", run_id[:4].upper(), "--store", str(tmp_path / "r.db"), check=True)
    assert run_id in shown.stdout


def test_an_option_given_twice_is_an_error(store):
    line = one_line(
        run_cli(
            "run", "--methods", "stugan", "--arch", "sngan", "-o", "stugan.delta_t=7", "-o", "stugan.delta_t=9",
            "--store", str(store),
        )
    )  # fmt: skip
    assert "stugan.delta_t given twice" in line
    assert not store.exists()


def test_a_full_disk_while_writing_weights_says_so(tmp_path, monkeypatch):
    import shutil

    from sparsebench.train import checkpoint

    def full(obj, path):
        Path(path).write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0; file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match="the disk is full"):
        checkpoint.atomic_save({"x": 1}, tmp_path / "checkpoint-phase1.pt")
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
    run_cli("run", "--methods", "static", "--arch", "sngan", "--steps", "2", "--no-progress",
            "--store", str(tmp_path / "r.db"), check=True, spawn=True)  # fmt: skip
    assert not stale.exists() and live.exists()


@pytest.mark.slow
def test_tensorboard_export_holds_every_logged_statistic(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "r.db"
    run_cli(*LONG, "--steps", "20", "--sd", "0.5", "-o", "stugan.explore=gd", "--store", str(store), check=True)
    with sqlite3.connect(store) as conn:
        keys = {k for (k,) in conn.execute("SELECT DISTINCT key FROM stats")}
    assert {"exploration_rate_d", "update_fraction"} <= keys
    out = tmp_path / "rep"
    run_cli("report", "--store", str(store), "--out", str(out), "--no-samples", check=True)
    (folder,) = (out / "tensorboard").iterdir()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == keys


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# -- the report's plot workers end with it ------------------------------------------------------------
@pytest.mark.slow
def test_report_plot_workers_die_with_a_killed_report(tmp_path, plugins):
    from test_hardening import one_run_store

    one_run_store(tmp_path / "r.db", plugins)
    cmd = [EXE, "report", "--store", str(tmp_path / "r.db"), "--out", str(tmp_path / "rep"), "--no-samples"]
    report = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    own = Path(f"/proc/{report.pid}/cmdline").read_bytes()
    forked: list[int] = []
    t0 = time.time()
    while len(forked) < 2 and report.poll() is None and time.time() - t0 < 120:
        forked = [p for p in children(report.pid) if cmdline(p) == own]
        time.sleep(0.01)
    assert len(forked) == 2, "no plot workers seen"
    report.send_signal(signal.SIGKILL)
    report.wait()
    t0 = time.time()
    while any(alive(p) for p in forked) and time.time() - t0 < 20:
        time.sleep(0.1)
    orphans = [p for p in forked if alive(p)]
    for p in orphans:
        os.kill(p, signal.SIGKILL)
    assert not orphans, "plot workers outlived the report"


# -- a grid of many cells starts its first cell without delay ------------------------------------------
def test_a_large_grid_hashes_each_cell_once_and_prepares_each_data_set_once(tmp_path, plugins, monkeypatch):
    from sparsebench.config import GridRequest, RunConfig, expand_grid
    from sparsebench.resources import Resources
    from sparsebench.store import Store

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

"""Faults and bad input: dead workers, killed drivers, resumes that must equal an uninterrupted run,
processes that lost their claim, thread counts, long paths, orphaned workers and clear one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXE, run_cli
from test_reliability import ENV, LONG, alive, children, rows

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


def crash_plugin(tmp_path: Path) -> dict:
    """The environment of a process that sees the `crash` method plugin."""
    site = tmp_path / "site"
    dist = site / "crash_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crash-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sparsebench]\ncrash = crash_plugin_module\n")
    (site / "crash_plugin_module.py").write_text(CRASH_PLUGIN)
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
    folder = store.parent / "artifacts"
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
        "--no-progress", "--store", str(store), env=crash_plugin(tmp_path),
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    by = {(r["method"], r["sg"]): r for r in rows(store)}
    assert len(by) == 4, by
    assert by[("static", "0.8")]["status"] == by[("static", "0.9")]["status"] == "done"
    for sg in ("0.8", "0.9"):
        crashed = by[("crash", sg)]
        assert crashed["status"] == "failed" and "exited with code 3" in crashed["error"], crashed

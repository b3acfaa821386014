"""Shared fixtures: a fresh results store per test, and the `sparsebench` command line (in this process
by default, the real executable in a subprocess where a test needs one).

Test tiers: `python -m pytest -q` runs the fast tier; tests marked `slow` (more than about 10 s of CPU on a
quiet machine, or by nature: SIGKILL and resume of subprocesses, concurrent processes, Ray, torchrun,
trainings of a full preset) run with `python -m pytest -q -m slow`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

# One thread per process: several tests run sparsebench processes side by side on small machines,
# and oversubscribed OpenMP threads slow everything down by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One extractor cache for the whole session: the digits classifier is trained once, then loaded.
os.environ.setdefault("SPARSEBENCH_CACHE", tempfile.mkdtemp(prefix="sparsebench-cache-"))
EXE = shutil.which("sparsebench") or str(Path(sys.executable).with_name("sparsebench"))
TINY = ["--steps", "4", "--no-progress"]
STARTUP_ENV = ("PYTHON", "OMP_", "MKL_")  # environment read when a process starts, not by a command


def run_cli(
    *args: str, env: dict | None = None, check: bool = False, timeout: int = 600, spawn: bool = False
) -> subprocess.CompletedProcess:
    """Run the `sparsebench` command line and return its exit status, stdout and stderr.

    In this process (click's test runner), with `env` set for the call, unless `spawn`, a variable read
    at start-up (a plugin on PYTHONPATH, thread counts) or worker processes (`--jobs`, `--executor`) ask
    for the installed entry point in a subprocess: a process start costs seconds of imports, the
    command's code path is the same.
    """
    at_startup = any(key.startswith(STARTUP_ENV) for key in env or {})
    spawn = spawn or at_startup or "--jobs" in args or "--executor" in args
    proc = _run_subprocess(args, env, timeout) if spawn else _run_in_process(args, env)
    if check and proc.returncode != 0:
        raise AssertionError(f"sparsebench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _run_subprocess(args, env: dict | None, timeout: int) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def _run_in_process(args, env: dict | None) -> subprocess.CompletedProcess:
    """`sparsebench ARGS` through click's test runner; what the command changes in the process (signal
    handlers, torch threads, logging) is put back afterwards. An uncaught exception is printed to stderr
    with exit status 1, as the interpreter would."""
    import torch
    from click.testing import CliRunner

    from sparsebench.cli import cli

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()  # the command's logging.basicConfig then writes to the captured stderr
    try:
        result = CliRunner().invoke(cli, list(args), prog_name="sparsebench", env=env, catch_exceptions=True)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved_handlers, saved_level
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["sparsebench", *args], result.exit_code, result.stdout, stderr)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store" / "results.db"


@pytest.fixture(scope="session")
def plugins():
    from sparsebench.plugins import get_plugins

    return get_plugins()


def loop(
    state,
    steps: int,
    spec,
    batcher,
    num_classes: int,
    generator,
    step_cost=None,
    hooks=None,
    log=None,
    progress=None,
    checkpoint=None,
    checkpoint_every: int = 0,
    stop_requested=None,
    sync_grads=None,
    evaluate=None,
    speed=None,
    extra_cost=None,
):
    """`sparsebench.train.loop.train` with its `LoopIO` made of plain functions and the method's callbacks
    behind the balance-ratio probe they ask for, as a run's context wires them: the loop tests name only
    what they watch."""
    from sparsebench.balance import probed
    from sparsebench.train.loop import LoopIO, train

    wired = [f is not None for f in (log, checkpoint, evaluate, sync_grads)]

    class FunctionIO(LoopIO):
        logs, checkpoints, evaluates, synchronises = wired

        def step_cost(self, state):
            return step_cost() if step_cost is not None else 0.0

        def extra_cost(self, state, nets):
            return extra_cost(nets) if extra_cost is not None else 0.0

        def log(self, step, values):
            log(step, values)

        def progress(self, steps):
            if progress is not None:
                progress(steps)

        def checkpoint(self):
            checkpoint()

        def stop_requested(self):
            return stop_requested is not None and stop_requested()

        def sync_grads(self, model):
            sync_grads(model)

        def topology_changed(self, state):
            from sparsebench.distributed import broadcast_masks

            broadcast_masks(state.g_masks)
            broadcast_masks(state.d_masks)

        def evaluate(self, step):
            evaluate(step)

    io = FunctionIO()
    io.checkpoint_every = checkpoint_every
    train(state, steps, spec, batcher, num_classes, generator, probed(hooks), io, speed)


def scheduler(store, plugins, **settings):
    """A `Scheduler` of cells on `store`, with a runner of these `RunSettings` (no progress bars unless asked):
    `.run_one(config)` claims and trains one cell in this process, as `sparsebench run` does."""
    from sparsebench.runner import Runner
    from sparsebench.scheduler import Scheduler
    from sparsebench.settings import RunSettings

    return Scheduler(store, Runner(plugins, RunSettings(**{"progress": False, **settings})))

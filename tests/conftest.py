"""Shared fixtures and helpers: a fresh results store per test; the `sparsebench` command line (in this process
by default, the real executable in a subprocess where a test needs one) and its usual `run` (`run_grid`);
the small `TrainSpec` of the loop tests (`SMALL`, `small_spec`); stores filled through the real Store API
(`add_run`, `fill_store`, `one_run_store`); and the helpers of tests that start, watch and kill sparsebench processes.

Test tiers: `python -m pytest -q` runs the fast tier; tests marked `slow` (more than about 10 s of CPU on a
quiet machine, or by nature: SIGKILL and resume of subprocesses, concurrent processes, Ray, torchrun,
trainings of a full preset) run with `python -m pytest -q -m slow`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}  # of a sparsebench process a test starts itself (Popen)
# a STU-GAN run long enough to be interrupted: the tests add --steps, --checkpoint-every and --store
LONG = ["run", "--methods", "stugan", "--arch", "sngan", "--sg", "0.8", "-o", "stugan.delta_t=7", "--no-progress"]
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


def run_grid(
    store: Path,
    methods: str,
    arch: str = "sngan",
    *extra: str,
    steps: int | None = 4,
    progress: bool = False,
    check: bool = True,
    env: dict | None = None,
    **kwargs,
) -> subprocess.CompletedProcess:
    """`sparsebench run --methods METHODS --arch ARCH EXTRA... --steps STEPS --no-progress --store STORE`, the
    usual run of the tests (`steps=None`: the preset's; `progress=True`: without --no-progress); by default a
    failure raises. Other keywords go to `run_cli` (`timeout`, `spawn`)."""
    args = ["run", "--methods", methods, "--arch", arch, *extra]
    args += ["--steps", str(steps)] if steps is not None else []
    args += [] if progress else ["--no-progress"]
    return run_cli(*args, "--store", str(store), env=env, check=check, **kwargs)


def rows(store: Path, env: dict | None = None, **kwargs) -> list[dict]:
    """The rows of `sparsebench results` (CSV) on `store`."""
    out = run_cli("results", "--store", str(store), env=env, check=True, **kwargs).stdout
    return list(csv.DictReader(io.StringIO(out)))


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command wrote to stderr (asserts it failed and wrote no more than that line)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    return lines[0]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """`one_line`, which must start with "Error: " as click's errors do."""
    assert proc.returncode != 0, proc.stdout
    line = one_line(proc)
    assert line.startswith("Error: "), line
    return line


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


# -- the small TrainSpec of the loop tests -----------------------------------------------------------------
SMALL = dict(
    dataset="digits",
    resolution=16,
    width=4,
    z_dim=16,
    batch_size=8,
    g_batch_size=8,
    n_critic=1,
    lr_g=1e-3,
    lr_d=1e-3,
    beta1=0.0,
    beta2=0.999,
    steps=6,
    ema_decay=0.9,
    ema_start=0,
    explore_interval=2,
    eval_samples=10,
    extractor="sparsebench-digits",
    log_every=1,
)


def small_spec(**changes):
    """`TrainSpec(**SMALL)` with `changes`: 16x16 digits, width 4, a few steps; every G/D built from it is tiny."""
    from sparsebench.config import TrainSpec

    return TrainSpec(**{**SMALL, **changes})


# -- stores filled through the real Store API -------------------------------------------------------------
# the results of one done run, as the store holds them (one_run_store)
RESULTS = {
    "fid": 50.0,
    "is_mean": 3.0,
    "is_std": 0.1,
    "density_g": 0.1,
    "density_d": 0.5,
    "train_flops": 1e12,
    "test_flops": 1e8,
    "train_flops_rel": 0.5,
    "test_flops_rel": 0.1,
    "extractor": "sparsebench-digits",
    "eval_samples": 1000,
    "scope": "conv",
    "variant": "",
}
# what the analysis tests store beside a chosen FID: every cost 1.0, relative costs 1.0
UNIT_COSTS = {"is_mean": 5.0, "train_flops": 1.0, "test_flops": 1.0, "train_flops_rel": 1.0, "test_flops_rel": 1.0}


def add_run(store, cfg, results: dict, status: str = "done", env: dict | None = None, owner: str = "filler") -> None:
    """Stores the run `cfg` as a process would: claimed (under `env`), then finished with `status`, `results`."""
    store.claim(cfg, {} if env is None else env, owner)
    store.finish_run(cfg.run_id, status, results, 1.0, owner)


def fill_store(store, plugins, request, results, env: dict | None = None):
    """Stores every cell of the `GridRequest` `request` for which `results(cfg)` gives a dict, done (`add_run`),
    in `store` (a `Store`, or the path of one to open); returns the `Store`."""
    from sparsebench.config import expand_grid
    from sparsebench.store import Store

    store = store if isinstance(store, Store) else Store(store)
    for cfg in expand_grid(request, plugins):
        stored = results(cfg)
        if stored is not None:
            add_run(store, cfg, stored, env=env)
    return store


def one_run_store(path: Path, plugins) -> str:
    """A closed store holding one done run (static, sngan) with two logged values; returns its run id."""
    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.store import Store

    store = Store(path)
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan"), plugins)[0]
    add_run(store, cfg, RESULTS, env={"torch": "x", "device": "cpu"})
    store.log_stats(cfg.run_id, [(1, "loss_g", 1.0), (1, "loss_d", 0.5)])
    store.close()
    return cfg.run_id


# -- processes a test starts, watches and kills ----------------------------------------------------------
def wait_for_file(folder: Path, pattern: str, timeout: float = 120) -> Path:
    """The first file under `folder` matching `pattern`, once one appears (an AssertionError after `timeout`)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = list(folder.glob(pattern)) if folder.exists() else []
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} appeared under {folder}")


def children(pid: int) -> list[int]:
    """The process ids whose parent is `pid`."""
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
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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


def logged_steps(store: Path, key: str = "loss_g") -> dict[str, set[int]]:
    """The steps at which each run of `store` logged `key`, by run id."""
    import sqlite3

    with sqlite3.connect(store) as conn:
        out: dict[str, set[int]] = {}
        for run_id, step in conn.execute("SELECT run_id, step FROM stats WHERE key = ?", (key,)):
            out.setdefault(run_id, set()).add(step)
    return out


def plugin_env(tmp_path: Path, name: str, source: str) -> dict:
    """The environment of a process that sees the plugin module `source` (entry point `name`)."""
    site = tmp_path / f"site-{name}"
    dist = site / f"{name}_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[sparsebench]\n{name} = {name}_plugin_module\n")
    (site / f"{name}_plugin_module.py").write_text(source)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

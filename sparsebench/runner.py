"""Running a grid: one RunConfig at a time, from method plugin to stored result.

For each cell: skip it when its run id is already `done`; otherwise claim it in the store (a cell
another live process holds is left to it), let the method train through a RunContext, evaluate
the final generator with the metric plugins, count its FLOPs, and store everything. A diverged run
is stored as `diverged` with its step, a crashing one as `failed` with its error, and the grid
goes on.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsebench import SparsebenchError, __version__, distributed
from sparsebench.api import DataSplits, RunArtifacts
from sparsebench.config import RunConfig
from sparsebench.evaluation import curve_point, evaluate_run, ratio_results
from sparsebench.metrics.evaluate import Evaluator
from sparsebench.options import validate_options
from sparsebench.plugins import Plugins
from sparsebench.store import BALANCE_RATIO_ESTIMATOR, RunStore, process_owner
from sparsebench.train.checkpoint import atomic_save, remove_stale_temporaries
from sparsebench.train.context import RunContext, RunWiring
from sparsebench.train.loop import Diverged, Interrupted
from sparsebench.train.speed import deterministic
from sparsebench.train.speed import environment as speed_environment

log = logging.getLogger("sparsebench.run")
POLL_S = 2.0  # seconds between looks at a cell another process holds
CLAIM_CHECK_S = 1.0  # at most this often, a training run looks whether it still holds its claim


class ClaimLost(RuntimeError):
    """This process no longer holds its claim on the run (paused past its lease, taken over elsewhere):
    it stops and touches none of that run's files, which belong to the new holder now."""


def cache_dir() -> Path:
    """Where extractor weights and reference statistics are cached (shared by all stores)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsebench"
    return Path(os.environ.get("SPARSEBENCH_CACHE", default))


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), for labelling measured times."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """Where a run ran; `threads`: the run's own CPU thread count (RunConfig.threads), else this process's."""
    env = {
        "sparsebench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "balance_ratio_estimator": BALANCE_RATIO_ESTIMATOR,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch's CPU thread count set to `n` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Outcome:
    run_id: str
    config: RunConfig
    status: str
    results: dict = field(default_factory=dict)
    skipped: bool = False
    taken: bool = False  # held by another live process: left to it


def data_key(config: RunConfig) -> tuple:
    """What a run's data depends on: runs sharing it share one loaded data set."""
    return (config.dataset, config.train.resolution, config.dataset_options)


class Runner:
    def __init__(
        self,
        store: RunStore,
        plugins: Plugins,
        device: str = "cpu",
        data_dir: str | None = None,
        inception_weights: str | None = None,
        progress: bool = True,
        checkpoint_every: int = 500,
        retry_failed: bool = False,
        owner: str | None = None,
        rerun: bool = False,
    ):
        if device == "cuda" and not torch.cuda.is_available():
            raise SparsebenchError("--device cuda: no CUDA device is available here; use --device cpu")
        self.store = store
        self.plugins = plugins
        self.device = torch.device(device)
        self.data_dir = data_dir
        self.inception_weights = inception_weights
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        self.retry_failed = retry_failed
        self.rerun = rerun  # train the grid's cells again even when stored (dependencies are reused)
        self.owner = owner or process_owner()  # whose claims this runner's cells are
        self.stop = False  # set by SIGTERM / Ctrl-C: the current run checkpoints and stops
        self._nested_wall = 0.0  # seconds spent inside runs this run required
        self.last_context: RunContext | None = None
        self.outcomes: list[Outcome] = []  # every run looked at, dependencies included, in order
        self._data: dict[tuple, DataSplits] = {}
        self._evaluators: dict[tuple, Evaluator] = {}

    # -- shared resources -----------------------------------------------------------------------
    def data(self, config: RunConfig) -> DataSplits:
        key = data_key(config)
        if key not in self._data:
            ds = self.plugins.datasets.get(config.dataset)
            self._data[key] = ds.load(config.train.resolution, self.data_dir, **dict(config.dataset_options))
        return self._data[key]

    def evaluator(self, config: RunConfig) -> Evaluator:
        key = (*data_key(config), config.train.extractor)
        if key not in self._evaluators:  # keyed like `data`: a data set option changes the reference
            self._evaluators[key] = Evaluator(
                self.data(config),
                config.dataset,
                config.train.extractor,
                cache_dir(),
                self.device,
                self.inception_weights,
                self.plugins.extractors,
            )
        return self._evaluators[key]

    def preflight(self, configs: list[RunConfig]) -> None:
        """Load data and extractors before any run starts, so bad setups fail before training; and check that
        the data a grid's done cells were scored on is the data there now (see `check_stored_data`)."""
        prepared: set[tuple] = set()
        checked: set[tuple] = set()
        for config in configs:
            status = self.store.status(config.run_id)
            if status == "done" and not self.rerun:  # skipped: its data is checked once per data set
                stored_key = data_key(config)
                if stored_key not in checked:
                    checked.add(stored_key)
                    self.check_stored_data(config)
                continue
            key = (*data_key(config), config.train.extractor, config.threads, "fid" in config.metrics)
            if key in prepared:  # once per data set, not per cell
                continue
            prepared.add(key)
            with pinned_threads(config.threads):  # the cached reference features are computed as runs use them
                ev = self.evaluator(config)
                if "fid" in config.metrics:
                    ev.floor({"fid"})  # also caches the reference features before workers need them

    def check_stored_data(self, config: RunConfig) -> None:
        """A done cell is skipped on its run id, which names the data set and its options but not its files: if
        they changed since the cell was scored (an image folder edited in place), its stored numbers are of
        other data. Compared once per data set of a grid, on its first done cell; the report flags cells whose runs
        disagree."""
        from sparsebench.metrics.cache import data_hash

        stored = ((self.store.get(config.run_id) or {}).get("results") or {}).get("data_hash")
        if not stored:
            return  # stored before the data hash was recorded
        now = data_hash(self.data(config))
        if now != stored:
            raise SparsebenchError(
                f"data set {config.dataset} has changed since run {config.run_id} was scored on it (data hash "
                f"{stored}, now {now}): its stored results are of other data; use another --store, or --rerun "
                "to train the grid again on this data"
            )

    # -- one run --------------------------------------------------------------------------------
    def claim(self, config: RunConfig, wait: bool = False, rerun: bool | None = None) -> str:
        """The store's decision on `config` for this runner (see Store.claim); with `wait`, a cell
        another process holds is waited for until it is done or its claim goes stale."""
        env = {**environment(self.device, config.threads), **speed_environment(config)}
        rerun = self.rerun if rerun is None else rerun
        while True:
            decision = self.store.claim(config, env, self.owner, self.retry_failed, rerun)
            if distributed.world_size() > 1:  # rank 0's decision holds for every rank
                decision = distributed.broadcast_object(decision)
            if decision in ("claimed", "rerun"):
                self.store.keep_alive(self.owner)
            if decision != "taken" or not wait:
                return decision
            if self.stop:
                raise Interrupted(0)
            time.sleep(POLL_S)

    def run(self, config: RunConfig, wait: bool = False, rerun: bool | None = None) -> Outcome:
        run_id = config.run_id
        decision = self.claim(config, wait, rerun)
        if decision == "taken":
            holder = {"owner": self.store.holder(run_id)}
            return self._record(Outcome(run_id, config, "running", holder, skipped=True, taken=True))
        if decision not in ("claimed", "rerun"):
            stored = self.store.get(run_id)
            return self._record(Outcome(run_id, config, decision, stored["results"] if stored else {}, skipped=True))
        return self._record(self._train(config, rerun=decision == "rerun"))

    def _train(self, config: RunConfig, rerun: bool = False) -> Outcome:
        """Train a claimed cell. A `rerun` starts from scratch and leaves the stored row as it was
        unless the new run reaches an outcome (done, diverged, failed)."""
        run_id = config.run_id
        method = self.plugins.methods.get(config.method)
        arch = self.plugins.archs.get(config.arch)
        data = self.data(config)
        bar = self._bar(config)
        leader = distributed.rank() == 0
        pending: list[tuple[int, str, float]] = []
        held: list[tuple[int, str, float]] | None = [] if rerun else None  # a rerun's, stored with its outcome

        checked = [time.monotonic()]

        def holding(every: float = CLAIM_CHECK_S) -> bool:
            """Raise ClaimLost once the claim is gone (looked at most every `every` seconds)."""
            if time.monotonic() - checked[0] >= every:
                checked[0] = time.monotonic()
                if leader and not self.store.holds(run_id, self.owner):
                    raise ClaimLost(f"run {run_id} was taken over by another process")
            return True

        def flush() -> None:
            """Logged statistics reach the store with every checkpoint and before evaluation (a rerun's
            only with its outcome, which replaces the old one's curves and results at once); nothing
            is written, and no checkpoint follows, once the claim is lost."""
            holding(every=0.0)
            if held is not None:
                held.extend(pending)
            else:
                self.store.log_stats(run_id, pending)
            pending.clear()

        ratios: list[tuple[int, float]] = []  # the balance ratio over the current training phase

        def log_fn(step: int, values: dict) -> None:
            pending.extend((step, k, float(v)) for k, v in values.items())
            for key, value in values.items():
                if key.endswith("balance_ratio"):
                    if ratios and step <= ratios[-1][0]:  # a new phase (fine-tuning, a ticket round)
                        ratios.clear()
                    ratios.append((step, float(value)))
            if len(pending) > 200:
                flush()
            if bar is not None and "loss_g" in values:
                bar.set_postfix(loss_d=f"{values['loss_d']:.3f}", loss_g=f"{values['loss_g']:.3f}", refresh=False)

        if rerun:
            self.store.remove_checkpoints(run_id)
        if leader:  # what a killed process of this run left half-written
            remove_stale_temporaries(self.store.run_dir(run_id))
        t0 = time.perf_counter()
        wiring = RunWiring(
            build=lambda width: arch.build(config.train, data.train.num_classes, width, **dict(config.arch_options)),
            require=lambda name, changes: self.require(config, name, changes),
            log=log_fn,
            progress=bar.update if bar is not None else None,
            progress_phase=(lambda total, done, label: _phase_bar(bar, total, done, label))
            if bar is not None
            else None,
            checkpoint_every=self.checkpoint_every,
            stop_requested=lambda: holding() and self.stop,
            flush=flush,
            elapsed=lambda: time.perf_counter() - t0 - self._nested_wall,
            evaluate=(
                lambda model: curve_point(config, model, self.evaluator(config), data.train.num_classes, self.device)
            )
            if distributed.rank() == 0 and "fid" in config.metrics
            else None,
        )
        ctx = RunContext(config, data, self.device, self.store.run_dir(run_id), wiring, width=method.width)
        outer_nested, self._nested_wall = self._nested_wall, 0.0
        status, results = "done", {}
        threads = torch.get_num_threads()
        torch.set_num_threads(config.threads)  # the run's own count, whichever executor runs it
        used_threads = config.threads
        self.last_context = ctx
        determinism = deterministic(config.deterministic, self.device)
        determinism.__enter__()  # left in `finally` below
        try:
            method.run(ctx)
            if ctx.final is None:
                raise RuntimeError(f"method {config.method!r} returned without calling ctx.finish(...)")
            flush()
            if leader:  # rank 0 evaluates and stores for the whole process group
                results = {
                    **evaluate_run(config, ctx, self.evaluator(config), self.plugins, self.device),
                    **ratio_results(ratios),
                }
                if "fid_final" in results and config.train.eval_every:  # the curve ends at the final evaluation
                    key = "fid" if ctx.phase_label == "train" else f"{ctx.phase_label}/fid"  # as the phase's points
                    pending.append((ctx.final.step, key, float(results["fid_final"])))
        except ClaimLost as exc:  # the run is another process's now: no file of it is touched
            return self._lost(config, exc, outer_nested + time.perf_counter() - t0)
        except Diverged as exc:
            status = "diverged"
            results = {"diverged_step": exc.step, "error": str(exc), **self._partial(config, ctx)}
        except Interrupted as exc:  # checkpoint saved: the run stays `running` until it is resumed
            flush()
            if rerun:  # the stored outcome stays until a rerun reaches its own
                self.store.release(run_id, self.owner)
            else:
                self.store.finish_run(
                    run_id,
                    "running",
                    {"interrupted_step": exc.step, "error": f"{exc}; run the same command to resume"},
                    ctx.wall_s(),
                    self.owner,
                )
            raise
        except SparsebenchError as exc:
            self._abandon(run_id, rerun, "failed", {"error": str(exc)}, ctx.wall_s())
            raise
        except KeyboardInterrupt:
            self._abandon(run_id, rerun, "failed", {"error": "interrupted"}, ctx.wall_s())
            raise
        except Exception as exc:  # noqa: BLE001 - a crashing cell is stored, the grid goes on
            status = "failed"
            results = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
            log.error("run %s (%s) failed: %s", run_id, config.method, exc)
        finally:
            determinism.__exit__(None, None, None)
            if bar is not None:
                bar.close()
            used_threads = torch.get_num_threads()
            torch.set_num_threads(threads)  # a resumed run may have pinned the count it started with
        try:
            flush()
        except ClaimLost as exc:
            return self._lost(config, exc, outer_nested + time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        wall = ctx.wall_s()  # a dependency's time is its own run's wall_s; earlier segments count
        self._nested_wall = outer_nested + elapsed
        results["wall_s"] = wall
        results["threads"] = used_threads
        if ctx.final is not None and status == "done" and leader:
            self._save_artifacts(ctx)
        stored = self.store.finish_run(
            run_id,
            status,
            results,
            wall,
            self.owner,
            env={**environment(self.device, config.threads), **speed_environment(config)} if rerun else None,
            stats=held,
        )
        if stored and status in ("done", "diverged"):  # finished for good (and committed): checkpoints are spent
            self.store.remove_checkpoints(run_id)
        distributed.barrier()  # followers read this run's artifacts only after rank 0 wrote them
        return Outcome(run_id, config, status, results)

    def _lost(self, config: RunConfig, exc: ClaimLost, nested_wall: float) -> Outcome:
        """A run whose claim this process lost: left to its new holder (looked at again like a taken cell)."""
        log.warning("%s while this process was stopped or slow; left to that process", exc)
        self._nested_wall = nested_wall
        holder = {"owner": self.store.holder(config.run_id)}
        return Outcome(config.run_id, config, "running", holder, skipped=True, taken=True)

    def _abandon(self, run_id: str, rerun: bool, status: str, results: dict, wall: float) -> None:
        """A run stopped by the user or the environment: stored as `status`, except that a rerun
        leaves the outcome stored before it in place."""
        if rerun:
            self.store.release(run_id, self.owner)
        else:
            self.store.finish_run(run_id, status, results, wall, self.owner)

    def _record(self, outcome: Outcome) -> Outcome:
        """Keep one outcome per run id, the latest (a cell first found taken may be finished later)."""
        self.outcomes = [o for o in self.outcomes if o.run_id != outcome.run_id] + [outcome]
        return outcome

    def install_signal_handlers(self) -> None:
        """SIGTERM and the first Ctrl-C ask the current run to checkpoint and stop; a second Ctrl-C
        stops at once."""
        import signal

        def handler(signum, frame):
            if self.stop and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _bar(self, config: RunConfig):
        if not self.progress:
            return None
        label = f"{config.method} sG={config.sg:g} sD={config.sd:g} seed={config.seed}"
        if not sys.stderr.isatty():  # logs (CI, nohup, Ray) get a compact line now and then, not a bar
            return LineProgress(config.train.steps, label)
        from tqdm.auto import tqdm

        bar = tqdm(total=config.train.steps, desc=label, unit=" G steps", leave=False, dynamic_ncols=True)
        bar.base_desc = label
        return bar

    # -- dependencies (PF and GAN Tickets build on the dense run) -------------------------------
    def dependency(self, config: RunConfig, method_name: str, changes: dict | None = None) -> RunConfig:
        """The config of the `method_name` run that `config` builds on (same arch, data, seed...)."""
        method = self.plugins.methods.get(method_name)
        return config.replace(
            method=method_name,
            code=self.plugins.code(method_name, config.arch),
            sg=method.fixed.get("sg", config.sg),
            sd=method.fixed.get("sd", config.sd),
            method_options=tuple(sorted(validate_options(method.options, {}, method_name).items())),
            **(changes or {}),
        ).without_unused_settings()

    def require(self, config: RunConfig, method_name: str, changes: dict) -> RunArtifacts:
        dep = self.dependency(config, method_name, changes)
        outcome = self.run(dep, wait=True, rerun=False)
        if outcome.status != "done":
            raise RuntimeError(f"the {method_name} run {dep.run_id} this run builds on ended {outcome.status}")
        run_dir = self.store.run_dir(dep.run_id)
        return RunArtifacts(dep.run_id, dep.to_dict(), outcome.results, run_dir / "init.pt", run_dir / "final.pt")

    # -- results --------------------------------------------------------------------------------
    def _save_artifacts(self, ctx: RunContext) -> None:
        st = ctx.final
        blob = {
            "G": st.G.state_dict(),
            "D": st.D.state_dict(),
            "G_eval": st.eval_model.state_dict(),
            "g_masks": st.g_masks.state_dict() if st.g_masks else None,
            "d_masks": st.d_masks.state_dict() if st.d_masks else None,
        }
        atomic_save(blob, ctx.run_dir / "final.pt")
        if ctx.init_state is not None:
            atomic_save(ctx.init_state, ctx.run_dir / "init.pt")

    def _partial(self, config: RunConfig, ctx: RunContext) -> dict:
        return {"train_flops": ctx.total_train_flops()} if ctx.init_state is not None else {}


def _phase_bar(bar, total: int, done: int, label: str) -> None:
    """Point the run's progress bar at a new training phase (fine-tuning, a ticket round...)."""
    bar.reset(total=total)
    bar.update(done)
    bar.set_description(bar.base_desc if label == "train" else f"{bar.base_desc} [{label}]")


class LineProgress:
    """The part of tqdm's interface the runner uses, printing one line per tenth of a phase (or
    every 5 minutes) instead of redrawing a bar: readable in non-interactive logs."""

    EVERY_S = 300.0

    def __init__(self, total: int, label: str):
        self.base_desc = self.desc = label
        self.postfix = ""
        self.reset(total)

    def reset(self, total: int) -> None:
        self.total, self.n, self.mark = max(total, 1), 0, 0
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = 10 * self.n // self.total
        if tenth > self.mark or time.monotonic() - self.last > self.EVERY_S:
            self.mark = tenth
            self.last = time.monotonic()
            print(f"{self.desc}: G step {self.n}/{self.total}{self.postfix}", file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = False, **values: str) -> None:
        self.postfix = "".join(f" {k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        pass

"""Training one claimed cell, from method plugin to stored result.

The scheduler (`sparsebench.scheduler`) claims a cell and hands it here with a sink bound to the claim; the
runner lets the method train through a `RunContext`, evaluates the final generator with the metric plugins,
counts its FLOPs, and writes the outcome through the sink. A diverged run is stored as `diverged` with its
step, a crashing one as `failed` with its error, and the grid goes on. Nothing here claims, retries or
reruns: that is the scheduler's.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sparsebench import SparsebenchError, distributed
from sparsebench.config import RunConfig
from sparsebench.dependencies import Dependencies
from sparsebench.files import atomic_save, remove_stale_temporaries
from sparsebench.plugins import Plugins
from sparsebench.recorder import ClaimLost, RunRecorder, progress_bar
from sparsebench.resources import Resources, environment
from sparsebench.settings import RunSettings
from sparsebench.speed import numerics, prepare_cublas
from sparsebench.store.sinks import RunReader, RunSink
from sparsebench.train.context import RunContext, RunServices
from sparsebench.train.evaluation import evaluate_run
from sparsebench.train.loop import Diverged, Interrupted

log = logging.getLogger("sparsebench.run")


@dataclass
class Outcome:
    run_id: str
    config: RunConfig
    status: str
    results: dict = field(default_factory=dict)
    skipped: bool = False
    taken: bool = False  # held by another live process: left to it


class Runner:
    """Trains claimed cells one at a time, with the grid's settings and shared resources."""

    def __init__(self, plugins: Plugins, settings: RunSettings | None = None, resources: Resources | None = None):
        self.settings = settings = settings or RunSettings()
        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise SparsebenchError("--device cuda: no CUDA device is available here; use --device cpu")
        self.plugins = plugins
        self.device = torch.device(settings.device)
        self.resources = resources or Resources(plugins, self.device, settings.data_dir, settings.inception_weights)
        self.stop = False  # set by SIGTERM / Ctrl-C: the current run checkpoints and stops
        self.last_context: RunContext | None = None

    def train(self, config: RunConfig, sink: RunSink, reader: RunReader, rerun: bool = False) -> Outcome:
        """Train a claimed cell. A `rerun` starts from scratch (the scheduler removed its checkpoints) and leaves
        the stored row as it was unless the new run reaches an outcome (done, diverged, failed)."""
        run_id = config.run_id
        method = self.plugins.methods.get(config.method)
        data = self.resources.data(config)
        leader = distributed.rank() == 0
        if config.deterministic and self.device.type == "cuda":  # before this run's first CUDA work (a worker's)
            prepare_cublas()
        if not rerun:  # a rerun's environment is stored with its outcome, which replaces the old one's
            sink.started(environment(self.device, config))
        if leader:  # what a killed process of this run left half-written
            remove_stale_temporaries(sink.run_dir())
        bar = progress_bar(config, self.settings.progress)
        recorder = RunRecorder(sink, rerun=rerun, leader=leader, stop=lambda: self.stop, bar=bar)
        services = RunServices(
            arch=self.plugins.archs.get(config.arch),
            recorder=recorder,
            dependencies=Dependencies(self.plugins, reader),
            checkpoint_every=self.settings.checkpoint_every,
        )
        ctx = RunContext(config, data, self.device, sink.run_dir(), services, width=method.width)
        status, results = "done", {}
        threads = torch.get_num_threads()
        torch.set_num_threads(config.threads)  # the run's own count, whichever executor runs it
        used_threads = config.threads
        self.last_context = ctx
        computing = numerics(config, self.device)  # TF32 off, cuDNN autotuning or determinism, on CUDA
        computing.__enter__()  # left in `finally` below
        try:
            if leader and "fid" in config.metrics:  # rank 0 scores the evaluation curve
                services.evaluator = self.resources.evaluator(config)
            method.run(ctx)
            if ctx.final is None:
                raise RuntimeError(f"method {config.method!r} returned without calling ctx.finish(...)")
            _flush(recorder, run_id)
            if leader:  # rank 0 evaluates and stores for the whole process group
                evaluator = self.resources.evaluator(config)
                results = {
                    **evaluate_run(config, ctx, evaluator, self.plugins, self.device),
                    **recorder.ratios.results(),
                }
                if "fid_final" in results and config.train.eval_every:  # the curve ends at the final evaluation
                    key = "fid" if ctx.phase_label == "train" else f"{ctx.phase_label}/fid"  # as the phase's points
                    recorder.pending.append((ctx.final.step, key, float(results["fid_final"])))
        except ClaimLost as exc:  # the run is another process's now: no file of it is touched
            return _lost(config, exc)
        except Diverged as exc:
            status = "diverged"
            results = {"diverged_step": exc.step, "error": str(exc), **_partial(ctx)}
        except Interrupted as exc:  # checkpoint saved: the run stays `running` until it is resumed
            recorder.flush()
            if rerun:  # the stored outcome stays until a rerun reaches its own
                sink.release()
            else:
                error = f"{exc}; run the same command to resume"
                sink.finish("running", {"interrupted_step": exc.step, "error": error}, ctx.wall_s())
            raise
        except SparsebenchError as exc:
            _abandon(sink, rerun, {"error": str(exc)}, ctx.wall_s())
            raise
        except KeyboardInterrupt:
            _abandon(sink, rerun, {"error": "interrupted"}, ctx.wall_s())
            raise
        except Exception as exc:  # noqa: BLE001 - a crashing cell is stored, the grid goes on
            status = "failed"
            results = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
            log.error("run %s (%s) failed: %s", run_id, config.method, exc)
        finally:
            computing.__exit__(None, None, None)
            recorder.close()
            used_threads = torch.get_num_threads()
            torch.set_num_threads(threads)  # a resumed run may have pinned the count it started with
        try:
            _flush(recorder, run_id)
        except ClaimLost as exc:
            return _lost(config, exc)
        wall = ctx.wall_s()  # earlier segments of a resumed run count
        results["wall_s"] = wall
        results["threads"] = used_threads
        if ctx.final is not None and status == "done" and leader:
            try:
                _save_artifacts(ctx, recorder.check_claim)
            except ClaimLost as exc:  # paused while writing the weights: they are the new holder's to write
                return _lost(config, exc)
        env = environment(self.device, config) if rerun else None
        stored = sink.finish(status, results, wall, env=env, stats=recorder.held)
        if stored and status in ("done", "diverged"):  # finished for good (and committed): checkpoints are spent
            sink.remove_checkpoints()
        distributed.barrier()  # followers read this run's artifacts only after rank 0 wrote them
        return Outcome(run_id, config, status, results)

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


def _flush(recorder: RunRecorder, run_id: str) -> None:
    """Write the run's pending statistics. Only rank 0 checks the claim: when it lost it, every rank raises
    ClaimLost here, so that all leave the run together (a rank going on alone would wait in a collective)."""
    lost = None
    try:
        recorder.flush()
    except ClaimLost as exc:
        lost = exc
    if distributed.world_size() > 1 and distributed.any_rank(lost is not None)[0] and lost is None:
        lost = ClaimLost(f"run {run_id} was taken over by another process")
    if lost is not None:
        raise lost


def _lost(config: RunConfig, exc: ClaimLost) -> Outcome:
    """A run whose claim this process lost: left to its new holder (looked at again like a taken cell)."""
    log.warning("%s while this process was stopped or slow; left to that process", exc)
    return Outcome(config.run_id, config, "running", {}, skipped=True, taken=True)


def _abandon(sink: RunSink, rerun: bool, results: dict, wall: float) -> None:
    """A run stopped by the user or the environment: stored as failed, except that a rerun leaves the
    outcome stored before it in place."""
    if rerun:
        sink.release()
    else:
        sink.finish("failed", results, wall)


def _save_artifacts(ctx: RunContext, claimed: Callable[[], object]) -> None:
    """The final weights, each file renamed into place only while the run's claim stands (`claimed`)."""
    st = ctx.final
    assert st is not None
    blob = {
        "G": st.G.state_dict(),
        "D": st.D.state_dict(),
        "G_eval": st.eval_model.state_dict(),
        "g_masks": st.g_masks.state_dict() if st.g_masks else None,
        "d_masks": st.d_masks.state_dict() if st.d_masks else None,
    }
    atomic_save(blob, ctx.run_dir / "final.pt", claimed)
    if ctx.init_state is not None:
        atomic_save(ctx.init_state, ctx.run_dir / "init.pt", claimed)


def _partial(ctx: RunContext) -> dict:
    return {"train_flops": ctx.total_train_flops()} if ctx.init_state is not None else {}

"""RunContext: what a method plugin gets to train with.

It builds the seeded models, masks and optimizers the way every method must (so that methods
differ only where they mean to), runs the training loop with FLOP accounting, gives access to
runs a method depends on (PF and GAN Tickets reuse the stored dense run), and collects the
final generator and the statistics that go into the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench import SparsebenchError, distributed
from sparsebench.balance import probed
from sparsebench.config import RunConfig, stream_seed
from sparsebench.dependencies import Dependencies
from sparsebench.flops import GANFlops, count_gan
from sparsebench.interfaces import Callbacks, DataSplits, DensePass, GANState, RunArtifacts
from sparsebench.metrics.evaluate import Evaluator, curve_point
from sparsebench.recorder import ClaimLost, RunRecorder
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.sema import SparseEMA
from sparsebench.speed import CompiledCheck, Speed
from sparsebench.train.checkpoint import Checkpoint, CheckpointError
from sparsebench.train.loop import Batcher, LoopIO, adam, train

log = logging.getLogger("sparsebench.run")
__all__ = ["RunContext", "RunServices", "stream_seed"]


@dataclass
class RunServices:
    """What a run's context uses besides its config and data, handed down whole by the runner; private to
    the core (methods see only `MethodContext`). Each is optional, so a context can train without a store."""

    arch: Any = None  # the Architecture plugin object that builds G and D
    recorder: RunRecorder | None = None  # statistics, claim checks, progress and stop requests
    dependencies: Dependencies | None = None  # the finished runs this one builds on
    evaluator: Evaluator | None = None  # scores the evaluation curve (rank 0 of a run with FID)
    checkpoint_every: int = 0  # G steps between checkpoints (0: only at the end of a phase / on stop)


class RunContext:
    """The core's `MethodContext`: what a method plugin trains with."""

    def __init__(
        self,
        config: RunConfig,
        data: DataSplits,
        device: torch.device,
        run_dir: Path,
        services: RunServices | None = None,
        width: float = 1.0,
    ):
        self.config = config
        self.data = data
        self.device = device
        self.run_dir = run_dir
        self.width = width
        self.info: dict = {}  # what `finish` adds to the stored results
        self.final: GANState | None = None
        self.init_state: dict | None = None  # G and D as first built (GAN Tickets rewinds to it)
        self.services = services or RunServices()
        self._flops: GANFlops | None = None
        self._required_flops: dict[str, float] = {}  # train FLOPs of the runs this one builds on, by run id
        self._spent_flops = 0.0  # FLOPs of every training phase this run ran itself
        self._phases = 0  # training phases started so far (checkpoints are kept per phase)
        self.phase_label = "train"  # the label of the last phase trained (its logged keys carry it)
        self._resumed_wall = 0.0  # wall seconds of earlier segments of a resumed run (see `wall_s`)

    # -- shortcuts ----------------------------------------------------------------------------
    @property
    def spec(self):
        return self.config.train

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.config.method_options)

    @property
    def num_classes(self) -> int:
        return self.data.train.num_classes

    def rng(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch.Generator seeded from the run's seed and `name` (see `stream_seed`): streams are
        named, so adding one never shifts another."""
        return torch.Generator(device=device).manual_seed(stream_seed(self.config.seed, name))

    def batch(self, n: int, stream: str = "batch") -> tuple[torch.Tensor, torch.Tensor]:
        """`n` real training images in [-1, 1] and their labels, on the run's device, drawn without
        replacement from the named stream `stream` (the same batch for the same name; training's
        own minibatch stream is not touched), for methods that score weights on data (SNIP-style)."""
        train = self.data.train
        if not 0 < n <= len(train):
            raise ValueError(f"batch size must lie in [1, {len(train)}] (the training set's size), got {n}")
        idx = torch.randperm(len(train), generator=self.rng(stream))[:n]
        return train.images[idx].to(self.device).float().div_(127.5).sub_(1.0), train.labels[idx].to(self.device)

    # -- building -----------------------------------------------------------------------------
    def build_models(self) -> tuple[nn.Module, nn.Module]:
        """G and D, initialised deterministically from the seed, on the run's device."""
        torch.manual_seed(self.config.seed)
        arch = self.services.arch
        G, D = arch.build(self.spec, self.num_classes, self.width, **dict(self.config.arch_options))
        G, D = G.to(self.device), D.to(self.device)
        if self._flops is None:
            self._flops = count_gan(G, D, self.spec, self.config.scope, self.num_classes)
        if self.init_state is None:
            self.init_state = {"G": _cpu_copy(G.state_dict()), "D": _cpu_copy(D.state_dict())}
        return G, D

    @property
    def flops(self) -> GANFlops:
        if self._flops is None:
            self.build_models()
        assert self._flops is not None  # counted by build_models
        return self._flops

    def masks(
        self, model: nn.Module, sparsity: float, distribution: str | None = None, stream: str = "masks"
    ) -> MaskState | None:
        """Masks of the given sparsity over the run's scope (None for sparsity 0: dense), drawn from
        `rng(stream)`: give G and D different streams.

        Side effect: the weights of `model` outside the masks are set to zero in place (a MaskState
        applies itself when built). Score weights (e.g. on data, SNIP-style) before calling this, or
        build a `MaskState` from your own masks."""
        if sparsity <= 0.0:
            return None
        return MaskState.from_distribution(
            model, sparsity, distribution or self.config.distribution, self.config.scope, self.rng(stream)
        )

    def state(self, G: nn.Module, D: nn.Module, g_masks: MaskState | None, d_masks: MaskState | None) -> GANState:
        """Fresh Adam optimizers and a (S)EMA of G for a training phase; the masks take the run's
        optimizer-state policy."""
        s = self.spec
        for masks in (g_masks, d_masks):
            if masks is not None:
                masks.opt_state = self.config.opt_state
        ema = SparseEMA(G, s.ema_decay, s.ema_start, g_masks)
        return GANState(
            G=G,
            D=D,
            g_opt=adam(G.parameters(), s.lr_g, s.beta1, s.beta2, s.adam_eps),
            d_opt=adam(D.parameters(), s.lr_d, s.beta1, s.beta2, s.adam_eps),
            g_masks=g_masks,
            d_masks=d_masks,
            ema=ema,
        )

    # -- training -----------------------------------------------------------------------------
    def train(
        self, state: GANState, steps: int | None = None, hooks: Callbacks | None = None, label: str = "train"
    ) -> None:
        """Run the training loop with the method's callbacks `hooks`; FLOPs are added to `state.flops` at the
        current densities."""
        steps = self.spec.steps if steps is None else steps
        callbacks = hooks or Callbacks()
        world, rank = distributed.world_size(), distributed.rank()
        if world != self.config.world_size:
            raise SparsebenchError(
                f"run {self.config.run_id} is set up for {self.config.world_size} process(es) and this is "
                f"{world}: its config comes from another process group (expand the grid inside this one)"
            )
        spec = distributed.batch_share(self.spec, world, f"run {self.config.run_id}")  # each rank's equal share
        suffix = f"-rank{rank}" if world > 1 else ""
        batcher = Batcher(self.data.train, self.device, self.rng(f"data{suffix}"))
        noise = self.rng(f"noise{suffix}", self.device)
        self._phases += 1
        self.phase_label = label
        ckpt = Checkpoint(self.run_dir / f"checkpoint-phase{self._phases}{suffix}.pt", self.config)
        io = _PhaseIO(self, state, steps, spec, label, ckpt, batcher, noise, callbacks)

        done = False
        if ckpt.exists():  # resume: a finished phase is restored whole, an unfinished one continues
            try:
                done, wall = ckpt.restore(state, batcher, noise, callbacks)
            except CheckpointError as exc:  # checked before loading: the live state is still fresh
                ckpt.set_aside(str(exc).split(";")[0])
            else:
                log.warning(
                    "resuming run %s phase %d (%s) from G step %d", self.config.run_id, self._phases, label, state.step
                )
                self._resumed_wall = wall - self._elapsed()  # the run's clock goes on from the save
                for step, values in state.logged:  # stored again: the killed process may not have stored them
                    io.emit(step, values)
        if world > 1:
            done = self._resumed_together(state.step, done, ckpt)
        if done:
            self._spent_flops += state.flops
            return

        recorder = self.services.recorder
        if recorder is not None:
            recorder.phase(steps, state.step, label)

        from sparsebench.kernels import attach  # the execution backend of sparse layers (--kernels)

        kernels = attach(self.config.kernels, state, callbacks, spec)
        if self.config.kernels != "dense":  # which layers ran on the kernels (the last phase's, if several)
            from sparsebench.kernels import describe

            swapped = [describe(net, b.layers) for net, b in (("G", kernels.g), ("D", kernels.d)) if b is not None]
            self.info["kernel_layers"] = ",".join(s for s in swapped if s)
        speed = Speed.of(self.config)
        compiled = CompiledCheck() if speed.compile and state.step < steps else None
        try:
            train(  # every run's balance ratio is measured, as the method's callbacks ask for it
                state,
                steps,
                spec,
                batcher,
                self.num_classes,
                noise,
                probed(kernels.hooks, asking=callbacks),
                io,
                speed,
            )
            if compiled is not None:  # stored: whether every phase this process trained ran compiled
                ran = compiled.ran_compiled()
                self.info["compiled"] = self.info.get("compiled", True) and ran
                if not ran:
                    log.warning("run %s: --compile fell back to eager forwards (phase %s)", self.config.run_id, label)
            io.checkpoint(done=True)
        finally:
            kernels.detach()
            self._spent_flops += state.flops

    def _resumed_together(self, step: int, done: bool, ckpt: Checkpoint) -> bool:
        """Refuse per-rank checkpoints of a phase that end at different G steps (a rank's file removed, set
        aside, or saved by a rank that stopped alone): ranks that start from different steps run different
        schedules of collectives and hang. Returns whether every rank's phase is finished, as one decision."""
        low, high = distributed.spread(step)
        if low != high:
            raise SparsebenchError(
                f"run {self.config.run_id} phase {self._phases}: the checkpoints of its {distributed.world_size()} "
                f"processes end at different G steps ({low} to {high}; a missing or unusable one counts as 0), "
                f"refusing to resume; delete {ckpt.path.parent / f'checkpoint-phase{self._phases}*.pt'} to restart it"
            )
        return distributed.any_rank(done)[0]

    def require(self, method: str, **changes: Any) -> RunArtifacts:
        """The finished run of `method` with this run's arch, data, preset, seed and steps.

        Taken from the store when done; otherwise trained now and stored as its own run. Its training
        FLOPs count towards this run's (once per required run, however often it is asked for).
        """
        if self.services.dependencies is None:
            raise RuntimeError(f"this run cannot read the {method} run it builds on (no store)")
        artifacts = self.services.dependencies.artifacts(self.config, method, changes)
        self._required_flops[artifacts.run_id] = float(artifacts.results["train_flops"])
        return artifacts

    def finish(self, state: GANState, **info: Any) -> None:
        """Declare `state` the run's result; `info` goes into the stored results."""
        self.final = state
        self.info.update(info)

    def count(self, work: DensePass) -> None:
        """Add work done outside `train` (a dense scoring pass) to this run's training FLOPs: once per call, so a
        resumed run, which runs `Method.run` again from the start, counts it once."""
        self._spent_flops += self.flops.dense_pass(work.g_images, work.d_images)

    def total_train_flops(self) -> float:
        """Everything spent to obtain the final generator, pre-training included."""
        return sum(self._required_flops.values()) + self._spent_flops

    def wall_s(self) -> float:
        """This run's wall seconds so far: the earlier segments of a resumed run plus this one's."""
        return self._resumed_wall + self._elapsed()

    def _elapsed(self) -> float:
        recorder = self.services.recorder
        return recorder.elapsed() if recorder is not None else 0.0


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class _PhaseIO(LoopIO):
    """The loop's costs, logs, progress, checkpoints, stop requests, synchronisation and evaluation curve in
    one training phase of a run."""

    logs = checkpoints = evaluates = True

    def __init__(
        self,
        ctx: RunContext,
        state: GANState,
        steps: int,
        spec: Any,
        label: str,
        ckpt: Checkpoint,
        batcher: Batcher,
        noise: torch.Generator,
        callbacks: Callbacks,
    ):
        self.ctx, self.state, self.steps, self.spec, self.label = ctx, state, steps, spec, label
        self.ckpt, self.batcher, self.noise, self.callbacks = ckpt, batcher, noise, callbacks
        self.recorder = ctx.services.recorder
        self.checkpoint_every = ctx.services.checkpoint_every
        self.synchronises = distributed.world_size() > 1
        self.lost: ClaimLost | None = None  # rank 0 lost the run's claim: every rank stops, none saves

    def emit(self, step: int, values: dict) -> None:
        """Logged values to the run's recorder, named after the phase (fine-tuning's `finetune/loss_g`)."""
        if self.recorder is not None:
            self.recorder.log(step, {f"{self.label}/{k}" if self.label != "train" else k: v for k, v in values.items()})

    def step_cost(self, state: GANState) -> float:
        g = state.g_masks.layer_density() if state.g_masks else None
        d = state.d_masks.layer_density() if state.d_masks else None
        return self.ctx.flops.step(g, d)

    def extra_cost(self, state: GANState, nets: str) -> float:
        g = state.g_masks.layer_density() if state.g_masks and "g" in nets else None
        d = state.d_masks.layer_density() if state.d_masks and "d" in nets else None
        return self.ctx.flops.dense_grad_extra("g", g) + self.ctx.flops.dense_grad_extra("d", d)

    def log(self, step: int, values: dict) -> None:
        self.state.logged.append((step, {k: float(v) for k, v in values.items()}))
        self.emit(step, values)

    def progress(self, steps: int) -> None:
        if self.recorder is not None:
            self.recorder.progress(steps)

    def checkpoint(self, done: bool = False) -> None:
        """Store the curve up to here, then save the checkpoint; the claim is looked at again just before the
        checkpoint is renamed into place (a process paused while writing may have lost the run meanwhile)."""
        recorder = self.recorder
        if recorder is not None and self.lost is None:  # the curve up to here is stored before the checkpoint
            try:
                recorder.flush()
            except ClaimLost as exc:
                self.lost = exc
        self.raise_if_lost()
        claimed = None if recorder is None else recorder.check_claim
        self.ckpt.save(
            self.state, self.batcher, self.noise, self.callbacks, self.label, done, self.ctx.wall_s(), claimed
        )

    def raise_if_lost(self) -> None:
        """Raise ClaimLost on every rank if rank 0 lost the run's claim (only rank 0 checks it): a rank that
        went on training alone would wait forever in its next collective."""
        lost = self.lost is not None
        if self.synchronises:
            (lost,) = distributed.any_rank(lost)
        if lost:
            raise self.lost or ClaimLost(f"run {self.ctx.config.run_id} was taken over by another process")

    def stop_requested(self) -> bool:
        """SIGTERM / Ctrl-C, or a lost claim (then the loop's checkpoint raises ClaimLost instead of saving)."""
        try:
            return self.recorder is not None and self.recorder.stop_requested()
        except ClaimLost as exc:
            if not self.synchronises:
                raise
            self.lost = exc  # the loop agrees on stopping here; `checkpoint` raises it on every rank
            return True

    def agree(self, flag: bool) -> bool:
        return distributed.any_rank(flag)[0]

    def earliest(self, value: torch.Tensor) -> torch.Tensor:
        return distributed.min_over_ranks(value)

    def sync_grads(self, model: nn.Module) -> None:
        distributed.average_gradients(model)

    def topology_changed(self, state: GANState) -> None:
        """Rank 0's masks are authoritative after a topology update."""
        distributed.broadcast_masks(state.g_masks)
        distributed.broadcast_masks(state.d_masks)

    def evaluate(self, step: int) -> None:
        """A point of the evaluation curve at the due steps before the last (the final evaluation is the last)."""
        evaluator, spec = self.ctx.services.evaluator, self.spec
        if evaluator is None or not spec.eval_every or step >= self.steps:
            return
        if step % spec.eval_every == 0 and step >= spec.eval_from * self.steps:
            ctx = self.ctx
            scores = curve_point(ctx.config, self.state.eval_model, evaluator, ctx.num_classes, ctx.device)
            self.state.curve.append((step, scores["fid"]))
            self.log(step, scores)

"""RunContext: what a method plugin gets to train with.

It builds the seeded models, masks and optimizers the way every method must (so that methods
differ only where they mean to), runs the training loop with FLOP accounting, gives access to
runs a method depends on (PF and GAN Tickets reuse the stored dense run), and collects the
final generator and the statistics that go into the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sparsebench.api import DataSplits
from sparsebench.config import RunConfig
from sparsebench.flops import GANFlops, count_gan
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.sema import SparseEMA
from sparsebench.train.checkpoint import Checkpoint, CheckpointError
from sparsebench.train.loop import Batcher, GANState, Hooks, adam, train

log = logging.getLogger("sparsebench.run")


@dataclass
class RunArtifacts:
    """A finished run a method depends on: its id and saved weights."""

    run_id: str
    config: dict
    results: dict
    init_path: Path
    final_path: Path

    def load(self, which: str = "final") -> dict:
        path = self.final_path if which == "final" else self.init_path
        return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class RunContext:
    config: RunConfig
    data: DataSplits
    device: torch.device
    run_dir: Path
    build_fn: Callable[[float], tuple[nn.Module, nn.Module]]
    require_fn: Callable[[str, dict], RunArtifacts]
    log_fn: Callable[[int, dict], None]
    progress: Callable[[int], None] | None = None
    progress_phase: Callable[[int, int, str], None] | None = None  # (total steps, done, label)
    width: float = 1.0
    info: dict = field(default_factory=dict)
    final: GANState | None = None
    checkpoint_every: int = 0  # G steps between checkpoints (0: only at the end of a phase / on stop)
    stop_requested: Callable[[], bool] | None = None
    flush_fn: Callable[[], None] | None = None  # writes the logged statistics out (before each checkpoint)
    extra_flops: float = 0.0  # FLOPs spent in runs this one builds on (pre-training)
    spent_flops: float = 0.0  # FLOPs of every training phase this run ran itself
    init_state: dict | None = None  # G and D as first built (GAN Tickets rewinds to it)
    phases: int = 0  # training phases started so far (checkpoints are kept per phase)
    _flops: GANFlops | None = None

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

    def generator(self, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch.Generator seeded from the run's seed (offset separates independent streams)."""
        return torch.Generator(device=device).manual_seed(self.config.seed * 1_000_003 + offset)

    def batch(self, n: int, offset: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` real training images in [-1, 1] and their labels, on the run's device, drawn without
        replacement from the seeded stream `offset` (the same batch for the same offset; training's
        own minibatch stream is not touched), for methods that score weights on data (SNIP-style)."""
        train = self.data.train
        if not 0 < n <= len(train):
            raise ValueError(f"batch size must lie in [1, {len(train)}] (the training set's size), got {n}")
        idx = torch.randperm(len(train), generator=self.generator(offset))[:n]
        return train.images[idx].to(self.device).float().div_(127.5).sub_(1.0), train.labels[idx].to(self.device)

    # -- building -----------------------------------------------------------------------------
    def build_models(self) -> tuple[nn.Module, nn.Module]:
        """G and D, initialised deterministically from the seed, on the run's device."""
        torch.manual_seed(self.config.seed)
        G, D = self.build_fn(self.width)
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
        return self._flops

    def masks(self, model: nn.Module, sparsity: float, distribution: str | None = None, offset: int = 0) -> MaskState | None:
        """Masks of the given sparsity over the run's scope (None for sparsity 0: dense)."""
        if sparsity <= 0.0:
            return None
        return MaskState.from_distribution(
            model, sparsity, distribution or self.config.distribution, self.config.scope, self.generator(offset)
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
            G=G, D=D, g_opt=adam(G.parameters(), s.lr_g, s.beta1, s.beta2, s.adam_eps),
            d_opt=adam(D.parameters(), s.lr_d, s.beta1, s.beta2, s.adam_eps), g_masks=g_masks, d_masks=d_masks,
            ema=ema,
        )

    # -- training -----------------------------------------------------------------------------
    def train(self, state: GANState, steps: int | None = None, hooks: Hooks | None = None, label: str = "train") -> None:
        """Run the training loop; FLOPs are added to `state.flops` at the current densities."""
        from sparsebench import distributed

        steps = self.spec.steps if steps is None else steps
        hooks = hooks or Hooks()
        world, rank = distributed.world_size(), distributed.rank()
        spec = self.spec
        if world > 1:  # each rank takes its share of the preset's global batch
            spec = spec.replace(batch_size=max(1, spec.batch_size // world), g_batch_size=max(1, spec.g_batch_size // world))
        batcher = Batcher(self.data.train, self.device, self.generator(11 + 1000 * rank))
        noise = self.generator(13 + 1000 * rank, self.device)
        self.phases += 1
        suffix = f"-rank{rank}" if world > 1 else ""
        ckpt = Checkpoint(self.run_dir / f"checkpoint-phase{self.phases}{suffix}.pt", self.config)
        if ckpt.exists():  # resume: a finished phase is restored whole, an unfinished one continues
            try:
                done = ckpt.restore(state, batcher, noise, hooks)
            except CheckpointError as exc:  # checked before loading: the live state is still fresh
                ckpt.set_aside(str(exc).split(";")[0])
            else:
                log.warning("resuming run %s phase %d (%s) from G step %d", self.config.run_id, self.phases,
                            label, state.step)
                if done:
                    self.spent_flops += state.flops
                    return

        def cost() -> float:
            g = state.g_masks.layer_density() if state.g_masks else None
            d = state.d_masks.layer_density() if state.d_masks else None
            return self.flops.step(g, d)

        def log_step(step: int, values: dict) -> None:
            self.log_fn(step, {f"{label}/{k}" if label != "train" else k: v for k, v in values.items()})

        if self.progress_phase is not None:
            self.progress_phase(steps, state.step, label)

        def save(done: bool = False) -> None:
            if self.flush_fn is not None:  # the curve up to here is stored before the checkpoint exists
                self.flush_fn()
            ckpt.save(state, batcher, noise, hooks, label, done)

        from sparsebench.kernels import attach  # the execution backend of sparse layers (--kernels)

        kernels = attach(self.config.kernels, state, hooks, spec)
        try:
            train(state, steps, spec, batcher, self.num_classes, noise, cost, kernels.hooks, log_step, self.progress,
                  save, self.checkpoint_every, self.stop_requested,
                  distributed.average_gradients if world > 1 else None)
            save(done=True)
        finally:
            kernels.detach()
            self.spent_flops += state.flops

    def require(self, method: str, **changes: Any) -> RunArtifacts:
        """The finished run of `method` with this run's arch, data, preset, seed and steps.

        Taken from the store when done; otherwise trained now and stored as its own run.
        """
        return self.require_fn(method, changes)

    def finish(self, state: GANState, **info: Any) -> None:
        """Declare `state` the run's result; `info` goes into the stored results."""
        self.final = state
        self.info.update(info)

    def total_train_flops(self) -> float:
        """Everything spent to obtain the final generator, pre-training included."""
        return self.extra_flops + self.spent_flops


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

"""The kernels in one training phase: the method's callbacks wrapped so that steps reading dense gradients
run densely and the backends are rebuilt after each topology update (`KernelHooks`), the backends of G and D
attached and detached (`attach`, `Attached`), and G's sampling on the kernels (`for_sampling`)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparsebench.interfaces import Callbacks, GANState, GStep
from sparsebench.kernels.layers import KernelBackend, LayerChoice, check_backend, require_sparseprop
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.opt_state import masks_gradients

log = logging.getLogger("sparsebench.run")


def needs_dense_grads(hooks: Callbacks, step: int) -> bool:
    """Whether `hooks` read dense gradients (G's, or D's) at G step `step` (a regrowth step).

    Hooks say so through `needs_dense_grads(step)`; hooks that read gradients without saying when
    are taken to read them at every step.
    """
    ask = getattr(hooks, "needs_dense_grads", None)
    if ask is not None:
        return bool(ask(step))
    return any(
        getattr(type(hooks), name) is not getattr(Callbacks, name) for name in ("after_g_backward", "after_d_backward")
    )


class KernelHooks(Callbacks):
    """A method's hooks, plus what the backends need: dense gradient-taking forwards on the steps that
    read dense gradients, and a rebuild after every topology update."""

    def __init__(self, inner: Callbacks, g: KernelBackend | None, d: KernelBackend | None):
        self.inner, self.g, self.d = inner, g, d

    def prepare(self, step: int) -> None:
        """Set up the backends for G step `step` (call before it starts)."""
        for backend in (self.g, self.d):
            if backend is not None:
                dense = not masks_gradients(backend.masks.opt_state)  # the policy keeps dense gradients
                # a step whose gradients a method reads (G's, or D's for updates of D) runs densely
                backend.set_dense_grads(dense or needs_dense_grads(self.inner, step))

    def after_d_backward(self, state: GANState, step: int) -> None:
        self.inner.after_d_backward(state, step)

    def after_g_backward(self, state: GANState, step: int) -> None:
        self.inner.after_g_backward(state, step)

    def before_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        self.inner.before_g_update(state, step, batch)

    def after_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        self.inner.after_g_update(state, step, batch)

    def after_g_step(self, state: GANState, step: int) -> bool:
        changed = self.inner.after_g_step(state, step)
        if changed:
            for backend in (self.g, self.d):
                if backend is not None:
                    backend.rebuild()
        self.prepare(step + 1)
        return changed

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        return self.inner.stats(state, step)

    def dense_weight_grads(self, step: int) -> str:
        return self.inner.dense_weight_grads(step)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class Attached:
    """The backends of one training phase (none for the `dense` backend) and the hooks to train with."""

    def __init__(
        self, hooks: Callbacks, g: KernelBackend | None = None, d: KernelBackend | None = None, next_step: int = 1
    ):
        self.g, self.d = g, d
        self.hooks = hooks if g is None and d is None else KernelHooks(hooks, g, d)
        if isinstance(self.hooks, KernelHooks):
            self.hooks.prepare(next_step)

    def detach(self) -> None:
        for backend in (self.g, self.d):
            if backend is not None:
                backend.restore()

    def layers(self) -> list[LayerChoice]:
        return [c for b in (self.g, self.d) if b is not None for c in b.layers]


def describe(net: str, layers: list[LayerChoice]) -> str:
    """The swapped layers of `net`, as stored with a run: `G.name:train/sampling` per layer, where each
    side is SparseProp's variant or `dense`; empty when no layer was swapped."""
    return ",".join(f"{net}.{c.name}:{c.variant or 'dense'}/{c.infer_variant or 'dense'}" for c in layers if c.chosen)


def for_sampling(
    backend: str, model: nn.Module, masks: MaskState | None, spec, batch: int, **choice
) -> KernelBackend | None:
    """Kernels swapped into the generator that is evaluated (`model`, e.g. the SEMA copy, whose zeros are
    `masks`' zeros), measured at the sampling batch (`choice`: KernelBackend's threshold / always); None
    for the `dense` backend or a dense G.
    The caller restores the model when sampling is done."""
    if check_backend(backend) == "dense" or masks is None:
        return None
    require_sparseprop()
    with torch.random.fork_rng(devices=[]):
        example = (torch.randn(batch, spec.z_dim), torch.zeros(batch, dtype=torch.long))
        chosen = KernelBackend(model, masks, example, **choice)
    log.info("sparse kernels in the evaluated G:\n%s", chosen.table())
    return chosen


def attach(backend: str, state: GANState, hooks: Callbacks, spec) -> Attached:
    """Swap the kernels into `state`'s sparse G and D for a training phase (nothing for `dense`).

    The measurement runs on random inputs of the training shapes, outside the run's random streams.
    """
    if check_backend(backend) == "dense":
        return Attached(hooks)
    require_sparseprop()
    with torch.random.fork_rng(devices=[]):
        y = torch.zeros(spec.g_batch_size, dtype=torch.long)
        g = d = None
        if state.g_masks is not None:
            g = KernelBackend(state.G, state.g_masks, (torch.randn(spec.g_batch_size, spec.z_dim), y))
        if state.d_masks is not None:
            x = torch.randn(spec.batch_size, 3, spec.resolution, spec.resolution)
            d = KernelBackend(state.D, state.d_masks, (x, torch.zeros(spec.batch_size, dtype=torch.long)))
    for net, chosen in (("G", g), ("D", d)):
        if chosen is not None:
            log.info("sparse kernels in %s:\n%s", net, chosen.table())
    return Attached(hooks, g, d, state.step + 1)

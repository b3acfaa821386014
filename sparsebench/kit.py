"""The method kit: what sparse-GAN methods share, so that a method names only what makes it different.

- `SparseGANMethod`: sparse G and D from the run's masks (the G / D mask pair built in one place) and the
  method's options resolved against their defaults.
- `TopologyUpdate`: the `Callbacks` every prune-and-regrow method shares. It owns what must be right once for
  all of them: the schedule (every `interval` G steps, a cosine-decayed fraction, counted in G steps),
  capturing the dense gradients of the current minibatch when a score needs them (G's after its backward,
  D's after its last backward of the G step), the optimizer-state policy and the SEMA notification on each
  update, the FLOP recount (the loop recounts the step cost when `after_g_step` returns True),
  checkpointing of its counter and random stream, and its logged statistics. A subclass says only how it
  scores what to drop and what to grow, whether one ranking spans all layers (`per_layer = False`), whether
  a weight just pruned may be regrown in the same update (`regrow_pruned`) and whether RigL's noise breaks
  ties between equal magnitudes (`drop_noise`). The defaults are SET's scores (drop the smallest |w|, grow
  at random) with STU-GAN's rules (per layer, no regrowth of what was just pruned, ties by position).
  `GradientGrowth` grows where the dense gradient is largest (RigL).
- `DynamicSparseMethod`: the method around such callbacks. By default it runs them as ADAPT's SDST scripts
  do (`scripts/SDST.sh`): one global ranking, a cosine-decayed drop fraction from 0.5 with a floor of 0.005
  (the reference's `CosineDecay`), a just-pruned weight may be regrown, and ties are broken as RigL does; a
  subclass names its callbacks class (`callbacks_class`) and overrides what differs (STU-GAN: its networks
  option, a length multiplier and its own update rules).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from sparsebench.interfaces import Callbacks, GANState, Method, Phase
from sparsebench.options import Option
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.topology import (
    RIGL_DROP_NOISE,
    CosineSchedule,
    gradient_magnitude,
    magnitude,
    noisy_magnitude,
    random_scores,
    update_topology,
)

NETWORKS = ("g", "d", "gd")


def resolved_options(method: Method, config: Any) -> dict[str, Any]:
    """The method's options of a run: its declared defaults, overridden by the run's `method_options`."""
    return {o.name: o.default for o in method.options} | dict(config.method_options)


class SparseGANMethod(Method):
    """A method whose G and D start sparse from the run's masks (s_G, s_D over the run's scope)."""

    def sparse_state(self, ctx) -> GANState:
        """G and D as the run builds them, masked at s_G and s_D (each from its own random stream), with fresh
        optimizers and (S)EMA."""
        G, D = ctx.build_models()
        return ctx.state(
            G, D, ctx.masks(G, ctx.config.sg, stream="g-masks"), ctx.masks(D, ctx.config.sd, stream="d-masks")
        )


class TopologyUpdate(Callbacks):
    """Prune-and-regrow on the networks in `networks` ("g", "d" or "gd") every `interval` G steps."""

    per_layer = True  # False: one global ranking per network (densities move between layers)
    regrow_pruned = False  # True: a weight pruned in an update may be regrown in it (RigL, ADAPT)
    drop_noise = 0.0  # > 0: N(0, drop_noise) from `generator` added to |w| before dropping (RigL: 1e-5)

    def __init__(
        self,
        networks: str,
        interval: int,
        schedule: CosineSchedule,
        generator: torch.Generator,
        per_layer: bool | None = None,
        regrow_pruned: bool | None = None,
        drop_noise: float | None = None,
    ):
        if networks not in NETWORKS:
            raise ValueError(f"unknown networks {networks!r}; known: {', '.join(NETWORKS)}")
        self.networks = networks
        self.interval = interval
        self.schedule = schedule
        self.generator = generator
        self.grads: dict[str, dict[str, torch.Tensor]] = {}
        self.updates = 0
        if per_layer is not None:
            self.per_layer = per_layer
        if regrow_pruned is not None:
            self.regrow_pruned = regrow_pruned
        if drop_noise is not None:
            self.drop_noise = drop_noise

    # -- what a subclass overrides -------------------------------------------------------------
    def uses_gradients(self, net: str) -> bool:
        """Whether `grow_score` of network `net` ("g" or "d") reads the dense gradients."""
        return False

    def drop_score(self, net: str, masks: MaskState, grads: dict[str, torch.Tensor] | None):
        """Layer name -> flat scores; the active weights with the lowest are dropped."""
        return noisy_magnitude(masks, self.generator, self.drop_noise) if self.drop_noise else magnitude(masks)

    def grow_score(self, net: str, masks: MaskState, grads: dict[str, torch.Tensor] | None):
        """Layer name -> flat scores; the inactive weights with the highest are grown."""
        return random_scores(masks, self.generator)

    # -- the shared machinery ------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.interval == 0 and step < self.schedule.total

    def needs_dense_grads(self, step: int) -> bool:
        """Whether this G step's gradients are read as dense ones (sparse kernels run densely then)."""
        return bool(self.dense_weight_grads(step))

    def dense_weight_grads(self, step: int) -> str:
        """The networks whose dense gradients this G step's scores read: those updated at a due step whose
        growth uses gradients (their extra cost is counted in the training FLOPs)."""
        if not self.due(step):
            return ""
        return "".join(net for net in "gd" if net in self.networks and self.uses_gradients(net))

    def _capture(self, net: str, masks: MaskState | None, step: int) -> None:
        if net in self.networks and masks is not None and self.uses_gradients(net) and self.due(step):
            self.grads[net] = {n: p.grad.detach().clone() for n, p in masks.params.items() if p.grad is not None}

    def after_d_backward(self, state: GANState, step: int) -> None:
        self._capture("d", state.d_masks, step)  # the last of the n_critic D steps is kept

    def after_g_backward(self, state: GANState, step: int) -> None:
        self._capture("g", state.g_masks, step)

    def after_g_step(self, state: GANState, step: int) -> bool:
        if not self.due(step):
            return False
        fraction = self.schedule(step)
        for net, masks, opt in (("g", state.g_masks, state.g_opt), ("d", state.d_masks, state.d_opt)):
            if net not in self.networks or masks is None:
                continue
            grads = self.grads.pop(net, None)
            result = update_topology(
                masks,
                fraction,
                self.drop_score(net, masks, grads),
                self.grow_score(net, masks, grads),
                opt,
                self.per_layer,
                self.regrow_pruned,
            )
            if net == "g" and state.ema is not None:
                state.ema.on_topology_update(result.pruned, result.grown)
        self.updates += 1
        return True

    def state_dict(self) -> dict:
        return {"updates": self.updates, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.generator.set_state(state["rng"])

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        out = {"update_fraction": self.schedule(step)}
        if state.g_masks is not None:
            out["exploration_rate"] = state.g_masks.exploration_rate()
        if state.d_masks is not None:
            out["exploration_rate_d"] = state.d_masks.exploration_rate()
        return out


class GradientGrowth(TopologyUpdate):
    """RigL's growth: the inactive weights with the largest dense gradient of the minibatch."""

    def uses_gradients(self, net: str) -> bool:
        return True

    def grow_score(self, net, masks, grads):
        return gradient_magnitude(grads)


def with_dense_grads(phase: Phase, callbacks: Callbacks) -> Phase:
    """`phase` with the steps whose backward computes dense weight gradients, as `callbacks` will ask for them
    (`Callbacks.dense_weight_grads`, counted over the phase's steps 1..steps): the FLOP plan of a method whose
    scores read gradients, counted by the same rule as its trained runs."""
    asked = [callbacks.dense_weight_grads(t) for t in range(1, phase.steps + 1)]
    return replace(
        phase,
        g_dense_grad_steps=sum("g" in nets for nets in asked),
        d_dense_grad_steps=sum("d" in nets for nets in asked),
    )


class DynamicSparseMethod(SparseGANMethod):
    """Sparse G and D from the run's masks, trained with the topology updates of `callbacks_class`; evaluated
    through SEMA. Per-layer updates keep the FLOPs of the initial masks; global ones move density between
    layers, and the training FLOPs follow the densities step by step."""

    callbacks_class: type[TopologyUpdate] = TopologyUpdate
    reference = "dense"
    result_columns = ("topology_updates", "delta_t")
    options = (
        Option("update", str, "g", "networks whose connectivity is updated (D static by default)", NETWORKS),
        Option(
            "ranking",
            str,
            "global",
            "drop and grow over the whole network (ADAPT's SDST) or per layer (densities fixed; another row)",
            ("global", "layer"),
        ),
        Option("p0", float, 0.5, "initial drop fraction", interval="(0, 1]"),
        Option("p_min", float, 0.005, "final drop fraction of the cosine decay", interval="[0, 1]"),
        Option(
            "delta_t", int, 0, "G steps between updates (0: the preset's: 500 BigGAN, 1000 SNGAN)", interval="[0, inf)"
        ),
    )

    # -- what a subclass overrides ---------------------------------------------------------------
    def networks(self, options: dict) -> str:
        """The networks whose connectivity is updated."""
        return options["update"]

    def length(self, options: dict) -> int:
        """The training length as a multiple of the preset's steps."""
        return 1

    def update_rules(self, options: dict) -> dict[str, Any]:
        """`TopologyUpdate`'s rules (per_layer, regrow_pruned, drop_noise): ADAPT's SDST's by default."""
        return {"per_layer": options["ranking"] == "layer", "regrow_pruned": True, "drop_noise": RIGL_DROP_NOISE}

    # -- the shared run and FLOP plan -----------------------------------------------------------
    def make_callbacks(self, options: dict, config: Any, generator: torch.Generator) -> TopologyUpdate:
        """The topology updates of a run with these options: what `run` trains with and `flop_phases` counts."""
        cls = getattr(self, "hooks", None) or self.callbacks_class  # `hooks`: the deprecated name of the attribute
        spec = config.train
        return cls(
            self.networks(options),
            options["delta_t"] or spec.explore_interval,
            CosineSchedule(options["p0"], options["p_min"], spec.steps * self.length(options)),
            generator,
            **self.update_rules(options),
        )

    def run(self, ctx) -> None:
        state = self.sparse_state(ctx)
        callbacks = self.make_callbacks(ctx.options, ctx.config, ctx.rng("explore"))
        ctx.train(state, callbacks.schedule.total, callbacks)
        ctx.finish(state, eval_weights="sema", **self.results(callbacks))

    def results(self, callbacks: Any) -> dict[str, Any]:
        """What a run stores of its topology updates (declared in `result_columns`)."""
        return {"topology_updates": callbacks.updates, "delta_t": callbacks.interval}

    def flop_phases(self, plan) -> list:
        """The initial densities over the run's length, and the steps whose scores read dense gradients; an
        estimate where a global ranking updates a sparse network (it moves density between its layers; the
        trained FLOPs follow them)."""
        (phase,) = super().flop_phases(plan)
        assert isinstance(phase, Phase)  # the default plan is one phase
        callbacks = self.make_callbacks(plan.options, plan.config, torch.Generator())
        densities = {"g": phase.g_density, "d": phase.d_density}
        moves = not callbacks.per_layer and any(densities[net] is not None for net in callbacks.networks)
        phase = replace(phase, steps=callbacks.schedule.total, estimate=phase.estimate or moves)
        return [with_dense_grads(phase, callbacks)]

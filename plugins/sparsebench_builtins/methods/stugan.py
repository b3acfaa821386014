"""`stugan`: STU-GAN (paper Algorithm 1): sparse-to-sparse training with generator exploration.

ERK masks on G and D; every dT G steps, prune the fraction p of each explored layer's active
weights with the smallest |w| and regrow as many inactive ones with the largest |grad| of the
current minibatch (random for D, as the authors' code), new weights at zero; p decays from p0 by
a cosine over the run, counted in G steps. The generator is evaluated through SEMA (eq. 5). The
regrowth steps compute G's weight gradients densely: their extra cost is part of the training FLOPs.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sparsebench import (
    CosineSchedule,
    Method,
    Option,
    Phase,
    TopologyUpdate,
    gradient_magnitude,
    hookimpl,
    with_dense_grads,
)


class Exploration(TopologyUpdate):
    """STU-GAN's exploration: G grows where the dense gradient is largest, D (if explored) at random."""

    def uses_gradients(self, net: str) -> bool:
        return net == "g"

    def grow_score(self, net, masks, grads):
        return gradient_magnitude(grads) if net == "g" else super().grow_score(net, masks, grads)


class STUGAN(Method):
    name = "stugan"
    description = "STU-GAN: sparse G and D from scratch, G explored by prune-and-regrow, SEMA"
    title = "STU-GAN"
    order = 70
    version = "0.2.0"  # 0.2.0: training FLOPs count the dense weight gradients of G's regrowth steps
    reference = "static"  # the baseline it adds exploration to, at the same s_G and s_D
    result_columns = ("topology_updates", "delta_t")
    length_option = "length"
    options = (
        Option("explore", str, "g", "which networks explore their connectivity (paper Fig. 5)", ("g", "d", "gd")),
        Option("p0", float, 0.5, "initial update fraction p", interval="(0, 1]"),
        Option("p_min", float, 0.005, "final update fraction of the cosine decay", interval="[0, 1]"),
        Option(
            "delta_t",
            int,
            0,
            "G steps between topology updates (0: the preset's: 500 BigGAN, 1000 SNGAN)",
            interval="[0, inf)",
        ),
        Option(
            "length", int, 1, "training-length multiplier at the same delta_t (paper Table 3: 5)", interval="[1, inf)"
        ),
    )

    def make_hooks(self, o: dict, spec, generator: torch.Generator) -> Exploration:
        """The exploration of a run with options `o`: what `run` trains with and `flop_phases` counts."""
        steps = spec.steps * o["length"]
        return Exploration(
            o["explore"], o["delta_t"] or spec.explore_interval, CosineSchedule(o["p0"], o["p_min"], steps), generator
        )

    def run(self, ctx) -> None:
        G, D = ctx.build_models()
        state = ctx.state(
            G, D, ctx.masks(G, ctx.config.sg, stream="g-masks"), ctx.masks(D, ctx.config.sd, stream="d-masks")
        )
        hooks = self.make_hooks(ctx.options, ctx.spec, ctx.rng("explore"))
        ctx.train(state, hooks.schedule.total, hooks)
        ctx.finish(state, eval_weights="sema", topology_updates=hooks.updates, delta_t=hooks.interval)

    def flop_phases(self, plan) -> list[Phase]:
        """The initial densities, which per-layer updates keep, over the run's length; G's regrowth steps
        compute its dense weight gradients."""
        (phase,) = super().flop_phases(plan)
        o = {opt.name: opt.default for opt in self.options} | dict(plan.config.method_options)
        hooks = self.make_hooks(o, plan.config.train, torch.Generator())
        return [with_dense_grads(replace(phase, steps=phase.steps * o["length"]), hooks)]


@hookimpl
def register_methods(register):
    register(STUGAN())

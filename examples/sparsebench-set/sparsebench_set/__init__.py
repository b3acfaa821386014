"""`set-gan`: sparse GAN training with SET-style exploration (magnitude prune, *random* regrowth).

A complete third-party method plugin: it registers through the `sparsebench` entry-point group
and imports only from `sparsebench` itself, the public surface (docs/plugins.md).
"""

from sparsebench import (
    CosineSchedule,
    Hooks,
    Method,
    MethodContext,
    Option,
    Phase,
    hookimpl,
    layer_densities,
    prune_and_regrow,
)


class RandomRegrowth(Hooks):
    def __init__(self, interval, schedule, generator):
        self.interval, self.schedule, self.generator = interval, schedule, generator

    def after_g_step(self, state, step):
        if step % self.interval or step >= self.schedule.total or state.g_masks is None:
            return False
        result = prune_and_regrow(state.g_masks, self.schedule(step), None, self.generator, optimizer=state.g_opt)
        state.ema.on_topology_update(result.pruned, result.grown)  # keep SEMA consistent
        return True

    def stats(self, state, step):
        return {"exploration_rate": state.g_masks.exploration_rate()} if state.g_masks else {}


class SETGAN(Method):
    name = "set-gan"
    description = "sparse G and D, G explored by magnitude pruning and random regrowth (SET)"
    options = (
        Option("zeta", float, 0.3, "initial fraction of active weights replaced per update", interval="(0, 1]"),
        Option("delta_t", int, 0, "G steps between updates (0: the preset's)", interval="[0, inf)"),
    )

    def run(self, ctx: MethodContext):
        G, D = ctx.build_models()
        state = ctx.state(
            G, D, ctx.masks(G, ctx.config.sg, stream="g-masks"), ctx.masks(D, ctx.config.sd, stream="d-masks")
        )
        interval = ctx.options["delta_t"] or ctx.spec.explore_interval
        schedule = CosineSchedule(ctx.options["zeta"], 0.0, ctx.spec.steps)
        hooks = RandomRegrowth(interval, schedule, ctx.rng("regrowth"))
        ctx.train(state, hooks=hooks)
        ctx.finish(state, eval_weights="sema")

    def flop_phases(self, plan):
        c = plan.config
        kind = "uniform" if c.distribution == "global" else c.distribution  # global depends on weights
        g = layer_densities(plan.g_shapes, 1 - c.sg, kind) if c.sg > 0 else None
        d = layer_densities(plan.d_shapes, 1 - c.sd, kind) if c.sd > 0 else None
        return [Phase(c.train.steps, g, d)]


@hookimpl
def register_methods(register):
    register(SETGAN())

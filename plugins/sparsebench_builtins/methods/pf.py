"""`pf-global`, `pf-uniform` (group `pf`): prune a trained dense GAN, then fine-tune.

The dense pre-training is the stored `dense` run of the same arch, data, preset and seed (trained
first when missing). Its trained G is magnitude-pruned once to s_G (one global threshold, or per
layer) and fine-tuned with D for as many steps as the dense training, with fresh optimizers and
EMA (the LR schedule restarted). D stays dense.
"""

from __future__ import annotations

from sparsebench import (
    MaskState,
    Method,
    MethodContext,
    Phase,
    hookimpl,
    layer_densities,
    magnitude_masks,
    scope_parameters,
)


class PruneFinetune(Method):
    how = ""
    fixed = {"sd": 0.0}
    requires = ("dense",)
    group = "pf"
    reference = "dense"
    result_columns = ("pruned_from",)
    fixed_masks = True  # pruned once, then fine-tuned: the optimizer-state policy cannot change its runs

    def run(self, ctx: MethodContext) -> None:
        dense = ctx.require("dense")
        G, D = ctx.build_models()
        trained = dense.load("final")
        G.load_state_dict(trained["G"])
        D.load_state_dict(trained["D"])
        params = scope_parameters(G, ctx.config.scope)
        masks = magnitude_masks({n: p.detach() for n, p in params.items()}, 1.0 - ctx.config.sg, self.how)
        state = ctx.state(G, D, MaskState(params, masks), None)
        ctx.train(state, label="finetune")
        ctx.finish(state, pruned_from=dense.run_id)

    def flop_phases(self, plan) -> list[Phase]:
        # Per-layer densities of a global threshold depend on trained weights: counted as uniform, an estimate.
        steps = plan.config.train.steps
        g = layer_densities(plan.g_shapes, 1.0 - plan.config.sg, "uniform")
        return [Phase(steps, None, None, "pretrain"), Phase(steps, g, None, "finetune", estimate=self.how == "global")]


class PFGlobal(PruneFinetune):
    name = "pf-global"
    description = "prune the trained dense G once with one global magnitude threshold, fine-tune"
    how = "global"
    title = "PF (global)"
    order = 30


class PFUniform(PruneFinetune):
    name = "pf-uniform"
    description = "prune the trained dense G once layer by layer by magnitude, fine-tune"
    how = "uniform"
    title = "PF (uniform)"
    order = 40


@hookimpl
def register_methods(register):
    register(PFGlobal())
    register(PFUniform())

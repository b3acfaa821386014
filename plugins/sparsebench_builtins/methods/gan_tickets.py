"""`gan-tickets`: GAN lottery tickets by iterative magnitude pruning of G (GAN-LTH).

Round 0 is the stored dense run. Each round prunes 20 % of G's remaining scope weights by one
global |w| threshold, rewinds G and D to their initial weights, and trains again with fresh
optimizers; rounds go on until the density nearest 1 - s_G (0.8^k), or for the `rounds` option's
number (the paper's "90 %" ticket is 9 rounds, 87 %). D stays dense. The sparsity really reached and
the number of rounds are stored.
"""

from __future__ import annotations

import math

from sparsebench import (
    MaskState,
    Method,
    MethodContext,
    Option,
    Phase,
    hookimpl,
    layer_densities,
    magnitude_masks,
    scope_parameters,
)


def rounds_for(sparsity: float, keep: float) -> int:
    """The number of rounds k >= 1 whose density keep^k is nearest 1 - sparsity."""
    target = 1.0 - sparsity
    best = max(1, round(math.log(target) / math.log(keep))) if target < 1.0 else 1
    candidates = [k for k in (best - 1, best, best + 1) if k >= 1]
    return min(candidates, key=lambda k: (abs(keep**k - target), k))


class GANTickets(Method):
    name = "gan-tickets"
    description = "iterative magnitude pruning of G with rewinding to init, 20 % per round (GAN-LTH)"
    fixed = {"sd": 0.0}
    requires = ("dense",)
    title = "GAN Tickets"
    fixed_masks = True  # no regrowth: the optimizer-state policy cannot change its runs
    order = 50
    reference = "dense"
    result_columns = ("reached_sg", "rounds", "pruned_from")
    options = (
        Option("prune_rate", float, 0.2, "fraction of the remaining weights pruned per round", interval="(0, 1)"),
        Option(
            "rounds",
            int,
            0,
            "pruning rounds (0: the number whose density 0.8^k is nearest 1 - s_G)",
            interval="[0, inf)",
        ),
    )

    def run(self, ctx: MethodContext) -> None:
        keep = 1.0 - ctx.options["prune_rate"]
        rounds = ctx.options["rounds"] or rounds_for(ctx.config.sg, keep)
        dense = ctx.require("dense")
        init, trained = dense.load("init"), dense.load("final")
        G, D = ctx.build_models()
        G.load_state_dict(trained["G"])
        params = scope_parameters(G, ctx.config.scope)
        active = None
        for r in range(1, rounds + 1):
            weights = {n: p.detach().clone() for n, p in params.items()}
            masks = magnitude_masks(weights, keep**r, "global", active)
            G.load_state_dict(init["G"])
            D.load_state_dict(init["D"])
            g_masks = MaskState(params, masks)
            state = ctx.state(G, D, g_masks, None)
            ctx.train(state, label=f"round{r}")
            active = g_masks.masks
        ctx.finish(state, rounds=rounds, reached_sg=1.0 - g_masks.density(), pruned_from=dense.run_id)

    def flop_phases(self, plan) -> list[Phase]:
        keep = 1.0 - plan.options["prune_rate"]
        steps = plan.config.train.steps
        phases = [Phase(steps, None, None, "pretrain")]
        for r in range(1, (plan.options["rounds"] or rounds_for(plan.config.sg, keep)) + 1):
            # one global |w| cut per round: its per-layer densities depend on trained weights (an estimate)
            g = layer_densities(plan.g_shapes, keep**r, "uniform")
            phases.append(Phase(steps, g, None, f"round{r}", estimate=True))
        return phases


@hookimpl
def register_methods(register):
    register(GANTickets())

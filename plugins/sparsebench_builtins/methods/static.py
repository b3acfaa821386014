"""`static`: Static Sparse GAN, ERK masks on G (s_G) and D (s_D) fixed for the whole run.

Exactly STU-GAN with exploration switched off, as the paper defines the baseline.
"""

from __future__ import annotations

from sparsebench import Method, MethodContext, Phase, hookimpl, layer_densities


def sparse_phase_densities(plan, sg: float, sd: float) -> tuple[dict | None, dict | None]:
    """Per-layer densities of G and D at init under the run's distribution ('global' as uniform)."""
    kind = plan.config.distribution if plan.config.distribution != "global" else "uniform"
    g = layer_densities(plan.g_shapes, 1.0 - sg, kind) if sg > 0 else None
    d = layer_densities(plan.d_shapes, 1.0 - sd, kind) if sd > 0 else None
    return g, d


class Static(Method):
    name = "static"
    description = "Static Sparse GAN: fixed ERK masks on G and D, trained from scratch"
    title = "Static Sparse GAN"
    order = 60
    reference = "dense"

    def run(self, ctx: MethodContext) -> None:
        G, D = ctx.build_models()
        state = ctx.state(
            G, D, ctx.masks(G, ctx.config.sg, stream="g-masks"), ctx.masks(D, ctx.config.sd, stream="d-masks")
        )
        ctx.train(state)
        ctx.finish(state)

    def flop_phases(self, plan) -> list[Phase]:
        g, d = sparse_phase_densities(plan, plan.config.sg, plan.config.sd)
        return [Phase(plan.config.train.steps, g, d)]


@hookimpl
def register_methods(register):
    register(Static())

"""`static`: Static Sparse GAN, ERK masks on G (s_G) and D (s_D) fixed for the whole run.

Exactly STU-GAN with exploration switched off, as the paper defines the baseline.
"""

from __future__ import annotations

from sparsebench import Method, MethodContext, hookimpl


class Static(Method):
    name = "static"
    description = "Static Sparse GAN: fixed ERK masks on G and D, trained from scratch"
    title = "Static Sparse GAN"
    fixed_masks = True  # no regrowth: the optimizer-state policy cannot change its runs
    order = 60
    reference = "dense"

    def run(self, ctx: MethodContext) -> None:
        G, D = ctx.build_models()
        state = ctx.state(
            G, D, ctx.masks(G, ctx.config.sg, stream="g-masks"), ctx.masks(D, ctx.config.sd, stream="d-masks")
        )
        ctx.train(state)
        ctx.finish(state)


@hookimpl
def register_methods(register):
    register(Static())

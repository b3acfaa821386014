"""`static`: Static Sparse GAN, ERK masks on G (s_G) and D (s_D) fixed for the whole run.

Exactly STU-GAN with exploration switched off, as the paper defines the baseline.
"""

from __future__ import annotations

from sparsebench import MethodContext, SparseGANMethod, hookimpl


class Static(SparseGANMethod):
    name = "static"
    description = "Static Sparse GAN: fixed ERK masks on G and D, trained from scratch"
    title = "Static Sparse GAN"
    fixed_masks = True  # no regrowth: the optimizer-state policy cannot change its runs
    order = 60
    reference = "dense"

    def run(self, ctx: MethodContext) -> None:
        state = self.sparse_state(ctx)
        ctx.train(state)
        ctx.finish(state)


@hookimpl
def register_methods(register):
    register(Static())

"""`dense`: the dense GAN with the architecture's reference training (hinge loss, Adam, EMA)."""

from __future__ import annotations

from sparsebench import Method, MethodContext, Phase, hookimpl


class Dense(Method):
    name = "dense"
    description = "dense G and D, the architecture's reference training"
    fixed = {"sg": 0.0, "sd": 0.0}
    title = "Dense GAN"
    order = 10

    def run(self, ctx: MethodContext) -> None:
        G, D = ctx.build_models()
        state = ctx.state(G, D, None, None)
        ctx.train(state)
        ctx.finish(state)

    def flop_phases(self, plan) -> list[Phase]:
        return [Phase(plan.config.train.steps, None, None)]


@hookimpl
def register_methods(register):
    register(Dense())

"""`stugan`: STU-GAN (paper Algorithm 1): sparse-to-sparse training with generator exploration.

ERK masks on G and D; every dT G steps, prune the fraction p of each explored layer's active
weights with the smallest |w| and regrow as many inactive ones with the largest |grad| of the
current minibatch (random for D, as the authors' code), new weights at zero; p decays from p0 by
a cosine over the run, counted in G steps. The generator is evaluated through SEMA (eq. 5).
"""

from __future__ import annotations

from sparsebench import (
    CosineSchedule,
    GANState,
    Hooks,
    Method,
    Option,
    Phase,
    hookimpl,
    prune_and_regrow,
)
from sparsebench_builtins.methods.static import sparse_phase_densities


class Exploration(Hooks):
    """Prune-and-regrow every `interval` G steps on the explored networks."""

    def __init__(self, explore: str, interval: int, schedule: CosineSchedule, generator):
        self.explore = explore
        self.interval = interval
        self.schedule = schedule
        self.generator = generator
        self.grads = None
        self.updates = 0

    def due(self, step: int) -> bool:
        return step % self.interval == 0 and step < self.schedule.total

    def after_g_backward(self, state: GANState, step: int) -> None:
        if "g" in self.explore and state.g_masks is not None and self.due(step):
            self.grads = {n: p.grad.detach().clone() for n, p in state.g_masks.params.items()}

    def after_g_step(self, state: GANState, step: int) -> bool:
        if not self.due(step):
            return False
        fraction = self.schedule(step)
        if "g" in self.explore and state.g_masks is not None:
            result = prune_and_regrow(state.g_masks, fraction, self.grads, optimizer=state.g_opt)
            state.ema.on_topology_update(result.pruned, result.grown)
            self.grads = None
        if "d" in self.explore and state.d_masks is not None:
            prune_and_regrow(state.d_masks, fraction, None, self.generator, optimizer=state.d_opt)
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


class STUGAN(Method):
    name = "stugan"
    description = "STU-GAN: sparse G and D from scratch, G explored by prune-and-regrow, SEMA"
    options = (
        Option("explore", str, "g", "which networks explore their connectivity (paper Fig. 5)", ("g", "d", "gd")),
        Option("p0", float, 0.5, "initial update fraction p", interval="(0, 1]"),
        Option("p_min", float, 0.005, "final update fraction of the cosine decay", interval="[0, 1]"),
        Option("delta_t", int, 0, "G steps between topology updates (0: the preset's: 500 BigGAN, 1000 SNGAN)",
               interval="[0, inf)"),
        Option("length", int, 1, "training-length multiplier at the same delta_t (paper Table 3: 5)",
               interval="[1, inf)"),
    )

    def run(self, ctx) -> None:
        o = ctx.options
        steps = ctx.spec.steps * o["length"]
        interval = o["delta_t"] or ctx.spec.explore_interval
        G, D = ctx.build_models()
        state = ctx.state(G, D, ctx.masks(G, ctx.config.sg, stream="g-masks"),
                          ctx.masks(D, ctx.config.sd, stream="d-masks"))
        hooks = Exploration(o["explore"], interval, CosineSchedule(o["p0"], o["p_min"], steps), ctx.rng("explore"))
        ctx.train(state, steps, hooks)
        ctx.finish(state, eval_weights="sema", topology_updates=hooks.updates, delta_t=interval)

    def flop_phases(self, plan) -> list[Phase]:
        g, d = sparse_phase_densities(plan, plan.config.sg, plan.config.sd)
        length = dict(plan.config.method_options).get("length", 1)
        return [Phase(plan.config.train.steps * length, g, d)]


@hookimpl
def register_methods(register):
    register(STUGAN())

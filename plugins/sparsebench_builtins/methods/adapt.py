"""`adapt`: ADAPT (Wang et al., "Balanced Training for Sparse GANs", NeurIPS 2023).

G is trained with RigL-style dynamic sparse training: ERK masks, global magnitude removal and global
gradient regrowth, drop fraction p0 with a cosine decay, every delta_t G steps. D starts at the run's
s_D (the paper: equal to s_G) and its density is adjusted every delta_t_d G steps by the balance ratio

    BR = E_z[D(G_post(z)) - D(G_pre(z))] / (E_x[D(x)] - E_z[D(G_pre(z))]),

D after its update, G_pre / G_post the generator before / after its update, on the z G just trained on,
x D's last real batch; at each sample point (every `ratio_every` G steps) one ratio of batch means, as
the reference code computes it (`sparsebench.balance_ratio`). The adjustment uses the mean of a sliding
window of the last delta_t_d / ratio_every samples, once it is full: BR <= 0.45: D density -0.05; BR >=
0.55: +0.05; never below 0.05. `relaxed` lets D reach density 1; `strict` caps it at 0.5 and, at an
adjustment with BR >= 0.55 at the cap, prunes and regrows D instead (global |w| out, |grad| in).
Densities change during the run: the training FLOPs follow them step by step. BR is measured in eval
mode, so it changes neither BN statistics nor spectral-norm vectors.

Before version 0.2.0 the balance ratio was a mean of per-image ratios on fresh z (biased towards 0 on the
small preset, so D's density fell to its floor), its window was cleared at every adjustment, and strict
mode ran DST on D at every G update once at the cap. Before 0.3.0 the training FLOPs left out the dense
weight gradients of G's regrowth steps and D's adjustment steps.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from sparsebench import (
    CosineSchedule,
    MaskState,
    Method,
    Option,
    Phase,
    change_density,
    gradient_magnitude,
    hookimpl,
    magnitude,
    update_topology,
    with_dense_grads,
)
from sparsebench_builtins.methods.rigl import GradientGrowth

B_MINUS, B_PLUS, D_STEP, D_FLOOR = 0.45, 0.55, 0.05, 0.05
D_CAP = {"relaxed": 1.0, "strict": 0.5}


class BalancedTraining(GradientGrowth):
    """RigL-style global DST on G, D's density steered by the balance ratio (and DST on D in strict mode).

    The ratio is measured by the training loop every `ratio_every` G steps (`Hooks.balance_ratio_every`)
    and kept in a sliding window of the last `d_interval / ratio_every` values, as the reference keeps a
    queue of them: D's density is adjusted every `d_interval` G steps once the window is full, from its mean.
    """

    per_layer = False

    def __init__(
        self,
        interval: int,
        schedule: CosineSchedule,
        generator,
        *,
        mode: str,
        d_interval: int,
        ratio_every: int,
        d_density: float,
    ):
        super().__init__("g", interval, schedule, generator)
        self.mode, self.d_interval = mode, d_interval
        self.balance_ratio_every = ratio_every
        self.d_density = d_density
        self.window: deque[float] = deque(maxlen=max(1, d_interval // ratio_every))
        self.d_updates = 0  # strict mode: prune-and-regrow updates of D at its cap
        self._d_grads: dict[str, torch.Tensor] = {}

    def adjust_due(self, step: int) -> bool:
        return step % self.d_interval == 0 and step < self.schedule.total

    def needs_dense_grads(self, step: int) -> bool:
        return super().needs_dense_grads(step) or self.adjust_due(step)  # D grows by its dense gradient

    def dense_weight_grads(self, step: int) -> str:
        """G's on its regrowth steps; D's on its adjustment steps (captured there whether D then grows or not)."""
        g = super().dense_weight_grads(step)
        return g + "d" if self.adjust_due(step) and "d" not in g else g

    def after_d_backward(self, state, step: int) -> None:
        super().after_d_backward(state, step)
        if self.adjust_due(step):  # D's dense gradients of its last step, for growing D
            self._d_grads = {n: p.grad.detach().clone() for n, p in state.d_masks.params.items()}

    def after_g_step(self, state, step: int) -> bool:
        if step % self.balance_ratio_every == 0 and math.isfinite(state.balance_ratio):
            self.window.append(state.balance_ratio)  # G_post measured before G's topology changes
        changed = super().after_g_step(state, step)
        if self.adjust_due(step) and len(self.window) == self.window.maxlen:
            changed = self._adjust_d(state, step, sum(self.window) / len(self.window)) or changed
        self._d_grads = {}
        return changed

    def _adjust_d(self, state, step: int, ratio: float) -> bool:
        """BR <= 0.45: D too strong, density -0.05; BR >= 0.55: too weak, +0.05 up to the cap, where strict
        mode lets D prune and regrow instead (global |w| out, |grad| in)."""
        cap, masks = D_CAP[self.mode], state.d_masks
        move = -D_STEP if ratio <= B_MINUS else D_STEP if ratio >= B_PLUS else 0.0
        target = round(min(max(self.d_density + move, D_FLOOR), cap), 10)
        if target != self.d_density:
            self.d_density = target
            change_density(masks, target, magnitude(masks), gradient_magnitude(self._d_grads), state.d_opt)
            return True
        if self.mode == "strict" and move > 0:  # at the cap
            update_topology(
                masks,
                self.schedule(step),
                magnitude(masks),
                gradient_magnitude(self._d_grads),
                state.d_opt,
                per_layer=False,
            )
            self.d_updates += 1
            return True
        return False

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "window": list(self.window),
            "d_density": self.d_density,
            "d_updates": self.d_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.window.clear()
        self.window.extend(float(v) for v in state["window"])
        self.d_density, self.d_updates = float(state["d_density"]), int(state["d_updates"])

    def stats(self, state, step: int) -> dict[str, float]:
        return {**super().stats(state, step), "d_density": self.d_density, "d_updates": self.d_updates}


class ADAPT(Method):
    name = "adapt"
    version = "0.3.0"  # 0.3.0: training FLOPs count the dense weight gradients its scores read
    title, order, reference = "ADAPT", 100, "dense"
    result_columns = ("topology_updates", "delta_t")
    description = "ADAPT: RigL-style DST on G, D's density adjusted by the balance ratio"
    options = (
        Option(
            "mode",
            str,
            "relaxed",
            "relaxed: D's density may reach 1; strict: capped at 0.5, then DST on D",
            tuple(D_CAP),
        ),
        Option("p0", float, 0.5, "initial drop fraction of G's updates (cosine-decayed to 0)", interval="(0, 1]"),
        Option(
            "delta_t",
            int,
            0,
            "G steps between G's topology updates (0: the preset's: 500 BigGAN, 1000 SNGAN)",
            interval="[0, inf)",
        ),
        Option("delta_t_d", int, 0, "G steps between D density adjustments (0: twice delta_t)", interval="[0, inf)"),
        Option("ratio_every", int, 10, "G steps between balance-ratio samples", interval="[1, inf)"),
    )

    def make_hooks(self, o: dict, cfg, generator: torch.Generator) -> BalancedTraining:
        """The training hooks of a run with options `o`: what `run` trains with and `flop_phases` counts."""
        interval = o["delta_t"] or cfg.train.explore_interval
        return BalancedTraining(
            interval,
            CosineSchedule(o["p0"], 0.0, cfg.train.steps),
            generator,
            mode=o["mode"],
            d_interval=o["delta_t_d"] or 2 * interval,
            ratio_every=o["ratio_every"],
            d_density=1.0 - cfg.sd,
        )

    def run(self, ctx) -> None:
        cfg = ctx.config
        G, D = ctx.build_models()
        d_masks = ctx.masks(D, cfg.sd, stream="d-masks") or MaskState.dense(D, cfg.scope)  # D may grow from dense too
        state = ctx.state(G, D, ctx.masks(G, cfg.sg, stream="g-masks"), d_masks)
        hooks = self.make_hooks(ctx.options, cfg, ctx.rng("explore"))
        ctx.train(state, hooks=hooks)
        ctx.finish(state, eval_weights="sema", topology_updates=hooks.updates, delta_t=hooks.interval)

    def flop_phases(self, plan) -> list[Phase]:
        """The initial densities (D's moves with the balance ratio and G's with the global ranking during the
        run; its trained FLOPs follow them), and the steps that read dense gradients of G or D."""
        (phase,) = super().flop_phases(plan)
        o = {opt.name: opt.default for opt in self.options} | dict(plan.config.method_options)
        return [with_dense_grads(phase, self.make_hooks(o, plan.config, torch.Generator()))]


@hookimpl
def register_methods(register):
    register(ADAPT())

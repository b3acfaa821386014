"""`adapt`: ADAPT (Wang et al., "Balanced Training for Sparse GANs", NeurIPS 2023).

G is trained with RigL-style dynamic sparse training: ERK masks, global magnitude removal and global
gradient regrowth, drop fraction p0 with a cosine decay, every delta_t G steps. D starts at the run's
s_D (the paper: equal to s_G) and its density is adjusted every delta_t_d G steps by the balance ratio

    BR = E_z[D(G_post(z)) - D(G_pre(z))] / (E_x[D(x)] - E_z[D(G_pre(z))]),

D after its update, G_pre / G_post the generator before / after its update, on the same z and real
batch; the mean of per-sample ratios, sampled every `ratio_every` G steps, averaged over the window
since the last adjustment. BR < 0.45: D density -0.05; BR > 0.55: +0.05; never below 0.05. `relaxed`
lets D reach density 1; `strict` caps it at 0.5 and, once there, trains D with the same DST as G.
Densities change during the run: the training FLOPs follow them step by step. BR is measured in eval
mode, so it changes neither BN statistics nor spectral-norm vectors.
"""

from __future__ import annotations

import math

import torch

from sparsebench import (
    CosineSchedule,
    MaskState,
    Method,
    Option,
    balance_ratio,
    change_density,
    gradient_magnitude,
    hookimpl,
    magnitude,
)
from sparsebench_builtins.methods.rigl import GradientGrowth

B_MINUS, B_PLUS, D_STEP, D_FLOOR = 0.45, 0.55, 0.05, 0.05
D_CAP = {"relaxed": 1.0, "strict": 0.5}


class BalancedTraining(GradientGrowth):
    """RigL-style global DST on G, D's density steered by the balance ratio (and DST on D in strict mode)."""

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
        real,
        z_dim: int,
        num_classes: int,
    ):
        super().__init__("g", interval, schedule, generator)
        self.mode, self.d_interval, self.ratio_every = mode, d_interval, ratio_every
        self.d_density = d_density
        self.real, self.z_dim, self.num_classes = real, z_dim, num_classes
        self.window: list[float] = []
        self.last_ratio = float("nan")
        self._pending: tuple | None = None  # z, y, D(x), D(G_pre(z)) of this G step
        self._d_grads: dict[str, torch.Tensor] = {}
        self._follow_cap()

    def _follow_cap(self) -> None:
        """In strict mode, D joins the DST once its density is at the cap."""
        self.networks = "gd" if self.mode == "strict" and self.d_density >= D_CAP["strict"] - 1e-9 else "g"

    def adjust_due(self, step: int) -> bool:
        return step % self.d_interval == 0 and step < self.schedule.total

    def d_outputs(self, state, images, labels):
        """D's outputs on `images`, in eval mode: measuring leaves BN statistics and spectral-norm vectors alone."""
        state.G.eval(), state.D.eval()
        with torch.no_grad():
            out = state.D(images, labels).flatten()
        state.G.train(), state.D.train()
        return out

    def generated(self, state, z, y):
        state.G.eval()
        with torch.no_grad():
            out = state.G(z, y)
        state.G.train()
        return out

    def after_d_backward(self, state, step: int) -> None:
        super().after_d_backward(state, step)
        if self.adjust_due(step):  # D's dense gradients, for growing D
            self._d_grads = {n: p.grad.detach().clone() for n, p in state.d_masks.params.items()}

    def after_g_backward(self, state, step: int) -> None:
        super().after_g_backward(state, step)
        if step % self.ratio_every == 0:  # G_pre: D is updated, G not yet
            x, yx = self.real(step)
            z = torch.randn(len(x), self.z_dim, generator=self.generator).to(x.device)
            y = torch.randint(max(self.num_classes, 1), (len(x),), generator=self.generator).to(x.device)
            d_pre = self.d_outputs(state, self.generated(state, z, y), y)
            self._pending = (z, y, self.d_outputs(state, x, yx), d_pre)

    def after_g_step(self, state, step: int) -> bool:
        if self._pending is not None:  # G_post: after G's update, before its topology changes
            z, y, d_real, d_pre = self._pending
            self.last_ratio = balance_ratio(d_real, d_pre, self.d_outputs(state, self.generated(state, z, y), y))
            self.window.append(self.last_ratio)
            self._pending = None
        changed = super().after_g_step(state, step)
        if self.adjust_due(step) and self.window:
            ratio = sum(self.window) / len(self.window)
            self.window = []
            move = -D_STEP if ratio < B_MINUS else D_STEP if ratio > B_PLUS else 0.0
            target = round(min(max(self.d_density + move, D_FLOOR), D_CAP[self.mode]), 10)
            if target != self.d_density:
                self.d_density = target
                masks = state.d_masks
                change_density(masks, target, magnitude(masks), gradient_magnitude(self._d_grads), state.d_opt)
                self._follow_cap()
                changed = True
        self._d_grads = {}
        return changed

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "window": list(self.window),
            "d_density": self.d_density,
            "last_ratio": self.last_ratio,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.window = [float(v) for v in state["window"]]
        self.d_density, self.last_ratio = float(state["d_density"]), float(state["last_ratio"])
        self._follow_cap()

    def stats(self, state, step: int) -> dict[str, float]:
        out = {**super().stats(state, step), "d_density": self.d_density}
        if not math.isnan(self.last_ratio):  # once a ratio has been sampled
            out["balance_ratio"] = self.last_ratio
        return out


class ADAPT(Method):
    name = "adapt"
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

    def run(self, ctx) -> None:
        o, spec, cfg = ctx.options, ctx.spec, ctx.config
        interval = o["delta_t"] or spec.explore_interval
        G, D = ctx.build_models()
        d_masks = ctx.masks(D, cfg.sd, stream="d-masks") or MaskState.dense(D, cfg.scope)  # D may grow from dense too
        state = ctx.state(G, D, ctx.masks(G, cfg.sg, stream="g-masks"), d_masks)
        hooks = BalancedTraining(
            interval,
            CosineSchedule(o["p0"], 0.0, spec.steps),
            ctx.rng("explore"),
            mode=o["mode"],
            d_interval=o["delta_t_d"] or 2 * interval,
            ratio_every=o["ratio_every"],
            d_density=1.0 - cfg.sd,
            real=lambda step: ctx.batch(spec.batch_size, stream=f"balance-ratio-{step}"),
            z_dim=spec.z_dim,
            num_classes=ctx.num_classes,
        )
        ctx.train(state, hooks=hooks)
        ctx.finish(state, eval_weights="sema", topology_updates=hooks.updates, delta_t=interval)


@hookimpl
def register_methods(register):
    register(ADAPT())

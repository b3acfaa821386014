"""`adapt`: ADAPT (Wang et al., "Balanced Training for Sparse GANs", NeurIPS 2023).

As its reference code runs it (YiteWang/ADAPT@002e2e9: `scripts/adapt_relax.sh`, `adapt_strict.sh`,
`sparselearning/core.py`, `gan_functions.py`):

- Scope: every weight but biases, norms, embeddings and layers named gain/bias/classifier (the `weights`
  scope, see sparsebench.sparse.scope), unless `--scope` says otherwise; at the CPU presets (quick, small) every
  method runs at `conv`, where the `weights` scope would starve G (`sparsebench.config.SHARED_SCOPE_PRESETS`).
- G: RigL-style dynamic sparse training over the whole network (global |w| removal, global |grad| regrowth),
  ERK masks, drop fraction 0.5 cosine-decayed to 0.005, every delta_t G steps; a weight just dropped may be
  regrown (it then keeps its value), ties broken by RigL's noise from the run's seeded stream.
- D starts at G's density (`d_start=sg`; `d_start=sd` takes the grid's s_D) and its density is adjusted
  every delta_t_d G steps by the balance ratio

      BR = E_z[D(G_post(z)) - D(G_pre(z))] / (E_x[D(x)] - E_z[D(G_pre(z))]),

  D after its update, G_pre / G_post the generator before / after its update, on the z G just trained on,
  x D's last real batch, measured every `ratio_every` G steps with G and D in train mode, as the reference
  does (`sparsebench.BalanceProbe`: the two extra forwards advance D's spectral-norm vectors and G's BN
  statistics, as there). Each sample is one ratio of batch means (`sparsebench.balance_ratio`); the
  decision takes the mean of the last `window` samples, acted on once there are that many: the reference
  trims its queue to `window` after each iteration and adjusts D at iterations that take no sample (999,
  1,999, ...: its D counter counts n_critic steps an iteration, its samples fall on multiples of 10), so
  each decision averages exactly `window` samples and consecutive windows do not overlap.
  BR <= 0.45: D density -0.05; BR >= 0.55: +0.05; never below 0.05.
  `relaxed` lets D reach density 1; `strict` caps it at 0.5 and, at an adjustment with BR >= 0.55 at the
  cap, prunes and regrows D instead (global |w| out, |grad| in).
- Intervals: the reference's SNGAN scripts run 100,000 G steps with G updates every 500, D adjustments every
  1,000 (relaxed) or 2,000 (strict), a ratio every 10 and a window of 100 (1,000 steps), its first decision at
  iteration 1,000 (1 % of training, once the window is full); its scripts set no ADAPT intervals for BigGAN (its
  code defaults, 500 / 500 / a ratio every 100 / a window of 100 iterations, fail its own check of at least 10
  ratios per D adjustment), so BigGAN takes the SNGAN scripts' intervals at the same fraction of its script's
  200,000 G steps: our extrapolation, not the reference's. A preset of at least a tenth of the reference's
  length (the paper presets) takes each interval and the window's span at the same fraction of training:
  round(reference interval / reference steps x S), at least 1. Below that (`Schedule.SHORT`), the fraction
  alone leaves nothing to decide from (the small SNGAN preset, 1,500 steps, would get G every 8 steps, D every
  15 / 30 G steps = 30 / 60 D steps, a window of 15 consecutive, correlated ratios and a first decision at step
  8, against the reference's 5,000 D steps and 100 samples), so a short preset counts in optimizer steps: G is
  updated every `explore_interval` G steps of the preset, as its SDST baselines are at that preset (the
  reference runs ADAPT and SDST at one interval, 500); a ratio every round(10 x fraction) G steps, at least 1;
  a window of the reference's 100 samples; D adjusted every window span (relaxed; twice that, strict), so that
  no sample serves two decisions and D trains 200 (400) D steps at each density at the small preset; and no
  decision in the first 10 % of training (the initial transient, in which the reference takes none either).
  The small preset then gets G every 30 steps, a ratio every step, 100-sample windows, D adjusted every 100
  (200) G steps from step 200 on: 13 (7) decisions.
- Decisions are counted in the results (`d_down`, `d_up`, `d_held`, `d_in_band`): where the balance ratio never
  reaches the band [0.45, 0.55] at a preset, every decision sparsifies D (down to its floor) and the results
  say so, instead of the controller's intent being taken for granted.

Densities change during the run: the training FLOPs follow them step by step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import torch

from sparsebench import (
    CosineSchedule,
    DynamicSparseMethod,
    GradientGrowth,
    MaskState,
    Option,
    SparsebenchError,
    change_density,
    gradient_magnitude,
    hookimpl,
    noisy_magnitude,
    update_topology,
)

B_MINUS, B_PLUS, D_STEP, D_FLOOR = 0.45, 0.55, 0.05, 0.05
D_CAP = {"relaxed": 1.0, "strict": 0.5}
P_MIN = 0.005  # the reference's CosineDecay floor (eta_min)
RIGL_NOISE = 1e-5  # RigL's drop-score noise, for ties

# The reference's schedule, in its G steps (iterations): scripts/adapt_relax.sh, adapt_strict.sh (SNGAN)
REFERENCE_STEPS = {"sngan": 100_000, "biggan": 200_000}  # max-iter; BigGAN: scripts/biggan.sh
REFERENCE_G_INTERVAL = 500  # update_frequency_G
REFERENCE_D_INTERVAL = {"relaxed": 1000, "strict": 2000}  # update_frequency_D
REFERENCE_RATIO_EVERY = 10  # br_freq
REFERENCE_WINDOW_STEPS = 1000  # da_iters: a queue of da_iters / br_freq = 100 ratios
REFERENCE_WINDOW = REFERENCE_WINDOW_STEPS // REFERENCE_RATIO_EVERY


@dataclass(frozen=True)
class Schedule:
    """ADAPT's intervals for a run: the reference's at the same fraction of training, or in optimizer steps at
    a short preset (see the module docstring)."""

    g_interval: int
    d_interval: int
    ratio_every: int
    window: int  # balance-ratio samples
    first: int = 0  # no D decision before this G step

    SHORT = 0.1  # below this fraction of the reference's length, a preset counts in optimizer steps
    WARMUP = 0.1  # at a short preset, the fraction of training without a decision

    @classmethod
    def for_run(cls, arch: str, spec, mode: str) -> Schedule:
        """The schedule of a run of `spec.steps` G steps of architecture `arch` (an architecture the reference
        does not run takes its SNGAN scripts' length)."""
        fraction = spec.steps / REFERENCE_STEPS.get(arch, REFERENCE_STEPS["sngan"])
        if fraction >= cls.SHORT:
            return cls.scaled(fraction, mode)
        ratio_every = max(1, math.floor(REFERENCE_RATIO_EVERY * fraction + 0.5))
        span = REFERENCE_WINDOW * ratio_every
        d_interval = span * REFERENCE_D_INTERVAL[mode] // REFERENCE_D_INTERVAL["relaxed"]
        g_interval = max(1, spec.explore_interval, math.floor(REFERENCE_G_INTERVAL * fraction + 0.5))
        return cls(g_interval, d_interval, ratio_every, REFERENCE_WINDOW, math.ceil(cls.WARMUP * spec.steps))

    @classmethod
    def scaled(cls, fraction: float, mode: str) -> Schedule:
        """round(reference x fraction), at least 1; the window keeps the reference's span (1,000 of its steps,
        scaled alike) and at most its 100 samples."""

        def scale(value: int) -> int:
            return max(1, math.floor(value * fraction + 0.5))

        ratio_every = scale(REFERENCE_RATIO_EVERY)
        window = min(REFERENCE_WINDOW, max(1, scale(REFERENCE_WINDOW_STEPS) // ratio_every))
        return cls(scale(REFERENCE_G_INTERVAL), scale(REFERENCE_D_INTERVAL[mode]), ratio_every, window)


class BalancedTraining(GradientGrowth):
    """RigL-style global DST on G, D's density steered by the balance ratio (and DST on D in strict mode).

    The ratio is measured every `ratio_every` G steps in train mode (the probe `balance_ratio_every` and
    `balance_ratio_mode` ask for, `sparsebench.BalanceProbe`) and kept in a queue as the reference keeps it: D's
    density is adjusted every `d_interval` G steps once the queue holds `window` values, from their mean (the
    queue keeps the last `window`: the reference's decisions never reuse a sample of the one before). The
    ratios stay on the device until the next decision reads them, all at once.
    """

    per_layer = False
    regrow_pruned = True
    drop_noise = RIGL_NOISE
    balance_ratio_mode = "train"

    def __init__(
        self,
        interval: int,
        schedule: CosineSchedule,
        generator,
        *,
        mode: str,
        d_interval: int,
        ratio_every: int,
        window: int,
        d_density: float,
        first: int = 0,
    ):
        super().__init__("g", interval, schedule, generator)
        self.mode, self.d_interval, self.first = mode, d_interval, first
        self.balance_ratio_every = ratio_every
        self.d_density = d_density
        self.window: deque[float] = deque(maxlen=window)
        self._unread: list[float | torch.Tensor] = []  # ratios measured since the last decision, not read yet
        self.d_updates = 0  # strict mode: prune-and-regrow updates of D at its cap
        self.decisions = {"d_down": 0, "d_up": 0, "d_held": 0, "d_in_band": 0}  # what each decision did
        self._d_grads: dict[str, torch.Tensor] = {}

    def adjust_due(self, step: int) -> bool:
        return step % self.d_interval == 0 and self.first <= step < self.schedule.total

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
        if step % self.balance_ratio_every == 0:  # G_post measured before G's topology changes
            self._unread.append(state.balance_ratio)  # on the device: read at the next decision, not now
        changed = super().after_g_step(state, step)
        if self.adjust_due(step):
            self._read()
            if len(self.window) == self.window.maxlen:
                changed = self._adjust_d(state, step, sum(self.window) / len(self.window)) or changed
        self._d_grads = {}
        return changed

    def _read(self) -> None:
        """Queue the ratios measured since the last read, in order, reading those on the device at once (one
        host synchronisation per decision, not two per sample); a NaN one (nothing measured, or D scoring real
        and generated images alike) is not queued."""
        on_device = [r for r in self._unread if isinstance(r, torch.Tensor)]
        read = iter(torch.stack(on_device).tolist() if on_device else [])
        for r in self._unread:
            value = next(read) if isinstance(r, torch.Tensor) else float(r)
            if math.isfinite(value):
                self.window.append(value)
        self._unread = []

    def _adjust_d(self, state, step: int, ratio: float) -> bool:
        """BR <= 0.45: D too strong, density -0.05; BR >= 0.55: too weak, +0.05 up to the cap, where strict
        mode lets D prune and regrow instead (global |w| out, |grad| in)."""
        cap, masks = D_CAP[self.mode], state.d_masks
        move = -D_STEP if ratio <= B_MINUS else D_STEP if ratio >= B_PLUS else 0.0
        target = round(min(max(self.d_density + move, D_FLOOR), cap), 10)
        drop = noisy_magnitude(masks, self.generator, self.drop_noise)
        outcome = (
            "d_in_band" if move == 0 else "d_held" if target == self.d_density else "d_down" if move < 0 else "d_up"
        )
        self.decisions[outcome] += 1
        if target != self.d_density:
            self.d_density = target
            change_density(masks, target, drop, gradient_magnitude(self._d_grads), state.d_opt)
            return True
        if self.mode == "strict" and move > 0:  # at the cap
            update_topology(
                masks,
                self.schedule(step),
                drop,
                gradient_magnitude(self._d_grads),
                state.d_opt,
                per_layer=False,
                regrow_pruned=True,
            )
            self.d_updates += 1
            return True
        return False

    def state_dict(self) -> dict:
        self._read()  # the ratios still on the device join the window (a checkpoint reads the device anyway)
        return {
            **super().state_dict(),
            "window": list(self.window),
            "d_density": self.d_density,
            "d_updates": self.d_updates,
            "decisions": dict(self.decisions),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.window.clear()
        self.window.extend(float(v) for v in state["window"])
        self._unread = []
        self.d_density, self.d_updates = float(state["d_density"]), int(state["d_updates"])
        self.decisions = {k: int(v) for k, v in state["decisions"].items()}

    def stats(self, state, step: int) -> dict[str, float]:
        return {**super().stats(state, step), "d_density": self.d_density, "d_updates": self.d_updates}


class ADAPT(DynamicSparseMethod):
    name = "adapt"
    version = "0.4.0"
    title, order, reference = "ADAPT", 100, "dense"
    scope = "weights"
    result_columns = ("topology_updates", "delta_t", "d_down", "d_up", "d_held", "d_in_band")
    description = "ADAPT: RigL-style DST on G, D's density adjusted by the balance ratio"
    options = (
        Option(
            "mode",
            str,
            "relaxed",
            "relaxed: D's density may reach 1; strict: capped at 0.5, then DST on D",
            tuple(D_CAP),
        ),
        Option(
            "d_start", str, "sg", "D's starting sparsity: sg (G's, as the reference) or sd (the grid's)", ("sg", "sd")
        ),
        Option("p0", float, 0.5, "initial drop fraction of G's updates (cosine-decayed to 0.005)", interval="(0, 1]"),
        Option(
            "delta_t",
            int,
            0,
            "G steps between G's topology updates (0: the reference's 500 at the same fraction of training)",
            interval="[0, inf)",
        ),
        Option(
            "delta_t_d",
            int,
            0,
            "G steps between D density adjustments (0: the reference's 1,000 relaxed / 2,000 strict, scaled alike)",
            interval="[0, inf)",
        ),
        Option(
            "ratio_every",
            int,
            0,
            "G steps between balance-ratio samples (0: the reference's 10, scaled)",
            interval="[0, inf)",
        ),
        Option(
            "window",
            int,
            0,
            "balance-ratio samples the decision averages (0: the reference's, scaled)",
            interval="[0, inf)",
        ),
    )

    def grid_point(self, sg: float, sd: float, options: dict) -> tuple[float, float]:
        """D starts at G's sparsity unless `d_start=sd`: the run records s_D = s_G, whatever the grid's s_D."""
        return (sg, sg) if options.get("d_start", "sg") == "sg" else (sg, sd)

    def make_callbacks(self, o: dict, cfg, generator: torch.Generator) -> BalancedTraining:
        """The training callbacks of a run with options `o`: what `run` trains with and `flop_phases` counts."""
        ref = Schedule.for_run(cfg.arch, cfg.train, o["mode"])
        return BalancedTraining(
            o["delta_t"] or ref.g_interval,
            CosineSchedule(o["p0"], P_MIN, cfg.train.steps),
            generator,
            mode=o["mode"],
            d_interval=o["delta_t_d"] or ref.d_interval,
            ratio_every=o["ratio_every"] or ref.ratio_every,
            window=o["window"] or ref.window,
            d_density=1.0 - cfg.sd,
            first=ref.first,
        )

    def results(self, callbacks: BalancedTraining) -> dict:
        return {**super().results(callbacks), **callbacks.decisions}

    def flop_phases(self, plan) -> list:
        """The kit's plan, an estimate: G's densities move between layers and D's follows the balance ratio."""
        return [replace(phase, estimate=True) for phase in super().flop_phases(plan)]

    def sparse_state(self, ctx):
        """G from its masks, D from its own (dense when s_D is 0: D may grow from dense too)."""
        cfg = ctx.config
        if ctx.options["d_start"] == "sg" and cfg.sd != cfg.sg:
            raise SparsebenchError(f"adapt: d_start=sg needs s_D = s_G, got s_G {cfg.sg} and s_D {cfg.sd}")
        G, D = ctx.build_models()
        d_masks = ctx.masks(D, cfg.sd, stream="d-masks") or MaskState.dense(D, cfg.scope)
        return ctx.state(G, D, ctx.masks(G, cfg.sg, stream="g-masks"), d_masks)


@hookimpl
def register_methods(register):
    register(ADAPT())

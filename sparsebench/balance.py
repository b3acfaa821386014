"""The balance ratio of a GAN (Wang et al., "Balanced Training for Sparse GANs", NeurIPS 2023): its
estimator, the probe that measures it around G's update and the results a run stores of it (which stored
values come from this estimator is `sparsebench.compat`'s, where the store reads it).

    BR = (mean D(G_post(z)) - mean D(G_pre(z))) / (mean D(x) - mean D(G_pre(z)))

how far one G update moves its samples towards real data in D's eyes. Every run measures it at its logged
steps in eval mode (a diagnostic that changes no training state); a method's callbacks may ask for it
every N G steps (`balance_ratio_every`) and in the reference's train mode (`balance_ratio_mode = "train"`,
as ADAPT steers D by it; its three terms then come from the training forwards, under the run's precision).
The probe is a `Callbacks` like a method's: the loop knows nothing of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsebench import distributed
from sparsebench.interfaces import CallbackList, Callbacks, GANState, GStep

MODES = ("eval", "train")


def balance_ratio(d_real: torch.Tensor, d_pre: torch.Tensor, d_post: torch.Tensor) -> float:
    """The balance ratio at one sample point, as ADAPT's reference code computes it, over the batch: a ratio
    of batch means, not a mean of per-image ratios (those are heavy-tailed, and biased towards 0 where real
    and fake scores overlap). NaN when D scores real and generated images alike on average. Changing it means
    changing `sparsebench.compat.BALANCE_RATIO_ESTIMATOR`, which hides the ratios stored by the old one."""
    return float(ratio_on_device(d_real, d_pre, d_post))


def ratio_on_device(d_real: torch.Tensor, d_pre: torch.Tensor, d_post: torch.Tensor) -> torch.Tensor:
    """`balance_ratio` as a 0-dim float64 tensor on the outputs' device, read by nobody yet: a probe every few G
    steps then costs no host synchronisation (ADAPT reads its ratios once per decision). The batch means'
    differences are taken in their own precision and divided in float64, as Python floats would be."""
    real, pre, post = d_real.mean(), d_pre.mean(), d_post.mean()
    gap = (real - pre).double()
    return torch.where(gap != 0, (post - pre).double() / gap, math.nan)


def _global_ratio(d_real: torch.Tensor, d_pre: torch.Tensor, d_post: torch.Tensor) -> torch.Tensor:
    """`ratio_on_device` of the global batch: under torchrun each rank holds its share of the batch, so the three
    batch means are averaged over the ranks first (every share has the same size: that is the global batch's
    mean), and every rank gets the same ratio. A ratio of a rank's own share would steer each rank's decisions
    (ADAPT's D density) apart, into collectives the others never reach."""
    if distributed.world_size() > 1:
        d_real, d_pre, d_post = distributed.mean_over_ranks(torch.stack([d_real.mean(), d_pre.mean(), d_post.mean()]))
    return ratio_on_device(d_real, d_pre, d_post)


@torch.no_grad()
def _d_in_train_mode(state: GANState, batch: GStep) -> tuple[torch.Tensor, torch.Tensor]:
    """D(G(z)) then D(x) with G and D left in train mode, in the reference's order, computed as the G step
    computed D(G_pre(z)) (`GStep.measure`: the same forwards under the same precision). Eager fp32 forwards
    against the G step's bf16 or compiled one would make the ratio, and ADAPT's decisions, depend on
    `--precision` and `--compile` beyond what training itself does."""
    if batch.measure is None:
        measure = lambda x, y, z=None: state.D(state.G(z, y) if z is not None else x, y)  # noqa: E731
    else:
        measure = batch.measure
    d_post = measure(None, batch.yf, batch.z).flatten()
    return d_post, measure(batch.x, batch.y).flatten()


@torch.no_grad()
def _d_of(state: GANState, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """D's outputs on `x` (or on G(z) when `z` is given), both in eval mode: a measurement that moves
    neither BN statistics nor spectral-norm vectors, so training is the same with or without it."""
    state.G.eval(), state.D.eval()
    try:
        return state.D(state.G(z, y) if z is not None else x, y).flatten()
    finally:
        state.G.train(), state.D.train()


class BalanceProbe(Callbacks):
    """Measures the balance ratio around G's update into `state.balance_ratio` (NaN at steps it skips; where it
    measures, a 0-dim tensor on the device, `ratio_on_device`: read it with `float()` when it is needed).

    `every` > 0: every that many G steps, besides the logged steps. `mode` "eval": D after its update, G_pre
    and G_post on the z G just trained on, real images of D's last batch, all in eval mode. "train": only at
    the `every` steps, as ADAPT's reference (`gan_functions.train`): D(G_pre(z)) is the G step's own D output,
    D(G_post(z)) and D(x) two more forwards in train mode (no gradients), which advance D's spectral-norm
    vectors and G's BN running statistics as there; training then differs from a run without them."""

    def __init__(self, every: int = 0, mode: str = "eval"):
        if mode not in MODES:
            raise ValueError(f"unknown balance-ratio mode {mode!r}; known: {', '.join(MODES)}")
        self.every, self.mode = every, mode
        self._now = ""  # how this step measures: "", "eval" or "train"
        self._pre: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def asked_by(cls, callbacks: Callbacks) -> BalanceProbe:
        """The probe a method's callbacks ask for (`balance_ratio_every`, `balance_ratio_mode`)."""
        return cls(getattr(callbacks, "balance_ratio_every", 0), getattr(callbacks, "balance_ratio_mode", "eval"))

    def before_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        scheduled = bool(self.every and step % self.every == 0)
        if self.mode == "train":  # a method that measures in train mode logs those samples only, never a mix
            self._now = "train" if scheduled else ""
        else:
            self._now = "eval" if batch.logged or scheduled else ""
        if self._now == "eval":
            self._pre = _d_of(state, batch.x, batch.y), _d_of(state, batch.x, batch.yf, batch.z)

    def after_g_update(self, state: GANState, step: int, batch: GStep) -> None:
        if self._now == "train":
            d_post, d_real = _d_in_train_mode(state, batch)
            state.balance_ratio = _global_ratio(d_real, batch.d_gen.flatten(), d_post)
        elif self._now == "eval" and self._pre is not None:
            d_real, d_pre = self._pre
            state.balance_ratio = _global_ratio(d_real, d_pre, _d_of(state, batch.x, batch.yf, batch.z))
        else:
            state.balance_ratio = math.nan
        self._pre = None

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        ratio = float(state.balance_ratio)  # a logged step: the loop reads the device here anyway
        return {"balance_ratio": ratio} if math.isfinite(ratio) else {}


class RatioTrace:
    """The balance ratios a run logs, over its current training phase (a new phase starts the trace anew)."""

    def __init__(self) -> None:
        self.values: list[tuple[int, float]] = []

    def observe(self, step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key.endswith("balance_ratio"):
                if self.values and step <= self.values[-1][0]:  # a new phase (fine-tuning, a ticket round)
                    self.values.clear()
                self.values.append((step, float(value)))

    def results(self) -> dict[str, float]:
        """The final ratio and its mean over the last 10 % of the final phase's logged steps (a resumed run's
        too: its checkpoints keep what the phase logged, see `GANState.logged`)."""
        if not self.values:
            return {}
        last = self.values[-1][0]
        tail = [v for s, v in self.values if s >= 0.9 * last]
        return {"balance_ratio": self.values[-1][1], "balance_ratio_last10": sum(tail) / len(tail)}


def probed(callbacks: Callbacks | None, asking: Callbacks | None = None) -> Callbacks:
    """`callbacks` behind the balance-ratio probe that `asking` (default: `callbacks` themselves) asks for, as
    a run trains them: the probe measures first, so a method's `after_g_step` reads `state.balance_ratio`."""
    callbacks = callbacks or Callbacks()
    return CallbackList([BalanceProbe.asked_by(asking or callbacks), callbacks])

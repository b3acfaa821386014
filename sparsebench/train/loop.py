"""The GAN training loop: hinge loss, n_critic D steps per G step, Adam, masks, (S)EMA.

Order inside one G step t (paper Algorithm 1):
    n_critic x [accumulate x D forward/backward -> hooks.after_d_backward (dense gradients visible),
                masks.before_step, Adam, mask D weights]
    accumulate x G forward/backward -> hooks.after_g_backward (dense gradients visible)
    masks.before_step, Adam, mask G weights, (S)EMA update
    hooks.after_g_step (topology updates happen here, counted in G steps)

`masks.before_step` masks the gradients unless the optimizer-state policy keeps them dense
(sparsebench.sparse.opt_state). Gradient accumulation is BigGAN-PyTorch's: each of the
`accumulate` minibatch losses is divided by `accumulate` before its backward, so one optimizer
step sees the gradient of the mean loss over all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.data import ImageData
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.sema import SparseEMA
from sparsebench.timing import StepTimer
from sparsebench.train.speed import Speed


def d_hinge_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """D's hinge loss on its outputs for real and generated images."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def g_hinge_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """G's hinge loss on D's outputs for generated images."""
    return -d_fake.mean()


def balance_ratio(d_real: torch.Tensor, d_pre: torch.Tensor, d_post: torch.Tensor) -> float:
    """ADAPT's balance ratio (Wang et al., NeurIPS 2023) at one sample point, as its reference code computes
    it: (mean D(G_post(z)) - mean D(G_pre(z))) / (mean D(x) - mean D(G_pre(z))) over the batch, how far one
    G update moves its samples towards real data in D's eyes. A ratio of batch means, not a mean of
    per-image ratios: those are heavy-tailed (and biased towards 0) where real and fake scores overlap.
    NaN when D scores real and generated images alike on average. Changing it means bumping
    `store.BALANCE_RATIO_ESTIMATOR`, which hides the ratios stored by the old one."""
    gap = float(d_real.mean() - d_pre.mean())
    return float(d_post.mean() - d_pre.mean()) / gap if gap != 0 else float("nan")


@torch.no_grad()
def _d_in_train_mode(state: GANState, x: torch.Tensor, y: torch.Tensor, yf: torch.Tensor, z: torch.Tensor):
    """D(G(z)) then D(x) with G and D left in train mode, in the reference's order (`Hooks.balance_ratio_mode`)."""
    d_post = state.D(state.G(z, yf), yf).flatten()
    return d_post, state.D(x, y).flatten()


@torch.no_grad()
def _d_of(state: GANState, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """D's outputs on `x` (or on G(z) when `z` is given), both in eval mode: a measurement that moves
    neither BN statistics nor spectral-norm vectors, so training is the same with or without it."""
    state.G.eval(), state.D.eval()
    try:
        return state.D(state.G(z, y) if z is not None else x, y).flatten()
    finally:
        state.G.train(), state.D.train()


class Diverged(RuntimeError):
    """A loss became NaN or infinite: `step` is the first G step where it was, `detected` the step the
    loop read it at (the next logged step at the latest)."""

    def __init__(self, step: int, what: str, detected: int | None = None):
        later = f" (detected at G step {detected})" if detected is not None and detected != step else ""
        super().__init__(f"{what} is not finite at G step {step}{later}")
        self.step = step
        self.detected = step if detected is None else detected


class DivergenceWatch:
    """Whether the losses have been finite so far, kept on the device: `observe` queues a few tiny
    kernels and never waits; `check` reads the result (one host synchronisation) and raises Diverged
    with the first G step at which a loss was not finite."""

    WHAT = ("", "D loss", "G loss")

    def __init__(self, device: torch.device):
        self.first_step = torch.zeros((), dtype=torch.long, device=device)  # 0: finite so far
        self.first_what = torch.zeros((), dtype=torch.long, device=device)  # index into WHAT

    def observe(self, step: int, loss: torch.Tensor, what: str) -> None:
        new = torch.logical_and(self.first_step == 0, torch.logical_not(torch.isfinite(loss)))
        self.first_what = torch.where(new, self.WHAT.index(what), self.first_what)
        self.first_step = torch.where(new, step, self.first_step)

    def check(self, detected: int, cause: BaseException | None = None) -> None:
        step, what = (int(v) for v in torch.stack([self.first_step, self.first_what]).tolist())
        if step:
            raise Diverged(step, self.WHAT[what], detected) from cause


class Batcher:
    """Epoch-wise shuffled minibatches from an in-memory uint8 image set, as floats in [-1, 1]."""

    def __init__(self, data: ImageData, device: torch.device, generator: torch.Generator):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.generator = generator
        self.perm = torch.randperm(len(data), generator=generator)
        self.on_device = self.perm.to(device)  # copied once per epoch, not once per batch (a host sync on CUDA)
        self.pos = 0

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + n > len(self.perm):
            self.perm = torch.randperm(len(self.perm), generator=self.generator)
            self.on_device = self.perm.to(self.images.device)
            self.pos = 0
        idx = self.on_device[self.pos : self.pos + n]
        self.pos += n
        return self.images[idx].float().div_(127.5).sub_(1.0), self.labels[idx]

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])
        self.on_device = self.perm.to(self.images.device)
        self.generator.set_state(state["rng"])


class Interrupted(RuntimeError):
    """Training stopped on request (SIGTERM / Ctrl-C) after saving a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at G step {step}")
        self.step = step


@dataclass
class GANState:
    """Everything that evolves during training of one G/D pair."""

    G: nn.Module
    D: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    g_masks: MaskState | None = None
    d_masks: MaskState | None = None
    ema: SparseEMA | None = None
    step: int = 0
    flops: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # wall time of each G step of this phase (checkpointed)
    balance_ratio: float = math.nan  # measured at this G step (see Hooks.balance_ratio_every), else NaN
    curve: list[tuple[int, float]] = field(default_factory=list)  # (G step, FID) of this phase's evaluation curve
    # (G step, values) of every statistic this phase logged, kept in its checkpoints: a resumed run stores
    # them again (rows a killed process had not stored yet are not lost) and rebuilds its balance ratios
    logged: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.G


class Hooks:
    """Extension points of the loop for methods (subclass and override)."""

    # Measure the balance ratio every this many G steps (0: only at logged steps) and leave it in
    # `state.balance_ratio` for `after_g_step`; the measurement changes no training state.
    balance_ratio_every: int = 0
    # "train": at those steps, measure as ADAPT's reference does (`gan_functions.train`): D(G_pre(z)) is the
    # G step's own D output, D(G_post(z)) and D(x) are two more forwards with G and D in train mode (no
    # gradients), which advance D's spectral-norm vectors and G's BN running statistics as there; training
    # then differs from a run without the measurement. Logged steps off that schedule measure in eval mode.
    balance_ratio_mode: str = "eval"

    def after_d_backward(self, state: GANState, step: int) -> None:
        """D's dense gradients of this D step are in `.grad` (before masking); called n_critic times per G step."""

    def after_g_backward(self, state: GANState, step: int) -> None:
        """G's dense gradients of this minibatch are in `.grad` (before masking)."""

    def after_g_step(self, state: GANState, step: int) -> bool:
        """After G's optimizer step and the (S)EMA update. Return True if any mask changed."""
        return False

    def dense_weight_grads(self, step: int) -> str:
        """The networks ("g", "d", "gd"; "" none) whose weight gradients G step `step` computes densely because
        a score reads them (gradient regrowth): their extra cost is added to the step's training FLOPs, as
        `Phase.g_dense_grad_steps` / `d_dense_grad_steps` declare it for `sparsebench flops`."""
        return ""

    def stats(self, state: GANState, step: int) -> dict[str, float]:
        """Extra statistics to log at this step."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint must keep of the hooks (counters, random generators)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def on_topology_change(state: GANState) -> None:
    """Under data parallelism, rank 0's masks are authoritative after a topology update."""
    from sparsebench.distributed import broadcast_masks

    broadcast_masks(state.g_masks)
    broadcast_masks(state.d_masks)


def adam(params, lr: float, beta1: float, beta2: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam without weight decay (masking after every step keeps pruned weights at zero regardless)."""
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps)


def lr_factor(step: int, steps: int, decay_start: float) -> float:
    """The learning-rate multiplier of G step `step` (1-based) of a phase of `steps`: 1 until the
    fraction `decay_start` of the phase, then linear to 0 at its last step."""
    start = decay_start * steps
    if decay_start >= 1.0 or step <= start:
        return 1.0
    return max(0.0, (steps - step + 1) / (steps - start + 1))


def train(
    state: GANState,
    steps: int,
    spec,
    batcher: Batcher,
    num_classes: int,
    generator: torch.Generator,
    step_cost: Callable[[], float],
    hooks: Hooks | None = None,
    log: Callable[[int, dict], None] | None = None,
    progress: Callable[[int], None] | None = None,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 0,
    stop_requested: Callable[[], bool] | None = None,
    sync_grads: Callable[[nn.Module], None] | None = None,
    evaluate: Callable[[int], None] | None = None,
    speed: Speed | None = None,
    extra_cost: Callable[[str], float] | None = None,
) -> None:
    """Train until `state.step` reaches `steps` G steps (continuing a resumed state).

    `evaluate(t)` is called after every G step t, outside its measured time (the evaluation curve:
    it decides itself whether t is due, and must not change the training state).

    `extra_cost(nets)` is the extra FLOPs of a step whose backward computes the weight gradients of `nets`
    densely (`hooks.dense_weight_grads`), at the densities before any topology update of that step.

    `checkpoint()` is called every `checkpoint_every` G steps, and before raising Interrupted
    when `stop_requested()` turns true (checked between G steps, so a checkpoint is consistent).

    The losses stay on the device: they are read, and checked for divergence, at the logged steps
    (every `spec.log_every`, and the first), before a checkpoint or a curve evaluation, and at the end;
    nothing else in the loop waits for the device, except what a hook asks for (its balance-ratio
    probe, its topology updates). A run whose loss turned non-finite raises Diverged with the first
    such step at the next of those points (at most `spec.log_every` G steps later).

    `speed` holds the opt-in speed modes (sparsebench.train.speed); None: fp32, eager, contiguous.
    `spec.d_joint_forward` runs D once per D step over the fake and real images concatenated (fake
    first), as BigGAN's reference does; otherwise D sees the real and the fake images in two forwards.
    """
    hooks = hooks or Hooks()
    speed = speed or Speed()
    G, D = speed.prepare(state.G), speed.prepare(state.D)
    G_fwd, D_fwd = speed.forward(G), speed.forward(D)  # what training calls; state.G / state.D stay the modules
    device = next(G.parameters()).device
    cost = step_cost()
    d_params = [p for p in D.parameters()]
    accumulate = spec.accumulate
    joint = getattr(spec, "d_joint_forward", False)
    timer = StepTimer(device)
    watch = DivergenceWatch(device)

    def noise(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, spec.z_dim, generator=generator, device=generator.device).to(device)
        y = torch.randint(max(num_classes, 1), (n,), generator=generator, device=generator.device).to(device)
        return z, y

    def check(t: int) -> None:
        """Raise Diverged if a loss was non-finite at any step so far (one host synchronisation)."""
        timer.flush(state.step_seconds)
        watch.check(t)

    G.train()
    D.train()
    base_lr = [
        [g["initial_lr"] if "initial_lr" in g else g["lr"] for g in o.param_groups] for o in (state.d_opt, state.g_opt)
    ]
    for o, lrs in zip((state.d_opt, state.g_opt), base_lr):
        for g, lr in zip(o.param_groups, lrs):
            g["initial_lr"] = lr  # the schedule's base, kept in the optimizers' state dicts across resumes
    while state.step < steps:
        t = state.step + 1
        timer.start()
        try:
            if spec.lr_decay_start < 1.0:
                factor = lr_factor(t, steps, spec.lr_decay_start)
                for o in (state.d_opt, state.g_opt):
                    for g in o.param_groups:
                        g["lr"] = g["initial_lr"] * factor
            d_losses = torch.zeros((), device=device)  # their sum: non-finite if any of them is
            for _ in range(spec.n_critic):
                state.d_opt.zero_grad(set_to_none=True)
                d_loss = torch.zeros((), device=device)
                for _ in range(accumulate):
                    x, y = batcher(spec.batch_size)
                    x = speed.images(x)
                    z, yf = noise(spec.batch_size)
                    with torch.no_grad(), speed.autocast(device):
                        fake = G_fwd(z, yf)
                    with speed.autocast(device):
                        if joint:  # one forward: spectral norm's power iteration runs once per D step
                            out = D_fwd(torch.cat([fake, x], 0), torch.cat([yf, y], 0)).float()
                            on_fake, on_real = torch.split(out, [fake.shape[0], x.shape[0]])
                        elif speed.compile:  # each forward's backward before the next forward: a compiled
                            # graph keeps spectral norm's vectors, which the next forward updates in place
                            loss = F.relu(1.0 - D_fwd(x, y).float()).mean() / accumulate
                            loss.backward()
                            d_loss += loss.detach()
                            on_fake = D_fwd(fake, yf).float()
                        else:
                            on_real, on_fake = D_fwd(x, y).float(), D_fwd(fake, yf).float()
                        if joint or not speed.compile:
                            loss = d_hinge_loss(on_real, on_fake) / accumulate
                        else:
                            loss = F.relu(1.0 + on_fake).mean() / accumulate
                    loss.backward()
                    d_loss += loss.detach()
                if sync_grads is not None:
                    sync_grads(D)
                hooks.after_d_backward(state, t)
                if state.d_masks is not None:
                    state.d_masks.before_step()
                state.d_opt.step()
                if state.d_masks is not None:
                    state.d_masks.apply()
                d_losses += d_loss
            watch.observe(t, d_losses, "D loss")

            for p in d_params:
                p.requires_grad_(False)
            state.g_opt.zero_grad(set_to_none=True)
            g_loss = torch.zeros((), device=device)
            for _ in range(accumulate):
                z, yf = noise(spec.g_batch_size)
                with speed.autocast(device):
                    d_gen = D_fwd(G_fwd(z, yf), yf).float()
                    loss = g_hinge_loss(d_gen) / accumulate
                loss.backward()
                g_loss += loss.detach()
                d_gen = d_gen.detach()  # D(G_pre(z)): ADAPT's train-mode balance ratio reads it
            for p in d_params:
                p.requires_grad_(True)
            watch.observe(t, g_loss, "G loss")
            if sync_grads is not None:
                sync_grads(G)
            hooks.after_g_backward(state, t)
            logged = log is not None and (t % spec.log_every == 0 or t == 1)
            every = hooks.balance_ratio_every
            scheduled = bool(every and t % every == 0)
            in_train_mode = scheduled and hooks.balance_ratio_mode == "train"
            # a method that measures in train mode logs those samples only, never a mix of the two modes
            probe = scheduled if hooks.balance_ratio_mode == "train" else logged or scheduled
            if probe and not in_train_mode:  # the balance ratio: D after its update, G_pre and G_post on the z
                # G just trained on, real images of D's last batch
                d_real, d_pre = _d_of(state, x, y), _d_of(state, x, yf, z)
            if state.g_masks is not None:
                state.g_masks.before_step()
            state.g_opt.step()
            if state.g_masks is not None:
                state.g_masks.apply()
            if in_train_mode:
                d_post, d_real = _d_in_train_mode(state, x, y, yf, z)
                state.balance_ratio = balance_ratio(d_real, d_gen.flatten(), d_post)
            else:
                state.balance_ratio = balance_ratio(d_real, d_pre, _d_of(state, x, yf, z)) if probe else math.nan
            if state.ema is not None:
                state.ema.update(t)
            state.step = t
            state.flops += cost  # this step ran at the densities before any update below
            dense_grads = hooks.dense_weight_grads(t)
            if dense_grads and extra_cost is not None:
                state.flops += extra_cost(dense_grads)
            if hooks.after_g_step(state, t):
                if sync_grads is not None:
                    on_topology_change(state)
                cost = step_cost()  # the next steps run at the new densities
        except (Diverged, Interrupted):
            raise
        except Exception as exc:  # a step that fails on non-finite values (e.g. in a hook) is the divergence
            watch.check(t, cause=exc)
            raise
        timer.stop()  # D steps, G step and topology update
        if evaluate is not None:
            if spec.eval_every and t % spec.eval_every == 0:  # a curve point is never taken of a diverged run
                check(t)
            evaluate(t)

        due = checkpoint is not None and checkpoint_every and t % checkpoint_every == 0 and t < steps
        if t % spec.log_every == 0 or t == 1 or t == steps or due:  # never log or save a diverged state
            check(t)
        if logged and log is not None:
            ratio = {"balance_ratio": state.balance_ratio} if math.isfinite(state.balance_ratio) else {}
            log(t, {"loss_d": float(d_loss), "loss_g": float(g_loss), **ratio, **hooks.stats(state, t)})
        if progress is not None:
            progress(1)
        if due:
            assert checkpoint is not None
            checkpoint()
        if stop_requested is not None and stop_requested():
            check(t)
            if checkpoint is not None:
                checkpoint()
            raise Interrupted(t)
    timer.flush(state.step_seconds)

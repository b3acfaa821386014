"""The GAN training loop: hinge loss, n_critic D steps per G step, Adam, masks, (S)EMA.

Order inside one G step t (paper Algorithm 1):
    n_critic x [accumulate x D forward/backward -> callbacks.after_d_backward (dense gradients visible),
                masks.before_step, Adam, mask D weights]
    accumulate x G forward/backward -> callbacks.after_g_backward (dense gradients visible)
    callbacks.before_g_update, masks.before_step, Adam, mask G weights, callbacks.after_g_update
    (S)EMA update, callbacks.after_g_step (topology updates happen here, counted in G steps)

`masks.before_step` masks the gradients unless the optimizer-state policy keeps them dense
(sparsebench.sparse.opt_state). Gradient accumulation is BigGAN-PyTorch's: each of the
`accumulate` minibatch losses is divided by `accumulate` before its backward, so one optimizer
step sees the gradient of the mean loss over all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.data import ImageData
from sparsebench.interfaces import CallbackList as CallbackList  # re-exported: where the loop's callers look
from sparsebench.interfaces import Callbacks, GANState, GStep
from sparsebench.speed import Speed
from sparsebench.timing import StepTimer

Hooks = Callbacks  # the deprecated name of `Callbacks`, kept for one minor version


def d_hinge_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """D's hinge loss on its outputs for real and generated images."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def g_hinge_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """G's hinge loss on D's outputs for generated images."""
    return -d_fake.mean()


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
    with the first G step at which a loss was not finite. With `agree` (data parallelism), every rank
    takes the earliest step any rank saw first: each rank's losses are of its own share of the batch, and a
    rank that stopped alone would leave the others waiting in their next collective."""

    WHAT = ("", "D loss", "G loss")

    def __init__(self, device: torch.device):
        self.first_step = torch.zeros((), dtype=torch.long, device=device)  # 0: finite so far
        self.first_what = torch.zeros((), dtype=torch.long, device=device)  # index into WHAT

    def observe(self, step: int, loss: torch.Tensor, what: str) -> None:
        new = torch.logical_and(self.first_step == 0, torch.logical_not(torch.isfinite(loss)))
        self.first_what = torch.where(new, self.WHAT.index(what), self.first_what)
        self.first_step = torch.where(new, step, self.first_step)

    def check(
        self,
        detected: int,
        cause: BaseException | None = None,
        agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`agree`: the least of a tensor over the run's processes (`LoopIO.earliest`), which all call it here."""
        if agree is not None:
            never = torch.iinfo(torch.long).max
            code = torch.where(self.first_step > 0, self.first_step * len(self.WHAT) + self.first_what, never)
            code = agree(code)
            self.first_step = torch.where(code < never, code // len(self.WHAT), 0)
            self.first_what = torch.where(code < never, code % len(self.WHAT), 0)
        step, what = (int(v) for v in torch.stack([self.first_step, self.first_what]).tolist())
        if step:
            raise Diverged(step, self.WHAT[what], detected) from cause


class Batcher:
    """Epoch-wise shuffled minibatches from an in-memory uint8 image set, as floats in [-1, 1] on `device`.

    The set stays in host memory: a training split can be tens of GB (the ImageNet preset's is ~60 GB of
    uint8), and under torchrun every rank would hold a copy of it on its GPU. Each minibatch is gathered on
    the host, into pinned (page-locked) memory when the device is CUDA, and copied to the device with
    `non_blocking`: the copy is queued behind the device's work instead of waiting for it (PyTorch's caching
    host allocator keeps a pinned block until the copy out of it has run). Only the minibatch is pinned, not
    the split: page-locking tens of GB per rank would starve the host. The order comes from `generator` on the
    host, so a run draws the same images in the same order on any device, and the state dict (order,
    position, generator) resumes bit for bit."""

    def __init__(self, data: ImageData, device: torch.device, generator: torch.Generator):
        self.images, self.labels = data.images, data.labels
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self.generator = generator
        self.perm = torch.randperm(len(data), generator=generator)  # on the host, as the images
        self.pos = 0

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + n > len(self.perm):
            self.perm = torch.randperm(len(self.perm), generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + n]
        self.pos += n
        x = self._gather(self.images, idx).to(self.device, non_blocking=True)
        y = self._gather(self.labels, idx).to(self.device, non_blocking=True)
        return x.float().div_(127.5).sub_(1.0), y

    def _gather(self, source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """`source[idx]` on the host; in pinned memory for a CUDA device (a copy from pageable memory waits)."""
        if not self.pinned:
            return source[idx]
        out = torch.empty((len(idx), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
        return torch.index_select(source, 0, idx, out=out)

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])
        self.generator.set_state(state["rng"])


class Interrupted(RuntimeError):
    """Training stopped on request (SIGTERM / Ctrl-C) after saving a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at G step {step}")
        self.step = step


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


class LoopIO:
    """What the loop reports to and asks of whoever runs it (the core's `RunContext`), in one object; the
    defaults do nothing, so a bare `train(...)` trains without costs, logs or checkpoints.

    `logs`, `checkpoints`, `evaluates` and `synchronises` say whether the run has each at all (the loop reads
    losses, and judges divergence, at the steps they need)."""

    logs = False
    checkpoints = False
    evaluates = False
    synchronises = False
    checkpoint_every = 0  # G steps between checkpoints (0: only at the end and on stop)

    def step_cost(self, state: GANState) -> float:
        """FLOPs of one G step at the current densities."""
        return 0.0

    def extra_cost(self, state: GANState, nets: str) -> float:
        """The extra FLOPs of a step computing the weight gradients of `nets` densely, at the current densities."""
        return 0.0

    def log(self, step: int, values: dict[str, float]) -> None:
        """Statistics of a logged step."""

    def progress(self, steps: int) -> None:
        """`steps` more G steps done."""

    def checkpoint(self) -> None:
        """Save the phase (consistent between G steps)."""

    def stop_requested(self) -> bool:
        """Whether to checkpoint and stop now (SIGTERM, Ctrl-C); this process's own answer (see `agree`)."""
        return False

    def agree(self, flag: bool) -> bool:
        """Whether any process of the run raised `flag` (data parallelism; `flag` itself in one process): the
        loop acts on a stop request or a topology change on every rank at the same step, as the collectives
        that follow (checkpoint, mask broadcasts, the next gradient average) need every rank."""
        return flag

    def earliest(self, value: torch.Tensor) -> torch.Tensor:
        """The least of `value`, a tensor on the device, over the processes of the run (`value` in one process)."""
        return value

    def sync_grads(self, model: nn.Module) -> None:
        """Average `model`'s gradients over the processes of the run (data parallelism)."""

    def topology_changed(self, state: GANState) -> None:
        """The masks changed in an update: make every process's equal (data parallelism)."""

    def evaluate(self, step: int) -> None:
        """A point of the evaluation curve, when `step` is due (reads the weights only, outside the timing)."""


def train(
    state: GANState,
    steps: int,
    spec,
    batcher: Batcher,
    num_classes: int,
    generator: torch.Generator,
    callbacks: Callbacks | None = None,
    io: LoopIO | None = None,
    speed: Speed | None = None,
) -> None:
    """Train until `state.step` reaches `steps` G steps (continuing a resumed state).

    `callbacks` are the method's (`Callbacks`), `io` the run's (`LoopIO`): costs, logs, progress, checkpoints,
    stop requests, gradient synchronisation and the evaluation curve. `io.evaluate(t)` is called after every
    G step t, outside its measured time (it decides itself whether t is due, and must not change the training
    state). `io.extra_cost(state, nets)` is counted for steps whose backward computes the weight gradients of
    `nets` densely (`callbacks.dense_weight_grads`), at the densities before any topology update of that step.
    `io.checkpoint()` runs every `io.checkpoint_every` G steps, and before raising Interrupted when
    `io.stop_requested()` turns true (checked between G steps, so a checkpoint is consistent).

    Under data parallelism (`io.synchronises`) every decision that leads into a collective is agreed over the
    processes first (`io.agree`, `io.earliest`): a stop request, a topology change, a divergence. A callback
    that raises on one process alone still leaves the others waiting (until the process group's timeout).

    The losses stay on the device: they are read, and checked for divergence, at the logged steps
    (every `spec.log_every`, and the first), before a checkpoint or a curve evaluation, and at the end;
    nothing else in the loop waits for the device, except what a callback asks for (a balance-ratio
    probe, topology updates). A run whose loss turned non-finite raises Diverged with the first
    such step at the next of those points (at most `spec.log_every` G steps later).

    `speed` holds the opt-in speed modes (sparsebench.speed); None: fp32, eager, contiguous.
    `spec.d_joint_forward` runs D once per D step over the fake and real images concatenated (fake
    first), as BigGAN's reference does; otherwise D sees the real and the fake images in two forwards.
    """
    callbacks = callbacks or Callbacks()
    io = io or LoopIO()
    speed = speed or Speed()
    G, D = speed.prepare(state.G), speed.prepare(state.D)
    G_fwd, D_fwd = speed.forwards(G, D)  # what training calls; state.G / state.D stay the modules
    device = next(G.parameters()).device
    cost = io.step_cost(state)
    d_params = [p for p in D.parameters()]
    accumulate = spec.accumulate
    joint = getattr(spec, "d_joint_forward", False)
    timer = StepTimer(device)
    watch = DivergenceWatch(device)

    def noise(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, spec.z_dim, generator=generator, device=generator.device).to(device)
        y = torch.randint(max(num_classes, 1), (n,), generator=generator, device=generator.device).to(device)
        return z, y

    def measure(x: torch.Tensor | None, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """D's outputs as the G step computed `d_gen` (`GStep.measure`): the same forwards, the same precision."""
        with torch.no_grad(), speed.autocast(device):
            return D_fwd(G_fwd(z, y) if z is not None else x, y).float()

    def check(t: int) -> None:
        """Raise Diverged if a loss was non-finite at any step so far, on any rank (one host synchronisation);
        every rank checks at the same steps."""
        timer.flush(state.step_seconds)
        watch.check(t, agree=io.earliest if io.synchronises else None)

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
                if io.synchronises:
                    io.sync_grads(D)
                callbacks.after_d_backward(state, t)
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
                d_gen = d_gen.detach()  # D(G_pre(z)): a train-mode balance-ratio probe reads it
            for p in d_params:
                p.requires_grad_(True)
            watch.observe(t, g_loss, "G loss")
            if io.synchronises:
                io.sync_grads(G)
            callbacks.after_g_backward(state, t)
            logged = io.logs and (t % spec.log_every == 0 or t == 1)
            batch = GStep(x, y, z, yf, d_gen, logged, measure)
            state.balance_ratio = math.nan
            callbacks.before_g_update(state, t, batch)
            if state.g_masks is not None:
                state.g_masks.before_step()
            state.g_opt.step()
            if state.g_masks is not None:
                state.g_masks.apply()
            callbacks.after_g_update(state, t, batch)
            if state.ema is not None:
                state.ema.update(t)
            state.step = t
            state.flops += cost  # this step ran at the densities before any update below
            dense_grads = callbacks.dense_weight_grads(t)
            if dense_grads:
                state.flops += io.extra_cost(state, dense_grads)
            changed = callbacks.after_g_step(state, t)
            if io.synchronises:  # a rank that changed alone would broadcast to ranks that never listen
                changed = io.agree(changed)
            if changed:
                if io.synchronises:
                    io.topology_changed(state)
                cost = io.step_cost(state)  # the next steps run at the new densities
        except (Diverged, Interrupted):
            raise
        except Exception as exc:  # a step that fails on non-finite values (e.g. in a callback) is the divergence
            watch.check(t, cause=exc)
            raise
        timer.stop()  # D steps, G step and topology update
        if io.evaluates:
            if spec.eval_every and t % spec.eval_every == 0:  # a curve point is never taken of a diverged run
                check(t)
            io.evaluate(t)

        due = io.checkpoints and io.checkpoint_every and t % io.checkpoint_every == 0 and t < steps
        if t % spec.log_every == 0 or t == 1 or t == steps or due:  # never log or save a diverged state
            check(t)
        if logged:
            io.log(t, {"loss_d": float(d_loss), "loss_g": float(g_loss), **callbacks.stats(state, t)})
        io.progress(1)
        if due:
            io.checkpoint()
        stop = io.stop_requested()
        if io.synchronises:  # SIGTERM reaches the ranks at different steps: all stop at the first one's
            stop = io.agree(stop)
        if stop:
            check(t)
            if io.checkpoints:
                io.checkpoint()
            raise Interrupted(t)
    timer.flush(state.step_seconds)

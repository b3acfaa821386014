"""Overhead of sparsebench's masked training loop over a plain dense PyTorch loop.

Trains the quick-preset model (BigGAN by default) for N G steps two ways, interleaved in blocks
so that both see the same machine state:
  (a) a plain dense PyTorch GAN loop: hinge loss, Adam, EMA of G via torch._foreach_lerp_;
  (b) sparsebench's loop with STU-GAN's masks on G and D, exploration hooks and SEMA.
Then times one STU-GAN topology update and amortizes it over dT = 500 G steps of (b).

Run:  python benchmarks/overhead.py [--arch biggan] [--steps 200] [--threads 2] [--smoke]
(`--smoke`: 10 G steps in blocks of 5 and 2 timed updates, seconds; it tests the script, its figures mean nothing)
Ends with exactly two lines:
  masked/dense step time ratio: X.XXX
  topology update amortized at dT=500: X.XX %
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def plain_step(G, D, g_opt, d_opt, ema_dst, ema_src, spec, data, labels, gen):
    for _ in range(spec.n_critic):
        idx = torch.randint(len(data), (spec.batch_size,), generator=gen)
        x, y = data[idx].float().div_(127.5).sub_(1.0), labels[idx]
        z = torch.randn(spec.batch_size, spec.z_dim, generator=gen)
        yf = torch.randint(10, (spec.batch_size,), generator=gen)
        with torch.no_grad():
            fake = G(z, yf)
        loss = F.relu(1 - D(x, y)).mean() + F.relu(1 + D(fake, yf)).mean()
        d_opt.zero_grad(set_to_none=True)
        loss.backward()
        d_opt.step()
    for p in D.parameters():
        p.requires_grad_(False)
    z = torch.randn(spec.g_batch_size, spec.z_dim, generator=gen)
    yf = torch.randint(10, (spec.g_batch_size,), generator=gen)
    g_loss = -D(G(z, yf), yf).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    for p in D.parameters():
        p.requires_grad_(True)
    g_opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema_dst, ema_src, 1 - spec.ema_decay)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="biggan")
    ap.add_argument("--steps", type=int, default=200, help="G steps per loop")
    ap.add_argument("--block", type=int, default=10, help="G steps per interleaved block")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sg", type=float, default=0.9)
    ap.add_argument("--sd", type=float, default=0.5)
    ap.add_argument("--smoke", action="store_true", help="a few steps only (tests the script)")
    args = ap.parse_args()
    updates = 5
    if args.smoke:
        args.steps, args.block, updates = 10, 5, 2
    torch.set_num_threads(args.threads)

    from sparsebench.balance import probed
    from sparsebench.interfaces import GANState
    from sparsebench.plugins import get_plugins
    from sparsebench.sparse import CosineSchedule, MaskState, SparseEMA
    from sparsebench.train.loop import Batcher, adam, train
    from sparsebench_builtins.methods.stugan import Exploration

    plugins = get_plugins()
    arch = plugins.archs.get(args.arch)
    spec = arch.presets["quick"].replace(log_every=10**9)
    data = plugins.datasets.get(spec.dataset).load(spec.resolution)

    def models():
        torch.manual_seed(0)
        return arch.build(spec, 10)

    # (a) plain dense
    Ga, Da = models()
    ga, da = (
        adam(Ga.parameters(), spec.lr_g, spec.beta1, spec.beta2),
        adam(Da.parameters(), spec.lr_d, spec.beta1, spec.beta2),
    )
    ema_a = [p.detach().clone() for p in Ga.parameters()]
    src_a = [p.detach() for p in Ga.parameters()]
    gen_a = torch.Generator().manual_seed(0)

    # (b) sparsebench masked loop, STU-GAN exploration + SEMA
    Gb, Db = models()
    gm = MaskState.from_distribution(Gb, args.sg, "erk", "conv", torch.Generator().manual_seed(1))
    dm = MaskState.from_distribution(Db, args.sd, "erk", "conv", torch.Generator().manual_seed(2))
    total = 2 * args.steps
    state = GANState(
        Gb,
        Db,
        adam(Gb.parameters(), spec.lr_g, spec.beta1, spec.beta2),
        adam(Db.parameters(), spec.lr_d, spec.beta1, spec.beta2),
        gm,
        dm,
        SparseEMA(Gb, spec.ema_decay, 0, gm),
    )
    hooks = Exploration("g", 500, CosineSchedule(0.5, 0.005, total), torch.Generator().manual_seed(5))
    batcher = Batcher(data.train, torch.device("cpu"), torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(1)

    # warm up both
    for _ in range(3):
        plain_step(Ga, Da, ga, da, ema_a, src_a, spec, data.train.images, data.train.labels, gen_a)
    train(state, 3, spec, batcher, 10, noise, probed(hooks))

    times_a, times_b = [], []
    for _ in range(args.steps // args.block):
        t0 = time.perf_counter()
        for _ in range(args.block):
            plain_step(Ga, Da, ga, da, ema_a, src_a, spec, data.train.images, data.train.labels, gen_a)
        times_a.append((time.perf_counter() - t0) / args.block)
        t0 = time.perf_counter()
        train(state, state.step + args.block, spec, batcher, 10, noise, probed(hooks))
        times_b.append((time.perf_counter() - t0) / args.block)

    # one topology update (gradient capture + prune/regrow + optimizer-state reset + SEMA notice), due at
    # step 500 under a schedule that has not ended (the training schedule above ends at step `total`)
    hooks.schedule = CosineSchedule(0.5, 0.005, 10**9)
    upd = []
    for _ in range(updates):
        z = torch.randn(spec.g_batch_size, spec.z_dim)
        y = torch.randint(10, (spec.g_batch_size,))
        state.g_opt.zero_grad()
        (-Db(Gb(z, y), y).mean()).backward()
        t0 = time.perf_counter()
        hooks.after_g_backward(state, 500)
        if not hooks.after_g_step(state, 500):
            raise SystemExit("the timed topology update did not run")
        upd.append(time.perf_counter() - t0)

    a, b = statistics.median(times_a), statistics.median(times_b)
    print(
        f"arch {args.arch}, quick preset, sG={args.sg} sD={args.sd}, {args.threads} threads, "
        f"{len(times_a)} interleaved blocks of {args.block} G steps (n_critic={spec.n_critic})"
    )
    print(f"plain dense step: {a * 1e3:.2f} ms   masked STU-GAN step: {b * 1e3:.2f} ms (medians over blocks)")
    print(f"one topology update: {statistics.median(upd) * 1e3:.2f} ms")
    print(f"masked/dense step time ratio: {b / a:.3f}")
    print(f"topology update amortized at dT=500: {100 * statistics.median(upd) / (500 * b):.2f} %")


if __name__ == "__main__":
    main()

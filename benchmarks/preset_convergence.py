"""Is a preset converged and repeatable? Dense FID over seeds at the preset's steps and at a multiple of them.

    python benchmarks/preset_convergence.py --arch biggan --preset small --jobs 2

trains the dense GAN for each seed at the preset's G steps and at `--factor` times as many, into
one results store (cells already done there are reused), and prints per length the FIDs of every
seed, their mean and std, then the preset criteria of the report's protocol:

- converged: the mean FID at the preset's steps lies within 10 % of the mean at `factor` x steps;
- repeatable: the seed-to-seed std of the dense FID is at most 15 % of its mean;
- affordable: one dense run (median wall time over the seeds) fits in `--budget-min` minutes.

`--set NAME=VALUE` replaces a field of the preset's TrainSpec for a tuning probe (such runs get
their own run ids, since the spec is part of the config). Workers are separate processes, one
run each, with `--threads` torch threads. `--smoke` runs the same at a tiny size (BigGAN's quick
preset, 2 and 4 G steps, 200 samples per evaluation, 2 seeds) to test the script: its verdicts mean
nothing there, so they do not set the exit status.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name] = json.loads(value) if value not in ("", None) else value
    return out


def _patched_plugins(arch: str, preset: str, sets: dict):
    from sparsebench.plugins import get_plugins

    plugins = get_plugins()
    entry = plugins.archs.get(arch)
    if sets:
        entry.presets = {**entry.presets, preset: entry.presets[preset].replace(**sets)}
    return plugins


def _one(arch: str, preset: str, sets: dict, seed: int, steps: int, store: str, threads: int, device: str):
    import torch

    torch.set_num_threads(threads)
    _patched_plugins(arch, preset, sets)
    from sparsebench import run

    df = run("dense", arch, seeds=seed, preset=preset, steps=steps, store=store, device=device)
    row = df.iloc[-1]
    return (
        seed,
        steps,
        row["status"],
        float(row["fid"]) if row["status"] == "done" else float("nan"),
        float(row["wall_s"]),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", help="required unless --smoke")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, help="G steps (default: the preset's)")
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-min", type=float, default=6.0)
    ap.add_argument("--store", default="sparsebench-results/convergence.db")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--smoke", action="store_true", help="a tiny run of the same (tests the script)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.arch, args.preset, args.seeds, args.steps = args.arch or "biggan", "quick", "0,1", 2
        args.set = [*args.set, "eval_samples=200"]
    elif not args.arch:
        ap.error("--arch is required (biggan or sngan)")

    sets = _parse_sets(args.set)
    spec = _patched_plugins(args.arch, args.preset, sets).archs.get(args.arch).presets[args.preset]
    steps = args.steps or spec.steps
    lengths = [steps, int(round(steps * args.factor))]
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = [
        (args.arch, args.preset, sets, seed, n, args.store, args.threads, args.device)
        for n in reversed(lengths)
        for seed in seeds
    ]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        rows = list(pool.map(_one, *zip(*tasks)))

    print(f"{args.arch} preset {args.preset} {json.dumps(sets) if sets else ''}".rstrip())
    means = {}
    walls = []
    for n in lengths:
        got = [r for r in rows if r[1] == n]
        fids = [r[3] for r in got]
        mean, std = statistics.fmean(fids), statistics.stdev(fids) if len(fids) > 1 else float("nan")
        means[n] = (mean, std)
        if n == steps:
            walls = [r[4] for r in got]
        status = "" if all(r[2] == "done" for r in got) else "  (" + ", ".join(r[2] for r in got) + ")"
        print(
            f"  {n:>6} G steps: FID "
            + " / ".join(f"{f:.2f}" for f in fids)
            + f"  mean {mean:.2f} std {std:.2f}{status}"
        )
    (m1, s1), (m2, _) = means[lengths[0]], means[lengths[1]]
    gap = abs(m1 - m2) / m2
    wall = statistics.median(walls) / 60
    checks = [
        (f"converged: |mean({lengths[0]}) - mean({lengths[1]})| / mean({lengths[1]}) = {gap:.1%} <= 10%", gap <= 0.10),
        (f"repeatable: std / mean at {lengths[0]} steps = {s1 / m1:.1%} <= 15%", s1 / m1 <= 0.15),
        (f"affordable: median dense run {wall:.1f} min <= {args.budget_min:g} min", wall <= args.budget_min),
    ]
    for text, ok in checks:
        print(f"  {'met' if ok else 'NOT met'}: {text}")
    return 0 if args.smoke or all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

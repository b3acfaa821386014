"""Where does the seed-to-seed noise of a preset's FID come from, and which protocol has less of it?

    python benchmarks/noise.py --archs biggan,sngan --seeds 0,1,2,3,4 --jobs 2 \\
        --store reports/small/noise/results.db > reports/small/noise/output.txt

trains, per architecture, these arms at the `small` preset (each with an evaluation curve: the FID of
the evaluated weights every `--every` G steps over the last third of training, over the final
evaluation's samples), in this order:

- `dense x2`: the dense GAN at twice the preset's G steps, its curve from a third of training. Nothing
  in the dense GAN depends on the run's length (constant learning rates, EMA from a fixed step), so its
  first half *is* the preset's dense run: it gives the protocols at the preset's length and at twice it.
- `dense bf16`: the preset's run under bf16 autocast with channels-last memory (about twice as fast on a
  CPU with AMX-BF16, reports/small/small_speed.txt): does it keep the FIDs and their spread?
- `dense lr/2`: both learning rates halved, the preset's steps (the same images seen).
- `dense batch x2`: batches twice as large, half the G steps (the same images seen).
- `static`, `stugan`: s_G 0.95, s_D 0.5, the preset's steps.

and prints, per arm, the FID per seed under each candidate score of a run (the final evaluation as the
preset does now; the mean over the last K evaluations), the between-seed std (and relative to the mean),
the within-run std (step to step over the curve's window, averaged over seeds) and the cost of a run
relative to the preset's. Runs go into one results store (done cells are reused, so it resumes); the
arms' settings are TrainSpec fields, so each arm has its own run ids. `--smoke` trains a tiny version
of the same (a few steps, one seed) to test the script.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    steps_factor: float = 1.0  # G steps relative to the preset's
    sets: tuple = ()  # TrainSpec fields changed (besides steps and the curve)
    curve_from: float = 2 / 3  # the curve's start, as a fraction of the run's steps
    cost: float = 1.0  # a run's G-step compute relative to the preset's (images seen x steps)
    run: tuple = ()  # run settings (sparsebench.run keywords): opt-in speed modes


ARMS = (
    Arm("dense x2", "dense", 2.0, curve_from=1 / 3, cost=2.0),
    Arm("dense bf16", "dense", run=(("precision", "bf16"), ("channels_last", True))),
    Arm("dense lr/2", "dense", 1.0, sets=(("lr_g", 0.5), ("lr_d", 0.5))),
    Arm("dense batch x2", "dense", 0.5, sets=(("batch_size", 2), ("g_batch_size", 2))),
    Arm("static", "static"),
    Arm("stugan", "stugan"),
)
SG, SD = 0.95, 0.5


def arm_spec(base, arm: Arm, every: int):
    """The preset's TrainSpec changed as the arm says (factors multiply the preset's values)."""
    changes = {k: type(getattr(base, k))(getattr(base, k) * f) for k, f in arm.sets}
    steps = int(round(base.steps * arm.steps_factor))
    every = max(1, int(round(every * min(1.0, arm.steps_factor))))  # as many points over a shorter run
    # the study scores each run from its curve itself: the stored score is the final evaluation (score_last 1,
    # as when the study started), whatever the preset's own score is
    return base.replace(steps=steps, eval_every=every, eval_from=arm.curve_from, score_last=1, **changes)


_PRESETS: dict[tuple[str, str], object] = {}  # the installed presets, before any arm changed them in this process


def _one(arch: str, preset: str, arm: Arm, seed: int, every: int, store: str, smoke: bool) -> tuple:
    import torch

    torch.set_num_threads(1)
    from sparsebench.plugins import get_plugins

    entry = get_plugins().archs.get(arch)
    base = _PRESETS.setdefault((arch, preset), entry.presets[preset])  # a worker runs several arms in turn
    if smoke:
        base = base.replace(steps=12, eval_samples=200)
    spec = arm_spec(base, arm, every)
    entry.presets = {**entry.presets, preset: spec}
    from sparsebench import run
    from sparsebench.store import Store

    df = run(arm.method, arch, seeds=seed, preset=preset, sg=SG, sd=SD, store=store, progress=False, **dict(arm.run))
    row = df.iloc[-1]
    s = Store(store, readonly=True)
    curve = [(step, v) for step, key, v in s.stats(row["run_id"]) if key == "fid"]
    s.close()
    if row["status"] == "done" and (int(row["steps"]) != spec.steps or curve[-1][0] != spec.steps):
        raise RuntimeError(f"{arch} {arm.name} seed {seed}: trained {row['steps']} G steps, the arm has {spec.steps}")
    return arch, arm.name, seed, row["status"], curve, float(row["wall_s"])


def protocols(steps: int, arm: Arm) -> dict[str, tuple[int, int]]:
    """Candidate scores of a run: name -> (last step used, number of evaluations averaged)."""
    out = {"final": (steps, 1), "mean last 3": (steps, 3), "mean last 6": (steps, 6)}
    if arm.steps_factor == 2.0:  # the first half of a run twice as long is the preset's run
        half = steps // 2
        out = {
            "final": (half, 1),
            "mean last 3": (half, 3),
            "mean last 6": (half, 6),
            "x2 final": (steps, 1),
            "x2 mean last 6": (steps, 6),
            "x2 mean last 11": (steps, 11),
        }
    return out


def score(curve: list[tuple[int, float]], last: int, k: int) -> float:
    points = [v for s, v in curve if s <= last]
    return statistics.fmean(points[-k:]) if len(points) >= k else math.nan


def rel_std(values: list[float]) -> tuple[float, float, float]:
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return m, sd, sd / m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="biggan,sngan")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--every", type=int, default=100, help="G steps between evaluations of the curve")
    ap.add_argument("--arms", default=",".join(a.name for a in ARMS), help="which arms, comma-separated")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--store", default="sparsebench-results/noise.db")
    ap.add_argument("--smoke", action="store_true", help="a tiny run of every arm (tests the script)")
    args = ap.parse_args(argv)

    if args.smoke:  # the code paths of every kind of arm (twice as long, sparse), tiny: tests the script
        args.arms, args.archs = "dense x2,stugan", "sngan"
    names = args.arms.split(",")
    unknown = set(names) - {a.name for a in ARMS}
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(sorted(unknown))}; known: {', '.join(a.name for a in ARMS)}")
    arms = [a for a in ARMS if a.name in names]
    seeds = [0, 1] if args.smoke else [int(s) for s in args.seeds.split(",")]
    every = 2 if args.smoke else args.every
    archs = args.archs.split(",")
    # the arms in order, each over both archs and all seeds: what decides the protocol comes first
    tasks = [
        (arch, args.preset, arm, seed, every, args.store, args.smoke)
        for arm in arms
        for arch in archs
        for seed in seeds
    ]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        rows = list(pool.map(_one, *zip(*tasks)))

    from sparsebench.plugins import get_plugins

    print(f"Seed-to-seed noise at the `{args.preset}` preset: {len(seeds)} seeds, curve every {every} G steps")
    for arch in archs:
        base = get_plugins().archs.get(arch).presets[args.preset]
        print(
            f"\n{arch} ({base.steps} G steps, batch {base.batch_size}, lr {base.lr_g:g}, FID over {base.eval_samples})"
        )
        for arm in arms:
            got = [r for r in rows if r[0] == arch and r[1] == arm.name]
            bad = [f"seed {r[2]} {r[3]}" for r in got if r[3] != "done"]
            done = [r for r in got if r[3] == "done"]
            steps = int(round((12 if args.smoke else base.steps) * arm.steps_factor))
            walls = [r[5] for r in done]
            wall = f", {statistics.median(walls) / 60:.1f} min a run" if walls else ""
            print(f"  {arm.name} (cost {arm.cost:g}x{wall}){'  NOT DONE: ' + ', '.join(bad) if bad else ''}")
            if len(done) < 2:
                continue
            for name, (last, k) in protocols(steps, arm).items():
                values = [score(r[4], last, k) for r in done]
                if any(math.isnan(v) for v in values):
                    continue
                m, sd, rel = rel_std(values)
                per_seed = " / ".join(f"{v:.2f}" for v in values)
                print(f"    {name:<16} between-seed std {sd:6.2f} = {rel:6.1%} of mean {m:7.2f}   [{per_seed}]")
            lengths = [("preset's length", steps // 2)] if arm.steps_factor == 2.0 else []
            for label, last in lengths + [("this run", steps)]:
                within = []
                for r in done:  # the std of the curve over the last third of the length, per run
                    window = [v for s, v in r[4] if 2 * last / 3 <= s <= last]
                    if len(window) > 1:
                        within.append(statistics.stdev(window))
                if within:
                    print(
                        f"    within-run std over the last third ({label}): "
                        f"{statistics.fmean(within):.2f} (mean over seeds)"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

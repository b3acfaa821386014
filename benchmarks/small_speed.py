"""How long does a small-preset run take, before and after the speed options, measured side by side?

    python benchmarks/small_speed.py [--steps 150] [--repeats 2] [--after channels_last,compile]

trains, for each arch, the dense GAN at the `small` preset in this process with one thread (as the grid
runs it: two runs side by side on a 2-core CPU), once in the default mode ("before") and once with the
speed options named by `--after` (`channels_last`, `compile`, `precision=bf16`), interleaved `--repeats`
times so that both see the same load. Each run trains `--steps` G steps and then evaluates as the preset
does (its full evaluation: `eval_samples` samples); the time of a whole run is projected from it as

    measured wall time + (the preset's G steps - steps) x the run's median G step

and printed as `ARCH small preset run: X s before, Y s after (Z.ZZx)`, with the median G step and the rest
(start-up, evaluation) of each. Options that change floating-point results are part of a run's id, so
"after" runs are other cells than "before" runs: the benchmark says whether their FIDs agree, it does not
need them to. `--smoke` checks the script in seconds (a few steps, a small evaluation).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

OPTIONS = ("channels_last", "compile", "precision")


def parse_after(text: str) -> dict:
    out: dict = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in OPTIONS:
            raise SystemExit(f"unknown speed option {name!r}; known: {', '.join(OPTIONS)}")
        out[name] = value if name == "precision" else True
    return out


def one_run(arch: str, steps: int, store: Path, seed: int, speed: dict, eval_samples: int | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from sparsebench.plugins import get_plugins

    # a measured run is a few of the preset's steps: it trains without the preset's evaluation curve (the same
    # evaluations before and after; what differs is the G step), scored by its final evaluation
    entry = get_plugins().archs.get(arch)
    small = entry.presets["small"].replace(eval_every=0, score_last=1)
    entry.presets = {**entry.presets, "small": small.replace(eval_samples=eval_samples or small.eval_samples)}
    from sparsebench import run

    df = run("dense", arch, seeds=seed, preset="small", steps=steps, store=store, rerun=True, **speed)
    row = df.iloc[-1]
    if row["status"] != "done":
        raise SystemExit(f"{arch} run {row['run_id']} ended {row['status']}: {row.get('error')}")
    return {"wall": float(row["wall_s"]), "step": float(row["train_s_per_step"]), "fid": float(row["fid"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="biggan,sngan")
    ap.add_argument("--steps", type=int, default=150, help="G steps trained per measured run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--after", default="channels_last", help="speed options of the 'after' runs, comma-separated")
    ap.add_argument("--smoke", action="store_true", help="a few steps and a small evaluation (tests the script)")
    args = ap.parse_args(argv)
    after = parse_after(args.after)
    steps, repeats, eval_samples = (3, 1, 200) if args.smoke else (args.steps, args.repeats, None)

    from sparsebench.plugins import get_plugins

    label = ",".join(f"{k}={v}" if v is not True else k for k, v in after.items()) or "default"
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            full = get_plugins().archs.get(arch).presets["small"].steps
            got: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(repeats):
                for name, speed in (("before", {}), ("after", after)):
                    got[name].append(one_run(arch, steps, Path(tmp) / f"{arch}-{name}.db", r, speed, eval_samples))
            projected = {}
            for name, runs in got.items():
                walls = [x["wall"] + (full - steps) * x["step"] for x in runs]
                projected[name] = statistics.median(walls)
                step_ms = 1000 * statistics.median(x["step"] for x in runs)
                rest = statistics.median(x["wall"] - steps * x["step"] for x in runs)
                fids = " / ".join(f"{x['fid']:.2f}" for x in runs)
                print(f"  {arch} {name}: {step_ms:.1f} ms per G step, {rest:.1f} s start-up and evaluation, FID {fids}")
            x, y = projected["before"], projected["after"]
            print(
                f"{arch} small preset run: {x:.0f} s before, {y:.0f} s after ({x / y:.2f}x) "
                f"[after: {label}; projected from {steps} G steps of {full}, {repeats} repeats, 1 thread]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The checks of a lent GPU, in one prepared script: what a CPU cannot show of the GPU path.

Sections (all by default; `--sections` picks some), each writing one file under `--out` (reports/gpu):
  device      the GPU's name, PyTorch, CUDA, cuDNN and driver versions, and the numerics a run sets
              (TF32 off, cuDNN autotuning): device.txt
  throughput  benchmarks/gpu_throughput.py (full width, every mode; its arguments after `--`):
              throughput.txt
  resume      a short STU-GAN run of each arch at the paper preset's models on the bundled digits (no
              network needed), stopped by SIGTERM once its first checkpoint is written, then the same
              command again: it must say it resumed and end `done`; the stored row and the numerics its
              environment recorded: resume.txt
  compile     five compiled SNGAN runs of one `--jobs 1` grid in one process (quick-preset models: the
              recompile limit does not depend on width), each storing whether it really ran compiled,
              not fallen back to eager at Dynamo's recompile limit: compile.txt
  syncs       the training loop's host synchronisations (torch.cuda.set_sync_debug_mode) per G step,
              logged steps apart from the others, for static and STU-GAN masks: syncs.txt

Run on a GPU machine, from the repository root:
  python benchmarks/gpu_check.py --device cuda                   (everything: ~10 min on an H100)
  python benchmarks/gpu_check.py --device cuda --sections resume,compile,syncs
  python benchmarks/gpu_check.py --smoke                         (a CPU test of the script: quick models,
                                                                  Dynamo's eager backend; figures mean nothing)
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "benchmarks")]

from gpu_throughput import add_device_option, device_option  # noqa: E402

SECTIONS = ("device", "throughput", "resume", "compile", "syncs")
ARCHS = ("sngan", "biggan")
RESUME_STEPS = {"sngan": 600, "biggan": 400}  # paper-preset models: a minute or so each on an H100
RESUME_MODES = {"sngan": [], "biggan": ["--precision", "bf16", "--channels-last"]}  # fp32, and SN under autocast


def device_section(device: torch.device) -> tuple[str, bool]:
    from sparsebench.speed import cuda_numerics

    lines = [f"python {platform.python_version()}, torch {torch.__version__}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines += [
            f"device: {torch.cuda.get_device_name(device)}, {p.total_memory / 2**30:.1f} GiB, "
            f"{p.multi_processor_count} multiprocessors, capability {p.major}.{p.minor}",
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        ]
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            lines.append(f"driver, max SM clock: {smi.stdout.strip() or smi.stderr.strip()}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            lines.append(f"nvidia-smi: {exc}")
        lines.append(f"a run's numerics: {cuda_numerics(argparse.Namespace(deterministic=False))}")
    else:
        from sparsebench.resources import cpu_model

        lines.append(f"device: {cpu_model()} (no CUDA: the GPU figures of the other sections mean nothing)")
    return "\n".join(lines), True


def throughput_section(device: torch.device, smoke: bool, extra: list[str]) -> tuple[str, bool]:
    import gpu_throughput

    args = ["--device", device.type, *(["--smoke"] if smoke else []), *extra]
    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        gpu_throughput.main(args)
    finally:
        sys.stdout = stdout
    return f"python benchmarks/gpu_throughput.py {' '.join(args)}\n" + out.getvalue(), True


def sparsebench(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparsebench", *args]


def stored(store: Path) -> list[dict]:
    """The runs of `store` as the store reads them (results and environment parsed), oldest first."""
    from sparsebench.store import Store

    return Store(store, readonly=True).all_runs()


def resume_section(device: torch.device, smoke: bool, work: Path) -> tuple[str, bool]:
    """Each arch: a run stopped by SIGTERM after its first checkpoint, then resumed to `done`."""
    lines, failures = [], 0
    for arch in ARCHS:
        store = work / f"resume-{arch}" / "results.db"
        steps = 40 if smoke else RESUME_STEPS[arch]
        every = 10 if smoke else 100
        preset = ["--preset", "quick"] if smoke else ["--preset", "paper", "--dataset", "digits"]
        cmd = sparsebench(
            "run", "--methods", "stugan", "--arch", arch, *preset, "--steps", str(steps), "--sg", "0.9",
            "--device", device.type, "--checkpoint-every", str(every), "--no-progress", "--store", str(store),
            "-o", f"stugan.delta_t={every // 2}", *([] if smoke else RESUME_MODES[arch]),
        )  # fmt: skip
        started = time.perf_counter()
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        artifacts = store.parent / f"{store.stem}-artifacts"
        while first.poll() is None and not list(artifacts.glob("*/checkpoint-phase1.pt")):
            time.sleep(0.05)
        time.sleep(0.5)
        first.send_signal(signal.SIGTERM)
        _, err1 = first.communicate(timeout=600)
        stopped_s = time.perf_counter() - started
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        from sparsebench.store import results_table

        (run,) = stored(store)
        (row,) = results_table([run], ("topology_updates",))  # STU-GAN's declared column beside the core's
        env = run["env"]
        resumed = [line for line in second.stderr.splitlines() if "resuming run" in line]
        ok = first.returncode == 130 and bool(resumed) and second.returncode == 0 and row["status"] == "done"
        failures += not ok
        lines += [
            f"## {arch}: {' '.join(cmd[3:])}",
            f"first: exit {first.returncode} after {stopped_s:.0f} s; {(err1.strip().splitlines() or [''])[-1]}",
            f"again: exit {second.returncode}; {resumed[0].split('] ')[-1] if resumed else 'did not resume'}",
            "row: " + ", ".join(f"{k}={row.get(k, '')}" for k in ("status", "steps", "fid", "train_s_per_step",
                                                                   "topology_updates", "wall_s")),
            "env: " + json.dumps({k: v for k, v in env.items() if k not in ("packages", "pip")}, sort_keys=True),
            "verdict: " + ("resumed to done" if ok else "FAILED"),
            "",
        ]  # fmt: skip
    lines.append("all resumed to done" if not failures else f"{failures} arch(s) FAILED")
    return "\n".join(lines), not failures


def compile_section(device: torch.device, smoke: bool, work: Path) -> tuple[str, bool]:
    """Five compiled runs of one `--jobs 1` grid in this process (five fresh SNGANs, as a grid trains them), each
    storing whether its training really ran compiled (`compiled`: Dynamo compiled frames in it and never stopped
    at its recompile limit, after which it runs a forward eagerly)."""
    import functools

    import sparsebench
    from sparsebench.speed import CompiledCheck

    if smoke:  # Dynamo still traces, guards and counts recompiles; only code generation is left out
        torch.compile = functools.partial(torch.compile, backend="eager")  # type: ignore[assignment]
    store = work / "compile" / "results.db"
    sgs = [0.5, 0.6, 0.7, 0.8, 0.9]
    started = time.perf_counter()
    sparsebench.run(
        methods="static", arch="sngan", sg=sgs, preset="quick", steps=4 if smoke else 40, compile=True,
        metrics=["fid"], device=device.type, store=store, jobs=1,
    )  # fmt: skip
    rows = stored(store)
    compiled = [r["results"].get("compiled") is True and r["status"] == "done" for r in rows]
    frames, limit = CompiledCheck.counts()
    lines = [f"sg {r['sg']}: {r['status']}, {'compiled' if ok else 'EAGER'}" for r, ok in zip(rows, compiled)]
    lines.append(
        f"{len(rows)} runs in {time.perf_counter() - started:.0f} s; Dynamo compiled {frames} frames, "
        f"stopped {limit} times at its recompile limit"
    )
    ok = len(rows) == len(sgs) and all(compiled) and not limit
    lines.append("all five ran compiled" if ok else "FAILED: not all five ran compiled")
    if smoke:
        lines.append("(--smoke: Dynamo's eager backend, no code generated)")
    return "\n".join(lines), ok


def syncs_section(device: torch.device, smoke: bool) -> tuple[str, bool]:
    """The warnings `torch.cuda.set_sync_debug_mode("warn")` raises, counted per G step as the loop reports each
    step done (`LoopIO.progress`), the logged steps (where the loop reads its losses) apart from the others."""
    from gpu_throughput import training_setup

    from sparsebench.plugins import get_plugins
    from sparsebench.train.loop import LoopIO, train

    class Counted(LoopIO):
        logs = True

        def __init__(self, caught: list):
            self.caught, self.per_step = caught, []

        def progress(self, steps: int) -> None:
            self.per_step.append(len(self.caught) - sum(self.per_step))

    lines = []
    for arch_name in ARCHS:
        arch = get_plugins().archs.get(arch_name)
        spec = arch.presets["quick" if smoke else "paper"].replace(log_every=5 if smoke else 10)
        for method in ("static", "stugan"):  # STU-GAN's topology updates fall inside the counted steps
            state, callbacks, batcher, noise = training_setup(arch, spec, method, device, 10, 5 if smoke else 25)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                io = Counted(caught)
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    train(state, 12 if smoke else 60, spec, batcher, 10, noise, callbacks, io=io)
                finally:
                    if device.type == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
            logged = {t: n for t, n in enumerate(io.per_step, 1) if t % spec.log_every == 0 or t == 1}
            others = {t: n for t, n in enumerate(io.per_step, 1) if t not in logged}
            lines.append(
                f"{arch_name} {method}: {len(io.per_step)} G steps: {sum(logged.values())} syncs over {len(logged)} "
                f"logged steps, {sum(others.values())} over the {len(others)} others (steps with any: "
                f"{[t for t, n in others.items() if n][:12]})"
            )
    if device.type != "cuda":
        lines.append("(no CUDA: set_sync_debug_mode counts nothing on a CPU)")
    return "\n".join(lines), True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_option(ap)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument(
        "--out", default=None, help="folder of the section files (default: reports/gpu; a temporary one with --smoke)"
    )
    ap.add_argument("--work", default=None, help="folder of the resume section's stores (default: OUT/work)")
    ap.add_argument("--smoke", action="store_true", help="a CPU test of the script: quick models, tiny runs")
    args = ap.parse_args(argv)
    device = device_option(ap, args.device)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section {bad[0]!r}; allowed: {', '.join(SECTIONS)}")
    out = Path(args.out or (tempfile.mkdtemp(prefix="gpu-check-") if args.smoke else ROOT / "reports" / "gpu"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    run = {
        "device": lambda: device_section(device),
        "throughput": lambda: throughput_section(device, args.smoke, extra),
        "resume": lambda: resume_section(device, args.smoke, work),
        "compile": lambda: compile_section(device, args.smoke, work),
        "syncs": lambda: syncs_section(device, args.smoke),
    }
    failed = 0
    for name in sections:
        started = time.perf_counter()
        try:
            text, ok = run[name]()
        except Exception as exc:  # one broken section leaves the others' figures
            text, ok = f"FAILED: {type(exc).__name__}: {exc}", False
        failed += not ok
        text = f"# {name} ({time.perf_counter() - started:.0f} s)\n{text}\n"
        (out / f"{name}.txt").write_text(text)
        print(text, flush=True)
    print(f"section files in {out}" + (f"; {failed} section(s) FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

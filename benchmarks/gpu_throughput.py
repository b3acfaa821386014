"""Throughput of the paper presets on one device, and what a full paper-preset run would cost there.

For SNGAN and BigGAN at the paper preset (32x32, batch 50, n_critic 5 / 4) the training loop itself
(sparsebench.train.loop.train, G-step times from CUDA events on a GPU) is timed for three methods:
  dense     no masks;
  static    ERK masks, s_G 0.9 / s_D 0.5 (masked dense: the device computes dense FLOPs);
  stugan    the same masks explored every delta_t G steps (500 BigGAN, 1,000 SNGAN): one topology
            update is timed inside the measured steps and its extra time amortised over delta_t;
under each speed mode: fp32 (the default), bf16, compile, channels-last, and all three combined.

Reported per row: ms per G step (the median of the timed steps; STU-GAN's with its amortised update),
training images per second (the G step's generated batch plus its n_critic real batches, per second), the
fraction of the device's peak FLOP rate reached (the dense step's fvcore FLOPs x 2 FLOPs per multiply-add,
since masked-dense sparsity computes dense, against the peak of a small table of GPUs by exact model name:
the FP32 peak for fp32 modes, as a run computes fp32 in fp32 (TF32 off, `sparsebench.speed.numerics`,
which the timings run under as a run's do), the dense bf16 tensor-core peak for bf16 modes; or
--peak-tflops), and the projected hours of a full run: the preset's G steps at that speed plus its
evaluations. An evaluation's cost is measured as well: G samples in fp32 (batch 250, as evaluation does; 8
on a CPU), and an Inception-v3 forward at 299x299 (torchvision's architecture with random weights: the FID
extractor's FLOPs) is timed on a batch; both per image, times the preset's eval_samples and its number of
evaluations. Not counted, and said so under the table: resizing the samples to 299x299, copies between the
device and the host, FID's matrix square root, the other metrics (IS, KID, precision / recall),
checkpoints, and the reference statistics of the training data (computed once per store): a full run
costs more than projected.

Run:  python benchmarks/gpu_throughput.py --device cuda              (full width, on a GPU)
      python benchmarks/gpu_throughput.py --device cpu --width 0.25  (a reduced width: a test of the script)
      python benchmarks/gpu_throughput.py --smoke                    (seconds: tiny width, fp32 only)
Prints a table, then exactly the lines
  ARCH paper preset on DEVICE: X ms per G step (MODE), projected H h per run
(one per arch, method and mode, METHOD named inside MODE as "METHOD, MODE"). Saves nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "plugins")]
warnings.filterwarnings("ignore")

from sparsebench.balance import probed  # noqa: E402
from sparsebench.config import curve_points  # noqa: E402
from sparsebench.flops import count_gan  # noqa: E402
from sparsebench.interfaces import GANState  # noqa: E402
from sparsebench.plugins import get_plugins  # noqa: E402
from sparsebench.sparse.masks import MaskState  # noqa: E402
from sparsebench.sparse.sema import SparseEMA  # noqa: E402
from sparsebench.speed import Speed, numerics  # noqa: E402
from sparsebench.timing import Stopwatch  # noqa: E402
from sparsebench.train.loop import Batcher, adam, train  # noqa: E402

MODES = {
    "fp32": Speed(),
    "bf16": Speed(precision="bf16"),
    "compile": Speed(compile=True),
    "channels-last": Speed(channels_last=True),
    "combined": Speed(precision="bf16", compile=True, channels_last=True),
}
METHODS = ("dense", "static", "stugan")
SG, SD = 0.9, 0.5
# Peaks in TFLOP/s of GPUs by model: (FP32, dense BF16 tensor core); vendors' data sheets. A name matches an
# entry when its model words begin with the entry's, word for word, the longest entry first (`peak_of`).
PEAKS = {
    "H200": (67.0, 989.4),
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.4),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.0),
    "L40": (90.5, 181.0),
    "L4": (30.3, 121.0),
    "A10": (31.2, 125.0),
    "RTX 4090": (82.6, 165.2),
    "RTX 3090": (35.6, 71.0),
}
NOT_PROJECTED = (
    "projected hours leave out resizing the samples to 299x299, device-host copies, FID's matrix square root, "
    "the other metrics (IS, KID, precision/recall), checkpoints and the reference statistics: a full run costs more"
)
INCEPTION_RES = 299


class Images:
    """Random uint8 images standing in for the training set (throughput does not depend on content)."""

    def __init__(self, n: int, resolution: int, classes: int):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, generator=gen)
        self.labels = torch.randint(0, classes, (n,), generator=gen)

    def __len__(self) -> int:
        return self.images.shape[0]


def peak_of(name: str) -> tuple[float, float] | None:
    """The peaks of the GPU `torch.cuda.get_device_name` calls `name`: the longest entry whose words begin the
    name's model words ("NVIDIA H100 80GB HBM3" is an H100, "NVIDIA L40" an L40, not an L4; "NVIDIA A10G"
    is none of them: a substring match gave it the A10's peak). None for a GPU the table does not hold."""
    words = [w for w in name.replace("-", " ").split() if w not in ("NVIDIA", "GeForce")]
    for key in sorted(PEAKS, key=lambda k: -len(k.split())):
        if words[: len(key.split())] == key.split():
            return PEAKS[key]
    return None


def peak_tflops(device: torch.device, precision: str, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    peaks = peak_of(torch.cuda.get_device_name(device))
    if peaks is None:
        return None
    return peaks[1] if precision == "bf16" else peaks[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from sparsebench.resources import cpu_model

    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def training_setup(arch, spec, method: str, device, classes: int, update_every: int) -> tuple:
    """(state, callbacks, batcher, noise) of `method` ready for `train`: G and D of `spec` on `device`, ERK masks at
    s_G 0.9 / s_D 0.5 unless dense, STU-GAN's exploration every `update_every` G steps, random images."""
    torch.manual_seed(0)
    G, D = arch.build(spec, classes, 1.0)
    G, D = G.to(device), D.to(device)
    g_masks = d_masks = None
    hooks = None
    if method != "dense":
        gen = torch.Generator().manual_seed(1)
        g_masks = MaskState.from_distribution(G, SG, "erk", "conv", gen)
        d_masks = MaskState.from_distribution(D, SD, "erk", "conv", gen)
    if method == "stugan":
        from sparsebench import CosineSchedule
        from sparsebench_builtins.methods.stugan import Exploration

        hooks = Exploration("g", update_every, CosineSchedule(0.5, 0.005, spec.steps), torch.Generator().manual_seed(2))
    state = GANState(
        G,
        D,
        adam(G.parameters(), spec.lr_g, spec.beta1, spec.beta2, spec.adam_eps),
        adam(D.parameters(), spec.lr_d, spec.beta1, spec.beta2, spec.adam_eps),
        g_masks,
        d_masks,
        SparseEMA(G, spec.ema_decay, spec.ema_start, g_masks),
    )
    data = Images(max(1000, 4 * spec.batch_size * spec.n_critic), spec.resolution, max(classes, 1))
    batcher = Batcher(data, device, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    return state, probed(hooks), batcher, torch.Generator(device=device).manual_seed(4)


def time_steps(arch, spec, method: str, speed: Speed, device, warmup: int, steps: int, classes: int) -> dict:
    """Median seconds of a G step of `method` after `warmup` steps, with STU-GAN's update amortised."""
    due = warmup + steps // 2 + 1  # one update inside the timed steps
    state, callbacks, batcher, noise = training_setup(arch, spec, method, device, classes, due)
    quiet = spec.replace(log_every=10**9)  # the loop reads the device at its first and last step only
    train(state, warmup + steps, quiet, batcher, classes, noise, callbacks, speed=speed)
    timed = state.step_seconds[warmup:]
    if method != "stugan":
        return {"step_s": statistics.median(timed), "update_s": 0.0}
    at = due - warmup - 1
    others = timed[:at] + timed[at + 1 :]
    steady = statistics.median(others)
    update = max(0.0, timed[at] - steady)
    return {"step_s": steady + update / spec.explore_interval, "update_s": update}


def eval_seconds_per_image(arch, spec, device, classes: int, batch: int, inception_batch: int) -> float:
    """Seconds per evaluated image: G's fp32 sampling plus an Inception-v3 forward at 299x299."""
    torch.manual_seed(0)
    G, _ = arch.build(spec, classes, 1.0)
    G = G.to(device).eval()
    z = torch.randn(batch, spec.z_dim, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    watch = Stopwatch(device)
    with torch.no_grad():
        G(z, y)  # warm-up
        watch.start()
        G(z, y)
        sample_s = watch.stop() / batch
        try:
            from torchvision.models import inception_v3
        except ImportError:  # no torchvision: the extractor's time is left out, and said so
            print("torchvision is missing: the Inception time of evaluations is not counted", file=sys.stderr)
            return sample_s
        net = inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
        x = torch.randn(inception_batch, 3, INCEPTION_RES, INCEPTION_RES, device=device)
        net(x)
        watch.start()
        net(x)
        extract_s = watch.stop() / inception_batch
    return sample_s + extract_s


def add_device_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")


def device_option(ap: argparse.ArgumentParser, name: str) -> torch.device:
    """The device `--device` names, or one clear error (an unknown name, CUDA where there is none)."""
    if name not in ("cpu", "cuda"):
        ap.error(f"--device {name!r}: allowed: cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here; use --device cpu or --smoke")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_option(ap)
    ap.add_argument("--archs", default="sngan,biggan")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier of the preset's width (1: paper)")
    ap.add_argument("--steps", type=int, default=0, help="timed G steps (0: 20 on a GPU, 3 on a CPU)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed G steps first (0: 5 on a GPU, 1 on a CPU)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s (default: table)")
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny width, one arch and method, fp32")
    args = ap.parse_args(argv)
    device = device_option(ap, args.device)
    if not 0.0 < args.width <= 1.0:
        ap.error(f"--width must lie in (0, 1], got {args.width}")
    if args.steps < 0 or args.warmup < 0:
        ap.error("--steps and --warmup must be >= 0")
    gpu = device.type == "cuda"
    if args.smoke:
        args.width, args.steps, args.warmup, args.modes = min(args.width, 1 / 16), 2, 1, "fp32"
        args.archs, args.methods = "sngan", "stugan"  # the arch of two D forwards and a topology update
    steps = args.steps or (20 if gpu else 3)
    warmup = args.warmup or (5 if gpu else 1)
    plugins = get_plugins()
    modes = [m for m in args.modes.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    archs = [a for a in args.archs.split(",") if a]
    for name, allowed, what in ((modes, MODES, "mode"), (methods, METHODS, "method")):
        bad = [v for v in name if v not in allowed]
        if bad:
            ap.error(f"unknown {what} {bad[0]!r}; allowed: {', '.join(allowed)}")
    for a in archs:
        plugins.archs.get(a)  # one clear error for an unknown arch
    where = device_name(device)
    lines = []
    print(f"device: {where}; width x{args.width:g}; {warmup} warm-up + {steps} timed G steps per row")
    print(f"{'arch':7} {'method':7} {'mode':14} {'ms/step':>9} {'img/s':>8} {'peak':>7} {'eval h':>7} {'run h':>8}")
    with numerics(SimpleNamespace(deterministic=False), device):  # as a run computes: fp32 in fp32, cuDNN tuned
        for arch_name in archs:
            arch = plugins.archs.get(arch_name)
            paper = arch.presets["paper"]
            spec = paper.replace(width=max(1, round(paper.width * args.width)))
            classes = 10  # CIFAR-10's
            G, D = arch.build(spec, classes, 1.0)
            executed = 2.0 * count_gan(G, D, spec, "conv", classes).step()  # masked dense: dense FLOPs, 2 per FMA
            del G, D
            per_image = eval_seconds_per_image(arch, spec, device, classes, 250 if gpu else 8, 64 if gpu else 2)
            eval_h = curve_points(spec) * spec.eval_samples * per_image / 3600.0
            images_per_step = spec.g_batch_size + spec.n_critic * spec.batch_size * spec.accumulate
            for method in methods:
                for mode in modes:
                    speed = MODES[mode]
                    started = time.perf_counter()
                    timed = time_steps(arch, spec, method, speed, device, warmup, steps, classes)
                    step_s = timed["step_s"]
                    peak = peak_tflops(device, speed.precision, args.peak_tflops)
                    share = f"{executed / step_s / (peak * 1e12):6.1%}" if peak else "    n/a"
                    run_h = spec.steps * step_s / 3600.0 + eval_h
                    print(
                        f"{arch_name:7} {method:7} {mode:14} {1000 * step_s:9.1f} {images_per_step / step_s:8.0f} "
                        f"{share:>7} {eval_h:7.2f} {run_h:8.1f}   ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    lines.append(
                        f"{arch_name} paper preset on {where}: {1000 * step_s:.1f} ms per G step ({method}, {mode}), "
                        f"projected {run_h:.1f} h per run"
                    )
    print(f"({NOT_PROJECTED})")
    if args.width != 1.0:
        print(f"(width x{args.width:g}: not the paper's models; the figures test the script, not the device)")
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

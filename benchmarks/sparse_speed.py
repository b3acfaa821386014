"""Measured wall-clock speed of sparse CPU kernels (SparseProp) against dense and masked-dense generators.

For each architecture at its paper preset (32x32, the paper's width) and each s_G, three copies of
the same G are timed, interleaved in one process so that all see the same machine state:
  dense          no masks (what a dense run computes);
  masked dense   ERK masks applied after every step (the `dense` kernels backend: same FLOPs as dense);
  sparse kernels the same masks, with SparseProp swapped into every layer that is at least
                 --threshold sparse and measured faster in place (the `sparseprop` backend).
A G train step is G forward, the backward of a fixed random projection of its output (D is not
part of it), Adam and the mask; inference is a no-grad forward in eval mode, reported per image.

Run:  python benchmarks/sparse_speed.py [--archs sngan,biggan] [--sg 0.8,0.9,0.95] [--batch 8] [--repeats 3]
      [--smoke]   (`--smoke`: SNGAN at s_G 0.95, batch 2, one repeat: tests the script, its figures mean nothing)
Prints, per (arch, s_G), the per-layer decision table and exactly the lines
  ARCH s_G=S G train step, sparse kernels vs dense: X.XXx
  ARCH s_G=S G inference per image, sparse kernels vs dense: X.XXx
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")
TARGETS = {"train": 1.5, "inference": 2.0}  # at s_G = 0.95 on SNGAN (the project's goal, not a tuning knob)


class Timed:
    """One G variant: its model, optimizer and masks, and what a train step / inference costs."""

    def __init__(self, G, masks, z, y):
        self.G, self.masks, self.z, self.y = G, masks, z, y
        self.opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
        self.target = torch.randn_like(G(z, y)).detach()
        self.train_ms: list[float] = []
        self.infer_ms: list[float] = []

    def train_step(self) -> None:
        self.G.train()
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        (self.G(self.z, self.y) * self.target).mean().backward()
        if self.masks is not None:
            self.masks.before_step()
        self.opt.step()
        if self.masks is not None:
            self.masks.apply()
        self.train_ms.append((time.perf_counter() - start) * 1e3)

    @torch.no_grad()
    def inference(self) -> None:
        self.G.eval()
        start = time.perf_counter()
        self.G(self.z, self.y)
        self.infer_ms.append((time.perf_counter() - start) * 1e3 / len(self.z))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="sngan,biggan")
    ap.add_argument("--sg", default="0.8,0.9,0.95", help="comma-separated G sparsities")
    ap.add_argument("--batch", type=int, default=8, help="images per G step and per inference batch")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timings per variant (medians are reported)")
    ap.add_argument("--threshold", type=float, default=0.8, help="minimum layer sparsity to try the kernels")
    ap.add_argument("--threads", type=int, default=2, help="threads of torch and of SparseProp's OpenMP kernels")
    ap.add_argument("--smoke", action="store_true", help="SNGAN at s_G 0.95, batch 2, one repeat (tests the script)")
    args = ap.parse_args()
    if args.smoke:
        args.archs, args.sg, args.batch, args.repeats = "sngan", "0.95", 2, 1
    torch.set_num_threads(args.threads)  # SparseProp's OpenMP regions run in torch's OpenMP runtime (one libgomp)
    threads = torch.get_num_threads()

    from sparsebench import kernels
    from sparsebench.plugins import get_plugins
    from sparsebench.sparse.masks import MaskState

    kernels.require_sparseprop()
    plugins = get_plugins()
    print(f"threads={threads} batch={args.batch} repeats={args.repeats} threshold={args.threshold}")
    for name in args.archs.split(","):
        arch = plugins.archs.get(name)
        spec = arch.presets["paper"]
        for sg in (float(s) for s in args.sg.split(",")):
            torch.manual_seed(0)
            z, y = torch.randn(args.batch, spec.z_dim), torch.randint(10, (args.batch,))
            variants = {}
            for label in ("dense", "masked dense", "sparse kernels"):
                torch.manual_seed(0)
                G, _ = arch.build(spec, 10)
                masks = None
                if label != "dense":
                    masks = MaskState.from_distribution(G, sg, "erk", "conv", torch.Generator().manual_seed(0))
                    masks.opt_state = "zero"  # masked gradients: what the kernels compute
                if label == "sparse kernels":
                    backend = kernels.KernelBackend(G, masks, (z, y), threshold=args.threshold, repeats=args.repeats)
                variants[label] = Timed(G, masks, z, y)
            for v in variants.values():  # warm-up
                v.train_step()
                v.inference()
            for _ in range(args.repeats):
                for v in variants.values():
                    v.train_step()
                    v.inference()
            train = {k: statistics.median(v.train_ms[1:]) for k, v in variants.items()}
            infer = {k: statistics.median(v.infer_ms[1:]) for k, v in variants.items()}
            print(f"\n== {name} s_G={sg} (ERK over convs; layers at >= {args.threshold} sparsity are tried)")
            print(backend.table())
            print(f"{'':<16} {'G train step ms':>16} {'inference ms/img':>17}")
            for k in variants:
                print(f"{k:<16} {train[k]:16.1f} {infer[k]:17.2f}")
            speed_train = train["dense"] / train["sparse kernels"]
            speed_infer = infer["dense"] / infer["sparse kernels"]
            print(f"{name} s_G={sg} G train step, sparse kernels vs dense: {speed_train:.2f}x")
            print(f"{name} s_G={sg} G inference per image, sparse kernels vs dense: {speed_infer:.2f}x")
            if name == "sngan" and sg == 0.95:
                for what, got in (("train", speed_train), ("inference", speed_infer)):
                    verdict = "met" if got >= TARGETS[what] else "NOT met (see the per-layer table)"
                    print(f"target {what} >= {TARGETS[what]}x at sngan s_G=0.95: {verdict}")


if __name__ == "__main__":
    main()

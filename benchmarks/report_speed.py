"""How long `sparsebench report` takes over a store of 1,000 runs (target: under 2 s).

Fills a temporary store with 1,000 runs through the real Store API (configs from the real grid
expansion: 7 methods x 3 s_G x 2 s_D x seeds, two architectures), with loss and exploration
curves, then times one full report (Markdown + LaTeX + figures) in this process.

Run:  python benchmarks/report_speed.py [--runs 1000] [--smoke]   (`--smoke`: 30 runs, tests the script)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="30 runs (tests the script; the time means nothing)")
    args = ap.parse_args()
    if args.smoke:
        args.runs = 30

    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.plugins import get_plugins
    from sparsebench.report.build import build_report
    from sparsebench.store import Store

    plugins = get_plugins()
    methods = ["dense", "small-dense", "pf-global", "pf-uniform", "gan-tickets", "static", "stugan"]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "results.db")
        configs = []
        seed = 0
        while len(configs) < args.runs:
            for arch in ("biggan", "sngan"):
                configs += expand_grid(
                    GridRequest(methods=methods, arch=arch, sg=[0.95, 0.9, 0.8], sd=[0.5, 0.7], seeds=[seed]), plugins
                )
            seed += 1
        configs = configs[: args.runs]
        t0 = time.perf_counter()
        for cfg in configs:
            store.claim(cfg, {"torch": "2", "device": "cpu"}, "filler")
            status = "diverged" if rng.random() < 0.03 else "done"
            res = {
                "fid": rng.uniform(10, 40),
                "is_mean": rng.uniform(7, 9),
                "is_std": 0.1,
                "density_g": 1 - cfg.sg,
                "density_d": 1 - cfg.sd,
                "train_flops": 1e17,
                "test_flops": 1e9,
                "train_flops_rel": rng.uniform(0.2, 5),
                "test_flops_rel": 1 - cfg.sg,
                "extractor": "inception-v3-compat",
                "eval_samples": 50000,
                "scope": "conv",
                "variant": "",
            }
            store.finish_run(cfg.run_id, status, res, 1.0, "filler")
            store.log_stats(
                cfg.run_id,
                [(s, k, rng.random()) for s in range(0, 1000, 100) for k in ("loss_d", "loss_g", "exploration_rate")],
            )
        fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        files = build_report(store, Path(tmp) / "report", "all")
        took = time.perf_counter() - t0
    print(f"filled {len(configs)} runs in {fill:.1f} s; report wrote {len(files)} files")
    print(f"report over {len(configs)} runs: {took:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()

"""Figures (PNG and PDF): FID vs s_G (paper Figs. 3-4), FID vs training FLOPs, STU-GAN's
exploration rate over training, training losses; and a sample grid per run.

Runs are named by the results frame's `label` column (`tables.labels`: the methods' declared titles).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render_all(jobs: list[tuple]) -> list[Path]:
    """Run independent figure jobs (fn, args), two at a time in forked workers where available.

    Figures are independent and matplotlib is single-threaded, so two processes halve the wall
    time of a report on a 2-core machine; without fork (Windows) they run one after the other.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _plt()  # import once in the parent: forked workers inherit it
    if "fork" not in multiprocessing.get_all_start_methods() or len(jobs) < 2:
        return [p for fn, args in jobs for p in fn(*args)]
    with ProcessPoolExecutor(
        max_workers=2,
        mp_context=multiprocessing.get_context("fork"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        return [p for f in futures for p in f.result()]


def die_with_parent(parent_pid: int) -> None:
    """Make this worker end when `parent_pid` does (killed with SIGKILL, it cannot shut its pool down, and
    a forked worker blocks for ever on a queue whose other end it holds itself): Linux's parent-death
    signal, elsewhere a thread that watches the parent."""
    import signal
    import threading

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="sparsebench-parent-watch").start()
    if os.getppid() != parent_pid:  # the parent was gone before the signal was set
        os._exit(1)


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:  # no creation date in a PDF: the same store draws the same bytes
        fig.savefig(p, dpi=100, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    _plt().close(fig)
    return paths


def fid_vs_sg(df: pd.DataFrame, out: Path) -> list[Path]:
    plt = _plt()
    done = df[(df["status"] == "done") & df["fid"].notna()].copy()
    archs = sorted(done["arch"].unique())
    if not archs:
        return []
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = done[done["arch"] == arch]
        for (name, sd), g in sub.groupby(["label", "sd"]):
            stats = g.groupby("sg")["fid"].agg(["mean", "std"]).reset_index()
            if (stats["sg"] == 0).all():  # dense baselines: a horizontal reference line
                ax.axhline(stats["mean"].iloc[0], ls="--", lw=1, label=f"{name}", color="grey")
                continue
            ax.errorbar(
                100 * stats["sg"],
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                ms=3,
                label=f"{name}, s_D={100 * sd:g}%",
            )
        ax.set_title(arch)
        ax.set_xlabel("s_G (%)")
        ax.set_ylabel("FID")
        ax.legend(fontsize=7)
    return _save(fig, out, "fid_vs_sg")


def fid_vs_flops(df: pd.DataFrame, out: Path) -> list[Path]:
    plt = _plt()
    done = df[(df["status"] == "done") & df["fid"].notna() & df["train_flops_rel"].notna()].copy()
    if done.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, g in done.groupby("label"):
        ax.scatter(g["train_flops_rel"], g["fid"], label=name, s=18)
    ax.set_xlabel("training FLOPs (x dense)")
    ax.set_ylabel("FID")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    return _save(fig, out, "fid_vs_train_flops")


def curves(
    stats: pd.DataFrame, runs: pd.DataFrame, panels: list[tuple[str, str]], stem: str, out: Path, max_runs: int = 8
) -> list[Path]:
    """One panel per (key, ylabel), one line per run over G steps (at most `max_runs` runs)."""
    plt = _plt()
    panels = [(k, y) for k, y in panels if (stats["key"] == k).any()]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    info = runs.set_index("run_id")
    for ax, (key, ylabel) in zip(axes[0], panels):
        sub = stats[stats["key"] == key]
        for run_id, g in list(sub.groupby("run_id", sort=False))[:max_runs]:
            r = info.loc[run_id]
            ax.plot(
                g["step"].to_numpy(),
                g["value"].to_numpy(),
                lw=1,
                label=f"{r['label']} {r['arch']} sG={r['sg']:g} sD={r['sd']:g} seed={r['seed']}",
            )
        ax.set_xlabel("G step")
        ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=6)
    return _save(fig, out, stem)


def cell_curves(stats: pd.DataFrame, runs: pd.DataFrame, key: str, ylabel: str, stem: str, out: Path) -> list[Path]:
    """One panel per arch, one line per table cell (label, s_G, s_D): the mean of `key` over the cell's seeds
    at each G step all of them logged, with a band of one standard deviation between seeds. Shows whether a
    method is still improving where the protocol scores it, and how far its seeds spread along the way."""
    plt = _plt()
    sub = stats[stats["key"] == key].merge(runs[["run_id", "arch", "label", "sg", "sd"]], on="run_id")
    if sub.empty:
        return []
    archs = sorted(sub["arch"].unique())
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for (label, sg, sd), g in sub[sub["arch"] == arch].groupby(["label", "sg", "sd"], sort=True):
            table = g.pivot_table(index="step", columns="run_id", values="value").dropna()  # steps every seed has
            if table.empty:
                continue
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=1).fillna(0.0)
            steps = table.index.to_numpy()
            (line,) = ax.plot(steps, mean.to_numpy(), lw=1.2, label=f"{label} sG={sg:g} sD={sd:g} (n={table.shape[1]})")
            ax.fill_between(steps, (mean - std).to_numpy(), (mean + std).to_numpy(), color=line.get_color(), alpha=0.15)
        ax.set_title(arch)
        ax.set_xlabel("G step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=5)
    return _save(fig, out, stem)


def sample_grid(samples_path: Path, target: Path) -> bool:
    if not samples_path.exists():
        return False
    if target.exists() and target.stat().st_mtime >= samples_path.stat().st_mtime:
        return True
    import torch
    from torchvision.utils import save_image

    images = torch.load(samples_path, map_location="cpu", weights_only=True)["images"]
    save_image(images.float() / 255.0, target, nrow=8, padding=1)
    return True

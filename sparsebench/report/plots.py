"""Figures (PNG and PDF): FID vs s_G (paper Figs. 3-4), FID vs training FLOPs, STU-GAN's
exploration rate over training, training losses; and a sample grid per run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sparsebench.report.tables import label


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return paths


def fid_vs_sg(df: pd.DataFrame, out: Path) -> list[Path]:
    plt = _plt()
    done = df[(df["status"] == "done") & df["fid"].notna()].copy()
    archs = sorted(done["arch"].unique())
    if not archs:
        return []
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.6), squeeze=False)
    done["label"] = done.apply(label, axis=1)
    for ax, arch in zip(axes[0], archs):
        sub = done[done["arch"] == arch]
        for (name, sd), g in sub.groupby(["label", "sd"]):
            stats = g.groupby("sg")["fid"].agg(["mean", "std"]).reset_index()
            if (stats["sg"] == 0).all():  # dense baselines: a horizontal reference line
                ax.axhline(stats["mean"].iloc[0], ls="--", lw=1, label=f"{name}", color="grey")
                continue
            ax.errorbar(100 * stats["sg"], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=2,
                        label=f"{name}, s_D={100 * sd:g}%")
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
    done["label"] = done.apply(label, axis=1)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, g in done.groupby("label"):
        ax.scatter(g["train_flops_rel"], g["fid"], label=name, s=18)
    ax.set_xlabel("training FLOPs (x dense)")
    ax.set_ylabel("FID")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    return _save(fig, out, "fid_vs_train_flops")


def curves(stats: pd.DataFrame, runs: pd.DataFrame, key: str, stem: str, ylabel: str, out: Path,
           max_runs: int = 12) -> list[Path]:
    """One line per run of `stats[key]` over G steps (at most `max_runs` runs, for legibility)."""
    plt = _plt()
    sub = stats[stats["key"] == key]
    if sub.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    info = runs.set_index("run_id")
    for run_id in list(dict.fromkeys(sub["run_id"]))[:max_runs]:
        r = info.loc[run_id]
        g = sub[sub["run_id"] == run_id]
        ax.plot(g["step"], g["value"], lw=1,
                label=f"{label(r)} {r['arch']} sG={r['sg']:g} sD={r['sd']:g} seed={r['seed']}")
    ax.set_xlabel("G step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
    return _save(fig, out, stem)


def sample_grid(samples_path: Path, target: Path) -> bool:
    import torch
    from torchvision.utils import save_image

    if not samples_path.exists():
        return False
    if target.exists() and target.stat().st_mtime >= samples_path.stat().st_mtime:
        return True
    images = torch.load(samples_path, map_location="cpu", weights_only=True)["images"]
    save_image(images.float() / 255.0, target, nrow=8, padding=1)
    return True

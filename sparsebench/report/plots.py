"""Figures (PNG and PDF): the comparisons as a forest plot (the report's first), FID vs training FLOPs and vs s_G
(paper Figs. 3-4) per arch on log axes, the evaluation curves; the exploration rate, the training losses and the
balance ratio over training, each the median per method over all of its runs; and a sample grid per run.

Runs are named by the results frame's `label` column (`sparsebench.analysis.cells.labels`: the methods' declared
titles); each row keeps one colour and marker, never another row's, and legends sit outside the data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


def styles(labels: list[str]) -> dict[str, dict]:
    """One colour and one marker per label: no two labels share the pair, and the first ten differ in colour
    from one another (tab20's strong colours first, then its light ones), each with its own marker. The same
    row looks the same in every figure of a report."""
    plt = _plt()
    tab20 = plt.get_cmap("tab20").colors
    colours = tab20[0::2] + tab20[1::2]
    return {
        name: {"color": colours[i % len(colours)], "marker": MARKERS[i % len(MARKERS)]} for i, name in enumerate(labels)
    }


def _row_labels(df: pd.DataFrame, info) -> list[str]:
    """The report's row labels in table order."""
    keys = df[["method", "label"]].drop_duplicates()
    return [r.label for r in sorted(keys.itertuples(index=False), key=lambda r: (info.rank(r.method), r.label))]


def _legend_outside(fig, axes, order: list[str] | None = None) -> None:
    """One legend for the figure, right of the panels, never over the data (entries in `order` where given)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(name, handle)
    order = list(dict.fromkeys(order or []))
    names = [n for n in order if n in seen] + [n for n in seen if n not in order]
    if names:
        fig.legend([seen[n] for n in names], names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)


def _cell_label(df: pd.DataFrame) -> dict[tuple, str]:
    """Cell key (method, variant, arch, sg, sd) -> the row label of its runs."""
    from sparsebench.analysis.cells import cell_variant

    frame = df.assign(variant=cell_variant(df))
    return {
        (r.method, r.variant, r.arch, r.sg, r.sd): r.label
        for r in frame[["method", "variant", "arch", "sg", "sd", "label"]].drop_duplicates().itertuples(index=False)
    }


def forest(analysis, info, out: Path) -> list[Path]:
    """Every comparison's FID ratio with its 95 % interval on a log axis, one panel per arch; confirmatory
    comparisons filled and named as such, exploratory ones hollow. 1: no difference; the band: within 20 %."""
    plt = _plt()
    from sparsebench.analysis.cells import label
    from sparsebench.analysis.stats import MARGIN

    recs = [r for r in analysis.cells if r["ratio"] is not None]
    if not recs:
        return []
    archs = sorted({r["arch"] for r in recs})
    per = {a: [r for r in recs if r["arch"] == a] for a in archs}
    height = max(len(v) for v in per.values())
    fig, axes = plt.subplots(1, len(archs), figsize=(6.2 * len(archs), 1.2 + 0.24 * height), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        rows = sorted(per[arch], key=lambda r: (not r["confirmatory"], info.rank(r["method"]), r["variant"], -r["sg"]))
        for y, r in enumerate(reversed(rows)):
            low, high = max(r["ratio_low"], 1e-2), min(r["ratio_high"], 1e2)
            colour = "black" if r["confirmatory"] else "tab:blue"
            ax.plot([low, high], [y, y], color=colour, lw=1.2)
            ax.plot(r["ratio"], y, "o", color=colour, mfc=colour if r["confirmatory"] else "white", ms=4)
        names = [
            f"{label({'method': r['method'], 'variant': r['variant']}, info)} sG={100 * r['sg']:g} sD={100 * r['sd']:g}"
            f" vs {info.title(r['reference'])}" + (" [confirmatory]" if r["confirmatory"] else "")
            for r in reversed(rows)
        ]
        ax.set_yticks(range(len(rows)), names, fontsize=6)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.axvspan(*MARGIN, color="grey", alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_xlim(1 / 30, 30)
        ax.set_xlabel("FID ratio to the reference (log; < 1: lower FID), 95 % interval")
        ax.set_title(arch)
    fig.tight_layout()
    return _save(fig, out, "comparisons")


def _log_ylim(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    return lo / 1.3, hi * 1.3


def fid_vs_flops(df: pd.DataFrame, analysis, info, out: Path) -> list[Path]:
    """Per arch: each cell's geometric-mean FID with its 95 % interval against its training FLOPs (both log).
    A cell with collapsed runs is drawn at the geometric mean of the rest (hollow) and its collapsed runs as
    triangles on the top edge, counted, so that they do not stretch the axis."""
    plt = _plt()
    names = _cell_label(df)
    flops = df[df["status"] == "done"].groupby(["method", "arch", "sg", "sd"])["train_flops_rel"].mean()
    recs = [r for r in analysis.cells if r["fid_geomean"] is not None]
    if not recs or df["train_flops_rel"].dropna().empty:
        return []
    order = _row_labels(df, info)
    style = styles(order)
    archs = sorted({r["arch"] for r in recs})
    fig, axes = plt.subplots(1, len(archs), figsize=(6.0 * len(archs), 4.4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        mine = [r for r in recs if r["arch"] == arch]
        tops = 0
        working = [r["fid_geomean_working"] or r["fid_geomean"] for r in mine if not r["collapsed"]]
        working += [r["fid_geomean_working"] for r in mine if r["collapsed"] and r["fid_geomean_working"]]
        ylim = _log_ylim(working) if working else None
        for r in mine:
            x = flops.get((r["method"], r["arch"], r["sg"], r["sd"]))
            if x is None or not x > 0:
                continue
            name = names.get(tuple(r[k] for k in ("method", "variant", "arch", "sg", "sd")), r["method"])
            st = style.get(name, {"color": "black", "marker": "o"})
            y = r["fid_geomean_working"] if r["collapsed"] else r["fid_geomean"]
            if y is not None and ylim is not None and y <= ylim[1]:
                err = None
                if not r["collapsed"] and r["fid_low"] is not None:
                    err = [[max(y - r["fid_low"], 0)], [max(r["fid_high"] - y, 0)]]
                ax.errorbar(
                    x, y, yerr=err, color=st["color"], marker=st["marker"], ms=5, lw=0.8, alpha=0.9, label=name,
                    mfc="white" if r["collapsed"] else st["color"], capsize=2,
                )  # fmt: skip
            if r["collapsed"] and ylim is not None:  # collapsed runs on the top edge, counted
                ax.plot(x, ylim[1], marker=st["marker"], color=st["color"], ms=6, label=name, clip_on=False)
                ax.annotate(f"{r['collapsed']}/{r['n']} collapsed", (x, ylim[1]), fontsize=6, color=st["color"],
                            xytext=(4, -10 - 8 * tops), textcoords="offset points")  # fmt: skip
                tops += 1
        ax.set_xscale("log")
        ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel("training FLOPs (x dense; log)")
        ax.set_ylabel("FID (geometric mean, 95 % interval; log)")
        ax.set_title(f"{arch} (collapsed runs on the top edge)")
    fig.tight_layout()
    _legend_outside(fig, axes[0], order)
    return _save(fig, out, "fid_vs_train_flops")


def fid_vs_sg(df: pd.DataFrame, analysis, info, out: Path) -> list[Path]:
    """Per arch: each row's geometric-mean FID against s_G (paper Figs. 3-4), log axis; the dense GAN as a line.
    A cell with collapsed runs is drawn hollow at the rest's geometric mean, or on the top edge where all
    collapsed, so that they do not stretch the axis."""
    plt = _plt()
    names = _cell_label(df)
    recs = [r for r in analysis.cells if r["fid_geomean"] is not None]
    if not recs:
        return []
    rows = _row_labels(df, info)
    style = styles(rows)
    archs = sorted({r["arch"] for r in recs})
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.8), squeeze=False)
    order: list[str] = []
    for ax, arch in zip(axes[0], archs):
        lines: dict[tuple, list] = {}
        for r in (r for r in recs if r["arch"] == arch):
            name = names.get(tuple(r[k] for k in ("method", "variant", "arch", "sg", "sd")), r["method"])
            lines.setdefault((name, r["sd"]), []).append(r)
        shown = lambda c: c["fid_geomean_working"] if c["collapsed"] else c["fid_geomean"]  # noqa: E731
        ys = [y for cells in lines.values() for c in cells if (y := shown(c))]
        ylim = _log_ylim(ys) if ys else None
        for (name, sd), cells in sorted(lines.items(), key=lambda kv: (rows.index(kv[0][0]), kv[0][1])):
            st = style.get(name, {"color": "black", "marker": "o"})
            if all(c["sg"] == 0 for c in cells):  # the dense GAN: a horizontal reference line
                ax.axhline(cells[0]["fid_geomean"], ls="--", lw=1, color=st["color"], label=name)
                order.append(name)
                continue
            cells = sorted(cells, key=lambda c: c["sg"])
            text = f"{name}, s_D={100 * sd:g}%"
            order.append(text)
            top = ylim[1] if ylim else None
            y = [shown(c) or top for c in cells]
            x = [100 * c["sg"] for c in cells]
            ax.plot(x, y, color=st["color"], marker=st["marker"], ms=4, lw=1, label=text)
            hollow = [(xi, yi) for xi, yi, c in zip(x, y, cells) if c["collapsed"]]
            if hollow:
                ax.plot(*zip(*hollow), ls="", marker=st["marker"], ms=6, mfc="white", color=st["color"], clip_on=False)
        ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(f"{arch} (hollow: cells with collapsed runs)")
        ax.set_xlabel("s_G (%)")
        ax.set_ylabel("FID (geometric mean; log)")
    fig.tight_layout()
    _legend_outside(fig, axes[0], order)
    return _save(fig, out, "fid_vs_sg")


def method_curves(
    stats: pd.DataFrame,
    runs: pd.DataFrame,
    info,
    panels: list[tuple[str, str]],
    stem: str,
    out: Path,
    smooth: int = 1,
) -> list[Path]:
    """A row of panels per (key, ylabel), a column per arch; one line per report row (method and variant): the
    median of `key` over all of the row's runs that logged it (every s_G, s_D and seed) at each G step, with
    its interquartile band. Every run is in it and the runs drawn are never chosen, so a figure about one
    method's statistic shows that method, and each line says how many runs it summarises. `smooth` > 1 draws
    the rolling mean of the median and quartiles over that many logged steps (a step-to-step noisy statistic)."""
    import numpy as np

    plt = _plt()
    panels = [(k, y) for k, y in panels if (stats["key"] == k).any()]
    if not panels:
        return []
    sub = stats[stats["key"].isin([k for k, _ in panels])].merge(runs[["run_id", "arch", "label"]], on="run_id")
    sub = sub[np.isfinite(sub["value"].astype(float))]
    archs = sorted(sub["arch"].unique())
    order = _row_labels(runs, info)
    style = styles(order)
    fig, axes = plt.subplots(
        len(panels), len(archs), figsize=(5.0 * len(archs), 3.4 * len(panels)), squeeze=False, sharex=True
    )
    legend = {name: f"{name} (n={n})" for name, n in sub.groupby("label")["run_id"].nunique().items()}
    for row, (key, ylabel) in zip(axes, panels):
        for ax, arch in zip(row, archs):
            by_row = dict(tuple(sub[(sub["key"] == key) & (sub["arch"] == arch)].groupby("label")))
            medians = []
            for name in (name for name in order if name in by_row):
                q = by_row[name].groupby("step")["value"].quantile([0.25, 0.5, 0.75]).unstack()
                q = q.rolling(smooth, center=True, min_periods=1).mean()
                steps, colour = q.index.to_numpy(), style[name]["color"]
                medians.append(q[0.5].to_numpy())
                ax.plot(steps, medians[-1], lw=1.1, color=colour, label=legend[name])
                ax.fill_between(steps, q[0.25].to_numpy(), q[0.75].to_numpy(), color=colour, alpha=0.08, lw=0)
            if medians:  # the axis spans the medians (a run's spike widens a band, not the axis)
                low, high = np.percentile(np.concatenate(medians), [1, 99])
                pad = 0.15 * (high - low) or 0.5
                ax.set_ylim(low - pad, high + pad)
            ax.set_title(arch)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("G step")
    smoothed = f"; rolling mean over {smooth} logged steps" if smooth > 1 else ""
    fig.suptitle(
        f"median over each row's runs that logged the step (every s_G, s_D, seed; n: runs on both archs); "
        f"band: interquartile range"
        f"{smoothed}",
        fontsize=8,
    )
    fig.tight_layout()
    _legend_outside(fig, axes.ravel(), [legend[name] for name in order if name in legend])
    return _save(fig, out, stem)


def cell_curves(stats: pd.DataFrame, runs: pd.DataFrame, key: str, ylabel: str, stem: str, out: Path) -> list[Path]:
    """One panel per arch, one line per table cell (label, s_G, s_D): the geometric mean of `key` over the cell's
    seeds at each G step all of them logged, with a band of one standard deviation of its log, on a log axis.
    Shows whether a method is still improving where the protocol scores it, and how far its seeds spread."""
    import numpy as np

    plt = _plt()
    sub = stats[stats["key"] == key].merge(runs[["run_id", "arch", "label", "sg", "sd"]], on="run_id")
    sub = sub[sub["value"] > 0]
    if sub.empty:
        return []
    archs = sorted(sub["arch"].unique())
    lines = sorted({(name, sg, sd) for name, sg, sd in sub[["label", "sg", "sd"]].itertuples(index=False)})
    style = styles([f"{name} sG={sg:g} sD={sd:g}" for name, sg, sd in lines])  # one colour per line
    dashes = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for (name, sg, sd), g in sub[sub["arch"] == arch].groupby(["label", "sg", "sd"], sort=True):
            table = np.log(g.pivot_table(index="step", columns="run_id", values="value").dropna())
            if table.empty:
                continue
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=1).fillna(0.0)
            steps = table.index.to_numpy()
            key = f"{name} sG={sg:g} sD={sd:g}"
            colour = style[key]["color"]
            dash = dashes[list(style).index(key) // 10 % len(dashes)]
            ax.plot(steps, np.exp(mean.to_numpy()), lw=1.2, color=colour, ls=dash, label=f"{key} (n={table.shape[1]})")
            ax.fill_between(steps, np.exp((mean - std).to_numpy()), np.exp((mean + std).to_numpy()), color=colour,
                            alpha=0.12, lw=0)  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(arch)
        ax.set_xlabel("G step")
        ax.set_ylabel(ylabel)
    _legend_outside(fig, axes[0])
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

"""Measured time beside the FLOPs: per machine and thread count, relative to the dense GAN measured alike."""

from __future__ import annotations

import pandas as pd

from sparsebench.analysis.cells import MethodInfo, cell_variant
from sparsebench.report.tables import Cell, Table, _grid, _grid_columns

BUSY_LOAD = 1.1  # load average per core above which a run's measured time is flagged (others shared its cores)


def _quiet_if_any(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs whose time was measured on a quiet machine, where there are any (mark ""); else all of them,
    marked † if some ran beside other work or ? if some have no load record."""
    load = runs["load_per_core"].astype(float) if "load_per_core" in runs else pd.Series(float("nan"), runs.index)
    quiet = load.notna() & (load <= BUSY_LOAD)
    if quiet.any():
        return runs[quiet], ""
    return runs, "†" if bool((load > BUSY_LOAD).any()) else "?"


def time_tables(df: pd.DataFrame, title: str = "Table 2 (measured time)", methods=None) -> list[Table]:
    """Measured wall-clock time beside Table 2's FLOPs: one table per machine and thread count, since times
    of different machines do not compare. Each cell: the mean G training step (evaluation excluded) and G's
    sampling time per image, mean over the seeds done, and both relative to the dense GAN of the same arch
    measured on the same machine with the same threads."""
    info = MethodInfo.of(methods)
    mean = df["train_s_per_step"] if "train_s_per_step" in df else pd.Series(float("nan"), df.index)
    median = df["train_s_per_step_median"] if "train_s_per_step_median" in df else pd.Series(float("nan"), df.index)
    # the mean G step where stored; runs stored before it was kept have their median step alone (‡)
    df = df.assign(step_s=mean.astype(float).fillna(median.astype(float)), step_is_mean=mean.notna())
    done = df[(df["status"] == "done") & df["step_s"].notna()].copy()
    if done.empty or "machine" not in done:
        return []
    done["machine"] = done["machine"].fillna("unknown machine")
    done["threads"] = done["threads"].fillna(0).astype(int)
    tables = []
    for (machine, threads), here_df in done.groupby(["machine", "threads"], sort=True):
        dense = here_df[(here_df["method"] == "dense") & (cell_variant(here_df) == "")]
        ref = {  # per arch and measure (mean or median step); a dense GAN measured only beside other work is none
            (arch, is_mean): (float(g["step_s"].mean()), float(g["infer_ms_per_image"].mean()))
            for (arch, is_mean), (g, mark) in (
                (key, _quiet_if_any(g)) for key, g in dense.groupby(["arch", "step_is_mean"])
            )
            if mark != "†"
        }

        def make(key, here: pd.DataFrame, ref=ref) -> Cell:
            if here.empty:
                return Cell("n/a")
            is_mean = bool(here["step_is_mean"].any())  # a cell's means where it has any: never mixed
            used, mark = _quiet_if_any(here[here["step_is_mean"] == is_mean])
            mark += "" if is_mean else "‡"
            tr, inf = float(used["step_s"].mean()), float(used["infer_ms_per_image"].mean())
            base = ref.get((key[2], is_mean))
            rel = (tr / base[0], inf / base[1]) if base else (None, None)
            show = lambda v, r: f"{v:.3g}" + (f" ({r:.2f}×)" if r is not None else "")  # noqa: E731
            n = f"n={len(used)}" + (f" of {len(here)}" if len(used) < len(here) else "")
            return Cell(
                f"{show(1000 * tr, rel[0])} / {show(inf, rel[1])} ({n}){mark}",
                value=rel[0],
                note=mark,
            )

        cols, rows = _grid(here_df, make, info)
        tables.append(
            Table(
                f"{title}, {machine}, {threads} thread{'s' if threads != 1 else ''}",
                "Measured time: mean training G step in ms (its D steps, topology updates and balance-ratio probes "
                "included, evaluation excluded) / G "
                "sampling time per image in ms at the evaluation batch, mean over seeds, and relative to the "
                "dense GAN of the same arch on the same machine and threads (× < 1: faster; not shown where that "
                "dense GAN was only measured beside other work). Where some of "
                f"a cell's runs were measured on a quiet machine (load at most {BUSY_LOAD:g} per core), only "
                "those count (n=k of m). Otherwise: † some runs ended with a higher load (other work beside "
                "them): their times are not the method's alone; ? the load was not recorded. ‡ runs stored before "
                "the mean step was kept: their median G step, a typical step without topology updates or probes, "
                "set against the dense GAN's median (never against a mean).",
                ["Method", "s_D (%)"],
                _grid_columns(cols),
                rows,
            )
        )
    return tables

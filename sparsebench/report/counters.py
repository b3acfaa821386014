"""What the methods count of their own work: the numeric result columns they declare (`Method.result_columns`),
per cell. The core names no column here; a method that declares one gets it tabulated."""

from __future__ import annotations

import numbers

import pandas as pd

from sparsebench.analysis.cells import MethodInfo
from sparsebench.report.tables import Cell, Table
from sparsebench.store import method_columns

CELL = ["method", "label", "arch", "sg", "sd"]  # a row of the table: a report row at one (arch, s_G, s_D)


def _number(x: float) -> str:
    if float(x).is_integer():
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3g}"


def _numeric(values: pd.Series) -> bool:
    """Whether a declared column holds numbers: every value stored is one (a run id of digits is text)."""
    stored = values.dropna()
    return len(stored) > 0 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in stored)


def _summary(values: pd.Series) -> str:
    """The mean over a cell's runs, with [min-max] where they differ."""
    low, high, mean = float(values.min()), float(values.max()), float(values.mean())
    return _number(mean) if low == high else f"{_number(mean)} [{_number(low)}-{_number(high)}]"


def counters_table(df: pd.DataFrame, methods=None, title: str = "Method counters") -> Table | None:
    """One row per cell (report row, arch, s_G, s_D) of a method that declares numeric result columns: the
    done runs' mean of each, [min-max] where they differ. None when no method declares a numeric one."""
    info = MethodInfo.of(methods)
    declared = {name: method_columns([m]) for name, m in info.methods.items()}
    done = df[df["status"] == "done"]
    numeric = {}  # the declared columns holding numbers, per method
    for method, runs in done.groupby("method", sort=False):
        cols = [c for c in declared.get(method, []) if c in runs]
        numeric[method] = [c for c in cols if _numeric(runs[c])]
    columns = list(dict.fromkeys(c for m in sorted(numeric, key=info.rank) for c in numeric[m]))
    if not columns:
        return None
    rows = []
    cells_of = dict(tuple(done[done["method"].map(lambda m: bool(numeric[m]))].groupby(CELL)))
    for method, name, arch, sg, sd in sorted(cells_of, key=lambda k: (info.rank(k[0]), k[1], k[2], -k[3], k[4])):
        here = cells_of[(method, name, arch, sg, sd)]
        cells = [Cell(str(len(here)))]
        for col in columns:
            values = here[col].dropna().astype(float) if col in numeric[method] else pd.Series()
            cells.append(Cell(_summary(values) if len(values) else ""))
        rows.append(([name, arch, f"{100 * sg:g}", f"{100 * sd:g}"], cells))
    return Table(
        title,
        "What each method counts of its own work, as it declares it (its result columns; the methods' "
        "documentation says what each means): the mean over a cell's done runs, [min-max] where they differ; "
        "blank where a method does not count it.",
        ["Method", "arch", "s_G (%)", "s_D (%)"],
        [("", "runs")] + [("", c) for c in columns],
        rows,
    )

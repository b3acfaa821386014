"""The paper's table layouts, computed from the flat results table.

A table is a list of rows of `Cell`s with a two-level column header (arch, s_G); rendering to
Markdown or LaTeX is done elsewhere, so both formats show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

METHOD_ORDER = ["dense", "small-dense", "pf-global", "pf-uniform", "gan-tickets", "static", "stugan"]
METHOD_TITLES = {
    "dense": "Dense GAN", "small-dense": "Small Dense GAN", "pf-global": "PF (global)",
    "pf-uniform": "PF (uniform)", "gan-tickets": "GAN Tickets", "static": "Static Sparse GAN", "stugan": "STU-GAN",
}
BAD = ("failed", "diverged")


@dataclass
class Cell:
    text: str  # plain text, format-neutral: "12.34 ± 0.56 / 8.12 ± 0.03 (n=3)"
    value: float | None = None  # what "best" compares (lower is better)
    bold: bool = False
    parts: list = field(default_factory=list)  # (mean, std) pairs for LaTeX rendering
    note: str = ""


@dataclass
class Table:
    title: str
    caption: str
    row_header: list[str]
    columns: list[tuple[str, str]]  # (group, label)
    rows: list[tuple[list[str], list[Cell]]]


def label(row) -> str:
    title = METHOD_TITLES.get(row["method"], row["method"])
    return f"{title} [{row['variant']}]" if isinstance(row.get("variant"), str) and row["variant"] else title


def labels(df: pd.DataFrame) -> pd.Series:
    """`label` for every row of a results frame, vectorised."""
    titles = df["method"].map(lambda m: METHOD_TITLES.get(m, m))
    variant = df["variant"].fillna("").astype(str)
    return titles.where(variant == "", titles + " [" + variant + "]")


def _order(df: pd.DataFrame) -> list[tuple[str, str, float]]:
    keys = df[["method", "variant", "sd"]].drop_duplicates().itertuples(index=False)
    rank = lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)  # noqa: E731
    return sorted(keys, key=lambda k: (rank(k[0]), k[0], k[1] or "", k[2]))


def _columns(df: pd.DataFrame) -> list[tuple[str, float]]:
    cols = []
    for arch in sorted(df["arch"].unique()):
        sgs = sorted({sg for sg in df.loc[df["arch"] == arch, "sg"] if sg > 0}, reverse=True) or [0.0]
        cols += [(arch, sg) for sg in sgs]
    return cols


def _stat(values: pd.Series) -> tuple[float, float | None]:
    values = values.dropna().astype(float)
    mean = float(values.mean())
    return mean, (float(values.std(ddof=1)) if len(values) > 1 else None)


def _fmt(mean: float, std: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _cells(df: pd.DataFrame, make) -> tuple[list, list]:
    """Rows (method, variant, s_D) x columns (arch, s_G); methods without s_G fill every column."""
    df = df.copy()
    df["variant"] = df["variant"].fillna("")
    cols = _columns(df)
    groups = dict(tuple(df.groupby(["method", "variant", "sd", "arch", "sg"], sort=False)))
    empty = df.iloc[0:0]
    sgs: dict[tuple, set] = {}
    for method, variant, sd, _, sg in groups:
        sgs.setdefault((method, variant, sd), set()).add(sg)
    rows = []
    for method, variant, sd in _order(df):
        broadcast = sgs[(method, variant, sd)] == {0.0}
        cells = [make(groups.get((method, variant, sd, arch, 0.0 if broadcast else sg), empty)) for arch, sg in cols]
        rows.append(([label({"method": method, "variant": variant}), f"{100 * sd:g}"], cells))
    return cols, rows


def _mark_best(rows, n_cols: int) -> None:
    for j in range(n_cols):
        vals = [(r[1][j].value, i) for i, r in enumerate(rows) if r[1][j].value is not None]
        if vals:
            best = min(v for v, _ in vals)
            for v, i in vals:
                if v == best:
                    rows[i][1][j].bold = True


def _status_note(here: pd.DataFrame) -> str:
    counts = here["status"].value_counts()
    notes = [f"{int(counts[s])} {s}" for s in BAD if s in counts]
    running = int(counts.get("running", 0))
    if running:
        notes.append(f"{running} running")
    return ", ".join(notes)


def quality_table(df: pd.DataFrame, title: str = "Table 1") -> Table:
    def make(here: pd.DataFrame) -> Cell:
        done = here[(here["status"] == "done") & here["fid"].notna()]
        note = _status_note(here)
        if done.empty:
            return Cell("n/a" + (f" ({note})" if note else ""), note=note)
        fid, is_ = _stat(done["fid"]), _stat(done["is_mean"])
        text = f"{_fmt(*fid)} / {_fmt(*is_)} (n={len(done)}" + (f"; {note})" if note else ")")
        return Cell(text, value=fid[0], parts=[fid, is_], note=f"n={len(done)}" + (f"; {note}" if note else ""))

    cols, rows = _cells(df, make)
    _mark_best(rows, len(cols))
    return Table(
        title, "(FID ↓ / IS ↑), mean ± std over seeds, n = seeds done; failed or diverged runs are counted, "
        "not dropped; best FID per column in bold.",
        ["Method", "s_D (%)"], [(a, f"s_G = {100 * sg:g}%") for a, sg in cols], rows,
    )


def cost_table(df: pd.DataFrame, title: str = "Table 2") -> Table:
    def make(here: pd.DataFrame) -> Cell:
        done = here[(here["status"] == "done") & here["train_flops"].notna()]
        if done.empty:
            return Cell("n/a")
        tr, te = float(done["train_flops"].mean()), float(done["test_flops"].mean())
        trr, ter = float(done["train_flops_rel"].mean()), float(done["test_flops_rel"].mean())
        return Cell(f"{tr:.3g} ({trr:.2f}×) / {te:.3g} ({ter:.2f}×)", value=trr,
                    parts=[(tr, trr), (te, ter)])

    cols, rows = _cells(df, make)
    _mark_best(rows, len(cols))
    return Table(
        title, "Training FLOPs / testing FLOPs (one generator forward for one image), absolute and "
        "normalised to the dense GAN of the same arch and preset; fvcore's convention (1 FMA = 1 FLOP). "
        "Fewest training FLOPs in bold.",
        ["Method", "s_D (%)"], [(a, f"s_G = {100 * sg:g}%") for a, sg in cols], rows,
    )


def length_table(df: pd.DataFrame) -> Table | None:
    """Table 3: STU-GAN at 1x and at longer training lengths (the `length` option)."""
    stu = df[df["method"] == "stugan"].copy()
    stu["variant"] = stu["variant"].fillna("")
    longer = stu["variant"].str.contains(r"(?:^|,)length=\d+", regex=True)
    if not longer.any():
        return None
    base = stu[stu["variant"] == ""]
    return quality_table(pd.concat([base, stu[longer]]), "Table 3")

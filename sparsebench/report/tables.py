"""The report's tables, laid out from an `Analysis` (`sparsebench.analysis.comparisons`) and the flat results
table. Nothing here computes a statistic: a table only lays out what the analysis decided.

A table is a list of rows of `Cell`s under a two-level column header (arch, s_G), or a flat one (one group);
rendering to Markdown or LaTeX is done elsewhere, so both formats show the same numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from sparsebench.analysis.cells import CELL_KEYS, MethodInfo, cell_variant, label
from sparsebench.analysis.comparisons import COLLAPSE_IS, OVER_BUDGET, TARGET_RATIO, Analysis, analyse
from sparsebench.analysis.stats import MARGIN
from sparsebench.flop_conventions import CONVENTION_NOTES, PAPER_FLOPS_PER_FMA


@dataclass
class Cell:
    text: str  # plain text, format-neutral
    value: float | None = None  # what "best" compares (lower is better)
    bold: bool = False
    note: str = ""


@dataclass
class Table:
    title: str
    caption: str
    row_header: list[str]
    columns: list[tuple[str, str]]  # (group, label); group "" for a flat table
    rows: list[tuple[list[str], list[Cell]]]


def _order(df: pd.DataFrame, info: MethodInfo) -> list[tuple[str, str, float]]:
    keys = df[["method", "variant", "sd"]].drop_duplicates().itertuples(index=False)
    return sorted(keys, key=lambda k: (info.rank(k[0]), k[1] or "", k[2]))


def _columns(df: pd.DataFrame) -> list[tuple[str, float]]:
    cols = []
    for arch in sorted(df["arch"].unique()):
        sgs = sorted({sg for sg in df.loc[df["arch"] == arch, "sg"] if sg > 0}, reverse=True) or [0.0]
        cols += [(arch, sg) for sg in sgs]
    return cols


def _grid(df: pd.DataFrame, make, info: MethodInfo) -> tuple[list, list]:
    """Rows (method, variant, s_D) x columns (arch, s_G). A method without s_G (the dense GAN) shows its cell once
    per arch, in the arch's first column.

    `make(key, runs)` builds one cell from its key (method, variant, arch, s_G, s_D) and its runs."""
    df = df.copy()
    df["variant"] = cell_variant(df)
    cols = _columns(df)
    groups = dict(tuple(df.groupby(["method", "variant", "sd", "arch", "sg"], sort=False)))
    empty = df.iloc[0:0]
    sgs: dict[tuple, set] = {}
    for method, variant, sd, _, sg in groups:
        sgs.setdefault((method, variant, sd), set()).add(sg)
    first = {arch: min(j for j, (a, _) in enumerate(cols) if a == arch) for arch, _ in cols}
    rows = []
    for method, variant, sd in _order(df, info):
        cells = []
        dense = sgs[(method, variant, sd)] == {0.0}
        for j, (arch, sg) in enumerate(cols):
            if dense and j != first[arch]:
                cells.append(Cell(""))
                continue
            sg = 0.0 if dense else sg
            cells.append(make((method, variant, arch, sg, sd), groups.get((method, variant, sd, arch, sg), empty)))
        rows.append(([label({"method": method, "variant": variant}, info), f"{100 * sd:g}"], cells))
    return cols, rows


def _grid_columns(cols) -> list[tuple[str, str]]:
    return [(a, f"s_G = {100 * sg:g}%" if sg else "dense") for a, sg in cols]


def _status_note(rec: dict | None, here: pd.DataFrame) -> str:
    counts = here["status"].value_counts()
    notes = [f"{int(counts[s])} {s}" for s in ("failed", "diverged", "running") if s in counts]
    return ", ".join(notes)


def _fid_text(rec: dict) -> str:
    """One cell's FID: the geometric mean over seeds with n; where runs collapsed, how many and the median."""
    text = f"{rec['fid_geomean']:.2f} (n={rec['n']})"
    if rec.get("collapsed"):
        text += f"; {rec['collapsed']}/{rec['n']} collapsed, median {rec['fid_median']:.2f}"
    if rec.get("below_floor"):
        text += "; below the floor"
    return text


def quality_table(df: pd.DataFrame, analysis: Analysis, title: str = "Table 1", methods=None) -> Table:
    """Table 1: one FID per cell (geometric mean over seeds, n); bold only where a confirmatory comparison found
    the cell better than its reference at no more than OVER_BUDGET x its training FLOPs."""
    info = MethodInfo.of(methods)
    records = {tuple(r[k] for k in CELL_KEYS): r for r in analysis.cells}

    def make(key, here: pd.DataFrame) -> Cell:
        note = _status_note(None, here)
        rec = records.get(key)
        if rec is None or not rec["n"]:
            return Cell("n/a" + (f" ({note})" if note else ""))
        if rec["duplicate_seeds"]:  # one seed twice in a cell: an error to resolve, never averaged
            twice = "; ".join(f"seed {s} stored twice: {', '.join(ids)}" for s, ids in rec["duplicate_seeds"].items())
            return Cell(f"error: {twice}")
        if rec["mixed_content"]:  # the data or extractor changed between seeds: an error, never averaged
            parts = "; ".join(f"{', '.join(ids)} on data/extractor {h}" for h, ids in rec["mixed_content"].items())
            return Cell(f"error: runs scored on different data or features ({parts}); keep them in separate stores")
        text = _fid_text(rec) + (f"; {note}" if note else "")
        return Cell(text, value=rec["fid_geomean"], bold=bool(rec.get("bold")))

    cols, rows = _grid(df, make, info)
    return Table(
        title,
        "FID ↓: geometric mean over the seeds done (n = distinct seeds). A run is collapsed when its IS is below "
        f"{COLLAPSE_IS:g} (its samples hold hardly one class's worth of recognisable, distinct images); a cell with "
        "collapsed runs gives their count and its median. Failed, diverged or running runs are counted, not "
        "dropped. Runs share a cell only when every setting but the seed is the same (the row label names those "
        "off the "
        "method's defaults). The dense GAN is shown once per arch. 'Below the floor': the cell's 95 % interval "
        "lies below the FID floor's (held-out real images score higher: the generator fits its training images "
        "more closely than unseen real images do, which the score cannot tell from quality). Bold: better than its "
        "reference in a confirmatory comparison (a declared study; see the comparison tables) at no more than "
        f"{OVER_BUDGET:g}x the reference's training FLOPs; every other comparison is exploratory.",
        ["Method", "s_D (%)"],
        _grid_columns(cols),
        rows,
    )


def is_table(df: pd.DataFrame, analysis: Analysis, title: str = "Table 1 (IS)", methods=None) -> Table:
    """Inception Score per cell: mean ± std over the seeds done."""
    info = MethodInfo.of(methods)
    records = {tuple(r[k] for k in CELL_KEYS): r for r in analysis.cells}

    def make(key, here: pd.DataFrame) -> Cell:
        rec = records.get(key)
        if rec is None or rec.get("is_mean") is None:
            return Cell("n/a")
        std = f" ± {rec['is_std']:.2f}" if rec.get("is_std") is not None else ""
        return Cell(f"{rec['is_mean']:.2f}{std} (n={rec['n']})", value=-rec["is_mean"])

    cols, rows = _grid(df, make, info)
    return Table(
        title,
        "IS ↑ (with the feature extractor of the protocol table), mean ± std over the seeds done.",
        ["Method", "s_D (%)"],
        _grid_columns(cols),
        rows,
    )


def _interval(low: float | None, high: float | None) -> str:
    return f"[{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""


def _pvalue(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return f"{p:.2g}" if p >= 1e-3 else "< 0.001"


def comparison_table(analysis: Analysis, methods=None, title: str = "Comparisons") -> Table | None:
    """Every cell against its reference: the FID ratio with its 95 % interval, the test and its pairs, the
    verdict; confirmatory rows (a declared study's, on its seeds, Holm-adjusted) first, then the exploratory."""
    info = MethodInfo.of(methods)
    recs = [r for r in analysis.cells if r["reference"] is not None]
    if not recs:
        return None
    recs.sort(key=lambda r: (not r["confirmatory"], r["arch"], info.rank(r["method"]), r["variant"], -r["sg"]))
    rows = []
    for r in recs:
        name = label({"method": r["method"], "variant": r["variant"]}, info)
        ref = info.title(r["reference"])
        dense_ref = info.fixed(r["reference"]) == {"sg": 0.0, "sd": 0.0}  # no masks: any scope
        cells = [
            Cell(r["arch"]),
            Cell(f"{100 * r['sg']:g}"),
            Cell(f"{100 * r['sd']:g}"),
            Cell(str(r.get("scope") or "")),
            Cell(ref + (" (dense)" if dense_ref else f" ({r.get('scope')})")),
        ]
        if r["ratio"] is None:
            why = (
                f"{len(r['reference_cells'])} {ref} cells match"
                if r.get("reference_cells")
                else "scored on other data or features"
                if r.get("reference_content_differs")
                else f"no {ref} run with {r['reference_settings']}"
                if not r["n_reference"]
                else "too few seeds"
            )
            cells += [Cell(""), Cell(""), Cell(why), Cell(""), Cell("")]
        else:
            pairs = f"{r['pairs']} pairs" if r["pairs"] else f"n = {r['n']} / {r['n_reference']}"
            unpaired = r.get("unpaired") or {}
            left = unpaired.get("method", 0) + unpaired.get("reference", 0)
            cells += [
                Cell(f"{r['test']}, {pairs}" + (f" ({left} seeds unpaired)" if left else "")),
                Cell(f"{r['ratio']:.3f} {_interval(r['ratio_low'], r['ratio_high'])}"),
                Cell(r["verdict"] or ""),
                Cell(f"{r['train_flops_vs_reference']:.2f}x" if r["train_flops_vs_reference"] else ""),
                Cell(f"confirmatory ({r['study']})" if r["confirmatory"] else "exploratory"),
            ]
        rows.append(([name], cells))
    planning = "; ".join(
        f"{arch}: {p['seeds_for_20pct'] or 'over 10,000'} seeds per arm (sd of log ratios {p['sd_log']:.3f} pooled "
        f"over {p['comparisons']} comparisons, {p['df']} df)"
        for arch, p in sorted(analysis.planning.items())
    )
    return Table(
        title,
        "Each cell against its method's reference (same settings, length and sparse scope included: a comparison "
        "never joins two scopes, and a row whose scope is not the preset's says so in its label; at the "
        "reference's own s_G and s_D where it fixes them: a dense reference has no masks, so no scope). "
        "Ratio = FID / the reference's FID (< 1: lower FID than the reference), the "
        "geometric mean of per-seed ratios with its 95 % interval from a paired t test on log FID over the seeds "
        "both arms hold (a seed fixes both arms' initial weights, data order and evaluation samples; seeds one arm "
        "lacks are left out and counted), or Welch's t test on log FID where they share fewer than 2 seeds. "
        "Verdicts from intervals only: better / worse when the 95 % interval excludes 1; equivalent within 20 % "
        f"when the 90 % interval lies inside [{MARGIN[0]:g}, {MARGIN[1]:g}] (two one-sided tests); else undecided. "
        "A cell below the FID floor is never 'better'. Confirmatory rows are a declared study's comparisons, on its "
        "seeds, Holm-adjusted (see its table); every other row is exploratory: a verdict there is a lead, not a "
        "finding, and comparisons at 2-3 seeds say little. FLOPs: the cell's training FLOPs relative to the "
        f"reference's. Planning (seeds per arm to detect a ratio of {TARGET_RATIO:g} at 80 % power, paired): "
        + (planning or "no arch has paired comparisons to pool"),
        ["Method"],
        [("", "arch"), ("", "s_G (%)"), ("", "s_D (%)"), ("", "scope"), ("", "vs (its scope)"), ("", "test")]
        + [("", "ratio [95 % CI]"), ("", "verdict"), ("", "FLOPs vs ref"), ("", "kind")],
        rows,
    )


def study_tables(analysis: Analysis, methods=None) -> list[Table]:
    """One table per declared study: its comparisons on its seeds (ratio, interval, p, Holm-adjusted p and
    equivalence p, Wilcoxon's p, verdict) and, apart, the same comparisons on the pilot seeds (exploratory)."""
    info = MethodInfo.of(methods)
    tables = []
    for s in analysis.studies:
        rows = []
        for c in s["comparisons"]:
            name = f"{info.title(c['method'])} vs {info.title(c['reference'])}"
            head = [Cell(c["arch"]), Cell(f"{100 * c['sg']:g}"), Cell(f"{100 * float(c['sd']):g}")]
            r = c.get("ratio")
            if r is None:
                why = c.get("problem", "fewer than 2 declared seeds done in both arms")
                rows.append(([name], head + [Cell(why)] + [Cell("")] * 7))
                continue
            pilot = c.get("pilot")
            unpaired = r.unpaired_method + r.unpaired_reference
            rows.append(
                (
                    [name],
                    head
                    + [
                        Cell(f"{r.pairs} pairs" + (f" (+{unpaired} unpaired)" if unpaired else "")),
                        Cell(f"{r.ratio:.3f} {_interval(r.low, r.high)}"),
                        Cell(_pvalue(r.p)),
                        Cell(_pvalue(c.get("p_holm"))),
                        Cell(_pvalue(c.get("p_equivalence_holm"))),
                        Cell(_pvalue(c.get("wilcoxon_p"))),
                        Cell(c.get("verdict", ""), bold=c.get("verdict") == "better"),
                        Cell(
                            f"{pilot.ratio:.3f} {_interval(pilot.low, pilot.high)}, {c['pilot_verdict']}"
                            if pilot is not None
                            else ""
                        ),
                    ],
                )
            )
        held = ""
        if s["missing"]:
            held += (
                " Declared seeds not yet done: "
                + "; ".join(f"{arm} {_seed_ranges(seeds)}" for arm, seeds in s["missing"].items())
                + "."
            )
        if s["extra"]:
            held += (
                " The store holds seeds the study did not declare (not used here): "
                + "; ".join(f"{arm} {_seed_ranges(seeds)}" for arm, seeds in s["extra"].items())
                + "."
            )
        tables.append(
            Table(
                f"Study {s['name']}",
                f"{s['title']}, declared {s['declared']} in {s['path']} before its runs: {s['question']} "
                f"Seeds {_seed_ranges(s['seeds'])}; {s['test']} on log FID, alpha {s['alpha']:g} family-wise, "
                f"{s['correction']} over its {len(s['comparisons'])} comparisons (p Holm); equivalence within "
                f"[{s['equivalence'][0]:g}, {s['equivalence'][1]:g}] by two one-sided tests, Holm-adjusted (TOST p "
                f"Holm); {s['sensitivity']} signed-rank test on the per-seed log ratios as sensitivity (it decides "
                f"nothing). Verdict: better / worse where p Holm < alpha, else equivalent where TOST p Holm < alpha, "
                f"else undecided. Pilot: the same comparison on seeds {_seed_ranges(s['pilot_seeds'])}, analysed "
                "before the study was declared (exploratory, unadjusted, never pooled)." + held,
                ["Comparison"],
                [("", "arch"), ("", "s_G (%)"), ("", "s_D (%)"), ("", "pairs"), ("", "ratio [95 % CI]"), ("", "p")]
                + [("", "p Holm"), ("", "TOST p Holm"), ("", "Wilcoxon p"), ("", "verdict"), ("", "pilot")],
                rows,
            )
        )
    return tables


def _seed_ranges(seeds) -> str:
    """Seeds as ranges: 0-9, 12, 14-15."""
    seeds = sorted(int(s) for s in seeds)
    if not seeds:
        return "none"
    parts, start = [], seeds[0]
    for prev, cur in zip(seeds, seeds[1:] + [None]):
        if cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(parts)


def _mark_best(rows, n_cols: int) -> None:
    """Bold the lowest value of each column."""
    for j in range(n_cols):
        vals = [(r[1][j].value, i) for i, r in enumerate(rows) if r[1][j].value is not None]
        if vals:
            best = min(v for v, _ in vals)
            for v, i in vals:
                if v == best:
                    rows[i][1][j].bold = True


def cost_table(df: pd.DataFrame, title: str = "Table 2", convention: str = "fvcore", methods=None) -> Table:
    """Training / testing FLOPs from the store (fvcore counts), shown in `convention` (see `CONVENTIONS`)."""
    scale = PAPER_FLOPS_PER_FMA if convention == "paper" else 1.0

    def make(key, here: pd.DataFrame) -> Cell:
        done = here[(here["status"] == "done") & here["train_flops"].notna()]
        if done.empty:
            return Cell("n/a")
        tr, te = scale * float(done["train_flops"].mean()), scale * float(done["test_flops"].mean())
        # as stored: against the dense GAN of the run's own arch, data and length, counted (not looked up)
        trr = float(done["train_flops_rel"].mean())
        ter = float(done["test_flops_rel"].mean())
        # a sparse G beside a dense D: the store's count has D dense, the paper's would scale by G's density
        mark = "†" if convention == "paper" and key[3] > 0 and key[4] == 0 else ""
        return Cell(f"{tr:.3g} ({trr:.2f}×{mark}) / {te:.3g} ({ter:.2f}×)", value=trr, note=mark)

    cols, rows = _grid(df, make, MethodInfo.of(methods))
    _mark_best(rows, len(cols))
    return Table(
        title,
        "Training FLOPs / testing FLOPs (one generator forward for one image), absolute and "
        "relative to a dense GAN of the same arch and data set trained as long as the run (G steps of its "
        "last phase at the same settings; its FLOPs are counted, whether or not such a run was trained), so a "
        "run of --steps 60 compares with 60 dense steps and PF's pre-training counts on top. Fewest training "
        "FLOPs in bold. " + CONVENTION_NOTES[convention],
        ["Method", "s_D (%)"],
        _grid_columns(cols),
        rows,
    )


def length_table(df: pd.DataFrame, methods=None, studies=()) -> Table | None:
    """Table 3: the methods that declare a `length_option` (STU-GAN's `length`), at 1x and trained longer."""
    info = MethodInfo.of(methods)
    df = df.assign(variant=cell_variant(df))
    parts = []
    for method, runs in df.groupby("method", sort=False):
        if not (option := info.length_option(method)):
            continue
        longer = runs["variant"].str.contains(rf"(?:^|,){re.escape(option)}=\d+", regex=True)
        if longer.any():
            parts += [runs[runs["variant"] == ""], runs[longer]]
    if not parts:
        return None
    subset = pd.concat(parts)
    return quality_table(subset, analyse(subset, info, references=df, studies=studies), "Table 3", info)

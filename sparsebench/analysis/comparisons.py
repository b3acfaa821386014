"""Cells and their comparisons: what Table 1, the comparison tables, the figures and `sparsebench results
--format json` report, computed once from the flat results table.

A cell (`sparsebench.analysis.cells`) is summarised on the log scale (geometric mean with its interval; median,
mean and sd beside it) with its collapsed runs counted. A cell whose method declares a reference is compared
with that reference's cell (`sparsebench.analysis.references`) as a ratio of FIDs: paired by seed where the two
share seeds (a seed fixes both arms' initial weights, data order and samples), Welch on log FID otherwise
(`sparsebench.analysis.stats`). Verdicts come from intervals only. Those comparisons are exploratory; the
comparisons a declared study names (`sparsebench.analysis.study`) are confirmatory: analysed on the study's
seeds only, Holm-adjusted over the study, with Wilcoxon's signed-rank test beside them; only a confirmatory win
is bold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sparsebench.analysis import stats
from sparsebench.analysis.cells import CELL_KEYS, Defaults, MethodInfo, cell_of, cell_variant, row_settings
from sparsebench.analysis.references import ReferenceIndex, describe_settings
from sparsebench.analysis.study import Study, seed_check

BAD = ("failed", "diverged")
OVER_BUDGET = 1.05  # training FLOPs relative to the reference above which a comparison says so and cannot be bold
# A run is collapsed when its Inception Score (with the protocol's feature extractor) is below this: its samples
# carry less than one and a half classes' worth of recognisable, distinct content, i.e. the generator lost its
# modes or produces no recognisable images. On reports/small every such run scored FID 540-950 and every other
# run FID 5-480 with IS 2.1 or more: the line falls in the gap, independently of the method and the arch.
COLLAPSE_IS = 1.5
TARGET_RATIO = 0.8  # the difference a design should detect: 20 % lower FID (log-symmetric: 1.25 higher)


@dataclass
class Analysis:
    cells: list[dict] = field(default_factory=list)  # one per cell, in the frame's order of cells
    studies: list[dict] = field(default_factory=list)  # one per declared study
    planning: dict[str, dict] = field(default_factory=dict)  # per arch: the spread seeds are planned from

    def cell(self, key: tuple) -> dict | None:
        """The record of the cell (method, variant, arch, sg, sd)."""
        for rec in self.cells:
            if tuple(rec[k] for k in CELL_KEYS) == key:
                return rec
        return None


def _seed_fids(runs: pd.DataFrame) -> dict[int, float]:
    return {int(s): float(f) for s, f in zip(runs["seed"], runs["fid"])}


def _mixed_content(ok: pd.DataFrame) -> dict[str, list[str]] | None:
    """The done runs of one cell by the content their FIDs were computed from (`data_hash/extractor_hash`),
    where there is more than one: the data set's files or the feature extractor changed between seeds under
    the same settings, so their scores do not measure one thing. None when they agree (or were not recorded)."""
    if not {"data_hash", "extractor_hash"} <= set(ok.columns):
        return None
    by: dict[str, list[str]] = {}
    for data, extractor, run_id in zip(ok["data_hash"], ok["extractor_hash"], ok["run_id"]):
        if isinstance(data, str) and data:
            by.setdefault(f"{data}/{extractor}", []).append(str(run_id))
    return {k: sorted(v) for k, v in sorted(by.items())} if len(by) > 1 else None


def _floor_se_by_content(pool: pd.DataFrame) -> dict[tuple, float]:
    """The floor's standard error per (data, extractor, sample count), from any run that recorded it: the floor is
    a property of that content, not of a run, so runs stored before the error was recorded borrow it."""
    out: dict[tuple, float] = {}
    if "fid_floor_se" not in pool:
        return out
    known = pool[pool["fid_floor_se"].notna()]
    for data, extractor, samples, se in zip(
        known["data_hash"], known["extractor_hash"], known["eval_samples"], known["fid_floor_se"]
    ):
        out.setdefault((data, extractor, samples), float(se))
    return out


def _floor(ok: pd.DataFrame, se_by: dict[tuple, float]) -> tuple[float | None, float | None]:
    """The FID floor the cell's runs were scored against and its standard error (None where not recorded)."""
    if "fid_floor" not in ok:
        return None, None
    floors = ok["fid_floor"].dropna().astype(float)
    if not len(floors):
        return None, None
    ses = [se_by.get(key) for key in zip(ok["data_hash"], ok["extractor_hash"], ok["eval_samples"])]
    known = [s for s in ses if s is not None]
    return float(floors.mean()), (max(known) if known else None)


def _collapsed(ok: pd.DataFrame) -> pd.Series | None:
    """Which of a cell's done runs collapsed (IS below COLLAPSE_IS); None where the runs have no IS."""
    if "is_mean" not in ok or ok["is_mean"].isna().any():
        return None
    return ok["is_mean"].astype(float) < COLLAPSE_IS


def _working(ok: pd.DataFrame, collapsed: pd.Series | None) -> float | None:
    """The geometric mean FID of a cell's runs that did not collapse, where some did and some did not."""
    if collapsed is None or not collapsed.any() or collapsed.all():
        return None
    return stats.summarise(ok.loc[~collapsed, "fid"].astype(float)).geomean


def _ratio_fields(r: stats.Ratio | None) -> dict[str, Any]:
    if r is None:
        return {k: None for k in ("ratio", "ratio_low", "ratio_high", "ratio_low90", "ratio_high90", "p")} | {
            "p_equivalence": None,
            "test": None,
            "pairs": None,
            "unpaired": None,
        }
    return {
        "ratio": r.ratio,
        "ratio_low": r.low,
        "ratio_high": r.high,
        "ratio_low90": r.low90,
        "ratio_high90": r.high90,
        "p": r.p,
        "p_equivalence": r.p_equivalence,
        "test": r.test,
        "pairs": r.pairs,
        "unpaired": {"method": r.unpaired_method, "reference": r.unpaired_reference},
    }


def analyse(
    df: pd.DataFrame, methods: Any = None, references: pd.DataFrame | None = None, studies: Iterable[Study] = ()
) -> Analysis:
    """The Analysis of a results frame (`sparsebench results` columns); `references`: the runs to look references
    up in (default: `df`'s own); `studies`: the declared studies whose comparisons are confirmatory."""
    info = MethodInfo.of(methods)
    out = Analysis()
    if df.empty:
        return out
    df = df.copy()
    df["variant"] = cell_variant(df)
    defaults = Defaults()
    flats = {i: row_settings(r) for i, r in zip(df.index, df.itertuples(index=False))}
    pool = df if references is None else references
    index = ReferenceIndex(pool, info, defaults)
    se_by = _floor_se_by_content(pool)
    by_key: dict[tuple, pd.DataFrame] = {}
    for key, runs in df.groupby(CELL_KEYS, sort=False):
        method, variant, arch, sg, sd = key
        by_key[key] = runs
        flat = flats[runs.index[0]]
        ok = runs[(runs["status"] == "done") & runs["fid"].notna()]
        twice = {int(s): sorted(g["run_id"].astype(str)) for s, g in ok.groupby("seed") if len(g) > 1}
        mixed = _mixed_content(ok)
        counts = runs["status"].value_counts()
        rec: dict[str, Any] = {
            "method": method,
            "variant": variant,
            "arch": arch,
            "sg": float(sg),
            "sd": float(sd),
            "cell": cell_of(runs.iloc[0], flat) if "cell" in runs else None,
            "steps": flat.get("train.steps"),
            "scope": flat.get("scope"),
            "n": int(ok["seed"].nunique()),
            "seeds": sorted(int(x) for x in ok["seed"].dropna().unique()),
            "failed": int(counts.get("failed", 0)),
            "diverged": int(counts.get("diverged", 0)),
            "running": int(counts.get("running", 0)),
            "duplicate_seeds": twice or None,
            "mixed_content": mixed,
        }
        summary = stats.summarise(ok["fid"].astype(float)) if len(ok) and not (twice or mixed) else None
        collapsed = _collapsed(ok) if summary is not None else None
        floor, floor_se = _floor(ok, se_by)
        below = summary is not None and floor is not None and stats.below_floor(summary, floor, floor_se)
        is_ok = ok["is_mean"].dropna().astype(float) if "is_mean" in ok else pd.Series(dtype=float)
        rec.update(
            fid_geomean=summary.geomean if summary else None,
            fid_low=summary.low if summary else None,
            fid_high=summary.high if summary else None,
            fid_median=summary.median if summary else None,
            fid_mean=summary.mean if summary else None,
            fid_sd=summary.sd if summary else None,
            collapsed=int(collapsed.sum()) if collapsed is not None else None,
            fid_geomean_working=_working(ok, collapsed),
            is_mean=float(is_ok.mean()) if len(is_ok) and summary else None,
            is_std=float(is_ok.std(ddof=1)) if len(is_ok) > 1 and summary else None,
            fid_floor=floor,
            fid_floor_se=floor_se,
            below_floor=below,
            reference=info.reference(method),
            reference_settings=None,
            reference_cells=None,
            n_reference=None,
            reference_content_differs=None,
            train_flops_vs_reference=None,
            confirmatory=False,
            study=None,
            verdict=None,
            seeds_for_20pct=None,
            **_ratio_fields(None),
        )
        if rec["reference"] is not None:
            _compare(rec, ok, flat, index, defaults, info, twice, mixed)
        out.cells.append(rec)
    out.planning = _planning(out.cells, by_key, index, info, defaults, flats)
    for rec in out.cells:
        rec["seeds_for_20pct"] = out.planning.get(rec["arch"], {}).get("seeds_for_20pct")
    out.studies = [_study(s, out, by_key, flats, index, info) for s in studies]
    return out


def _compare(rec, ok, flat, index: ReferenceIndex, defaults: Defaults, info: MethodInfo, twice, mixed) -> None:
    """The exploratory comparison of a cell with its reference's cell, over every seed both hold."""
    method, arch = rec["method"], rec["arch"]
    cells = index.lookup(rec["reference"], arch, rec["sg"], rec["sd"], flat)
    if len(cells) > 1:  # e.g. two code versions of the reference: name them, never pool them
        rec["reference_cells"] = sorted(cells)
    ref = index.runs(next(iter(cells.values())) if len(cells) == 1 else [])
    rec["reference_settings"] = describe_settings(flat, defaults(method, arch, str(flat.get("preset"))))
    rec["n_reference"] = int(ref["seed"].nunique())
    mine = float(ok["train_flops"].astype(float).mean()) if len(ok) else math.nan
    theirs = float(ref["train_flops"].astype(float).mean()) if len(ref) else math.nan
    if mine > 0 and theirs > 0:  # the training it took, against the reference's: more is no like-for-like win
        rec["train_flops_vs_reference"] = mine / theirs
    if ok.empty or ref.empty or twice or mixed or len(ref) != rec["n_reference"]:
        return
    if _mixed_content(pd.concat([ok, ref])):  # scored on other data or features than its reference
        rec["reference_content_differs"] = True
        return
    ratio = stats.compare(_seed_fids(ok), _seed_fids(ref))
    rec.update(_ratio_fields(ratio))
    if ratio is not None:
        rec["verdict"] = stats.verdict(ratio, below_floor=rec["below_floor"])


def _log_ratios(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [math.log(a[s] / b[s]) for s in sorted(set(a) & set(b))]


def _planning(cells, by_key, index: ReferenceIndex, info, defaults, flats) -> dict[str, dict]:
    """Per arch: the spread of per-seed log ratios pooled over its paired comparisons without a collapsed run, and
    the seeds per arm that spread needs to detect a 20 % ratio at 80 % power (planning information: one cell of
    2-3 seeds says nothing of it)."""
    groups: dict[str, list[list[float]]] = {}
    for rec in cells:
        if rec["test"] != stats.PAIRED or rec["collapsed"] or rec["reference"] is None:
            continue
        runs = by_key[tuple(rec[k] for k in CELL_KEYS)]
        ok = runs[(runs["status"] == "done") & runs["fid"].notna()]
        ref_cells = index.lookup(rec["reference"], rec["arch"], rec["sg"], rec["sd"], flats[runs.index[0]])
        ref = index.runs(next(iter(ref_cells.values())))
        ref_collapsed = _collapsed(ref)
        if ref_collapsed is not None and ref_collapsed.any():
            continue
        groups.setdefault(rec["arch"], []).append(_log_ratios(_seed_fids(ok), _seed_fids(ref)))
    out = {}
    for arch, logs in groups.items():
        pooled = stats.pooled_sd_log(logs)
        if pooled is None:
            continue
        sd, df = pooled
        out[arch] = {
            "sd_log": sd,
            "df": df,
            "comparisons": sum(len(g) >= 2 for g in logs),
            "seeds_for_20pct": stats.seeds_for_ratio(sd, TARGET_RATIO, paired=True),
        }
    return out


def _study(study: Study, analysis: Analysis, by_key, flats, index: ReferenceIndex, info: MethodInfo) -> dict:
    """A declared study: each comparison on the study's seeds, Holm over the study, Wilcoxon beside; the pilot
    seeds apart (exploratory); and what the store holds against what the study declared."""
    runs_table = study.runs
    rows = []
    stored: dict[tuple, set[int]] = {}
    for comp in study.comparisons:
        row: dict[str, Any] = {"arch": comp.arch, "sg": comp.sg, "sd": runs_table["sd"], "method": comp.method}
        row["reference"] = comp.reference
        found = _study_cells(study, comp, analysis, by_key, flats)
        row["cells"] = len(found)
        if len(found) != 1:
            row["problem"] = f"{len(found)} cells match this comparison's settings" if found else "no runs yet"
            rows.append(row)
            continue
        rec, runs = found[0]
        ok = runs[(runs["status"] == "done") & runs["fid"].notna()]
        ref_cells = index.lookup(comp.reference, comp.arch, rec["sg"], rec["sd"], flats[runs.index[0]])
        ref = index.runs(next(iter(ref_cells.values()))) if len(ref_cells) == 1 else index.runs([])
        mine, theirs = _seed_fids(ok), _seed_fids(ref)
        stored[(comp.arch, comp.sg, comp.method)] = set(mine)
        stored[(comp.arch, comp.sg, comp.reference)] = set(theirs)
        declared = set(study.seeds)
        confirm = stats.compare(
            {s: v for s, v in mine.items() if s in declared}, {s: v for s, v in theirs.items() if s in declared}
        )
        pilot_seeds = set(study.pilot_seeds)
        pilot = stats.compare(
            {s: v for s, v in mine.items() if s in pilot_seeds}, {s: v for s, v in theirs.items() if s in pilot_seeds}
        )
        logs = _log_ratios({s: v for s, v in mine.items() if s in declared}, theirs)
        row.update(
            key=tuple(rec[k] for k in CELL_KEYS),
            ratio=confirm,
            wilcoxon_p=stats.wilcoxon_p(logs) if confirm is not None and confirm.test == stats.PAIRED else None,
            pilot=pilot,
            pilot_verdict=stats.verdict(pilot) if pilot is not None else None,
            train_flops_vs_reference=rec["train_flops_vs_reference"],
            below_floor=rec["below_floor"],
        )
        rows.append(row)
    tested = [r for r in rows if r.get("ratio") is not None]
    p_holm = stats.holm([r["ratio"].p for r in tested]) if tested else []
    p_eq_holm = stats.holm([r["ratio"].p_equivalence for r in tested]) if tested else []
    for r, p, p_eq in zip(tested, p_holm, p_eq_holm):
        r["p_holm"], r["p_equivalence_holm"] = p, p_eq
        r["verdict"] = stats.verdict(r["ratio"], r["below_floor"], study.alpha, p, p_eq)
        cell = analysis.cell(r["key"])
        if cell is not None:  # the cell's comparison is the confirmatory one: the study's seeds, Holm-adjusted
            cell.update(_ratio_fields(r["ratio"]))
            cell.update(confirmatory=True, study=study.name, verdict=r["verdict"], p_holm=p)
            cell["p_equivalence_holm"] = p_eq
            cell["wilcoxon_p"] = r["wilcoxon_p"]
            cell["bold"] = (
                r["verdict"] == "better"
                and cell["train_flops_vs_reference"] is not None
                and cell["train_flops_vs_reference"] <= OVER_BUDGET
            )
    check = seed_check(study, stored)
    return {
        "name": study.name,
        "title": study.title,
        "declared": str(study.declared),
        "path": _shown(study.path),
        "question": study.question,
        "seeds": list(study.seeds),
        "pilot_seeds": list(study.pilot_seeds),
        "alpha": study.alpha,
        "test": study.test,
        "correction": study.correction,
        "sensitivity": study.sensitivity,
        "equivalence": list(study.equivalence),
        "comparisons": rows,
        "missing": {"/".join(map(str, k)): v for k, v in check["missing"].items()},
        "extra": {"/".join(map(str, k)): v for k, v in check["extra"].items()},
        "complete": check["complete"],
    }


def _shown(path) -> str:
    """A study file's path as a reader finds it: relative to the working folder where it lies below it."""
    from pathlib import Path

    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _study_cells(study: Study, comp, analysis: Analysis, by_key, flats) -> list[tuple[dict, pd.DataFrame]]:
    """The cells a declared comparison's method arm reads: its method at (arch, s_G, the study's s_D), default
    options, and the study's preset and execution modes."""
    want = study.runs
    found = []
    for rec in analysis.cells:
        if (rec["method"], rec["arch"]) != (comp.method, comp.arch) or rec["variant"]:
            continue
        if not (math.isclose(rec["sg"], comp.sg) and math.isclose(rec["sd"], float(want["sd"]))):
            continue
        runs = by_key[tuple(rec[k] for k in CELL_KEYS)]
        flat = flats[runs.index[0]]
        if flat.get("preset") != want["preset"] or str(flat.get("precision") or "fp32") != want["precision"]:
            continue
        if bool(flat.get("channels_last")) != bool(want["channels_last"]):
            continue
        found.append((rec, runs))
    return found


def json_ready(analysis: Analysis) -> dict[str, Any]:
    """The analysis as plain JSON values (`sparsebench results --format json`)."""

    def plain(value: Any) -> Any:
        if isinstance(value, stats.Ratio):
            return _ratio_fields(value) | {"sd_log": value.sd_log, "df": value.df}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if hasattr(value, "item"):  # numpy scalars
            return value.item()
        return value

    return json.loads(
        json.dumps(plain({"cells": analysis.cells, "studies": analysis.studies, "planning": analysis.planning}))
    )

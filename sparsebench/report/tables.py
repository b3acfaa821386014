"""The paper's table layouts, computed from the flat results table.

A table is a list of rows of `Cell`s with a two-level column header (arch, s_G); rendering to
Markdown or LaTeX is done elsewhere, so both formats show the same numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats

from sparsebench.flop_conventions import CONVENTION_NOTES, PAPER_FLOPS_PER_FMA

BAD = ("failed", "diverged")
CONFIDENCE = 0.95
OVER_BUDGET = 1.05  # training FLOPs relative to the reference above which a Δ says so and a cell cannot be bold
BUSY_LOAD = 1.1  # load average per core above which a run's measured time is flagged (others shared its cores)


class MethodInfo:
    """What the tables take from the registered methods: title, row order, reference, Table 3's length option.

    A stored method that is not registered (any more) keeps its name as title, sorts after the others and is
    compared with nothing.
    """

    def __init__(self, methods: Mapping[str, Any]):
        self.methods = dict(methods)

    @classmethod
    def of(cls, methods: Any = None) -> MethodInfo:
        """From a name -> method mapping, a plugin registry, or (None) the installed plugins' methods."""
        if isinstance(methods, MethodInfo):
            return methods
        if methods is None:
            from sparsebench.plugins import get_plugins

            methods = get_plugins().methods
        return cls(methods.objects() if hasattr(methods, "objects") else methods)

    def _get(self, name: str, attr: str, default):
        return getattr(self.methods[name], attr, default) if name in self.methods else default

    def title(self, name: str) -> str:
        return self._get(name, "title", "") or name

    def rank(self, name: str) -> tuple:
        return (self._get(name, "order", math.inf), name)

    def reference(self, name: str) -> str | None:
        """The method whose FID a cell of `name` is compared with (None: no comparison)."""
        return self._get(name, "reference", "") or None

    def length_option(self, name: str) -> str:
        return self._get(name, "length_option", "")


@dataclass
class Cell:
    text: str  # plain text, format-neutral: "12.34 ± 0.56 / 8.12 ± 0.03 (n=3)"
    value: float | None = None  # what "best" compares (lower is better)
    bold: bool = False
    parts: list = field(default_factory=list)  # (mean, std) pairs for LaTeX rendering
    note: str = ""
    comparison: str = ""  # the difference to the reference method, format-neutral
    significant: bool = False  # that difference's interval excludes zero


@dataclass
class Table:
    title: str
    caption: str
    row_header: list[str]
    columns: list[tuple[str, str]]  # (group, label)
    rows: list[tuple[list[str], list[Cell]]]


def preset_steps(arch: str, preset: str) -> int | None:
    """The G steps of `preset` of the installed architecture `arch` (None when either is unknown here)."""
    from sparsebench.plugins import get_plugins

    try:
        return int(get_plugins().archs.get(arch).presets[preset].steps)
    except Exception:  # noqa: BLE001 - an architecture or preset no longer installed
        return None


def _preset_lengths(df: pd.DataFrame) -> dict:
    """(arch, preset) -> the preset's G steps, for every pair in `df` (None where not installed here)."""
    return {key: preset_steps(*key) for key in df[["arch", "preset"]].drop_duplicates().itertuples(index=False)}


def _differing_versions(df: pd.DataFrame) -> dict:
    """Method -> a labeller of its runs' code versions, for methods whose runs in `df` come from different
    code (e.g. before and after a plugin's fix): those runs never share a row. The label names only the
    parts that differ ("code method=0.2.0")."""
    if "code" not in df:
        return {}
    parse = lambda code: dict(p.split("=", 1) for p in str(code).split(",") if "=" in p)  # noqa: E731
    out = {}
    for method, codes in df.groupby("method")["code"]:
        known = codes.dropna().unique()
        if len(known) > 1:
            parsed = [parse(c) for c in known]
            keys = sorted(k for k in set().union(*parsed) if len({p.get(k) for p in parsed}) > 1)
            out[method] = lambda code, keys=keys: "code " + ",".join(f"{k}={parse(code).get(k, '?')}" for k in keys)
    return out


def cell_variant(df: pd.DataFrame) -> pd.Series:
    """What separates runs of one method into table rows: its non-default options (`variant`), and every
    setting that changes results without being a method option: an optimizer-state policy or execution
    backend other than the default, and a length other than the preset's (so runs trained longer or
    shorter are never pooled with, or passed off as, runs of the preset)."""
    if df.empty:
        return df.get("variant", pd.Series(dtype=str)).fillna("").astype(str)
    steps_default = _preset_lengths(df)
    versions = _differing_versions(df)
    out = []
    for r in df.itertuples(index=False):
        parts = [str(r.variant)] if isinstance(r.variant, str) and r.variant else []
        if r.method in versions:
            parts.append(versions[r.method](r.code))
        policy = getattr(r, "opt_state", None)
        if isinstance(policy, str) and policy != "dense":
            parts.append(f"opt_state={policy}")
        kernels = getattr(r, "kernels", None)
        if isinstance(kernels, str) and kernels != "dense":
            parts.append(f"kernels={kernels}")
        default = steps_default.get((r.arch, r.preset))
        if default is not None and pd.notna(r.steps) and int(r.steps) != default:
            parts.append(f"steps={int(r.steps)}")
        out.append(",".join(parts))
    return pd.Series(out, index=df.index, dtype=object)


def label(row, info: MethodInfo) -> str:
    title = info.title(row["method"])
    return f"{title} [{row['variant']}]" if isinstance(row.get("variant"), str) and row["variant"] else title


def labels(df: pd.DataFrame, info: MethodInfo) -> pd.Series:
    """`label` for every row of a results frame, vectorised."""
    titles = df["method"].map(info.title)
    variant = cell_variant(df)
    return titles.where(variant == "", titles + " [" + variant + "]")


def _order(df: pd.DataFrame, info: MethodInfo) -> list[tuple[str, str, float]]:
    keys = df[["method", "variant", "sd"]].drop_duplicates().itertuples(index=False)
    return sorted(keys, key=lambda k: (info.rank(k[0]), k[1] or "", k[2]))


def _columns(df: pd.DataFrame) -> list[tuple[str, float]]:
    cols = []
    for arch in sorted(df["arch"].unique()):
        sgs = sorted({sg for sg in df.loc[df["arch"] == arch, "sg"] if sg > 0}, reverse=True) or [0.0]
        cols += [(arch, sg) for sg in sgs]
    return cols


def _stat(values: pd.Series) -> tuple[float | None, float | None]:
    values = values.dropna().astype(float)
    mean = float(values.mean()) if len(values) else None
    return mean, (float(values.std(ddof=1)) if len(values) > 1 else None)


def _fmt(mean: float, std: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _cells(df: pd.DataFrame, make, info: MethodInfo) -> tuple[list, list]:
    """Rows (method, variant, s_D) x columns (arch, s_G); methods without s_G fill every column.

    `make(key, runs)` builds one cell from its key (method, variant, arch, s_G, s_D) and its runs.
    """
    df = df.copy()
    df["variant"] = cell_variant(df)
    cols = _columns(df)
    groups = dict(tuple(df.groupby(["method", "variant", "sd", "arch", "sg"], sort=False)))
    empty = df.iloc[0:0]
    sgs: dict[tuple, set] = {}
    for method, variant, sd, _, sg in groups:
        sgs.setdefault((method, variant, sd), set()).add(sg)
    rows = []
    for method, variant, sd in _order(df, info):
        cells = []
        for arch, sg in cols:
            sg = 0.0 if sgs[(method, variant, sd)] == {0.0} else sg
            cells.append(make((method, variant, arch, sg, sd), groups.get((method, variant, sd, arch, sg), empty)))
        rows.append(([label({"method": method, "variant": variant}, info), f"{100 * sd:g}"], cells))
    return cols, rows


def _mark_best(rows, n_cols: int, eligible=lambda cell: True) -> None:
    """Bold the lowest value of each column, where that cell is `eligible`."""
    for j in range(n_cols):
        vals = [(r[1][j].value, i) for i, r in enumerate(rows) if r[1][j].value is not None]
        if vals:
            best = min(v for v, _ in vals)
            for v, i in vals:
                if v == best and eligible(rows[i][1][j]):
                    rows[i][1][j].bold = True


def _status_note(here: pd.DataFrame) -> str:
    counts = here["status"].value_counts()
    notes = [f"{int(counts[s])} {s}" for s in BAD if s in counts]
    running = int(counts.get("running", 0))
    if running:
        notes.append(f"{running} running")
    return ", ".join(notes)


def welch_interval(a, b, confidence: float = CONFIDENCE) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) with its Welch t confidence interval, or None when either side has fewer than 2 values.

    Welch's interval does not assume equal variances: seeds are few and methods differ in stability.
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        return None
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(set(a)) == 1 and len(set(b)) == 1:  # no spread on either side: the difference is exact
        return diff, diff, diff
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return diff, float(ci.low), float(ci.high)


CELL_KEYS = ["method", "variant", "arch", "sg", "sd"]


def cell_aggregates(df: pd.DataFrame, methods=None) -> list[dict]:
    """One record per Table 1 cell: FID / IS over the seeds done, and the FID difference to the method's
    declared reference method (same arch; same s_G and s_D, or the reference's own when it fixes them, as
    the dense GAN does) with its Welch interval. Table 1 and `sparsebench results --format json` both read
    these records. `methods`: see `MethodInfo.of`.
    """
    info = MethodInfo.of(methods)
    df = df.copy()
    df["variant"] = cell_variant(df)
    done = df[(df["status"] == "done") & df["fid"].notna()]
    fids = {key: g["fid"].astype(float).tolist() for key, g in done.groupby(CELL_KEYS)}
    flops = {key: float(g["train_flops"].astype(float).mean()) for key, g in done.groupby(CELL_KEYS)}
    out = []
    for key, runs in df.groupby(CELL_KEYS, sort=False):
        method, variant, arch, sg, sd = key
        ok = runs[(runs["status"] == "done") & runs["fid"].notna()]
        fid, is_ = _stat(ok["fid"]), _stat(ok["is_mean"])
        rec = {
            "method": method,
            "variant": variant,
            "arch": arch,
            "sg": float(sg),
            "sd": float(sd),
            "n": len(ok),
            "fid_mean": fid[0],
            "fid_std": fid[1],
            "is_mean": is_[0],
            "is_std": is_[1],
            "reference": info.reference(method),
            "n_reference": None,
            "diff": None,
            "ci_low": None,
            "ci_high": None,
            "train_flops_vs_reference": None,
        }
        if rec["reference"] is not None:
            ref_key = (rec["reference"], "", arch, sg, sd)
            ref_key = ref_key if ref_key in fids else (rec["reference"], "", arch, 0.0, 0.0)
            ref = fids.get(ref_key, [])
            rec["n_reference"] = len(ref)
            mine, theirs = flops.get(key, math.nan), flops.get(ref_key, math.nan)
            if mine > 0 and theirs > 0:  # the training it took, against the reference's: more is no like-for-like win
                rec["train_flops_vs_reference"] = mine / theirs
            if ok.empty or not ref:
                pass
            elif (interval := welch_interval(ok["fid"], ref)) is not None:
                rec["diff"], rec["ci_low"], rec["ci_high"] = interval
            else:
                rec["diff"] = fid[0] - sum(ref) / len(ref)
        out.append(rec)
    return out


def significant(rec: dict) -> bool:
    """Whether a cell's interval of the FID difference to its reference excludes zero."""
    return rec["ci_low"] is not None and (rec["ci_low"] > 0 or rec["ci_high"] < 0)


def _comparison(rec: dict, info: MethodInfo) -> str:
    ref = rec["reference"]
    if ref is None:
        return ""
    title = info.title(ref)
    if not rec["n_reference"]:
        return f"Δ vs {title}: no {title} run"
    if rec["diff"] is None:
        return f"Δ vs {title}: n/a"
    budget = f" at {ratio:.1f}× its training FLOPs" if (ratio := _over_budget(rec)) else ""
    if rec["ci_low"] is None:
        return f"Δ vs {title} {rec['diff']:+.2f} (n=1, no interval){budget}"
    return f"Δ vs {title} {rec['diff']:+.2f} [{rec['ci_low']:+.2f}, {rec['ci_high']:+.2f}]{budget}"


def _over_budget(rec: dict) -> float | None:
    """The cell's training FLOPs relative to its reference's, where it trained with more (over 5 %)."""
    ratio = rec.get("train_flops_vs_reference")
    return ratio if ratio is not None and ratio > OVER_BUDGET else None


def quality_table(df: pd.DataFrame, title: str = "Table 1", methods=None) -> Table:
    info = MethodInfo.of(methods)
    aggregates = {tuple(r[k] for k in CELL_KEYS): r for r in cell_aggregates(df, info)}

    def make(key, here: pd.DataFrame) -> Cell:
        note = _status_note(here)
        rec = aggregates.get(key)
        if rec is None or not rec["n"]:
            return Cell("n/a" + (f" ({note})" if note else ""), note=note)
        fid, is_ = (rec["fid_mean"], rec["fid_std"]), (rec["is_mean"], rec["is_std"])
        comparison = _comparison(rec, info)
        text = f"{_fmt(*fid)} / {_fmt(*is_)} (n={rec['n']}" + (f"; {note})" if note else ")")
        return Cell(
            text + (f"; {comparison}" if comparison else ""),
            value=fid[0],
            parts=[fid, is_],
            note=f"n={rec['n']}" + (f"; {note}" if note else ""),
            comparison=comparison,
            significant=significant(rec) and not _over_budget(rec),
        )

    cols, rows = _cells(df, make, info)
    _mark_best(rows, len(cols), lambda cell: cell.significant)
    compared: dict[str, list[str]] = {}  # reference -> titles of the methods in this table compared with it
    for method in sorted(df["method"].unique(), key=info.rank):
        if (ref := info.reference(method)) is not None:
            compared.setdefault(ref, []).append(info.title(method))
    references = "; ".join(f"{', '.join(titles)}: {info.title(ref)}" for ref, titles in compared.items())
    return Table(
        title,
        "(FID ↓ / IS ↑), mean ± std over seeds, n = seeds done; failed or diverged runs are counted, "
        "not dropped. Δ = FID difference to the method's reference method"
        + (f" ({references})" if references else "")
        + ", at the same s_G and s_D unless the reference fixes "
        f"them, with its {100 * CONFIDENCE:g} % Welch t interval over seeds "
        "(none when either side has one seed), and the cell's training FLOPs relative to the reference's "
        "where they are more (a method that trains longer is not compared like for like). The best FID per "
        "column is in bold only when its interval excludes zero and it trained with no more FLOPs than its "
        "reference.",
        ["Method", "s_D (%)"],
        [(a, f"s_G = {100 * sg:g}%") for a, sg in cols],
        rows,
    )


def cost_table(df: pd.DataFrame, title: str = "Table 2", convention: str = "fvcore", methods=None) -> Table:
    """Training / testing FLOPs from the store (fvcore counts), shown in `convention` (see `CONVENTIONS`)."""
    scale = PAPER_FLOPS_PER_FMA if convention == "paper" else 1.0

    def make(key, here: pd.DataFrame) -> Cell:
        done = here[(here["status"] == "done") & here["train_flops"].notna()]
        if done.empty:
            return Cell("n/a")
        tr, te = scale * float(done["train_flops"].mean()), scale * float(done["test_flops"].mean())
        # the store normalises to a dense GAN trained as long as the run; the table to the preset's length
        lengths = _preset_lengths(done)
        length = [
            r.steps / (lengths[(r.arch, r.preset)] or r.steps) if pd.notna(r.steps) else 1.0
            for r in done.itertuples(index=False)
        ]
        trr = float((done["train_flops_rel"] * length).mean())
        ter = float(done["test_flops_rel"].mean())
        # a sparse G beside a dense D: the store's count has D dense, the paper's would scale by G's density
        mark = "†" if convention == "paper" and key[3] > 0 and key[4] == 0 else ""
        return Cell(
            f"{tr:.3g} ({trr:.2f}×{mark}) / {te:.3g} ({ter:.2f}×)", value=trr, parts=[(tr, trr), (te, ter)], note=mark
        )

    cols, rows = _cells(df, make, MethodInfo.of(methods))
    _mark_best(rows, len(cols))
    return Table(
        title,
        "Training FLOPs / testing FLOPs (one generator forward for one image), absolute and "
        "normalised to the dense GAN of the same arch and preset, at the preset's length (a run trained "
        "twice as long counts twice). Fewest training FLOPs in bold. " + CONVENTION_NOTES[convention],
        ["Method", "s_D (%)"],
        [(a, f"s_G = {100 * sg:g}%") for a, sg in cols],
        rows,
    )


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
    of different machines do not compare. Each cell: the median G training step (evaluation excluded) and G's
    sampling time per image, mean over the seeds done, and both relative to the dense GAN of the same arch
    measured on the same machine with the same threads."""
    info = MethodInfo.of(methods)
    done = df[(df["status"] == "done") & df["train_s_per_step"].notna()].copy()
    if done.empty or "machine" not in done:
        return []
    done["machine"] = done["machine"].fillna("unknown machine")
    done["threads"] = done["threads"].fillna(0).astype(int)
    tables = []
    for (machine, threads), here_df in done.groupby(["machine", "threads"], sort=True):
        dense = here_df[(here_df["method"] == "dense") & (cell_variant(here_df) == "")]
        ref = {  # a dense GAN measured only beside other work is no reference
            arch: (float(g["train_s_per_step"].mean()), float(g["infer_ms_per_image"].mean()))
            for arch, (g, mark) in ((arch, _quiet_if_any(g)) for arch, g in dense.groupby("arch"))
            if mark != "†"
        }

        def make(key, here: pd.DataFrame, ref=ref) -> Cell:
            if here.empty:
                return Cell("n/a")
            used, mark = _quiet_if_any(here)
            tr, inf = float(used["train_s_per_step"].mean()), float(used["infer_ms_per_image"].mean())
            base = ref.get(key[2])
            rel = (tr / base[0], inf / base[1]) if base else (None, None)
            show = lambda v, r: f"{v:.3g}" + (f" ({r:.2f}×)" if r is not None else "")  # noqa: E731
            n = f"n={len(used)}" + (f" of {len(here)}" if len(used) < len(here) else "")
            return Cell(
                f"{show(1000 * tr, rel[0])} / {show(inf, rel[1])} ({n}){mark}",
                value=rel[0],
                note=mark,
            )

        cols, rows = _cells(here_df, make, info)
        tables.append(
            Table(
                f"{title}, {machine}, {threads} thread{'s' if threads != 1 else ''}",
                "Measured time: median training G step in ms (its D steps included, evaluation excluded) / G "
                "sampling time per image in ms at the evaluation batch, mean over seeds, and relative to the "
                "dense GAN of the same arch on the same machine and threads (× < 1: faster; not shown where that "
                "dense GAN was only measured beside other work). Where some of "
                f"a cell's runs were measured on a quiet machine (load at most {BUSY_LOAD:g} per core), only "
                "those count (n=k of m). Otherwise: † some runs ended with a higher load (other work beside "
                "them): their times are not the method's alone; ? the load was not recorded.",
                ["Method", "s_D (%)"],
                [(a, f"s_G = {100 * sg:g}%") for a, sg in cols],
                rows,
            )
        )
    return tables


def length_table(df: pd.DataFrame, methods=None) -> Table | None:
    """Table 3: the methods that declare a `length_option` (STU-GAN's `length`), at 1x and trained longer."""
    info = MethodInfo.of(methods)
    parts = []
    for method, runs in df.groupby("method", sort=False):
        if not (option := info.length_option(method)):
            continue
        variant = runs["variant"].fillna("")
        longer = variant.str.contains(rf"(?:^|,){re.escape(option)}=\d+", regex=True)
        if longer.any():
            parts += [runs[variant == ""], runs[longer]]
    return quality_table(pd.concat(parts), "Table 3", info) if parts else None

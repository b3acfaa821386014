"""The paper's table layouts, computed from the flat results table.

A table is a list of rows of `Cell`s with a two-level column header (arch, s_G); rendering to
Markdown or LaTeX is done elsewhere, so both formats show the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats

from sparsebench.cells import shared_settings
from sparsebench.flop_conventions import CONVENTION_NOTES, PAPER_FLOPS_PER_FMA
from sparsebench.report import power

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

    def titled(self, name: str, variant: str) -> tuple[str, str]:
        """(title, rest of the variant) of a row: an option setting the method names (`variant_titles`, e.g.
        SET's `ranking=layer`) gives the row that name instead of the method's title."""
        parts = [p for p in variant.split(",") if p]
        for setting, title in self._get(name, "variant_titles", {}).items():
            if setting in parts:
                return title, ",".join(p for p in parts if p != setting)
        return self.title(name), variant

    def rank(self, name: str) -> tuple:
        return (self._get(name, "order", math.inf), name)

    def fixed(self, name: str) -> dict:
        """The axes (sg, sd) the method fixes by definition (the dense GAN: both at 0)."""
        return dict(self._get(name, "fixed", {}) or {})

    def reference(self, name: str) -> str | None:
        """The method whose FID a cell of `name` is compared with (None: no comparison)."""
        return self._get(name, "reference", "") or None

    def length_option(self, name: str) -> str:
        return self._get(name, "length_option", "")

    def fixed_masks(self, name: str) -> bool:
        """Whether the method's masks never change while it trains (the optimizer-state policy cannot matter)."""
        return bool(self._get(name, "fixed_masks", False))


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


def _row_settings(r: Any) -> dict[str, Any]:
    """A run's settings (`sparsebench.cells.settings`) from its `settings` column, or, for a frame without one
    (built by hand), from the columns that stand for them."""
    text = getattr(r, "settings", None)
    if isinstance(text, str) and text:
        return json.loads(text)
    flat: dict[str, Any] = {"dataset": getattr(r, "dataset", None), "preset": getattr(r, "preset", None)}
    variant = getattr(r, "variant", None)
    for part in str(variant).split(",") if isinstance(variant, str) and variant else []:
        name, _, value = part.partition("=")
        flat[f"option.{name}"] = value
    for name, default in (("opt_state", "dense"), ("kernels", "dense")):
        value = getattr(r, name, None)
        flat[name] = value if isinstance(value, str) else default
    steps = getattr(r, "steps", None)
    if steps is not None and pd.notna(steps):
        flat["train.steps"] = int(steps)
    code = getattr(r, "code", None)
    for part in str(code).split(",") if isinstance(code, str) else []:
        name, _, value = part.partition("=")
        flat[f"code.{name}"] = value
    return flat


class _Defaults:
    """The settings a run of (method, arch, preset) has when nothing is asked for (from the installed plugins;
    an unknown plugin or preset contributes nothing, and its runs' labels name what tells their cells apart)."""

    CORE = {"scope": "conv", "distribution": "erk", "opt_state": "dense", "kernels": "dense", "metrics": ["fid", "is"]}

    def __init__(self) -> None:
        self._cache: dict[tuple, dict] = {}

    def __call__(self, method: str, arch: str, preset: str) -> dict[str, Any]:
        key = (method, arch, preset)
        if key not in self._cache:
            self._cache[key] = self._compute(*key)
        return self._cache[key]

    def _compute(self, method: str, arch: str, preset: str) -> dict[str, Any]:
        import dataclasses

        from sparsebench.config import LATER_TRAIN_FIELDS
        from sparsebench.plugins import get_plugins

        out: dict[str, Any] = dict(self.CORE)
        plugins = get_plugins()
        try:  # a method may declare its own default scope (ADAPT's reference scope)
            out["scope"] = getattr(plugins.methods.get(method), "scope", "") or "conv"
        except Exception:  # noqa: BLE001 - a method not installed here
            pass
        try:
            spec = plugins.archs.get(arch).presets[preset]
        except Exception:  # noqa: BLE001 - an architecture or preset not installed here
            spec = None
        if spec is not None:
            out.update({f"train.{k}": v for k, v in dataclasses.asdict(spec).items()})
            out["dataset"] = spec.dataset
            out.update({f"train.{k}": v for k, v in LATER_TRAIN_FIELDS.items() if f"train.{k}" not in out})
        for prefix, options in (
            ("option", lambda: plugins.methods.get(method).options),
            ("arch", lambda: plugins.archs.get(arch).options),
            ("data", lambda: plugins.datasets.get(out.get("dataset", "")).options),
        ):
            try:
                out.update({f"{prefix}.{o.name}": o.default for o in options()})
            except Exception:  # noqa: BLE001 - a plugin not installed here: its options' defaults are unknown
                out[f"{prefix}.*"] = None
        return out


def _show(key: str, value: Any) -> str:
    name = key.split(".", 1)[1] if key.startswith(("train.", "option.")) else key
    if isinstance(value, float):
        value = f"{value:.12g}"  # two settings that differ never print alike
    elif isinstance(value, list):
        value = "+".join(str(v) for v in value)
    return f"{name}={value}"


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _off_default(key: str, flat: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether setting `key` differs from its default (`train.dataset` repeats `dataset`: never named twice)."""
    return key in base and key != "train.dataset" and not _same(flat[key], base[key])


def cell_variant(df: pd.DataFrame) -> pd.Series:
    """The row label's variant of every run: the settings of its cell that differ from the defaults of its
    method, arch and preset (method options first, then the length, then the rest), and where two cells of one
    method at one (arch, s_G, s_D) would still read alike (another preset, data set, code version...), the
    settings that tell them apart. Runs of different cells never share a label, so never a table cell."""
    if df.empty:
        return df.get("variant", pd.Series(dtype=str)).fillna("").astype(str)
    from sparsebench.config import SPEED_DEFAULTS

    defaults = _Defaults()
    # execution modes (precision, channels-last...) are named against the report's most common ones, which
    # its protocol table states: a grid run in bf16 reads plainly, and the odd fp32 row says so
    flats = [{**SPEED_DEFAULTS, **_row_settings(r)} for r in df.itertuples(index=False)]
    common = {
        k: json.loads(Counter(json.dumps(f[k], default=str) for f in flats).most_common(1)[0][0])
        for k in SPEED_DEFAULTS
    }
    parts = []
    for r, flat in zip(df.itertuples(index=False), flats):
        base = {**defaults(r.method, r.arch, str(getattr(r, "preset", ""))), **common}
        differ = [
            k
            for k in flat
            if _off_default(k, flat, base)
            or (k.startswith("option.") and "option.*" in base)  # a method not installed: all its options
        ]
        parts.append(sorted(differ, key=_label_order))
    cells = [_cell_of(r, f) for r, f in zip(df.itertuples(index=False), flats)]
    # cells of one method and position that would read alike: add what tells them apart
    groups: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        text = ",".join(_show(k, flats[i][k]) for k in parts[i])
        position = (r.method, r.arch, getattr(r, "sg", None), getattr(r, "sd", None), text)
        groups.setdefault(position, {}).setdefault(cells[i], []).append(i)
    for by_cell in groups.values():
        if len(by_cell) < 2:
            continue
        members = [idx[0] for idx in by_cell.values()]
        keys = set().union(*(flats[i] for i in members))
        differing = [k for k in keys if len({json.dumps(flats[i].get(k), default=str) for i in members}) > 1]
        telling: list[str] = []  # the fewest keys, most telling first, that set these cells apart
        for key in sorted(differing, key=_telling_order):
            telling.append(key)
            if len({json.dumps([flats[i].get(k) for k in telling], default=str) for i in members}) == len(members):
                break
        for idx in by_cell.values():
            for i in idx:
                parts[i] = parts[i] + [k for k in telling if k not in parts[i]]
    out = [",".join(_show(k, flats[i].get(k, "none")) for k in p) for i, p in enumerate(parts)]
    seen: dict[tuple, set[str]] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        position = (r.method, r.arch, getattr(r, "sg", None), getattr(r, "sd", None), out[i])
        seen.setdefault(position, set()).add(cells[i])
    for i, r in enumerate(df.itertuples(index=False)):  # still alike (e.g. across groups): name the cell itself
        if len(seen[(r.method, r.arch, getattr(r, "sg", None), getattr(r, "sd", None), out[i])]) > 1:
            short = hashlib.sha256(cells[i].encode()).hexdigest()[:8] if len(cells[i]) != 12 else cells[i][:8]
            out[i] = ",".join(filter(None, [out[i], f"cell={short}"]))
    return pd.Series(out, index=df.index, dtype=object)


def _telling_order(key: str) -> tuple:
    """Which settings name the difference between two cells best: the preset, the data, the code, then the rest."""
    first = ("preset", "dataset", "code.method", "code.arch", "code.sparsebench")
    return (first.index(key) if key in first else len(first), _label_order(key))


def _label_order(key: str) -> tuple:
    return (0 if key.startswith("option.") else 1 if key == "train.steps" else 2, key)


def _cell_of(r: Any, flat: dict[str, Any]) -> str:
    cell = getattr(r, "cell", None)
    if isinstance(cell, str) and cell:
        return cell
    axes = [getattr(r, k, None) for k in ("method", "arch", "sg", "sd")]
    return json.dumps({"axes": axes, **flat}, sort_keys=True, default=str)


def label(row, info: MethodInfo) -> str:
    variant = row.get("variant")
    title, rest = info.titled(row["method"], variant if isinstance(variant, str) else "")
    return f"{title} [{rest}]" if rest else title


def labels(df: pd.DataFrame, info: MethodInfo) -> pd.Series:
    """`label` for every row of a results frame."""
    variant = cell_variant(df)
    return pd.Series(
        [label({"method": m, "variant": v}, info) for m, v in zip(df["method"], variant)], index=df.index, dtype=object
    )


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


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    """mean ± std; "n/a" where a metric was not computed (a run may compute FID only)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and not math.isnan(std) else "")


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
    """Bold the lowest value of each column among the cells `eligible` to win."""
    for j in range(n_cols):
        vals = [(r[1][j].value, i) for i, r in enumerate(rows) if r[1][j].value is not None and eligible(r[1][j])]
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


# The settings a reference cannot use, by kind of reference: a dense run (s_G = s_D = 0) has no masked weight,
# so no optimizer-state policy, backend, scope or distribution applies; a method whose masks never change
# trains identically under every optimizer-state policy (sparsebench.sparse.opt_state) with dense kernels.
NOT_USED_BY_DENSE = ("opt_state", "kernels", "scope", "distribution")
NOT_USED_BY_FIXED_MASKS = ("opt_state",)


def _reference_key(flat: dict[str, Any], not_used: tuple[str, ...] = ()) -> str:
    """What a reference run must share with a cell: its settings but the method's own and those the
    reference cannot use (`NOT_USED_BY_DENSE`, `NOT_USED_BY_FIXED_MASKS`)."""
    shared = {k: v for k, v in shared_settings(flat).items() if k not in not_used}
    return json.dumps(shared, sort_keys=True, default=str)


def _not_used_by_reference(info: MethodInfo, reference: str, dense: bool, flat: dict[str, Any]) -> tuple[str, ...]:
    if dense:
        return NOT_USED_BY_DENSE
    if info.fixed_masks(reference) and flat.get("kernels", "dense") == "dense":
        return NOT_USED_BY_FIXED_MASKS
    return ()


def _describe_settings(flat: dict[str, Any], base: dict[str, Any]) -> str:
    """The settings a reference was looked for with, as a reader needs them: those off the defaults."""
    differ = [k for k in shared_settings(flat) if _off_default(k, flat, base)]
    named = [_show(k, flat[k]) for k in sorted(differ, key=_label_order)]
    return ", ".join(["preset " + str(flat.get("preset"))] + named)


def cell_aggregates(df: pd.DataFrame, methods=None, references: pd.DataFrame | None = None) -> list[dict]:
    """One record per Table 1 cell: FID / IS over its seeds, and the FID difference to the method's declared
    reference method with its Welch interval, its minimum detectable difference and the seeds per arm that
    would detect 20 % of the reference's mean (`sparsebench.report.power`). The reference is the cell of that
    method with the same settings (length included; same arch, s_G and s_D, or the reference's own where it
    fixes them, as the dense GAN does; settings the reference cannot use left out, `_not_used_by_reference`),
    at its default options; several such cells (code versions) are named, not pooled. `references`: the runs to
    look references up in (default: `df`'s own). Table 1 and `sparsebench results --format json` both read these."""
    info = MethodInfo.of(methods)
    df = df.copy()
    df["variant"] = cell_variant(df)
    defaults = _Defaults()
    flat_of = [_row_settings(r) for r in df.itertuples(index=False)]
    df["settings_key"] = [json.dumps(f, sort_keys=True, default=str) for f in flat_of]
    pool = df if references is None else references
    done = pool[(pool["status"] == "done") & pool["fid"].notna()]
    # (method, arch, sg, sd, shared settings) -> the done runs of each matching cell
    by_reference: dict[tuple, dict[str, list[int]]] = {}
    for i, r in zip(done.index, done.itertuples(index=False)):
        flat = _row_settings(r)
        base = defaults(r.method, r.arch, str(getattr(r, "preset", "")))
        if any(k.startswith("option.") and k in base and not _same(v, base[k]) for k, v in flat.items()):
            continue  # a reference runs at its method's default options
        # the keys it is looked up by: as it is, as a dense reference, at any policy where its masks never change
        for not_used in ((), NOT_USED_BY_DENSE) + ((NOT_USED_BY_FIXED_MASKS,) if info.fixed_masks(r.method) else ()):
            key = (r.method, r.arch, r.sg, r.sd, _reference_key(flat, not_used))
            by_reference.setdefault(key, {}).setdefault(_cell_of(r, flat), []).append(i)
    out = []
    for key, runs in df.groupby(CELL_KEYS, sort=False):
        method, variant, arch, sg, sd = key
        ok = runs[(runs["status"] == "done") & runs["fid"].notna()]
        twice = {
            int(seed): sorted(g["run_id"].astype(str)) for seed, g in ok.groupby("seed") if len(g) > 1
        }  # one seed twice in a cell: never averaged
        mixed = _mixed_content(ok)  # one cell's runs scored on different data or features: never averaged
        fid, is_ = _stat(ok["fid"]), _stat(ok["is_mean"]) if "is_mean" in ok else (None, None)
        flat = json.loads(runs["settings_key"].iloc[0])
        rec: dict[str, Any] = {
            "method": method,
            "variant": variant,
            "arch": arch,
            "sg": float(sg),
            "sd": float(sd),
            "cell": _cell_of(runs.iloc[0], flat) if "cell" in runs else None,
            "n": int(ok["seed"].nunique()) if "seed" in ok else len(ok),
            "seeds": sorted(int(x) for x in ok["seed"].dropna().unique()) if "seed" in ok else [],
            "duplicate_seeds": twice or None,
            "mixed_content": mixed,
            "fid_mean": fid[0],
            "fid_std": fid[1],
            "is_mean": is_[0],
            "is_std": is_[1],
            "reference": info.reference(method),
            "reference_settings": None,
            "reference_cells": None,
            "n_reference": None,
            "diff": None,
            "ci_low": None,
            "ci_high": None,
            "detectable_diff": None,
            "seeds_needed_20pct": None,
            "verdict": None,
            "train_flops_vs_reference": None,
            "reference_content_differs": None,
            "fid_floor": _floor(ok),
            "below_floor": False,
        }
        if twice or mixed:
            rec["fid_mean"] = rec["fid_std"] = rec["is_mean"] = rec["is_std"] = None
        rec["below_floor"] = None not in (rec["fid_mean"], rec["fid_floor"]) and rec["fid_mean"] < rec["fid_floor"]
        if rec["reference"] is not None:
            fixed = info.fixed(rec["reference"])
            ref_sg, ref_sd = float(fixed.get("sg", sg)), float(fixed.get("sd", sd))
            not_used = _not_used_by_reference(info, rec["reference"], ref_sg == 0.0 and ref_sd == 0.0, flat)
            cells = by_reference.get((rec["reference"], arch, ref_sg, ref_sd, _reference_key(flat, not_used)), {})
            if len(cells) > 1:  # e.g. two code versions of the reference: name them, never pool them
                rec["reference_cells"] = sorted(cells)
            ref_rows = next(iter(cells.values())) if len(cells) == 1 else []
            ref = done.loc[ref_rows]
            rec["reference_settings"] = _describe_settings(flat, defaults(method, arch, str(flat.get("preset"))))
            rec["n_reference"] = int(ref["seed"].nunique()) if "seed" in ref else len(ref)
            mine = float(ok["train_flops"].astype(float).mean()) if len(ok) else math.nan
            theirs = float(ref["train_flops"].astype(float).mean()) if len(ref) else math.nan
            if mine > 0 and theirs > 0:  # the training it took, against the reference's: more is no like-for-like win
                rec["train_flops_vs_reference"] = mine / theirs
            if ok.empty or ref.empty or twice or mixed or len(ref) != rec["n_reference"]:
                pass
            elif _mixed_content(pd.concat([ok, ref])):  # scored on other data or features than its reference
                rec["reference_content_differs"] = True
            elif (interval := welch_interval(ok["fid"], ref["fid"])) is not None:
                rec["diff"], rec["ci_low"], rec["ci_high"] = interval
                rec.update(_power(ok["fid"].astype(float).tolist(), ref["fid"].astype(float).tolist(), rec))
            else:
                rec["diff"] = fid[0] - float(ref["fid"].astype(float).mean())
        out.append(rec)
    return out


def _floor(ok: pd.DataFrame) -> float | None:
    """The FID floor the cell's runs were scored against (held-out real images at the runs' sample size; one
    value per cell, whose runs share data, extractor and sample count), or None where it was not recorded."""
    if "fid_floor" not in ok:
        return None
    floors = ok["fid_floor"].dropna().astype(float)
    return float(floors.mean()) if len(floors) else None


def _power(mine: list[float], theirs: list[float], rec: dict) -> dict[str, Any]:
    """The power fields of a cell with an interval: what its interval could have detected, how many seeds per
    arm would detect 20 % of the reference's mean, and what a non-significant interval therefore means."""
    s1, s2 = statistics.stdev(mine), statistics.stdev(theirs)
    detectable = power.detectable_difference(s1, len(mine), s2, len(theirs))
    target = power.TARGET * statistics.fmean(theirs)
    needed = power.seeds_needed(target, s1, s2)
    if significant(rec):
        verdict = "better" if rec["ci_high"] < 0 else "worse"
    elif detectable <= target:
        verdict = "no difference"
    else:
        verdict = "undecided"
    return {"detectable_diff": detectable, "seeds_needed_20pct": needed, "verdict": verdict}


def significant(rec: dict) -> bool:
    """Whether a cell's interval of the FID difference to its reference excludes zero."""
    return rec["ci_low"] is not None and (rec["ci_low"] > 0 or rec["ci_high"] < 0)


def _comparison(rec: dict, info: MethodInfo) -> str:
    ref = rec["reference"]
    if ref is None:
        return ""
    title = info.title(ref)
    if rec.get("reference_cells"):
        return f"Δ vs {title}: {len(rec['reference_cells'])} {title} cells match ({', '.join(rec['reference_cells'])})"
    if not rec["n_reference"]:
        return f"Δ vs {title}: no {title} run with {rec['reference_settings']}"
    if rec.get("reference_content_differs"):
        return f"Δ vs {title}: none (its runs were scored on other data or features)"
    if rec["diff"] is None:
        return f"Δ vs {title}: n/a"
    budget = f" at {ratio:.1f}× its training FLOPs" if (ratio := _over_budget(rec)) else ""
    if rec["ci_low"] is None:
        return f"Δ vs {title} {rec['diff']:+.2f} (n=1, no interval){budget}"
    text = f"Δ vs {title} {rec['diff']:+.2f} [{rec['ci_low']:+.2f}, {rec['ci_high']:+.2f}]"
    return text + (f"; {verdict}" if (verdict := _verdict_text(rec)) else "") + budget


def _mixed_content(ok: pd.DataFrame) -> dict[str, list[str]] | None:
    """The done runs of one cell by the content their FIDs were computed from (`data_hash/extractor_hash`),
    where there is more than one: the data set's files or the feature extractor changed between seeds under
    the same settings, so their scores do not measure one thing. None when they agree (or were not recorded)."""
    if not {"data_hash", "extractor_hash"} <= set(ok.columns):
        return None
    by: dict[str, list[str]] = {}
    for r in ok.itertuples(index=False):
        if isinstance(r.data_hash, str) and r.data_hash:
            by.setdefault(f"{r.data_hash}/{r.extractor_hash}", []).append(str(r.run_id))
    return {k: sorted(v) for k, v in sorted(by.items())} if len(by) > 1 else None


def _verdict_text(rec: dict) -> str:
    """What an interval spanning zero means: no difference larger than the detectable one, or too few seeds."""
    if rec.get("verdict") == "no difference":
        return f"no difference larger than {rec['detectable_diff']:.2f}"
    if rec.get("verdict") == "undecided":
        needed = rec["seeds_needed_20pct"]
        seeds = f"about {needed}" if needed else f"over {power.MAX_SEEDS:,}"
        return f"undecided: {seeds} seeds per arm needed"
    if rec.get("detectable_diff") is not None:
        needed = rec["seeds_needed_20pct"]
        return f"detectable {rec['detectable_diff']:.2f}" + (f", {needed} seeds per arm for 20 %" if needed else "")
    return ""


def _over_budget(rec: dict) -> float | None:
    """The cell's training FLOPs relative to its reference's, where it trained with more (over 5 %)."""
    ratio = rec.get("train_flops_vs_reference")
    return ratio if ratio is not None and ratio > OVER_BUDGET else None


def quality_table(df: pd.DataFrame, title: str = "Table 1", methods=None, references=None) -> Table:
    """Table 1 (FID / IS, differences to references); `references`: where to look them up (default `df`)."""
    info = MethodInfo.of(methods)
    aggregates = {tuple(r[k] for k in CELL_KEYS): r for r in cell_aggregates(df, info, references)}

    def make(key, here: pd.DataFrame) -> Cell:
        note = _status_note(here)
        rec = aggregates.get(key)
        if rec is None or not rec["n"]:
            return Cell("n/a" + (f" ({note})" if note else ""), note=note)
        if rec["duplicate_seeds"]:  # one seed twice in a cell: an error to resolve, never averaged
            pairs = rec["duplicate_seeds"].items()
            twice = "; ".join(f"seed {seed} stored twice: {', '.join(ids)}" for seed, ids in pairs)
            return Cell(f"error: {twice}", note=f"error: {twice}")
        if rec["mixed_content"]:  # the data or extractor changed between seeds: an error, never averaged
            parts = "; ".join(f"{', '.join(ids)} on data/extractor {h}" for h, ids in rec["mixed_content"].items())
            text = f"error: runs scored on different data or features ({parts}); keep them in separate stores"
            return Cell(text, note=text)
        fid, is_ = (rec["fid_mean"], rec["fid_std"]), (rec["is_mean"], rec["is_std"])
        comparison = _comparison(rec, info)
        if rec["below_floor"]:  # closer to the training images than unseen real images are: fitting, not quality
            note = "; ".join(filter(None, [note, f"below the FID floor {rec['fid_floor']:.2f}"]))
        text = f"{_fmt(*fid)} / {_fmt(*is_)} (n={rec['n']}" + (f"; {note})" if note else ")")
        return Cell(
            text + (f"; {comparison}" if comparison else ""),
            value=fid[0],
            parts=[fid, is_],
            note=f"n={rec['n']}" + (f"; {note}" if note else ""),
            comparison=comparison,
            significant=significant(rec) and rec["ci_high"] < 0 and not _over_budget(rec),
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
        "(FID ↓ / IS ↑), mean ± std over seeds, n = distinct seeds done; failed or diverged runs are counted, "
        "not dropped; runs share a cell only when every setting but the seed is the same (the row label names "
        "those off the preset's defaults). Δ = FID difference to the method's reference method"
        + (f" ({references})" if references else "")
        + " trained with the same settings (length included; the optimizer-state policy excepted where the "
        "reference's masks never change, as Static Sparse's: the policy cannot change such runs), at the same s_G "
        "and s_D unless the reference fixes "
        f"them, with its {100 * CONFIDENCE:g} % Welch t interval over seeds "
        "(none when either side has one seed), and the cell's training FLOPs relative to the reference's "
        f"where they are more than {OVER_BUDGET:g}× (a method that trains longer is not compared like for like). "
        "Where the interval "
        f"spans zero: 'no difference larger than D' when the difference detectable at {100 * power.POWER:g} % "
        f"power (D, from the observed stds and n) is at most {100 * power.TARGET:g} % of the reference's mean, "
        f"else 'undecided' with the seeds per arm that would detect {100 * power.TARGET:g} % of it. The best FID "
        "per column is in bold among the cells eligible to win: significantly better than their reference "
        f"(interval below zero) with at most {OVER_BUDGET:g}× their reference's training FLOPs. 'Below the FID "
        "floor': the mean FID is lower than held-out real images score at the same sample size; FIDs are computed "
        "against the training images, so such a generator is closer to them than unseen real images are (it fits "
        "the training set; the score does not say it generalises better).",
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
        # as stored: against the dense GAN of the run's own arch, data and length, counted (not looked up)
        trr = float(done["train_flops_rel"].mean())
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
        "relative to a dense GAN of the same arch and data set trained as long as the run (G steps of its "
        "last phase at the same settings; its FLOPs are counted, whether or not such a run was trained), so a "
        "run of --steps 60 compares with 60 dense steps and PF's pre-training counts on top. Fewest training "
        "FLOPs in bold. " + CONVENTION_NOTES[convention],
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
    return quality_table(pd.concat(parts), "Table 3", info, references=df) if parts else None

"""What makes a table cell, and how a cell is named.

Runs are pooled into one cell (a summary over seeds, a comparison with a reference) only when they share every
setting of their config but the seed: method, its options (defaults included), arch, dataset and its options,
preset, every training setting (steps, batch, learning rates, the evaluation protocol...), s_G, s_D, scope,
distribution, metrics, optimizer-state policy, sparse-layer backend, opt-in execution modes and the code
versions (`sparsebench.identity` flattens a stored config into those keys and hashes a cell). `cell_variant`
names what sets a cell apart from its method's defaults, for row labels.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pandas as pd

from sparsebench import compat, defaults

CELL_KEYS = ["method", "variant", "arch", "sg", "sd"]


def shared_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The settings a method's reference run must share with it: all but the method's own options and code."""
    return {k: v for k, v in flat.items() if not k.startswith("option.") and k != "code.method"}


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


def preset_steps(arch: str, preset: str) -> int | None:
    """The G steps of `preset` of the installed architecture `arch` (None when either is unknown here)."""
    from sparsebench.plugins import get_plugins

    try:
        return int(get_plugins().archs.get(arch).presets[preset].steps)
    except Exception:  # noqa: BLE001 - an architecture or preset no longer installed
        return None


def row_settings(r: Any) -> dict[str, Any]:
    """A run's settings (`settings`) from its `settings` column, or, for a frame without one
    (built by hand), from the columns that stand for them."""
    text = getattr(r, "settings", None)
    if isinstance(text, str) and text:
        return json.loads(text)
    flat: dict[str, Any] = {"dataset": getattr(r, "dataset", None), "preset": getattr(r, "preset", None)}
    variant: Any = getattr(r, "variant", None)
    for part in str(variant).split(",") if isinstance(variant, str) and variant else []:
        name, _, value = part.partition("=")
        flat[f"option.{name}"] = value
    for key, default in (("opt_state", defaults.OPT_STATE), ("kernels", defaults.KERNELS)):
        setting = getattr(r, key, None)
        flat[key] = setting if isinstance(setting, str) else default
    steps = getattr(r, "steps", None)
    if steps is not None and pd.notna(steps):
        flat["train.steps"] = int(steps)
    code = getattr(r, "code", None)
    for part in str(code).split(",") if isinstance(code, str) else []:
        name, _, value = part.partition("=")
        flat[f"code.{name}"] = value
    return flat


class Defaults:
    """The settings a run of (method, arch, preset) has when nothing is asked for (from the installed plugins;
    an unknown plugin or preset contributes nothing, and its runs' labels name what tells their cells apart)."""

    CORE = {
        "scope": defaults.SCOPE,
        "distribution": defaults.DISTRIBUTION,
        "opt_state": defaults.OPT_STATE,
        "kernels": defaults.KERNELS,
        "metrics": list(defaults.METRICS),
    }

    def __init__(self) -> None:
        self._cache: dict[tuple, dict] = {}

    def __call__(self, method: str, arch: str, preset: str) -> dict[str, Any]:
        key = (method, arch, preset)
        if key not in self._cache:
            self._cache[key] = self._compute(*key)
        return self._cache[key]

    def _compute(self, method: str, arch: str, preset: str) -> dict[str, Any]:
        import dataclasses

        from sparsebench.plugins import get_plugins

        out: dict[str, Any] = dict(self.CORE)
        plugins = get_plugins()
        from sparsebench.config import default_scope

        try:  # a method may declare its own default scope (ADAPT's reference scope), which some presets override
            out["scope"] = default_scope(getattr(plugins.methods.get(method), "scope", ""), preset)
        except Exception:  # noqa: BLE001 - a method not installed here
            out["scope"] = default_scope("", preset)
        try:
            spec = plugins.archs.get(arch).presets[preset]
        except Exception:  # noqa: BLE001 - an architecture or preset not installed here
            spec = None
        if spec is not None:
            out.update({f"train.{k}": v for k, v in dataclasses.asdict(spec).items()})
            out["dataset"] = spec.dataset
            out.update({f"train.{k}": v for k, v in compat.LATER_TRAIN_FIELDS.items() if f"train.{k}" not in out})
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


def show(key: str, value: Any) -> str:
    name = key.split(".", 1)[1] if key.startswith(("train.", "option.")) else key
    if isinstance(value, float):
        value = f"{value:.12g}"  # two settings that differ never print alike
    elif isinstance(value, list):
        value = "+".join(str(v) for v in value)
    return f"{name}={value}"


def same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def off_default(key: str, flat: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether setting `key` differs from its default (`train.dataset` repeats `dataset`: never named twice)."""
    return key in base and key != "train.dataset" and not same(flat[key], base[key])


NAMED = "sparsebench.variants_named"  # a frame attribute: its `variant` column is `cell_variant`'s


def name_variants(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its `variant` column set to `cell_variant` (once), for the tables and figures built from it."""
    df["variant"] = cell_variant(df)
    df.attrs[NAMED] = True
    return df


def cell_variant(df: pd.DataFrame) -> pd.Series:
    """The row label's variant of every run: the settings of its cell that differ from the defaults of its
    method, arch and preset (method options first, then the length, then the rest), and where two cells of one
    method at one (arch, s_G, s_D) would still read alike (another preset, data set, code version...), the
    settings that tell them apart. Runs of different cells never share a label, so never a table cell.

    A frame whose `variant` column already holds them (`name_variants`) is read as it is: a report names its
    cells once, and every table and figure of it (and its subsets) keeps those names."""
    if df.attrs.get(NAMED) and "variant" in df:
        return df["variant"]
    if df.empty:
        return df.get("variant", pd.Series(dtype=str)).fillna("").astype(str)
    defaults = Defaults()
    # execution modes (precision, channels-last...) are named against the report's most common ones, which
    # its protocol table states: a grid run in bf16 reads plainly, and the odd fp32 row says so
    rows = list(df.itertuples(index=False))  # read once: a wide frame's tuples are slow to build
    flats = [{**compat.SPEED_DEFAULTS, **row_settings(r)} for r in rows]
    common = {
        k: json.loads(Counter(json.dumps(f[k], default=str) for f in flats).most_common(1)[0][0])
        for k in compat.SPEED_DEFAULTS
    }
    parts = []
    for r, flat in zip(rows, flats):
        base = {**defaults(r.method, r.arch, str(getattr(r, "preset", ""))), **common}
        differ = [
            k
            for k in flat
            if off_default(k, flat, base)
            or (k.startswith("option.") and "option.*" in base)  # a method not installed: all its options
        ]
        parts.append(sorted(differ, key=label_order))
    cells = [cell_of(r, f) for r, f in zip(rows, flats)]
    # cells of one method and position that would read alike: add what tells them apart
    groups: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        text = ",".join(show(k, flats[i][k]) for k in parts[i])
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
    out = [",".join(show(k, flats[i].get(k, "none")) for k in p) for i, p in enumerate(parts)]
    seen: dict[tuple, set[str]] = {}
    for i, r in enumerate(rows):
        position = (r.method, r.arch, getattr(r, "sg", None), getattr(r, "sd", None), out[i])
        seen.setdefault(position, set()).add(cells[i])
    for i, r in enumerate(rows):  # still alike (e.g. across groups): name the cell itself
        if len(seen[(r.method, r.arch, getattr(r, "sg", None), getattr(r, "sd", None), out[i])]) > 1:
            short = hashlib.sha256(cells[i].encode()).hexdigest()[:8] if len(cells[i]) != 12 else cells[i][:8]
            out[i] = ",".join(filter(None, [out[i], f"cell={short}"]))
    return pd.Series(out, index=df.index, dtype=object)


def _telling_order(key: str) -> tuple:
    """Which settings name the difference between two cells best: the preset, the data, the code, then the rest."""
    first = ("preset", "dataset", "code.method", "code.arch", "code.sparsebench")
    return (first.index(key) if key in first else len(first), label_order(key))


def label_order(key: str) -> tuple:
    return (0 if key.startswith("option.") else 1 if key == "train.steps" else 2, key)


def cell_of(r: Any, flat: dict[str, Any]) -> str:
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

"""The flat results table: one row per run, the core's columns, then those the installed methods declare,
then "other" (every further stored result, as a JSON object)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sparsebench.compat import BEFORE_THE_FIELD, upgrade_results
from sparsebench.identity import cell_id, settings

RESULT_COLUMNS = [
    "run_id",
    "method",
    "arch",
    "dataset",
    "preset",
    "sg",
    "sd",
    "seed",
    "status",
    "density_g",
    "density_d",
    "fid",
    "is_mean",
    "is_std",
    "train_flops",
    "test_flops",
    "train_flops_rel",
    "test_flops_rel",
    "wall_s",
]
# The core's own further columns; a method's own results follow them as it declares (`Method.result_columns`).
EXTRA_COLUMNS = [
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "fid_floor",
    "fid_floor_inf",
    "fid_floor_se",
    "fid_floor_method",
    "exploration_rate",
    "scope",
    "opt_state",
    "eval_weights",
    "extractor",
    "extractor_accuracy",
    "data_hash",
    "extractor_hash",
    "eval_samples",
    "steps",
    "diverged_step",
    "interrupted_step",
    "variant",
    "balance_ratio",
    "balance_ratio_last10",
    "train_s_per_step",
    "train_s_per_step_median",
    "infer_ms_per_image",
    "threads",
    "machine",
    "load_per_core",
    "kernels",
    "kernel_layers",
    "kernel_layers_sampling",
    "code",
    "cell",
    "settings",
    "error",
]
INT_COLUMNS = ["seed", "eval_samples", "steps", "diverged_step", "interrupted_step", "threads"]
# Last column: a run's other results as a JSON object, so that no stored key goes unseen (a method no longer
# installed, a key no column names). Per-layer densities and tracebacks stay with `sparsebench show`.
OTHER_COLUMN = "other"
DETAIL_KEYS = ("g_layer_density", "traceback")


def machine_label(env: dict) -> str | None:
    """Where a run's times were measured: the GPU, else the CPU model with its core count (else the host)."""
    if env.get("gpu"):
        return str(env["gpu"])
    if env.get("cpu"):
        return f"{env['cpu']}, {env.get('cpus', '?')} cores"
    return env.get("host")


def method_columns(methods: Iterable[Any]) -> list[str]:
    """The result columns `methods` declare, in table order, each once and none of the core's."""
    core = set(RESULT_COLUMNS + EXTRA_COLUMNS + [OTHER_COLUMN])
    ordered = sorted(methods, key=lambda m: (getattr(m, "order", float("inf")), getattr(m, "name", "")))
    return list(dict.fromkeys(c for m in ordered for c in getattr(m, "result_columns", ()) if c not in core))


def table_columns(declared: Iterable[str] = ()) -> list[str]:
    """The columns of `Store.results_table`: RESULT_COLUMNS, EXTRA_COLUMNS, the `declared` ones, OTHER_COLUMN."""
    return RESULT_COLUMNS + EXTRA_COLUMNS + list(declared) + [OTHER_COLUMN]


def int_columns(table: list[dict], declared: Iterable[str] = ()) -> list[str]:
    """INT_COLUMNS and the `declared` columns whose every stored value is an integer (shown as 3, not 3.0)."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    return INT_COLUMNS + [
        c
        for c in declared
        if any(row[c] is not None for row in table) and all(row[c] is None or is_int(row[c]) for row in table)
    ]


def results_table(runs: Iterable[dict], declared: Iterable[str] = ()) -> list[dict]:
    """The flat results table of `runs` (`Store.all_runs`): one row per run with the keys `table_columns(declared)`."""
    columns = table_columns(declared)
    named = set(columns) | set(DETAIL_KEYS)
    table = []
    for run in runs:
        res = upgrade_results(run["results"])
        row: dict[str, Any] = {c: None for c in columns}
        row.update(
            {
                k: run[k]
                for k in ("run_id", "method", "arch", "dataset", "preset", "sg", "sd", "seed", "status", "wall_s")
            }
        )
        for key in columns:
            if key in res and key not in ("run_id", "status", "wall_s", OTHER_COLUMN):
                row[key] = res[key]
        row["steps"] = run["config"]["train"]["steps"]
        row["scope"] = run["config"].get("scope")
        row["opt_state"] = run["config"].get("opt_state", BEFORE_THE_FIELD["opt_state"])
        other = {k: v for k, v in res.items() if k not in named}
        row[OTHER_COLUMN] = json.dumps(other, sort_keys=True, default=str) if other else None
        row["kernels"] = run["config"].get("kernels", BEFORE_THE_FIELD["kernels"])
        row["machine"] = machine_label(run.get("env") or {})
        row["code"] = ",".join(f"{k}={v}" for k, v in sorted(run["config"].get("code", {}).items())) or None
        row["cell"] = cell_id(run["config"])  # runs share a table cell only when this is equal
        row["settings"] = json.dumps(settings(run["config"]), sort_keys=True, default=str)
        table.append(row)
    return table

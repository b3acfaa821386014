"""Stored runs across versions, in one place: the run-config fields added after runs were stored, and the
stored results that today's code reads otherwise (or not at all).

Written: a field added later is left out of a config's dict (`RunConfig.to_dict`, which the run id hashes)
while it is at its default, so the runs stored before it existed keep their ids. Read: a stored config
without such a field gets the value those runs had in effect (`upgrade`), so an old run and a new one of the
same settings agree wherever settings are compared (table cells, references, labels).
"""

from __future__ import annotations

from typing import Any

# Top-level fields left out of a run id at their default (execution modes, the sparse-layer backend, the
# per-run thread count and the torchrun world size were added after runs were stored).
SPEED_DEFAULTS: dict[str, Any] = {"precision": "fp32", "compile": False, "channels_last": False, "deterministic": False}
OMITTED_AT_DEFAULT: dict[str, Any] = {"kernels": "dense", **SPEED_DEFAULTS, "threads": 1, "world_size": 1}
# TrainSpec fields likewise left out at their defaults.
LATER_TRAIN_FIELDS: dict[str, Any] = {
    "lr_decay_start": 1.0,
    "eval_every": 0,
    "eval_from": 2 / 3,
    "score_last": 1,
    "d_joint_forward": False,
}
# What a stored config without a field had in effect, where that is not today's default: runs stored before
# the optimizer-state policy was a choice kept Adam's state at zero.
BEFORE_THE_FIELD: dict[str, Any] = {"kernels": "dense", "opt_state": "zero"}
# The estimator of the balance ratio (`sparsebench.balance`) a run's ratios were measured with, recorded in its
# env; the values of another one (before "batch-means": a mean of per-image ratios, biased towards 0) are not
# read back as results or statistics. `sparsebench.balance` measures with this one.
BALANCE_RATIO_ESTIMATOR = "batch-means"
BALANCE_RATIO_RESULTS = ("balance_ratio", "balance_ratio_last10")


def for_run_id(d: dict) -> dict:
    """A config dict without the later fields at their defaults (in place; returned for chaining)."""
    for name, default in OMITTED_AT_DEFAULT.items():
        if name in d and d[name] == default:
            del d[name]
    for name, default in LATER_TRAIN_FIELDS.items():
        if name in d["train"] and d["train"][name] == default:
            del d["train"][name]
    return d


def upgrade_results(results: dict) -> dict:
    """A run's stored results as today's keys mean them (a new dict). Runs stored before the step time became
    the mean over the final phase's G steps kept the median step under `train_s_per_step`, a typical step
    without topology updates or balance-ratio probes: it moves to `train_s_per_step_median`, and their mean is
    unknown (absent), so that a dynamic method's median is never set against another run's mean."""
    if "train_s_per_step" in results and "train_s_per_step_median" not in results:
        results = {**results, "train_s_per_step_median": results["train_s_per_step"]}
        del results["train_s_per_step"]
    return results


def current_balance_ratios(env: dict) -> bool:
    """Whether a run's stored balance ratios come from today's estimator."""
    return env.get("balance_ratio_estimator") == BALANCE_RATIO_ESTIMATOR


def without_stale_balance_ratios(results: dict, env: dict) -> dict:
    """A run's stored results, without balance ratios another estimator measured (in place; returned)."""
    if not current_balance_ratios(env):
        for key in BALANCE_RATIO_RESULTS:
            results.pop(key, None)
    return results


def upgrade(config: dict) -> dict:
    """A stored config with the fields it lacks at the values its run had in effect (a new dict)."""
    out = {**BEFORE_THE_FIELD, **config}
    out["train"] = {**LATER_TRAIN_FIELDS, **(config.get("train") or {})}
    return out

"""What makes a table cell: every setting of a run's config that can change its numbers, but the seed.

Runs are pooled into one cell (mean over seeds, an interval against a reference) only when they share all
of these: method, its options (defaults included), arch, dataset and its options, preset, every training
setting (steps, batch, learning rates, the evaluation protocol...), s_G, s_D, scope, distribution, metrics,
optimizer-state policy, sparse-layer backend, opt-in execution modes and the code versions. `settings`
flattens a stored config into those keys (with the defaults of settings added after runs were stored
filled in, so an old run and a new one of the same settings agree), `cell_id` hashes them with the table's
axes (method, arch, s_G, s_D).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

AXES = ("method", "arch", "sg", "sd")
NOT_SETTINGS = {"seed", "version", *AXES}
# Config fields added after runs were stored, with the value those runs had in effect.
LATER_FIELDS = {"kernels": "dense", "opt_state": "zero"}


def settings(config: dict) -> dict[str, Any]:
    """A stored config (RunConfig.to_dict) flattened to `group.name` keys, without the seed and the axes:
    `train.*` (the TrainSpec), `option.*` (the method's), `arch.*` and `data.*` (those plugins' options),
    `code.*` (versions), and the top-level settings (dataset, preset, scope, ...)."""
    from sparsebench.config import LATER_TRAIN_FIELDS

    out: dict[str, Any] = {}
    groups = {"train": "train", "method_options": "option", "arch_options": "arch", "dataset_options": "data"}
    for key, value in config.items():
        if key in NOT_SETTINGS:
            continue
        if key in groups or key == "code":
            prefix = groups.get(key, "code")
            out.update({f"{prefix}.{k}": _plain(v) for k, v in (value or {}).items()})
        else:
            out[key] = _plain(value)
    for key, default in LATER_FIELDS.items():
        out.setdefault(key, default)
    for key, default in LATER_TRAIN_FIELDS.items():
        out.setdefault(f"train.{key}", default)
    return out


def cell_id(config: dict) -> str:
    """A short hash of a run's cell: its axes and `settings`, i.e. everything in its config but the seed."""
    blob = {**{k: config.get(k) for k in AXES}, **settings(config)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def shared_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The settings a method's reference run must share with it: all but the method's own options and code."""
    return {k: v for k, v in flat.items() if not k.startswith("option.") and k != "code.method"}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

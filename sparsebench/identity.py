"""A run's cell, the identity of what it measured: its stored config flattened to settings, and their hash.

Runs are pooled into one cell only when they share every setting of their config but the seed. `settings`
flattens a stored config into those keys (upgraded, `sparsebench.compat`, so an old run and a new one of the
same settings agree) and `cell_id` hashes them with the table's axes (method, arch, s_G, s_D). The store keys
its results table by it and the analysis pools by it, so both read it from here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sparsebench import compat

AXES = ("method", "arch", "sg", "sd")
NOT_SETTINGS = {"seed", "version", *AXES}


def settings(config: dict) -> dict[str, Any]:
    """A stored config (RunConfig.to_dict) flattened to `group.name` keys, without the seed and the axes:
    `train.*` (the TrainSpec), `option.*` (the method's), `arch.*` and `data.*` (those plugins' options),
    `code.*` (versions), and the top-level settings (dataset, preset, scope, ...)."""
    out: dict[str, Any] = {}
    groups = {"train": "train", "method_options": "option", "arch_options": "arch", "dataset_options": "data"}
    for key, value in compat.upgrade(config).items():
        if key in NOT_SETTINGS:
            continue
        if key in groups or key == "code":
            prefix = groups.get(key, "code")
            out.update({f"{prefix}.{k}": _plain(v) for k, v in (value or {}).items()})
        else:
            out[key] = _plain(value)
    return out


def cell_id(config: dict) -> str:
    """A short hash of a run's cell: its axes and `settings`, i.e. everything in its config but the seed."""
    blob = {**{k: config.get(k) for k in AXES}, **settings(config)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

"""Which runs a cell is compared with: the cell of its method's declared reference (`Method.reference`) with the
same settings (length included; same arch, s_G and s_D, or the reference's own where it fixes them, as the dense
GAN does), at the reference's default options, the settings the reference cannot use left out. Several such
cells (code versions of the reference) are named, never pooled."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from sparsebench.analysis.cells import (
    Defaults,
    MethodInfo,
    cell_of,
    label_order,
    off_default,
    row_settings,
    same,
    shared_settings,
    show,
)

# The settings a reference cannot use, by kind of reference: a dense run (s_G = s_D = 0) has no masked weight,
# so no optimizer-state policy, backend, scope or distribution applies; a method whose masks never change
# trains identically under every optimizer-state policy (sparsebench.sparse.opt_state) with dense kernels.
NOT_USED_BY_DENSE = ("opt_state", "kernels", "scope", "distribution")
NOT_USED_BY_FIXED_MASKS = ("opt_state",)


def reference_key(flat: dict[str, Any], not_used: tuple[str, ...] = ()) -> str:
    """What a reference run must share with a cell: its settings but the method's own and those the
    reference cannot use."""
    shared = {k: v for k, v in shared_settings(flat).items() if k not in not_used}
    return json.dumps(shared, sort_keys=True, default=str)


def not_used_by(info: MethodInfo, reference: str, dense: bool, flat: dict[str, Any]) -> tuple[str, ...]:
    if dense:
        return NOT_USED_BY_DENSE
    if info.fixed_masks(reference) and flat.get("kernels", "dense") == "dense":
        return NOT_USED_BY_FIXED_MASKS
    return ()


def describe_settings(flat: dict[str, Any], base: dict[str, Any]) -> str:
    """The settings a reference was looked for with, as a reader needs them: those off the defaults."""
    differ = [k for k in shared_settings(flat) if off_default(k, flat, base)]
    named = [show(k, flat[k]) for k in sorted(differ, key=label_order)]
    return ", ".join(["preset " + str(flat.get("preset"))] + named)


class ReferenceIndex:
    """The done runs of a frame, indexed by the keys a cell looks its reference up by."""

    def __init__(self, pool: pd.DataFrame, info: MethodInfo, defaults: Defaults):
        self.info, self.defaults = info, defaults
        self.done = pool[(pool["status"] == "done") & pool["fid"].notna()]
        self._by: dict[tuple, dict[str, list[int]]] = {}
        for i, r in zip(self.done.index, self.done.itertuples(index=False)):
            flat = row_settings(r)
            base = defaults(r.method, r.arch, str(getattr(r, "preset", "")))
            if any(k.startswith("option.") and k in base and not same(v, base[k]) for k, v in flat.items()):
                continue  # a reference runs at its method's default options
            # the keys it is looked up by: as it is, as a dense reference, at any policy where its masks never change
            fixed = (NOT_USED_BY_FIXED_MASKS,) if info.fixed_masks(r.method) else ()
            for unused in ((), NOT_USED_BY_DENSE) + fixed:
                key = (r.method, r.arch, r.sg, r.sd, reference_key(flat, unused))
                self._by.setdefault(key, {}).setdefault(cell_of(r, flat), []).append(i)

    def lookup(self, reference: str, arch: str, sg: float, sd: float, flat: dict[str, Any]) -> dict[str, list[int]]:
        """The matching cells of `reference` for a cell at (arch, s_G, s_D) with settings `flat`: cell id -> the
        index labels of its done runs in the pool."""
        fixed = self.info.fixed(reference)
        ref_sg, ref_sd = float(fixed.get("sg", sg)), float(fixed.get("sd", sd))
        unused = not_used_by(self.info, reference, ref_sg == 0.0 and ref_sd == 0.0, flat)
        return self._by.get((reference, arch, ref_sg, ref_sd, reference_key(flat, unused)), {})

    def runs(self, rows: list[int]) -> pd.DataFrame:
        return self.done.loc[rows]

"""Declared (confirmatory) studies: the TOML files that fix a comparison's runs and analysis before its runs.

A study written down before its results are seen cannot be tuned to them: which comparisons, which seeds
(and which were the pilot, analysed before and never pooled), which test, correction, equivalence margin and
sensitivity analysis. This module reads such a file strictly, so that a typo (an unknown key, a test the
report does not implement) is an error naming what is allowed rather than a silently different analysis, and
checks a store's seeds against the declared ones (`seed_check`), so the report can say what is missing and
whether the store holds seeds the study did not declare.

The format (see reports/small/studies/stugan-vs-static.toml): top-level `name`, `title`, `declared` (a TOML
date), `question`; a `[runs]` table (preset, sd, precision, channels_last, seeds, pilot_seeds); an
`[analysis]` table (metric, scale, pairing, test, alpha, correction, equivalence, sensitivity); one or more
`[[comparison]]` tables (arch, sg, method, reference).
"""

from __future__ import annotations

import datetime
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from sparsebench import SparsebenchError

TOP_KEYS = ("name", "title", "declared", "question", "runs", "analysis", "comparison")
RUNS_KEYS = ("preset", "sd", "precision", "channels_last", "seeds", "pilot_seeds")
ANALYSIS_KEYS = ("metric", "scale", "pairing", "test", "alpha", "correction", "equivalence", "sensitivity")
COMPARISON_KEYS = ("arch", "sg", "method", "reference")
OPTIONAL = {"pilot_seeds", "comparison"}  # a study may have had no pilot; no comparison has its own message
# what the analysis implements (sparsebench.analysis.stats): any other value would be analysed differently
# from what the file declares, so it is refused
CHOICES = {
    "metric": ("fid",),
    "scale": ("log",),
    "pairing": ("seed",),
    "test": ("paired-t",),
    "correction": ("holm",),
    "sensitivity": ("wilcoxon",),
}

Arm = tuple[str, float, str]  # (arch, sg, method): one arm of a comparison, as the store's cells are keyed


@dataclass(frozen=True)
class Comparison:
    """One declared comparison: `method` against `reference` in the cell (arch, sg), over the study's seeds."""

    arch: str
    sg: float
    method: str
    reference: str

    @property
    def arms(self) -> tuple[Arm, Arm]:
        """The (arch, sg, method) keys of the method's arm and the reference's."""
        return (self.arch, self.sg, self.method), (self.arch, self.sg, self.reference)


@dataclass(frozen=True)
class Study:
    """A declared study, as its file says (validated by `load_study`)."""

    name: str
    title: str
    declared: datetime.date  # the day it was declared: before any of its seeds' results
    question: str
    path: Path
    runs: dict[str, Any]  # the [runs] table (seed lists as tuples; pilot_seeds () when absent)
    seeds: tuple[int, ...]  # the confirmatory seeds
    pilot_seeds: tuple[int, ...]  # analysed before the study: reported apart, never pooled
    metric: str
    scale: str
    pairing: str
    test: str
    alpha: float
    correction: str
    equivalence: tuple[float, float]  # the margin on the ratio
    sensitivity: str
    comparisons: tuple[Comparison, ...]


class _Reader:
    """Checks one file's values, raising one-line SparsebenchErrors that name the file, the key and what is
    allowed."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str) -> SparsebenchError:
        return SparsebenchError(f"study {self.path}: {message}")

    def table(self, value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be a table, got {_kind(value)}")
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise self.fail(f"unknown key {unknown[0]!r} in {where}; allowed: {', '.join(keys)}")
        needed = [k for k in keys if k not in OPTIONAL]
        missing = [k for k in needed if k not in value]
        if missing:
            raise self.fail(f"{where} lacks {missing[0]!r}; it needs: {', '.join(needed)}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string, got {_kind(value)}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(f"{key} must be a number, got {_kind(value)}")
        return float(value)

    def sparsity(self, value: Any, key: str) -> float:
        x = self.number(value, key)
        if not 0.0 <= x < 1.0:
            raise self.fail(f"{key} must lie in [0, 1), got {value}")
        return x

    def seeds(self, value: Any, key: str, empty: bool) -> tuple[int, ...]:
        if not isinstance(value, list) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value):
            raise self.fail(f"{key} must be a list of integers >= 0, got {value!r}")
        if not value and not empty:
            raise self.fail(f"{key} is empty; declare at least one seed")
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise self.fail(f"{key} lists seed {repeated[0]} twice; each seed once")
        return tuple(value)

    def choice(self, value: Any, key: str) -> str:
        allowed = CHOICES[key]
        if value not in allowed:
            raise self.fail(f"{key} = {value!r} is not implemented; allowed: {', '.join(map(repr, allowed))}")
        return str(value)


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; raises SparsebenchError (one line: the file, what was wrong, what is
    allowed) on anything the analysis would not do as declared."""
    path = Path(path)
    check = _Reader(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise check.fail(f"cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise check.fail(f"is not valid TOML: {exc}") from None
    top = check.table(raw, "the file", TOP_KEYS)
    declared = top["declared"]
    if type(declared) is not datetime.date:  # a datetime is a date too, and a quoted date a string
        raise check.fail(f"declared must be a TOML date such as 2026-12-06 (unquoted), got {_kind(declared)}")

    runs = dict(check.table(top["runs"], "[runs]", RUNS_KEYS))
    check.text(runs["preset"], "runs.preset")
    check.text(runs["precision"], "runs.precision")
    check.sparsity(runs["sd"], "runs.sd")
    if not isinstance(runs["channels_last"], bool):
        raise check.fail(f"runs.channels_last must be true or false, got {_kind(runs['channels_last'])}")
    seeds = check.seeds(runs["seeds"], "runs.seeds", empty=False)
    pilot = check.seeds(runs.get("pilot_seeds", []), "runs.pilot_seeds", empty=True)
    both = sorted(set(seeds) & set(pilot))
    if both:
        raise check.fail(f"seed {both[0]} is both in runs.seeds and runs.pilot_seeds; a pilot seed is never pooled")
    runs["seeds"], runs["pilot_seeds"] = seeds, pilot

    analysis = check.table(top["analysis"], "[analysis]", ANALYSIS_KEYS)
    chosen = {key: check.choice(analysis[key], key) for key in CHOICES}
    alpha = check.number(analysis["alpha"], "alpha")
    if not 0.0 < alpha < 1.0:
        raise check.fail(f"alpha must lie in (0, 1), got {analysis['alpha']}")
    margin = analysis["equivalence"]
    if (
        not isinstance(margin, list)
        or len(margin) != 2
        or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in margin)
        or not 0 < margin[0] < margin[1]
    ):
        raise check.fail(f"equivalence must be two increasing positive numbers such as [0.8, 1.25], got {margin!r}")

    tables = top.get("comparison", [])
    if not isinstance(tables, list):
        raise check.fail(f"comparison must be [[comparison]] tables (an array of tables), got {_kind(tables)}")
    if not tables:
        raise check.fail("declares no comparison; add at least one [[comparison]] table")
    comparisons: list[Comparison] = []
    for i, table in enumerate(tables, 1):
        where = f"[[comparison]] {i}"
        c = check.table(table, where, COMPARISON_KEYS)
        comparison = Comparison(
            check.text(c["arch"], f"{where}: arch"),
            check.sparsity(c["sg"], f"{where}: sg"),
            check.text(c["method"], f"{where}: method"),
            check.text(c["reference"], f"{where}: reference"),
        )
        if comparison.method == comparison.reference:
            raise check.fail(f"{where} compares {comparison.method!r} with itself; give another reference")
        if comparison in comparisons:
            raise check.fail(f"{where} repeats [[comparison]] {comparisons.index(comparison) + 1}; each one once")
        comparisons.append(comparison)

    return Study(
        name=check.text(top["name"], "name"),
        title=check.text(top["title"], "title"),
        declared=declared,
        question=check.text(top["question"], "question"),
        path=path,
        runs=runs,
        seeds=seeds,
        pilot_seeds=pilot,
        alpha=alpha,
        equivalence=(float(margin[0]), float(margin[1])),
        comparisons=tuple(comparisons),
        **chosen,
    )


def load_studies(folder: str | Path) -> list[Study]:
    """Every `*.toml` study in `folder`, sorted by study name ([] when there is none, or no folder). Two files
    declaring the same name are an error: the report names a study by it."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    studies = sorted((load_study(p) for p in folder.glob("*.toml")), key=lambda s: (s.name, str(s.path)))
    for a, b in zip(studies, studies[1:]):
        if a.name == b.name:
            raise SparsebenchError(f"studies {a.path} and {b.path} are both named {a.name!r}; rename one")
    return studies


class SeedCheck(TypedDict):
    arms: list[Arm]  # every arm the study reads, in the order of its comparisons (method's arm, then reference's)
    missing: dict[Arm, list[int]]  # declared seeds not stored done, per arm (arms missing none left out)
    extra: dict[Arm, list[int]]  # seeds stored done that are neither declared nor pilot, per arm (likewise)
    complete: bool  # no declared seed missing in any arm


def seed_check(study: Study, stored: Mapping[tuple, set[int]]) -> SeedCheck:
    """The study's declared seeds against the seeds `stored` done per arm, keyed (arch, sg, method) (arms the
    study does not read are ignored; sg matched as a float to 9 decimals). Reports the declared seeds missing
    per arm, and any seeds stored beyond the declared and pilot ones: a study analysed from a store holding
    other seeds than it declared must say so, since it could have been chosen among them."""

    def key(arm: tuple) -> tuple[str, float, str]:
        arch, sg, method = arm
        return str(arch), round(float(sg), 9), str(method)

    done = {key(arm): set(seeds) for arm, seeds in stored.items()}
    declared, pilot = set(study.seeds), set(study.pilot_seeds)
    arms: list[Arm] = []
    for comparison in study.comparisons:
        arms.extend(arm for arm in comparison.arms if arm not in arms)
    missing: dict[Arm, list[int]] = {}
    extra: dict[Arm, list[int]] = {}
    for arm in arms:
        have = done.get(key(arm), set())
        if declared - have:
            missing[arm] = sorted(declared - have)
        if have - declared - pilot:
            extra[arm] = sorted(have - declared - pilot)
    return SeedCheck(arms=arms, missing=missing, extra=extra, complete=not missing)

"""The docs say what the code does: every public name docs/plugins.md uses is exported from `sparsebench`,
and the API reference of `MethodContext` lists what the docs promise a method (`batch`, `count`)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import sparsebench

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def surface_table() -> list[str]:
    """The names in the first column of the docs' public-surface table."""
    text = DOCS.read_text()
    table = text.split("| names | what |", 1)[1].split("\n\n", 1)[0]
    names = []
    for line in table.splitlines()[2:]:
        first = line.split("|")[1]
        names += [re.sub(r"\(.*", "", n) for n in re.findall(r"`([^`]+)`", first)]
    return names


def test_the_public_surface_table_lists_what_the_docs_use_and_all_of_it_is_exported():
    names = surface_table()
    for used in ("TopologyUpdate", "DynamicSparseMethod", "gradient_magnitude", "magnitude", "d_hinge_loss",
                 "g_hinge_loss", "FeatureExtractor", "DensePass", "Hooks", "MethodContext"):  # fmt: skip
        assert used in names, used
    for name in names:
        assert name in sparsebench.__all__, name
        assert getattr(sparsebench, name) is not None, name


def test_every_sparsebench_name_the_docs_use_is_exported():
    text = DOCS.read_text()
    used = set(re.findall(r"\bsb\.([A-Za-z_]\w*)", text))  # the example module's `import sparsebench as sb`
    used |= {m for m in re.findall(r"\bsparsebench\.([A-Za-z_]\w*)(?![\w.])", text)}
    assert {"Method", "magnitude_masks", "DensePass", "gradient_magnitude", "d_hinge_loss"} <= used
    missing = sorted(n for n in used if n not in sparsebench.__all__)
    assert not missing, f"docs/plugins.md uses names sparsebench does not export: {missing}"
    assert not re.findall(r"`sparsebench\.(?:sparse|train|api)\.", text)  # module paths are not stable


def test_the_api_reference_of_method_context_lists_batch_and_count():
    from sparsebench.train.context import RunContext

    members = dict(inspect.getmembers(sparsebench.MethodContext))
    for name in ("batch", "count", "rng", "masks", "train", "require", "finish"):
        assert name in members and inspect.getdoc(members[name]), name
        assert hasattr(RunContext, name), name  # the core's context provides it
    assert "ctx.batch(" in DOCS.read_text() and "ctx.count(" in DOCS.read_text()


def test_hook_numbering_and_the_five_hooks_are_documented():
    text = DOCS.read_text()
    assert "four hooks" not in text and "five hooks" in text
    assert "numbered from 1" in text and "`due(0)`" in text
    assert "method_options" in text and "defaults" in text

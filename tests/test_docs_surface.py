"""The docs say what the code does, checked by structure rather than wording: every pluggy hook specification
is documented with its signature, every public name docs/plugins.md uses is exported from `sparsebench`,
every `MethodContext` member and `Hooks` extension point is documented, the README stays one page that
opens with its set-up commands, and every relative link in the docs resolves."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import sparsebench
import sparsebench.hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins.md"
README = ROOT / "README.md"
LINKED = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def surface_table() -> list[str]:
    """The names in the first column of the docs' public-surface table."""
    text = DOCS.read_text()
    table = text.split("| names | what |", 1)[1].split("\n\n", 1)[0]
    names = []
    for line in table.splitlines()[2:]:
        first = line.split("|")[1]
        names += [re.sub(r"\(.*", "", n) for n in re.findall(r"`([^`]+)`", first)]
    return names


def fenced_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks of a Markdown text, in order."""
    return re.findall(r"^```[^\n]*\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """A Markdown text without fenced code blocks, HTML comments and inline code spans (no links there)."""
    text = re.sub(r"^```.*?^```$", "", text, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered)."""
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_the_public_surface_table_lists_what_the_docs_use_and_all_of_it_is_exported():
    names = surface_table()
    for used in ("TopologyUpdate", "DynamicSparseMethod", "gradient_magnitude", "magnitude", "d_hinge_loss",
                 "g_hinge_loss", "FeatureExtractor", "DensePass", "Callbacks", "MethodContext"):  # fmt: skip
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


def test_every_hook_specification_is_documented_with_its_signature():
    specs = {
        name: fn
        for name, fn in vars(sparsebench.hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "sparsebench_spec")
    }
    assert specs, "sparsebench.hookspecs declares the plugin hooks"
    text = DOCS.read_text()
    for name, fn in specs.items():
        assert f"`{name}{inspect.signature(fn)}`" in text, f"docs/plugins.md does not document hook {name}"
    documented = set(re.findall(r"^\| `(register_\w+)\(", text, re.MULTILINE))
    assert documented == set(specs), "the hook table of docs/plugins.md lists exactly the hook specifications"


def test_every_method_context_member_and_loop_hook_is_documented():
    from sparsebench.train.context import RunContext

    text = DOCS.read_text()
    members = dict(inspect.getmembers(sparsebench.MethodContext))
    public = [name for name in members if not name.startswith("_")]
    for name in ("batch", "count", "rng", "masks", "train", "require", "finish"):
        assert name in members and inspect.getdoc(members[name]), name
        assert hasattr(RunContext, name), name  # the core's context provides it
    for name in public:
        assert f"`ctx.{name}" in text, f"docs/plugins.md does not document MethodContext.{name}"
    for name in (n for n in vars(sparsebench.Callbacks) if not n.startswith("_")):
        assert f"`{name}" in text, f"docs/plugins.md does not document Callbacks.{name}"


def test_the_readme_is_one_page_that_opens_with_its_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 120
    install_and_run, install_and_test = fenced_blocks(text)[:2]
    assert re.fullmatch(
        r"python3 -m venv \.venv && \. \.venv/bin/activate && pip install \. && sparsebench run [^\n]+\n",
        install_and_run,
    )
    test_all, fast_tier = install_and_test.splitlines()
    tests = re.fullmatch(
        r"python3 -m venv \.venv && \. \.venv/bin/activate && pip install '\.\[([\w,]+)\]' "
        r"&& python -m pytest -q && python -m pytest -q -m slow",
        test_all,
    )
    assert tests and fast_tier == "python -m pytest -q"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = tests[1].split(",")
    assert "test" in wanted and set(wanted) <= set(extras), wanted


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in LINKED:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(doc.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken

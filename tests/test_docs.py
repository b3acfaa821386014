"""The docs embed what the code says through cog blocks (the SNIP example package's module, `--help` output,
the built-in methods' options, the presets' settings). CI runs `cog --check`; these tests catch the same
drift in the fast tier without cog: the embedded example is its file, and every block's output is what its
code gives now."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sparsebench-snip" / "sparsebench_snip" / "__init__.py"
DOCS = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]
# cog's default markers, each on a line of its own inside an HTML comment
BLOCK = re.compile(
    r"^<!-- \[\[\[cog\n(?P<code>.*?)^\]\]\] -->\n(?P<output>.*?)^<!-- \[\[\[end\]\]\] -->$", re.MULTILINE | re.DOTALL
)


def cog_blocks(path: Path) -> list[tuple[str, str]]:
    """(code, output) of every cog block of `path`; a block not written as BLOCK expects fails the test."""
    text = path.read_text()
    blocks = [(m["code"], m["output"]) for m in BLOCK.finditer(text)]
    assert len(blocks) == text.count("[[[cog"), f"{path.name}: a cog block is not written as the tests expect"
    return blocks


class CogStandIn:
    """What a cog block's code calls: `cog.out` and `cog.outl`, collected as cog collects them."""

    def __init__(self):
        self.parts: list[str] = []

    def out(self, s: str = "", **_):
        self.parts.append(s)

    def outl(self, s: str = "", **_):
        self.parts.append(s + "\n")

    def output(self) -> str:
        text = "".join(self.parts)
        return text if not text or text.endswith("\n") else text + "\n"  # cog ends the output with a newline


def test_the_example_plugin_in_the_docs_is_its_file():
    embedded = [out for code, out in cog_blocks(ROOT / "docs" / "plugins.md") if "sparsebench_snip" in code]
    assert len(embedded) == 1, "docs/plugins.md embeds the SNIP example once"
    assert embedded[0] == f"```python\n{EXAMPLE.read_text()}```\n", (
        "docs/plugins.md's copy of examples/sparsebench-snip/sparsebench_snip/__init__.py differs from the file: "
        "run `cog -r docs/plugins.md`"
    )


def test_the_docs_that_embed_generated_text_are_the_ones_ci_checks():
    with_blocks = {p.relative_to(ROOT).as_posix() for p in DOCS if cog_blocks(p)}
    assert {"docs/plugins.md", "docs/cli.md", "docs/methods.md", "docs/presets.md"} <= with_blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^cog --check .*docs/\*\.md", ci, re.MULTILINE), ".ci/run checks the docs' cog blocks"


@pytest.mark.parametrize("doc", [p for p in DOCS if "[[[cog" in p.read_text()], ids=lambda p: p.name)
def test_every_generated_block_is_current(doc, monkeypatch):
    monkeypatch.chdir(ROOT)  # cog runs from the repository root, in CI too
    for code, output in cog_blocks(doc):
        cog = CogStandIn()
        exec(compile(textwrap.dedent(code), f"<cog {doc.name}>", "exec"), {"cog": cog})
        name = doc.relative_to(ROOT).as_posix()
        assert cog.output() == output, f"{name}: a generated block is stale: run `cog -r {name}`"

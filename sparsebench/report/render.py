"""Rendering tables as GitHub Markdown and as LaTeX (booktabs), escaping every user string."""

from __future__ import annotations

import html
import re

from sparsebench.report.tables import Table

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


_UNICODE = {
    "±": r"$\pm$",
    "×": r"$\times$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "Δ": r"$\Delta$",
    "†": r"\textsuperscript{\dag}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and spell out the few symbols our captions use)."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIALS[m.group()], str(text))
    for char, tex in _UNICODE.items():
        out = out.replace(char, tex)
    return out


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|~])")


def markdown_escape(text: object) -> str:
    """`text` shown as itself in GitHub Markdown: names read from a store can hold no HTML, link, image,
    emphasis, table cell or new line."""
    one_line = " ".join(str(text).splitlines())
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(one_line, quote=False))


def markdown(table: Table) -> str:
    groups = [g for g, _ in table.columns]
    head = table.row_header + [
        f"{markdown_escape(g)}: {markdown_escape(c)}" if g else markdown_escape(c) for g, c in table.columns
    ]
    lines = [
        f"**{table.title}.** {table.caption}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([" --- "] * len(table.row_header) + [" :-: "] * len(groups)) + "|",
    ]
    for names, cells in table.rows:
        out = [markdown_escape(n) for n in names]
        for c in cells:
            text = markdown_escape(c.text)
            out.append(f"**{text}**" if c.bold else text)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def _latex_cell(cell) -> str:
    body = latex_escape(cell.text)
    return rf"\textbf{{{body}}}" if cell.bold and body else body


def latex(table: Table) -> str:
    n_rows = len(table.row_header)
    groups: list[tuple[str, int]] = []
    for g, _ in table.columns:
        if groups and groups[-1][0] == g:
            groups[-1] = (g, groups[-1][1] + 1)
        else:
            groups.append((g, 1))
    spec = "l" * n_rows + "c" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\scriptsize", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if any(g for g, _ in groups):  # a two-level header: the groups (archs) over their columns
        head1 = [""] * n_rows + [rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(g)}}}" for g, n in groups]
        lines.append(" & ".join(head1) + r" \\")
        start = n_rows + 1
        rules = []
        for _, n in groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        lines.append(" ".join(rules))
    head2 = [latex_escape(h) for h in table.row_header] + [latex_escape(c) for _, c in table.columns]
    lines.append(" & ".join(head2) + r" \\")
    lines.append(r"\midrule")
    for names, cells in table.rows:
        lines.append(" & ".join([latex_escape(n) for n in names] + [_latex_cell(c) for c in cells]) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{latex_escape(table.title)}: {latex_escape(table.caption)}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def latex_document(body: str) -> str:
    """A standalone document around the tables (compiles with pdflatex)."""
    return "\n".join(
        [
            r"\documentclass{article}",
            r"\usepackage[utf8]{inputenc}",
            r"\usepackage{booktabs}",
            r"\usepackage{amsmath}",
            r"\usepackage[margin=1cm,landscape]{geometry}",
            r"\begin{document}",
            body,
            r"\end{document}",
            "",
        ]
    )

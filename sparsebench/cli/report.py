"""`sparsebench report`: the results store as tables, comparisons and figures."""

from __future__ import annotations

import click

from sparsebench.cli.common import _plugins, _store, _studies, convention_option, store_option, study_option


@click.command()
@click.option("--format", "fmt", default="all", show_default=True, help="md, latex or all")
@click.option("--out", default=None, help="output folder (default reports/<name>)")
@click.option("--name", default=None, help="report name (default: the preset filter, or 'all')")
@click.option("--arch", default=None, help="only these architectures (comma-separated)")
@click.option("--method", default=None, help="only these methods (comma-separated)")
@click.option("--preset", default=None, help="only this preset")
@click.option("--no-samples", is_flag=True, help="skip the per-run sample grids")
@convention_option
@study_option
@store_option
def report(fmt, out, name, arch, method, preset, no_samples, convention, studies, store_path):
    """Turn the results store into the paper's tables (Markdown, LaTeX), comparisons, plots and sample grids."""
    from pathlib import Path

    from sparsebench.flop_conventions import check_convention
    from sparsebench.report.build import build_report, default_command

    check_convention(convention)
    declared = _studies(studies, store_path)
    store = _store(store_path, readonly=True)
    target = Path(out) if out else Path("reports") / (name or preset or "all")
    try:
        written = build_report(
            store,
            target,
            fmt,
            arch,
            method,
            preset,
            samples=not no_samples,
            command=default_command(),
            convention=convention,
            methods=_plugins().methods,
            studies=declared,
        )
    finally:
        store.close()
    click.echo(f"report: {target / 'index.md'} ({len(written)} files)")

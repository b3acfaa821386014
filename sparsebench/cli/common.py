"""What the commands share: one-line errors, plugin loading with warnings, parsing of comma-separated lists,
and the options several commands take."""

from __future__ import annotations

import sys
import warnings

import click

from sparsebench import SparsebenchError


class OneLineErrors(click.Group):
    """Every usage or input error is one line on stderr and a non-zero exit."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)
        except SparsebenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            msg = exc.format_message().replace("\n", " ")
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {msg}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)


def _plugins():
    from sparsebench.plugins import PluginWarning, get_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        plugins = get_plugins()
    for message in plugins.warnings:
        click.echo(f"Warning: {message}", err=True)
    return plugins


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SparsebenchError(f"{what} is empty; give a comma-separated list")
    return items


def _floats(value: str, what: str) -> list[float]:
    out = []
    for item in _split(value, what):
        try:
            v = float(item)
        except ValueError:
            raise SparsebenchError(f"{what}: {item!r} is not a number; sparsities lie in [0, 1)") from None
        if not 0.0 <= v < 1.0:
            raise SparsebenchError(f"{what}: {item} is outside [0, 1)")
        out.append(v)
    return out


def _ints(value: str, what: str) -> list[int]:
    out = []
    for item in _split(value, what):
        try:
            out.append(int(item))
        except ValueError:
            raise SparsebenchError(f"{what}: {item!r} is not an integer") from None
    return out


def _store(path: str | None, readonly: bool = False):
    from sparsebench.store import Store

    return Store(path, readonly=readonly)


store_option = click.option(
    "--store",
    "store_path",
    type=str,
    default=None,
    help="results database (default ./sparsebench-results/results.db or $SPARSEBENCH_STORE)",
)


study_option = click.option(
    "--study",
    "studies",
    multiple=True,
    metavar="FILE",
    help="a declared study (TOML) whose comparisons are confirmatory (repeatable; default: studies/*.toml beside "
    "the store)",
)


def _studies(paths: tuple[str, ...], store_path: str | None) -> list:
    """The declared studies: those named, else every studies/*.toml beside the store."""
    from pathlib import Path

    from sparsebench.analysis.study import load_studies, load_study
    from sparsebench.store import default_store_path

    if paths:
        return [load_study(p) for p in paths]
    folder = Path(store_path or default_store_path()).parent / "studies"
    return load_studies(folder) if folder.is_dir() else []


convention_option = click.option(
    "--convention",
    default="fvcore",
    show_default=True,
    help="FLOP convention: fvcore (1 per multiply-add, D counted at its density) or paper (the paper's Table 2: "
    "2 per multiply-add, a sparse G beside a dense D scaled by G's density alone)",
)


def plugin_options(help: str):
    """The `--option` / `-o PLUGIN.NAME=VALUE` option (repeatable), with the command's own `help`."""
    return click.option("--option", "-o", "options", multiple=True, metavar="PLUGIN.NAME=VALUE", help=help)

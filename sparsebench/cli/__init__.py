"""The `sparsebench` command line: thin click commands over the Python API, one module per group of commands
(`run`, `report`, and the commands that only look: `inspect`); what they share is in `common`."""

from __future__ import annotations

import logging
import os
import warnings

import click

from sparsebench import __version__
from sparsebench.cli.common import OneLineErrors
from sparsebench.cli.inspect import describe, flops, list_cmd, results, show
from sparsebench.cli.report import report
from sparsebench.cli.run import run


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sparsebench")
@click.option("-v", "--verbose", is_flag=True, help="log what happens (FLOP counting, plugin loading)")
def cli(verbose: bool):
    """Benchmark sparse GAN training: STU-GAN and its baselines, FID/IS and FLOPs side by side."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")


def main():
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    cli(prog_name="sparsebench")


for command in (run, list_cmd, show, results, describe, flops, report):
    cli.add_command(command)

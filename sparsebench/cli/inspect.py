"""The commands that look without training: `list`, `show`, `results`, `describe` and `flops`."""

from __future__ import annotations

import json

import click

from sparsebench import SparsebenchError, defaults
from sparsebench.cli.common import (
    _floats,
    _ints,
    _plugins,
    _store,
    _studies,
    convention_option,
    plugin_options,
    store_option,
    study_option,
)


@click.command("list")
def list_cmd():
    """Show every registered method, architecture, metric, data set and feature extractor."""
    from tabulate import tabulate

    plugins = _plugins()
    for title, registry in (
        ("methods", plugins.methods),
        ("architectures", plugins.archs),
        ("metrics", plugins.metrics),
        ("datasets", plugins.datasets),
        ("feature extractors", plugins.extractors),
    ):
        rows = [[name, registry.get(name).description, registry.source(name)] for name in registry.names()]
        click.echo(f"{title}:")
        click.echo(tabulate(rows, headers=["name", "description", "source"]))
        click.echo()
    groups = plugins.method_groups()
    click.echo("method groups: " + (", ".join(f"{g} = {','.join(ms)}" for g, ms in groups.items()) or "none"))


@click.command()
@click.argument("run_id")
@store_option
def show(run_id, store_path):
    """Print one run's config and results (a unique prefix of the id is enough)."""
    store = _store(store_path, readonly=True)
    try:
        run = store.find(run_id)
    finally:
        store.close()  # the command may run inside a longer-lived process (a notebook, the tests)
    if run is None:
        raise SparsebenchError(f"no run {run_id!r} in {store.path}; see 'sparsebench results'")
    click.echo(json.dumps(run, indent=2, sort_keys=True, default=str))


@click.command()
@click.option("--format", "fmt", default="csv", show_default=True, help="csv or json")
@study_option
@store_option
def results(fmt, studies, store_path):
    """Dump the flat results table, one row per run.

    Columns: the core's, then the result columns the installed methods declare, then "other": any further
    stored results of the run as a JSON object.

    JSON is an object: "runs" (one record per run), "cells" (one per table cell: its FID over the seeds done as
    a geometric mean with its interval, median and collapsed runs, and its comparison with its method's
    reference: the FID ratio with its 95 % interval, the test and its pairs, the verdict, whether it is
    confirmatory), "studies" (each declared study's comparisons) and "planning" (the seeds per arm a 20 %
    ratio needs, per arch).
    """
    from sparsebench.grid import results_frame
    from sparsebench.store import OTHER_COLUMN

    if fmt not in ("csv", "json"):
        raise SparsebenchError(f"--format {fmt!r}: allowed: csv, json")
    methods = _plugins().methods
    store = _store(store_path, readonly=True)
    try:
        df = results_frame(store, methods)
    finally:
        store.close()
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
        return
    from sparsebench.analysis.comparisons import analyse, json_ready

    analysis = json_ready(analyse(df, methods, studies=_studies(studies, store_path)))
    runs = json.loads(df.to_json(orient="records"))
    for run in runs:
        run[OTHER_COLUMN] = json.loads(run[OTHER_COLUMN]) if run[OTHER_COLUMN] else None
    click.echo(json.dumps({"runs": runs, **analysis}, indent=2))


@click.command()
@click.option("--arch", required=True, help="architecture")
@click.option("--preset", default="quick", show_default=True, help="quick, small, paper (biggan also: imagenet)")
@click.option("--sg", default="0.9", show_default=True, help="generator sparsity for the per-layer densities")
@click.option("--sd", default="0.5", show_default=True, help="discriminator sparsity for the per-layer densities")
@click.option("--scope", default=defaults.SCOPE, show_default=True, help="conv, conv+linear or weights")
@click.option(
    "--distribution",
    default=defaults.DISTRIBUTION,
    show_default=True,
    help="erk, er, uniform (global shown as uniform)",
)
@click.option("--format", "fmt", default="text", show_default=True, help="text or json")
@click.option(
    "--method",
    default=None,
    help="show the densities and FLOP plan of this method's run (its options with -o METHOD.NAME=VALUE)",
)
@click.option("--steps", type=str, default=None, help="G steps of the method's run (default: the preset's)")
@plugin_options("an option of the architecture or of --method, as for run (repeatable)")
def describe(arch, preset, sg, sd, scope, distribution, fmt, method, steps, options):
    """Parameter counts, per-layer shapes and densities, and dense FLOPs of G and D."""
    from tabulate import tabulate

    from sparsebench.config import DISTRIBUTIONS, SCOPES, freeze, preset_spec
    from sparsebench.describe import ESTIMATE_NOTE
    from sparsebench.describe import describe as describe_arch
    from sparsebench.options import parse_option_strings, validate_options

    plugins = _plugins()
    if scope not in SCOPES:
        raise SparsebenchError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    if distribution not in DISTRIBUTIONS:
        raise SparsebenchError(f"unknown distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
    if fmt not in ("text", "json"):
        raise SparsebenchError(f"--format {fmt!r}: allowed: text, json")
    arch_obj = plugins.archs.get(arch)
    given = parse_option_strings(options)
    for target in given:
        if target not in (arch, method):
            allowed = (
                f"the architecture ({arch}.NAME=VALUE) or of --method ({method}.NAME=VALUE)"
                if method
                else f"the architecture only ({arch}.NAME=VALUE; a method's with --method NAME)"
            )
            raise SparsebenchError(f"--option for {target!r}: describe takes options of {allowed}")
    if steps is not None and method is None:
        raise SparsebenchError("--steps: give --method too (the steps of a method's run)")
    arch_options = freeze(validate_options(arch_obj.options, given.get(arch, {}), arch))
    spec = preset_spec(arch_obj, preset)
    s_g, s_d, config = _floats(sg, "--sg")[0], _floats(sd, "--sd")[0], None
    if method is not None:
        from sparsebench.config import GridRequest, expand_grid

        req = GridRequest(
            methods=[method],
            arch=arch,
            sg=[s_g],
            sd=[s_d],
            preset=preset,
            steps=_ints(steps, "--steps")[0] if steps else None,
            scope=scope,
            distribution=distribution,
            options=given,
        )
        config = expand_grid(req, plugins)[0]
        s_g, s_d, spec = config.sg, config.sd, config.train
    info = describe_arch(plugins, arch, spec, scope, s_g, s_d, distribution, arch_options, config)
    if fmt == "json":
        click.echo(json.dumps(info, indent=2))
        return
    for key, name, s in (("g", "generator", info["sg"]), ("d", "discriminator", info["sd"])):
        click.echo(
            f"{name}: {info[key + '_params']:,} parameters, {info[key + '_scope_params']:,} in scope "
            f"'{scope}', {info[key + '_flops']:,.0f} FLOPs per image (dense forward, 1 FMA = 1 FLOP)"
        )
        rows = [
            [
                la["name"],
                "x".join(map(str, la["shape"])),
                f"{la['params']:,}",
                f"{la['density']:.4f}",
                f"{la['flops']:,.0f}",
            ]
            for la in info[key + "_layers"]
        ]
        what = f"density ({info['method']})" if "method" in info else f"density at s={s:g}"
        if info.get("estimate"):
            what = "~" + what
        click.echo(tabulate(rows, headers=["layer", "shape", "params", what, "FLOPs"]))
        click.echo()
    for item in info.get("plan", []):
        if item.get("dense_pass"):
            click.echo(
                f"{item['label']}: one dense pass, {item['g_images']} images through G, {item['d_images']} through D"
            )
            continue
        nets = ", ".join(f"{n} {'dense' if item[n.lower() + '_dense'] else 'sparse'}" for n in ("G", "D"))
        grads = "".join(
            f"; {item[k]} steps with {n}'s dense weight gradients"
            for n, k in (("G", "g_dense_grad_steps"), ("D", "d_dense_grad_steps"))
            if item[k]
        )
        click.echo(f"{'~' if item['estimate'] else ''}{item['label']}: {item['steps']} G steps ({nets}){grads}")
    if info.get("estimate") or any(item.get("estimate") for item in info.get("plan", [])):
        click.echo(ESTIMATE_NOTE)


@click.command()
@click.option("--arch", required=True, help="architecture")
@click.option("--preset", default="paper", show_default=True, help="quick, small or paper")
@click.option(
    "--methods",
    default="dense,pf-global,pf-uniform,gan-tickets,static,stugan",
    show_default=True,
    help="comma-separated methods",
)
@click.option("--sg", default="0.95,0.9,0.8", show_default=True, help="generator sparsities")
@click.option("--sd", default="0.5,0.7", show_default=True, help="discriminator sparsities")
@click.option("--scope", default=None, help="conv, conv+linear or weights (default: each method's own)")
@click.option("--steps", type=str, default=None, help="G steps (default: the preset's)")
@click.option("--format", "fmt", default="text", show_default=True, help="text or csv")
@plugin_options("a plugin option, e.g. gan-tickets.rounds=9 (repeatable)")
@convention_option
def flops(arch, preset, methods, sg, sd, scope, steps, fmt, options, convention):
    """The training / testing FLOP table of a grid, computed without training."""
    import pandas as pd

    from sparsebench.config import GridRequest, expand_grid
    from sparsebench.describe import ESTIMATE_NOTE, cost_table
    from sparsebench.flop_conventions import CONVENTION_NOTES, check_convention
    from sparsebench.grid import expand_methods
    from sparsebench.options import parse_option_strings

    if fmt not in ("text", "csv"):
        raise SparsebenchError(f"--format {fmt!r}: allowed: text, csv")
    check_convention(convention)
    plugins = _plugins()
    req = GridRequest(
        methods=expand_methods(methods, plugins),
        arch=arch,
        sg=_floats(sg, "--sg"),
        sd=_floats(sd, "--sd"),
        seeds=[0],
        preset=preset,
        steps=_ints(steps, "--steps")[0] if steps else None,
        scope=scope,
        options=parse_option_strings(options),
    )
    df = pd.DataFrame(cost_table(plugins, expand_grid(req, plugins), convention))
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
        return
    from tabulate import tabulate

    rows = [
        [r.method, r.arch, f"{r.sg:g}", f"{r.sd:g}"]
        + [  # "~": a plan whose densities follow the data or trained weights
            ("~" if r.estimate else "") + value
            for value in (f"{r.train_flops:.3e}", f"{r.test_flops:.3e}", f"{r.train_rel:.2f}x", f"{r.test_rel:.2f}x")
        ]
        for r in df.itertuples()
    ]
    click.echo(
        tabulate(rows, headers=["method", "arch", "sg", "sd", "train_flops", "test_flops", "train_rel", "test_rel"])
    )
    if df["estimate"].any():
        click.echo(ESTIMATE_NOTE)
    click.echo(
        CONVENTION_NOTES[convention].replace("×", "x")
        if convention == "fvcore"
        else "FLOPs in the paper's convention: 2 FLOPs per multiply-add; a phase that trains a sparse G beside a "
        "dense D costs a dense step times G's FLOP density (the dense D's share left out); backward = 2 x "
        "forward; the work methods declare beyond sparse steps (dense weight gradients of regrowth steps, "
        "one-off dense passes) is left out. The default (--convention fvcore) counts 1 per multiply-add, D as "
        "dense, and that work."
    )

"""The `sparsebench` command line: thin click commands over config, plugins, runner and store."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

import click

from sparsebench import SparsebenchError, __version__, defaults


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


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sparsebench")
@click.option("-v", "--verbose", is_flag=True, help="log what happens (FLOP counting, plugin loading)")
def cli(verbose: bool):
    """Benchmark sparse GAN training: STU-GAN and its baselines, FID/IS and FLOPs side by side."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")


@cli.command()
@click.option("--methods", required=True, help="comma-separated methods; 'pf' = pf-global,pf-uniform")
@click.option("--arch", required=True, help="architecture, e.g. biggan or sngan")
@click.option("--dataset", default=None, help="data set (default: the preset's: digits for quick)")
@click.option(
    "--sg", default=str(defaults.SG), show_default=True, help="generator sparsities, comma-separated, in [0, 1)"
)
@click.option(
    "--sd", default=str(defaults.SD), show_default=True, help="discriminator sparsities, comma-separated, in [0, 1)"
)
@click.option(
    "--seeds", default=str(defaults.SEED), show_default=True, help="seeds, comma-separated integers in [0, 2^32)"
)
@click.option(
    "--preset",
    default=defaults.PRESET,
    show_default=True,
    help="quick (a smoke test: minutes on CPU, digits), small (comparisons on CPU, digits: ~2-4 min a run), "
    "paper (CIFAR-10 reference settings); biggan also imagenet (128x128)",
)
@click.option("--steps", type=str, default=None, help="G steps per run (overrides the preset)")
@click.option(
    "--scope",
    default=None,
    help="sparse tensors: conv, conv+linear, or weights (ADAPT's: every conv and linear weight but norms' gains); "
    "default: conv at the quick and small presets (their width is too small for more), else each method's own "
    "(adapt: weights; the others: conv)",
)
@click.option(
    "--distribution",
    default=defaults.DISTRIBUTION,
    show_default=True,
    help="layer-wise sparsity: erk, er, uniform, global",
)
@click.option(
    "--opt-state",
    default=defaults.OPT_STATE,
    show_default=True,
    help="Adam state of masked weights: dense (dense gradients, warm regrowth), mean (regrown get the "
    "layer's mean), zero (regrown start at zero)",
)
@click.option(
    "--metrics",
    "metrics",
    default=",".join(defaults.METRICS),
    show_default=True,
    help="metrics to compute, comma-separated",
)
@click.option(
    "--kernels",
    default=defaults.KERNELS,
    show_default=True,
    help="sparse layers computed as masked dense, or with SparseProp's sparse CPU kernels (sparseprop)",
)
@click.option(
    "--precision",
    default=defaults.PRECISION,
    show_default=True,
    help="fp32, or bf16 (training forwards under bfloat16 autocast; fp32 weights and optimizer state)",
)
@click.option("--compile", "compile_", is_flag=True, help="train through torch.compile of G and D")
@click.option("--channels-last", is_flag=True, help="channels-last memory format for G, D and images")
@click.option("--deterministic", is_flag=True, help="deterministic algorithms on CUDA (slower; the CPU always is)")
@click.option(
    "--threads",
    type=str,
    default=str(defaults.THREADS),
    show_default=True,
    help="CPU threads each run trains with, in every executor (a CPU result depends on it: "
    "part of the run id when not 1)",
)
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="PLUGIN.NAME=VALUE",
    help="a plugin option, e.g. stugan.explore=gd (repeatable)",
)
@click.option("--device", default=defaults.DEVICE, show_default=True, help="cpu or cuda")
@click.option("--data-dir", default=None, help="where data sets live (CIFAR-10, image folders)")
@click.option("--inception-weights", default=None, help="local Inception weights file for offline use")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option(
    "--checkpoint-every",
    type=str,
    default=str(defaults.CHECKPOINT_EVERY),
    show_default=True,
    help="G steps between checkpoints (0: only at the end of each phase and on SIGTERM / Ctrl-C)",
)
@click.option("--retry-failed", is_flag=True, help="run again the cells stored as failed or diverged")
@click.option(
    "--rerun",
    is_flag=True,
    help="train every cell of the grid again, done ones too; a cell's stored "
    "result is replaced only when its new run ends (runs it builds on are reused)",
)
@click.option("--executor", default=defaults.EXECUTOR, show_default=True, help="local (worker processes) or ray")
@click.option(
    "--jobs",
    type=str,
    default=str(defaults.JOBS),
    show_default=True,
    help="local worker processes (1: in this process)",
)
@click.option("--address", default=None, help="Ray cluster address (default: start a local Ray)")
@store_option
def run(
    methods,
    arch,
    dataset,
    sg,
    sd,
    seeds,
    preset,
    steps,
    scope,
    distribution,
    opt_state,
    metrics,
    kernels,
    precision,
    compile_,
    channels_last,
    deterministic,
    threads,
    options,
    device,
    data_dir,
    inception_weights,
    no_progress,
    checkpoint_every,
    retry_failed,
    rerun,
    executor,
    jobs,
    address,
    store_path,
):
    """Run the grid methods x s_G x s_D x seeds and store every result.

    Cells already done in the store are skipped; methods whose s_G or s_D is fixed by
    definition (dense, pf-*, gan-tickets) run once per seed with the sparsity they really use.
    """
    from sparsebench.config import GridRequest
    from sparsebench.grid import Grid, expand_methods
    from sparsebench.options import parse_option_strings
    from sparsebench.scheduler import GridInterrupted
    from sparsebench.settings import RunSettings
    from sparsebench.train.loop import Interrupted

    plugins = _plugins()
    req = GridRequest(
        methods=expand_methods(methods, plugins),
        arch=arch,
        dataset=dataset,
        sg=_floats(sg, "--sg"),
        sd=_floats(sd, "--sd"),
        seeds=_ints(seeds, "--seeds"),
        preset=preset,
        steps=None if steps is None else _ints(steps, "--steps")[0],
        scope=scope,
        distribution=distribution,
        opt_state=opt_state,
        kernels=kernels,
        precision=precision,
        compile=compile_,
        channels_last=channels_last,
        deterministic=deterministic,
        threads=_ints(threads, "--threads")[0],
        options=parse_option_strings(options),
        metrics=tuple(_split(metrics, "--metrics")),
    )
    settings = RunSettings(
        store=store_path,
        device=device,
        data_dir=data_dir,
        inception_weights=inception_weights,
        checkpoint_every=_ints(checkpoint_every, "--checkpoint-every")[0],
        retry_failed=retry_failed,
        rerun=rerun,
        progress=not no_progress,
        executor=executor,
        jobs=_ints(jobs, "--jobs")[0],
        address=address,
    )
    grid = Grid.open(req, settings, plugins)
    grid.runner.install_signal_handlers()
    started = []

    def on_start(config, i, total):
        started.append(config.run_id)
        click.echo(
            f"[{i}/{total}] {config.method} {config.arch} sG={config.sg:g} "
            f"sD={config.sd:g} seed={config.seed} ({config.run_id})",
            err=True,
        )

    def on_done(config, outcome):
        if outcome.taken:
            click.echo(
                f"  {config.run_id} is being trained by another process ({outcome.results.get('owner')}); "
                f"left to it, looked at again at the end",
                err=True,
            )
        elif outcome.skipped and outcome.status == "done":
            click.echo(f"  {config.run_id} already done, skipped", err=True)
        elif outcome.skipped:
            click.echo(
                f"  {config.run_id} {outcome.status} before, skipped (--retry-failed or --rerun runs it again)",
                err=True,
            )
        elif len(started) > 1 and settings.pooled:
            click.echo(f"  {config.run_id} {outcome.status}", err=True)

    try:
        grid.execute(on_start, on_done)
    except Interrupted as exc:
        _summary(grid.outcomes)
        saved = "" if isinstance(exc, GridInterrupted) else ", checkpoint saved"
        click.echo(f"Stopped: {exc}{saved}; run the same command to resume.", err=True)
        return 130
    if not grid.leader:
        return 0
    _summary(grid.outcomes)
    click.echo(f"results: {grid.store.path}", err=True)
    bad = [o for o in grid.outcomes if o.status != "done"]
    return 1 if bad else 0


def _fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def _summary(outcomes) -> None:
    from tabulate import tabulate

    rows = []
    for o in outcomes:
        r = o.results
        rows.append(
            [
                o.config.method,
                f"{o.config.sg:g}",
                f"{o.config.sd:g}",
                o.config.seed,
                o.status,
                _fmt(r.get("fid")),
                _fmt(r.get("is_mean")),
                _fmt(r.get("density_g"), ".3f"),
                _fmt(r.get("train_flops_rel"), ".3f"),
                _fmt(r.get("test_flops_rel"), ".3f"),
                _fmt(r.get("wall_s"), ".1f"),
            ]
        )
    click.echo(
        tabulate(
            rows,
            headers=[
                "method",
                "sG",
                "sD",
                "seed",
                "status",
                "FID",
                "IS",
                "density G",
                "train FLOPs",
                "test FLOPs",
                "wall s",
            ],
        )
    )
    quick = sorted({o.config.train.steps for o in outcomes if o.config.preset == "quick"})
    if quick:
        click.echo(
            f"quick preset: a smoke test of the pipeline ({', '.join(map(str, quick))} G steps); "
            "its numbers are not converged and compare no methods. For comparisons use --preset small (digits, "
            "CPU) or --preset paper with several --seeds."
        )


@cli.command("list")
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


@cli.command()
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


@cli.command()
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


def main():
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    cli(prog_name="sparsebench")


@cli.command()
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
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="PLUGIN.NAME=VALUE",
    help="an option of the architecture or of --method, as for run (repeatable)",
)
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


convention_option = click.option(
    "--convention",
    default="fvcore",
    show_default=True,
    help="FLOP convention: fvcore (1 per multiply-add, D counted at its density) or paper (the paper's Table 2: "
    "2 per multiply-add, a sparse G beside a dense D scaled by G's density alone)",
)


@cli.command()
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
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="PLUGIN.NAME=VALUE",
    help="a plugin option, e.g. gan-tickets.rounds=9 (repeatable)",
)
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


@cli.command()
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

"""`sparsebench run`: a grid, parsed into one request and one settings object and handed to the Python API."""

from __future__ import annotations

import click

from sparsebench import defaults
from sparsebench.cli.common import _floats, _ints, _plugins, _split, plugin_options, store_option


@click.command()
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
@plugin_options("a plugin option, e.g. stugan.explore=gd (repeatable)")
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
    finally:
        grid.close()
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

"""Building a report folder from the results store."""

from __future__ import annotations

import errno
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench import SparsebenchError
from sparsebench.analysis.cells import MethodInfo, labels, name_variants, preset_steps, row_settings
from sparsebench.analysis.comparisons import analyse
from sparsebench.analysis.study import Study
from sparsebench.config import check_run_id
from sparsebench.report import plots
from sparsebench.report.counters import counters_table
from sparsebench.report.render import latex, latex_document, markdown, markdown_escape
from sparsebench.report.tables import (
    comparison_table,
    cost_table,
    is_table,
    length_table,
    quality_table,
    study_tables,
)
from sparsebench.report.times import time_tables
from sparsebench.store import Store, method_columns, table_columns

FORMATS = ("md", "latex", "all")


def _frame(store: Store, arch: str | None, method: str | None, preset: str | None, methods=None) -> pd.DataFrame:
    """The results table as a frame (`methods`: see `MethodInfo.of`; their declared result columns included)."""
    columns = method_columns(MethodInfo.of(methods).methods.values())
    df = pd.DataFrame(store.results_table(columns), columns=table_columns(columns))
    for col, value in (("arch", arch), ("method", method), ("preset", preset)):
        if value:
            df = df[df[col].isin(value.split(","))]
    return df.reset_index(drop=True)


def build_report(
    store: Store,
    out: Path,
    fmt: str = "all",
    arch: str | None = None,
    method: str | None = None,
    preset: str | None = None,
    samples: bool = True,
    command: str | None = None,
    convention: str = "fvcore",
    methods=None,
    studies: list[Study] | tuple[Study, ...] = (),
) -> list[Path]:
    """The report folder; tables and figures name, order and compare methods as they declare (`methods`: the
    registered methods, see `MethodInfo.of`); the comparisons `studies` declare are confirmatory."""
    if fmt not in FORMATS:
        raise SparsebenchError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    info = MethodInfo.of(methods)
    df = _frame(store, arch, method, preset, info)
    if df.empty:
        filters = ", ".join(f"{k}={v}" for k, v in (("arch", arch), ("method", method), ("preset", preset)) if v)
        raise SparsebenchError(
            f"no runs in {store.path}"
            + (f" matching {filters}" if filters else "")
            + "; run 'sparsebench run --methods ... --arch ...' first"
        )
    for run_id in df["run_id"]:  # ids become file names below: none may lead out of the report or artifacts
        try:
            check_run_id(run_id)
        except SparsebenchError as exc:
            raise SparsebenchError(
                f"results store {store.path} holds an {exc}; it was not written by sparsebench"
            ) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise SparsebenchError(f"cannot write the report to {out}: {exc.strerror or exc}; pass --out DIR") from None
    written: list[Path] = []

    df["options_set"] = df["variant"]  # the method options a run set, as stored (before cells are named)
    name_variants(df)  # every table and figure names a cell alike
    df["label"] = labels(df, info)
    analysis = analyse(df, info, studies=studies)
    tables = [
        ("table1", quality_table(df, analysis, methods=info)),
        ("table1_is", is_table(df, analysis, methods=info)),
    ]
    if (comparisons := comparison_table(analysis, info)) is not None:
        tables.append(("comparisons", comparisons))
    for study, table in zip(analysis.studies, study_tables(analysis, info)):
        tables.append((f"study_{study['name']}", table))
    tables.append(("table2", cost_table(df, convention=convention, methods=info)))
    times = time_tables(df, methods=info)
    for i, table in enumerate(times):
        tables.append((f"table2_time{i + 1 if len(times) > 1 else ''}", table))
    t3 = length_table(df, info, studies)
    if t3 is not None:
        tables.append(("table3", t3))
    if (counters := counters_table(df, info)) is not None:
        tables.append(("counters", counters))
    tex_parts = []
    for stem, table in tables:
        if fmt in ("md", "all"):
            p = out / f"{stem}.md"
            p.write_text(markdown(table))
            written.append(p)
        if fmt in ("latex", "all"):
            body = latex(table)
            tex_parts.append(body)
            p = out / f"{stem}.tex"
            p.write_text(body)
            written.append(p)
    if tex_parts:
        p = out / "tables.tex"
        p.write_text(latex_document("\n".join(tex_parts)))
        written.append(p)

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    logged = pd.DataFrame(store.stats_rows(None), columns=["run_id", "step", "key", "value"])
    logged = logged[logged["run_id"].isin(df["run_id"])]  # every statistic: the TensorBoard export holds them all
    stats = logged[logged["key"].isin(["exploration_rate", "loss_d", "loss_g", "balance_ratio", "fid"])]
    explored = "explored fraction of G's scope"
    written += plots.render_all(
        [
            (plots.forest, (analysis, info, figures)),
            (plots.fid_vs_flops, (df, analysis, info, figures)),
            (plots.fid_vs_sg, (df, analysis, info, figures)),
            (plots.method_curves, (stats, df, info, [("exploration_rate", explored)], "exploration_rate", figures)),
            (
                plots.method_curves,
                (stats, df, info, [("loss_d", "D loss (hinge)"), ("loss_g", "G loss (hinge)")], "losses", figures, 25),
            ),
            (
                plots.method_curves,
                (stats, df, info, [("balance_ratio", "balance ratio (ADAPT's r_t)")], "balance_ratio", figures, 25),
            ),
            (  # the evaluation curve of runs that have one (TrainSpec.eval_every): per cell over its seeds
                plots.cell_curves,
                (stats, df, "fid", "FID of the evaluated weights (geometric mean over seeds)", "fid_curve", figures),
            ),
        ]
    )

    grids = []
    if samples:
        (out / "samples").mkdir(exist_ok=True)
        for r in df[df["status"] == "done"].itertuples():
            target = out / "samples" / f"{r.run_id}.png"
            if plots.sample_grid(store.artifacts_dir / r.run_id / "samples.pt", target):
                grids.append((r, target))
                written.append(target)
    written += _tensorboard(logged, out)
    written.append(_index(store, df, out, written, grids, command, convention))
    return written


def _tensorboard(stats: pd.DataFrame, out: Path) -> list[Path]:
    """One TensorBoard event file per run with its logged scalars by G step. Written record by record rather
    than through SummaryWriter, whose file name and records carry the clock, host and process: these carry
    none (wall time 0; the store keeps no time per step), so the same store writes the same bytes."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:  # tensorboard is optional
        return []
    written = []
    rows = stats.sort_values(["run_id", "step", "key"])[["run_id", "step", "key", "value"]].itertuples(index=False)
    for run_id, g in itertools.groupby(rows, key=lambda r: r[0]):
        folder = out / "tensorboard" / str(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events.out.tfevents.*"):  # a report built again replaces, never repeats, its curves
            old.unlink()
        with open(folder / "events.out.tfevents.0.sparsebench", "wb") as f:
            records = RecordWriter(f)
            records.write(Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString())
            for _, step, key, value in g:
                summary = Summary(value=[Summary.Value(tag=str(key), simple_value=float(value))])
                records.write(Event(wall_time=0.0, step=int(step), summary=summary).SerializeToString())
        written.append(folder)
    return written


def _code(text: object) -> str:
    """`text` as a Markdown code span, which shows everything literally but a backtick or a new line."""
    return "`" + " ".join(str(text).replace("`", "'").splitlines()) + "`"


def _index(
    store: Store, df: pd.DataFrame, out: Path, written: list[Path], grids, command: str | None, convention: str
) -> Path:
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    counts = df["status"].value_counts().to_dict()
    evaluated = df[df["status"] == "done"]
    flats = [row_settings(r) for r in evaluated.itertuples(index=False)]
    evaluated = evaluated.assign(score=[_score_protocol(f) for f in flats], numerics=[_numerics(f) for f in flats])
    protocol = (
        evaluated.groupby(["preset", "dataset", "extractor", "eval_samples", "score", "numerics"], dropna=False)
        .agg(runs=("run_id", "size"), accuracy=("extractor_accuracy", "first"))
        .reset_index()
    )
    changed = store.last_change()  # the store's time, not the clock's: the same store builds the same report
    as_of = f" as of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(changed))}" if changed is not None else ""
    lines = [
        "# sparsebench report",
        "",
        f"Built from {_code(store.path)}{as_of}: "
        f"{len(df)} runs ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}).",
        "",
    ]
    if command:
        lines += ["Command:", "", f"```\n{command}\n```", ""]
    lines += [
        "## Protocol",
        "",
        "| preset | data | feature extractor | samples per run | a run's FID | numerics | runs "
        "| extractor trained on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in protocol.itertuples(index=False):
        cells = ["n/a" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else v for v in r[:-1]]
        # an offline extractor is the data set's own classifier: it names that data and its held-out accuracy
        trained = (
            "pretrained" if pd.isna(r.accuracy) else f"{r.dataset} train split, held-out accuracy {r.accuracy:.4f}"
        )
        lines.append("| " + " | ".join(map(markdown_escape, [*cells, trained])) + " |")
    if len(evaluated) < len(df):
        lines += ["", f"Runs not done (running, stopped, failed or diverged): {len(df) - len(evaluated)}."]
    lines += _floor_lines(df)
    lines += [
        "Sparsity is measured over the scope "
        + ", ".join(_code(s) for s in sorted(df["scope"].dropna().unique()))
        + " (`conv`: conv weights; `conv+linear`: and linears; `weights`: every weight but norms', as ADAPT's"
        " reference). FLOPs follow fvcore (1 fused multiply-add = 1 FLOP; backward = 2 x forward)"
        + (", except Table 2, which is in the paper's convention (see its caption)." if convention == "paper" else "."),
        "",
    ]
    lines += _convergence(df)
    lines += ["## Tables", ""]
    for p in written:
        if p.suffix == ".md" and p.parent == out:
            lines += [
                p.read_text(),
                f"([{p.name}]({rel(p)}), LaTeX: [{p.stem}.tex]({p.stem}.tex))"
                if (out / f"{p.stem}.tex").exists()
                else "",
                "",
            ]
    if (out / "tables.tex").exists():
        lines += ["All tables as one LaTeX document: [tables.tex](tables.tex).", ""]
    lines += ["## Figures", ""]
    for p in written:
        if p.suffix == ".png" and p.parent.name == "figures":
            lines += [f"![{p.stem}]({rel(p)}) ([PDF]({rel(p.with_suffix('.pdf'))}))", ""]
    if grids:
        lines += [
            "## Samples",
            "",
            "| run | method | arch | s_G | s_D | seed | FID | samples |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r, target in grids:
            fid = f"{r.fid:.2f}" if pd.notna(r.fid) else "n/a"
            lines.append(
                f"| `{r.run_id}` | {markdown_escape(r.method)} | {markdown_escape(r.arch)} | {r.sg:g} | "
                f"{r.sd:g} | {r.seed} | {fid} | "
                f"![{r.run_id}]({rel(target)}) |"
            )
        lines.append("")
    envs = {json.dumps(run["env"], sort_keys=True) for run in (store.get(i) for i in df["run_id"][:200]) if run}
    lines += ["## Environment", ""]
    for e in sorted(envs):
        env = json.loads(e)
        lines.append("- " + markdown_escape(", ".join(f"{k} {v}" for k, v in sorted(env.items()) if k != "host")))
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _score_protocol(flat: dict[str, Any]) -> str:
    """How a run's FID was scored (`TrainSpec.score_last`): its final evaluation, or the mean over its last ones."""
    last = int(flat.get("train.score_last") or 1)
    if last <= 1:
        return "final evaluation"
    return f"mean of the last {last} evaluations, {flat.get('train.eval_every')} G steps apart"


def _numerics(flat: dict[str, Any]) -> str:
    """The opt-in execution modes a run trained under (fp32 and none of them when the settings do not say)."""
    parts = [str(flat.get("precision") or "fp32")]
    parts += [name for key, name in MODES if flat.get(key)]
    return ", ".join(parts)


MODES = (("channels_last", "channels-last"), ("compile", "compiled"), ("deterministic", "deterministic"))


def _floor_lines(df: pd.DataFrame) -> list[str]:
    """The FID floor of each data set, extractor and sample count in the store (a store may hold several; each
    run is compared with its own) with its standard error where a run recorded it, and how it was computed."""
    if "fid_floor" not in df:
        return []
    keys = [k for k in ("dataset", "extractor", "eval_samples") if k in df]
    floors = df[df["fid_floor"].notna()]
    if floors.empty:
        return []
    parts = []
    for key, g in floors.groupby(keys, sort=True, dropna=False) if keys else [((), floors)]:
        how = g["fid_floor_method"].dropna() if "fid_floor_method" in g else pd.Series(dtype=object)
        method = how.iloc[0] if len(how) else "held-out vs train images at the held-out size: biased up"
        where = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in zip(keys, key))
        se = g["fid_floor_se"].dropna() if "fid_floor_se" in g else pd.Series(dtype=float)
        error = f" ± {float(se.iloc[0]):.2f} (jackknife standard error)" if len(se) else ""
        parts.append(f"{float(g['fid_floor'].mean()):.2f}{error} ({where}; {method})")
    return [
        "FID floor: " + "; ".join(parts) + ". FIDs are computed against the training images, so a score near the "
        "floor cannot tell a good generator from one that copies them; a cell is below the floor only when its "
        "95 % interval lies below the floor's."
    ]


def _convergence(df: pd.DataFrame) -> list[str]:
    """Dense FID per seed at every length the store holds, per arch and preset: whether the preset's
    dense GAN is converged (its mean at the preset's steps against the mean at a longer run) and how
    much seeds scatter. Shown when some arch has dense runs of more than one length."""
    dense = df[(df["method"] == "dense") & (df["status"] == "done") & df["fid"].notna()]
    dense = dense[dense["options_set"].fillna("") == ""] if "options_set" in dense else dense
    rows = []
    for (arch, preset), g in dense.groupby(["arch", "preset"]):
        if g["steps"].nunique() < 2:
            continue
        steps_of_preset = preset_steps(arch, preset)
        at_preset = g[g["steps"] == steps_of_preset]["fid"].astype(float)
        for steps, h in g.groupby("steps"):
            fids = h.sort_values("seed")["fid"].astype(float)
            std = (
                f" ± {fids.std(ddof=1):.2f} ({100 * fids.std(ddof=1) / fids.mean():.0f} % of the mean)"
                if len(fids) > 1
                else ""
            )
            seeds = ", ".join(f"{int(s)}: {f:.2f}" for s, f in zip(h.sort_values("seed")["seed"], fids))
            gap = (
                f"{100 * (at_preset.mean() / fids.mean() - 1):+.0f} %"
                if steps != steps_of_preset and len(at_preset) and fids.mean() > 0
                else ""
            )
            rows.append(
                f"| {markdown_escape(arch)} | {markdown_escape(preset)} | {int(steps)} | {seeds} "
                f"| {fids.mean():.2f}{std} | {gap} |"
            )
    if not rows:
        return []
    return [
        "### Convergence of the dense GAN",
        "",
        "Dense FID at the preset's G steps and at longer runs (same settings otherwise; a preset's "
        "learning-rate schedule, if any, scales with the run's length), per seed. Methods are compared "
        "at the preset's steps. The last column: the mean at the preset's steps relative to this mean "
        "(a preset counts as converged when the mean at twice its steps is within 10 %).",
        "",
        "| arch | preset | G steps | FID per seed | mean ± std | preset's mean vs this |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def default_command() -> str:
    return "sparsebench " + " ".join(shlex.quote(a) for a in sys.argv[1:])

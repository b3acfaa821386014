"""`sparsebench report` on a real store: its files (tables, figures, index, LaTeX that compiles), the tables'
cells, verdicts and FLOP and time columns, Markdown, HTML and LaTeX escaping of what a store holds, run ids that
never become paths, one-line errors, the TensorBoard export, and plot workers that end with the report."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    ENV,
    EXE,
    LONG,
    RESULTS,
    UNIT_COSTS,
    add_run,
    alive,
    children,
    fill_store,
    one_error_line,
    one_run_store,
    run_cli,
    run_grid,
)

from sparsebench.analysis.comparisons import analyse
from sparsebench.config import GridRequest, expand_grid
from sparsebench.report import tables
from sparsebench.report.build import _floor_lines, _frame
from sparsebench.report.render import latex, latex_escape, markdown
from sparsebench.store import Store


def fake_store(path, plugins, methods=("static", "stugan", "dense"), sgs=(0.9, 0.8), seeds=(0, 1), extra=()):
    """A store filled through the real Store API with configs from the real grid expansion."""
    store = Store(path)
    configs = expand_grid(GridRequest(methods=list(methods), arch="sngan", sg=list(sgs), seeds=list(seeds)), plugins)
    for i, cfg in enumerate(configs):
        status = "diverged" if (cfg.method == "stugan" and cfg.seed == 1 and cfg.sg == 0.8) else "done"
        res = {
            "fid": 50.0 + i,
            "is_mean": 3.0 + 0.01 * i,
            "is_std": 0.1,
            "density_g": 1 - cfg.sg,
            "density_d": 1 - cfg.sd,
            "train_flops": 1e12 * (1 - cfg.sg / 2),
            "test_flops": 1e8 * (1 - cfg.sg),
            "train_flops_rel": 1 - cfg.sg / 2,
            "test_flops_rel": 1 - cfg.sg,
            "extractor": "sparsebench-digits",
            "eval_samples": 1000,
            "scope": "conv",
            "variant": "",
        }
        if status == "diverged":
            res = {"diverged_step": 7}
        add_run(store, cfg, res, status, env={"torch": "x", "device": "cpu"})
        store.log_stats(
            cfg.run_id,
            [(s, "loss_g", 1.0 / s) for s in range(1, 5)]
            + [(s, "exploration_rate", 0.1 * s) for s in range(1, 5)] * (cfg.method == "stugan"),
        )
    for method, variant in extra:  # a run of `method` with the options `variant` ("name=value,...")
        options = dict(part.split("=", 1) for part in variant.split(",") if part)
        if method in plugins.methods.names():
            request = GridRequest(
                methods=[method], arch="sngan", sg=[sgs[0]], seeds=[seeds[0]], options={method: options}
            )
            cfg = expand_grid(request, plugins)[0]
        else:  # a method not installed (any more): its stored config is all there is
            cfg = configs[0].replace(method=method, method_options=tuple(sorted(options.items())))
        add_run(store, cfg, {"fid": 1.0, **UNIT_COSTS, "is_mean": 2.0, "variant": variant})
    return store


def insert_row(
    path: Path,
    run_id: str,
    method: str = "static",
    arch: str = "sngan",
    results: dict = RESULTS,
    env: dict | None = None,
    method_options: dict | None = None,
) -> None:
    """A row written with sqlite3 directly, as anything other than sparsebench could write it."""
    conn = sqlite3.connect(path)
    with conn:
        config = conn.execute("SELECT config FROM runs LIMIT 1").fetchone()[0]
        if method_options is not None:
            config = json.dumps({**json.loads(config), "method_options": method_options})
        conn.execute(
            "INSERT INTO runs (run_id, method, arch, dataset, preset, sg, sd, seed, status, config, results, env, "
            "wall_s, created_at, updated_at) "
            "VALUES (?, ?, ?, 'digits', 'quick', 0.8, 0.5, 0, 'done', ?, ?, ?, 1, 0, 0)",
            (run_id, method, arch, config, json.dumps(results), json.dumps(env or {})),
        )
        conn.execute("INSERT INTO stats VALUES (?, 1, 'loss_g', 1.0)", (run_id,))
    conn.close()


# -- the report's files --------------------------------------------------------------------------------------
def test_report_writes_tables_plots_and_index(tmp_path, plugins):
    fake_store(tmp_path / "r.db", plugins, extra=[("stugan", "length=5")])
    out = tmp_path / "rep"
    proc = run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), check=True)
    assert "index.md" in proc.stdout
    for name in [
        "table1.md",
        "table1.tex",
        "table1_is.md",
        "comparisons.md",
        "table2.md",
        "table2.tex",
        "tables.tex",
        "index.md",
        "figures/comparisons.png",
        "figures/fid_vs_sg.png",
        "figures/fid_vs_sg.pdf",
        "figures/fid_vs_train_flops.png",
        "figures/exploration_rate.png",
        "figures/losses.png",
    ]:
        assert (out / name).exists(), name
    t1 = (out / "table1.md").read_text()
    assert "1 diverged" in t1  # counted and marked, not dropped
    assert "n=2" in t1 and "±" not in t1  # one number per entry: the IS and the comparisons have tables of their own
    assert "±" in (out / "table1_is.md").read_text() and "paired t (log)" in (out / "comparisons.md").read_text()
    assert t1.count("**") == 2  # the caption's title alone: no declared study, so no cell is bold
    assert "Dense GAN" in t1
    index = (out / "index.md").read_text()
    figures = index.split("## Figures")[1]
    assert figures.index("comparisons.png") < figures.index("fid_vs_sg.png")  # the forest plot comes first
    t3 = (out / "table3.md").read_text()
    assert r"STU-GAN \[length=5\]" in t3 and "STU-GAN |" in t3  # brackets escaped: no Markdown link can form
    index = (out / "index.md").read_text()
    assert "sparsebench-digits" in index and "table1.md" in index
    # the protocol counts done runs; the diverged one is counted apart, not as a row of nan
    protocol = index.split("## Protocol")[1].split("## Tables")[0]
    assert "| quick | digits | sparsebench-digits | 1000 | final evaluation | fp32 | 9 |" in protocol
    assert "nan" not in protocol
    assert "Runs not done (running, stopped, failed or diverged): 1." in protocol


def test_latex_escapes_user_strings(tmp_path, plugins):
    fake_store(tmp_path / "r.db", plugins, methods=("static",), extra=[("my_method%&#$", "k=a_b")])
    out = tmp_path / "rep"
    run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), "--format", "latex", check=True)
    tex = (out / "table1.tex").read_text()
    assert r"my\_method\%\&\#\$" in tex and r"k=a\_b" in tex
    assert "my_method%" not in tex
    assert not (out / "table1.md").exists()
    assert latex_escape("a_b%c&d#e$f") == r"a\_b\%c\&d\#e\$f"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(tmp_path, plugins):
    fake_store(tmp_path / "r.db", plugins, extra=[("odd_name&co", "length=5")])
    out = tmp_path / "rep"
    run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), check=True)
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (out / "tables.pdf").exists()


def test_empty_store_is_one_line(tmp_path):
    Store(tmp_path / "empty.db").close()
    proc = run_cli("report", "--store", str(tmp_path / "empty.db"), "--out", str(tmp_path / "rep"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no runs in" in lines[0]


def test_report_out_under_a_regular_file_is_one_line(tmp_path, plugins):
    db = tmp_path / "results.db"
    one_run_store(db, plugins)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(run_cli("report", "--store", str(db), "--out", str(blocker / "rep")))
    assert f"cannot write the report to {blocker / 'rep'}" in line
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_report_of_runs_that_computed_only_fid(tmp_path, plugins, fmt):
    store = Store(tmp_path / "r.db")
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", metrics=("fid",)), plugins)[0]
    only_fid = {k: v for k, v in RESULTS.items() if not k.startswith("is_")}
    add_run(store, cfg, only_fid, env={"torch": "x", "device": "cpu"})
    store.close()
    out = tmp_path / "rep"
    proc = run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), "--format", fmt)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    text = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".md", ".tex"))
    assert "50.00" in text and "n/a" in text


@pytest.mark.slow
def test_report_of_real_runs_has_sample_grids(tmp_path):
    store = tmp_path / "r.db"
    run_grid(store, "stugan,static", "sngan", "--sg", "0.9,0.8", "--seeds", "0,1")
    out = tmp_path / "rep"
    run_cli("report", "--store", str(store), "--out", str(out), check=True)
    assert len(list((out / "samples").glob("*.png"))) == 8
    t1 = (out / "table1.md").read_text()
    assert "STU-GAN" in t1 and "Static Sparse GAN" in t1 and "n=2" in t1


# -- escaping, and run ids that never become paths -----------------------------------------------------------
@pytest.mark.parametrize("crafted", ["../../../x", "ABSOLUTE", "0123456789ABCDEF"])
def test_report_refuses_a_crafted_run_id(tmp_path, plugins, crafted):
    db = tmp_path / "store" / "results.db"
    one_run_store(db, plugins)
    crafted = str(tmp_path / "elsewhere") if crafted == "ABSOLUTE" else crafted
    insert_row(db, crafted)
    out = tmp_path / "rep"
    line = one_error_line(run_cli("report", "--store", str(db), "--out", str(out)))
    assert "invalid run id" in line and "16 lowercase hex characters" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing written anywhere, inside or out
    assert sorted(p.name for p in db.parent.iterdir() if not p.name.startswith("results.db")) == []


def test_report_escapes_markdown_and_html_from_the_store(tmp_path, plugins):
    db = tmp_path / "results.db"
    one_run_store(db, plugins)
    insert_row(
        db,
        "0123456789abcdef",
        method="<img src=x onerror=alert(1)>\n# injected",
        results={**RESULTS, "variant": "[click](javascript:alert(1))|*x*", "extractor": "<b>ex</b>"},
        env={"torch": "<script>alert(2)</script>"},
        method_options={"k": "[click](javascript:alert(1))|*x*"},  # labels name a cell's settings
    )
    out = tmp_path / "rep"
    run_cli("report", "--store", str(db), "--out", str(out), "--format", "md", check=True)
    for name in ("table1.md", "table2.md", "index.md"):
        text = (out / name).read_text()
        for raw in ("<img", "<b>", "<script", "|*x*"):
            assert raw not in text, (name, raw)
        assert re.search(r"(?<!\\)\]\(javascript", text) is None, name  # the crafted link does not form
        assert not any(line.startswith("# injected") for line in text.splitlines()), name
    table = (out / "table1.md").read_text()
    assert r"&lt;img src=x onerror=alert(1)&gt; # injected \[k=\[click\](javascript:alert(1))\|\*x\*\]" in table
    assert "&lt;script&gt;" in (out / "index.md").read_text()


# -- the tables' cells and verdicts --------------------------------------------------------------------------
def cell_aggregates(df) -> list[dict]:
    return analyse(df).cells


def quality_table(df):
    return tables.quality_table(df, analyse(df))


def comparison_rows(df) -> dict[tuple, list[str]]:
    """The comparison table's rows by (label, s_G %)."""
    table = tables.comparison_table(analyse(df))
    return {(names[0], cells[1].text): [c.text for c in cells] for names, cells in table.rows}


FIDS = {
    ("dense", 0.0): [35.0, 35.5, 36.0],
    ("static", 0.9): [30.0, 30.5, 31.0],
    ("stugan", 0.9): [20.0, 20.5, 21.0],  # STU-GAN clearly better
    ("static", 0.8): [22.0, 31.0, 39.0],
    ("stugan", 0.8): [20.0, 30.0, 40.0],  # best, but samples overlap
    ("gan-tickets", 0.9): [24.0],
}


def significance_store(path, plugins) -> Store:
    """A store whose FIDs are chosen: one clear win, one overlap, one single-seed cell (real Store API)."""
    req = GridRequest(
        methods=["dense", "static", "stugan", "gan-tickets"], arch="sngan", sg=[0.9, 0.8], sd=[0.5], seeds=[0, 1, 2]
    )

    def results(cfg):
        fids = FIDS.get((cfg.method, cfg.sg), [])
        return {"fid": fids[cfg.seed], **UNIT_COSTS, "variant": ""} if cfg.seed < len(fids) else None

    return fill_store(path, plugins, req, results)


def test_table1_has_one_fid_per_cell_and_bolds_no_exploratory_win(tmp_path, plugins):
    store = significance_store(tmp_path / "r.db", plugins)
    df = _frame(store, None, None, None)
    table = quality_table(df)
    rows = {names[0]: cells for names, cells in table.rows}
    columns = [label for _, label in table.columns]
    win = columns.index("s_G = 90%")
    assert rows["STU-GAN"][win].text == f"{math.exp(sum(map(math.log, FIDS[('stugan', 0.9)])) / 3):.2f} (n=3)"
    assert rows["Dense GAN"][0].text.endswith("(n=3)") and rows["Dense GAN"][1].text == ""  # once per arch
    assert not any(c.bold for cells in rows.values() for c in cells)  # no declared study: nothing is bold
    compared = comparison_rows(df)
    stu = compared[("STU-GAN", "90")]
    assert stu[3] == "conv" and stu[4] == "Static Sparse GAN (conv)" and stu[5] == "paired t (log), 3 pairs"
    assert stu[7] == "better" and stu[-1] == "exploratory"
    assert compared[("STU-GAN", "80")][7] == "equivalent within 20 %"  # ratios 0.91-1.03
    assert "too few seeds" in compared[("GAN Tickets", "90")]  # one seed against three: no interval at all
    assert ("Dense GAN", "0") not in compared  # the reference itself is compared with nothing
    assert "Δ" not in markdown(table) and r"\textbf" not in latex(table)


def test_a_method_that_trained_longer_than_its_reference_says_so(tmp_path, plugins):
    df = _frame(significance_store(tmp_path / "r.db", plugins), None, None, None)
    df.loc[(df["method"] == "stugan") & (df["sg"] == 0.9), "train_flops"] = 2.0  # twice Static's training
    cells = {(c["method"], c["sg"]): c for c in cell_aggregates(df)}
    assert cells[("stugan", 0.9)]["train_flops_vs_reference"] == pytest.approx(2.0)
    assert cells[("stugan", 0.8)]["train_flops_vs_reference"] == pytest.approx(1.0)
    compared = comparison_rows(df)
    assert compared[("STU-GAN", "90")][8] == "2.00x" and compared[("STU-GAN", "80")][8] == "1.00x"


def test_a_cell_below_its_floor_says_so_and_gets_no_better_verdict(tmp_path, plugins):
    df = _frame(significance_store(tmp_path / "r.db", plugins), None, None, None)
    df["fid_floor"] = 25.0  # STU-GAN at s_G 0.9 scores 20-21, its interval wholly below it; Static (30-31) is not
    cells = {(c["method"], c["sg"]): c for c in cell_aggregates(df)}
    stu = cells[("stugan", 0.9)]
    assert stu["below_floor"] and stu["fid_floor"] == pytest.approx(25.0) and stu["fid_floor_se"] is None
    assert stu["verdict"] == "below the floor" and stu["ratio_high"] < 1  # would be "better" above the floor
    assert not cells[("static", 0.9)]["below_floor"]
    table = quality_table(df)
    win = [label for _, label in table.columns].index("s_G = 90%")
    rows = {names[0]: cells for names, cells in table.rows}
    assert rows["STU-GAN"][win].text.endswith("(n=3); below the floor")
    assert "below the floor" not in rows["Static Sparse GAN"][win].text
    df["fid_floor_se"] = 3.0  # its interval (under 22) no longer lies below the floor's (25 - 1.96 x 3 = 19.1)
    assert not next(c for c in cell_aggregates(df) if c["method"] == "stugan" and c["sg"] == 0.9)["below_floor"]
    df["fid_floor"] = float("nan")  # not recorded: no claim either way
    assert not any(c["below_floor"] for c in cell_aggregates(df))


def test_the_report_states_each_data_sets_own_floor(tmp_path, plugins):
    df = _frame(significance_store(tmp_path / "r.db", plugins), None, None, None)
    df["extractor"], df["eval_samples"], df["fid_floor_method"] = "x", 5000, "matched n"
    df["dataset"] = ["digits" if i % 2 else "cifar10" for i in range(len(df))]
    df["fid_floor"] = [7.0 if i % 2 else 3.0 for i in range(len(df))]
    (line,) = _floor_lines(df)
    assert "3.00 (dataset cifar10, extractor x, eval_samples 5000; matched n)" in line
    assert "7.00 (dataset digits, extractor x, eval_samples 5000; matched n)" in line
    assert _floor_lines(df.drop(columns="fid_floor")) == []


def test_results_json_has_runs_and_the_table_cells(tmp_path, plugins):
    significance_store(tmp_path / "r.db", plugins)
    out = json.loads(run_cli("results", "--store", str(tmp_path / "r.db"), "--format", "json", check=True).stdout)
    assert len(out["runs"]) == sum(len(v) for v in FIDS.values())
    cells = {(c["method"], c["sg"]): c for c in out["cells"]}
    win = cells[("stugan", 0.9)]
    assert win["n"] == 3 and win["reference"] == "static" and win["n_reference"] == 3 and win["pairs"] == 3
    logs = [math.log(a / b) for a, b in zip(FIDS[("stugan", 0.9)], FIDS[("static", 0.9)])]
    assert win["ratio"] == pytest.approx(math.exp(sum(logs) / 3)) and win["test"] == "paired t (log)"
    assert win["fid_mean"] == pytest.approx(20.5) and win["ratio_high"] < 1 and win["confirmatory"] is False
    assert cells[("stugan", 0.8)]["ratio_low"] < 1 < cells[("stugan", 0.8)]["ratio_high"]
    single = cells[("gan-tickets", 0.9)]
    assert single["reference"] == "dense" and single["ratio"] is None and single["n"] == 1
    dense = cells[("dense", 0.0)]
    assert dense["reference"] is None and dense["ratio"] is None and dense["fid_sd"] == pytest.approx(0.5)


def test_report_states_its_flop_convention(tmp_path, plugins):
    fake_store(tmp_path / "r.db", plugins, methods=("static", "dense", "pf-global"))
    for convention in ("fvcore", "paper"):
        out = tmp_path / convention
        run_cli(
            "report",
            "--store",
            str(tmp_path / "r.db"),
            "--out",
            str(out),
            "--no-samples",
            "--convention",
            convention,
            check=True,
        )
        t2 = (out / "table2.md").read_text()
        assert "dense D" in t2  # one footnote says how the other convention differs
        pf_row = next(line for line in t2.splitlines() if line.startswith("| PF (global)"))
        static_row = next(line for line in t2.splitlines() if line.startswith("| Static Sparse GAN"))
        if convention == "paper":
            assert "2 FLOPs per multiply-add" in t2 and "†" in pf_row and "†" not in static_row
            assert "1.1e+12 (0.55×)" in static_row  # 2 per multiply-add: twice the stored 5.5e+11, same ratio
        else:
            assert "5.5e+11 (0.55×)" in static_row and "fvcore" in t2.split("\n")[0]
            assert "†" not in t2.split("\n", 1)[1]
    bad = run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(tmp_path / "x"), "--convention", "mine")
    assert bad.returncode != 0 and bad.stderr.strip() == "Error: --convention 'mine': allowed: fvcore, paper"


def settings_store(path, plugins) -> Store:
    """STU-GAN under two optimizer-state policies and two backends, dense at two lengths, two machines."""
    store = Store(path)
    base = GridRequest(methods=["dense", "stugan"], arch="sngan", sg=[0.9], sd=[0.5], seeds=[0, 1])
    variants = [
        ({}, "cpu-a", 0.10, 2.0),
        ({"opt_state": "zero", "methods": ["stugan"]}, "cpu-a", 0.10, 2.0),
        ({"kernels": "sparseprop", "methods": ["stugan"]}, "cpu-a", 0.05, 1.0),
        ({"steps": 800, "methods": ["dense"]}, "cpu-a", 0.20, 4.0),
        ({}, "gpu-b", 0.01, 0.1),
    ]
    fid = iter(range(10, 1000))
    for changes, machine, step_s, infer_ms in variants:
        req = GridRequest(**{**base.__dict__, **changes})
        for cfg in expand_grid(req, plugins):
            if machine == "gpu-b":  # the same cells again, measured on another machine: another store row each
                cfg = cfg.replace(seed=cfg.seed + 10)
            if cfg.method == "dense" and not changes.get("steps"):
                step_s_here, infer_here = 2 * step_s, 2 * infer_ms  # dense takes twice as long as stugan
            else:
                step_s_here, infer_here = step_s, infer_ms
            env = {"gpu": "Some GPU"} if machine == "gpu-b" else {"cpu": "Some CPU", "cpus": 2}
            measured = {
                "train_s_per_step": step_s_here,  # as a run stores it: the mean step, and the median beside it
                "train_s_per_step_median": step_s_here,
                "infer_ms_per_image": infer_here,
                "threads": 1,
            }
            if machine != "gpu-b":
                measured["load_per_core"] = 2.0 if changes.get("kernels") else 0.5
            results = {"fid": float(next(fid)), **UNIT_COSTS, "is_mean": 2.0, "variant": "", **measured}
            add_run(store, cfg, results, env=env)
    return store


def test_rows_never_pool_policies_backends_or_lengths(tmp_path, plugins):
    store = settings_store(tmp_path / "r.db", plugins)
    table = quality_table(_frame(store, None, None, None))
    names = [names[0] for names, _ in table.rows]
    expected = ["Dense GAN", "Dense GAN [steps=800]", "STU-GAN", "STU-GAN [opt_state=zero]"]
    for row in expected + ["STU-GAN [kernels=sparseprop]"]:
        assert row in names, names
    rows = {names[0]: cells for names, cells in table.rows}
    assert "n=2" in rows["STU-GAN [opt_state=zero]"][0].text
    assert "n=4" in rows["STU-GAN"][0].text  # seeds 0, 1 and 10, 11: the default settings on both machines


def test_relative_flops_are_against_a_dense_gan_of_the_runs_own_length(tmp_path, plugins):
    from sparsebench.report.tables import cost_table

    df = _frame(settings_store(tmp_path / "r.db", plugins), None, None, None)  # every run stored 1.0x
    table = cost_table(df)
    rows = {names[0]: cells[0].text for names, cells in table.rows}
    # as `sparsebench results` says: a dense GAN of 800 steps is 1x a dense GAN of 800 steps, not 2x the preset's
    assert "(1.00×)" in rows["Dense GAN"] and "(1.00×)" in rows["Dense GAN [steps=800]"]
    assert "trained as long as the run" in table.caption


def test_runs_of_different_code_versions_never_share_a_row(tmp_path, plugins):
    df = _frame(settings_store(tmp_path / "r.db", plugins), None, None, None)
    stugan = df["method"] == "stugan"
    old = stugan & (df["seed"] == 0)
    df.loc[old, "settings"] = df.loc[old, "settings"].str.replace('"code.method": "', '"code.method": "old-')
    df.loc[old, "cell"] = "another-cell"  # as the store derives both from the config
    names = [names[0] for names, _ in quality_table(df).rows]
    new_version = df.loc[stugan & ~old, "code"].iloc[0].split("method=")[1].split(",")[0]
    assert f"STU-GAN [code.method={new_version}]" in names
    assert f"STU-GAN [code.method=old-{new_version}]" in names
    assert "STU-GAN" not in names and "Dense GAN" in names  # a method of one version keeps its plain row


def test_measured_time_tables_are_per_machine_and_relative_to_its_dense(tmp_path, plugins):
    from sparsebench.report.times import time_tables

    store = settings_store(tmp_path / "r.db", plugins)
    tables = time_tables(_frame(store, None, None, None))
    assert [t.title for t in tables] == [
        "Table 2 (measured time), Some CPU, 2 cores, 1 thread",
        "Table 2 (measured time), Some GPU, 1 thread",
    ]
    cpu = {names[0]: cells[0].text for names, cells in tables[0].rows}
    assert cpu["Dense GAN"] == "200 (1.00×) / 4 (1.00×) (n=2)"
    assert cpu["STU-GAN"] == "100 (0.50×) / 2 (0.50×) (n=2)"
    assert cpu["STU-GAN [kernels=sparseprop]"] == "50 (0.25×) / 1 (0.25×) (n=2)†"  # measured on a busy machine
    gpu = {names[0]: cells[0].text for names, cells in tables[1].rows}
    assert gpu["STU-GAN"] == "10 (0.50×) / 0.1 (0.50×) (n=2)?"  # no load recorded
    # a cell with some quiet runs counts only those, and so does the dense reference
    df = _frame(store, None, None, None)
    cpu_runs = (df["machine"] == "Some CPU, 2 cores") & (df["variant"].fillna("") == "")
    first_seed = cpu_runs & (df["seed"] == 0)
    df.loc[first_seed, "train_s_per_step"] *= 10  # both dense and STU-GAN: a busy machine, ten times slower
    df.loc[first_seed, "load_per_core"] = 1.5
    cpu = {names[0]: cells[0].text for names, cells in time_tables(df)[0].rows}
    assert cpu["Dense GAN"] == "200 (1.00×) / 4 (1.00×) (n=1 of 2)"
    assert cpu["STU-GAN"] == "100 (0.50×) / 2 (0.50×) (n=1 of 2)"
    df.loc[cpu_runs & (df["method"] == "dense"), "load_per_core"] = 1.5  # no quiet dense GAN: no ratios
    cpu = {names[0]: cells[0].text for names, cells in time_tables(df)[0].rows}
    assert cpu["STU-GAN"] == "100 / 2 (n=1 of 2)" and cpu["Dense GAN"].endswith("(n=2)†")
    out = tmp_path / "rep"
    run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), "--no-samples", check=True)
    assert (out / "table2_time1.md").exists() and (out / "table2_time2.tex").exists()
    index = (out / "index.md").read_text()
    assert "Some GPU" in index and "Convergence of the dense GAN" in index
    assert "| sngan | quick | 800 |" in index
    # the convergence gap: the preset's (400-step) dense mean relative to the 800-step mean
    df = _frame(store, None, None, None)
    dense = df[(df["method"] == "dense") & (df["variant"].fillna("") == "")]
    short, long = (dense[dense["steps"] == n]["fid"].mean() for n in (400, 800))
    assert f"| {100 * (short / long - 1):+.0f} % |" in index


def test_a_median_step_stored_before_the_mean_is_never_set_against_a_mean(tmp_path, plugins):
    """Runs stored before the step time became the mean kept the median step under `train_s_per_step`: read
    back, it is their median (the mean is unknown), and the time table marks it and compares it only with a
    dense GAN's median."""
    from sparsebench.report.times import time_tables

    store = settings_store(tmp_path / "r.db", plugins)
    plain = lambda r: r["env"].get("cpu") == "Some CPU" and r["config"].get("kernels", "dense") == "dense"  # noqa: E731
    old = [r for r in store.all_runs() if plain(r) and r["method"] in ("dense", "stugan")]
    for run in old:  # as an older version stored them: the median alone, under today's mean's name
        results = {k: v for k, v in run["results"].items() if k != "train_s_per_step_median"}
        store.conn.execute("UPDATE runs SET results = ? WHERE run_id = ?", (json.dumps(results), run["run_id"]))
    store.conn.commit()
    df = _frame(store, None, None, None)
    was_old = df["run_id"].isin([r["run_id"] for r in old])
    assert df.loc[was_old, "train_s_per_step"].isna().all()
    assert (df.loc[was_old, "train_s_per_step_median"] > 0).all()
    rows = {names[0]: cells[0].text for names, cells in time_tables(df)[0].rows}
    assert rows["Dense GAN"] == "200 (1.00×) / 4 (1.00×) (n=2)‡"
    assert rows["STU-GAN"] == "100 (0.50×) / 2 (0.50×) (n=2)‡"  # median against the dense median
    assert rows["STU-GAN [kernels=sparseprop]"] == "50 / 1 (n=2)†"  # a mean: no dense mean to compare with
    csv_rows = list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(tmp_path / "r.db")).stdout)))
    moved = [r for r in csv_rows if r["run_id"] == old[0]["run_id"]][0]
    assert moved["train_s_per_step"] == "" and float(moved["train_s_per_step_median"]) > 0


# -- the TensorBoard export ----------------------------------------------------------------------------------
def test_tensorboard_events_hold_the_logged_scalars(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_grid(store, "static", steps=11)
    conn = sqlite3.connect(store)
    (run_id,) = conn.execute("SELECT run_id FROM runs").fetchone()
    logged = conn.execute("SELECT key, step, value FROM stats WHERE key IN ('loss_d', 'loss_g')").fetchall()
    conn.close()
    assert {(k, s) for k, s, _ in logged} == {(k, s) for k in ("loss_d", "loss_g") for s in (1, 10)}
    out = tmp_path / "rep"
    builds = []
    for _ in range(2):  # building the report again must not repeat the curves, nor change a byte
        run_cli("report", "--store", str(store), "--out", str(out), "--no-samples", check=True)
        builds.append({f.relative_to(out): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()})
    assert builds[0] == builds[1]  # the same store builds the same report (no clock, host or process in it)
    assert {f.suffix for f in builds[0]} >= {".md", ".tex", ".png", ".pdf"}
    folder = out / "tensorboard" / run_id
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(folder))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss_d", "loss_g", "balance_ratio"}
    exported = {(key, e.step): e.value for key in ("loss_d", "loss_g") for e in events.Scalars(key)}
    assert sorted(exported) == sorted((k, s) for k, s, _ in logged)
    for key, step, value in logged:
        assert exported[(key, step)] == pytest.approx(value, rel=1e-6)


@pytest.mark.slow
def test_tensorboard_export_holds_every_logged_statistic(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "r.db"
    run_cli(*LONG, "--steps", "20", "--sd", "0.5", "-o", "stugan.explore=gd", "--store", str(store), check=True)
    with sqlite3.connect(store) as conn:
        keys = {k for (k,) in conn.execute("SELECT DISTINCT key FROM stats")}
    assert {"exploration_rate_d", "update_fraction"} <= keys
    out = tmp_path / "rep"
    run_cli("report", "--store", str(store), "--out", str(out), "--no-samples", check=True)
    (folder,) = (out / "tensorboard").iterdir()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == keys


# -- the report's plot workers end with it -------------------------------------------------------------------
def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_report_plot_workers_die_with_a_killed_report(tmp_path, plugins):
    one_run_store(tmp_path / "r.db", plugins)
    cmd = [EXE, "report", "--store", str(tmp_path / "r.db"), "--out", str(tmp_path / "rep"), "--no-samples"]
    report = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    own = Path(f"/proc/{report.pid}/cmdline").read_bytes()
    forked: list[int] = []
    t0 = time.time()
    while len(forked) < 2 and report.poll() is None and time.time() - t0 < 120:
        forked = [p for p in children(report.pid) if cmdline(p) == own]
        time.sleep(0.01)
    assert len(forked) == 2, "no plot workers seen"
    report.send_signal(signal.SIGKILL)
    report.wait()
    t0 = time.time()
    while any(alive(p) for p in forked) and time.time() - t0 < 20:
        time.sleep(0.1)
    orphans = [p for p in forked if alive(p)]
    for p in orphans:
        os.kill(p, signal.SIGKILL)
    assert not orphans, "plot workers outlived the report"

"""`sparsebench report` on a real store: files, escaping, LaTeX compilation, empty stores."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import run_cli
from sparsebench.config import GridRequest, expand_grid
from sparsebench.report.render import latex_escape
from sparsebench.store import Store


def fake_store(path, plugins, methods=("static", "stugan", "dense"), sgs=(0.9, 0.8), seeds=(0, 1), extra=()):
    """A store filled through the real Store API with configs from the real grid expansion."""
    store = Store(path)
    configs = expand_grid(GridRequest(methods=list(methods), arch="sngan", sg=list(sgs), seeds=list(seeds)), plugins)
    for i, cfg in enumerate(configs):
        store.start_run(cfg, {"torch": "x", "device": "cpu"})
        status = "diverged" if (cfg.method == "stugan" and cfg.seed == 1 and cfg.sg == 0.8) else "done"
        res = {"fid": 50.0 + i, "is_mean": 3.0 + 0.01 * i, "is_std": 0.1, "density_g": 1 - cfg.sg,
               "density_d": 1 - cfg.sd, "train_flops": 1e12 * (1 - cfg.sg / 2), "test_flops": 1e8 * (1 - cfg.sg),
               "train_flops_rel": 1 - cfg.sg / 2, "test_flops_rel": 1 - cfg.sg, "extractor": "sparsebench-digits",
               "eval_samples": 1000, "scope": "conv", "variant": ""}
        if status == "diverged":
            res = {"diverged_step": 7}
        store.finish_run(cfg.run_id, status, res, 1.0)
        store.log_stats(cfg.run_id, [(s, "loss_g", 1.0 / s) for s in range(1, 5)]
                        + [(s, "exploration_rate", 0.1 * s) for s in range(1, 5)] * (cfg.method == "stugan"))
    for method, variant in extra:
        cfg = configs[0].replace(method=method)
        store.start_run(cfg, {})
        store.finish_run(cfg.run_id, "done", {"fid": 1.0, "is_mean": 2.0, "train_flops": 1.0, "test_flops": 1.0,
                                              "train_flops_rel": 1.0, "test_flops_rel": 1.0, "variant": variant}, 1.0)
    return store


def test_report_writes_tables_plots_and_index(tmp_path, plugins):
    fake_store(tmp_path / "r.db", plugins, extra=[("stugan", "length=5")])
    out = tmp_path / "rep"
    proc = run_cli("report", "--store", str(tmp_path / "r.db"), "--out", str(out), check=True)
    assert "index.md" in proc.stdout
    for name in ["table1.md", "table1.tex", "table2.md", "table2.tex", "tables.tex", "index.md",
                 "figures/fid_vs_sg.png", "figures/fid_vs_sg.pdf", "figures/fid_vs_train_flops.png",
                 "figures/exploration_rate.png", "figures/losses.png"]:
        assert (out / name).exists(), name
    t1 = (out / "table1.md").read_text()
    assert "1 diverged" in t1  # counted and marked, not dropped
    assert "n=2" in t1 and "±" in t1
    assert t1.count("**") >= 2 * 2  # a bold best cell in each s_G column
    assert "Dense GAN" in t1
    t3 = (out / "table3.md").read_text()
    assert r"STU-GAN \[length=5\]" in t3 and "STU-GAN |" in t3  # brackets escaped: no Markdown link can form
    index = (out / "index.md").read_text()
    assert "sparsebench-digits" in index and "table1.md" in index


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
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=out,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (out / "tables.pdf").exists()


def test_empty_store_is_one_line(tmp_path):
    Store(tmp_path / "empty.db").close()
    proc = run_cli("report", "--store", str(tmp_path / "empty.db"), "--out", str(tmp_path / "rep"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no runs in" in lines[0]


def test_report_of_real_runs_has_sample_grids(tmp_path):
    store = tmp_path / "r.db"
    run_cli("run", "--methods", "stugan,static", "--arch", "sngan", "--sg", "0.9,0.8", "--seeds", "0,1",
            "--steps", "4", "--no-progress", "--store", str(store), check=True)
    out = tmp_path / "rep"
    run_cli("report", "--store", str(store), "--out", str(out), check=True)
    assert len(list((out / "samples").glob("*.png"))) == 8
    t1 = (out / "table1.md").read_text()
    assert "STU-GAN" in t1 and "Static Sparse GAN" in t1 and "n=2" in t1

"""Plugins: built-ins through entry points, isolation of broken plugins, a pip-installed third party, and the
ranges of the options plugins declare (for Python callers too; the command line's errors: test_cli_errors.py)."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import EXE, rows, run_cli, run_grid

from sparsebench import SparsebenchError
from sparsebench.hookspecs import hookimpl
from sparsebench.options import Option, validate_options
from sparsebench.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_every_builtin_from_entry_points():
    out = run_cli("list", check=True).stdout
    for name in [
        "dense",
        "small-dense",
        "static",
        "stugan",
        "pf-global",
        "pf-uniform",
        "gan-tickets",
        "biggan",
        "sngan",
        "fid",
        "is",
        "kid",
        "prc",
        "digits",
        "cifar10",
        "imagefolder",
    ]:
        line = next((ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name), None)
        assert line is not None, name
        assert line.rstrip().endswith("built-in"), line


def test_builtins_are_loaded_as_entry_points():
    plugins = Plugins()
    assert plugins.methods.entries["stugan"].plugin == "methods-stugan"
    assert plugins.methods.source("stugan") == "built-in"


def test_hook_that_raises_and_duplicate_names_are_isolated():
    bad = types.ModuleType("bad")
    dup = types.ModuleType("dup")

    @hookimpl
    def register_methods(register):
        raise RuntimeError("boom")

    class FakeStatic:
        name = "static"
        description = "an impostor"
        options = ()

    @hookimpl
    def register_methods_dup(register):
        register(FakeStatic())

    bad.register_methods = register_methods
    dup.register_methods = register_methods_dup
    with pytest.warns(UserWarning) as caught:
        plugins = Plugins(extra=[("bad-plugin", bad), ("dup-plugin", dup)])
    messages = [str(w.message) for w in caught]
    assert any("bad-plugin" in m and "boom" in m for m in messages)
    assert any("dup-plugin" in m and "'static'" in m and "already registered" in m for m in messages)
    assert plugins.methods.get("static").description != "an impostor"
    assert "stugan" in plugins.methods


def test_plugin_with_import_error_warns_once_and_the_rest_works(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_dist-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sparsebench]\nbroken = broken_module_that_does_not_exist\n")
    proc = run_cli("list", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1
    assert "'broken'" in warnings[0] and "broken-dist" in warnings[0]
    assert "stugan" in proc.stdout


@pytest.fixture(scope="module")
def example_installed():
    pkg = ROOT / "examples" / "sparsebench-snip"
    try:
        import setuptools  # noqa: F401

        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, str(pkg)], check=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "sparsebench-snip"], check=True)


@pytest.mark.slow
def test_third_party_plugin_installed_with_pip_lists_and_runs(example_installed, store):
    out = run_cli("list", check=True, spawn=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("snip "))
    assert line.rstrip().endswith("sparsebench-snip")
    run_grid(store, "snip,static", spawn=True)
    by = {r["method"]: r for r in rows(store, spawn=True)}
    assert by["snip"]["status"] == "done" and by["snip"]["fid"]
    assert abs(float(by["snip"]["density_g"]) - 0.1) < 1e-3 and abs(float(by["snip"]["density_d"]) - 0.5) < 1e-3


@pytest.mark.slow
def test_third_party_plugin_resumes_exactly_after_sigkill(example_installed, tmp_path):
    cmd = ["run", "--methods", "snip", "--arch", "sngan", "--steps", "60", "--checkpoint-every", "5", "--no-progress"]
    ref, killed = tmp_path / "ref" / "r.db", tmp_path / "kill" / "r.db"
    run_cli(*cmd, "--store", str(ref), check=True, spawn=True)
    proc = subprocess.Popen(
        [EXE, *cmd, "--store", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    t0 = time.time()
    while not list(killed.parent.glob("r-artifacts/*/checkpoint-phase1.pt")) and time.time() - t0 < 120:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(*cmd, "--store", str(killed), check=True, spawn=True)
    assert "resuming run" in resumed.stderr

    def row(path):
        return next(
            csv.DictReader(io.StringIO(run_cli("results", "--store", str(path), check=True, spawn=True).stdout))
        )

    a, b = row(ref), row(killed)
    for key in ("run_id", "fid", "is_mean", "density_g", "density_d", "train_flops"):
        assert a[key] == b[key], key


# -- the ranges of declared options ----------------------------------------------------------------------------
def test_ranges_hold_for_python_callers_and_defaults(plugins):
    stugan = plugins.methods.get("stugan").options
    for bad in ({"p0": 2.0}, {"p0": float("nan")}, {"length": 0}, {"delta_t": -5}):
        with pytest.raises(SparsebenchError):
            validate_options(stugan, bad, "stugan")
    assert validate_options(stugan, {"p0": 1, "delta_t": 0}, "stugan")["p0"] == 1.0  # bounds as written: (0, 1]
    with pytest.raises(TypeError, match="must lie in"):  # a plugin whose default is outside its own range
        Option("rate", float, 0.0, "a fraction", interval="(0, 1]")


def test_every_numeric_builtin_option_has_a_range(plugins):
    objects = [
        reg.get(n) for reg in (plugins.methods, plugins.archs, plugins.datasets, plugins.metrics) for n in reg.names()
    ]
    numeric = [(o.name, opt) for o in objects for opt in o.options if opt.type in (int, float)]
    assert {opt.name for _, opt in numeric} >= {"p0", "p_min", "delta_t", "length", "prune_rate", "heldout"}
    assert [(name, opt.name) for name, opt in numeric if opt.interval is None] == []
    with pytest.raises(SparsebenchError, match=r"must lie in \(0, 1\]"):
        validate_options(plugins.methods.get("stugan").options, {"p0": "0"}, "stugan")

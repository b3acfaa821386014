"""Hardening: option ranges, run ids from a store, read-only reads, one-line errors, TensorBoard export."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from sparsebench import SparsebenchError
from sparsebench.config import GridRequest, expand_grid
from sparsebench.options import Option, validate_options
from sparsebench.store import Store
from sparsebench.store.sinks import Snapshot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {
    "fid": 50.0,
    "is_mean": 3.0,
    "is_std": 0.1,
    "density_g": 0.1,
    "density_d": 0.5,
    "train_flops": 1e12,
    "test_flops": 1e8,
    "train_flops_rel": 0.5,
    "test_flops_rel": 0.1,
    "extractor": "sparsebench-digits",
    "eval_samples": 1000,
    "scope": "conv",
    "variant": "",
}


def one_run_store(path: Path, plugins) -> str:
    """A closed store holding one done run, written through the real Store API; returns its run id."""
    store = Store(path)
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan"), plugins)[0]
    store.claim(cfg, {"torch": "x", "device": "cpu"}, "filler")
    store.finish_run(cfg.run_id, "done", RESULTS, 1.0, "filler")
    store.log_stats(cfg.run_id, [(1, "loss_g", 1.0), (1, "loss_d", 0.5)])
    store.close()
    return cfg.run_id


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


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


# -- 3: option ranges ---------------------------------------------------------------------------------------------
OUT_OF_RANGE = [
    ("stugan", "stugan.p0=2", "must lie in (0, 1]"),
    ("stugan", "stugan.p0=-1", "must lie in (0, 1]"),
    ("stugan", "stugan.p0=0", "must lie in (0, 1]"),
    ("stugan", "stugan.p0=nan", "expects a finite float"),
    ("stugan", "stugan.p_min=inf", "expects a finite float"),
    ("stugan", "stugan.delta_t=-5", "must lie in [0, inf)"),
    ("stugan", "stugan.length=0", "must lie in [1, inf)"),
    ("gan-tickets", "gan-tickets.prune_rate=1", "must lie in (0, 1)"),
]


@pytest.mark.parametrize("method,option,needle", OUT_OF_RANGE, ids=[o for _, o, _ in OUT_OF_RANGE])
def test_out_of_range_option_is_refused_before_anything_runs(store, method, option, needle):
    proc = run_cli("run", "--methods", method, "--arch", "sngan", "-o", option, "--store", str(store), *TINY)
    line = one_error_line(proc)
    assert needle in line and repr(option.split(".")[1].split("=")[0]) in line, line
    assert not store.exists()  # refused before the store was even opened


def test_dataset_option_range(store, tmp_path):
    proc = run_cli(
        "run",
        "--methods",
        "static",
        "--arch",
        "sngan",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tmp_path),
        "-o",
        "imagefolder.heldout=0",
        "--store",
        str(store),
        *TINY,
    )
    assert "option 'heldout' must lie in (0, 1)" in one_error_line(proc)


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


# -- 9: run ids from a store never become paths outside; Markdown and HTML are escaped ------------------------------
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


def test_artifact_folders_refuse_bad_run_ids(tmp_path):
    for holder in (Store(tmp_path / "r.db"), Snapshot(tmp_path / "r.db", {})):
        for bad in ("../x", "/tmp/x", "0123456789abcde", "0123456789abcdef0"):
            with pytest.raises(SparsebenchError, match="invalid run id"):
                holder.run_dir(bad)
    assert (
        not (tmp_path / "r-artifacts").exists()
        and not (tmp_path / "artifacts").exists()
        and not (tmp_path / "x").exists()
    )


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


# -- 10: read commands are read-only ----------------------------------------------------------------------------
def test_read_commands_on_a_missing_store_create_nothing(tmp_path):
    missing = tmp_path / "typo" / "results.db"
    for args in (["results"], ["show", "abc"], ["report", "--out", str(tmp_path / "rep")]):
        line = one_error_line(run_cli(*args, "--store", str(missing)))
        assert f"no results store at {missing}" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only():
    """Makes a folder read-only: a read-only bind mount as root (permissions do not bind root), else chmod."""
    undo = []

    def seal(folder: Path) -> Path:
        if os.geteuid() != 0:
            for p in folder.iterdir():
                p.chmod(0o444)
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(0o755))
            return folder
        view = folder.with_name(folder.name + "-ro")
        view.mkdir()
        if subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder here (no bind mounts)")
        undo.append(lambda: subprocess.run(["umount", str(view)], check=True))
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder here (no read-only remount)")
        return view

    yield seal
    for step in reversed(undo):
        step()


def test_read_commands_work_on_a_read_only_filesystem(tmp_path, plugins, read_only):
    folder = tmp_path / "data"
    run_id = one_run_store(folder / "results.db", plugins)
    before = (folder / "results.db").read_bytes()
    db = read_only(folder) / "results.db"
    with pytest.raises(OSError):
        (db.parent / "probe").write_text("x")
    assert run_id in run_cli("results", "--store", str(db), check=True).stdout
    assert json.loads(run_cli("show", run_id[:6], "--store", str(db), check=True).stdout)["run_id"] == run_id
    run_cli("report", "--store", str(db), "--out", str(tmp_path / "rep"), check=True)
    assert (tmp_path / "rep" / "table1.md").exists()
    assert (folder / "results.db").read_bytes() == before


def test_foreign_sqlite_file_is_refused_untouched_by_every_command(tmp_path):
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    with conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()
    before = foreign.read_bytes()
    for args in (
        ["run", "--methods", "static", "--arch", "sngan", *TINY],
        ["results"],
        ["show", "abc"],
        ["report", "--out", str(tmp_path / "rep")],
    ):
        line = one_error_line(run_cli(*args, "--store", str(foreign)))
        assert "not a sparsebench results store (a SQLite database without its tables)" in line, (args, line)
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_malformed_schema_version_is_one_line(tmp_path, plugins):
    db = tmp_path / "results.db"
    one_run_store(db, plugins)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    conn.close()
    for args in (["results"], ["run", "--methods", "static", "--arch", "sngan", *TINY]):
        assert "unreadable schema version 'abc'" in one_error_line(run_cli(*args, "--store", str(db)))


# -- 11: one line, not a traceback ------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", ["99999999999999999999999", "-1", "0,4294967296"])
def test_seed_outside_range_is_one_line(store, seeds):
    line = one_error_line(
        run_cli("run", "--methods", "static", "--arch", "sngan", "--seeds", seeds, "--store", str(store), *TINY)
    )
    assert "is outside [0, 4294967295]" in line
    assert not store.exists()


def test_corrupt_image_is_named_in_one_line(store, tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "images" / cls / f"{i}.png")
    bad = tmp_path / "images" / "b" / "broken.png"
    bad.write_bytes(b"not an image at all")
    line = one_error_line(
        run_cli(
            "run",
            "--methods",
            "static",
            "--arch",
            "sngan",
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(tmp_path / "images"),
            "--store",
            str(store),
            *TINY,
        )
    )
    assert f"cannot read image {bad}" in line


def test_report_out_under_a_regular_file_is_one_line(tmp_path, plugins):
    db = tmp_path / "results.db"
    one_run_store(db, plugins)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(run_cli("report", "--store", str(db), "--out", str(blocker / "rep")))
    assert f"cannot write the report to {blocker / 'rep'}" in line
    assert blocker.read_text() == "x"


# -- 13: the TensorBoard export holds what was logged ---------------------------------------------------------------
def test_tensorboard_events_hold_the_logged_scalars(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(
        "run",
        "--methods",
        "static",
        "--arch",
        "sngan",
        "--steps",
        "11",
        "--no-progress",
        "--store",
        str(store),
        check=True,
    )
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

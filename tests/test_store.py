"""The SQLite results store: schema, flat table, concurrent writers, skipping done cells."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess

import pytest
from conftest import EXE, TINY, run_cli

from sparsebench.store import RESULT_COLUMNS


def test_wal_and_schema_version(store):
    run_cli("run", "--methods", "static", "--arch", "sngan", "--store", str(store), *TINY, check=True)
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"


def test_results_csv_contract_and_skip_done(store):
    first = run_cli("run", "--methods", "static,dense", "--arch", "sngan", "--store", str(store), *TINY, check=True)
    summary = first.stdout.strip().splitlines()
    assert summary[-1].startswith("quick preset: a smoke test of the pipeline (4 G steps)")  # under the table
    assert "not converged" in summary[-1] and summary[-2].split()[0] in ("static", "dense")
    table = list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))
    assert len(table) == 2
    assert list(table[0].keys())[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    by_method = {r["method"]: r for r in table}
    assert by_method["dense"]["sd"] == "0.0" and by_method["dense"]["sg"] == "0.0"  # fixed axes recorded
    assert abs(float(by_method["static"]["density_g"]) - 0.1) < 1e-4  # exact count: round(0.1 * N) / N
    for row in table:  # measured time beside FLOPs: a G step's median and the sampling time per image
        assert 0 < float(row["train_s_per_step"]) < float(row["wall_s"])
        assert 0 < float(row["infer_ms_per_image"]) < 1000 * float(row["wall_s"])
        assert int(row["threads"]) >= 1
        assert float(row["load_per_core"]) >= 0 and "cores" in row["machine"]  # where and how busy
    again = run_cli("run", "--methods", "static,dense", "--arch", "sngan", "--store", str(store), *TINY, check=True)
    assert again.stderr.count("already done, skipped") == 2
    as_json = json.loads(run_cli("results", "--store", str(store), "--format", "json", check=True).stdout)
    assert {r["run_id"] for r in as_json["runs"]} == {r["run_id"] for r in table}
    cells = {c["method"]: c for c in as_json["cells"]}
    assert set(cells) == {"static", "dense"} and cells["static"]["reference"] == "dense"
    assert cells["static"]["n"] == 1 and cells["static"]["fid_mean"] == float(by_method["static"]["fid"])
    shown = json.loads(run_cli("show", table[0]["run_id"][:8], "--store", str(store), check=True).stdout)
    assert shown["config"]["method"] == table[0]["method"]


def test_dense_is_not_repeated_per_sd(store):
    run_cli(
        "run",
        "--methods",
        "dense",
        "--arch",
        "sngan",
        "--sd",
        "0.5,0.7",
        "--sg",
        "0.8,0.9",
        "--store",
        str(store),
        *TINY,
        check=True,
    )
    table = list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))
    assert len(table) == 1


@pytest.mark.slow
def test_two_concurrent_runs_share_one_store(store):
    env_args = ["--arch", "sngan", "--store", str(store), *TINY]
    procs = [
        subprocess.Popen(
            [EXE, "run", "--methods", "static", "--seeds", "0,1", *env_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [EXE, "run", "--methods", "dense", "--seeds", "0,1", *env_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    table = list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))
    assert sorted((r["method"], r["seed"]) for r in table) == [
        ("dense", "0"),
        ("dense", "1"),
        ("static", "0"),
        ("static", "1"),
    ]
    assert all(r["status"] == "done" for r in table)

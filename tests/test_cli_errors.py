"""Bad input: one line on stderr, a non-zero exit, and no stored row lost or changed."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import TINY, run_cli


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("filled") / "results.db"
    run_cli("run", "--methods", "static", "--arch", "sngan", "--store", str(path), *TINY, check=True)
    return path


def rows(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT run_id, status, results, updated_at FROM runs ORDER BY run_id").fetchall()


BAD = [
    (["--methods", "nosuch", "--arch", "sngan"], ["unknown method 'nosuch'", "stugan", "pf-global"]),
    (["--methods", "static", "--arch", "nosuch"], ["unknown architecture 'nosuch'", "biggan", "sngan"]),
    (
        ["--methods", "static", "--arch", "sngan", "--dataset", "nosuch"],
        ["unknown dataset 'nosuch'", "digits", "cifar10"],
    ),
    (["--methods", "static", "--arch", "sngan", "--sg", "1.0"], ["outside [0, 1)"]),
    (["--methods", "static", "--arch", "sngan", "--sd", "-0.1"], ["outside [0, 1)"]),
    (["--methods", "static", "--arch", "sngan", "--sg", "abc"], ["not a number"]),
    (["--methods", "", "--arch", "sngan"], ["--methods is empty"]),
    (["--methods", ",", "--arch", "sngan"], ["--methods is empty"]),
    (["--methods", "static", "--arch", "sngan", "--seeds", "1.5"], ["'1.5' is not an integer"]),
    (["--methods", "static", "--arch", "sngan", "--preset", "huge"], ["unknown preset 'huge'", "quick", "paper"]),
    (["--methods", "stugan", "--arch", "sngan", "-o", "stugan.explore=x"], ["must be one of g, d, gd"]),
    (["--methods", "stugan", "--arch", "sngan", "-o", "stugan.nosuch=1"], ["unknown option(s) nosuch", "explore"]),
    (["--methods", "stugan", "--arch", "sngan", "-o", "stugan.delta_t=abc"], ["expects int"]),
    (["--methods", "static", "--arch", "sngan", "--steps", "0"], ["positive integer"]),
    (["--methods", "static", "--arch", "sngan", "--bogus"], ["No such option"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_run_input_is_one_line(filled_store, args, needles):
    before = rows(filled_store)
    proc = run_cli("run", *TINY, *args, "--store", str(filled_store))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert rows(filled_store) == before


def test_unwritable_store_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = ro / "sub" / "results.db"
    proc = run_cli("run", "--methods", "static", "--arch", "sngan", "--store", str(target), *TINY)
    ro.chmod(0o700)
    import os

    if os.geteuid() == 0 and proc.returncode == 0:
        pytest.skip("running as root: directory permissions do not bind")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot write results store" in proc.stderr


def test_store_path_under_a_file_is_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("run", "--methods", "static", "--arch", "sngan", "--store", str(blocker / "r.db"), *TINY)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write results store" in lines[0]


def test_store_that_is_not_sqlite(tmp_path):
    bogus = tmp_path / "results.db"
    bogus.write_bytes(b"this is not a database, just text" * 100)
    proc = run_cli("run", "--methods", "static", "--arch", "sngan", "--store", str(bogus), *TINY)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a sparsebench results store" in lines[0]
    assert bogus.read_bytes() == b"this is not a database, just text" * 100
    proc = run_cli("results", "--store", str(bogus))
    assert proc.returncode != 0 and "not a sparsebench results store" in proc.stderr


def test_show_unknown_run(filled_store):
    proc = run_cli("show", "ffffffff", "--store", str(filled_store))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1

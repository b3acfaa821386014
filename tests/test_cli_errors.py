"""Bad input on the command line: one line on stderr, a non-zero exit, and no stored row lost or changed (unknown
names, numbers out of range, options out of their declared ranges or given twice, seeds, thread counts, an
unreadable image, a run id prefix that is not hexadecimal). Files that are not a usable store: test_store.py."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import TINY, one_error_line, one_line, one_run_store, run_cli, run_grid


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("filled") / "results.db"
    run_grid(path, "static")
    return path


def stored_rows(path):
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
    before = stored_rows(filled_store)
    line = one_error_line(run_cli("run", *TINY, *args, "--store", str(filled_store)))
    for needle in needles:
        assert needle in line, line
    assert stored_rows(filled_store) == before


def test_show_unknown_run(filled_store):
    proc = run_cli("show", "ffffffff", "--store", str(filled_store))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("prefix", ["5_66", "%", "_"])
def test_show_takes_a_prefix_literally(tmp_path, plugins, prefix):
    run_id = one_run_store(tmp_path / "r.db", plugins)
    line = one_line(run_cli("show", prefix, "--store", str(tmp_path / "r.db")))
    assert "expected hexadecimal characters" in line
    shown = run_cli("show", run_id[:4].upper(), "--store", str(tmp_path / "r.db"), check=True)
    assert run_id in shown.stdout


# -- options outside their declared ranges, or given twice ---------------------------------------------------
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
    line = one_error_line(run_grid(store, method, "sngan", "-o", option, check=False))
    assert needle in line and repr(option.split(".")[1].split("=")[0]) in line, line
    assert not store.exists()  # refused before the store was even opened


def test_dataset_option_range(store, tmp_path):
    args = ["--dataset", "imagefolder", "--data-dir", str(tmp_path), "-o", "imagefolder.heldout=0"]
    proc = run_grid(store, "static", "sngan", *args, check=False)
    assert "option 'heldout' must lie in (0, 1)" in one_error_line(proc)


def test_an_option_given_twice_is_an_error(store):
    line = one_line(run_grid(store, "stugan", "sngan", "-o", "stugan.delta_t=7", "-o", "stugan.delta_t=9", check=False))
    assert "stugan.delta_t given twice" in line
    assert not store.exists()


# -- seeds and thread counts out of range --------------------------------------------------------------------
@pytest.mark.parametrize("seeds", ["99999999999999999999999", "-1", "0,4294967296"])
def test_seed_outside_range_is_one_line(store, seeds):
    line = one_error_line(run_grid(store, "static", "sngan", "--seeds", seeds, check=False))
    assert "is outside [0, 4294967295]" in line
    assert not store.exists()


def test_threads_out_of_range_is_one_line(store):
    proc = run_grid(store, "static", "sngan", "--threads", "0", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "threads must be an integer in [1, 1024], got 0" in proc.stderr


# -- a data set with an unreadable image ---------------------------------------------------------------------
def test_corrupt_image_is_named_in_one_line(store, tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "images" / cls / f"{i}.png")
    bad = tmp_path / "images" / "b" / "broken.png"
    bad.write_bytes(b"not an image at all")
    args = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "images")]
    line = one_error_line(run_grid(store, "static", "sngan", *args, check=False))
    assert f"cannot read image {bad}" in line

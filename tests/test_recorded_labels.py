"""Recorded labels are what happened: `eval_weights` names the weights really evaluated."""

from __future__ import annotations

import csv
import io

from conftest import TINY, run_cli


def rows(store) -> dict:
    out = run_cli("results", "--store", str(store), check=True).stdout
    return {r["method"]: r for r in csv.DictReader(io.StringIO(out))}


def test_a_run_shorter_than_ema_start_records_g_own_weights(store):
    # BigGAN's quick preset starts its EMA at G step 100: a 4-step run evaluates G's own weights
    run_cli(
        "run", "--methods", "dense,stugan", "--arch", "biggan", "--sg", "0.8", *TINY, "--store", str(store), check=True
    )
    by = rows(store)
    assert by["dense"]["eval_weights"] == "raw"
    assert by["stugan"]["eval_weights"] == "raw"


def test_a_run_past_ema_start_records_its_average(store):
    # SNGAN's quick preset averages from the first step
    run_cli(
        "run", "--methods", "dense,stugan", "--arch", "sngan", "--sg", "0.8", *TINY, "--store", str(store), check=True
    )
    by = rows(store)
    assert by["dense"]["eval_weights"] == "ema"
    assert by["stugan"]["eval_weights"] == "sema"

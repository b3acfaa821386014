"""Recorded labels are what happened: `eval_weights` names the weights really evaluated."""

from __future__ import annotations

from conftest import rows, run_grid


def by_method(store) -> dict:
    return {r["method"]: r for r in rows(store)}


def test_a_run_shorter_than_ema_start_records_g_own_weights(store):
    # BigGAN's quick preset starts its EMA at G step 100: a 4-step run evaluates G's own weights
    run_grid(store, "dense,stugan", "biggan", "--sg", "0.8")
    by = by_method(store)
    assert by["dense"]["eval_weights"] == "raw"
    assert by["stugan"]["eval_weights"] == "raw"


def test_a_run_past_ema_start_records_its_average(store):
    # SNGAN's quick preset averages from the first step
    run_grid(store, "dense,stugan", "sngan", "--sg", "0.8")
    by = by_method(store)
    assert by["dense"]["eval_weights"] == "ema"
    assert by["stugan"]["eval_weights"] == "sema"

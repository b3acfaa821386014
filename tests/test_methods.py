"""Every built-in method end to end at tiny size, through the real CLI, entry points and store."""

from __future__ import annotations

import sqlite3
import types

import pytest
import torch
from conftest import rows, run_grid, scheduler

from sparsebench.config import GridRequest, expand_grid
from sparsebench.hookspecs import hookimpl
from sparsebench.plugins import Plugins
from sparsebench.store import Store


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    store = tmp_path_factory.mktemp("methods") / "results.db"
    methods = "dense,small-dense,static,stugan,pf,gan-tickets"
    first = run_grid(store, methods, "sngan", "--sg", "0.8", "--sd", "0.5", "-o", "stugan.delta_t=2", steps=6)
    return store, {r["method"]: r for r in rows(store)}, first


def f(row, key):
    return float(row[key])


def test_every_method_finishes_and_stores_metrics(grid):
    _, by, _ = grid
    assert set(by) == {"dense", "small-dense", "static", "stugan", "pf-global", "pf-uniform", "gan-tickets"}
    for method, row in by.items():
        assert row["status"] == "done", (method, row)
        for key in ("fid", "is_mean", "train_flops", "test_flops", "train_flops_rel", "test_flops_rel", "wall_s"):
            assert row[key] != "", (method, key)
        assert f(row, "extractor_accuracy") >= 0.95


def test_measured_densities_are_as_specified(grid):
    _, by, _ = grid
    for m in ("dense", "small-dense"):
        assert f(by[m], "density_g") == 1.0 and f(by[m], "density_d") == 1.0
        assert f(by[m], "sg") == 0.0 and f(by[m], "sd") == 0.0
    for m in ("static", "stugan"):
        assert f(by[m], "density_g") == pytest.approx(0.2, abs=1e-4)
        assert f(by[m], "density_d") == pytest.approx(0.5, abs=1e-4)
    for m in ("pf-global", "pf-uniform"):
        assert f(by[m], "density_g") == pytest.approx(0.2, abs=1e-4)
        assert f(by[m], "density_d") == 1.0 and f(by[m], "sd") == 0.0
    tickets = by["gan-tickets"]
    assert int(float(tickets["rounds"])) == 7  # 0.8^7 = 0.21 is the density nearest 0.2
    assert f(tickets, "reached_sg") == pytest.approx(1 - 0.8**7, abs=1e-4)
    assert f(tickets, "density_g") == pytest.approx(0.8**7, abs=1e-4)
    assert f(tickets, "train_flops_rel") > 3  # seven retraining rounds after the dense run


def test_stugan_explored_and_static_did_not(grid):
    _, by, _ = grid
    assert f(by["stugan"], "exploration_rate") > 1 - 0.8 + 0.01
    assert f(by["static"], "exploration_rate") == f(by["static"], "density_g")
    assert by["stugan"]["eval_weights"] == "sema"
    # the same sparse steps, plus the dense weight gradients of G's regrowth steps, 2 of the 6 at delta_t=2
    # (exactly: tests/test_flop_plan.py)
    assert f(by["static"], "train_flops") < f(by["stugan"], "train_flops") < 1.5 * f(by["static"], "train_flops")


def test_stugan_logs_exploration_statistics(grid):
    store, by, _ = grid
    with sqlite3.connect(store) as conn:
        keys = {
            k for (k,) in conn.execute("SELECT DISTINCT key FROM stats WHERE run_id = ?", (by["stugan"]["run_id"],))
        }
    assert {"loss_d", "loss_g", "exploration_rate", "update_fraction"} <= keys


def test_pf_names_the_dense_run_and_never_retrains_it(grid):
    store, by, _ = grid
    dense_id = by["dense"]["run_id"]
    assert by["pf-global"]["pruned_from"] == dense_id == by["pf-uniform"]["pruned_from"]
    assert by["gan-tickets"]["pruned_from"] == dense_id
    assert f(by["pf-global"], "train_flops") > f(by["dense"], "train_flops")
    with sqlite3.connect(store) as conn:
        before = conn.execute("SELECT updated_at FROM runs WHERE run_id = ?", (dense_id,)).fetchone()
    again = run_grid(store, "pf", "sngan", "--sd", "0.5", "--sg", "0.9", steps=6)
    with sqlite3.connect(store) as conn:
        after = conn.execute("SELECT updated_at FROM runs WHERE run_id = ?", (dense_id,)).fetchone()
        n_dense = conn.execute("SELECT COUNT(*) FROM runs WHERE method = 'dense'").fetchone()[0]
    assert before == after and n_dense == 1
    lines = again.stderr.splitlines()  # the run PF builds on comes first, as its own cell, and is reused
    assert lines[0].startswith("[1/3] dense") and f"{dense_id} already done, skipped" in lines[1]
    assert any(line.startswith("[2/3] pf-global") for line in lines), again.stderr


def test_gan_tickets_runs_the_rounds_asked_for(tmp_path):
    store = tmp_path / "results.db"
    run_grid(store, "gan-tickets", "sngan", "--sg", "0.9", "-o", "gan-tickets.rounds=2")
    tickets = next(r for r in rows(store) if r["method"] == "gan-tickets")
    assert tickets["status"] == "done" and int(float(tickets["rounds"])) == 2  # not the 10 that s_G = 0.9 implies
    assert f(tickets, "density_g") == pytest.approx(0.8**2, abs=1e-4)


def test_diverged_run_is_stored_and_the_grid_goes_on(tmp_path):
    from sparsebench.interfaces import Callbacks, Method

    class Poison(Callbacks):
        def after_g_step(self, state, step):
            if step == 3:
                with torch.no_grad():
                    next(state.G.parameters()).fill_(float("nan"))
            return False

    class Exploding(Method):
        name = "exploding"
        description = "poisons G at step 3"

        def run(self, ctx):
            G, D = ctx.build_models()
            state = ctx.state(G, D, None, None)
            ctx.train(state, hooks=Poison())
            ctx.finish(state)

    mod = types.ModuleType("exploding")
    mod.register_methods = hookimpl(lambda register: register(Exploding()))
    plugins = Plugins(extra=[("exploding", mod)])
    store = Store(tmp_path / "r.db")
    configs = expand_grid(GridRequest(methods=["exploding", "dense"], arch="sngan", steps=6), plugins)
    cells = scheduler(store, plugins)
    outcomes = [cells.run_one(c) for c in configs]
    assert [o.status for o in outcomes] == ["diverged", "done"]
    stored = store.get(outcomes[0].run_id)
    assert stored["status"] == "diverged" and stored["results"]["diverged_step"] == 4

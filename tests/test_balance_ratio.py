"""The balance ratio (ADAPT) logged for every method: measured without changing training, stored and plotted."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import loop as train
from conftest import rows, run_grid, small_spec

from sparsebench.balance import balance_ratio
from sparsebench.interfaces import Callbacks as Hooks
from sparsebench.interfaces import GANState
from sparsebench.store import Store
from sparsebench.train.loop import Batcher, adam


@pytest.mark.parametrize("arch", ["sngan", "biggan"])
def test_measuring_the_balance_ratio_leaves_training_unchanged(plugins, arch):
    spec = small_spec(log_every=2)
    data = plugins.datasets.get("digits").load(16).train
    finals, logged = [], []
    for log in (None, lambda step, values: logged.append((step, values["balance_ratio"]))):
        torch.manual_seed(0)
        G, D = plugins.archs.get(arch).build(spec, 10)
        state = GANState(G, D, adam(G.parameters(), 1e-3, 0.0, 0.999), adam(D.parameters(), 1e-3, 0.0, 0.999))
        batcher = Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(4))
        train(state, 5, spec, batcher, 10, torch.Generator().manual_seed(5), lambda: 0.0, log=log)
        finals.append({**G.state_dict(), **{f"D.{k}": v for k, v in D.state_dict().items()}})
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])  # BN stats and SN vectors included
    assert [s for s, _ in logged] == [1, 2, 4] and all(math.isfinite(v) for _, v in logged)


def test_balance_ratio_is_a_ratio_of_batch_means_as_the_reference_computes_it():
    d_real, d_pre, d_post = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.9]), torch.tensor([0.5, 2.0])
    # batch means 1.5, 0.95, 1.25: (1.25 - 0.95) / (1.5 - 0.95); per image it would be (0.5 + 1.0) / 2
    assert balance_ratio(d_real, d_pre, d_post) == pytest.approx(0.3 / 0.55)
    assert math.isnan(balance_ratio(torch.ones(2), torch.ones(2), torch.zeros(2)))  # D cannot tell them apart


def test_hooks_ask_for_the_ratio_at_their_own_steps_without_changing_training(plugins):
    spec = small_spec()
    data = plugins.datasets.get("digits").load(16).train
    seen, finals = [], []

    class Every3(Hooks):
        balance_ratio_every = 3

        def after_g_step(self, state, step):
            seen.append((step, math.isfinite(state.balance_ratio)))
            return False

    for hooks in (None, Every3()):
        torch.manual_seed(0)
        G, D = plugins.archs.get("sngan").build(spec, 10)
        state = GANState(G, D, adam(G.parameters(), 1e-3, 0.0, 0.999), adam(D.parameters(), 1e-3, 0.0, 0.999))
        batcher = Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(4))
        train(state, 6, spec, batcher, 10, torch.Generator().manual_seed(5), lambda: 0.0, hooks)
        finals.append({**G.state_dict(), **{f"D.{k}": v for k, v in D.state_dict().items()}})
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert seen == [(1, False), (2, False), (3, True), (4, False), (5, False), (6, True)]


def test_every_run_stores_its_balance_ratio(store):
    run_grid(store, "static", steps=20)
    (row,) = rows(store)
    assert math.isfinite(float(row["balance_ratio"])) and math.isfinite(float(row["balance_ratio_last10"]))
    import sqlite3

    with sqlite3.connect(store) as conn:
        steps = [s for (s,) in conn.execute("SELECT step FROM stats WHERE key = 'balance_ratio' ORDER BY step")]
        last = conn.execute("SELECT value FROM stats WHERE key = 'balance_ratio' AND step = 20").fetchone()[0]
    assert steps == [1, 10, 20] and float(row["balance_ratio"]) == pytest.approx(last)
    # ratios stored by another estimator (here: a run recorded without the current one) are not shown
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET env = json_remove(env, '$.balance_ratio_estimator')")
    (row,) = rows(store)
    assert row["balance_ratio"] == "" and row["balance_ratio_last10"] == ""
    assert Store(store, readonly=True).stats_rows(["balance_ratio", "loss_d"]) == [
        r for r in Store(store, readonly=True).stats_rows(["loss_d"])
    ]


def test_the_train_mode_ratio_measures_its_three_terms_alike(plugins, monkeypatch):
    """D(G_pre(z)) is the bf16 G step's own output: D(G_post(z)) and D(x) must be computed the same way (the
    training forwards under the run's precision), not by eager fp32 forwards, or ADAPT's decisions would depend
    on --precision beyond what training does."""
    from test_gpu_path import run, tiny

    from sparsebench.speed import Speed

    ratios = []

    class Asking(Hooks):
        balance_ratio_every, balance_ratio_mode = 1, "train"

        def after_g_step(self, state, step):
            ratios.append(float(state.balance_ratio))
            return False

    state, spec, batcher = tiny(plugins, "sngan")
    dtypes, forward = [], state.D.forward

    def recording(*args):
        out = forward(*args)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(state.D, "forward", recording)
    run(state, spec, batcher, 2, hooks=Asking(), speed=Speed(precision="bf16"))
    assert len(ratios) == 2 and all(math.isfinite(r) for r in ratios)
    per_step = 2 * spec.n_critic + 1 + 2  # D steps (real, fake), the G step's, the probe's two
    assert len(dtypes) == 2 * per_step
    assert set(dtypes) == {torch.bfloat16}, dtypes  # the probe's forwards too

"""The Python API owns grid expansion and progress: `sparsebench.run` needs nothing of the command line."""

from __future__ import annotations

import pytest

import sparsebench
from sparsebench.grid import expand_methods


def test_method_groups_expand_in_order_once_from_a_string_or_a_list(plugins):
    groups = plugins.method_groups()
    group, members = next(iter(groups.items()))
    assert expand_methods(f"static,{group},static", plugins) == ["static", *members]
    assert expand_methods(["static", " ", group], plugins) == ["static", *members]
    with pytest.raises(sparsebench.SparsebenchError, match="is empty"):
        expand_methods(" , ", plugins)
    with pytest.raises(sparsebench.SparsebenchError, match="unknown method 'nope'; known: .*static"):
        expand_methods(["static", "nope"], plugins)


def test_run_reports_progress_through_its_callbacks(store):
    started, done = [], []
    df = sparsebench.run(
        methods=["static"],
        arch="sngan",
        sg=0.8,
        steps=2,
        store=store,
        on_start=lambda config, i, total: started.append((config.run_id, i, total)),
        on_done=lambda config, outcome: done.append((config.run_id, outcome.status)),
    )
    (run_id,) = df["run_id"]
    assert started == [(run_id, 1, 1)] and done == [(run_id, "done")]
    sparsebench.run(methods="static", arch="sngan", sg=0.8, steps=2, store=store, on_done=lambda c, o: done.append(o))
    assert done[-1].skipped and done[-1].status == "done"  # a done cell is reported as skipped


def test_a_finished_run_closes_its_store_and_stops_renewing_leases(tmp_path, monkeypatch):
    """After `sparsebench.run` returns, no thread renews leases and no connection holds the store open: its
    write-ahead log is folded into the database file, which can be copied on its own."""
    import threading

    from sparsebench.store import claims

    def heartbeats() -> set:
        return {t for t in threading.enumerate() if t.name == "sparsebench-heartbeat"}

    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)  # renew while the run trains, so its connection is used
    store = tmp_path / "results.db"
    before = heartbeats()  # other tests' grids, in this process
    df = sparsebench.run(methods="static", arch="sngan", sg=0.8, steps=20, store=store)
    assert list(df["status"]) == ["done"]
    assert heartbeats() <= before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results-artifacts", "results.db"]

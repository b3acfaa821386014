"""How the runner is put together: dependencies trained up front, one store protocol, settings that
cannot change a run kept out of its identity."""

from __future__ import annotations

import csv
import io

from conftest import run_cli

from sparsebench.config import GridRequest, expand_grid
from sparsebench.store import Store
from sparsebench.store.sinks import FollowerSink, RecordingSink, RunSink, StoreSink


def rows(store) -> list[dict]:
    return list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(store), check=True).stdout)))


def test_every_sink_a_run_is_given_speaks_one_protocol(tmp_path):
    store = Store(tmp_path / "r.db")
    run_id = "0123456789abcdef"
    members = [name for name in vars(RunSink) if not name.startswith("_")]
    for sink in (StoreSink(store, run_id, "me"), RecordingSink(run_id, store.path), FollowerSink(store, run_id)):
        for name in members:
            assert hasattr(sink, name), (type(sink).__name__, name)
        assert sink.run_dir() == store.artifacts_dir / run_id or isinstance(sink, RecordingSink)


def test_dependencies_train_first_as_their_own_cells_and_are_never_rerun(store):
    cmd = ["run", "--methods", "pf-global", "--arch", "sngan", "--sg", "0.8", "--steps", "2", "--store", str(store)]
    first = run_cli(*cmd, "--no-progress", check=True)
    lines = [line for line in first.stderr.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/2] dense") and lines[1].startswith("[2/2] pf-global"), first.stderr
    dense = {r["method"]: r for r in rows(store)}["dense"]
    run_cli(*cmd, "--no-progress", "--rerun", check=True)
    again = {r["method"]: r for r in rows(store)}
    assert again["dense"] == dense  # the run it builds on is reused, not trained again
    assert again["pf-global"]["pruned_from"] == dense["run_id"]


def test_a_dense_run_is_the_same_under_every_policy_and_backend(plugins, store):
    def ids(**changes):
        req = GridRequest(methods=["dense", "static"], arch="sngan", sg=[0.8], steps=2, **changes)
        return {c.method: c for c in expand_grid(req, plugins)}

    default, zero, kernels = ids(), ids(opt_state="zero"), ids(kernels="sparseprop")
    assert default["dense"].run_id == zero["dense"].run_id == kernels["dense"].run_id
    assert zero["dense"].opt_state == "dense" and kernels["dense"].kernels == "dense"
    assert len({default["static"].run_id, zero["static"].run_id, kernels["static"].run_id}) == 3
    base = ["--arch", "sngan", "--sg", "0.8", "--steps", "2", "--no-progress", "--store", str(store)]
    run_cli("run", "--methods", "dense", *base, check=True)
    run_cli("run", "--methods", "pf-uniform", "--opt-state", "zero", *base, check=True)
    methods = sorted(r["method"] for r in rows(store))
    assert methods == ["dense", "pf-uniform"]  # PF under another policy reused the one dense run

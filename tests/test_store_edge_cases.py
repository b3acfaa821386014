"""Edge cases of the store found by trying to break it: a process that loses its claim while a file of the run
is half written, a store name SQLite cannot add its journal suffix to, and commands that only read a store."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import torch
from conftest import scheduler

from sparsebench.config import GridRequest, expand_grid
from sparsebench.store import Store


# -- a claim lost while a file of the run is being written ----------------------------------------------
def files_of(folder) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


@pytest.mark.parametrize("name", ["checkpoint-phase1.pt", "samples.pt", "final.pt"])
def test_a_claim_lost_while_writing_a_file_of_the_run_leaves_its_folder_alone(
    tmp_path, plugins, monkeypatch, caplog, name
):
    """The process is paused while it writes `name` (past its lease); another process takes the run over and
    stores it done; the paused one continues: it completes the temporary file, looks at its claim before the
    rename, stops with ClaimLost and leaves the run's folder as the takeover found it."""
    store = Store(tmp_path / "r.db")
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.8], sd=[0.5], steps=2), plugins)[0]
    run_dir = store.run_dir(cfg.run_id)
    save, found = torch.save, {}

    def paused_while_saving(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if str(f).startswith(f"{run_dir / name}.") and str(f).endswith(".tmp"):  # complete, not yet renamed
            found.update({k: v for k, v in files_of(run_dir).items() if not k.endswith(".tmp")})
            with sqlite3.connect(store.path) as conn:  # meanwhile the other process finished the run
                conn.execute("UPDATE runs SET status = 'done', results = ?, owner = NULL, lease_until = NULL",
                             ('{"fid": 1.5}',))  # fmt: skip
            found["taken over"] = (0, 0)

    monkeypatch.setattr(torch, "save", paused_while_saving)
    with caplog.at_level(logging.WARNING, logger="sparsebench.run"):
        outcome = scheduler(store, plugins).run_one(cfg)
    assert found.pop("taken over", None), f"no temporary file of {name} was written"
    assert outcome.taken and outcome.skipped  # the runner caught ClaimLost: the run is left to the new holder
    assert "taken over by another process" in caplog.text
    assert files_of(run_dir) == found  # nothing written, renamed or removed; no temporary file left
    assert store.get(cfg.run_id)["status"] == "done" and store.get(cfg.run_id)["results"] == {"fid": 1.5}
    store.close()


def test_atomic_save_removes_its_temporary_when_the_check_before_the_rename_raises(tmp_path, monkeypatch):
    from sparsebench.recorder import ClaimLost, RunRecorder
    from sparsebench.train.checkpoint import atomic_save

    class Sink:  # the claim stands until the temporary file is written
        run_id, held = "r1", True

        def holds(self):
            return self.held

    sink, save = Sink(), torch.save

    def written_then_lost(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        sink.held = False

    monkeypatch.setattr(torch, "save", written_then_lost)
    recorder = RunRecorder(sink)
    with pytest.raises(ClaimLost, match="taken over"):
        atomic_save({"x": torch.zeros(2)}, tmp_path / "checkpoint-phase1.pt", lambda: recorder.holding(every=0.0))
    assert list(tmp_path.iterdir()) == []

"""Each store has its own artifacts folder: two stores in one folder never read or write each other's files,
and a store made before the folder was recorded keeps finding its runs' files in `artifacts/`."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from conftest import EXE, run_cli

from sparsebench.store import Store

ROOT = Path(__file__).resolve().parents[1]


def test_two_stores_in_one_folder_train_their_own_cell_at_once(tmp_path):
    stores = [tmp_path / "a.db", tmp_path / "b.db"]
    cmd = ["run", "--methods", "static", "--arch", "sngan", "--steps", "12", "--checkpoint-every", "1"]
    procs = [
        subprocess.Popen([EXE, *cmd, "--store", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for s in stores
    ]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        errs.append(err)
    for err in errs:
        assert "resuming" not in err, err  # neither store picked up the other's checkpoint
    opened = [Store(s, readonly=True) for s in stores]
    (row_a,), (row_b,) = (s.all_runs() for s in opened)
    assert row_a["run_id"] == row_b["run_id"]  # the same cell in both stores
    assert row_a["status"] == row_b["status"] == "done"
    dirs = [s.artifacts_dir for s in opened]
    assert dirs[0] != dirs[1]
    for d in dirs:
        assert (d / row_a["run_id"] / "final.pt").exists()
        assert not list(d.glob("*/checkpoint-*"))
    assert not (tmp_path / "artifacts").exists()  # no shared folder was made


def test_a_store_made_before_its_folder_was_recorded_keeps_artifacts(tmp_path, plugins):
    from sparsebench.config import GridRequest, expand_grid

    db = tmp_path / "results.db"
    store = Store(db)
    store.claim(expand_grid(GridRequest(methods=["dense"], arch="sngan"), plugins)[0], {}, "filler")
    store.close()
    with sqlite3.connect(db) as conn:  # as a store with runs made before the folder was recorded
        conn.execute("DELETE FROM meta WHERE key = 'artifacts_dir'")
    assert Store(db, readonly=True).artifacts_dir == tmp_path / "artifacts"
    assert Store(db).artifacts_dir == tmp_path / "artifacts"  # recorded on the first write
    assert Store(db, readonly=True).artifacts_dir == tmp_path / "artifacts"
    fresh = Store(tmp_path / "other.db")
    assert fresh.artifacts_dir == tmp_path / "other-artifacts"


def test_the_committed_small_store_finds_its_dense_weights(tmp_path):
    """What reports/small/commands.sh restores: the snapshot store with its dense runs' files in its artifacts."""
    small = ROOT / "reports" / "small"
    (tmp_path / "small").mkdir()  # what a clean checkout has of the grid (no live store/)
    for name in ("results.db", "snapshot.sh", "dense-artifacts", "checkpoints"):
        if (small / name).exists():
            subprocess.run(["cp", "-r", str(small / name), str(tmp_path / "small" / name)], check=True)
    subprocess.run(["bash", str(tmp_path / "small" / "snapshot.sh"), "restore"], check=True)
    store = Store(tmp_path / "small" / "store" / "results.db")
    dense = [r for r in store.all_runs() if r["method"] == "dense" and r["status"] == "done"]
    assert dense
    found = [r for r in dense if (store.artifacts_dir / r["run_id"] / "final.pt").exists()]
    assert found and len(found) == len(list((tmp_path / "small" / "dense-artifacts").iterdir()))
    folder = tmp_path / "small" / "store"
    assert run_cli("results", "--store", str(folder / "results.db"), check=True).stdout

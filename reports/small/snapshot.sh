#!/bin/bash
# Keep the grid across machines: copy the live store (reports/small/store/, not in git) into files git
# keeps: a consistent SQLite copy, the flat results table, the saved weights of the dense runs (PF and
# GAN Tickets start from them) and the checkpoints of the runs still training (a new machine resumes
# them). `bash reports/small/snapshot.sh restore` puts them back into the store's own artifacts folder.
cd "$(dirname "$0")"
export PATH="$PWD/../../.venv/bin:$PATH"
artifacts() {  # the artifacts folder a store names in its metadata (stores made before it: artifacts)
  python -c "import sqlite3, sys; r = sqlite3.connect(sys.argv[1]).execute(\"SELECT value FROM meta WHERE key = 'artifacts_dir'\").fetchone(); print(r[0] if r else 'artifacts')" "$1"
}
if [ "$1" = restore ]; then
  [ -e store/results.db ] && { echo "store/results.db exists: nothing restored"; exit 0; }
  [ -e results.db ] || exit 0  # nothing stored yet: the grid starts a new store
  mkdir -p store && cp results.db store/results.db
  a="store/$(artifacts results.db)"
  mkdir -p "$a"
  for d in dense-artifacts checkpoints; do [ -d $d ] && cp -r $d/. "$a/"; done
  exit 0
fi
[ -e store/results.db ] || exit 0
python - "store/$(artifacts store/results.db)" <<'PY'
import shutil, sqlite3, sys
from pathlib import Path
art = Path(sys.argv[1])
src = sqlite3.connect("file:store/results.db?mode=ro", uri=True)
dst = sqlite3.connect("results.db.tmp")
src.backup(dst)
dst.execute("PRAGMA journal_mode=DELETE")
dst.close()
Path("results.db.tmp").replace("results.db")
for (run_id,) in src.execute("SELECT run_id FROM runs WHERE method = 'dense' AND status = 'done'"):
    for name in ("init.pt", "final.pt"):
        if (art / run_id / name).exists() and not (Path("dense-artifacts") / run_id / name).exists():
            (Path("dense-artifacts") / run_id).mkdir(parents=True, exist_ok=True)
            shutil.copy2(art / run_id / name, Path("dense-artifacts") / run_id / name)
shutil.rmtree("checkpoints", ignore_errors=True)
for (run_id,) in src.execute("SELECT run_id FROM runs WHERE status = 'running'"):
    for f in (art / run_id).glob("checkpoint-phase*.pt"):
        (Path("checkpoints") / run_id).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, Path("checkpoints") / run_id / f.name)
PY
sparsebench results --store results.db --format csv > results.csv

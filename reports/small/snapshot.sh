#!/bin/bash
# Keep the grid across machines: copy the live store (reports/small/store/, not in git) into files git
# keeps: a consistent SQLite copy, the flat results table, and the saved weights of the dense runs
# (PF and GAN Tickets start from them). `bash reports/small/snapshot.sh restore` puts them back.
cd "$(dirname "$0")"
export PATH="$PWD/../../.venv/bin:$PATH"
if [ "$1" = restore ]; then
  [ -e store/results.db ] && { echo "store/results.db exists: nothing restored"; exit 0; }
  mkdir -p store/artifacts && cp results.db store/results.db && cp -r dense-artifacts/. store/artifacts/
  exit 0
fi
python - <<'PY'
import shutil, sqlite3
from pathlib import Path
src = sqlite3.connect("file:store/results.db?mode=ro", uri=True)
dst = sqlite3.connect("results.db.tmp")
src.backup(dst)
dst.execute("PRAGMA journal_mode=DELETE")
dst.close()
Path("results.db.tmp").replace("results.db")
for (run_id,) in src.execute("SELECT run_id FROM runs WHERE method = 'dense' AND status = 'done'"):
    for name in ("init.pt", "final.pt"):
        f = Path("store/artifacts") / run_id / name
        if f.exists():
            (Path("dense-artifacts") / run_id).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, Path("dense-artifacts") / run_id / name)
PY
sparsebench results --store results.db --format csv > results.csv

#!/bin/bash
# Keep the noise study across machines: copy its live store (store/, not in git) into files git keeps: a
# consistent SQLite copy and the checkpoints of the runs still training (a new machine resumes them instead
# of starting over). `bash reports/small/noise/snapshot.sh restore` puts them back; then
#   python benchmarks/noise.py --archs biggan,sngan --seeds 0,1,2,3,4 --jobs 2 --store reports/small/noise/store/results.db
# continues the study where it stopped (done runs are reused).
cd "$(dirname "$0")"
export PATH="$PWD/../../../.venv/bin:$PATH"
if [ "$1" = restore ]; then
  [ -e store/results.db ] && { echo "store/results.db exists: nothing restored"; exit 0; }
  mkdir -p store/artifacts && cp results.db store/results.db
  [ -d checkpoints ] && cp -r checkpoints/. store/artifacts/
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
shutil.rmtree("checkpoints", ignore_errors=True)
for (run_id,) in src.execute("SELECT run_id FROM runs WHERE status = 'running'"):
    for f in (Path("store/artifacts") / run_id).glob("checkpoint-phase*.pt"):
        (Path("checkpoints") / run_id).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, Path("checkpoints") / run_id / f.name)
PY

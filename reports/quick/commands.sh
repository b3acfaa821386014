#!/bin/bash
# The runs behind reports/quick, then the report. Run from the repository root: bash reports/quick/commands.sh
# Done cells are skipped and stopped runs resume, so it continues where it stopped. The store stays in
# reports/quick/store/ (not in git); the report, its figures and sample grids are committed.
set -e
export PATH="$PWD/.venv/bin:$PATH"  # the dev venv, where there is one
S=reports/quick/store/results.db
sparsebench run --methods stugan,static,pf --arch biggan --sg 0.9,0.8 --seeds 0,1,2 --jobs 2 --no-progress --store $S
sparsebench report --preset quick --store $S --out reports/quick

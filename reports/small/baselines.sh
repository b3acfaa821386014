#!/bin/bash
# ADAPT and its SDST baselines compared at one sparse scope (the rows the report labels by scope), 3 seeds each,
# both archs, s_G 0.95 and 0.9: ADAPT 0.4.0 at the small preset's scope (conv) and its short-preset schedule;
# SDST-SET and SDST-RigL at ADAPT's reference masking (`--scope weights`), beside the ADAPT 0.3.x rows stored at
# that scope. (SDST at conv is already in the grid: its runs are unchanged.) Seeds fixed before any outcome.
# Run from the repository root, or with STORE=path to share another checkout's live store:
#   bash reports/small/baselines.sh
export PATH="$PWD/.venv/bin:$PATH"  # the dev venv, where there is one
S=${STORE:-reports/small/store/results.db}
if [ -z "$STORE" ]; then bash reports/small/snapshot.sh restore; fi
R="sparsebench run --preset small --sd 0.5 --precision bf16 --channels-last --jobs 2 --no-progress --store $S"
for arch in biggan sngan; do
  $R --arch $arch --methods adapt --sg 0.95,0.9 --seeds 0,1,2
  $R --arch $arch --methods set,rigl --sg 0.95,0.9 --scope weights --seeds 0,1,2
  if [ -z "$STORE" ]; then bash reports/small/snapshot.sh; fi  # (a bare `[ ] &&` would end the script with 1)
done

#!/bin/bash
# The runs of the confirmatory study stugan-vs-static.toml, into the same store as reports/small/commands.sh.
# Blocks of 4 seeds, both archs per block, so that a stopped grid leaves whole pairs; done cells are skipped and
# stopped runs resume, so this script continues where it stopped. Run from the repository root:
#   bash reports/small/studies/stugan-vs-static.sh
export PATH="$PWD/.venv/bin:$PATH"  # the dev venv, where there is one
S=reports/small/store/results.db
bash reports/small/snapshot.sh restore
R="sparsebench run --preset small --sd 0.5 --precision bf16 --channels-last --jobs 2 --no-progress --store $S"
for seeds in 10,11,12,13 14,15,16,17 18,19,20,21 22,23,24,25 26,27,28,29 30,31,32,33; do
  for arch in biggan sngan; do
    $R --arch $arch --methods static,stugan --sg 0.95,0.9 --seeds $seeds  # a failed cell does not stop the study
    bash reports/small/snapshot.sh
  done
done

#!/bin/bash
# The grid behind reports/small, in the order it runs. Cells already done are skipped and stopped runs
# resume, so this script continues where it stopped, on this machine or (from the committed snapshot)
# on another. Run from the repository root: bash reports/small/commands.sh
#
# Protocol (chosen from reports/small/noise before this grid ran): the small preset scores a run by the
# mean FID of its last 6 evaluations, 100 G steps apart (the preset's default), and every run trains
# under bf16 autocast with channels-last memory (about 1.9x faster on a CPU with AMX-BF16; the noise
# study found the same FIDs and no wider spread). Seeds per row, fixed before any outcome was seen:
# 10 for STU-GAN vs Static (both archs, s_G 0.95 and 0.9, s_D 0.5) and the dense GAN; 3 for the same
# rows at twice the preset's length and for every other row; 2 for GAN Tickets (7 rounds a run).
export PATH="$PWD/.venv/bin:$PATH"  # the dev venv, where there is one
S=reports/small/store/results.db
bash reports/small/snapshot.sh restore
R="sparsebench run --preset small --sd 0.5 --precision bf16 --channels-last --jobs 2 --no-progress --store $S"
step() { $R "$@"; bash reports/small/snapshot.sh; }  # a failed or diverged cell does not stop the grid
TEN=0,1,2,3,4,5,6,7,8,9
THREE=0,1,2
# 1. the decisive cells: 10 seeds per arm, in blocks of seeds so that a stopped grid leaves whole seeds
for seeds in 0,1,2,3,4 5,6,7,8,9; do
  for arch in biggan sngan; do
    step --arch $arch --methods dense,static,stugan --sg 0.95,0.9 --seeds $seeds
  done
done
# 2. the sparse-to-sparse baselines under their references' rules (issue #20), 3 seeds
for arch in biggan sngan; do
  step --arch $arch --methods set,rigl,adapt --sg 0.95,0.9 --seeds $THREE
done
# 3. the decisive rows at twice the preset's length: does the ranking depend on the training budget?
for arch in biggan sngan; do
  step --arch $arch --methods dense,static,stugan --sg 0.95,0.9 --steps 3000 --seeds $THREE
done
# 4. every other row, 3 seeds
for arch in biggan sngan; do
  step --arch $arch --methods pf,small-dense --sg 0.95,0.9 --seeds $THREE
  for policy in mean zero; do  # optimizer-state policy ablation (default: dense)
    step --arch $arch --methods stugan --sg 0.95 --opt-state $policy --seeds $THREE
  done
done
for arch in biggan sngan; do  # 7 rounds each: seeds 0 and 1
  step --arch $arch --methods gan-tickets --sg 0.8 --seeds 0,1
done
# 5. the confirmatory study STU-GAN vs Static, seeds 10-33 (declared in studies/stugan-vs-static.toml)
bash reports/small/studies/stugan-vs-static.sh
# 6. ADAPT and its SDST baselines at one sparse scope, 3 seeds
bash reports/small/baselines.sh
sparsebench report --store $S --preset small --out reports/small --no-samples --study reports/small/studies/stugan-vs-static.toml

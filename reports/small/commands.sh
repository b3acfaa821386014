#!/bin/bash
# The grid behind reports/small, in the order it runs. Cells already done are skipped and stopped
# runs resume, so this script continues where it stopped, on this machine or (from the committed
# snapshot) on another. Run from the repository root: bash reports/small/commands.sh
export PATH="$PWD/.venv/bin:$PATH"  # the dev venv, where there is one
S=reports/small/store/results.db
bash reports/small/snapshot.sh restore
R="sparsebench run --preset small --sd 0.5 --seeds 0,1,2 --jobs 2 --no-progress --store $S"
step() { $R "$@"; bash reports/small/snapshot.sh; }  # a failed or diverged cell does not stop the grid
# BigGAN first (done first), then the rows of the later issues on BigGAN, then SNGAN, then the rest.
grid_table1() {
  step --arch $1 --methods dense,static,stugan --sg 0.95,0.9
  step --arch $1 --methods pf,small-dense --sg 0.95,0.9
  step --arch $1 --methods dense --steps 3000               # convergence: the dense GAN at twice the steps
}
grid_table1 biggan
step --arch biggan --methods static,stugan --sg 0.95 --kernels sparseprop
step --arch biggan --methods rigl,set,adapt --sg 0.95
for policy in mean zero; do                                 # optimizer-state policy ablation (default: dense)
  step --arch biggan --methods stugan --sg 0.95 --opt-state $policy
done
grid_table1 sngan
for arch in biggan sngan; do                                # 7 rounds each (~35 min a run): seeds 0 and 1
  step --arch $arch --methods gan-tickets --sg 0.8 --seeds 0,1
done
for policy in mean zero; do
  step --arch sngan --methods stugan --sg 0.95 --opt-state $policy
done
step --arch biggan --methods rigl,set,adapt --sg 0.9
step --arch sngan --methods rigl,set,adapt --sg 0.95,0.9
step --arch sngan --methods static,stugan --sg 0.95 --kernels sparseprop
sparsebench report --store $S --preset small --out reports/small --no-samples

#!/bin/bash
# The checks of a lent GPU (benchmarks/gpu_check.py), in two steps.
#   Here, with pip and the package registries, from the repository root:
#     bash benchmarks/gpu_check.sh wheels
#   builds .whl/ (git ignores it): sparsebench itself and the pure-Python packages a GPU image may lack.
#   There, on the GPU machine, from the repository root with .whl beside it:
#     bash benchmarks/gpu_check.sh run [OUT]
#   installs the wheels into /tmp/site (no network needed), runs the resume, compile and syncs sections, then
#   the throughput benchmark for what time is left of 9 minutes, each streamed into OUT (default reports/gpu).
set -o pipefail
if [ "$1" = wheels ]; then
  rm -rf .whl && mkdir -p .whl
  # pure Python each (fvcore and iopath are sdists only, built here into wheels)
  python3 -m pip wheel -q --no-deps -w .whl . torch-fidelity==0.4.0 fvcore==0.1.5.post20221221 iopath==0.1.10 \
    yacs==0.1.8 termcolor==3.3.0 || exit 1
  ls .whl
  exit 0
fi
[ "$1" = run ] || { echo "usage: bash benchmarks/gpu_check.sh wheels | run [OUT]" >&2; exit 2; }
OUT_DIR=${2:-reports/gpu}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
started=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
nvidia-smi 2>&1 | head -15 > "$OUT_DIR/nvidia-smi.txt"
python3 benchmarks/gpu_check.py --device cuda --sections device,resume,compile,syncs --out "$OUT_DIR" \
  --work /tmp/gpu-check 2>&1 | tee "$OUT_DIR/check.log"
rc=$?
left=$((540 - $(date +%s) + started))
python3 benchmarks/gpu_throughput.py --device cuda 2>&1 | timeout $((left > 60 ? left : 60)) tee "$OUT_DIR/throughput.txt"
exit $rc

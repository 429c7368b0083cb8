#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one go: the GPU tests, the RoPE kernel against its bounds and rivals, and
# the training step's MFU (eager and compiled, then the compile with CUDA graphs in a process of its own, last, so
# that if it runs out of time nothing else is lost). Needs one CUDA GPU and the packages the project uses
# (transformers for the rivals).
#
#     [TRAIN_BATCH=256] [BUDGET_SECONDS=900] bash benchmarks/gpu_checks.sh [OUT_DIR]    # default OUT_DIR runs/gpu
#
# Each part writes OUT_DIR/<part>.txt; the CUDA-graphs part gets whatever is left of BUDGET_SECONDS.
set -uo pipefail
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/device.txt"
$python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)" | tee -a "$out/device.txt"
status=0
run() {  # run NAME SECONDS COMMAND...: the command's output to OUT/NAME.txt, with its time and exit status
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  timeout "$seconds" "$@" > "$out/$name.txt" 2>&1 || { echo "exit $? (limit ${seconds} s)" >> "$out/$name.txt"; status=1; }
  echo "=== $name: $((SECONDS - start)) s"
  grep -v "^W1\|^V1\|^I1\|Graph break\|^ *File\|^ *\^" "$out/$name.txt" | tail -60
}
run tests 60 $python -m pytest -q -m gpu -p no:cacheprovider tests/test_fast_rope.py
run rope 120 $python benchmarks/bench_rope_gpu.py --rounds 3
# the whole-model compile took 136 s, 196 s and over 170 s on three fresh H200 machines
run train 330 $python benchmarks/bench_gpu_train.py --batch "${TRAIN_BATCH:-256}" --modes eager compiled
left=$(( ${BUDGET_SECONDS:-900} - SECONDS ))
run train-cudagraphs $(( left > 30 ? left : 30 )) $python benchmarks/bench_gpu_train.py --batch "${TRAIN_BATCH:-256}" \
  --modes eager cudagraphs
exit $status

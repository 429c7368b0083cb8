#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one go: the RoPE kernel against its bounds and rivals, the training
# step's MFU, and the GPU tests. Needs one CUDA GPU and the packages the project uses (transformers for the rivals).
#
#     [TRAIN_BATCH=256] bash benchmarks/gpu_checks.sh [OUT_DIR]    # default runs/gpu; each part also writes a file there
set -uo pipefail
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/device.txt"
$python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)" | tee -a "$out/device.txt"
status=0
timeout 240 $python benchmarks/bench_rope_gpu.py > "$out/rope.txt" 2>&1 || status=1
timeout 330 $python benchmarks/bench_gpu_train.py --batch "${TRAIN_BATCH:-256}" > "$out/train.txt" 2>&1 || status=1
timeout 120 $python -m pytest -q -m gpu -p no:cacheprovider tests/test_fast_rope.py > "$out/tests.txt" 2>&1 || status=1
for part in rope train tests; do echo "=== $part"; grep -v "^W1\|^V1\|^I1\|Graph break\|^ *File\|^ *\^" "$out/$part.txt" | tail -45; done
exit $status

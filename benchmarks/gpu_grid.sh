#!/usr/bin/env bash
# The GPU ablation grid on one H200 in one call (docs/performance.md, "Many runs at once"): the gpu preset of
# configs/ablation/shapes.yaml (every encoder under interleaved M-RoPE and every scheme under 2D RoPE, 3 seeds each,
# each arm's seeds stacked into one set of weights, 11 arms at once), then the learning curve of the reference arm
# from the step checkpoints the grid keeps. Needs one CUDA GPU; writes results, logs and markers to OUT_DIR.
#
#     [GRID_SECONDS=560] [MAX_STEPS=N] bash benchmarks/gpu_grid.sh [OUT_DIR] [RUNS_DIR]     # defaults runs/gpu-grid
#     STAGE=smoke bash benchmarks/gpu_grid.sh [OUT_DIR]     # 1-2 min: the engine on CUDA, eager and compiled
#
# ESTIMATES, not measurements (no GPU has run this yet): the grid about 8-10 min (compile 1-2 min per arm, 11 at
# once; training about 5 min; scoring about 1 min), the curve under 1 min. The grid is resumable: the same command
# continues an interrupted one (finished runs are skipped, a stopped one resumes from its last.ckpt).
set -uo pipefail
out=${1:-runs/gpu-grid}
runs=${2:-runs/gpu-grid-runs}
mkdir -p "$out" "$runs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"
$python -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
  | tee -a "$out/device.txt"
nproc | sed 's/^/host cores: /' | tee -a "$out/device.txt"
status=0
run() {  # run NAME SECONDS COMMAND...: the output to OUT/NAME.txt, with its time and exit status
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  timeout "$seconds" "$@" > "$out/$name.txt" 2>&1 || { echo "exit $? (limit ${seconds} s)" >> "$out/$name.txt"; status=1; }
  echo "=== $name: $((SECONDS - start)) s" | tee -a "$out/$name.txt"
  grep -v "^W1\|^I1\|^V1\|Graph break\|^ *File\|^ *\^" "$out/$name.txt" | tail -40
}
if [ "${STAGE:-grid}" = smoke ]; then
  common=(-- fit --config configs/debug.yaml --trainer.accelerator=gpu --trainer.precision=bf16-mixed
          --trainer.max_steps=60 --trainer.log_every_n_steps=20 --data.batch_size=256 --data.shapes.n_train=15360)
  run smoke-eager 120 $python -m mmrope train stacked --run 0="$runs/smoke/e0" --run 1="$runs/smoke/e1" \
    --run 2="$runs/smoke/e2" --renderer torch --compile none "${common[@]}"
  run smoke-compiled 300 $python -m mmrope train stacked --run 0="$runs/smoke/c0" --run 1="$runs/smoke/c1" \
    --run 2="$runs/smoke/c2" --renderer torch --compile reduce-overhead "${common[@]}"
  exit $status
fi
run grid "${GRID_SECONDS:-560}" $python -m mmrope ablate --config configs/ablation/shapes.yaml --preset gpu \
  --out "$runs/ablation" ${MAX_STEPS:+--max-steps "$MAX_STEPS"}
arm="$runs/ablation/rope2d-mrope_interleaved"
run curve 120 $python benchmarks/learning_curve.py "$arm/seed0" "$arm/seed1" "$arm/seed2" \
  --data configs/shapes_gpu.yaml --n 200 --device cuda
# what comes back: the tables and plots, every run's marker, arm.json and loss log, each arm's trainer log
(cd "$runs/ablation" && find . \( -name "results.*" -o -name "*.png" -o -name "eval.json" -o -name "arm.json" \
  -o -name "metrics.csv" -o -name "*.log" \) -print0 | tar --null -cf - -T - | (mkdir -p "$out/ablation" && cd "$out/ablation" && tar -xf -))
exit $status

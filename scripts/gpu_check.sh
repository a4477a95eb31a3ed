#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (at most 8 minutes on one GPU, each step under a limit):
#   1. nvidia-smi and the device torch sees;
#   2. pytest -m gpu: trainer=gpu in fp32 and bf16-mixed, images on the GPU in channels-last with
#      compile=true, and trainer=ddp when two GPUs are visible (tests/test_gpu.py);
#   3. the vision throughput benchmark (ResNet-32x4 -> ResNet-8x4, bf16, channels-last, data on the
#      device), without and with compile=true (scripts/bench_vision.py): KD / student-alone images/s;
#   4. the per-step benchmark on CUDA (scripts/bench_step.py): distill against hand-written loops;
#   5. a short trainer=ddp job of distill-train on one device;
#   6. a short distill-lm run on CUDA.
# The figures (the benchmarks' tables and ratios, each job's report table) go to $OUT/gpu_figures.md
# under the GPU's name; everything printed goes to $OUT/gpu_check.log ($OUT unset: logs/).
# Without a CUDA GPU it is a dry run: it lists the steps it skipped and exits 0.
#
#   scripts/gpu_check.sh
#
# Uses .venv when there is one; installs nothing but the project itself (pip install -e .[dev])
# when it is not importable. Exit status: 0 when every step passed (or, without a GPU, was skipped).
set -uo pipefail
cd "$(dirname "$0")/.."

out_dir="${OUT:-logs}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
log="$out_dir/gpu_check.log"
figures="$out_dir/gpu_figures.md"

# name | time limit (s) | command
STEPS=(
  "pytest -m gpu|205|python -m pytest -m gpu -q -p no:cacheprovider -rs --durations=10"
  "vision throughput, bf16, channels-last|45|python scripts/bench_vision.py --device cuda --batch 64 --steps 100 --precision bf16-mixed --channels-last"
  "vision throughput, bf16, channels-last, compile|70|python scripts/bench_vision.py --device cuda --batch 64 --steps 100 --precision bf16-mixed --channels-last --compile"
  "per-step cost on CUDA|60|python scripts/bench_step.py --device cuda --batches 64 1024 --rounds 1 --epochs 3"
  "trainer=ddp on one device|40|distill-train trainer=ddp trainer.devices=1 teacher.cnn.fit.epochs=5 student.fit.epochs=5 student.baseline.epochs=5 callbacks.progress_bar.refresh_rate=0 paths.root_dir=$out_dir/gpu_ddp"
  "distill-lm on CUDA|40|distill-lm trainer=gpu lm_teacher.fit.epochs=1 lm_student.fit.epochs=2 samples.count=0 callbacks.progress_bar.refresh_rate=0 paths.root_dir=$out_dir/gpu_lm"
)

step() {  # step NAME SECONDS COMMAND: run with a time limit; its table rows and ratios also go to the figures
  local name="$1" limit="$2" command="$3" start status
  echo
  echo "=== $name (limit ${limit}s): $command"
  { echo; echo "## $name"; echo; echo "\`$command\`"; echo; } >>"$figures"
  start=$SECONDS
  # shellcheck disable=SC2086
  timeout --kill-after=10 "$limit" $command 2>&1 | tee >(grep -E '^\||│|ratio|throughput|passed|failed' >>"$figures")
  status="${PIPESTATUS[0]}"
  echo "=== $name: exit $status after $((SECONDS - start))s"
  echo "exit $status after $((SECONDS - start)) s" >>"$figures"
  [ "$status" -eq 0 ] || failed+=("$name (exit $status)")
}

checks() {
  failed=()
  # shellcheck disable=SC1091
  [ -f .venv/bin/activate ] && . .venv/bin/activate
  export WANDB_MODE=offline WANDB_SILENT=true
  python -c "import distill, pytest" 2>/dev/null || pip install -q -e ".[dev]" || return 1

  echo "=== nvidia-smi"
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi not found"; fi
  echo "=== torch"
  python -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible')"
  gpu="$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")"
  if [ -z "$gpu" ]; then
    echo
    echo "gpu_check: no CUDA GPU visible, so this is a dry run; skipped:"
    for entry in "${STEPS[@]}"; do
      IFS='|' read -r name limit command <<<"$entry"
      echo "  skipped: $name (limit ${limit}s): $command"
    done
    return 0
  fi
  echo "# gpu_check on $gpu, $(date -u +%Y-%m-%d)" >"$figures"
  for entry in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<<"$entry"
    step "$name" "$limit" "$command"
  done

  echo
  echo "gpu_check: figures in $figures"
  if [ "${#failed[@]}" -eq 0 ]; then
    echo "gpu_check: every step passed"
  else
    printf 'gpu_check: failed: %s\n' "${failed[@]}"
    return 1
  fi
}

checks 2>&1 | tee "$log"
status="${PIPESTATUS[0]}"
echo "gpu_check: output in $log"
exit "$status"

#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (about 8 minutes on one GPU):
#   1. nvidia-smi and the device torch sees;
#   2. pytest -m gpu: trainer=gpu in fp32 and bf16-mixed, images on the GPU in channels-last with
#      compile=true, and trainer=ddp when two GPUs are visible (tests/test_gpu.py);
#   3. the vision speed benchmark with its GPU flags (scripts/bench_vision.py).
# scripts/bench_lm.py is not run: its speed part builds a CPU Trainer whatever the overrides say.
#
#   scripts/gpu_check.sh
#
# Uses .venv when there is one; installs nothing but the project itself (pip install -e .[dev])
# when it is not importable. Everything printed also goes to $OUT/gpu_check.log ($OUT unset:
# logs/gpu_check.log). Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

out_dir="${OUT:-logs}"
mkdir -p "$out_dir"
log="$out_dir/gpu_check.log"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, print its time and status
  local name="$1" limit="$2" start status
  shift 2
  echo
  echo "=== $name (limit ${limit}s): $*"
  start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  status=$?
  echo "=== $name: exit $status after $((SECONDS - start))s"
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
  python - <<'EOF' || return 1
import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA GPU visible: nothing to check")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i} {torch.cuda.get_device_name(i)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

  step "pytest -m gpu" 330 python -m pytest -m gpu -q -p no:cacheprovider -rs --durations=10
  step "bench_vision (GPU flags)" 120 python scripts/bench_vision.py --device cuda --batch 64 --steps 200 \
    --precision bf16-mixed --channels-last --compile
  echo
  echo "=== bench_lm: not run (its speed part trains on the CPU only)"

  echo
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

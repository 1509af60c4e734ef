#!/usr/bin/env bash
# What only a CUDA GPU can check: tests/cuda (training and generation in bf16, torchrun + NCCL)
# and the GPU benchmarks of docs/benchmarks.md. Runs under the machine's own python3 and torch;
# packages it lacks may sit in .whl/ as wheels (docs/gpu.md says which and how).
#   infra/gpu/check.sh [OUT_DIR]      (default: $OUT, else .fourm/gpu-check)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-.fourm/gpu-check}}
mkdir -p "$out"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fourm-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/fourm-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 FOURM_WANDB_MODE=disabled
export FOURM_HOME=${FOURM_HOME:-$(mktemp -d)}
status=0

step() {  # step NAME SECONDS CMD...: run under a time limit, keep its output in $out/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  [ "$rc" = 0 ] || { echo "!! $name exited $rc"; status=1; }
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"

step tests 200 $PY -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/cuda
bench="$PY -m fourm bench"
step train-step-b 90 $bench train-step --device cuda --config b --batch-size 256 --mode fp32 --mode bf16
step train-step-l 90 $bench train-step --device cuda --config l --batch-size 256 --mode bf16
step train-step-xl 120 $bench train-step --device cuda --config xl --batch-size 128 --mode bf16
step generate-s 60 $bench generate --device cuda --config bench-cpu-s
step generate-l 60 $bench generate --device cuda --config l
# last: torch.compile of the 48-layer model may take minutes
step train-step-l-compiled 180 $bench train-step --device cuda --config l --batch-size 256 --mode bf16 --compile
exit $status

#!/usr/bin/env bash
# GPU figures for issue 3 on a machine with CUDA and PyTorch 2.11 (no broker, no ClickHouse):
# builds the camembert-base-sized model, runs the half-precision parity test binary when given,
# then `bench pipeline` (raw + pipeline) on the demo model (fp32) and the base-sized model
# (fp16, bf16). Usage: scripts/bench_gpu.sh [--dry-run] VAXPULSE_BINARY [MODEL_PARITY_TEST_BINARY] [OUT_DIR]
# --dry-run: the same steps on CPU at toy sizes (the demo model stands in for the base-sized one,
# fp32 only, a few hundred tweets), to check the script and the binary before spending GPU time;
# it builds nothing and finishes in about a minute.
set -euo pipefail
DRY=0
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; fi
BIN=${1:?path to the vaxpulse binary}
PARITY=${2:-}
OUT=${3:-bench-results/gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
MODELS=${MODELS:-/tmp/vaxpulse-models}
if [ "$DRY" = 1 ]; then
  echo "bench_gpu: dry run on CPU at toy sizes (results in $OUT)"
  mkdir -p "$MODELS/camembert-base-random"
  [ -e "$MODELS/camembert-base-random/1" ] || ln -s "$PWD/models/demo/1" "$MODELS/camembert-base-random/1"
  DEVICE=cpu PRECISIONS=${PRECISIONS:-fp32} BASE_TWEETS=${BASE_TWEETS:-400} DEMO_TWEETS=400
  GRID=(--batch-sizes 8,32 --seq-lens 16,32 --cell-seconds 0.2 --paced-seconds 1)
else
  DEVICE=cuda DEMO_TWEETS=200000
  GRID=(--batch-sizes 64,256,512,1024 --seq-lens 32,64,128 --cell-seconds 1 --paced-seconds 5)
  if [ ! -f "$MODELS/camembert-base-random/1/model.pt" ]; then
    $PY scripts/make_demo_model.py --base-sized --out "$MODELS" > "$OUT/make_model.log" 2>&1
  fi
fi
if [ -n "$PARITY" ]; then
  "$PARITY" --nocapture 2>&1 | tee "$OUT/parity_test.log"
fi
export RUST_LOG=${RUST_LOG:-warn}
export VAXPULSE_MODEL_DEVICE=$DEVICE
export VAXPULSE_PIPELINE_TOKENIZER_THREADS=${TOKENIZER_THREADS:-8}
export VAXPULSE_PIPELINE_QUEUE_TWEETS=32768
export VAXPULSE_MODEL_INTRA_OP_THREADS=0
export VAXPULSE_BATCH_MAX_WAIT_MS=${MAX_WAIT_MS:-20}

[ -n "${SKIP_DEMO:-}" ] || VAXPULSE_MODEL_DIR=models/demo/1 VAXPULSE_MODEL_PRECISION=fp32 \
VAXPULSE_BATCH_MAX_BATCH_SIZE=512 VAXPULSE_BATCH_MAX_BATCH_TOKENS=32768 \
  "$BIN" -c config/local.toml bench pipeline "${GRID[@]}" \
  --tweets "$DEMO_TWEETS" --json "$OUT/demo-fp32.json" | tee "$OUT/demo-fp32.md"

for p in ${PRECISIONS:-fp16 bf16}; do
  VAXPULSE_MODEL_DIR="$MODELS/camembert-base-random/1" VAXPULSE_MODEL_PRECISION=$p \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=${BASE_BATCH:-512} VAXPULSE_BATCH_MAX_BATCH_TOKENS=${BASE_TOKENS:-32768} \
    "$BIN" -c config/local.toml bench pipeline "${GRID[@]}" \
    --tweets "${BASE_TWEETS:-200000}" --json "$OUT/base-$p.json" | tee "$OUT/base-$p.md"
done

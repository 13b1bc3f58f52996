#!/usr/bin/env bash
# The GPU figures of issue 12 in one run on a CUDA machine that has PyTorch 2.11 but no Rust
# toolchain and no registry: it builds nothing but the base-sized model (Python, seeded).
#   1. raw + pipeline, in process (`vaxpulse bench pipeline`): demo model fp32, base-sized fp16
#      and bf16 (PRECISIONS);
#   2. e2e on the GPU (`vaxpulse-harness bench e2e`): base-sized fp16, 1 replica, a backlog then
#      50 % load, through a local broker and ClickHouse;
#   3. CPU-replica scaling: 1, 2, 4, 8 replicas (SCALING) of the base-sized model in fp32 on the
#      CPU, 1 intra-op and 1 tokenizer thread each, backlog SCALE_PER_REPLICA x R.
# Steps 2 and 3 need a broker and ClickHouse: nisshi (NISSHI, else next to the binary, else on
# PATH; started here with memory storage) and ClickHouse (VAXPULSE_CLICKHOUSE_URL answering, else
# chdb importable, or installed from CHDB_WHEEL: scripts/clickhouse_server.py). Missing ones skip
# those steps, and OUT/summary.md says which and why.
#
# Usage: scripts/bench_gpu.sh [--dry-run] VAXPULSE_BINARY [MODEL_PARITY_TEST_BINARY] [OUT_DIR]
#   VAXPULSE_BINARY's folder must also hold vaxpulse-harness (scripts/gpu_bundle.sh packs both,
#   stripped, with nisshi, small enough to carry to the GPU machine).
# --dry-run: the same steps on CPU at toy sizes (the demo model stands in for the base-sized one,
# fp32 only, a few hundred tweets), to check the script and the binaries before spending GPU time.
set -euo pipefail
DRY=0
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; fi
BIN=$(realpath "${1:?path to the vaxpulse binary}")
PARITY=${2:-}
OUT=${3:-bench-results/gpu}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
HARNESS=$(dirname "$BIN")/vaxpulse-harness
[ -x "$HARNESS" ] || { echo "bench_gpu: $HARNESS missing (scripts/gpu_bundle.sh puts it beside vaxpulse)" >&2; exit 2; }
PY=${PYTHON:-python3}
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
SUMMARY=$OUT/summary.md
{
  echo "# bench_gpu $(date -u +%FT%TZ)$([ "$DRY" = 1 ] && echo ' (dry run, CPU, toy sizes)')"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi absent)"
  echo "cores: $(nproc)"
} >"$SUMMARY"
started=$(date +%s)
step() { echo "- $1 ($(($(date +%s) - started)) s)" | tee -a "$SUMMARY"; }

MODELS=${MODELS:-/tmp/vaxpulse-models}
BASE=$MODELS/camembert-base-random/1
if [ "$DRY" = 1 ]; then
  echo "bench_gpu: dry run on CPU at toy sizes (results in $OUT)"
  mkdir -p "$MODELS/camembert-base-random"
  [ -e "$BASE" ] || ln -s "$PWD/models/demo/1" "$BASE"
  DEVICE=cpu PRECISIONS=${PRECISIONS:-fp32} BASE_TWEETS=${BASE_TWEETS:-400} DEMO_TWEETS=400
  GRID=(--batch-sizes 8,32 --seq-lens 16,32 --cell-seconds 0.2 --paced-seconds 1)
  E2E_BACKLOG=${E2E_BACKLOG:-1000} SCALE_PER_REPLICA=${SCALE_PER_REPLICA:-200} SCALING=${SCALING:-1 2}
else
  DEVICE=cuda DEMO_TWEETS=200000
  GRID=(--batch-sizes 64,256,512,1024 --seq-lens 32,64,128 --cell-seconds 1 --paced-seconds 5)
  E2E_BACKLOG=${E2E_BACKLOG:-100000} SCALE_PER_REPLICA=${SCALE_PER_REPLICA:-150} SCALING=${SCALING:-1 2 4 8}
  if [ ! -f "$BASE/model.pt" ]; then
    $PY scripts/make_demo_model.py --base-sized --out "$MODELS" >"$OUT/make_model.log" 2>&1
  fi
  step "base-sized model ready"
fi
if [ -n "$PARITY" ]; then
  "$PARITY" --nocapture 2>&1 | tee "$OUT/parity_test.log"
  step "parity test binary run"
fi
export RUST_LOG=${RUST_LOG:-warn}
export VAXPULSE_MODEL_DEVICE=$DEVICE
export VAXPULSE_PIPELINE_TOKENIZER_THREADS=${TOKENIZER_THREADS:-8}
export VAXPULSE_PIPELINE_QUEUE_TWEETS=32768
export VAXPULSE_MODEL_INTRA_OP_THREADS=0
export VAXPULSE_BATCH_MAX_WAIT_MS=${MAX_WAIT_MS:-20}

# 1. raw + pipeline, in process.
if [ -z "${SKIP_DEMO:-}" ]; then
  VAXPULSE_MODEL_DIR=models/demo/1 VAXPULSE_MODEL_PRECISION=fp32 \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=512 VAXPULSE_BATCH_MAX_BATCH_TOKENS=32768 \
    "$BIN" -c config/local.toml bench pipeline "${GRID[@]}" \
    --tweets "$DEMO_TWEETS" --json "$OUT/demo-fp32.json" | tee "$OUT/demo-fp32.md"
  step "pipeline, demo model fp32: demo-fp32.md"
fi
for p in ${PRECISIONS:-fp16 bf16}; do
  VAXPULSE_MODEL_DIR=$BASE VAXPULSE_MODEL_PRECISION=$p \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=${BASE_BATCH:-512} VAXPULSE_BATCH_MAX_BATCH_TOKENS=${BASE_TOKENS:-32768} \
    "$BIN" -c config/local.toml bench pipeline "${GRID[@]}" \
    --tweets "${BASE_TWEETS:-200000}" --json "$OUT/base-$p.json" | tee "$OUT/base-$p.md"
  step "pipeline, base-sized $p: base-$p.md"
done

# 2 and 3 need a broker and ClickHouse (started here, stopped at exit).
rm -f /tmp/vaxpulse-broker/pid /tmp/vaxpulse-ch/pid
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NISSHI=${NISSHI:-$(dirname "$BIN")/nisshi}
[ -x "$NISSHI" ] || NISSHI=$(command -v nisshi || true)
missing=""
if [ -z "$NISSHI" ]; then missing="no nisshi binary (NISSHI, beside vaxpulse, or on PATH)"; fi
CH=${VAXPULSE_CLICKHOUSE_URL:-http://127.0.0.1:8123}
if [ -z "$missing" ] && ! curl -fsS "$CH/ping" >/dev/null 2>&1; then
  # chdb-core's wheel (173 MiB) is larger than one device call carries (64 MiB): bring it in
  # pieces to a kept folder, join them, and name the wheel in CHDB_WHEEL (pandas and pyarrow,
  # its needs, are in the GPU image).
  if ! $PY -c 'import chdb' 2>/dev/null && [ -n "${CHDB_WHEEL:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/chdb-site "$CHDB_WHEEL" &&
      export PYTHONPATH=/tmp/chdb-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if $PY -c 'import chdb' 2>/dev/null; then
    chp=$(free_port)
    mkdir -p /tmp/vaxpulse-ch && rm -f /tmp/vaxpulse-ch/pid
    (nohup $PY scripts/clickhouse_server.py /tmp/vaxpulse-ch "$chp" "$(free_port)" >"$OUT/clickhouse.log" 2>&1 &
      echo $! >/tmp/vaxpulse-ch/pid)
    trap 'kill "$(cat /tmp/vaxpulse-ch/pid)" 2>/dev/null || true' EXIT
    CH=http://127.0.0.1:$chp
    for _ in $(seq 1 120); do curl -fsS "$CH/ping" >/dev/null 2>&1 && break; sleep 1; done
    curl -fsS "$CH/ping" >/dev/null 2>&1 || missing="ClickHouse (chdb) did not start: $OUT/clickhouse.log"
  else
    missing="no ClickHouse: $CH does not answer, chdb-core is not importable and CHDB_WHEEL is not set"
  fi
fi
if [ -n "$missing" ]; then
  step "SKIPPED e2e and CPU scaling: $missing"
  echo "bench_gpu: done in $(($(date +%s) - started)) s; $SUMMARY"
  exit 0
fi
KP=$(free_port)
mkdir -p /tmp/vaxpulse-broker
# `cd; cmd &`, not `cd && cmd &`: $! must be nisshi itself for the trap to stop it.
(cd /tmp/vaxpulse-broker || exit 1; nohup "$NISSHI" broker --listener-url "tcp://127.0.0.1:$KP" \
  --advertised-listener-url "tcp://127.0.0.1:$KP" --storage-engine memory://nisshi/ \
  --group-initial-rebalance-delay 0s >"$OUT/nisshi.log" 2>&1 & echo $! >/tmp/vaxpulse-broker/pid)
trap 'for p in /tmp/vaxpulse-broker/pid /tmp/vaxpulse-ch/pid; do [ -f $p ] && kill "$(cat $p)" 2>/dev/null; done; true' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KP") 2>/dev/null && break; sleep 0.1; done
export VAXPULSE_KAFKA_BROKERS=127.0.0.1:$KP VAXPULSE_CLICKHOUSE_URL=$CH
step "broker (nisshi, memory storage) on $KP, ClickHouse $CH"

# 2. e2e on the accelerator (in the dry run: the CPU).
if [ "$DRY" = 1 ]; then E2E_PRECISION=fp32; else E2E_PRECISION=${E2E_PRECISION:-fp16}; fi
VAXPULSE_MODEL_DIR=$BASE VAXPULSE_MODEL_PRECISION=$E2E_PRECISION \
VAXPULSE_BATCH_MAX_BATCH_SIZE=${BASE_BATCH:-512} VAXPULSE_BATCH_MAX_BATCH_TOKENS=${BASE_TOKENS:-32768} \
  "$HARNESS" -c config/local.toml bench e2e --replicas 1 --backlogs "$E2E_BACKLOG" --loads 0.5 \
  --paced-seconds "${E2E_PACED_SECONDS:-10}" "${GRID[@]:0:6}" --json "$OUT/e2e-base-$E2E_PRECISION.json" |
  tee "$OUT/e2e-base-$E2E_PRECISION.md"
step "e2e, base-sized $E2E_PRECISION on $DEVICE: e2e-base-$E2E_PRECISION.md"

# 3. CPU replicas: the base-sized model in fp32, one core's worth each.
for r in $SCALING; do
  VAXPULSE_MODEL_DEVICE=cpu VAXPULSE_MODEL_DIR=$BASE VAXPULSE_MODEL_PRECISION=fp32 \
  VAXPULSE_MODEL_INTRA_OP_THREADS=1 VAXPULSE_PIPELINE_TOKENIZER_THREADS=1 \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=64 VAXPULSE_BATCH_MAX_BATCH_TOKENS=4096 \
    "$HARNESS" -c config/local.toml bench e2e --replicas "$r" --backlogs $((SCALE_PER_REPLICA * r)) \
    --loads --batch-sizes 8 --seq-lens 32 --cell-seconds 2 --json "$OUT/scaling-cpu-$r.json" \
    >"$OUT/scaling-cpu-$r.md"
  step "CPU scaling, $r replica(s): scaling-cpu-$r.md"
done
$PY - "$OUT" $SCALING <<'PY' | tee -a "$SUMMARY"
import json, sys
out, counts = sys.argv[1], sys.argv[2:]
rows, one = [], None
for r in counts:
    run = json.load(open(f"{out}/scaling-cpu-{r}.json"))["e2e"]["runs"][0]
    rate = run["tweets_per_second"]
    one = one or rate
    cpu = run.get("cpu") or {}
    rows.append(f"| {r} | {run['backlog']} | {rate:.1f} | {rate / one:.2f} | "
                f"{cpu.get('machine', float('nan')):.2f} / {cpu.get('workers', float('nan')):.2f} / "
                f"{cpu.get('other', float('nan')):.2f} |")
print("\n### CPU replicas, base-sized fp32, 1 intra-op thread each\n")
print("| replicas | backlog | steady tweets/s | × 1 replica | CPU cores: all / workers / broker+ClickHouse |")
print("|---|---|---|---|---|")
print("\n".join(rows))
PY
echo "bench_gpu: done in $(($(date +%s) - started)) s; $SUMMARY"

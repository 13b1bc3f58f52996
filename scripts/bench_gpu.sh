#!/usr/bin/env bash
# The GPU figures in one run on a CUDA machine that has PyTorch 2.11 but no Rust toolchain and no
# registry, within a time budget (BUDGET_S, default 480 s = 8 min, the device minutes a task gets):
#   1. raw + pipeline, in process (`vaxpulse bench pipeline`): demo model fp32, base-sized fp16
#      and bf16 (PRECISIONS);
#   2. e2e on the GPU (`vaxpulse-harness bench e2e`): base-sized fp16, 1 replica, a backlog then
#      50 % load, through a local broker and ClickHouse;
#   3. CPU-replica scaling: 1, 2, 4, 8 replicas (SCALING) of the base-sized model in fp32 on the
#      CPU, 1 intra-op and 1 tokenizer thread each, backlog SCALE_PER_REPLICA x R.
# Every step runs under `timeout` (its own limit, and never past the budget); a step that cannot
# run (no time left, no broker, no ClickHouse, an earlier step it needs failed) is written as
# "skipped, because ...", a failing one as "failed (exit N), see LOG"; the run goes on either
# way. OUT/summary.md ends with ONE table: every step, its status and its figures (tweets/s,
# × raw, padding share, p99, CPU-replica scaling). Steps 2 and 3 need a broker and ClickHouse:
# nisshi (NISSHI, else next to the binary, else on PATH; started here with memory storage) and
# ClickHouse (VAXPULSE_CLICKHOUSE_URL answering, else chdb importable, or installed from
# CHDB_WHEEL: scripts/clickhouse_server.py).
#
# Usage: scripts/bench_gpu.sh [--dry-run] VAXPULSE_BINARY [MODEL_PARITY_TEST_BINARY] [OUT_DIR]
#   VAXPULSE_BINARY's folder must also hold vaxpulse-harness (scripts/gpu_bundle.sh packs both,
#   stripped, with nisshi, small enough to carry to the GPU machine).
# --dry-run: the same steps on CPU at toy sizes (the demo model stands in for the base-sized one,
# fp32 only, a few hundred tweets), to check the script and the binaries before spending GPU time
# (scripts/test.sh runs it in CI).
set -uo pipefail
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
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
  { echo "bench_gpu: $PY cannot import torch" >&2; exit 2; }
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
SUMMARY=$OUT/summary.md
STEPS=$OUT/steps.tsv
: >"$STEPS"
{
  echo "# bench_gpu $(date -u +%FT%TZ)$([ "$DRY" = 1 ] && echo ' (dry run, CPU, toy sizes)')"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi absent)"
  echo "cores: $(nproc)"
  echo
} >"$SUMMARY"
started=$(date +%s)
BUDGET_S=${BUDGET_S:-480}
# Kept back for the summary and for stopping what was started.
RESERVE_S=10
left() { echo $((BUDGET_S - RESERVE_S - ($(date +%s) - started))); }
record() { # name status seconds json
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"
  echo "- $1: $2 (at $(($(date +%s) - started)) s)" | tee -a "$SUMMARY"
}
skip() { record "$1" "skipped, because $2" 0 ""; }
# run_step NAME NEEDS_S MAX_S JSON LOG CMD...: runs CMD under timeout when NEEDS_S seconds are
# left, for at most MAX_S and never past the budget; records how it ended.
run_step() {
  local name=$1 needs=$2 max=$3 json=$4 log=$5
  shift 5
  local l
  l=$(left)
  if [ "$l" -lt "$needs" ]; then
    skip "$name" "only ${l} s of the ${BUDGET_S}-s budget were left (it needs ~${needs} s)"
    return 1
  fi
  local limit=$((max < l ? max : l)) t0 rc
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  if [ "$rc" = 0 ]; then
    record "$name" ok "$took" "$json"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    record "$name" "stopped at its ${limit}-s limit, see $(basename "$log")" "$took" ""
  else
    record "$name" "failed (exit $rc), see $(basename "$log"): $(tail -n 1 "$log" | cut -c1-160)" "$took" ""
  fi
  return "$rc"
}

MODELS=${MODELS:-/tmp/vaxpulse-models}
BASE=$MODELS/camembert-base-random/1
if [ "$DRY" = 1 ]; then
  echo "bench_gpu: dry run on CPU at toy sizes (results in $OUT)"
  mkdir -p "$MODELS/camembert-base-random"
  [ -e "$BASE" ] || ln -s "$PWD/models/demo/1" "$BASE"
  DEVICE=cpu PRECISIONS=${PRECISIONS:-fp32} BASE_TWEETS=${BASE_TWEETS:-400} DEMO_TWEETS=400
  GRID=(--batch-sizes 8,32 --seq-lens 16,32 --cell-seconds 0.2 --paced-seconds 1)
  E2E_BACKLOG=${E2E_BACKLOG:-1000} SCALE_PER_REPLICA=${SCALE_PER_REPLICA:-200} SCALING=${SCALING:-1 2}
  record "base-sized model" "ok (the demo model stands in)" 0 ""
else
  DEVICE=cuda DEMO_TWEETS=200000
  GRID=(--batch-sizes 64,256,1024 --seq-lens 32,64,128 --cell-seconds 1 --paced-seconds 5)
  E2E_BACKLOG=${E2E_BACKLOG:-100000} SCALE_PER_REPLICA=${SCALE_PER_REPLICA:-150} SCALING=${SCALING:-1 2 4 8}
  if [ -f "$BASE/model.pt" ]; then
    record "base-sized model" "ok (already there)" 0 ""
  else
    run_step "base-sized model" 30 120 "" "$OUT/make_model.log" \
      $PY scripts/make_demo_model.py --base-sized --out "$MODELS"
  fi
fi
HAVE_BASE=0
[ -f "$BASE/model.pt" ] && HAVE_BASE=1
if [ -n "$PARITY" ]; then
  run_step "model parity test" 20 60 "" "$OUT/parity_test.log" "$PARITY" --nocapture
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
    run_step "pipeline, demo model fp32" 30 90 "$OUT/demo-fp32.json" "$OUT/demo-fp32.md" \
    "$BIN" -c config/local.toml bench pipeline "${GRID[@]}" --tweets "$DEMO_TWEETS" --json "$OUT/demo-fp32.json"
fi
for p in ${PRECISIONS:-fp16 bf16}; do
  if [ "$HAVE_BASE" = 0 ]; then skip "pipeline, base-sized $p" "the base-sized model is missing"; continue; fi
  VAXPULSE_MODEL_DIR=$BASE VAXPULSE_MODEL_PRECISION=$p \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=${BASE_BATCH:-512} VAXPULSE_BATCH_MAX_BATCH_TOKENS=${BASE_TOKENS:-32768} \
    run_step "pipeline, base-sized $p" 40 100 "$OUT/base-$p.json" "$OUT/base-$p.md" \
    "$BIN" -c config/local.toml bench pipeline "${GRID[@]}" --tweets "${BASE_TWEETS:-200000}" --json "$OUT/base-$p.json"
done

# 2 and 3 need a broker and ClickHouse (started here, stopped at exit).
rm -f /tmp/vaxpulse-broker/pid /tmp/vaxpulse-ch/pid
trap 'for p in /tmp/vaxpulse-broker/pid /tmp/vaxpulse-ch/pid; do [ -f $p ] && kill "$(cat $p)" 2>/dev/null; done; true' EXIT
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NISSHI=${NISSHI:-$(dirname "$BIN")/nisshi}
[ -x "$NISSHI" ] || NISSHI=$(command -v nisshi || true)
missing=""
[ -n "$NISSHI" ] || missing="there is no nisshi binary (NISSHI, beside vaxpulse, or on PATH)"
[ "$HAVE_BASE" = 1 ] || missing="the base-sized model is missing"
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
    CH=http://127.0.0.1:$chp
    for _ in $(seq 1 60); do curl -fsS "$CH/ping" >/dev/null 2>&1 && break; sleep 1; done
    curl -fsS "$CH/ping" >/dev/null 2>&1 || missing="ClickHouse (chdb) did not start within 60 s: clickhouse.log"
  else
    missing="there is no ClickHouse: $CH does not answer, chdb-core is not importable and CHDB_WHEEL is not set"
  fi
fi
if [ -z "$missing" ]; then
  KP=$(free_port)
  mkdir -p /tmp/vaxpulse-broker
  # `cd; cmd &`, not `cd && cmd &`: $! must be nisshi itself for the trap to stop it.
  (cd /tmp/vaxpulse-broker || exit 1; nohup "$NISSHI" broker --listener-url "tcp://127.0.0.1:$KP" \
    --advertised-listener-url "tcp://127.0.0.1:$KP" --storage-engine memory://nisshi/ \
    --group-initial-rebalance-delay 0s >"$OUT/nisshi.log" 2>&1 & echo $! >/tmp/vaxpulse-broker/pid)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KP") 2>/dev/null && break; sleep 0.1; done
  if (exec 3<>"/dev/tcp/127.0.0.1/$KP") 2>/dev/null; then
    export VAXPULSE_KAFKA_BROKERS=127.0.0.1:$KP VAXPULSE_CLICKHOUSE_URL=$CH
    record "broker and ClickHouse" "ok (nisshi, memory storage, on $KP; ClickHouse $CH)" 0 ""
  else
    missing="the broker did not listen within 10 s: nisshi.log"
  fi
fi

# 2. e2e on the accelerator (in the dry run: the CPU).
if [ "$DRY" = 1 ]; then E2E_PRECISION=fp32; else E2E_PRECISION=${E2E_PRECISION:-fp16}; fi
if [ -n "$missing" ]; then
  skip "e2e, base-sized $E2E_PRECISION on $DEVICE" "$missing"
else
  VAXPULSE_MODEL_DIR=$BASE VAXPULSE_MODEL_PRECISION=$E2E_PRECISION \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=${BASE_BATCH:-512} VAXPULSE_BATCH_MAX_BATCH_TOKENS=${BASE_TOKENS:-32768} \
    run_step "e2e, base-sized $E2E_PRECISION on $DEVICE" 60 150 "$OUT/e2e-base-$E2E_PRECISION.json" "$OUT/e2e-base-$E2E_PRECISION.md" \
    "$HARNESS" -c config/local.toml bench e2e --replicas 1 --backlogs "$E2E_BACKLOG" --loads 0.5 \
    --paced-seconds "${E2E_PACED_SECONDS:-10}" "${GRID[@]:0:6}" --json "$OUT/e2e-base-$E2E_PRECISION.json"
fi

# 3. CPU replicas: the base-sized model in fp32, one core's worth each.
for r in $SCALING; do
  if [ -n "$missing" ]; then skip "CPU scaling, $r replica(s)" "$missing"; continue; fi
  VAXPULSE_MODEL_DEVICE=cpu VAXPULSE_MODEL_DIR=$BASE VAXPULSE_MODEL_PRECISION=fp32 \
  VAXPULSE_MODEL_INTRA_OP_THREADS=1 VAXPULSE_PIPELINE_TOKENIZER_THREADS=1 \
  VAXPULSE_BATCH_MAX_BATCH_SIZE=64 VAXPULSE_BATCH_MAX_BATCH_TOKENS=4096 \
    run_step "CPU scaling, $r replica(s)" 30 90 "$OUT/scaling-cpu-$r.json" "$OUT/scaling-cpu-$r.md" \
    "$HARNESS" -c config/local.toml bench e2e --replicas "$r" --backlogs $((SCALE_PER_REPLICA * r)) \
    --loads --batch-sizes 8 --seq-lens 32 --cell-seconds 2 --json "$OUT/scaling-cpu-$r.json"
done

# The one table: every step, how it ended, and what it measured.
$PY - "$STEPS" <<'PY' | tee -a "$SUMMARY"
import json, sys

def load(path):
    try:
        return json.load(open(path)) if path else None
    except (OSError, ValueError):
        return None

def fmt(x, spec="{:,.0f}"):
    return "–" if x is None else spec.format(x)

print("\n| step | status | s | tweets/s | × raw best | padding | p99 ms | more |")
print("|---|---|---|---|---|---|---|---|")
one_replica = None
for line in open(sys.argv[1]):
    name, status, seconds, path = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
    doc = load(path)
    rate = ratio = padding = p99 = None
    more = ""
    if doc and doc.get("pipeline"):
        runs = doc["pipeline"]["runs"]
        backlog = [r for r in runs if r.get("offered_per_second") is None and r.get("length_bucketing", True)]
        paced = [r for r in runs if r.get("offered_per_second") is not None and r.get("latency")]
        if backlog:
            b = max(backlog, key=lambda r: r["texts_per_second"])
            rate, ratio, padding = b["texts_per_second"], b["ratio_to_raw"], b["padding_waste"]
        if paced:
            p99 = paced[0]["latency"]["p99_ms"]
        grid = doc["raw"]["grid"]
        if grid:
            top = max(grid, key=lambda c: c["tokens_per_second"])
            more = f"raw best {doc['raw']['best']['texts_per_second']:,.0f} texts/s; fixed shapes up to {top['tokens_per_second'] / 1e6:.2f} M tokens/s ({top['batch_size']} × {top['seq_len']})"
    elif doc and doc.get("e2e"):
        runs = doc["e2e"]["runs"]
        backlog = [r for r in runs if r.get("backlog") is not None]
        paced = [r for r in runs if r.get("offered_per_second") is not None and r.get("latency")]
        if backlog:
            rate, ratio = backlog[0]["tweets_per_second"], backlog[0]["ratio_to_raw"]
            cpu = backlog[0].get("cpu") or {}
            if name.startswith("CPU scaling"):
                one_replica = one_replica or rate
                more = f"× 1 replica {rate / one_replica:.2f}; cores all / workers / other {cpu.get('machine', float('nan')):.2f} / {cpu.get('workers', float('nan')):.2f} / {cpu.get('other', float('nan')):.2f}"
            else:
                more = f"backlog {backlog[0]['backlog']:,}; peak RSS {fmt(backlog[0].get('peak_worker_rss_mib'))} MiB"
        if paced:
            p99 = paced[0]["latency"]["p99_ms"]
            more += f"; paced at {paced[0]['offered_per_second']:,.0f}/s"
    print(f"| {name} | {status} | {seconds} | {fmt(rate)} | {fmt(ratio, '{:.2f}')} | "
          f"{fmt(None if padding is None else 100 * padding, '{:.1f} %')} | {fmt(p99)} | {more} |")
PY
echo "bench_gpu: done in $(($(date +%s) - started)) s (budget ${BUDGET_S} s); $SUMMARY"

#!/usr/bin/env bash
# The seed's architecture as a baseline: TorchServe serves the same TorchScript model with its own
# batching (batch_size / max_batch_delay), a Kafka -> HTTP bridge feeds it from the same topic,
# and `vaxpulse-harness bench e2e` measures it and then vaxpulse itself, same machine, same run.
#
# Two phases. Sweep: every TorchServe setting in TS_SWEEP and every vaxpulse setting in VX_SWEEP
# (for the fp32 model and, when INT8_MODEL_DIR is set, the int8 one) runs a SWEEP_BACKLOG alone;
# the best of each system by steady backlog throughput goes on. Final: each best runs the full
# BACKLOG, then paced LOADS (fractions of its own capacity) for PACED_SECONDS each.
#
# Usage: scripts/bench_torchserve.sh [MODEL_DIR]    (default: a base-sized model, built if missing)
# Env: BACKLOG (2000), LOADS (0.5,0.9), PACED_SECONDS (20), SWEEP_BACKLOG (300),
#      TS_SWEEP ("2x1:8:20 2x1:8:100 2x1:32:20 2x1:32:100 1x2:8:100": workers x threads per
#      worker : batch_size : max_batch_delay_ms), VX_SWEEP ("2x1 1x2", replicas x intra-op threads),
#      INT8_MODEL_DIR (unset: fp32 only), FINAL (0: the sweep only), OUT (bench-results/torchserve),
#      VAXPULSE_KAFKA_BROKERS (the broker; scripts/services.sh start bench-broker gives 9094).
# Writes OUT/sweep.md (every sweep run) and OUT/final-*.md/json; prints both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ -f .state/env.sh ] || scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
python -c "import ts, model_archiver, confluent_kafka" 2>/dev/null ||
  pip install -q torchserve==0.12.0 torch-model-archiver==0.12.0 confluent-kafka==2.16.1
command -v java >/dev/null || {
  echo "bench_torchserve: TorchServe needs a Java 17 runtime: apt-get install openjdk-17-jre-headless" >&2
  exit 1
}
MODEL=${1:-}
if [ -z "$MODEL" ]; then
  MODEL=/tmp/vaxpulse-models/camembert-base-random/1
  [ -f "$MODEL/model.pt" ] ||
    python scripts/make_demo_model.py --base-sized --out /tmp/vaxpulse-models
fi
MODEL=$(cd "$MODEL" && pwd)
BACKLOG=${BACKLOG:-2000} LOADS=${LOADS:-0.5,0.9} PACED_SECONDS=${PACED_SECONDS:-20}
SWEEP_BACKLOG=${SWEEP_BACKLOG:-300}
TS_SWEEP=${TS_SWEEP:-2x1:8:20 2x1:8:100 2x1:32:20 2x1:32:100 1x2:8:100} VX_SWEEP=${VX_SWEEP:-2x1 1x2}
OUT=${OUT:-bench-results/torchserve}
TS=$ROOT/.state/torchserve
rm -rf "$TS" && mkdir -p "$TS/store" "$OUT"
scripts/services.sh start
cargo build --release --quiet --bins --workspace
BIN=target/release/vaxpulse-harness
# The raw grid of the harness's own process: small in the sweep, the comparison's in the final.
SWEEP_GRID=(--batch-sizes 8 --seq-lens 32 --cell-seconds 2)
FINAL_GRID=(--batch-sizes 1,8,32 --seq-lens 32,48 --cell-seconds 3)

torch-model-archiver --model-name vax --version 1.0 --serialized-file "$MODEL/model.pt" \
  --handler scripts/torchserve/handler.py \
  --extra-files "$MODEL/tokenizer.json,$MODEL/manifest.json" --export-path "$TS/store" --force

ts_stop() {
  torchserve --stop >/dev/null 2>&1 || true
  [ -f "$TS/pid" ] && kill "$(cat "$TS/pid")" 2>/dev/null || true
  for _ in $(seq 1 60); do curl -fsS http://127.0.0.1:8085/ping >/dev/null 2>&1 || return 0; sleep 1; done
}
trap ts_stop EXIT

# Starts TorchServe with setting WxT:BATCH:DELAY. Not inside a pipeline: the pipeline's subshell
# would wait for TorchServe, its child, before the pipe could close.
ts_start() {
  local w=${1%%x*} rest=${1#*x}
  local t=${rest%%:*} b d
  b=${rest#*:} d=${b#*:} b=${b%%:*}
  ts_stop
  cat >"$TS/config.properties" <<CFG
inference_address=http://127.0.0.1:8085
management_address=http://127.0.0.1:8086
metrics_address=http://127.0.0.1:8087
model_store=$TS/store
disable_token_authorization=true
install_py_dep_per_model=false
models={"vax": {"1.0": {"defaultVersion": true, "marName": "vax.mar", "minWorkers": $w, "maxWorkers": $w, "batchSize": $b, "maxBatchDelay": $d, "responseTimeout": 300}}}
CFG
  echo "bench_torchserve: starting TorchServe ($w workers x $t threads, batch $b, delay $d ms)"
  (cd "$TS" && VAXPULSE_TS_THREADS=$t nohup torchserve --start --foreground --ncs --disable-token-auth \
    --ts-config "$TS/config.properties" --model-store "$TS/store" --models vax=vax.mar >"$TS/torchserve.log" 2>&1 &
    echo $! >"$TS/pid")
  for _ in $(seq 1 180); do
    curl -fsS -X POST http://127.0.0.1:8085/predictions/vax -H 'Content-Type: application/json' \
      -d '{"text": "le vaccin"}' >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "TorchServe did not come up; see $TS/torchserve.log" >&2
  exit 1
}

steady() { # json -> the first run's steady tweets/s
  python -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["e2e"]["runs"][0]["tweets_per_second"], 2))' "$1"
}

ts_run() { # setting backlog json loads... (no loads: backlog only); TorchServe already started
  local s=$1 backlog=$2 json=$3
  shift 3
  # The harness's raw run (the ratios' denominator) uses the same model at one thread.
  VAXPULSE_MODEL_DIR=$MODEL VAXPULSE_MODEL_INTRA_OP_THREADS=1 "$BIN" bench e2e --system "torchserve fp32 ($s: workers x threads : batch : delay ms)" \
    --worker-cmd "python $ROOT/scripts/torchserve/bridge.py" --replicas 1 \
    --backlogs "$backlog" --paced-seconds "$PACED_SECONDS" "$@" --json "$json"
}

vx_run() { # label model replicas threads backlog json loads...
  local label=$1 model=$2 r=$3 t=$4 backlog=$5 json=$6
  shift 6
  VAXPULSE_MODEL_DIR=$model VAXPULSE_MODEL_INTRA_OP_THREADS=$t \
    "$BIN" bench e2e --system "vaxpulse $label ($r replicas x $t threads)" --replicas "$r" \
    --backlogs "$backlog" --paced-seconds "$PACED_SECONDS" "$@" --json "$json"
}

SWEEP=$OUT/sweep.md
printf '| system | setting | backlog | steady tweets/s |\n|---|---|---|---|\n' >"$SWEEP"
best_ts="" best_ts_rate=0
for s in $TS_SWEEP; do
  json=$OUT/sweep-ts-${s//:/-}.json
  ts_start "$s"
  ts_run "$s" "$SWEEP_BACKLOG" "$json" --loads "${SWEEP_GRID[@]}" >"${json%.json}.md"
  rate=$(steady "$json")
  echo "| torchserve fp32 | $s (workers x threads : batch : delay ms) | $SWEEP_BACKLOG | $rate |" | tee -a "$SWEEP"
  if python -c "import sys; sys.exit(0 if $rate > $best_ts_rate else 1)"; then best_ts=$s best_ts_rate=$rate; fi
done
ts_stop

declare -A BEST
for variant in fp32 ${INT8_MODEL_DIR:+int8}; do
  model=$MODEL
  [ "$variant" = int8 ] && model=$(cd "$INT8_MODEL_DIR" && pwd)
  best="" best_rate=0
  for s in $VX_SWEEP; do
    r=${s%%x*} t=${s##*x} json=$OUT/sweep-vx-$variant-$s.json
    vx_run "$variant" "$model" "$r" "$t" "$SWEEP_BACKLOG" "$json" --loads "${SWEEP_GRID[@]}" \
      >"$OUT/sweep-vx-$variant-$s.md"
    rate=$(steady "$json")
    echo "| vaxpulse $variant | $r replicas x $t threads | $SWEEP_BACKLOG | $rate |" | tee -a "$SWEEP"
    if python -c "import sys; sys.exit(0 if $rate > $best_rate else 1)"; then best=$s best_rate=$rate; fi
  done
  BEST[$variant]=$best
done

if [ "${FINAL:-1}" = 0 ]; then cat "$SWEEP"; exit 0; fi
echo "bench_torchserve: final runs — torchserve $best_ts, vaxpulse fp32 ${BEST[fp32]}${INT8_MODEL_DIR:+, int8 ${BEST[int8]}}"
ts_start "$best_ts"
ts_run "$best_ts" "$BACKLOG" "$OUT/final-torchserve.json" --loads "$LOADS" "${FINAL_GRID[@]}" |
  tee "$OUT/final-torchserve.md"
ts_stop
for variant in fp32 ${INT8_MODEL_DIR:+int8}; do
  model=$MODEL
  [ "$variant" = int8 ] && model=$(cd "$INT8_MODEL_DIR" && pwd)
  r=${BEST[$variant]%%x*} t=${BEST[$variant]##*x}
  vx_run "$variant" "$model" "$r" "$t" "$BACKLOG" "$OUT/final-vaxpulse-$variant.json" \
    --loads "$LOADS" "${FINAL_GRID[@]}" | tee "$OUT/final-vaxpulse-$variant.md"
done
cat "$SWEEP"

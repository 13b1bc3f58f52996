#!/usr/bin/env bash
# The seed's architecture as a baseline: TorchServe serves the same TorchScript model with its own
# batching (batch_size / max_batch_delay), a Kafka -> HTTP bridge feeds it from the same topic,
# and `vaxpulse-harness bench e2e` measures it and then vaxpulse itself, same machine, same run.
#
# Usage: scripts/bench_torchserve.sh [MODEL_DIR]    (default: a base-sized model, built if missing)
# Env: BACKLOG (default 600), LOADS (0.5), PACED_SECONDS (20), TS_BATCH_SIZE (32),
#      TS_MAX_BATCH_DELAY_MS (20), WORKERS (TorchServe workers = vaxpulse replicas, default 2,
#      one intra-op thread each), VAXPULSE_REPLICAS (replica counts to run, "$WORKERS 1"),
#      OUT (bench-results/torchserve).
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
BACKLOG=${BACKLOG:-600} LOADS=${LOADS:-0.5} PACED_SECONDS=${PACED_SECONDS:-20}
WORKERS=${WORKERS:-2} OUT=${OUT:-bench-results/torchserve}
TS_BATCH_SIZE=${TS_BATCH_SIZE:-32} TS_MAX_BATCH_DELAY_MS=${TS_MAX_BATCH_DELAY_MS:-20}
TS=$ROOT/.state/torchserve
rm -rf "$TS" && mkdir -p "$TS/store" "$OUT"
scripts/services.sh start

torch-model-archiver --model-name vax --version 1.0 --serialized-file "$MODEL/model.pt" \
  --handler scripts/torchserve/handler.py \
  --extra-files "$MODEL/tokenizer.json,$MODEL/manifest.json" --export-path "$TS/store" --force
cat > "$TS/config.properties" <<CFG
inference_address=http://127.0.0.1:8085
management_address=http://127.0.0.1:8086
metrics_address=http://127.0.0.1:8087
model_store=$TS/store
disable_token_authorization=true
install_py_dep_per_model=false
models={"vax": {"1.0": {"defaultVersion": true, "marName": "vax.mar", "minWorkers": $WORKERS, "maxWorkers": $WORKERS, "batchSize": $TS_BATCH_SIZE, "maxBatchDelay": $TS_MAX_BATCH_DELAY_MS, "responseTimeout": 300}}}
CFG
echo "bench_torchserve: starting TorchServe ($WORKERS workers, batch $TS_BATCH_SIZE, delay $TS_MAX_BATCH_DELAY_MS ms)"
(cd "$TS" && VAXPULSE_TS_THREADS=1 nohup torchserve --start --foreground --ncs --disable-token-auth \
  --ts-config "$TS/config.properties" --model-store "$TS/store" --models vax=vax.mar >"$TS/torchserve.log" 2>&1 &
  echo $! >"$TS/pid")
trap 'torchserve --stop >/dev/null 2>&1 || kill "$(cat "$TS/pid")" 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -fsS -X POST http://127.0.0.1:8085/predictions/vax -H 'Content-Type: application/json' \
    -d '{"text": "le vaccin"}' >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS -X POST http://127.0.0.1:8085/predictions/vax -H 'Content-Type: application/json' \
  -d '{"text": "le vaccin"}' || { echo "TorchServe did not come up; see $TS/torchserve.log" >&2; exit 1; }
echo

cargo build --release --quiet --bins --workspace
BIN=target/release/vaxpulse-harness
export VAXPULSE_MODEL_DIR=$MODEL VAXPULSE_MODEL_INTRA_OP_THREADS=1
"$BIN" bench e2e --system "torchserve (batch $TS_BATCH_SIZE, delay $TS_MAX_BATCH_DELAY_MS ms, $WORKERS workers)" \
  --worker-cmd "python $ROOT/scripts/torchserve/bridge.py" --replicas 1 \
  --backlogs "$BACKLOG" --loads "$LOADS" --paced-seconds "$PACED_SECONDS" \
  --batch-sizes 1,8,32 --seq-lens 32,48 --cell-seconds 3 --json "$OUT/torchserve.json" | tee "$OUT/torchserve.md"
# vaxpulse with as many replicas as TorchServe has workers (the comparison), and with one
# replica (its ratio to the raw model at one thread is the e2e-vs-raw target).
for r in ${VAXPULSE_REPLICAS:-$WORKERS 1}; do
  "$BIN" bench e2e --system vaxpulse --replicas "$r" \
    --backlogs "$BACKLOG" --loads "$LOADS" --paced-seconds "$PACED_SECONDS" \
    --batch-sizes 1,8,32 --seq-lens 32,48 --cell-seconds 3 --json "$OUT/vaxpulse-$r.json" | tee "$OUT/vaxpulse-$r.md"
done

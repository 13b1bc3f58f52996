#!/usr/bin/env bash
# The demo: set-up if needed, services, fresh topics (4 partitions), 20 000 synthetic tweets as a
# backlog, 2 worker replicas, wait until every tweet is in ClickHouse, print the report and the
# throughput next to the raw model's, stop the replicas.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${DEMO_TWEETS:-20000}
REPLICAS=${DEMO_REPLICAS:-2}
scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
scripts/services.sh start
echo "demo: building vaxpulse (release)"
cargo build --release --quiet
B=target/release/vaxpulse
RUN=demo_$(date +%Y%m%d_%H%M%S)
export VAXPULSE_CONFIG=config/local.toml
export VAXPULSE_KAFKA_INPUT_TOPIC=$RUN.raw VAXPULSE_KAFKA_OUTPUT_TOPIC=$RUN.classified \
  VAXPULSE_KAFKA_DLQ_TOPIC=$RUN.dlq VAXPULSE_KAFKA_GROUP_ID=$RUN VAXPULSE_CLICKHOUSE_DATABASE=$RUN
CH=${VAXPULSE_CLICKHOUSE_URL:-http://127.0.0.1:8123}
echo "demo: run $RUN — topics and schema"
$B topics --partitions 4
$B schema
echo "demo: producing $N synthetic tweets"
$B produce --synthetic "$N" --seed "$RANDOM"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start=$(date +%s.%N)
for i in $(seq 1 "$REPLICAS"); do
  VAXPULSE_METRICS_LISTEN=127.0.0.1:$((9463 + i)) VAXPULSE_MODEL_INTRA_OP_THREADS=1 RUST_LOG=warn \
    $B run >".state/logs/$RUN-replica$i.log" 2>&1 &
  pids+=($!)
done
echo "demo: $REPLICAS replicas started (metrics on 127.0.0.1:9464..); waiting for $N tweets in ClickHouse"
count=0
for _ in $(seq 1 1200); do
  count=$(curl -fsS "$CH" --data-binary "SELECT uniqExact(tweet_id) FROM $RUN.classified_tweets" 2>/dev/null || echo 0)
  [ "$count" -ge "$N" ] && break
  sleep 0.5
done
end=$(date +%s.%N)
[ "$count" -ge "$N" ] || { echo "demo: only $count of $N tweets arrived; see .state/logs/$RUN-replica*.log" >&2; exit 1; }
cleanup; pids=()
elapsed=$(python3 -c "print(f'{$end - $start:.1f}')")
rate=$(python3 -c "print(f'{$N / ($end - $start):.0f}')")
$B report
echo
echo "demo: $N tweets end to end in ${elapsed}s with $REPLICAS replicas (1 intra-op thread each): $rate tweets/s"
echo "demo: one replica's ceiling on this machine (raw model, 1 intra-op thread):"
VAXPULSE_MODEL_INTRA_OP_THREADS=1 $B bench raw --batch-sizes 64 --seq-lens 32,64 --cell-seconds 2 \
  --json bench-results/demo-raw.json

#!/usr/bin/env bash
# The demo: set-up if needed, services, fresh topics (4 partitions), 20 000 synthetic tweets as a
# backlog (opinion moving from against to favour over 5 days), 2 worker replicas, wait until every
# tweet is in ClickHouse, print the report and the throughput next to the raw model's. Then
# (DEMO_SHADOW=1, the default) a second version (demo@2, trained with another seed; ~2 min the
# first time) is deployed as a shadow, 5 000 more tweets go through, and `vaxpulse monitor`
# prints drift and agreement. Ends by writing the opinion and drift charts.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${DEMO_TWEETS:-20000}
REPLICAS=${DEMO_REPLICAS:-2}
SHADOW=${DEMO_SHADOW:-1}
N2=${DEMO_SHADOW_TWEETS:-5000}
OPINION_CHART=${DEMO_OPINION_CHART:-bench-results/demo-opinion.png}
DRIFT_CHART=${DEMO_DRIFT_CHART:-bench-results/demo-drift.png}
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
  VAXPULSE_KAFKA_DLQ_TOPIC=$RUN.dlq VAXPULSE_KAFKA_CONTROL_TOPIC=$RUN.control \
  VAXPULSE_KAFKA_GROUP_ID=$RUN VAXPULSE_CLICKHOUSE_DATABASE=$RUN
CH=${VAXPULSE_CLICKHOUSE_URL:-http://127.0.0.1:8123}
echo "demo: run $RUN — topics and schema"
$B topics --partitions 4
$B schema
echo "demo: producing $N synthetic tweets"
SEED1=$RANDOM
$B produce --synthetic "$N" --seed "$SEED1"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start_replicas() {
  for i in $(seq 1 "$REPLICAS"); do
    VAXPULSE_METRICS_LISTEN=127.0.0.1:$((9463 + i)) VAXPULSE_MODEL_INTRA_OP_THREADS=1 RUST_LOG=warn \
      $B run >>".state/logs/$RUN-replica$i.log" 2>&1 &
    pids+=($!)
  done
}
# wait_for SQL N: until the query's count reaches N (10 min at most).
wait_for() {
  local count=0
  for _ in $(seq 1 1200); do
    count=$(curl -fsS "$CH" --data-binary "$1" 2>/dev/null || echo 0)
    [ "$count" -ge "$2" ] && return 0
    sleep 0.5
  done
  echo "demo: only $count of $2 arrived ($1); see .state/logs/$RUN-replica*.log" >&2
  return 1
}
start=$(date +%s.%N)
start_replicas
echo "demo: $REPLICAS replicas started (metrics on 127.0.0.1:9464..); waiting for $N tweets in ClickHouse"
wait_for "SELECT uniqExact(tweet_id) FROM $RUN.classified_tweets" "$N"
end=$(date +%s.%N)
cleanup; pids=()
elapsed=$(python3 -c "print(f'{$end - $start:.1f}')")
rate=$(python3 -c "print(f'{$N / ($end - $start):.0f}')")
$B report
echo
echo "demo: $N tweets end to end in ${elapsed}s with $REPLICAS replicas (1 intra-op thread each): $rate tweets/s"
echo "demo: one replica's ceiling on this machine (raw model, 1 intra-op thread):"
VAXPULSE_MODEL_INTRA_OP_THREADS=1 $B bench raw --batch-sizes 64 --seq-lens 32,64 --cell-seconds 2 \
  --json bench-results/demo-raw.json

if [ "$SHADOW" = 1 ]; then
  STORE=.state/demo-store
  mkdir -p "$STORE/demo"
  [ -f "$STORE/demo/1/manifest.json" ] || cp -r models/demo/1 "$STORE/demo/1"
  if [ ! -f "$STORE/demo/2/manifest.json" ]; then
    echo "demo: training demo@2 (same architecture, seed 77) into $STORE"
    python3 scripts/make_demo_model.py --out "$STORE" --version 2 --seed 77
  fi
  export VAXPULSE_MODEL_STORE_DIR=$STORE
  $B models deploy demo@2 --reason "demo: second version as a shadow"
  SEED2=$RANDOM
  $B produce --synthetic "$N2" --seed "$SEED2"
  start_replicas
  echo "demo: demo@2 deployed as a shadow; waiting for $N2 more tweets"
  wait_for "SELECT uniqExact(tweet_id) FROM $RUN.classified_tweets" "$((N + N2))"
  # Shadow results are stored off the champion's path (250 ms linger): give them a moment.
  sleep 2
  cleanup; pids=()
  shadowed=$(curl -fsS "$CH" --data-binary "SELECT uniqExact(tweet_id) FROM $RUN.predictions WHERE role = 'shadow'")
  echo "demo: demo@2 scored $shadowed of the $N2 new tweets as a shadow (shadow batches are dropped, never waited for, when the machine is busy)"
  rc=0
  $B monitor --daily --chart "$DRIFT_CHART" --json bench-results/demo-monitor.json || rc=$?
  echo "demo: vaxpulse monitor exited $rc (2 = alert: the synthetic opinion moves on purpose)"
  echo "demo: live quality — a sample of the last 6 days, labelled from the generator's ground truth"
  $B annotate sample --hours 144 --id demo
  $B annotate simulate --sample demo --synthetic "$N:$SEED1" --synthetic "$N2:$SEED2"
  $B quality --sample demo --json bench-results/demo-quality.json
  if $B models promote demo@2 --reason "demo: gated promotion"; then
    echo "demo: the quality gate passed demo@2: promoted"
  else
    echo "demo: the quality gate refused demo@2 (its reasons above; --force --reason overrides, recorded)"
  fi
fi
$B report --chart "$OPINION_CHART" >/dev/null
echo "demo: opinion chart written to $OPINION_CHART"
[ "$SHADOW" = 1 ] && echo "demo: drift chart written to $DRIFT_CHART"
echo "demo: database $RUN (ClickHouse $CH); explore it with: VAXPULSE_CLICKHOUSE_DATABASE=$RUN $B report --hourly"

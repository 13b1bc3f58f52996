#!/usr/bin/env bash
# Local services for development and tests: a Kafka-protocol broker (nisshi 0.8.1, durable SQLite
# storage in .state/nisshi, survives restarts) and ClickHouse 26.9 (chdb-core over HTTP). Usage: scripts/services.sh start|stop|status [all|broker|clickhouse|bench-broker]
# (one service alone is what the fault-injection suite stops and restarts).
# bench-broker (not part of all): a second nisshi with in-memory storage on VAXPULSE_BENCH_BROKERS
# (default 127.0.0.1:9094) for benchmarks: the SQLite broker commits a transaction per produce
# request, which caps a 2-core machine at a few hundred requests/s; Kafka appends to the page
# cache. Its topics are lost when it stops.
# Addresses: VAXPULSE_KAFKA_BROKERS (default 127.0.0.1:9092), VAXPULSE_CLICKHOUSE_URL
# (default http://127.0.0.1:8123). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=$ROOT/.state
[ -f "$STATE/env.sh" ] || scripts/setup.sh
# shellcheck disable=SC1091
source "$STATE/env.sh"
BROKERS=${VAXPULSE_KAFKA_BROKERS:-127.0.0.1:9092}
CH_URL=${VAXPULSE_CLICKHOUSE_URL:-http://127.0.0.1:8123}
KHOST=${BROKERS%%,*}; KPORT=${KHOST##*:}; KHOST=${KHOST%:*}
CH_HOSTPORT=${CH_URL#http://}; CH_HOSTPORT=${CH_HOSTPORT%%/*}; CH_PORT=${CH_HOSTPORT##*:}
CH_TCP_PORT=$((CH_PORT + 877))   # 8123 -> 9000, ClickHouse's usual pair
mkdir -p "$STATE/nisshi" "$STATE/clickhouse" "$STATE/logs"

BENCH_BROKERS=${VAXPULSE_BENCH_BROKERS:-127.0.0.1:9094}
BHOST=${BENCH_BROKERS%%,*}; BPORT=${BHOST##*:}; BHOST=${BHOST%:*}
port_up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
kafka_up() { port_up "$KHOST" "$KPORT"; }
bench_up() { port_up "$BHOST" "$BPORT"; }
ch_up() { curl -fsS "$CH_URL/ping" >/dev/null 2>&1; }

wait_for() { # name check seconds
  local i
  for ((i = 0; i < $3 * 5; i++)); do "$2" && return 0; sleep 0.2; done
  echo "services: $1 did not come up in $3 s; see $STATE/logs/" >&2
  return 1
}

# nisshi on HOST:PORT with STORAGE, run from DIR (a sqlite:// path is relative to it), its pid in
# $STATE/NAME.pid and its log in $STATE/logs/NAME.log.
start_nisshi() { # NAME HOST PORT STORAGE DIR
  echo "services: starting nisshi ($1) on $2:$3, storage $4"
  # `cd; cmd &` (not `cd && cmd &`): $! must be nisshi itself, not a subshell, so stop works.
  # No initial rebalance delay: a group forms as soon as its first member joins.
  (cd "$5" || exit 1; nohup nisshi broker --listener-url "tcp://$2:$3" --advertised-listener-url "tcp://$2:$3" \
    --storage-engine "$4" --group-initial-rebalance-delay 0s >>"$STATE/logs/$1.log" 2>&1 &
    echo $! >"$STATE/$1.pid")
}

start() {
  local which=${1:-all}
  if [ "$which" = all ] || [ "$which" = broker ]; then
    if kafka_up; then echo "services: broker already answering on $KHOST:$KPORT"; else
      start_nisshi nisshi "$KHOST" "$KPORT" sqlite://nisshi.db "$STATE/nisshi"
    fi
    wait_for broker kafka_up 60
  fi
  if [ "$which" = all ] || [ "$which" = clickhouse ]; then
    if ch_up; then echo "services: ClickHouse already answering at $CH_URL"; else
      echo "services: starting ClickHouse (chdb-core) at $CH_URL"
      nohup python "$ROOT/scripts/clickhouse_server.py" "$STATE/clickhouse" "$CH_PORT" "$CH_TCP_PORT" \
        >>"$STATE/logs/clickhouse.log" 2>&1 & echo $! >"$STATE/clickhouse.pid"
    fi
    wait_for ClickHouse ch_up 120
  fi
  if [ "$which" = bench-broker ]; then
    if bench_up; then echo "services: bench broker already answering on $BHOST:$BPORT"; else
      start_nisshi bench-broker "$BHOST" "$BPORT" memory://nisshi/ "$STATE"
    fi
    wait_for "bench broker" bench_up 60
    echo "services: bench broker up (VAXPULSE_KAFKA_BROKERS=$BHOST:$BPORT)"
    return
  fi
  echo "services: up ($which; broker $KHOST:$KPORT, ClickHouse $CH_URL)"
}

stop() {
  local which=${1:-all} s pid
  for s in nisshi clickhouse bench-broker; do
    case "$which:$s" in all:nisshi | all:clickhouse | broker:nisshi | clickhouse:clickhouse | bench-broker:bench-broker) ;; *) continue ;; esac
    if [ -f "$STATE/$s.pid" ]; then
      pid=$(cat "$STATE/$s.pid")
      if kill "$pid" 2>/dev/null; then
        # Wait for it to be gone, so a following start cannot race the old process's port
        # (nisshi takes ~7 s to stop with clients attached).
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        echo "services: stopped $s ($pid)"
      fi
      rm -f "$STATE/$s.pid"
    fi
  done
}

status() {
  kafka_up && echo "broker: up ($KHOST:$KPORT)" || echo "broker: down"
  ch_up && echo "clickhouse: up ($CH_URL)" || echo "clickhouse: down"
  bench_up && echo "bench broker: up ($BHOST:$BPORT)" || echo "bench broker: down"
}

case "${1:-}" in
  start) start "${2:-all}" ;;
  stop) stop "${2:-all}" ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [all|broker|clickhouse|bench-broker]" >&2; exit 2 ;;
esac

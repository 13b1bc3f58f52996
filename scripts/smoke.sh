#!/usr/bin/env bash
# Smoke check after a deploy on the compose host (the CI `deploy` job): every worker replica
# answers /health/ready (consuming, sinks healthy) within SMOKE_TIMEOUT_S (120 s).
set -euo pipefail
cd "$(dirname "$0")/.."
deadline=$((SECONDS + ${SMOKE_TIMEOUT_S:-120}))
while :; do
  ids=$(docker compose ps -q worker)
  ready=0 total=0
  for id in $ids; do
    total=$((total + 1))
    docker exec "$id" curl -fsS http://127.0.0.1:9464/health/ready >/dev/null 2>&1 && ready=$((ready + 1))
  done
  if [ "$total" -gt 0 ] && [ "$ready" = "$total" ]; then
    echo "smoke: $ready/$total worker replicas ready"
    exit 0
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "smoke: $ready/$total worker replicas ready after ${SMOKE_TIMEOUT_S:-120} s" >&2
    exit 1
  fi
  sleep 5
done

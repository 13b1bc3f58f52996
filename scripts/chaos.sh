#!/usr/bin/env bash
# The fault-injection suite, one command: builds the worker, starts the local services, and runs
# `vaxpulse chaos` (SIGKILLed replicas, ClickHouse down 60 s, broker restart, 10 000 hostile
# messages, a replica joining and leaving). Prints a table per scenario and the summary; exits
# non-zero if any tweet was lost or counted twice. Extra arguments go to `vaxpulse chaos`
# (e.g. --scenarios kill,hostile --kill-tweets 20000). Takes ~10 min on 2 cores (demo model).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .state/env.sh ] || scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
if [ "${FRESH_BROKER:-1}" = 1 ]; then
  # tansu (SQLite) slows down as its file grows with every test topic; the suite's figures are
  # about the worker, so it starts from an empty broker (FRESH_BROKER=0 keeps the old one).
  echo "chaos: starting from a fresh local broker (.state/tansu is emptied)"
  scripts/services.sh stop broker
  rm -rf .state/tansu
fi
scripts/services.sh start
cargo build --release --quiet
mkdir -p bench-results
exec target/release/vaxpulse -c "${VAXPULSE_CONFIG:-config/local.toml}" chaos "$@"

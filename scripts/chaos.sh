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
scripts/services.sh start
cargo build --release --quiet
mkdir -p bench-results
exec target/release/vaxpulse -c "${VAXPULSE_CONFIG:-config/local.toml}" chaos "$@"

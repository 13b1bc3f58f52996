#!/usr/bin/env bash
# The fault-injection suite, one command: builds the worker and the harness, starts the local
# services, and runs `vaxpulse-harness chaos` (SIGKILLed replicas, ClickHouse down 60 s, broker
# restart, 10 000 hostile messages, a replica joining and leaving), all on the local broker by
# default. Prints a table per scenario and the summary; exits non-zero if any tweet was lost or
# counted twice. Extra arguments go to `vaxpulse-harness chaos` (e.g. --scenarios kill,hostile
# --kill-tweets 20000, or --broker mock for kill/hostile on rdkafka's MockCluster).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .state/env.sh ] || scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
scripts/services.sh start
cargo build --release --quiet --bins --workspace
mkdir -p bench-results
exec target/release/vaxpulse-harness -c "${VAXPULSE_CONFIG:-config/local.toml}" chaos "$@"

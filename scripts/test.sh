#!/usr/bin/env bash
# Runs every test: set-up if needed, local services, then unit, model-parity and integration
# tests against the real broker and ClickHouse (local ones started here, or the ones given by
# VAXPULSE_SERVICES=external with VAXPULSE_KAFKA_BROKERS / VAXPULSE_CLICKHOUSE_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: set-up"
scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
if [ "${VAXPULSE_SERVICES:-local}" = external ]; then
  echo "test: services given: broker ${VAXPULSE_KAFKA_BROKERS:?set VAXPULSE_KAFKA_BROKERS}, ClickHouse ${VAXPULSE_CLICKHOUSE_URL:?set VAXPULSE_CLICKHOUSE_URL}"
else
  echo "test: services"
  scripts/services.sh start
fi
echo "test: cargo test (release; integration tests use random topics and databases)"
cargo test --release --workspace --all-targets -- --test-threads=2
echo "test: the image's build stage builds from only the files the Dockerfile copies"
scripts/check_image_inputs.sh
echo "test: delivery files (promtool, Compose schema, Kubernetes manifests)"
scripts/check_deploy.sh
echo "test: the GPU bench script, dry run on the CPU at toy sizes (scripts/bench_gpu.sh --dry-run)"
cargo build --release --quiet --bins --workspace
scripts/bench_gpu.sh --dry-run target/release/vaxpulse "" bench-results/gpu-dry-run
# Every step must have run (a dry run has the time, the services and the model): a skip or a
# failure here is a broken script or binary, found before GPU minutes are spent on it.
if grep -v $'\tok' bench-results/gpu-dry-run/steps.tsv; then
  echo "test: a step of the GPU bench dry run did not end ok (above); see bench-results/gpu-dry-run" >&2
  exit 1
fi

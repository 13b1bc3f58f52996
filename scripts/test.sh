#!/usr/bin/env bash
# Runs every test: set-up if needed, local services, then unit, model-parity and integration
# tests against the real broker and ClickHouse.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: set-up"
scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
echo "test: services"
scripts/services.sh start
echo "test: cargo test (release; integration tests use random topics and databases)"
cargo test --release --workspace --all-targets -- --test-threads=2
echo "test: the image's build stage builds from only the files the Dockerfile copies"
scripts/check_image_inputs.sh

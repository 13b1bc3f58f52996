#!/usr/bin/env bash
# Installs what vaxpulse needs on a fresh machine (idempotent): Debian build packages, a Python
# venv with torch 2.11.0 (libtorch for tch 0.24), tokenizers, sentencepiece (the export converts
# slow CamemBERT tokenizers) and chdb-core, Chromium and npm playwright-core (the annotation
# page's browser test), the nisshi broker
# (Kafka protocol, SQLite storage; built once with cargo, ~25 min on 2 cores, then cached) and
# promtool (Debian's prometheus package; the metrics test lints /metrics with it).
# Writes .state/env.sh, which the other scripts source. VAXPULSE_SERVICES=external (CI with
# GitLab services) skips the local broker.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VAXPULSE_HOME=${VAXPULSE_HOME:-$HOME/.cache/vaxpulse}
VENV=$VAXPULSE_HOME/venv
REQS="torch==2.11.0 tokenizers==0.23.3 transformers==5.24.0 chdb-core==26.9.0 numpy sentencepiece==0.2.1 protobuf==7.36.2"
mkdir -p "$ROOT/.state" "$VAXPULSE_HOME"

need_apt=()
for bin_pkg in cmake:cmake pkg-config:pkg-config curl:curl openssl:openssl; do
  command -v "${bin_pkg%%:*}" >/dev/null || need_apt+=("${bin_pkg#*:}")
done
# librdkafka (built by rdkafka-sys) compiles against OpenSSL, libcurl and zlib headers when their
# libraries are present; a machine with the library but not its headers fails that build.
# libclang-dev: nisshi's build runs bindgen. prometheus: for promtool.
for pkg in libssl-dev libcurl4-openssl-dev zlib1g-dev libclang-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
command -v promtool >/dev/null || need_apt+=(prometheus)
# The annotation page's browser test: Debian's Chromium, driven by npm playwright-core below.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

marker=$VENV/.vaxpulse-reqs
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$marker" 2>/dev/null)" != "$REQS" ]; then
  echo "setup: creating the Python venv at $VENV ($REQS)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $REQS
  echo "$REQS" > "$marker"
else
  echo "setup: Python venv ready at $VENV"
fi

NODE_DIR=$VAXPULSE_HOME/node
PLAYWRIGHT=playwright-core@1.64.1
if [ "$(cat "$NODE_DIR/.vaxpulse-npm" 2>/dev/null)" != "$PLAYWRIGHT" ]; then
  echo "setup: installing $PLAYWRIGHT into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent "$PLAYWRIGHT")
  echo "$PLAYWRIGHT" > "$NODE_DIR/.vaxpulse-npm"
else
  echo "setup: $PLAYWRIGHT present in $NODE_DIR"
fi

export PATH=$HOME/.cargo/bin:$PATH
NISSHI_VERSION=0.8.1
if [ "${VAXPULSE_SERVICES:-local}" = external ]; then
  echo "setup: VAXPULSE_SERVICES=external: no local broker needed (tests use VAXPULSE_KAFKA_BROKERS)"
elif nisshi --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
  echo "setup: nisshi $NISSHI_VERSION present ($(command -v nisshi))"
else
  # A locked dependency asks for rustc 1.96; it builds on 1.95 with --ignore-rust-version.
  echo "setup: building the nisshi $NISSHI_VERSION broker (cargo install, ~25 min once on 2 cores)"
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version
fi

TORCH_LIB=$("$VENV/bin/python" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
cat > "$ROOT/.state/env.sh" <<ENV
# written by scripts/setup.sh
export VAXPULSE_HOME=$VAXPULSE_HOME
export PATH=$VENV/bin:\$HOME/.cargo/bin:\$PATH
export LIBTORCH_USE_PYTORCH=1
export LD_LIBRARY_PATH=$TORCH_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export NODE_PATH=$NODE_DIR/node_modules
ENV
echo "setup: done; wrote .state/env.sh"

#!/usr/bin/env bash
# Runs the GitLab pipeline locally with gitlab-ci-local (npm): lists every job, then runs the
# `lint` and `unit` jobs in shell-executor mode on this machine (no Docker needed). Jobs that
# need Docker services, a registry or the compose host (integration, image-*, deploy, model)
# are listed, not run. gitlab-ci-local 4.64.x is the last line that starts on Node 20.
# Usage: scripts/ci_local.sh [JOB ...]   (default: lint unit)
set -euo pipefail
cd "$(dirname "$0")/.."
GCL_VERSION=4.64.1
# gitlab-ci-local copies the tracked files into .gitlab-ci-local/builds with rsync.
if ! command -v rsync >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -qq rsync >/dev/null
fi
GCL_DIR=${VAXPULSE_HOME:-$HOME/.cache/vaxpulse}/gitlab-ci-local-$GCL_VERSION
if [ ! -x "$GCL_DIR/node_modules/.bin/gitlab-ci-local" ]; then
  echo "ci-local: installing gitlab-ci-local $GCL_VERSION into $GCL_DIR"
  npm install --prefix "$GCL_DIR" --no-audit --no-fund "gitlab-ci-local@$GCL_VERSION" >/dev/null
fi
G="$GCL_DIR/node_modules/.bin/gitlab-ci-local"
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(lint unit)
echo "ci-local: every job of .gitlab-ci.yml"
"$G" --list-all
# This machine's caches instead of the pipeline's per-project ones (same tools, no re-download),
# and this checkout's target directory (the job's copy would otherwise build from scratch).
echo "ci-local: running ${jobs[*]} (shell executor)"
"$G" --force-shell-executor \
  --variable "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
  --variable "VAXPULSE_HOME=${VAXPULSE_HOME:-$HOME/.cache/vaxpulse}" \
  --variable "CARGO_TARGET_DIR=$PWD/target" \
  "${jobs[@]}"

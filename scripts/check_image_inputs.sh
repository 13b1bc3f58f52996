#!/usr/bin/env bash
# Proves the Dockerfile's build stage copies every input the worker's build needs: copies only
# the paths its COPY lines name (before the first `COPY --from`) into an empty directory and
# runs the same `cargo build` there (sharing this checkout's target directory, so only the
# worker crate itself is rebuilt). Fails if the build does, or if build.rs did not run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck disable=SC1091
source .state/env.sh
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
echo "image inputs: copying what the Dockerfile's build stage copies into $CTX"
in_build=1
while read -r line; do
  case "$line" in
    FROM*AS\ build*) in_build=1 ;;
    FROM*) in_build=0 ;;
  esac
  [ "$in_build" = 1 ] || continue
  case "$line" in
    COPY\ --from*) continue ;;
    COPY\ *)
      # shellcheck disable=SC2206
      parts=(${line#COPY })
      dest=${parts[${#parts[@]}-1]}
      for src in "${parts[@]:0:${#parts[@]}-1}"; do
        if [ "$dest" = "./" ]; then cp -r "$src" "$CTX/"; else mkdir -p "$CTX/$(dirname "$dest")"; cp -r "$src" "$CTX/$dest"; fi
      done
      ;;
  esac
done < Dockerfile
build_cmd=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' Dockerfile)
echo "image inputs: $build_cmd (in $CTX)"
# shellcheck disable=SC2086
(cd "$CTX" && CARGO_TARGET_DIR="$ROOT/target" $build_cmd --message-format=json-render-diagnostics) >"$CTX.json"
# build.rs must have run for the worker crate (it is what keeps the CUDA backend linked).
grep '"reason":"build-script-executed"' "$CTX.json" | grep -q '"package_id":"[^"]*vaxpulse' \
  || { rm -f "$CTX.json"; echo "image inputs: build.rs of vaxpulse did not run" >&2; exit 1; }
rm -f "$CTX.json"
echo "image inputs: complete (the build stage builds from only the files it copies)"

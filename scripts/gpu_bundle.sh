#!/usr/bin/env bash
# Packs what scripts/bench_gpu.sh needs on a GPU machine that has no Rust toolchain: vaxpulse,
# vaxpulse-harness, the model-parity test binary and nisshi, stripped and xz-compressed into
# .gpu/bundle.tar.xz (git-ignored), small enough to carry with the working tree (a device call
# carries 64 MiB in all). On the GPU machine (no xz needed, Python unpacks it):
#   python3 -c 'import tarfile; tarfile.open(".gpu/bundle.tar.xz").extractall("/tmp/vx")'
#   scripts/bench_gpu.sh /tmp/vx/vaxpulse /tmp/vx/model_parity "$OUT/gpu"
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .state/env.sh ] || scripts/setup.sh
# shellcheck disable=SC1091
source .state/env.sh
cargo build --release --quiet --bins --workspace
PARITY=$(cargo test --release --no-run --test model_parity --message-format=json 2>/dev/null |
  python -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "model_parity":
        print(m["executable"])')
STAGE=.gpu/stage
rm -rf "$STAGE" && mkdir -p "$STAGE"
strip -o "$STAGE/vaxpulse" target/release/vaxpulse
strip -o "$STAGE/vaxpulse-harness" target/release/vaxpulse-harness
strip -o "$STAGE/model_parity" "$PARITY"
strip -o "$STAGE/nisshi" "$(command -v nisshi)"
tar -C "$STAGE" -cf - . | xz -T0 -6 >.gpu/bundle.tar.xz
rm -rf "$STAGE"
size=$(stat -c %s .gpu/bundle.tar.xz)
echo "gpu_bundle: .gpu/bundle.tar.xz, $((size / 1048576)) MiB (carry it: run(carry=[\".gpu\"]))"
[ "$size" -lt $((56 * 1048576)) ] || { echo "gpu_bundle: too large to carry beside the working tree" >&2; exit 1; }

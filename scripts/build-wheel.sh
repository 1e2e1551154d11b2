#!/usr/bin/env bash
# Builds the Python wheel (issue 15, item 7) into OUT (default dist/):
#   <venv>/bin/gpuspan                      the CLI (maturin "bin" wheel of crates/gpuspan-cli)
#   site-packages/gpuspan/                  the Python package (python/gpuspan)
#   site-packages/gpuspan/_native/          libgpuspan.so, libgpuspan_simgpu.so, gpuspan-replay
# `gpuspan` finds the agent and the simulator in _native/, `import gpuspan` the agent.
# usage: scripts/build-wheel.sh [--profile release|dev] [--prebuilt] [OUT]
#   --prebuilt: take libgpuspan.so, libgpuspan_simgpu.so and gpuspan-replay as
#   `cargo build --workspace` left them in target/<profile> (the test command), instead of
#   building those packages alone
#   (maturin from PYTHON's environment: default .venv/bin/python, which scripts/test.sh sets up;
#   the platform tag is plain `linux`: a wheel for PyPI is built the same way inside a
#   manylinux container with --compatibility manylinux2014)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=release
if [ "${1:-}" = "--profile" ]; then
  PROFILE="$2"
  shift 2
fi
PREBUILT=0
if [ "${1:-}" = "--prebuilt" ]; then
  PREBUILT=1
  shift
fi
OUT="${1:-dist}"
PYTHON="${PYTHON:-$PWD/.venv/bin/python}"
DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
TARGET="${CARGO_TARGET_DIR:-target}/$DIR"
if [ "$PREBUILT" = 0 ]; then
  cargo build --profile "$PROFILE" -p gpuspan-preload
  cargo build --profile "$PROFILE" -p gpuspan-simgpu --bin gpuspan-replay --lib
fi
NATIVE=python/gpuspan/_native
rm -rf "$NATIVE"
mkdir -p "$NATIVE"
for f in libgpuspan.so libgpuspan_simgpu.so gpuspan-replay; do
  cp "$TARGET/$f" "$NATIVE/$f"
  strip --strip-debug "$NATIVE/$f"
done
trap 'rm -rf "$NATIVE"' EXIT
"$PYTHON" -m maturin build --quiet --profile "$PROFILE" --strip --compatibility linux --out "$OUT"
ls -1 "$OUT"/gpuspan-*.whl

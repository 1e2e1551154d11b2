#!/usr/bin/env bash
# Installs a built gpuspan into PREFIX (default /usr/local):
#   PREFIX/bin/            gpuspan, gpuspan-replay, libgpuspan.so, libgpuspan_simgpu.so
#                          (`gpuspan` finds the libraries and the replay worker beside itself)
#   PREFIX/include/        gpuspan.h
#   PREFIX/share/gpuspan/python/gpuspan/
#                          the Python package (API, auto-instrumentation, its rules file);
#                          `gpuspan run -- python …` finds it there, no PYTHONPATH needed
# usage: scripts/install.sh [--profile release|debug] [PREFIX]   (build first: cargo build --workspace [--release])
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=release
if [ "${1:-}" = "--profile" ]; then
  PROFILE="$2"
  shift 2
fi
PREFIX="${1:-/usr/local}"
TARGET="${CARGO_TARGET_DIR:-target}/$PROFILE"
for f in gpuspan gpuspan-replay libgpuspan.so libgpuspan_simgpu.so; do
  if [ ! -f "$TARGET/$f" ]; then
    echo "install.sh: $TARGET/$f is missing: build first (cargo build --workspace$([ "$PROFILE" = release ] && echo ' --release'))" >&2
    exit 2
  fi
done
mkdir -p "$PREFIX/bin" "$PREFIX/include" "$PREFIX/share/gpuspan/python"
for f in gpuspan gpuspan-replay libgpuspan.so libgpuspan_simgpu.so; do
  install -m 0755 "$TARGET/$f" "$PREFIX/bin/$f"
done
install -m 0644 include/gpuspan.h "$PREFIX/include/gpuspan.h"
rm -rf "$PREFIX/share/gpuspan/python/gpuspan"
# -L: auto.toml is a link to crates/gpuspan-core/rules/auto.toml in the build tree.
cp -RL python/gpuspan "$PREFIX/share/gpuspan/python/gpuspan"
find "$PREFIX/share/gpuspan/python" -name __pycache__ -prune -exec rm -rf {} +
echo "installed gpuspan into $PREFIX"

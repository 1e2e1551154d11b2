#!/usr/bin/env bash
# Per-call CPU cost of the Python auto-instrumentation (issue 12: goal <= 2 us per hooked
# module call), under the agent in coarse mode on the CPU. Not part of the test command.
# usage: scripts/bench-auto-hooks.sh [--layers N] [--steps N] [--rounds N]
# Needs a build (cargo build --workspace --release, or debug: GPUSPAN_BIN=target/debug/gpuspan)
# and torch in .venv-torch (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${GPUSPAN_BIN:-target/release/gpuspan}"
PY="${GPUSPAN_TORCH_VENV:-$PWD/.venv-torch}/bin/python"
[ -x "$BIN" ] || { echo "bench-auto-hooks.sh: $BIN missing: cargo build --workspace --release" >&2; exit 2; }
[ -x "$PY" ] || { echo "bench-auto-hooks.sh: $PY missing: run scripts/test.sh once" >&2; exit 2; }
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
GPUSPAN_METRICS_ADDR=127.0.0.1:0 "$BIN" run --no-auto --out "$OUT" -- \
  env PYTHONPATH="$PWD/python" "$PY" benches/auto_hooks.py "$@"

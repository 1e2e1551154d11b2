#!/usr/bin/env bash
# The soak harness (issue 13, item 3): a simulated worker in coarse mode at
# GPUSPAN_SIM_SPEED=20 with the flight recorder on, a fine window every 30 s, an OTLP
# receiver stopped for 10 s every minute, a Prometheus scrape every second. Prints a line per
# minute (RSS, agent CPU, records, spans, windows, drops by reason) and exits non-zero when
# RSS grows after a minute of warm-up (more than 1 MB per 10 minutes), a window or a scrape
# fails, or spans produced ≠ received + counted drops. What it checks is in
# crates/gpuspan-testkit/src/bin/gpuspan-soak.rs.
# Usage: scripts/soak.sh [--minutes N]   (default 3; the test command runs 3)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=3
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--minutes N]" >&2; exit 2 ;;
  esac
done
# Built by the test command already; a no-op then.
cargo build -q -p gpuspan-preload
cargo build -q -p gpuspan-cli -p gpuspan-simgpu -p gpuspan-testkit --bins
TARGET="${CARGO_TARGET_DIR:-target}/debug"
exec "$TARGET/gpuspan-soak" --minutes "$MINUTES" --bin-dir "$TARGET"

#!/usr/bin/env bash
# Fuzzes every target of fuzz/ (issue 13, item 4) with cargo-fuzz (libFuzzer, nightly
# toolchain, AddressSanitizer), installing cargo-fuzz first when it is missing. Not part of
# the test command; the test command replays fuzz/seeds and fuzz/regressions on stable
# (crates/gpuspan-fuzz/tests/regressions.rs).
#
# usage: scripts/fuzz.sh [--seconds N] [--jobs J] [TARGET...]
#   --seconds N  fuzzing time per target (default 600); targets run J at a time (default 2)
# Per target it prints the runs, the corpus size and the time; a crash or timeout input is
# copied to fuzz/regressions/<target>/ (commit it once fixed) and the script exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=600
JOBS=2
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_TARGET="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(activity_buffer kineto_reader control_message trace_context rules_toml nvtx_event_attributes)

rustup toolchain list | grep -q '^nightly' || { echo "fuzz.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2; exit 2; }
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo +nightly install --locked cargo-fuzz
fi

(cd fuzz && cargo +nightly fuzz build -O 2>&1 | tail -2)

LOGS="$(mktemp -d)"
run_one() {
  local t="$1" corpus="fuzz/corpus/$1"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  local max_len=4096
  [ "$t" = kineto_reader ] && max_len=65536
  local start=$(date +%s)
  if (cd fuzz && cargo +nightly fuzz run -O "$t" "../$corpus" "../fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1) > "$LOGS/$t.log" 2>&1; then
    status=ok
  else
    status=FOUND
  fi
  local runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -1)
  printf '%-22s %-5s %6ss %12s runs %6s corpus files\n' "$t" "$status" "$(( $(date +%s) - start ))" "${runs:-?}" "$(ls "$corpus" | wc -l)"
  if [ "$status" = FOUND ]; then
    mkdir -p "fuzz/regressions/$t"
    cp fuzz/artifacts/"$t"/* "fuzz/regressions/$t/" 2>/dev/null || true
    grep -m3 -E 'ERROR|panicked|SUMMARY' "$LOGS/$t.log" | sed 's/^/    /'
  fi
}
export -f run_one
export SECONDS_PER_TARGET LOGS
FAILED=0
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}' || FAILED=1
grep -l -E 'ERROR: libFuzzer|panicked' "$LOGS"/*.log >/dev/null 2>&1 && FAILED=1
exit $FAILED

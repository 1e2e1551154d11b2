#!/usr/bin/env bash
# Checks the Prometheus rules in deploy/prometheus with promtool (Debian's `prometheus`
# package): `promtool check rules` on the recording rules and the alerts (lint errors
# fatal), then `promtool test rules` on every unit test in tests/. Exits non-zero when a
# check or a test fails, or when promtool is missing.
#
#   scripts/check-deploy.sh [DIR]     DIR defaults to deploy/prometheus of this repo
#   PROMTOOL=/path/to/promtool scripts/check-deploy.sh
#
# The test command runs it (tests/e2e/deploy.rs), together with the dashboard test that
# evaluates every Grafana query against a real Prometheus.
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/deploy/prometheus}"
promtool="${PROMTOOL:-promtool}"
if ! command -v "$promtool" >/dev/null 2>&1; then
  echo "check-deploy.sh: $promtool not found (Debian: apt-get install prometheus)" >&2
  exit 2
fi

"$promtool" check rules --lint=all --lint-fatal "$dir/recording-rules.yml" "$dir/alerts.yml"

shopt -s nullglob
tests=("$dir"/tests/*.yml)
if [ "${#tests[@]}" -eq 0 ]; then
  echo "check-deploy.sh: no promtool unit tests in $dir/tests" >&2
  exit 1
fi
# promtool resolves a test's rule_files against the test file's own directory.
"$promtool" test rules "${tests[@]}"

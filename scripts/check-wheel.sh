#!/usr/bin/env bash
# The Python wheel, installed the way ML engineers install tools (issue 15, item 7): builds
# it (scripts/build-wheel.sh, dev profile, from what the test command built), installs it
# with pip into a fresh venv, and runs the CLI and the Python API from there with no
# PYTHONPATH, LD_LIBRARY_PATH or GPUSPAN_* path set; then `cargo install`s the CLI alone.
# Part of the test command; exits non-zero, naming the check, on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$PWD/.venv/bin/python}"
WORK="${CARGO_TARGET_DIR:-target}/wheel-check"
rm -rf "$WORK"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
fail() { echo "check-wheel: FAILED: $*" >&2; exit 1; }
unset PYTHONPATH LD_LIBRARY_PATH LD_PRELOAD GPUSPAN_LIB GPUSPAN_AGENT_LIB GPUSPAN_SIM_LIB GPUSPAN_REPLAY_BIN GPUSPAN_PYTHON_DIR

"$PY" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2"
PYTHON="$PY" scripts/build-wheel.sh --profile dev --prebuilt "$WORK/dist" >/dev/null
WHEEL=$(ls "$WORK"/dist/gpuspan-*.whl)
echo "check-wheel: built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"

# A fresh venv, as a worker's own.
python3 -m venv "$WORK/venv"
V="$WORK/venv"
"$V/bin/pip" install --quiet --disable-pip-version-check --no-deps "$WHEEL"
cd "$WORK"

"$V/bin/gpuspan" --version | grep -q "^gpuspan " || fail "gpuspan --version"
# The CLI finds the agent and the simulated H100 inside the installed package.
"$V/bin/gpuspan" demo --out "$WORK/demo" > "$WORK/demo.txt" 2>&1 || { cat "$WORK/demo.txt"; fail "gpuspan demo from the venv"; }
ls "$WORK"/demo/capture-*.json.gz >/dev/null 2>&1 || fail "gpuspan demo wrote no capture"
"$V/bin/gpuspan" stats "$WORK/demo" --json > "$WORK/stats.json" || fail "gpuspan stats"
"$V/bin/python" - "$WORK/stats.json" "$WORK/demo.txt" <<'PY' || fail "stats of the demo capture"
import json, re, sys
s = json.load(open(sys.argv[1]))
said = re.search(r"(\d+) kernels in (\d+) steps", open(sys.argv[2]).read())
assert said, "the demo's summary line"
assert s["kernel_count"] == int(said.group(1)), (s["kernel_count"], said.group(0))
assert len(s["steps"]) == int(said.group(2)), (len(s["steps"]), said.group(0))
print(f"check-wheel: demo from the venv: {s['kernel_count']} kernels in {len(s['steps'])} steps")
PY

# `import gpuspan` finds the bundled libgpuspan.so (no gpuspan run, no GPUSPAN_LIB).
"$V/bin/python" - <<'PY' || fail "import gpuspan from the venv"
import os, warnings
warnings.simplefilter("error")
import gpuspan
assert gpuspan.is_loaded(), "the bundled library was not loaded"
assert gpuspan.version(), gpuspan.version()
native = os.path.join(os.path.dirname(gpuspan.__file__), "_native", "libgpuspan.so")
assert os.path.isfile(native), native
print("check-wheel: import gpuspan:", gpuspan.version(), "from", os.path.dirname(gpuspan.__file__))
PY

# `gpuspan run -- python …` turns on the auto-instrumentation from the installed package.
"$V/bin/gpuspan" run --out "$WORK/run" -- "$V/bin/python" -c \
  'import os, sys, gpuspan; assert os.environ.get("GPUSPAN_AUTO") == "1"; assert any(p.endswith("gpuspan/bootstrap") for p in sys.path), sys.path; assert gpuspan.is_loaded()' \
  || fail "gpuspan run -- python from the venv"

# `cargo install` of the CLI alone (`--locked`: the workspace's versions, so the dev build is
# reused; the analysis commands need nothing else).
cd - >/dev/null
cargo install --quiet --locked --debug --path crates/gpuspan-cli --root "$WORK/cargo-root" --target-dir "${CARGO_TARGET_DIR:-target}" \
  || fail "cargo install --path crates/gpuspan-cli"
"$WORK/cargo-root/bin/gpuspan" stats "$WORK/demo" > /dev/null || fail "the cargo-installed gpuspan stats"
echo "check-wheel: ok (pip install of the wheel: gpuspan demo, stats, import gpuspan, gpuspan run -- python; cargo install)"

#!/usr/bin/env bash
# GPU validation of gpuspan on a real NVIDIA GPU (docs/gpu-validation.md).
#
#   scripts/gpu-validate.sh [OUT_DIR]        (default OUT_DIR: target/gpu-validate)
#
# With a GPU (`nvidia-smi -L` succeeds): builds release, checks every kernel against its CPU
# reference (dit_worker --check), then runs examples/dit_worker RUNS times in each of three
# configurations, alternating: without the agent, with LD_PRELOAD=libgpuspan.so in coarse
# mode and in fine mode (GPUSPAN_OUT per run); replays a Kineto trace as spin kernels (fine
# mode); records the same workload under `nsys profile` where nsys is installed; and prints
# the table of scripts/gpu_validate_report.py (agent vs CUDA-event ground truth, kernels
# captured vs launched, dropped records, overhead per mode). Exit 1 when a check fails.
# Without a GPU: runs the kernel compile checks (NVRTC at build time, ptxas without spills,
# the CPU references' unit tests) and exits with their status.
#
# Environment: RUNS (3), STEPS (10), BLOCKS (4), REQUESTS (3), PROFILE (release), WORKER_ARGS (extra
# dit_worker arguments, e.g. --nonblocking), REPLAY_TRACE (default: the first of
# ../shared/fixtures/traces/h100-*.json.gz; empty = no replay), GPUSPAN_VALIDATE_STAGE_PCT,
# GPUSPAN_VALIDATE_SLACK_US (stage tolerance, see the report script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/gpu-validate}"

# NVRTC (kernels/*.cu -> PTX at build time) and ptxas, as scripts/test.sh installs them.
NVRTC_WHEEL="nvidia-cuda-nvrtc-cu12==12.9.86"
NVCC_WHEEL="nvidia-cuda-nvcc-cu12==12.9.86"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || echo "gpu-validate: cannot create .venv; kernels need NVRTC at build time" >&2
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import importlib.metadata as m; [m.version(p) for p in ("nvidia-cuda-nvrtc-cu12","nvidia-cuda-nvcc-cu12")]' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "$NVRTC_WHEEL" "$NVCC_WHEEL" \
    || echo "gpu-validate: could not install $NVRTC_WHEEL $NVCC_WHEEL" >&2
  touch kernels/*.cu  # build.rs watches kernels/: recompile the PTX with the new NVRTC
fi
export GPUSPAN_VENV="$PWD/.venv"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: kernel compile checks only"
  # Through the workspace's test build (nextest over the whole workspace, as the test command
  # builds it), so nothing is rebuilt after scripts/test.sh: `cargo test -p <one package>`
  # resolves that package's features alone and recompiled serde, toml and the workspace
  # crates (issue 14, item 7).
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast -E 'package(gpuspan-kernels) | binary(kernels_ptxas)' --no-capture
  else
    cargo test -p gpuspan-kernels
    cargo test -p gpuspan --test kernels_ptxas -- --nocapture
  fi
  exit 0
fi

# The real GPU path: never the simulated libcuda / libcupti (libgpuspan_simgpu.so installed
# under their sonames). GPUSPAN_VALIDATE_ALLOW_SIM=1 lets this script test itself on the
# simulator, with a stand-in nvidia-smi; its numbers then mean nothing.
if [ "${GPUSPAN_VALIDATE_ALLOW_SIM:-}" != 1 ]; then
  IFS=: read -r -a LIB_DIRS <<<"${LD_LIBRARY_PATH:-}"
  for d in "${LIB_DIRS[@]}"; do
    for so in libcuda.so.1 libcuda.so libcupti.so.12; do
      if [ -e "$d/$so" ] && [[ "$(readlink -f "$d/$so")" == *gpuspan_simgpu* ]]; then
        echo "gpu-validate: $d/$so is the simulated GPU; take $d off LD_LIBRARY_PATH" >&2
        exit 2
      fi
    done
  done
  unset GPUSPAN_SIM_CLOCK GPUSPAN_SIM_FAULT GPUSPAN_SIM_CUPTI_VERSION GPUSPAN_SIM_DROP_EVERY || true
fi
# Self-contained runs: no injection from the caller, no OTLP export, no metrics port clash.
unset CUDA_INJECTION64_PATH NVTX_INJECTION64_PATH LD_PRELOAD GPUSPAN_MODE GPUSPAN_OUT GPUSPAN_METRICS_ADDR \
  OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || true

RUNS="${RUNS:-3}"
STEPS="${STEPS:-10}"
BLOCKS="${BLOCKS:-4}"
REQUESTS="${REQUESTS:-3}"
read -r -a EXTRA <<<"${WORKER_ARGS:-}"
if [ -z "${REPLAY_TRACE+x}" ]; then
  REPLAY_TRACE="$(ls ../shared/fixtures/traces/h100-*.json.gz 2>/dev/null | head -n 1 || true)"
fi

PROFILE="${PROFILE:-release}"  # PROFILE=debug: quicker build, slower host code
PROFILE_FLAG=(--release)
[ "$PROFILE" = release ] || PROFILE_FLAG=()
cargo build "${PROFILE_FLAG[@]}" -p gpuspan-preload
cargo build "${PROFILE_FLAG[@]}" -p gpuspan --example dit_worker
cargo build "${PROFILE_FLAG[@]}" -p gpuspan-cli
WORKER="target/$PROFILE/examples/dit_worker"
AGENT="$PWD/target/$PROFILE/libgpuspan.so"
CLI="target/$PROFILE/gpuspan"
ARGS=(--steps "$STEPS" --blocks "$BLOCKS" --requests "$REQUESTS" "${EXTRA[@]}")

rm -rf "$OUT"
mkdir -p "$OUT/runs"
nvidia-smi -L | tee "$OUT/gpu.txt"
if [ "${GPUSPAN_VALIDATE_ALLOW_SIM:-}" = 1 ]; then
  "$WORKER" --check >"$OUT/check.txt" || echo "gpu-validate: simulator: --check results are meaningless (the sim computes nothing)"
else
  "$WORKER" --check | tee "$OUT/check.txt"
fi

failed() { # DIR
  echo "gpu-validate: dit_worker failed in $1:" >&2
  tail -n 20 "$1/worker.log" >&2
  exit 1
}
run_one() { # MODE N
  local mode=$1 n=$2 dir="$OUT/runs/$1-$2"
  mkdir -p "$dir"
  if [ "$mode" = none ]; then
    "$WORKER" "${ARGS[@]}" --truth "$dir/truth.json" >"$dir/worker.log" 2>&1 || failed "$dir"
  else
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    LD_PRELOAD="$AGENT" GPUSPAN_MODE="$mode" GPUSPAN_OUT="$dir" GPUSPAN_METRICS_ADDR="127.0.0.1:$port" \
      "$WORKER" "${ARGS[@]}" --truth "$dir/truth.json" --scrape "127.0.0.1:$port" --scrape-out "$dir/metrics.prom" \
      >"$dir/worker.log" 2>&1 || failed "$dir"
    if compgen -G "$dir/capture-*.json.gz" >/dev/null; then
      "$CLI" stats "$dir" --json >"$dir/stats.json"
    elif [ "$mode" = fine ]; then
      echo "gpu-validate: fine run $n wrote no capture (see $dir/worker.log)" >&2
    fi
  fi
  tail -n 1 "$dir/worker.log"
}
for n in $(seq 1 "$RUNS"); do
  for mode in none coarse fine; do
    run_one "$mode" "$n"
  done
done
"$CLI" waterfall "$OUT/runs/fine-1" --html "$OUT/waterfall.html" >/dev/null \
  || echo "gpu-validate: waterfall failed" >&2

if [ -n "$REPLAY_TRACE" ] && [ -f "$REPLAY_TRACE" ]; then
  mkdir -p "$OUT/replay"
  LD_PRELOAD="$AGENT" GPUSPAN_MODE=fine GPUSPAN_OUT="$OUT/replay" \
    "$WORKER" --replay "$REPLAY_TRACE" --requests 1 --truth "$OUT/replay/truth.json" >"$OUT/replay/worker.log" 2>&1
  "$CLI" stats "$OUT/replay" --json >"$OUT/replay/stats.json"
fi

if command -v nsys >/dev/null 2>&1; then
  mkdir -p "$OUT/nsys"
  nsys profile --trace=cuda,nvtx --export=sqlite --force-overwrite=true -o "$OUT/nsys/dit" \
    "$WORKER" "${ARGS[@]}" --truth "$OUT/nsys/truth.json" >"$OUT/nsys/nsys.log" 2>&1 \
    || echo "gpu-validate: nsys profile failed (see $OUT/nsys/nsys.log)" >&2
fi

python3 scripts/gpu_validate_report.py "$OUT" | tee "$OUT/report.txt"
exit "${PIPESTATUS[0]}"

#!/usr/bin/env bash
# The one command that runs every gpuspan test (CI runs exactly this, via .ci/run).
# Installs what the tests need into ignored folders of the repo, then builds and tests:
#   .venv/  NVIDIA's real CUPTI 12.9 and 13.5 and NVTX libraries/headers from PyPI wheels
#           (they load without a GPU: layout checks, "real libcupti, no driver" test),
#           and the OpenTelemetry Python SDK + OTLP/HTTP exporter (the Python worker test).
#   Debian  `prometheus` (prometheus + promtool: the scrape and exposition tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import importlib.metadata as m; [m.version(p) for p in ("nvidia-cuda-cupti-cu12","nvidia-cuda-cupti","nvidia-nvtx-cu12","opentelemetry-sdk","opentelemetry-exporter-otlp-proto-http")]' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check \
    nvidia-cuda-cupti-cu12==12.9.79 nvidia-cuda-cupti==13.5.25 nvidia-nvtx-cu12==12.9.79 \
    opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
fi
export GPUSPAN_VENV="$PWD/.venv"

# Every workspace artifact (libgpuspan.so, libgpuspan_simgpu.so, gpuspan-replay, gpuspan)
# must exist before the end-to-end tests start processes with them.
cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast "$@"

#!/usr/bin/env bash
# The one command that runs every gpuspan test (CI runs exactly this, via .ci/run).
# Installs what the tests need into ignored folders of the repo, then builds and tests:
#   .venv/  NVIDIA's real CUPTI 12.9 and 13.5 and NVTX libraries/headers from PyPI wheels
#           (they load without a GPU: layout checks, "real libcupti, no driver" test),
#           and the OpenTelemetry Python SDK + OTLP/HTTP exporter (the Python worker test).
#           HolisticTraceAnalysis 0.5.0 (the HTA comparison tests).
#           The CUPTI headers of every release 12.0 … 13.5 (.venv/cupti-headers/, from the
#           wheels; scripts/fetch-cupti-headers.sh): the record-layout table's test.
#           NVRTC 12.9 + ptxas (nvidia-cuda-nvrtc-cu12, nvidia-cuda-nvcc-cu12): kernels/*.cu → sm_90 PTX,
#           ptxas spill check.
#   Debian  `prometheus` (prometheus + promtool: the scrape and exposition tests) and
#           `chromium` (the HTML waterfall's load-time test).
#   npm     @paulirish/trace_engine and playwright-core into tests/interop/node_modules.
#   .venv-torch/  torch 2.15 (PyPI's wheel; runs on the CPU), diffusers and transformers,
#           pinned: the Python auto-instrumentation tests build tiny pipelines with them. A
#           venv of its own because torch's CUDA 13.2 wheels would replace .venv's CUPTI 13.5.
#           Installed in the background while cargo builds; skipped when present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_PACKAGES=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || APT_PACKAGES+=(prometheus)
[ -x /usr/bin/chromium ] || APT_PACKAGES+=(chromium)
if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import importlib.metadata as m; [m.version(p) for p in ("nvidia-cuda-cupti-cu12","nvidia-cuda-cupti","nvidia-nvtx-cu12","opentelemetry-sdk","opentelemetry-exporter-otlp-proto-http")]' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check \
    nvidia-cuda-cupti-cu12==12.9.79 nvidia-cuda-cupti==13.5.25 nvidia-nvtx-cu12==12.9.79 \
    opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
fi
# HolisticTraceAnalysis without its notebook / test extras (jupyterlab, pytest), which it
# never imports: the six packages below are what it loads.
if ! .venv/bin/python -c 'import hta.trace_analysis' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps HolisticTraceAnalysis==0.5.0
  .venv/bin/pip install --quiet --disable-pip-version-check \
    pandas==3.1.1 numpy==2.4.6 plotly==7.1.0 networkx==3.6.1 PyYAML==6.0.3 psutil==7.2.2
fi
# jsonschema: the JSON log lines are validated against docs/log-schema.json (tests/e2e/logs.rs).
if ! .venv/bin/python -c 'import jsonschema' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check jsonschema==4.25.1
fi
# NVRTC (build.rs compiles kernels/*.cu to sm_90 PTX with it) and ptxas (tests/kernels_ptxas.rs).
if ! .venv/bin/python -c 'import importlib.metadata as m; [m.version(p) for p in ("nvidia-cuda-nvrtc-cu12","nvidia-cuda-nvcc-cu12")]' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-nvcc-cu12==12.9.86
  touch kernels/*.cu
fi
export GPUSPAN_VENV="$PWD/.venv"
# The headers of every CUPTI release the decoder knows (12.0 … 13.5), for the layout test.
scripts/fetch-cupti-headers.sh .venv

# Chrome DevTools' trace engine and playwright-core (npm; the waterfall page's browser test
# drives Debian's chromium with it), pinned by tests/interop/package-lock.json.
if [ ! -f tests/interop/node_modules/@paulirish/trace_engine/package.json ] \
  || [ ! -f tests/interop/node_modules/playwright-core/package.json ]; then
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi

TORCH_PINS=(torch==2.15.0 diffusers==0.42.1 transformers==5.24.0)
TORCH_PID=""
if ! .venv-torch/bin/python -c 'import torch, diffusers, transformers' 2>/dev/null; then
  [ -x .venv-torch/bin/python ] || python3 -m venv .venv-torch
  .venv-torch/bin/pip install --quiet --disable-pip-version-check "${TORCH_PINS[@]}" > .venv-torch/install.log 2>&1 &
  TORCH_PID=$!
fi
export GPUSPAN_TORCH_VENV="$PWD/.venv-torch"

# Every workspace artifact (libgpuspan.so, libgpuspan_simgpu.so, gpuspan-replay, gpuspan)
# must exist before the end-to-end tests start processes with them.
cargo build --workspace --all-targets
# Every doc comment's links resolve (a renamed item leaves no dangling link).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
if [ -n "$TORCH_PID" ] && ! wait "$TORCH_PID"; then
  cat .venv-torch/install.log >&2
  echo "scripts/test.sh: installing ${TORCH_PINS[*]} into .venv-torch failed" >&2
  exit 1
fi
cargo nextest run --workspace --no-fail-fast "$@"
# Three minutes of soak (issue 13, item 3): windows, scrapes and OTLP outages against a
# simulated worker, exact span accounting (scripts/soak.sh; long runs by hand).
scripts/soak.sh --minutes 3
# The Python wheel (issue 15, item 7): built with maturin, pip-installed into a fresh venv,
# the CLI and the Python API run from there; and `cargo install` of the CLI.
time scripts/check-wheel.sh
# The GPU validation script: without a GPU it runs the kernel compile checks and says so.
scripts/gpu-validate.sh target/gpu-validate

#!/usr/bin/env bash
# Unpacks the CUPTI headers of every release gpuspan decodes (gpuspan_cupti::layouts::RELEASES)
# from NVIDIA's PyPI wheels into .venv/cupti-headers/<major.minor>/, for
# crates/gpuspan-cupti/tests/header_layout.rs. Only the include/ directory of each wheel is
# kept; a release already unpacked is skipped (pip's cache keeps the wheels).
# Usage: scripts/fetch-cupti-headers.sh [VENV]   (default .venv; needs VENV/bin/pip)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
DEST="$VENV/cupti-headers"
mkdir -p "$DEST"
# major.minor → the newest wheel of that release line (there is no 12.7).
RELEASES="12.0:nvidia-cuda-cupti-cu12==12.0.146 12.1:nvidia-cuda-cupti-cu12==12.1.105
12.2:nvidia-cuda-cupti-cu12==12.2.142 12.3:nvidia-cuda-cupti-cu12==12.3.101
12.4:nvidia-cuda-cupti-cu12==12.4.127 12.5:nvidia-cuda-cupti-cu12==12.5.82
12.6:nvidia-cuda-cupti-cu12==12.6.80 12.8:nvidia-cuda-cupti-cu12==12.8.90
12.9:nvidia-cuda-cupti-cu12==12.9.79 13.0:nvidia-cuda-cupti==13.0.85
13.1:nvidia-cuda-cupti==13.1.115 13.2:nvidia-cuda-cupti==13.2.86
13.3:nvidia-cuda-cupti==13.3.75 13.4:nvidia-cuda-cupti==13.4.92 13.5:nvidia-cuda-cupti==13.5.25"
PLATFORMS=""
for p in manylinux1_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_25_x86_64 manylinux_2_28_x86_64; do
  PLATFORMS="$PLATFORMS --platform $p"
done
for r in $RELEASES; do
  name="${r%%:*}"
  req="${r#*:}"
  [ -f "$DEST/$name/cupti_activity.h" ] && continue
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 $PLATFORMS -d "$tmp" "$req"
  "$VENV/bin/python" - "$tmp" "$DEST/$name" <<'PY'
import glob, os, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(os.path.join(src, "*.whl"))
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        parts = n.split("/")
        if "include" in parts and not n.endswith("/"):
            rel = "/".join(parts[parts.index("include") + 1:])
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            with open(os.path.join(dest, rel), "wb") as f:
                f.write(z.read(n))
PY
  rm -rf "$tmp"
done

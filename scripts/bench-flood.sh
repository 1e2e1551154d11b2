#!/usr/bin/env bash
# The flood (issue 14, item 6: goal: agent RSS at most 128 MB, every drop counted by reason):
# the simulated worker replays wan2.1 requests (5 steps, ≈ 102,000 kernels each) on the
# simulator's virtual clock, as fast as it can (the GPU is never the limit), for SECONDS of
# wall time (default 60), once with the agent off and once in fine mode with rolling capture
# segments (GPUSPAN_CAPTURE_SEGMENT_STEPS, default 10). Samples the worker's RSS every 100 ms
# and prints, for each run: peak RSS, the RSS range of the first and last tenth of the run
# (growth would show there), kernels replayed and kernels per second; then the agent's share
# (fine peak minus off peak) against the goal, and every drop counter of the last segment's
# `gpuspan.summary` (cumulative over the process) next to the records decoded. Not part of
# the test command.
# usage: scripts/bench-flood.sh [SECONDS]   (GPUSPAN_* variables are passed through)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p gpuspan-cli -p gpuspan-simgpu -p gpuspan-preload
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
python3 - "$OUT" "${1:-60}" <<'PY'
import glob, gzip, json, os, re, subprocess, sys, time
out, seconds = sys.argv[1], int(sys.argv[2])

def run(mode):
    """Peak RSS MB, (first tenth min, max), (last tenth min, max), kernels, wall s, log."""
    env = {**os.environ, "GPUSPAN_METRICS_ADDR": "off"}
    env.setdefault("GPUSPAN_CAPTURE_SEGMENT_STEPS", "10")
    dest = f"{out}/{mode}"
    t0 = time.time()
    p = subprocess.Popen(["target/release/gpuspan", "run", "--sim", "--mode", mode, "--out", dest, "--",
                          "target/release/gpuspan-replay", "wan2.1", "--steps", "5", "--requests", "0",
                          "--duration", f"{seconds}s"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    pid, samples = None, []
    while p.poll() is None:
        if pid is None:
            r = subprocess.run(["pgrep", "-P", str(p.pid), "-x", "gpuspan-replay"], stdout=subprocess.PIPE, text=True)
            pid = int(r.stdout.split()[0]) if r.stdout.split() else None
        if pid is not None:
            try:
                s = open(f"/proc/{pid}/status").read()
                samples.append((time.time() - t0, int(re.search(r"VmHWM:\s+(\d+)", s).group(1)) / 1024,
                                int(re.search(r"VmRSS:\s+(\d+)", s).group(1)) / 1024))
            except (OSError, AttributeError):
                pass
        time.sleep(0.1)
    wall = time.time() - t0
    log = p.stdout.read()
    if p.returncode != 0:
        sys.exit(f"bench-flood: {mode} run failed ({p.returncode}):\n{log[-2000:]}")
    m = re.search(r"replayed (\d+) kernels", log)
    kernels = int(m.group(1)) if m else 0
    peak = max(s[1] for s in samples)
    end = samples[-1][0]
    first = [s[2] for s in samples if s[0] <= end / 10]
    last = [s[2] for s in samples if s[0] >= end * 0.9]
    return peak, (min(first), max(first)), (min(last), max(last)), kernels, wall, dest

rows = {}
for mode in ("off", "fine"):
    rows[mode] = run(mode)
    peak, first, last, kernels, wall, _ = rows[mode]
    print(f"{mode:<5} peak RSS {peak:7.1f} MB   RSS first tenth {first[0]:6.1f}-{first[1]:6.1f} MB, "
          f"last tenth {last[0]:6.1f}-{last[1]:6.1f} MB   {kernels:>11,} kernels in {wall:5.1f} s "
          f"({kernels / wall / 1e6:.2f} M/s)")
share = rows["fine"][0] - rows["off"][0]
print(f"agent share of peak RSS (fine - off): {share:.1f} MB; goal <= 128 MB: {'met' if share <= 128 else 'NOT met'}")
segs = sorted(glob.glob(f"{rows['fine'][5]}/capture-*.json.gz"), key=os.path.getmtime)
print(f"capture segments kept: {len(segs)} (GPUSPAN_CAPTURE_KEEP)")
if segs:
    with gzip.open(segs[-1]) as f:
        ev = json.load(f)["traceEvents"]
    summary = next((e["args"] for e in ev if e.get("name") == "gpuspan.summary"), {})
    print(f"records decoded: {summary.get('gpuspan.records_decoded', 0):,}; drops by reason (last segment's summary):")
    for k, v in sorted(summary.items()):
        if any(w in k for w in ("dropped", "declined", "cut", "unread", "omitted", "timed_out", "too_deep", "late")):
            print(f"  {k:<40} {v:>12,}")
PY

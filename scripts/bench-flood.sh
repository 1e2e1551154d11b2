#!/usr/bin/env bash
# The flood (issue 14, item 6: "1 M kernels per second of simulated GPU time for 60 s into
# fine mode with rolling segments: agent RSS at most 128 MB, every drop counted by reason").
#
# Default (FLOOD=gpu, the goal as worded): the simulated worker replays stdit at 50 steps
# (about 66,000 kernels a request) with its forward passes as CUDA graphs (`--cuda-graph`)
# and every kernel KERNEL_NS long (default 500 ns, `--kernel-ns`: host gaps dropped), which
# the simulated H100 runs at about 1.05 M kernels per simulated second (the eager text
# encoder and VAE launches, 3 µs of host time each, are the rest). stdit rather than wan2.1:
# a 50-step wan2.1 request is 613,000 kernels, and the replay's own op list for it (about
# 300 MB, rebuilt each request) made the worker's RSS, and so the agent's share, vary by
# 150 MB between identical runs. Two probe runs with the agent off (1 and 3 requests)
# measure the simulated time of the first request and of each later one
# (`sim clock: elapsed_ns`); the flood then runs enough requests for SECONDS (default 60)
# of simulated time, once with the agent off and once in fine mode with rolling capture
# segments (GPUSPAN_CAPTURE_SEGMENT_STEPS, default 10).
# FLOOD=wall replays wan2.1's real, millisecond kernels (5 steps a request) for SECONDS of
# wall time as fast as the CPU allows instead: the agent's sustained rate on this machine.
#
# Samples the worker's RSS every 100 ms and prints, for each run: peak RSS, the RSS range of
# the first and last tenth of the run (growth would show there), kernels replayed, kernels
# per simulated second (FLOOD=gpu) and per wall second; then the agent's share (fine peak
# minus off peak) against the goal, and every drop counter of the last segment's
# `gpuspan.summary` (cumulative over the process) next to the records decoded. Not part of
# the test command.
# usage: [FLOOD=gpu|wall] [KERNEL_NS=700] scripts/bench-flood.sh [SECONDS]   (GPUSPAN_* variables are passed through)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p gpuspan-cli -p gpuspan-simgpu -p gpuspan-preload
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
python3 - "$OUT" "${1:-60}" <<'PY'
import glob, gzip, json, os, re, subprocess, sys, time
out, seconds = sys.argv[1], int(sys.argv[2])
flood = os.environ.get("FLOOD", "gpu")
if flood not in ("gpu", "wall"):
    sys.exit(f"bench-flood: FLOOD={flood}: expected gpu or wall")
kernel_ns = int(os.environ.get("KERNEL_NS", "500"))

def sim_elapsed_ns(log):
    m = re.search(r"sim clock: elapsed_ns=(\d+)", log)
    return int(m.group(1)) if m else 0

if flood == "gpu":
    workload = ["stdit", "--steps", "50", "--cuda-graph", "--kernel-ns", str(kernel_ns)]
    def probe(n):
        p = subprocess.run(["target/release/gpuspan", "run", "--sim", "--mode", "off", "--out", f"{out}/probe", "--",
                            "target/release/gpuspan-replay", *workload, "--requests", str(n)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "GPUSPAN_METRICS_ADDR": "off"})
        if p.returncode != 0 or sim_elapsed_ns(p.stdout) == 0:
            sys.exit(f"bench-flood: a probe run failed:\n{p.stdout[-2000:]}")
        return sim_elapsed_ns(p.stdout)
    first_ns = probe(1)
    per_request_ns = max(1, (probe(3) - first_ns) // 2)
    requests = 1 + max(0, -(-(seconds * 10**9 - first_ns) // per_request_ns))
    print(f"flood: stdit, 50 steps, CUDA graphs, {kernel_ns} ns kernels; {per_request_ns / 1e6:.1f} ms of simulated "
          f"time a request; {requests} requests for {seconds} s of simulated time")
    workload += ["--requests", str(requests)]
else:
    workload = ["wan2.1", "--steps", "5", "--requests", "0", "--duration", f"{seconds}s"]
    print(f"flood: wan2.1, 5 steps, real kernel durations, for {seconds} s of wall time")

def run(mode):
    """Peak RSS MB, (first tenth min, max), (last tenth min, max), kernels, wall s, dest, simulated ns."""
    env = {**os.environ, "GPUSPAN_METRICS_ADDR": "off"}
    env.setdefault("GPUSPAN_CAPTURE_SEGMENT_STEPS", "10")
    dest = f"{out}/{mode}"
    t0 = time.time()
    p = subprocess.Popen(["target/release/gpuspan", "run", "--sim", "--mode", mode, "--out", dest, "--",
                          "target/release/gpuspan-replay", *workload],
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
    return peak, (min(first), max(first)), (min(last), max(last)), kernels, wall, dest, sim_elapsed_ns(log)

rows = {}
for mode in ("off", "fine"):
    rows[mode] = run(mode)
    peak, first, last, kernels, wall, _, sim_ns = rows[mode]
    per_sim = f"{kernels / (sim_ns / 1e9) / 1e6:.2f} M per simulated s ({sim_ns / 1e9:.1f} s), " if flood == "gpu" and sim_ns else ""
    print(f"{mode:<5} peak RSS {peak:7.1f} MB   RSS first tenth {first[0]:6.1f}-{first[1]:6.1f} MB, "
          f"last tenth {last[0]:6.1f}-{last[1]:6.1f} MB   {kernels:>11,} kernels: {per_sim}"
          f"{kernels / wall / 1e6:.2f} M per wall s ({wall:.1f} s)")
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

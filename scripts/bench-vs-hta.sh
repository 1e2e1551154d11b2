#!/usr/bin/env bash
# `gpuspan stats` against Holistic Trace Analysis (HTA) on the same traces (issue 14, item 4:
# goal >= 40x faster than HTA's kernel breakdown, at most 64 MB of memory). For each real GPU
# trace of ../shared/fixtures/traces/ (and any trace given as an argument), side by side in
# one run, best of ROUNDS (default 3): gpuspan's wall time and peak RSS for
# `gpuspan stats --json TRACE`, and HTA's wall time for loading the trace and computing
# `get_gpu_kernel_breakdown` (measured inside its process, after pandas and HTA are imported),
# then the ratio. gpuspan's wall time is that of the process alone, started directly (its
# start and exit included); its peak RSS comes from separate runs under GNU time, whose own
# start and wait added about 1 ms to a run of /bin/true and 2 ms (best of 12) to 6.5 ms
# (median) to one on a100-hta-control (the figures before 2026-12-05 hold that). Not part
# of the test command.
# usage: scripts/bench-vs-hta.sh [TRACE...]   (needs the .venv of scripts/test.sh, which has HTA,
# and GNU time, apt package `time`: peak RSS is read by it, because a child's wait4 ru_maxrss
# also counts the spawning process's peak when it is started with vfork / posix_spawn)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p gpuspan-cli
PY="${GPUSPAN_VENV:-$PWD/.venv}/bin/python"
[ -x "$PY" ] || { echo "bench-vs-hta.sh: $PY missing: run scripts/test.sh once" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench-vs-hta.sh: /usr/bin/time missing: apt-get install time" >&2; exit 2; }
TRACES=("$@")
[ ${#TRACES[@]} -gt 0 ] || TRACES=(../shared/fixtures/traces/*.json.gz)
"$PY" - "${ROUNDS:-3}" "${TRACES[@]}" <<'PY'
import json, os, subprocess, sys, time
rounds, traces = int(sys.argv[1]), sys.argv[2:]
HTA = r'''
import contextlib, io, json, logging, os, sys, tempfile, time
sys.path.insert(0, "tests/interop")
from hta_report import _trace_dir
logging.disable(logging.WARNING)
with tempfile.TemporaryDirectory(prefix="hta-") as tmp, contextlib.redirect_stdout(io.StringIO()):
    d = _trace_dir(sys.argv[1], tmp)
    from hta.trace_analysis import TraceAnalysis
    t0 = time.perf_counter()
    a = TraceAnalysis(trace_dir=d, include_last_profiler_step=True)
    a.get_gpu_kernel_breakdown(visualize=False, duration_ratio=1.0, num_kernels=1 << 30, include_memory_kernels=True)
    took = time.perf_counter() - t0
print(json.dumps({"seconds": took}))
'''

def run(cmd):
    """(wall seconds, stdout) of one run of `cmd`, started directly."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench-vs-hta: {cmd} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return wall, p.stdout

def peak_rss_kib(cmd):
    """Peak RSS, KiB, of one run of `cmd` under GNU time (not timed: see the header)."""
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit(f"bench-vs-hta: {cmd} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return int(p.stderr.decode().split()[-1])

print(f"{'trace':<34} {'MB json':>8} {'gpuspan ms':>10} {'MB RSS':>7} {'HTA ms':>9} {'ratio':>7}  (goals: >= 40x, <= 64 MB)")
for t in traces:
    cmd = ["target/release/gpuspan", "stats", "--json", t]
    g_wall = min(run(cmd)[0] for _ in range(rounds))
    g_rss = max(peak_rss_kib(cmd) for _ in range(rounds)) / 1024
    h = min(json.loads(run([sys.executable, "-c", HTA, t])[1])["seconds"] for _ in range(rounds))
    import gzip
    with (gzip.open(t) if t.endswith(".gz") else open(t, "rb")) as f:
        mb = sum(len(c) for c in iter(lambda: f.read(1 << 20), b"")) / 1e6
    ratio = h / g_wall
    print(f"{os.path.basename(t):<34} {mb:8.1f} {g_wall * 1e3:10.1f} {g_rss:7.1f} {h * 1e3:9.1f} {ratio:6.1f}x"
          f"  {'met' if ratio >= 40 and g_rss <= 64 else 'NOT met'}")
PY

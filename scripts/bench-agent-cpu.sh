#!/usr/bin/env bash
# Agent CPU per kernel, all in (issue 14, item 1: goal <= 1 us in fine mode, <= 300 ns for
# the collector without the capture write): the same simulated replay run with the agent
# off, in coarse mode, in fine mode, and in fine mode with an output directory that cannot be
# created (`--out /dev/null/no-capture`: everything but the capture, whose join and write
# are skipped once the directory fails), side by side, ROUNDS times each (interleaved);
# prints each mode's best CPU time (user + sys of the whole `gpuspan run` process tree), the
# agent's CPU per kernel over `off`, and the ratios; then the same per kernel split between
# the worker's thread (the replay's `worker thread cpu_ns` line: CUPTI's record writing,
# which the simulator does on that thread, and the agent's callbacks) and the rest of the
# process tree (the agent's own threads: collector, exit join and write, deflate; and the
# simulator's CUPTI thread); then the agent's own threads as the agent measures them (its
# exit report at GPUSPAN_LOG=info, "agent threads' CPU": each thread's CPU clock, so neither
# the simulator's work nor the worker's is in it): collector, exit (the last decode, spans,
# the capture's join and JSON) and deflate workers. The whole-tree figures also hold the
# simulator's emulation of CUPTI's record writing on the worker thread, which a real worker
# pays to CUPTI; the collector's figure holds the simulator's cuptiActivityGetNextRecord.
# Not part of the test command.
# With AGENT_B=/path/to/libgpuspan.so (another build of the agent, e.g. the previous commit's),
# the fine modes also run with that library, alternated with this build's in every round,
# and the agent's own threads are printed for both (best and median of the rounds) with
# their ratio: an A/B comparison on one noisy machine.
# usage: scripts/bench-agent-cpu.sh [REPLAY ARGS...]   (default: wan2.1 --steps 5)
# environment: ROUNDS (default 3), AGENT_B (above), GPUSPAN_CAPTURE_SEGMENT_STEPS (passed
# through).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p gpuspan-cli -p gpuspan-simgpu -p gpuspan-preload
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(wan2.1 --steps 5)
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
python3 - "$OUT" "${ROUNDS:-3}" "${ARGS[@]}" <<'PY'
import os, re, resource, statistics, subprocess, sys
out, rounds, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
modes = ["off", "coarse", "fine", "fine-no-write"]
agent_b = os.environ.get("AGENT_B")
if agent_b and not os.path.isfile(agent_b):
    sys.exit(f"bench-agent-cpu: AGENT_B={agent_b} is not a file")
best, kernels, worker, own, own_all = {}, None, {}, {}, {}
for r in range(rounds):
    for m in modes + (["fine@B", "fine-no-write@B"] if agent_b else []):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        base = m.removesuffix("@B")
        mode, dest = (("fine", "/dev/null/no-capture") if base == "fine-no-write" else (base, f"{out}/{m}-{r}"))
        env = {**os.environ, "GPUSPAN_METRICS_ADDR": "off", "GPUSPAN_LOG": "info"}
        if m.endswith("@B"):
            env["GPUSPAN_AGENT_LIB"] = agent_b
        p = subprocess.run(["target/release/gpuspan", "run", "--sim", "--mode", mode, "--out", dest, "--",
                            "target/release/gpuspan-replay", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            sys.exit(f"bench-agent-cpu: mode {m} failed ({p.returncode})")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        w = re.search(r"worker thread cpu_ns (\d+)", p.stdout)
        if m not in best or cpu < best[m]:
            best[m], worker[m] = cpu, int(w.group(1)) / 1e9 if w else None
        # The agent's own threads, as the agent measures them (its exit report, fine modes).
        t = re.search(r"agent threads' CPU: collector ([\d.]+) ms, exit ([\d.]+) ms, deflate ([\d.]+) ms", p.stderr)
        if t:
            v = tuple(float(x) / 1e3 for x in t.groups())
            own[m] = v if m not in own or sum(v) < sum(own[m]) else own[m]
            own_all.setdefault(m, []).append(v)
        k = re.search(r"replayed (\d+) kernels", p.stdout)
        kernels = int(k.group(1)) if k else kernels
if not kernels:
    sys.exit("bench-agent-cpu: no 'replayed N kernels' line")
print(f"replay: {' '.join(args)}: {kernels} kernels; best of {rounds} rounds, CPU of the whole process tree")
for m in modes:  # this build's rows (AGENT_B's are below)
    extra = (best[m] - best["off"]) / kernels * 1e9
    line = f"  {m:<13} {best[m]:7.3f} s  ({best[m] / best['off']:5.2f}x off)"
    if m != "off":
        line += f"  agent {extra:8.0f} ns per kernel"
        if m == "fine":
            line += "  (goal <= 1000 ns)"
        if m == "fine-no-write":
            line += "  (goal <= 300 ns)"
    print(line)
if all(worker.get(m) is not None for m in modes):
    print("split over off, ns per kernel: worker thread (CUPTI's records, here the simulator's, and the agent's callbacks) + the rest (the agent's threads)")
    for m in modes[1:]:
        w = (worker[m] - worker["off"]) / kernels * 1e9
        r = ((best[m] - worker[m]) - (best["off"] - worker["off"])) / kernels * 1e9
        print(f"  {m:<13} worker thread {w:8.0f}   rest {r:8.0f}")
if own:
    print("the agent's own threads, as it measures them (thread CPU clocks, best round), ns per kernel:")
    for m in ("fine", "fine-no-write"):
        if m in own:
            c, e, d = (x / kernels * 1e9 for x in own[m])
            goal = "  (goal <= 1000 ns)" if m == "fine" else "  (collector + exit: goal <= 300 ns)"
            print(f"  {m:<13} collector {c:6.0f}  exit {e:6.0f}  deflate {d:6.0f}  all {c + e + d:6.0f}{goal}")
if agent_b:
    print(f"A/B, the agent's own threads (ns per kernel, best / median of {rounds} rounds): this build against AGENT_B={agent_b}")
    for m in ("fine", "fine-no-write"):
        if m in own_all and m + "@B" in own_all:
            def fig(k, parts):
                sums = [sum(v[i] for i in parts) / kernels * 1e9 for v in own_all[k]]
                return min(sums), statistics.median(sums)
            parts = (0, 1, 2) if m == "fine" else (0, 1)
            (a_best, a_med), (b_best, b_med) = fig(m, parts), fig(m + "@B", parts)
            what = "all" if m == "fine" else "collector + exit"
            print(f"  {m:<13} {what}: this {a_best:6.0f} / {a_med:6.0f}   B {b_best:6.0f} / {b_med:6.0f}   this / B {a_best / b_best:5.3f} / {a_med / b_med:5.3f}")
PY

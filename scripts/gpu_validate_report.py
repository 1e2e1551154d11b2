#!/usr/bin/env python3
"""Table of scripts/gpu-validate.sh: what gpuspan measured vs the worker's own ground truth.

Usage: gpu_validate_report.py OUT_DIR   (stdlib only; docs/gpu-validation.md explains it)

Reads OUT_DIR/runs/<mode>-<n>/ for mode in none, coarse, fine:
  truth.json          examples/dit_worker.rs --truth (CUDA-event times, ms; launches)
  stats.json          `gpuspan stats DIR --json` (agent runs; times in µs)
  capture-<pid>.json.gz  the agent's capture, fine mode (its `gpuspan.summary` drop counters)
  metrics.prom        the agent's /metrics at the end of the run (dit_worker --scrape):
                      stage histograms and gpuspan_records_dropped_total{reason}
and, when present, OUT_DIR/replay/ (a Kineto trace replayed as spin kernels, fine mode)
and OUT_DIR/nsys/dit.sqlite (the same workload under `nsys profile`).

Agent stage times: fine mode from the capture (kernel durations summed per stage, `gpuspan
stats`); both modes from the metrics (`dit_inference_step_duration_ms_sum` per step_type,
`vae_decode_duration_seconds_sum`; no norm). Coarse mode writes no capture (CUDA events
only), so its column is the metrics'.

Prints the table and writes OUT_DIR/report.json. Exit status 1 when a check fails:
fine-mode kernels captured != launched, any dropped record, a stage time outside the
tolerance, a fine-mode run without capture or an agent run without metrics; 0 otherwise.
Tolerance of a stage (environment):
|agent - truth| <= max(GPUSPAN_VALIDATE_STAGE_PCT % of truth (default 5),
GPUSPAN_VALIDATE_SLACK_US (default 5) x kernels in the stage), because the truth is an
event pair around the stage and so includes the launch gaps between its kernels, while the
agent's fine-mode stage time sums kernel durations.
"""

import gzip
import json
import os
import sqlite3
import sys
from pathlib import Path

MODES = ("none", "coarse", "fine")
STAGE_ORDER = ["attention.spatial", "attention.temporal", "attention.cross", "ffn", "norm", "vae.decode"]


def load_json(path):
    if not path.is_file():
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def summary_args(capture):
    """args of the capture's `gpuspan.summary` event ({} when absent)."""
    if not capture:
        return {}
    for e in capture.get("traceEvents", []):
        if e.get("name") == "gpuspan.summary":
            return e.get("args", {})
    return {}


def dropped(args):
    """Sum of every drop / loss counter of the summary, and the counters themselves."""
    keys = [k for k in args if k.startswith("gpuspan.records_dropped_")]
    keys += [k for k in ("gpuspan.scope_events_dropped", "gpuspan.buffers_dropped") if k in args]
    return sum(int(args[k]) for k in keys), {k: args[k] for k in sorted(keys)}


STEP_TYPES = {"spatial_attn": "attention.spatial", "temporal_attn": "attention.temporal",
              "cross_attn": "attention.cross", "ffn": "ffn"}


def capture_stage_ms(stats):
    """Fine mode: per-stage kernel time (ms) from `gpuspan stats --json` (None without kernels)."""
    if not stats or stats.get("kernel_count", 0) == 0:
        return None
    return {s["stage"]: s["total_us"] / 1000.0 for s in stats.get("stages", [])}


def parse_prom(path):
    """{(metric, frozenset(labels)): value} of a Prometheus text exposition (None if absent)."""
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            labels = frozenset(tuple(kv.split("=", 1)) for kv in rest.rstrip("}").replace('"', "").split(",") if "=" in kv)
        else:
            name, labels = name_labels, frozenset()
        try:
            out[(name, labels)] = float(value)
        except ValueError:
            pass
    return out


def metrics_stage_ms(prom):
    """Per-stage totals (ms) from the agent's metrics (None without a scrape)."""
    if prom is None:
        return None
    out = {}
    for (name, labels), v in prom.items():
        lab = dict(labels)
        if name == "dit_inference_step_duration_ms_sum" and lab.get("step_type") in STEP_TYPES:
            st = STEP_TYPES[lab["step_type"]]
            out[st] = out.get(st, 0.0) + v
        elif name == "vae_decode_duration_seconds_sum":
            out["vae.decode"] = out.get("vae.decode", 0.0) + v * 1000.0
    return out


def metrics_dropped(prom):
    """`gpuspan_records_dropped_total` per reason, but OTLP span export losses (no collector
    in these runs), from the metrics ({} without a scrape)."""
    if prom is None:
        return {}
    return {f"metrics.{dict(lab).get('reason', '?')}": int(v) for (name, lab), v in prom.items()
            if name == "gpuspan_records_dropped_total" and dict(lab).get("reason") != "otlp_spans"}


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def step_ms(truth):
    """Step times of every request but the first (warm-up), or of all when there is one."""
    reqs = truth.get("requests", [])
    use = reqs[1:] if len(reqs) > 1 else reqs
    return [s for r in use for s in r.get("step_ms", [])]


def fmt(x, nd=3):
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    pct_tol = float(os.environ.get("GPUSPAN_VALIDATE_STAGE_PCT", "5"))
    slack_us = float(os.environ.get("GPUSPAN_VALIDATE_SLACK_US", "5"))
    runs = {m: [] for m in MODES}
    for d in sorted((out / "runs").glob("*-*")):
        mode = d.name.rsplit("-", 1)[0]
        if mode not in runs:
            continue
        truth = load_json(d / "truth.json")
        if truth is None:
            continue
        capture = next((load_json(c) for c in sorted(d.glob("capture-*.json.gz"))), None)
        stats = load_json(d / "stats.json")
        prom = parse_prom(d / "metrics.prom")
        runs[mode].append({
            "dir": str(d),
            "truth": truth,
            "stats": stats,
            "capture_present": capture is not None,
            "summary": summary_args(capture),
            "capture_ms": capture_stage_ms(stats),
            "metrics_ms": metrics_stage_ms(prom),
            "metrics_dropped": metrics_dropped(prom),
        })
    failures = []
    lines = []
    p = lines.append
    any_truth = next((r["truth"] for m in MODES for r in runs[m]), None)
    if any_truth is None:
        print(f"no runs with truth.json under {out}/runs", file=sys.stderr)
        return 1
    cfg = any_truth.get("config", {})
    p(f"gpuspan GPU validation: {any_truth.get('device')} ({any_truth.get('streams')} streams)")
    p(f"workload: {cfg.get('requests')} requests x {cfg.get('steps')} steps x {cfg.get('blocks')} blocks + VAE decode; "
      f"runs per mode: " + ", ".join(f"{m} {len(runs[m])}" for m in MODES))
    report = {"device": any_truth.get("device"), "modes": {}, "failures": failures}

    for mode in ("fine", "coarse"):
        rs = runs[mode]
        if not rs:
            continue
        p("")
        p(f"[{mode}] per-stage GPU time, mean over runs (truth: CUDA events around each stage; "
          f"capture: kernel durations summed; metrics: the agent's histograms' _sum)")
        p(f"{'stage':<20} {'truth_ms':>11} {'capture_ms':>11} {'metrics_ms':>11} {'diff_%':>8} {'launched':>9} "
          f"{'captured':>9}  check")
        stages = sorted({s["stage"] for r in rs for s in r["truth"]["stages"]}
                        | {k for r in rs for k in (r["capture_ms"] or {})},
                        key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s))
        mode_rep = {"stages": {}, "runs": []}

        def col(key, st):
            vals = [(r[key] or {}).get(st) for r in rs]
            vals = [v for v in vals if v is not None]
            return mean(vals) if vals else None

        for st in stages:
            truth_ms = mean(next((s["total_ms"] for s in r["truth"]["stages"] if s["stage"] == st), 0.0) for r in rs)
            launched = mean(next((s["kernels_launched"] for s in r["truth"]["stages"] if s["stage"] == st), 0) for r in rs)
            capture_ms, metrics_ms = col("capture_ms", st), col("metrics_ms", st)
            agent_ms = capture_ms if capture_ms is not None else metrics_ms
            captured = None
            if any(r["stats"] and r["stats"].get("kernel_count", 0) > 0 for r in rs):
                captured = mean(next((s["count"] for s in (r["stats"] or {}).get("stages", []) if s["stage"] == st), 0) for r in rs)
            diff = None if agent_ms is None or not truth_ms else 100.0 * (agent_ms - truth_ms) / truth_ms
            check = "n/a"
            allowed_ms = max(pct_tol / 100.0 * truth_ms, slack_us * launched / 1000.0)
            for label, v in (("capture", capture_ms), ("metrics", metrics_ms)):
                if v is None or not truth_ms:
                    continue
                if abs(v - truth_ms) <= allowed_ms:
                    check = "ok" if check in ("n/a", "ok") else check
                else:
                    check = f"{label} OUT (> {allowed_ms:.3f} ms)"
                    failures.append(f"{mode}: stage {st}: {label} {v:.3f} ms vs truth {truth_ms:.3f} ms")
            p(f"{st:<20} {fmt(truth_ms):>11} {fmt(capture_ms):>11} {fmt(metrics_ms):>11} {fmt(diff, 2):>8} "
              f"{fmt(launched, 0):>9} {fmt(captured, 0):>9}  {check}")
            mode_rep["stages"][st] = {"truth_ms": truth_ms, "capture_ms": capture_ms, "metrics_ms": metrics_ms,
                                      "diff_pct": diff, "kernels_launched": launched, "kernels_captured": captured,
                                      "check": check}
        p(f"{'run':<28} {'launched':>9} {'captured':>9} {'dropped':>8}  counters")
        for r in rs:
            launched = r["truth"].get("kernels_launched")
            captured = (r["stats"] or {}).get("kernel_count")
            n_drop, counters = dropped(r["summary"])
            counters.update(r["metrics_dropped"])
            n_drop += sum(r["metrics_dropped"].values())
            p(f"{Path(r['dir']).name:<28} {launched:>9} {fmt(captured, 0) if captured is not None else '-':>9} "
              f"{n_drop:>8}  " + (" ".join(f"{k.removeprefix('gpuspan.')}={v}" for k, v in counters.items())
                                  or ("no capture (coarse mode writes none)" if mode == "coarse" else "no summary")))
            if mode == "fine" and not r["capture_present"]:
                failures.append(f"{mode}: {r['dir']}: no capture-<pid>.json.gz")
            if r["metrics_ms"] is None:
                failures.append(f"{mode}: {r['dir']}: no metrics.prom (scrape failed; see worker.log)")
            if mode == "fine" and captured != launched:
                failures.append(f"fine: {r['dir']}: kernels captured {captured} != launched {launched}")
            if n_drop:
                failures.append(f"{mode}: {r['dir']}: {n_drop} records dropped {counters}")
            mode_rep["runs"].append({"dir": r["dir"], "kernels_launched": launched, "kernels_captured": captured,
                                     "dropped": n_drop, "counters": counters})
        report["modes"][mode] = mode_rep

    p("")
    p("overhead: mean step time from the worker's CUDA events (requests after the first)")
    p(f"{'mode':<8} {'step_ms':>10} {'ratio':>8} {'request_ms':>11}")
    base = mean(s for r in runs["none"] for s in step_ms(r["truth"]))
    report["overhead"] = {}
    for mode in MODES:
        if not runs[mode]:
            continue
        st = mean(s for r in runs[mode] for s in step_ms(r["truth"]))
        req = mean(q["request_ms"] for r in runs[mode] for q in r["truth"]["requests"][1:] or r["truth"]["requests"])
        ratio = st / base if base == base and base else float("nan")
        p(f"{mode:<8} {fmt(st):>10} {fmt(ratio, 4):>8} {fmt(req):>11}")
        report["overhead"][mode] = {"step_ms": st, "ratio": ratio, "request_ms": req}

    replay_truth = load_json(out / "replay" / "truth.json")
    if replay_truth:
        stats = load_json(out / "replay" / "stats.json") or {}
        p("")
        p(f"replay of {replay_truth['config'].get('replay')} (spin kernels, fine mode): truth = requested durations")
        p(f"{'stage':<20} {'requested_ms':>13} {'agent_ms':>11} {'diff_%':>8} {'launched':>9} {'captured':>9}")
        agent = {s["stage"]: s for s in stats.get("stages", [])}
        for s in replay_truth["stages"]:
            a = agent.get(s["stage"], {})
            a_ms = a.get("total_us", 0.0) / 1000.0
            diff = 100.0 * (a_ms - s["total_ms"]) / s["total_ms"] if s["total_ms"] else float("nan")
            p(f"{s['stage']:<20} {fmt(s['total_ms']):>13} {fmt(a_ms):>11} {fmt(diff, 2):>8} "
              f"{s['kernels_launched']:>9} {a.get('count', 0):>9}")
        if stats.get("kernel_count") != replay_truth["kernels_launched"]:
            failures.append(f"replay: kernels captured {stats.get('kernel_count')} != launched {replay_truth['kernels_launched']}")
        report["replay"] = {"kernels_launched": replay_truth["kernels_launched"], "kernels_captured": stats.get("kernel_count")}

    nsys_db = out / "nsys" / "dit.sqlite"
    if nsys_db.is_file():
        nsys_truth = load_json(out / "nsys" / "truth.json") or {}
        try:
            con = sqlite3.connect(str(nsys_db))
            n = con.execute("SELECT COUNT(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
            con.close()
        except sqlite3.Error as e:
            n = f"unreadable ({e})"
        p("")
        p(f"nsys: {n} kernels recorded, {nsys_truth.get('kernels_launched', '?')} launched by the worker in that run")
        report["nsys"] = {"kernels": n, "kernels_launched": nsys_truth.get("kernels_launched")}

    p("")
    if failures:
        p("FAILED:")
        for f in failures:
            p(f"  {f}")
    else:
        p("all checks passed")
    text = "\n".join(lines)
    print(text)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

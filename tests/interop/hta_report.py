#!/usr/bin/env python3
"""What Meta's Holistic Trace Analysis (HTA, pip `HolisticTraceAnalysis`) computes on a trace.

Usage: hta_report.py TRACE_OR_DIR

TRACE_OR_DIR is a Kineto / torch.profiler trace (.json or .json.gz) or a directory holding
exactly one. HTA wants a directory of per-rank traces named *.json / *.json.gz, so a file is
linked into a temporary directory first (under a .json.gz / .json name by its content).

HTA is run the way that is comparable with `gpuspan stats`: `HTA_DISABLE_NS_ROUNDING=1`
(HTA otherwise rounds every event inward to whole µs: ts up, end down) unless the caller set
it, and `include_last_profiler_step=True` (HTA otherwise drops the kernels launched in the
last ProfilerStep of a multi-step trace).

Prints one JSON object (µs as floats):
  hta_version, ns_rounding_disabled, include_last_profiler_step, rank
  kernel_count, kernel_total_us   rows of cat "kernel" HTA loaded, and their summed duration
  gpu_event_count, gpu_event_total_us, gpu_events_by_cat
                                  every row HTA treats as GPU work (stream != -1), by cat:
                                  what its kernel breakdown and temporal breakdown use
  kernels     [{name, kernel_type, sum_us, count, mean_us, min_us, max_us}] from
              get_gpu_kernel_breakdown(include_memory_kernels=True), every kernel listed
              (num_kernels / duration_ratio set so that nothing is folded into "others");
              count is from HTA's loaded rows
  kernel_types [{type, sum_us, share, hta_percentage}] HTA's per-type totals; share is
              sum / total of those sums (HTA's own percentage is rounded to 0.1)
  temporal    {idle_us, compute_us, non_compute_us, kernel_time_us, idle_pct} from
              get_temporal_breakdown, or null when HTA failed (see errors)
  launch      {kernels_with_launch, launch_delay_mean_us, cpu_duration_mean_us} from
              get_cuda_kernel_launch_stats(include_memory_events=True): GPU events HTA
              joined to a CPU launch call, or null when HTA failed
  errors      [str] exceptions raised by HTA, per analysis
"""

import contextlib
import gzip
import io
import json
import logging
import math
import os
import sys
import tempfile
import traceback

os.environ.setdefault("HTA_DISABLE_NS_ROUNDING", "1")


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _trace_dir(arg, tmp):
    """A directory HTA can read, holding the one trace."""
    if os.path.isdir(arg):
        files = [
            f for f in os.listdir(arg) if f.endswith(".json") or f.endswith(".json.gz")
        ]
        if len(files) != 1:
            raise SystemExit(f"{arg}: expected exactly one *.json / *.json.gz trace, found {len(files)}")
        arg = os.path.join(arg, files[0])
    if not os.path.isfile(arg):
        raise SystemExit(f"{arg}: no such file")
    # HTA picks the decompressor from the name; name the link after the content.
    name = "rank0.json.gz" if _is_gzip(arg) else "rank0.json"
    os.symlink(os.path.abspath(arg), os.path.join(tmp, name))
    return tmp


def _f(x):
    """A JSON-safe float (NaN / inf become null)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def report(arg):
    # HTA logs (and plotly may print) to stdout; keep stdout for the JSON only.
    logging.disable(logging.WARNING)
    out = {"errors": []}
    with tempfile.TemporaryDirectory(prefix="hta-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        trace_dir = _trace_dir(arg, tmp)
        import hta
        from hta.configs import env_options
        from hta.trace_analysis import TraceAnalysis

        out["source"] = arg
        out["hta_version"] = getattr(hta, "__version__", None) or _dist_version()
        out["ns_rounding_disabled"] = env_options.disable_ns_rounding()
        out["include_last_profiler_step"] = True
        analyzer = TraceAnalysis(trace_dir=trace_dir, include_last_profiler_step=True)
        ranks = sorted(analyzer.t.traces)
        rank = ranks[0]
        out["rank"] = int(rank)
        df = analyzer.t.get_trace(rank)
        sym = analyzer.t.symbol_table.get_sym_table()
        cats = df["cat"].map(lambda i: sym[i])
        names = df["name"].map(lambda i: sym[i])

        kernels = df[cats.eq("kernel") | cats.eq("Kernel")]
        out["kernel_count"] = int(len(kernels))
        out["kernel_total_us"] = _f(kernels["dur"].sum())
        gpu = df[df["stream"].ne(-1)]
        gpu_cats = cats[gpu.index]
        out["gpu_event_count"] = int(len(gpu))
        out["gpu_event_total_us"] = _f(gpu["dur"].sum())
        out["gpu_events_by_cat"] = {
            str(c): {"count": int(len(g)), "total_us": _f(g["dur"].sum())}
            for c, g in gpu.groupby(gpu_cats)
        }
        counts = names[gpu.index].value_counts().to_dict()

        try:
            types_df, kernels_df = analyzer.get_gpu_kernel_breakdown(
                visualize=False,
                duration_ratio=1.0,
                num_kernels=1 << 30,
                include_memory_kernels=True,
            )
            total = float(types_df["sum"].sum())
            out["kernel_types"] = [
                {
                    "type": str(r["kernel_type"]),
                    "sum_us": _f(r["sum"]),
                    "share": _f(float(r["sum"]) / total) if total > 0 else None,
                    "hta_percentage": _f(r["percentage"]),
                }
                for _, r in types_df.iterrows()
            ]
            out["kernels"] = [
                {
                    "name": str(r["name"]),
                    "kernel_type": str(r["kernel_type"]),
                    "sum_us": _f(r["sum (us)"]),
                    "count": int(counts.get(r["name"], 0)),
                    "mean_us": _f(r["mean (us)"]),
                    "min_us": _f(r["min (us)"]),
                    "max_us": _f(r["max (us)"]),
                }
                for _, r in kernels_df.iterrows()
                if int(r["rank"]) == rank
            ]
        except Exception as e:  # HTA's own failure is a result to report, not a crash
            out["kernel_types"] = None
            out["kernels"] = None
            out["errors"].append(f"get_gpu_kernel_breakdown: {type(e).__name__}: {e}: {_where(e)}")

        try:
            t = analyzer.get_temporal_breakdown(visualize=False)
            r = t[t["rank"].eq(rank)].iloc[0]
            out["temporal"] = {
                "idle_us": _f(r["idle_time(us)"]),
                "compute_us": _f(r["compute_time(us)"]),
                "non_compute_us": _f(r["non_compute_time(us)"]),
                "kernel_time_us": _f(r["kernel_time(us)"]),
                "idle_pct": _f(r["idle_time_pctg"]),
            }
        except Exception as e:
            out["temporal"] = None
            out["errors"].append(f"get_temporal_breakdown: {type(e).__name__}: {e}: {_where(e)}")

        try:
            launch = analyzer.get_cuda_kernel_launch_stats(
                ranks=[rank], include_memory_events=True, visualize=False
            )[rank]
            out["launch"] = {
                "kernels_with_launch": int(len(launch)),
                "launch_delay_mean_us": _f(launch["launch_delay"].mean()) if len(launch) else None,
                "cpu_duration_mean_us": _f(launch["cpu_duration"].mean()) if len(launch) else None,
            }
        except Exception as e:
            out["launch"] = None
            out["errors"].append(f"get_cuda_kernel_launch_stats: {type(e).__name__}: {e}: {_where(e)}")
    return out


def _where(e):
    """file:line of the innermost frame, for assertion failures without a message."""
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}: {f.line}"


def _dist_version():
    try:
        from importlib.metadata import version

        return version("HolisticTraceAnalysis")
    except Exception:
        return None


def main():
    if len(sys.argv) != 2:
        print("usage: hta_report.py TRACE_OR_DIR", file=sys.stderr)
        return 2
    print(json.dumps(report(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

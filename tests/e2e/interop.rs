//! Interoperability (issue 4): gpuspan captures are valid input for Meta's Holistic Trace
//! Analysis (HTA, pip `HolisticTraceAnalysis`) and Chrome DevTools' trace engine (npm
//! `@paulirish/trace_engine`), and `gpuspan stats --json` agrees with HTA on the same file.
//!
//! The tools run through `tests/interop/hta_report.py` (HTA from the venv: `GPUSPAN_VENV`,
//! else `.venv`) and `tests/interop/trace_engine_report.mjs` (`tests/interop/node_modules`);
//! `scripts/test.sh` installs both. When one is missing a test fails under `CI` and prints a
//! note and passes elsewhere.
//!
//! HTA is run with `HTA_DISABLE_NS_ROUNDING=1` and `include_last_profiler_step=True`, the
//! settings under which its definitions are ours. Where HTA is still wrong
//! (`docs/hta-comparison.md` has the list and the figures) a check compares our number with
//! a plain computation done here on the raw JSON (serde_json, no gpuspan code) instead, and
//! the assert message says what HTA reports and why.

use crate::util::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Relative tolerance of the comparisons with HTA (issue 4: 0.5%).
const TOL: f64 = 0.005;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn interop_dir() -> PathBuf {
    repo().join("tests/interop")
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A tool is missing: fail under CI, else say so and let the test return.
fn unavailable(msg: &str) {
    assert!(!under_ci(), "{msg} (CI is set, so this is a failure: scripts/test.sh installs it)");
    eprintln!("note: skipping: {msg}; run scripts/test.sh to install it");
}

/// The venv's python when HTA imports in it.
fn hta_python() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv"));
    let py = venv.join("bin/python");
    let ok = py.exists()
        && Command::new(&py).args(["-c", "import hta.trace_analysis"]).output().is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        unavailable(&format!("HTA (pip HolisticTraceAnalysis) not importable with {}", py.display()));
        None
    }
}

/// True when node and the trace engine package are there.
fn trace_engine_ok() -> bool {
    let pkg = interop_dir().join("node_modules/@paulirish/trace_engine/package.json");
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if pkg.exists() && node {
        true
    } else {
        unavailable(&format!(
            "Chrome's trace engine not installed (node on PATH: {node}, {} exists: {})",
            pkg.display(),
            pkg.exists()
        ));
        false
    }
}

fn json_of(what: &str, o: &std::process::Output) -> Value {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstderr: {}\nstdout: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// `hta_report.py FILE`, HTA's ns rounding off (`rounding_off`) or at its default.
fn hta(py: &Path, file: &Path, rounding_off: bool) -> Value {
    let o = output(
        Command::new(py)
            .arg(interop_dir().join("hta_report.py"))
            .arg(file)
            .env("HTA_DISABLE_NS_ROUNDING", if rounding_off { "1" } else { "0" }),
    );
    json_of(&format!("hta_report.py {}", file.display()), &o)
}

fn trace_engine(file: &Path) -> Value {
    let o = output(Command::new("node").arg(interop_dir().join("trace_engine_report.mjs")).arg(file));
    json_of(&format!("trace_engine_report.mjs {}", file.display()), &o)
}

/// `gpuspan stats --json FILE` as plain JSON (keys, not the Rust struct).
fn stats(file: &Path) -> Value {
    let o = output(gpuspan().arg("stats").arg("--json").arg(file));
    json_of(&format!("gpuspan stats --json {}", file.display()), &o)
}

/// `gpuspan demo --steps 3 --out DIR` → the capture.
fn demo_capture(dir: &Path) -> PathBuf {
    let o = output(gpuspan().args(["demo", "--steps", "3", "--out"]).arg(dir));
    assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
    let p = capture_in(dir);
    assert!(p.is_file(), "no capture: {}", String::from_utf8_lossy(&o.stderr));
    p
}

fn f(v: &Value, what: &str) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

fn rel(a: f64, b: f64) -> f64 {
    let m = a.abs().max(b.abs());
    if m == 0.0 {
        0.0
    } else {
        (a - b).abs() / m
    }
}

// ---------------------------------------------------------------------------------------
// The plain computation: the raw JSON with serde_json, nothing from gpuspan
// ---------------------------------------------------------------------------------------

fn raw_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let o = output(Command::new("gzip").arg("-dc").arg(path));
        assert!(o.status.success(), "gzip -dc {}", path.display());
        o.stdout
    } else {
        bytes
    };
    serde_json::from_slice(&text).unwrap()
}

const KERNEL_CATS: &[&str] = &["kernel", "Kernel"];
const MEMORY_CATS: &[&str] = &["gpu_memcpy", "Memcpy", "gpu_memset", "Memset"];

/// HTA's kernel type of a GPU activity event (`hta.utils.utils.get_kernel_type`; OTHER,
/// which no fixture has, would count as COMPUTATION here as in gpuspan).
fn plain_type(cat: &str, name: &str) -> &'static str {
    if MEMORY_CATS.contains(&cat) {
        "MEMORY"
    } else if name.strip_prefix("nccl").is_some_and(|r| r.contains("Kernel")) {
        "COMMUNICATION"
    } else if name.starts_with("Memcpy") || name.starts_with("Memset") || name.starts_with("dma") {
        "MEMORY"
    } else {
        "COMPUTATION"
    }
}

fn union_len(mut iv: Vec<(f64, f64)>) -> f64 {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (s, e) in iv {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

/// Launch calls as HTA 0.5.0's `get_cuda_kernel_launch_stats` matches them (exact names).
const HTA_LAUNCH_NAMES: &[&str] = &["cudaLaunchKernel", "cudaLaunchKernelExC", "cudaMemcpyAsync", "cudaMemsetAsync"];
/// The driver API launches that HTA leaves out (Triton, gpuspan's own captures).
const DRIVER_LAUNCH_NAMES: &[&str] =
    &["cuLaunchKernel", "cuLaunchKernelEx", "cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2", "cuMemcpyDtoDAsync_v2", "cuMemcpyAsync", "cuMemsetD8Async", "cuMemsetD16Async", "cuMemsetD32Async"];

#[derive(Default, Debug)]
struct Plain {
    kernel_count: usize,
    kernel_total_us: f64,
    /// name → (count, total µs)
    kernels: BTreeMap<String, (usize, f64)>,
    /// type → summed duration of its GPU activity
    type_total_us: BTreeMap<&'static str, f64>,
    /// span − union of all GPU activity, all devices together
    gpu_idle_us: f64,
    /// every GPU activity ts / dur is a whole µs
    whole_us: bool,
    /// GPU activity events whose correlation id is a launch call's: HTA's names / HTA's
    /// names plus the driver API
    launched_hta_names: usize,
    launched_all: usize,
    /// CPU events (no GPU cat) that carry `args.stream` (Triton launcher records)
    cpu_events_with_stream: usize,
    /// events written with ts == 0
    ts_zero: usize,
}

fn plain(path: &Path) -> Plain {
    let v = raw_json(path);
    let evs = v["traceEvents"].as_array().expect("traceEvents");
    let mut p = Plain { whole_us: true, ..Default::default() };
    let mut launch: HashMap<i64, &str> = HashMap::new();
    for e in evs {
        let cat = e["cat"].as_str().unwrap_or("");
        if e["ph"] == "X" && matches!(cat, "cuda_runtime" | "cuda_driver" | "Runtime") {
            if let Some(c) = e["args"]["correlation"].as_i64() {
                launch.insert(c, e["name"].as_str().unwrap_or(""));
            }
        }
    }
    let mut iv = Vec::new();
    for e in evs.iter().filter(|e| e["ph"] == "X") {
        let cat = e["cat"].as_str().unwrap_or("");
        let name = e["name"].as_str().unwrap_or("");
        let ts = e["ts"].as_f64().expect("ts");
        if ts == 0.0 {
            p.ts_zero += 1;
        }
        let is_kernel = KERNEL_CATS.contains(&cat);
        if !is_kernel && !MEMORY_CATS.contains(&cat) {
            if !e["args"]["stream"].is_null() {
                p.cpu_events_with_stream += 1;
            }
            continue;
        }
        let dur = e["dur"].as_f64().unwrap_or(0.0);
        p.whole_us &= ts.fract() == 0.0 && dur.fract() == 0.0;
        iv.push((ts, ts + dur));
        *p.type_total_us.entry(plain_type(cat, name)).or_default() += dur;
        if let Some(l) = e["args"]["correlation"].as_i64().and_then(|c| launch.get(&c)) {
            if HTA_LAUNCH_NAMES.contains(l) {
                p.launched_hta_names += 1;
                p.launched_all += 1;
            } else if DRIVER_LAUNCH_NAMES.contains(l) {
                p.launched_all += 1;
            }
        }
        if is_kernel {
            p.kernel_count += 1;
            p.kernel_total_us += dur;
            let k = p.kernels.entry(name.to_string()).or_default();
            k.0 += 1;
            k.1 += dur;
        }
    }
    let first = iv.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
    let last = iv.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let span = if iv.is_empty() { 0.0 } else { last - first };
    p.gpu_idle_us = span - union_len(iv);
    p
}

// ---------------------------------------------------------------------------------------
// gpuspan stats vs HTA on one file
// ---------------------------------------------------------------------------------------

/// Every comparison of issue 4 on one file; `label` names it in messages.
fn agree_with_hta(py: &Path, file: &Path, label: &str) {
    let s = stats(file);
    let h = hta(py, file, true);
    let p = plain(file);
    assert_eq!(h["errors"], serde_json::json!([]), "{label}: HTA failed: {h}");
    assert_eq!(h["ns_rounding_disabled"], true, "{label}: HTA ran with its ns rounding");
    assert_eq!(h["include_last_profiler_step"], true);

    // Kernel count: exact, three ways.
    let ours = s["kernel_count"].as_u64().unwrap() as usize;
    assert_eq!(ours, p.kernel_count, "{label}: kernel_count vs plain count of cat kernel");
    assert_eq!(h["kernel_count"].as_u64().unwrap() as usize, ours, "{label}: kernel_count vs HTA");
    let ours_total = f(&s["kernel_total_us"], "kernel_total_us");
    assert!(rel(ours_total, p.kernel_total_us) < 1e-9, "{label}: kernel_total_us {ours_total} vs plain {}", p.kernel_total_us);
    let h_total = f(&h["kernel_total_us"], "HTA kernel_total_us");
    assert!(rel(ours_total, h_total) <= TOL, "{label}: kernel_total_us {ours_total} vs HTA {h_total}");

    // Per-kernel totals (HTA get_gpu_kernel_breakdown, nothing folded into "others").
    let hk: HashMap<&str, &Value> =
        h["kernels"].as_array().expect("HTA kernels").iter().map(|k| (k["name"].as_str().unwrap(), k)).collect();
    let ks = s["kernels"].as_array().expect("kernels");
    assert_eq!(ks.len(), p.kernels.len(), "{label}: distinct kernel names");
    for k in ks {
        let name = k["name"].as_str().unwrap();
        let total = f(&k["total_us"], name);
        let (pc, pt) = p.kernels[name];
        assert_eq!(k["count"].as_u64().unwrap() as usize, pc, "{label}: count of {name}");
        assert!(rel(total, pt) < 1e-9, "{label}: total of {name}: {total} vs plain {pt}");
        let hr = hk.get(name).unwrap_or_else(|| panic!("{label}: HTA's kernel breakdown lacks {name}"));
        let ht = f(&hr["sum_us"], name);
        if hr["count"].as_u64().unwrap() as usize == pc {
            assert!(rel(total, ht) <= TOL, "{label}: total of {name}: {total} µs vs HTA {ht} µs");
        } else {
            // HTA counts every row that carries a stream as GPU work, so a Triton launcher's
            // CPU record (same name as its kernel, `args.stream` set) adds its CPU time to the
            // kernel's total. Checked against the plain sum above instead.
            eprintln!("{label}: {name}: HTA counts {} rows ({ht} µs) for {pc} kernels ({total} µs): CPU rows with a stream", hr["count"]);
        }
    }

    // Per-kernel-type shares.
    let busy = f(&s["gpu_busy_us"], "gpu_busy_us");
    let h_types: HashMap<&str, f64> = h["kernel_types"]
        .as_array()
        .expect("HTA kernel_types")
        .iter()
        .map(|t| (t["type"].as_str().unwrap(), f(&t["share"], "HTA share")))
        .collect();
    let overlap = h_types.iter().any(|(k, v)| k.contains("overlapping") && *v > 0.0);
    let types = s["kernel_types"].as_array().expect("stats --json has kernel_types");
    let all_types: f64 = p.type_total_us.values().sum();
    for t in types {
        let ty = t["type"].as_str().unwrap();
        let share = f(&t["share"], ty);
        let plain_share = p.type_total_us.get(ty).copied().unwrap_or(0.0) / all_types;
        assert!((share - plain_share).abs() < 1e-9, "{label}: {ty} share {share} vs plain {plain_share}");
        let Some(&hs) = h_types.get(ty) else {
            assert_eq!(share, 0.0, "{label}: {ty} has time but no HTA row");
            continue;
        };
        // With work of several types overlapping (concurrent streams) HTA's share of a
        // type is the time only it runs over the union of all activity ("A overlapping B"
        // rows take the rest); ours is its summed duration over all summed durations. The
        // comparable number is then `exclusive_us` / `gpu_busy_us`.
        let (ours, what) = if overlap {
            (f(&t["exclusive_us"], "exclusive_us") / busy, "exclusive_us / gpu_busy_us")
        } else {
            (share, "share")
        };
        if p.whole_us {
            assert!(rel(ours, hs) <= TOL, "{label}: {ty} {what} {ours} vs HTA {hs}");
        } else {
            // HTA truncates every merged interval of a type to whole µs (`.astype(int)` in
            // `_get_gpu_kernel_type_time`), HTA_DISABLE_NS_ROUNDING or not, so on ns traces
            // short or sparse work loses up to 1 µs per interval there (Qwen's sub-µs memsets:
            // MEMORY 0.13% in HTA, 0.47% in fact). Checked against the plain computation
            // above; HTA must still be within 0.5 percentage points.
            assert!(
                (ours - hs).abs() <= TOL,
                "{label}: {ty} {what} {ours} vs HTA {hs} (HTA truncates to whole µs per merged interval)"
            );
            if rel(ours, hs) > TOL {
                eprintln!("{label}: {ty} {what}: ours {ours:.6}, HTA {hs:.6} ({:+.2}%, HTA's int truncation); plain {plain_share:.6}", 100.0 * (hs - ours) / ours);
            }
        }
    }

    // Idle time (HTA temporal breakdown, per rank = all devices of the file).
    let idle = f(&s["gpu_idle_us"], "gpu_idle_us");
    assert!((idle - p.gpu_idle_us).abs() <= 1e-6 * p.gpu_idle_us.max(1.0), "{label}: gpu_idle_us {idle} vs plain {}", p.gpu_idle_us);
    let hi = f(&h["temporal"]["idle_us"], "HTA idle_us");
    assert!(rel(idle, hi) <= TOL, "{label}: gpu_idle_us {idle} vs HTA {hi}");
    let temporal = s["temporal"].as_array().expect("stats --json has temporal");
    let per_device: f64 = temporal.iter().map(|t| f(&t["idle_us"], "temporal idle_us")).sum();
    if temporal.len() == 1 {
        assert!(rel(per_device, hi) <= TOL, "{label}: temporal[0].idle_us {per_device} vs HTA {hi}");
    }

    // Launches: HTA joins GPU work only to the runtime calls `cudaLaunchKernel`,
    // `cudaLaunchKernelExC`, `cudaMemcpyAsync`, `cudaMemsetAsync` (exact names), so every
    // kernel launched through the driver API (`cuLaunchKernel`, `cuLaunchKernelEx`: Triton,
    // cuBLASLt, and every gpuspan capture) is missing from its launch statistics.
    let ours_l = s["launch"]["kernels_with_launch"].as_u64().expect("launch.kernels_with_launch") as usize;
    let hta_l = h["launch"]["kernels_with_launch"].as_u64().unwrap() as usize;
    assert_eq!(
        ours_l, p.launched_all,
        "{label}: launch.kernels_with_launch vs plain count (HTA: {hta_l}, which leaves out the driver API launches)"
    );
    assert_eq!(hta_l, p.launched_hta_names, "{label}: HTA's launch count is not explained by its name list");
    if hta_l != ours_l {
        eprintln!("{label}: GPU events joined to a launch: ours {ours_l}, HTA {hta_l} (driver API launches)");
    }
}

fn fixture_agrees(name: &str) {
    let Some(py) = hta_python() else { return };
    agree_with_hta(&py, &fixture(name), name);
}

#[test]
fn stats_agree_with_hta_h100_vit_falconsai() {
    fixture_agrees("h100-vit-falconsai.json.gz");
}

#[test]
fn stats_agree_with_hta_h100_bert_small() {
    fixture_agrees("h100-bert-small.json.gz");
}

#[test]
fn stats_agree_with_hta_h100_qwen_prefill() {
    fixture_agrees("h100-qwen-prefill.json.gz");
}

#[test]
fn stats_agree_with_hta_a100_hta_control() {
    fixture_agrees("a100-hta-control.json.gz");
}

#[test]
fn stats_agree_with_hta_v100_resnet50_oldschema() {
    fixture_agrees("v100-resnet50-oldschema.json.gz");
}

#[test]
fn stats_agree_with_hta_on_demo_capture() {
    let Some(py) = hta_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let capture = demo_capture(dir.path());
    agree_with_hta(&py, &capture, "demo capture");
}

// ---------------------------------------------------------------------------------------
// A demo capture in both tools
// ---------------------------------------------------------------------------------------

/// A rank's capture carries an `nvlink_bandwidth_gbps` counter track (`ph: "C"` events,
/// issue 16); HTA and Chrome's trace engine still load it and count its kernels as ours.
#[test]
fn rank_capture_with_nvlink_track_loads_in_hta_and_chrome_trace_engine() {
    let py = hta_python();
    let engine = trace_engine_ok();
    if py.is_none() && !engine {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--sim", "--mode", "fine", "--out"])
            .arg(dir.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["stdit", "--ranks", "2", "--steps", "1"])
            .env("GPUSPAN_NVML_PERIOD", "10ms"),
    );
    assert!(o.status.success(), "run failed: {}", String::from_utf8_lossy(&o.stderr));
    let capture = captures_in(dir.path()).into_iter().next().expect("a rank capture");
    let raw = raw_json(&capture);
    let counters = raw["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "C").count();
    assert!(counters >= 2, "NVLink counter samples in the capture: {counters}");
    let s = stats(&capture);
    let count = s["kernel_count"].as_u64().unwrap();
    if let Some(py) = py {
        let h = hta(&py, &capture, true);
        assert_eq!(h["errors"], serde_json::json!([]), "HTA on a capture with counters: {h}");
        assert_eq!(h["kernel_count"].as_u64().unwrap(), count, "HTA kernel count");
    }
    if engine {
        let t = trace_engine(&capture);
        assert_eq!(t["errors"], serde_json::json!([]), "trace engine errors: {t}");
        assert_eq!(t["kernel_count"].as_u64().unwrap(), count, "kernels the trace engine draws");
        assert_eq!(t["events_outside_bounds"], 0, "events outside the engine's trace bounds: {}", t["trace_bounds_us"]);
    }
}

#[test]
fn demo_capture_loads_in_hta_and_chrome_trace_engine() {
    let py = hta_python();
    let engine = trace_engine_ok();
    if py.is_none() && !engine {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let written = demo_capture(dir.path());
    let chunked = chunked_copy(&written, dir.path());
    // The capture as this machine wrote it, and in chunks; HTA reads the first in
    // `stats_agree_with_hta_on_demo_capture`, so here only the chunked copy.
    for (capture, hta_too) in [(written, false), (chunked, true)] {
        demo_capture_loads(&capture, py.as_deref().filter(|_| hta_too), engine);
    }
}

/// What `demo_capture_loads_in_hta_and_chrome_trace_engine` checks of one file.
fn demo_capture_loads(capture: &Path, py: Option<&Path>, engine: bool) {
    let s = stats(capture);
    let count = s["kernel_count"].as_u64().unwrap();
    let total = f(&s["kernel_total_us"], "kernel_total_us");
    assert!(count > 1000, "demo has kernels: {count}");

    // What both tools need from the file itself.
    let p = plain(capture);
    assert_eq!(p.ts_zero, 0, "events with ts = 0 (readers take 0 for \"no timestamp\": Chrome's trace engine leaves them out of the trace bounds)");
    let raw = raw_json(capture);
    for e in raw["traceEvents"].as_array().unwrap() {
        let ph = e["ph"].as_str().unwrap_or("");
        assert!(ph == "X" || ph == "M", "only complete and metadata events: {e}");
        assert!(e["name"].is_string() && e["cat"].is_string(), "every event has a name and a cat: {e}");
    }

    if let Some(py) = py {
        let h = hta(py, capture, true);
        assert_eq!(h["errors"], serde_json::json!([]), "HTA on the demo capture: {h}");
        assert_eq!(h["kernel_count"].as_u64().unwrap(), count, "HTA kernel count");
        let ht = f(&h["kernel_total_us"], "HTA kernel_total_us");
        assert!(rel(ht, total) < 1e-9, "HTA kernel time {ht} µs vs ours {total} µs");
    }

    if engine {
        let t = trace_engine(capture);
        assert_eq!(t["errors"], serde_json::json!([]), "trace engine errors: {t}");
        // Kernels the engine placed in its per-row trees, i.e. draws; a back-to-back kernel
        // whose start the previous one's f64 end overshoots would be dropped (the writer
        // prevents it).
        assert_eq!(t["kernel_entries"].as_u64().unwrap(), count, "trace engine kernel entries");
        assert_eq!(t["kernel_count"].as_u64().unwrap(), count, "kernels the trace engine draws; not drawn: {}", t["not_in_tree"]);
        let tt = f(&t["kernel_total_us"], "engine kernel_total_us");
        assert!(rel(tt, total) < 1e-9, "trace engine kernel time {tt} µs vs ours {total} µs");
        assert_eq!(t["not_in_tree"], serde_json::json!({}), "events the engine could not place");
        assert_eq!(t["events_outside_bounds"], 0, "events outside the engine's trace bounds: {}", t["trace_bounds_us"]);
        // Metadata names every process and thread: the GPU as "GPU N", its streams "stream N".
        let threads = t["threads"].as_object().unwrap();
        let processes = t["processes"].as_object().unwrap();
        let mut gpu_rows = 0;
        for e in raw["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X") {
            let (pid, tid) = (e["pid"].as_i64().unwrap(), e["tid"].as_i64().unwrap());
            assert!(processes.contains_key(&pid.to_string()), "process {pid} unnamed");
            let tname = threads.get(&format!("{pid}:{tid}")).unwrap_or_else(|| panic!("thread {pid}:{tid} unnamed"));
            if e["cat"] == "kernel" {
                gpu_rows += 1;
                assert_eq!(tname.as_str().unwrap(), format!("stream {tid}"));
                assert_eq!(processes[&pid.to_string()].as_str().unwrap(), format!("GPU {pid}"));
            }
        }
        assert_eq!(gpu_rows as u64, count);
    }
}

// ---------------------------------------------------------------------------------------
// Where HTA is wrong: our numbers against the plain computation
// ---------------------------------------------------------------------------------------

/// HTA's defaults (no `HTA_DISABLE_NS_ROUNDING`) round every event inward to whole µs: ts up,
/// end down (`round_down_time_stamps`). On ns traces that loses kernel time (Falconsai:
/// −12.8%), gives sub-µs memsets negative durations, and on Qwen makes its temporal
/// breakdown fail its own `assert non_compute_time >= 0`. gpuspan never rounds; the test
/// checks that our numbers are the plain ones and that HTA's default kernel time is exactly
/// the plain sum of the rounded events (the whole difference is its rounding).
#[test]
fn hta_default_rounding_is_the_difference_on_ns_traces() {
    let Some(py) = hta_python() else { return };
    for name in ["h100-vit-falconsai.json.gz", "h100-qwen-prefill.json.gz"] {
        let file = fixture(name);
        let s = stats(&file);
        let p = plain(&file);
        let h = hta(&py, &file, false);
        assert_eq!(h["ns_rounding_disabled"], false);
        let ours = f(&s["kernel_total_us"], "kernel_total_us");
        assert!(rel(ours, p.kernel_total_us) < 1e-9, "{name}: kernel_total_us {ours} vs plain {}", p.kernel_total_us);
        let idle = f(&s["gpu_idle_us"], "gpu_idle_us");
        assert!((idle - p.gpu_idle_us).abs() <= 1e-6 * p.gpu_idle_us, "{name}: gpu_idle_us {idle} vs plain {}", p.gpu_idle_us);

        // HTA's default kernel time = Σ (floor(ts + dur) − ceil(ts)) over the kernels.
        let raw = raw_json(&file);
        let rounded: f64 = raw["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == "kernel")
            .map(|e| {
                let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
                (ts + dur).floor() - ts.ceil()
            })
            .sum();
        let ht = f(&h["kernel_total_us"], "HTA kernel_total_us");
        assert_eq!(ht, rounded, "{name}: HTA's default kernel time is the rounded sum");
        eprintln!(
            "{name}: kernel time ours {ours:.3} µs, HTA default {ht} µs ({:+.1}%); HTA default temporal: {}; errors: {}",
            100.0 * (ht - ours) / ours,
            h["temporal"],
            h["errors"]
        );
    }
}

/// Triton (torch.compile / Inductor) records each launch as a CPU op named like its kernel
/// with `args.stream` set; HTA takes every row with a stream as GPU work, so the launcher's
/// CPU time is added to the kernel's total, the GPU span and the idle time. HTA's launch
/// statistics also miss the `cuLaunchKernelEx` that launched it. A small trace in that
/// shape: ours against the plain computation, HTA's numbers in the messages.
#[test]
fn hta_counts_triton_launcher_cpu_events_as_gpu_work() {
    let Some(py) = hta_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("triton.json");
    let trace = serde_json::json!({"schemaVersion": 1, "traceEvents": [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 1, "tid": 1, "ts": 1000.0, "dur": 100.0},
        {"ph": "X", "cat": "cpu_op", "name": "triton_poi_fused_add_0", "pid": 1, "tid": 1, "ts": 1010.0, "dur": 20.0,
         "args": {"kernel_file": "/tmp/c.py", "kernel_backend": "triton", "grid": "grid(1024,)", "stream": 0}},
        {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernelEx", "pid": 1, "tid": 1, "ts": 1015.0, "dur": 5.0, "args": {"correlation": 5}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 1040.0, "dur": 5.0, "args": {"correlation": 6}},
        {"ph": "X", "cat": "kernel", "name": "triton_poi_fused_add_0", "pid": 0, "tid": 7, "ts": 1050.0, "dur": 10.0,
         "args": {"device": 0, "stream": 7, "correlation": 5}},
        {"ph": "X", "cat": "kernel", "name": "void gemm_kernel", "pid": 0, "tid": 7, "ts": 1070.0, "dur": 10.0,
         "args": {"device": 0, "stream": 7, "correlation": 6}}
    ]});
    std::fs::write(&file, serde_json::to_vec(&trace).unwrap()).unwrap();
    let s = stats(&file);
    let p = plain(&file);
    let h = hta(&py, &file, true);
    assert_eq!(p.cpu_events_with_stream, 1);

    let triton = s["kernels"].as_array().unwrap().iter().find(|k| k["name"] == "triton_poi_fused_add_0").unwrap();
    let h_triton = h["kernels"].as_array().unwrap().iter().find(|k| k["name"] == "triton_poi_fused_add_0").unwrap();
    assert_eq!(
        (triton["count"].as_u64().unwrap(), f(&triton["total_us"], "total")),
        (1, p.kernels["triton_poi_fused_add_0"].1),
        "the Triton kernel: 1 launch of 10 µs (HTA: {} rows, {} µs, the 20 µs CPU launcher op included)",
        h_triton["count"],
        h_triton["sum_us"]
    );
    let idle = f(&s["gpu_idle_us"], "gpu_idle_us");
    assert_eq!(
        idle, p.gpu_idle_us,
        "idle: 10 µs between the two kernels (HTA: {} µs over a {} µs span that starts at the CPU op)",
        h["temporal"]["idle_us"], h["temporal"]["kernel_time_us"]
    );
    assert_eq!(
        s["launch"]["kernels_with_launch"].as_u64().unwrap() as usize,
        p.launched_all,
        "both kernels have a launch (HTA: {}, it skips cuLaunchKernelEx)",
        h["launch"]["kernels_with_launch"]
    );
    assert_eq!(p.launched_all, 2);
    assert_eq!(h["launch"]["kernels_with_launch"].as_u64().unwrap() as usize, p.launched_hta_names);
}

/// `capture` written again as the exit capture is on a machine with three cores or more:
/// deflated in chunks on two workers (`kineto::gzip`), where two cores (as CI has) give one
/// worker and one continuous stream. So the tools that read the demo capture here read the
/// chunked form too (`stats_agree_with_hta_on_demo_capture` reads the one this machine
/// writes).
fn chunked_copy(capture: &Path, dir: &Path) -> PathBuf {
    use gpuspan_export::kineto::{write_trace_with, WriteOptions};
    let t = gpuspan_export::read_trace(capture).expect("the demo capture");
    let out = dir.join("chunked.json.gz");
    let opts = WriteOptions { gzip_level: Some(1), gzip_threads: Some(2), ..Default::default() };
    write_trace_with(&t, &out, &opts).expect("the chunked copy");
    out
}

/// The agent's exit capture is deflated off the writing thread (`kineto::gzip`: one worker's
/// continuous stream on two cores, chunks on several workers on more) but is one gzip
/// member either way: Chrome's `DecompressionStream("gzip")`, which DevTools opens a `.json.gz` with,
/// stops with an error after the first member of a multi-member file, so a single-member
/// decoder (flate2's `GzDecoder`, which ignores what follows the first member) must read the
/// whole file, and the JSON must span several of the writer's chunks for this to show.
#[test]
fn exit_capture_is_one_gzip_member() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let capture = demo_capture(dir.path());
    // As this machine writes it (one continuous stream on two cores), and in chunks.
    for file in [capture.clone(), chunked_copy(&capture, dir.path())] {
        let bytes = std::fs::read(&file).unwrap();
        let mut d = flate2::read::GzDecoder::new(&bytes[..]);
        let mut json = Vec::new();
        d.read_to_end(&mut json).unwrap();
        assert!(d.into_inner().is_empty(), "{}: nothing after the first member", file.display());
        assert!(
            json.len() > 3 * gpuspan_export::kineto::gzip::CHUNK_BYTES,
            "the capture spans several chunks: {} bytes of JSON",
            json.len()
        );
        let v: Value = serde_json::from_slice(&json).expect("the whole JSON");
        assert!(v["traceEvents"].as_array().is_some_and(|e| e.len() > 1000));
    }
}

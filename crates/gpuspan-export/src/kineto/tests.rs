//! Tests of the Kineto reader and writer: fixtures from real GPUs, round trips, error
//! messages, leniency, and garbled input (must never panic).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use gpuspan_core::stats;
use gpuspan_core::trace::{Category, CounterEvent, Trace, TraceEvent};
use serde_json::{json, Value};

use super::*;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/traces"
);

/// (file, kernel count by cat kernel / Kernel), counted independently with Python's json.
const FIXTURE_KERNELS: &[(&str, usize)] = &[
    ("h100-vit-falconsai.json.gz", 154),
    ("h100-bert-small.json.gz", 60),
    ("h100-qwen-prefill.json.gz", 1465),
    ("a100-hta-control.json.gz", 8568),
    ("v100-resnet50-oldschema.json.gz", 8772),
];

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// Each fixture read once per test process (debug-build reads of the 35 MB ones are slow).
fn cached(name: &str) -> &'static Trace {
    use std::sync::OnceLock;
    static CACHE: [OnceLock<Trace>; 5] = [const { OnceLock::new() }; 5];
    let i = FIXTURE_KERNELS
        .iter()
        .position(|(n, _)| *n == name)
        .expect("known fixture");
    CACHE[i].get_or_init(|| read_trace(&fixture(name)).unwrap_or_else(|e| panic!("{e}")))
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut out,
    )
    .unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn read_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = write_file(dir, name, bytes);
    match read_trace(&p) {
        Ok(t) => panic!("{name}: expected an error, read {} events", t.events.len()),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "error must be one line: {s:?}");
            assert!(
                s.starts_with(&p.display().to_string()),
                "error must name the file: {s}"
            );
            s[p.display().to_string().len()..].to_string()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

#[test]
fn fixtures_read_with_expected_kernel_counts_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for &(name, kernels) in FIXTURE_KERNELS {
        let t = cached(name);
        assert_eq!(t.kernels().count(), kernels, "{name}");
        assert_eq!(t.schema_version, Some(1), "{name}");
        assert!(t.device_properties.is_some(), "{name}");
        assert!(t
            .events
            .iter()
            .all(|e| e.ts_us.is_finite() && e.dur_us.is_finite()));
        // Every kernel carries the typed GPU args.
        for k in t.kernels() {
            assert!(
                k.device.is_some() && k.stream.is_some() && k.correlation.is_some(),
                "{name}: {k:?}"
            );
            assert!(k.grid.is_some() && k.block.is_some(), "{name}");
            assert!(
                k.registers_per_thread.is_some() && k.shared_memory_bytes.is_some(),
                "{name}"
            );
            assert!(!k.extra_args.contains_key("device") && !k.extra_args.contains_key("grid"));
        }

        let out = dir.path().join(name);
        write_trace(t, &out).unwrap();
        assert!(!dir.path().join(format!("{name}.tmp")).exists());
        let back = read_trace(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.kernels().count(), kernels, "{name}");
        assert_eq!(back.events.len(), t.events.len(), "{name}");
        for (a, b) in t.events.iter().zip(&back.events) {
            assert_eq!(a.name, b.name);
            assert_eq!(
                a.ts_us.to_bits(),
                b.ts_us.to_bits(),
                "{name}: ts of {}",
                a.name
            );
            assert_eq!(
                a.dur_us.to_bits(),
                b.dur_us.to_bits(),
                "{name}: dur of {}",
                a.name
            );
        }
        // And in fact the whole event model survives.
        assert_eq!(back.events, t.events, "{name}");
        assert_eq!(back.base_time_ns, t.base_time_ns);
        assert_eq!(back.schema_version, t.schema_version);
        assert_eq!(back.device_properties, t.device_properties);
        for (k, v) in &t.process_names {
            assert_eq!(back.process_names.get(k), Some(v));
        }
        for (k, v) in &t.thread_names {
            assert_eq!(back.thread_names.get(k), Some(v));
        }
        // Every GPU row is named after its stream.
        for k in back.kernels() {
            assert!(back
                .thread_names
                .get(&(k.pid, k.tid))
                .is_some_and(|n| n.starts_with("stream ")));
        }
    }
}

#[test]
fn fixture_details() {
    // Current schema, baseTimeNanoseconds, ns-precision float ts.
    let t = cached("h100-bert-small.json.gz");
    assert_eq!(t.base_time_ns, Some(1_751_410_836_000_000_000));
    let k = t.kernels().next().unwrap();
    assert_eq!(k.ts_us, 1419247333430.849);
    assert_eq!(k.dur_us, 3.136);
    assert_eq!((k.pid, k.tid, k.device, k.stream), (0, 7, Some(0), Some(7)));
    assert_eq!((k.correlation, k.external_id), (Some(8218), Some(9)));
    assert_eq!((k.grid, k.block), (Some([564, 1, 1]), Some([128, 1, 1])));
    assert_eq!(
        (k.registers_per_thread, k.shared_memory_bytes),
        (Some(32), Some(0))
    );
    assert_eq!(k.extra_args.get("blocks per SM"), Some(&json!(4.272727)));
    assert_eq!(
        t.thread_names.get(&(0, 7)).map(String::as_str),
        Some("stream 7 ")
    );
    assert!(t
        .events
        .iter()
        .any(|e| e.is(&Category::GpuUserAnnotation) && e.name == "ProfilerStep#6"));
    assert!(t.events.iter().any(|e| e.is(&Category::CudaDriver)));
    let m = t
        .events
        .iter()
        .find(|e| e.is(&Category::GpuMemcpy))
        .unwrap();
    assert!(m.bytes.is_some());

    // Old schema: cat "Kernel", tid "stream 7", "external id", integer µs.
    let t = cached("v100-resnet50-oldschema.json.gz");
    assert_eq!(t.base_time_ns, None);
    let k = t.kernels().next().unwrap();
    assert_eq!(
        k.name,
        "cask_cudnn::computeOffsetsKernel(cask_cudnn::ComputeOffsetsParams)"
    );
    assert_eq!(
        (k.pid, k.tid, k.ts_us, k.dur_us),
        (0, 7, 1623142623531625.0, 2.0)
    );
    assert_eq!(k.external_id, Some(544));
    assert!(!k.extra_args.contains_key("external id"));
    assert!(t.events.iter().any(|e| e.is(&Category::CudaRuntime)));
    assert!(t
        .events
        .iter()
        .any(|e| e.is(&Category::CpuOp) && e.name == "ProfilerStep#5"));
    assert!(t.events.iter().any(|e| e.is(&Category::GpuMemset)));
    // Old-schema CPU tid strings are numbers too.
    assert_eq!(
        t.thread_names.get(&(25738, 25772)).map(String::as_str),
        Some("thread 25772 (python)")
    );
    // Kineto's "Trace" span with pid "Spans" / "Traces" is kept with pid -1.
    let tr = t
        .events
        .iter()
        .find(|e| e.cat == Some(Category::Other("Trace".into())))
        .unwrap();
    assert_eq!((tr.pid, tr.tid), (-1, -1));

    // A100: three streams on device 3.
    let t = cached("a100-hta-control.json.gz");
    let mut streams: Vec<i64> = t.kernels().filter_map(|k| k.stream).collect();
    streams.sort();
    streams.dedup();
    assert_eq!(streams, [7, 20, 21]);
    assert!(t.kernels().all(|k| k.device == Some(3) && k.pid == 3));
}

/// Independent plain computation over the raw JSON (serde_json::Value, not the reader).
fn plain_kernel_totals(path: &Path) -> (usize, f64) {
    let v: Value = serde_json::from_slice(&gunzip(path)).unwrap();
    let mut n = 0;
    let mut total = 0.0;
    for e in v["traceEvents"].as_array().unwrap() {
        if e["ph"] == "X" && (e["cat"] == "kernel" || e["cat"] == "Kernel") {
            n += 1;
            total += e["dur"].as_f64().unwrap();
        }
    }
    (n, total)
}

#[test]
fn stats_on_fixtures_match_plain_computation() {
    // (file, per-step kernel counts, kernels in no step) from an independent Python pass.
    type StepCounts<'a> = &'a [(&'a str, usize)];
    let steps: &[(&str, StepCounts, usize)] = &[
        ("h100-vit-falconsai.json.gz", &[("ProfilerStep#6", 154)], 0),
        ("h100-bert-small.json.gz", &[("ProfilerStep#6", 60)], 0),
        ("h100-qwen-prefill.json.gz", &[("ProfilerStep#6", 1459)], 6),
        (
            "a100-hta-control.json.gz",
            &[
                ("ProfilerStep#1009", 1428),
                ("ProfilerStep#1010", 1428),
                ("ProfilerStep#1011", 1428),
                ("ProfilerStep#1012", 1428),
                ("ProfilerStep#1013", 1428),
                ("ProfilerStep#1014", 1428),
            ],
            0,
        ),
        (
            "v100-resnet50-oldschema.json.gz",
            &[
                ("ProfilerStep#5", 1462),
                ("ProfilerStep#6", 1462),
                ("ProfilerStep#7", 1462),
                ("ProfilerStep#8", 1462),
                ("ProfilerStep#9", 1462),
                ("ProfilerStep#10", 1462),
            ],
            0,
        ),
    ];
    // gpu_span / gpu_busy from the same Python pass (interval union over kernel + memcpy +
    // memset, all streams).
    let span_busy: &[(f64, f64)] = &[
        (7559.843994140625, 1225.308837890625),
        (3907.824951171875, 309.437744140625),
        (49652.83203125, 45647.310546875),
        (464594.0, 388587.0),
        (996477.0, 603558.0),
    ];
    for (&(name, expect_steps, unassigned), &(span, busy)) in steps.iter().zip(span_busy) {
        let path = fixture(name);
        let t = cached(name);
        let s = stats::compute(t, name);
        assert!(
            (s.gpu_span_us - span).abs() < 1e-3,
            "{name}: span {} vs {span}",
            s.gpu_span_us
        );
        assert!(
            (s.gpu_busy_us - busy).abs() < 1e-3,
            "{name}: busy {} vs {busy}",
            s.gpu_busy_us
        );
        let (n, total) = plain_kernel_totals(&path);
        assert_eq!(s.kernel_count, n, "{name}");
        assert!(
            (s.kernel_total_us - total).abs() <= 1e-9 * total,
            "{name}: {} vs {total}",
            s.kernel_total_us
        );
        assert!(
            s.gpu_busy_us <= s.gpu_span_us && s.gpu_busy_us > 0.0,
            "{name}"
        );
        assert!((s.gpu_idle_us - (s.gpu_span_us - s.gpu_busy_us)).abs() < 1e-6);
        let stage_count: usize = s.stages.iter().map(|x| x.count).sum();
        assert_eq!(stage_count, n);
        let kernel_rows: usize = s.kernels.iter().map(|x| x.count).sum();
        assert_eq!(kernel_rows, n);
        assert!(s.kernels.windows(2).all(|w| w[0].total_us >= w[1].total_us));

        let got: Vec<(&str, usize)> = s
            .steps
            .iter()
            .map(|x| (x.name.as_str(), x.kernel_count))
            .collect();
        assert_eq!(got, expect_steps, "{name}");
        let a = stats::kernel_step_assignment(t);
        assert_eq!(a.len(), n);
        assert_eq!(
            a.iter().filter(|(_, s)| s.is_none()).count(),
            unassigned,
            "{name}"
        );
        assert!(a.iter().all(|(i, _)| t.events[*i].is(&Category::Kernel)));
    }
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

fn sample_trace() -> Trace {
    let mut extra = BTreeMap::new();
    extra.insert("blocks per SM".to_string(), json!(1.5));
    extra.insert("note".to_string(), json!({"nested": [1, "two"]}));
    Trace {
        events: vec![
            TraceEvent {
                cat: Some(Category::Kernel),
                name: "flash_fwd_kernel".into(),
                pid: 0,
                tid: 7,
                ts_us: 1_234_567.891,
                dur_us: 0.001,
                device: Some(0),
                stream: Some(7),
                correlation: Some(42),
                external_id: Some(9),
                grid: Some([132, 1, 1]),
                block: Some([128, 1, 1]),
                registers_per_thread: Some(255),
                shared_memory_bytes: Some(232_448),
                stage: Some("attention.spatial".into()),
                step: Some("dit.step 3/50".into()),
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                scope: Some("attention.spatial".into()),
                extra_args: extra,
                ..Default::default()
            },
            TraceEvent {
                cat: Some(Category::GpuMemcpy),
                name: "Memcpy HtoD (Pageable -> Device)".into(),
                pid: 0,
                tid: 7,
                ts_us: 1_234_570.0,
                dur_us: 12.345,
                bytes: Some(1 << 20),
                ..Default::default()
            },
            TraceEvent {
                cat: Some(Category::CudaRuntime),
                name: "cudaLaunchKernel".into(),
                pid: 4242,
                tid: 4243,
                ts_us: 1_234_560.5,
                dur_us: 3.25,
                correlation: Some(42),
                ..Default::default()
            },
            TraceEvent {
                cat: None,
                name: "uncategorized".into(),
                pid: 4242,
                tid: 4243,
                ts_us: 0.0,
                dur_us: 0.0,
                ..Default::default()
            },
        ],
        base_time_ns: Some(1_751_410_836_000_000_000),
        schema_version: None,
        device_properties: Some(json!([{"id": 0, "name": "NVIDIA H100 80GB HBM3"}])),
        distributed_info: Some(json!({"backend": "nccl", "rank": 3, "world_size": 8})),
        process_names: [(4242, "python3".to_string())].into_iter().collect(),
        thread_names: [((4242, 4243), "thread 4243 (python3)".to_string())]
            .into_iter()
            .collect(),
        counters: vec![
            CounterEvent { name: "nvlink_bandwidth_gbps".into(), pid: 0, ts_us: 1_234_560.125, values: vec![("GB/s".into(), 17.25)] },
            CounterEvent { name: "nvlink_bandwidth_gbps".into(), pid: 5, ts_us: 1_234_570.0, values: vec![("GB/s".into(), 0.0)] },
        ],
    }
}

#[test]
fn write_plain_and_gz_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let t = sample_trace();
    for name in ["c.json", "c.json.gz"] {
        let p = dir.path().join(name);
        write_trace(&t, &p).unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(
            raw.starts_with(&[0x1f, 0x8b]),
            name.ends_with(".gz"),
            "{name}"
        );
        let back = read_trace(&p).unwrap();
        assert_eq!(back.events, t.events, "{name}");
        assert_eq!(back.counters, t.counters, "{name}");
        // A counter's process with no name of its own is named like a GPU's.
        assert_eq!(back.process_names.get(&5).map(String::as_str), Some("GPU 5"));
        assert_eq!(back.base_time_ns, t.base_time_ns);
        assert_eq!(back.schema_version, Some(1));
        assert_eq!(back.device_properties, t.device_properties);
        assert_eq!(
            back.process_names.get(&4242).map(String::as_str),
            Some("python3")
        );
        assert_eq!(
            back.process_names.get(&0).map(String::as_str),
            Some("GPU 0")
        );
        assert_eq!(
            back.thread_names.get(&(0, 7)).map(String::as_str),
            Some("stream 7")
        );
        assert_eq!(
            back.thread_names.get(&(4242, 4243)).map(String::as_str),
            Some("thread 4243 (python3)")
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no .tmp left behind"
    );
}

#[test]
fn written_json_is_current_kineto_schema() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.json");
    write_trace(&sample_trace(), &p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    // ns survive: whole-ns µs values are written with at most 3 decimals.
    assert!(text.contains("\"ts\":1234567.891"), "{text}");
    assert!(text.contains("\"dur\":0.001"));
    assert!(text.contains("\"dur\":12.345"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schemaVersion"], 1);
    assert_eq!(
        v["baseTimeNanoseconds"],
        json!(1_751_410_836_000_000_000i64)
    );
    let evs = v["traceEvents"].as_array().unwrap();
    let k = evs.iter().find(|e| e["cat"] == "kernel").unwrap();
    assert_eq!(k["ph"], "X");
    assert_eq!((k["pid"].clone(), k["tid"].clone()), (json!(0), json!(7)));
    let a = &k["args"];
    assert_eq!(a["device"], 0);
    assert_eq!(a["stream"], 7);
    assert_eq!(a["correlation"], 42);
    assert_eq!(a["External id"], 9);
    assert_eq!(a["grid"], json!([132, 1, 1]));
    assert_eq!(a["block"], json!([128, 1, 1]));
    assert_eq!(a["registers per thread"], 255);
    assert_eq!(a["shared memory"], 232_448);
    assert_eq!(a["gpuspan.stage"], "attention.spatial");
    assert_eq!(a["gpuspan.step"], "dit.step 3/50");
    assert_eq!(a["gpuspan.trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(a["gpuspan.scope"], "attention.spatial");
    assert_eq!(a["blocks per SM"], 1.5);
    assert_eq!(a["note"]["nested"][1], "two");
    let m = evs.iter().find(|e| e["cat"] == "gpu_memcpy").unwrap();
    assert_eq!(m["args"]["bytes"], 1 << 20);
    let r = evs.iter().find(|e| e["cat"] == "cuda_runtime").unwrap();
    assert_eq!(r["args"]["correlation"], 42);
    let u = evs.iter().find(|e| e["name"] == "uncategorized").unwrap();
    assert!(u.get("cat").is_none() && u.get("args").is_none());
    let meta: Vec<_> = evs.iter().filter(|e| e["ph"] == "M").collect();
    assert!(meta
        .iter()
        .any(|e| e["name"] == "thread_name" && e["args"]["name"] == "stream 7"));
    assert!(meta
        .iter()
        .any(|e| e["name"] == "process_name" && e["pid"] == 4242));
    // Real events keep their ts; only the one written with ts 0 had ts 0.
    assert_eq!(
        evs.iter()
            .filter(|e| e["ph"] == "X" && e["ts"] == 0.0)
            .count(),
        1
    );
}

#[test]
fn write_refuses_non_finite_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = sample_trace();
    t.events[1].dur_us = f64::NAN;
    let p = dir.path().join("bad.json.gz");
    let e = write_trace(&t, &p).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Unwritable destination: an error, not a panic, and no .tmp left.
    let p = dir.path().join("no/such/dir/c.json");
    assert!(write_trace(&sample_trace(), &p).is_err());
}

/// `write_trace_json_to` writes the bytes of the `.json` file `write_trace` writes, into any
/// writer, and refuses a non-finite time as the file writer does, writing nothing.
#[test]
fn json_into_a_writer_is_the_json_files_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let t = sample_trace();
    let p = dir.path().join("c.json");
    write_trace(&t, &p).unwrap();
    let (bytes, progress) = write_trace_json_to(&t, Vec::new(), &WriteOptions::default()).unwrap();
    assert_eq!(bytes, std::fs::read(&p).unwrap());
    assert_eq!((progress.events_written, progress.events_cut), (t.events.len(), 0));
    let mut bad = sample_trace();
    bad.events[1].ts_us = f64::INFINITY;
    let mut out = Vec::new();
    let e = write_trace_json_to(&bad, &mut out, &WriteOptions::default()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(out.is_empty());
}

#[test]
fn write_replaces_existing_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.json.gz");
    std::fs::write(&p, b"old").unwrap();
    write_trace(&sample_trace(), &p).unwrap();
    assert_eq!(read_trace(&p).unwrap().events.len(), 4);
}

/// What Chrome DevTools' trace engine, HTA and Perfetto need from every written event: only
/// `X` and `M` phases (no begin / end pairs to match), a name and a category on each (the
/// `M` events get Chrome's `__metadata`), and a `process_name` / `thread_name` for every
/// row that has events, GPU rows as Kineto names them, unnamed CPU rows by their ids.
#[test]
fn written_events_have_name_cat_and_every_row_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = sample_trace();
    // A CPU row with no name in the trace, in a process with none either.
    t.events.push(TraceEvent {
        cat: Some(Category::UserAnnotation),
        name: "dit.step 1/50".into(),
        pid: 77,
        tid: 78,
        ts_us: 1_234_561.0,
        dur_us: 9.0,
        ..Default::default()
    });
    let p = dir.path().join("c.json");
    write_trace(&t, &p).unwrap();
    let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let evs = v["traceEvents"].as_array().unwrap();
    let mut procs = BTreeMap::new();
    let mut threads = BTreeMap::new();
    for e in evs {
        match e["ph"].as_str() {
            Some("M") => {
                assert_eq!(e["cat"], "__metadata", "{e}");
                assert!(
                    e["ts"].is_number() && e["pid"].is_i64() && e["tid"].is_i64(),
                    "{e}"
                );
                let label = e["args"]["name"].as_str().unwrap().to_string();
                match e["name"].as_str().unwrap() {
                    "process_name" => procs.insert(e["pid"].as_i64().unwrap(), label),
                    "thread_name" => threads.insert(
                        (e["pid"].as_i64().unwrap(), e["tid"].as_i64().unwrap()),
                        label,
                    ),
                    other => panic!("unexpected metadata {other}"),
                };
            }
            Some("X") => {
                assert!(e["name"].is_string(), "{e}");
                // The writer invents no category: only the model's uncategorized event lacks one.
                assert!(e["cat"].is_string() || e["name"] == "uncategorized", "{e}");
            }
            Some("C") => {
                assert!(e["name"].is_string() && e["cat"] == "gpuspan" && e["ts"].is_number(), "{e}");
                assert!(e["args"].as_object().is_some_and(|a| a.values().all(Value::is_number)), "{e}");
            }
            other => panic!("phase {other:?} written: {e}"),
        }
    }
    for e in evs.iter().filter(|e| e["ph"] == "C") {
        assert!(procs.contains_key(&e["pid"].as_i64().unwrap()), "counter process unnamed: {e}");
    }
    for e in evs.iter().filter(|e| e["ph"] == "X") {
        let (pid, tid) = (e["pid"].as_i64().unwrap(), e["tid"].as_i64().unwrap());
        assert!(procs.contains_key(&pid), "process {pid} unnamed");
        assert!(
            threads.contains_key(&(pid, tid)),
            "thread {pid}/{tid} unnamed"
        );
    }
    assert_eq!(procs[&0], "GPU 0");
    assert_eq!(threads[&(0, 7)], "stream 7");
    assert_eq!(procs[&4242], "python3");
    assert_eq!(threads[&(4242, 4243)], "thread 4243 (python3)");
    assert_eq!(procs[&77], "process 77");
    assert_eq!(threads[&(77, 78)], "thread 78");
    // Read back, the invented names are the trace's names.
    let back = read_trace(&p).unwrap();
    assert_eq!(back.events, t.events);
    assert_eq!(
        back.thread_names.get(&(77, 78)).map(String::as_str),
        Some("thread 78")
    );
}

/// Whole-ns times (as CUPTI gives them) for a row of back-to-back kernels: the k-th starts
/// where the (k−1)-th ends. In µs `f64`, `ts + dur` of many of them lands one ulp past
/// the next `ts`, which Chrome's trace engine reads as an overlap and drops the later
/// kernel from its tree (never drawn). The writer writes those `dur`s one rounding error
/// shorter; nothing else changes.
#[test]
fn back_to_back_gpu_events_do_not_overlap_in_f64_when_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut t_ns: u64 = 1_763_000_000_251_724 - 1_763_000_000_000_000;
    for i in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let dur_ns = 1_000 + x % 200_000;
        let cat = if i % 97 == 0 {
            Category::GpuMemcpy
        } else {
            Category::Kernel
        };
        events.push(TraceEvent {
            cat: Some(cat),
            name: format!("k{}", i % 7),
            pid: 0,
            tid: 13,
            ts_us: t_ns as f64 / 1000.0,
            dur_us: dur_ns as f64 / 1000.0,
            device: Some(0),
            stream: Some(13),
            ..Default::default()
        });
        t_ns += dur_ns;
    }
    let touching = |evs: &[TraceEvent]| {
        evs.windows(2)
            .filter(|w| w[0].pid == 0 && w[1].pid == 0 && w[0].ts_us + w[0].dur_us > w[1].ts_us)
            .count()
    };
    let before = touching(&events);
    assert!(before > 50, "the data has f64 overlaps to fix: {before}");
    // Left alone: a real 1 ns overlap on another stream, and CPU events that touch.
    let real = |ts_ns: u64, dur_ns: u64| TraceEvent {
        cat: Some(Category::Kernel),
        name: "real".into(),
        pid: 0,
        tid: 14,
        ts_us: ts_ns as f64 / 1000.0,
        dur_us: dur_ns as f64 / 1000.0,
        ..Default::default()
    };
    events.push(real(500_000, 10_001));
    events.push(real(510_000, 5_000));
    let cpu = |ts: f64, dur: f64| TraceEvent {
        cat: Some(Category::CudaDriver),
        name: "cuLaunchKernel".into(),
        pid: 5,
        tid: 5,
        ts_us: ts,
        dur_us: dur,
        ..Default::default()
    };
    events.push(cpu(251.001, 62.661));
    events.push(cpu(313.662, 1.0));
    let n = events.len();
    assert!(
        events[n - 2].end_us() > events[n - 1].ts_us,
        "a CPU pair that overlaps by rounding"
    );
    let trace = Trace {
        events,
        base_time_ns: Some(1_763_000_000_000_000_000),
        ..Default::default()
    };

    let fixes = super::write::touching_dur_fixes(&&trace);
    assert_eq!(
        fixes.len(),
        before,
        "exactly the f64 overlaps on the GPU row"
    );
    for name in ["c.json", "c.json.gz"] {
        let p = dir.path().join(name);
        write_trace(&trace, &p).unwrap();
        let back = read_trace(&p).unwrap();
        assert_eq!(back.events.len(), trace.events.len());
        assert_eq!(
            touching(&back.events[..2000]),
            0,
            "{name}: no f64 overlap left on the row"
        );
        let mut changed = 0;
        for (a, b) in trace.events.iter().zip(&back.events) {
            assert_eq!(a.ts_us.to_bits(), b.ts_us.to_bits(), "ts never changes");
            if a.dur_us.to_bits() != b.dur_us.to_bits() {
                changed += 1;
                assert!(
                    b.dur_us < a.dur_us && a.dur_us - b.dur_us < 1e-9,
                    "{name}: {} → {}",
                    a.dur_us,
                    b.dur_us
                );
            }
            assert_eq!(
                (&a.name, a.pid, a.tid, &a.cat),
                (&b.name, b.pid, b.tid, &b.cat)
            );
        }
        assert_eq!(
            changed, before,
            "{name}: only the overlapping durations changed"
        );
        // The real overlap and the CPU events are as given.
        let n = trace.events.len();
        assert_eq!(back.events[n - 4..], trace.events[n - 4..]);
        // Kernel time moves by far less than a nanosecond in all.
        let sum = |t: &[TraceEvent]| t.iter().map(|e| e.dur_us).sum::<f64>();
        assert!((sum(&back.events) - sum(&trace.events)).abs() < 1e-6);
    }
}

// ---------------------------------------------------------------------------------------
// Reader: errors and leniency
// ---------------------------------------------------------------------------------------

#[test]
fn error_messages_name_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        read_err(d, "h.json.gz", &gzip(br#"{"schemaVersion": 1}"#)),
        ": not a Kineto trace: no \"traceEvents\" array"
    );
    assert_eq!(
        read_err(d, "x.json", b"{\n\"traceEvents\": [\n  {\"ph\": }\n]}"),
        ": invalid JSON at line 3 column 10: expected value"
    );
    let e = read_err(
        d,
        "y.json.gz",
        &[
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    );
    assert!(e.starts_with(": gzip stream corrupt: "), "{e}");
    let mut gz = gzip(br#"{"traceEvents": [{"ph": "X", "ts": 1, "dur": 2, "name": "k"}]}"#);
    gz.truncate(gz.len() - 12);
    let e = read_err(d, "t.json.gz", &gz);
    assert!(
        e.starts_with(": gzip stream corrupt: ") || e.starts_with(": invalid JSON"),
        "{e}"
    );
    assert_eq!(
        read_err(
            d,
            "ts.json",
            br#"{"traceEvents": [{"ph": "M"}, {"ph": "X", "name": "k", "dur": 1}]}"#
        ),
        ": event 1: complete (X) event \"k\" has no numeric \"ts\""
    );
    assert_eq!(
        read_err(
            d,
            "ts2.json",
            br#"{"traceEvents": [{"ph": "X", "name": "k", "ts": "soon", "dur": 1}]}"#
        ),
        ": event 0: complete (X) event \"k\" has no numeric \"ts\""
    );
    assert_eq!(
        read_err(
            d,
            "dur.json",
            br#"{"traceEvents": [{"ph": "X", "name": "k", "ts": 1, "dur": "long"}]}"#
        ),
        ": event 0: complete (X) event \"k\" has a non-numeric \"dur\""
    );
    assert_eq!(
        read_err(d, "obj.json", br#"{"traceEvents": [{"ph": "i"}, 7]}"#),
        ": event 1: not a JSON object"
    );
    let e = read_err(
        d,
        "dup.json",
        br#"{"traceEvents": [{"ph": "X", "ts": 1, "ts": 2}]}"#,
    );
    assert!(e.starts_with(": event 0: duplicate field `ts`"), "{e}");
    let e = read_err(d, "arr.json", br#"{"traceEvents": {"ph": "X"}}"#);
    assert!(
        e.starts_with(
            ": not a Kineto trace: invalid type: map, expected the \"traceEvents\" array"
        ),
        "{e}"
    );
    let e = read_err(d, "str.json", br#""hello""#);
    assert!(
        e.starts_with(": not a Kineto trace: invalid type: string"),
        "{e}"
    );
    assert_eq!(read_err(d, "empty.json", b""), ": empty file");
    let e = read_err(d, "trail.json", br#"{"traceEvents": []} x"#);
    assert!(
        e.starts_with(": invalid JSON at line 1 column 21: trailing characters"),
        "{e}"
    );
    let e = read_err(
        d,
        "base.json",
        br#"{"traceEvents": [], "baseTimeNanoseconds": "yesterday"}"#,
    );
    assert_eq!(
        e,
        ": not a Kineto trace: \"baseTimeNanoseconds\" is not an integer"
    );
    let missing = d.join("missing.json");
    let e = read_trace(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );
}

#[test]
fn lenient_numbers_ids_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let text = br#"{"traceEvents": [
        {"ph": "X", "cat": "Kernel", "name": "k", "pid": "0", "tid": "stream 7", "ts": "12.5", "dur": "3",
         "args": {"device": "0", "stream": 7.0, "correlation": 5, "external id": 3, "grid": [1, 2, 3],
                  "block": "bad", "gpuspan.stage": "ffn", "gpuspan.step": 4}},
        {"ph": "X", "cat": "Runtime", "name": 17, "pid": 1.0, "tid": 2, "ts": 10},
        {"ph": "X", "name": "nocat", "ts": 1e3, "dur": 2, "args": null},
        {"ph": "s", "id": 5, "ts": "whatever"},
        {"name": "no ph"},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": "2", "args": {"name": "main"}},
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python3"}},
        {"ph": "M", "name": "process_name", "pid": 9, "args": {}}
    ], "baseTimeNanoseconds": 1751410836000000000, "schemaVersion": "1", "unknown": {"deep": [1]}}"#;
    // Gzip detected by content, not by name, both ways.
    for (name, bytes) in [("a.json", gzip(text)), ("b.json.gz", text.to_vec())] {
        let t = read_trace(&write_file(dir.path(), name, &bytes)).unwrap();
        assert_eq!(t.events.len(), 3);
        let k = &t.events[0];
        assert_eq!(k.cat, Some(Category::Kernel));
        assert_eq!((k.pid, k.tid, k.ts_us, k.dur_us), (0, 7, 12.5, 3.0));
        assert_eq!(
            (k.device, k.stream, k.correlation, k.external_id),
            (Some(0), Some(7), Some(5), Some(3))
        );
        assert_eq!((k.grid, k.block), (Some([1, 2, 3]), None));
        assert_eq!(k.extra_args.get("block"), Some(&json!("bad")));
        assert_eq!(k.stage.as_deref(), Some("ffn"));
        assert_eq!(k.step, None);
        assert_eq!(k.extra_args.get("gpuspan.step"), Some(&json!(4)));
        let r = &t.events[1];
        assert_eq!(
            (r.cat.clone(), r.name.as_str(), r.pid, r.tid, r.dur_us),
            (Some(Category::CudaRuntime), "17", 1, 2, 0.0)
        );
        assert_eq!((t.events[2].cat.clone(), t.events[2].ts_us), (None, 1000.0));
        assert_eq!(
            t.thread_names.get(&(1, 2)).map(String::as_str),
            Some("main")
        );
        assert_eq!(t.process_names.len(), 1);
        assert_eq!(
            (t.base_time_ns, t.schema_version),
            (Some(1_751_410_836_000_000_000), Some(1))
        );
    }
    // Chrome's JSON Array Format.
    let t = read_trace(&write_file(
        dir.path(),
        "arr.json",
        br#"[{"ph": "X", "name": "k", "ts": 1, "dur": 1}]"#,
    ))
    .unwrap();
    assert_eq!(t.events.len(), 1);
}

/// A small but real trace (the first events of a fixture), as JSON text.
fn small_fixture_text() -> Vec<u8> {
    let v: Value = serde_json::from_slice(&gunzip(&fixture("h100-bert-small.json.gz"))).unwrap();
    let mut top = v.as_object().unwrap().clone();
    let evs = top["traceEvents"].as_array().unwrap();
    let mut keep: Vec<Value> = evs
        .iter()
        .filter(|e| e["ph"] == "M")
        .take(10)
        .cloned()
        .collect();
    keep.extend(
        evs.iter()
            .filter(|e| e["cat"] == "kernel")
            .take(20)
            .cloned(),
    );
    keep.extend(
        evs.iter()
            .filter(|e| e["cat"] == "cuda_runtime")
            .take(20)
            .cloned(),
    );
    keep.extend(evs.iter().filter(|e| e["ph"] == "f").take(5).cloned());
    top.insert("traceEvents".into(), Value::Array(keep));
    serde_json::to_vec_pretty(&top).unwrap()
}

#[test]
fn garbled_and_truncated_input_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_fixture_text();
    let gz = gzip(&text);
    let good = read_trace(&write_file(dir.path(), "good.json", &text)).unwrap();
    assert_eq!(good.kernels().count(), 20);

    let p = dir.path().join("f.json");
    let try_bytes = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        if let Err(e) = read_trace(&p) {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
        }
    };
    // Truncations of the plain and the gzipped file at many points.
    for src in [&text, &gz] {
        let n = src.len();
        for i in 0..200 {
            try_bytes(&src[..n * i / 200]);
        }
        for i in 0..64.min(n) {
            try_bytes(&src[..i]);
        }
    }
    // Random byte flips, insertions and deletions (deterministic xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let specials = b"{}[]\":,-0.e9X\\\x00\xff";
    for round in 0..300 {
        let src = if round % 3 == 0 { &gz } else { &text };
        let mut b = src.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % b.len();
            match next() % 3 {
                0 => b[at] = specials[(next() as usize) % specials.len()],
                1 => b[at] ^= 1 << (next() % 8),
                _ => {
                    b.remove(at);
                }
            }
        }
        try_bytes(&b);
    }
    // Structurally valid JSON of every odd shape.
    for s in [
        "null",
        "0",
        "[]",
        "{}",
        "[[]]",
        "[null]",
        r#"{"traceEvents": null}"#,
        r#"{"traceEvents": [[1, {}]]}"#,
        r#"{"traceEvents": [{"ph": ["X"]}]}"#,
        r#"{"traceEvents": [{"ph": "X", "ts": 1e308, "dur": -1e308}]}"#,
        r#"{"traceEvents": [{"ph": "X", "ts": "NaN"}]}"#,
        r#"{"traceEvents": [{"ph": "X", "ts": "inf"}]}"#,
        r#"{"traceEvents": [{"ph": "X", "ts": 1, "pid": 1e300, "tid": -99999999999999999999}]}"#,
        r#"{"traceEvents": [{"ph": "X", "ts": 1, "args": {"grid": [1e300, -1, 0.5], "bytes": 18446744073709551615}}]}"#,
        r#"{"traceEvents": [{"ph": "M", "name": "thread_name", "args": {"name": {"x": 1}}}]}"#,
        r#"{"traceEvents": [], "deviceProperties": null, "baseTimeNanoseconds": 1e30}"#,
        &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        &format!(
            r#"{{"traceEvents": [{{"ph": "X", "ts": 1, "args": {{"a": {}1{}}}}}]}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        ),
    ] {
        try_bytes(s.as_bytes());
    }
}

#[test]
fn drop_extra_args_reads_the_same_trace_without_untyped_args() {
    // The HTA control trace carries Kineto's per-kernel occupancy args ("blocks per SM",
    // "warps per SM", "est. achieved occupancy %", "queued", ...), none of them typed.
    let path = fixture("a100-hta-control.json.gz");
    let (full, _) = read_trace_with(&path, ReadOptions::default()).unwrap();
    let (lean, _) = read_trace_with(&path, ReadOptions { drop_extra_args: true, ..ReadOptions::default() }).unwrap();
    let dropped: usize = full.events.iter().map(|e| e.extra_args.len()).sum();
    assert!(dropped > full.events.len(), "the fixture has untyped args to drop: {dropped}");
    assert!(lean.events.iter().all(|e| e.extra_args.is_empty()));
    let mut stripped = full.clone();
    for e in &mut stripped.events {
        e.extra_args.clear();
    }
    assert_eq!(lean, stripped, "everything else is read the same");
    assert_eq!(stats::compute(&lean, "t"), stats::compute(&full, "t"), "and the statistics do not change");
}

/// With `drop_extra_args` the args are read lean (`read::LeanArgs`: no `Value` built for an
/// arg that would be dropped). Whatever reads args must get the same from both reads: the
/// typed fields (wrong types, duplicates, the old `external id` key), metadata names, and
/// counters' numeric args (a duplicate key's last value wins in both), on a synthetic trace
/// and on every fixture.
#[test]
fn lean_args_keep_what_every_use_of_args_needs() {
    let synthetic = br#"{"traceEvents": [
      {"ph": "M", "name": "process_name", "pid": 7, "tid": 0, "args": {"labels": ["a"], "name": "worker", "sort": 1}},
      {"args": {"name": "stream 3"}, "ph": "M", "name": "thread_name", "pid": 7, "tid": 3},
      {"ph": "M", "name": "thread_name", "pid": 7, "tid": 4, "args": {"name": 12}},
      {"ph": "C", "name": "nvlink_bandwidth_gbps", "pid": 0, "ts": 5.0,
       "args": {"rx": 1.5, "tx": 2, "note": "x", "dup": 1, "dup": "late", "back": "s", "back": 3,
                "arr": [1, 2], "obj": {"a": 1}, "big": 18446744073709551615, "neg": -4, "t": true}},
      {"ph": "X", "name": "k", "cat": "kernel", "pid": 0, "tid": 7, "ts": 10.0, "dur": 2.0,
       "args": {"device": 0, "stream": "7", "correlation": [1], "External id": 5, "external id": 6,
                "grid": [1, 2, 3], "block": [4, 5], "Input Dims": [[1, 2], [3]], "Call stack": "a;b",
                "nested": {"x": [1, {"y": "\u00e9\"\\"}]}, "bytes": 1e3, "correlation": 9,
                "gpuspan.stage": "ffn", "gpuspan.step": 3, "registers per thread": "32"}},
      {"ph": "X", "name": "k2", "pid": 0, "tid": 7, "ts": 12.0, "dur": 1.0, "args": [1, 2, 3]},
      {"ph": "X", "name": "k3", "pid": 0, "tid": 7, "ts": 13.0, "dur": 1.0, "args": "text"},
      {"ph": "X", "name": "k4", "pid": 0, "tid": 7, "ts": 14.0, "dur": 1.0, "args": null},
      {"ph": "X", "name": "k5", "pid": 0, "tid": 7, "ts": 15.0, "dur": 1.0, "args": {"external id": 8, "shared memory": 1024}},
      {"ph": "X", "name": "k6", "cat": 3, "pid": "stream 2", "tid": 7, "ts": 16.0, "dur": 1.0,
       "args": {"device": 1, "device": "x", "External id": "bad", "external id": 6, "stream": 2.5,
                "correlation": 9223372036854775808, "grid": [1, 2, 3, 4], "block": [1, [2], 3],
                "bytes": " 12 ", "gpuspan.scope": 5, "gpuspan.trace_id": "ab", "gpuspan.trace_id": null,
                "registers per thread": 3.0, "shared memory": -1e3, "gpuspan.step": {"a": 1}}},
      {"args": {"device": 4, "grid": [7, 8, 9], "extra": 1}, "ph": "X", "name": "late phase", "cat": "Kernel", "pid": 0, "tid": 7, "ts": 17.0, "dur": 1.0},
      {"ph": "X", "name": "no cat", "cat": null, "pid": 0, "tid": 7, "ts": 18.0, "dur": 1.0, "args": {"gpuspan.stage": "vae", "External id": 1, "External id": 2}}
    ]}"#;
    let lean_opts = ReadOptions { drop_extra_args: true, ..ReadOptions::default() };
    let check = |what: &str, full: Trace, lean: Trace| {
        assert!(lean.events.iter().all(|e| e.extra_args.is_empty()), "{what}");
        let mut stripped = full.clone();
        for e in &mut stripped.events {
            e.extra_args.clear();
        }
        assert_eq!(lean, stripped, "{what}: events, names and counters read the same");
    };
    let path = Path::new("synthetic.json");
    let (full, _) = read_trace_bytes(synthetic, path, ReadOptions::default()).unwrap();
    let (lean, _) = read_trace_bytes(synthetic, path, lean_opts).unwrap();
    // What the synthetic trace must give, so the comparison is not of two empty reads.
    assert_eq!(full.process_names.get(&7).map(String::as_str), Some("worker"));
    assert_eq!(full.thread_names.get(&(7, 3)).map(String::as_str), Some("stream 3"));
    let mut counter: Vec<(String, f64)> = full.counters[0].values.clone();
    counter.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&str> = counter.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["back", "big", "neg", "rx", "tx"], "numeric args only, the last duplicate winning");
    let k = &full.events[0];
    assert_eq!((k.device, k.stream, k.correlation, k.external_id), (Some(0), Some(7), Some(9), Some(5)));
    assert_eq!((k.grid, k.block, k.bytes, k.stage.as_deref()), (Some([1, 2, 3]), None, Some(1000), Some("ffn")));
    assert_eq!((full.events[4].external_id, full.events[4].shared_memory_bytes), (Some(8), Some(1024)));
    // Duplicates (the last wins), values that do not convert, and the old key behind the new.
    let k6 = &full.events[5];
    assert_eq!((k6.device, k6.external_id, k6.stream, k6.correlation, k6.grid, k6.block), (None, Some(6), None, None, None, None));
    assert_eq!((k6.bytes, k6.scope.as_deref(), k6.trace_id.as_deref(), k6.registers_per_thread, k6.shared_memory_bytes), (Some(12), None, None, Some(3), Some(-1000)));
    assert_eq!((k6.cat.as_ref().map(|c| c.as_kineto()), k6.pid), (Some("3"), 2));
    assert_eq!((full.events[6].device, full.events[6].grid, full.events[6].cat.as_ref().map(|c| c.as_kineto())), (Some(4), Some([7, 8, 9]), Some("kernel")));
    assert_eq!((full.events[7].cat.is_none(), full.events[7].external_id, full.events[7].stage.as_deref()), (true, Some(2), Some("vae")));
    check("synthetic", full, lean);
    for name in ["a100-hta-control.json.gz", "h100-bert-small.json.gz", "h100-qwen-prefill.json.gz", "h100-vit-falconsai.json.gz", "v100-resnet50-oldschema.json.gz"] {
        let path = fixture(name);
        let (full, _) = read_trace_with(&path, ReadOptions::default()).unwrap();
        let (lean, _) = read_trace_with(&path, lean_opts).unwrap();
        check(name, full, lean);
    }
}

/// The hand-written JSON writer (`json_out`) writes the bytes serde_json wrote before it, on
/// every fixture (real names, args, numbers, counters and row names) and on a trace with
/// strings to escape and untyped args of every JSON type.
#[test]
fn hand_written_json_is_byte_identical_to_serde_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut odd = Trace { schema_version: Some(1), base_time_ns: Some(1_700_000_000_123_456_789), ..Default::default() };
    odd.events.push(TraceEvent {
        cat: Some(Category::Kernel),
        name: "k<\"q\", '\\\\'>\t\u{1}\u{c}\u{7f}é😀".into(),
        pid: 0,
        tid: 7,
        ts_us: 0.1,
        dur_us: 1e-3,
        device: Some(0),
        stream: Some(7),
        correlation: Some(i64::MAX),
        grid: Some([1, -2, 3]),
        stage: Some("ffn\n".into()),
        extra_args: BTreeMap::from([
            ("null".to_string(), Value::Null),
            ("bool".to_string(), json!(true)),
            ("u64".to_string(), json!(u64::MAX)),
            ("neg".to_string(), json!(-5)),
            ("float".to_string(), json!(0.30000000000000004)),
            ("array".to_string(), json!([1, "a", {"b": null}])),
            ("object".to_string(), json!({"z": 1, "a": [2.5]})),
            ("str\"key".to_string(), json!("v\\al")),
            ("stream".to_string(), json!("shadowed by the typed key")),
        ]),
        ..Default::default()
    });
    odd.events.push(TraceEvent { name: "bare".into(), pid: -1, tid: 3, ts_us: 2.0, ..Default::default() });
    odd.counters.push(CounterEvent { name: "c".into(), pid: 0, ts_us: 1.5, values: vec![("v".into(), 2.0)] });
    let mut traces: Vec<(&str, &Trace)> = FIXTURE_KERNELS.iter().map(|&(n, _)| (n, cached(n))).collect();
    traces.push(("escapes and odd args", &odd));
    for (name, t) in traces {
        let path = dir.path().join("t.json");
        write_trace(t, &path).unwrap();
        let ours = std::fs::read(&path).unwrap();
        let reference = super::write::serde_reference::json(t);
        if ours != reference {
            let at = ours.iter().zip(&reference).position(|(a, b)| a != b).unwrap_or(ours.len().min(reference.len()));
            let lo = at.saturating_sub(80);
            panic!(
                "{name}: bytes differ at {at}:\n ours {}\n serde {}",
                String::from_utf8_lossy(&ours[lo..(at + 80).min(ours.len())]),
                String::from_utf8_lossy(&reference[lo..(at + 80).min(reference.len())])
            );
        }
    }
}

/// Traces around `SLICE_PARSE_MAX_BYTES` (parsed from memory at or below it, streamed above
/// it, the part already read chained in front of the rest): every event reads, the ones
/// across the 8 MiB mark too, plain and gzipped, and a gzip cut short past the mark is
/// still a gzip error.
#[test]
fn traces_either_side_of_the_slice_limit_read_whole() {
    use super::read::SLICE_PARSE_MAX_BYTES;
    // Every event the same length (7-digit numbers), so the byte count is known.
    let event = |i: usize| {
        let id = 1_000_000 + i;
        format!(r#"{{"ph": "X", "cat": "kernel", "name": "k{i:07}", "ts": {id}, "dur": 1, "args": {{"stream": 7, "correlation": {id}}}}}"#)
    };
    let trace_of = |n: usize| -> Vec<u8> {
        let events: Vec<String> = (0..n).map(event).collect();
        format!(r#"{{"schemaVersion": 1, "traceEvents": [{}]}}"#, events.join(",\n")).into_bytes()
    };
    let per_event = event(0).len() + 2;
    let dir = tempfile::tempdir().unwrap();
    let at_limit = SLICE_PARSE_MAX_BYTES / per_event;
    for n in [at_limit - 200, at_limit + 200, 2 * at_limit] {
        let text = trace_of(n);
        assert_eq!(text.len() > SLICE_PARSE_MAX_BYTES, n > at_limit, "{n} events: {} bytes", text.len());
        for (name, bytes) in [("t.json", text.clone()), ("t.json.gz", gzip(&text))] {
            let f = write_file(dir.path(), name, &bytes);
            let t = crate::read_trace(&f).unwrap_or_else(|e| panic!("{n} events, {name}: {e}"));
            assert_eq!(t.events.len(), n, "{name}");
            for (i, e) in t.events.iter().enumerate() {
                assert_eq!((e.name.as_str(), e.correlation), (format!("k{i:07}").as_str(), Some(1_000_000 + i as i64)), "{name}");
            }
        }
    }
    let mut gz = gzip(&trace_of(2 * at_limit));
    gz.truncate(gz.len() - 100);
    let e = read_err(dir.path(), "cut.json.gz", &gz);
    assert!(e.starts_with(": gzip stream corrupt: truncated"), "{e}");
    // Past the limit a trace is split into events (kineto/split.rs); a fault there is read
    // again by the streaming parse, so the error names its place in the whole text: a
    // syntax error in the last event (line n), and in strict mode a bad event's index.
    let n = 2 * at_limit;
    let broken = String::from_utf8(trace_of(n)).unwrap().replace(&format!(r#""dur": 1, "args": {{"stream": 7, "correlation": {}}}"#, 1_000_000 + n - 1), r#""dur": 1 "x""#);
    for (name, bytes) in [("bad.json", broken.clone().into_bytes()), ("bad.json.gz", gzip(broken.as_bytes()))] {
        let e = read_err(dir.path(), name, &bytes);
        assert!(e.contains(&format!("invalid JSON at line {n} column ")), "{name}: {e}");
    }
    let no_ts = String::from_utf8(trace_of(n)).unwrap().replace(&format!(r#""ts": {}, "#, 1_000_000 + n - 7), "");
    let e = read_err(dir.path(), "no-ts.json.gz", &gzip(no_ts.as_bytes()));
    assert!(e.contains(&format!("event {}", n - 7)) && e.contains("no numeric \"ts\""), "{e}");
}

/// A host-op filter ([`ReadOptions::keep_host_op`]) drops exactly the `cpu_op` /
/// `python_function` events it declines, whatever the order of their fields, and checks
/// them as any complete event: a malformed one is skipped with the same message (lenient)
/// or the same error (strict) as without the filter. An entry of a phase the reader ignores
/// is read only as far as its `ph`, but a key it repeats is still refused. On every fixture
/// (the two 35 MB ones read split into batches) the filtered read is the unfiltered one
/// less the host ops declined.
#[test]
fn a_host_op_filter_drops_only_what_it_declines() {
    fn keep(name: &str) -> bool {
        name.starts_with("keep") || name.starts_with("ProfilerStep#")
    }
    let host_op = |e: &TraceEvent| matches!(e.cat, Some(Category::CpuOp | Category::PythonFunction));
    let lean = ReadOptions { drop_extra_args: true, ..ReadOptions::default() };
    let filtered = ReadOptions { keep_host_op: Some(keep), ..lean };
    let path = Path::new("synthetic.json");
    let synthetic = br#"{"traceEvents": [
      {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 1.0, "dur": 2.0, "args": {"External id": 3, "Input Dims": [[1, 2], []], "Call stack": "a\"b"}},
      {"ph": "X", "cat": "cpu_op", "name": "keep me", "pid": 1, "tid": 1, "ts": 2.0, "dur": 1.0, "args": {"External id": 4}},
      {"ph": "X", "cat": "python_function", "name": "f.py(1): g", "pid": 1, "tid": 1, "ts": 3.0, "dur": 1.0},
      {"args": {"External id": 5}, "ph": "X", "cat": "Operator", "name": "args first", "pid": 1, "tid": 1, "ts": 4.0, "dur": 1.0},
      {"ph": "X", "cat": "user_annotation", "name": "not a host op", "pid": 1, "tid": 1, "ts": 5.0, "dur": 1.0},
      {"ph": "f", "id": 1, "pid": 1, "tid": 1, "ts": 5.5, "cat": "ac2g", "name": "launch", "bp": "e"},
      {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 6.0, "dur": 1.0, "args": {"correlation": 9}},
      {"ph": "X", "cat": "cpu_op", "name": 12, "pid": 1, "tid": 1, "ts": 7.0, "dur": 1.0},
      {"cat": "cpu_op", "name": "an instant", "ph": "i", "pid": 1, "tid": 1, "ts": 8.0, "s": "t"},
      {"ph": "X", "cat": "cpu_op", "name": "aten::\u0061dd", "pid": 1, "tid": 1, "ts": 9.0, "dur": 1.0},
      {"ph": "X", "cat": "cpu_op", "name": "keep \"quoted\"", "pid": 1, "tid": 1, "ts": 10.0, "dur": 1.0}
    ]}"#;
    let names = |t: &Trace| t.events.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let (all, all_skipped) = read_trace_bytes(synthetic, path, lean).unwrap();
    let (some, some_skipped) = read_trace_bytes(synthetic, path, filtered).unwrap();
    assert_eq!((all_skipped.count, some_skipped.count), (0, 0), "an instant is no complete event to check");
    assert_eq!(names(&all), ["aten::mm", "keep me", "f.py(1): g", "args first", "not a host op", "k", "12", "aten::add", "keep \"quoted\""]);
    assert_eq!(
        names(&some),
        ["keep me", "not a host op", "k", "12", "keep \"quoted\""],
        "declined host ops dropped (escaped names too), a name that is not a string kept"
    );
    assert_eq!(some.events[0], all.events[1]);
    assert_eq!(some.events[2].correlation, Some(9));

    // A declined host op without a numeric `ts`, and one without a `dur` (malformed when
    // lenient, 0 when strict): the same skips, or the same error, as unfiltered.
    let bad = br#"{"traceEvents": [
      {"ph": "X", "cat": "cpu_op", "name": "aten::ok", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0},
      {"ph": "X", "cat": "cpu_op", "name": "aten::no_dur", "pid": 1, "tid": 1, "ts": 1.5},
      {"ph": "X", "cat": "cpu_op", "name": "aten::bad", "pid": 1, "tid": 1, "ts": "soon", "dur": 1.0, "args": {"x": 1}}
    ]}"#;
    for strict in [false, true] {
        let read = |o: ReadOptions| read_trace_bytes(bad, path, ReadOptions { strict, ..o }).map_err(|e| e.to_string());
        let (want, got) = (read(lean), read(filtered));
        match (&want, &got) {
            (Ok((_, w)), Ok((t, g))) => {
                assert!(!strict);
                assert_eq!((w.count, g.count), (2, 2));
                assert_eq!(g, w, "the same skips counted, the same first");
                assert!(t.events.is_empty(), "the good one declined, the bad ones skipped");
            }
            (Err(w), Err(g)) => {
                assert!(strict);
                assert!(w.contains("aten::bad") && w.contains("\"ts\""), "{w}");
                assert_eq!(g, w, "the same error");
            }
            _ => panic!("strict {strict}: {want:?} against {got:?}"),
        }
    }

    // A flow event is read only to its phase, yet a key repeated after it is still refused.
    let repeated = br#"{"traceEvents": [{"ph": "f", "id": 1, "ts": 1.0, "cat": "ac2g", "ts": 2.0}]}"#;
    for o in [ReadOptions::default(), lean, filtered] {
        let e = read_trace_bytes(repeated, path, ReadOptions { strict: true, ..o }).unwrap_err().to_string();
        assert!(e.contains("duplicate field `ts`"), "{e}");
    }

    let mut declined = 0;
    for (name, _) in FIXTURE_KERNELS {
        let (mut all, all_skipped) = read_trace_with(&fixture(name), lean).unwrap();
        let (some, some_skipped) = read_trace_with(&fixture(name), filtered).unwrap();
        let before = all.events.len();
        all.events.retain(|e| !host_op(e) || keep(&e.name));
        declined += before - all.events.len();
        assert_eq!(some, all, "{name}");
        assert_eq!(some_skipped, all_skipped, "{name}");
    }
    // qwen-prefill alone holds 8,448 host ops; a100-hta-control 40,506.
    assert!(declined > 40_000, "{declined} host ops declined in all");
}

/// A lean read holds each event's `ph` without a `String` where it is one of Chrome's
/// phases: every kind of phase (Kineto's, Chrome's others, unknown ones, a number, null, a
/// repeated `ph`) reads as in a full read, with the same skips or the same error.
#[test]
fn phases_of_every_kind_read_the_same_lean() {
    let path = Path::new("phases.json");
    let events = [
        r#"{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1.0, "dur": 1.0}"#,
        r#"{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "gpu"}}"#,
        r#"{"ph": "C", "name": "c", "pid": 0, "ts": 2.0, "args": {"v": 1}}"#,
        r#"{"ph": "B", "name": "b", "pid": 0, "tid": 1, "ts": 3.0}"#,
        r#"{"ph": "(", "name": "ctx", "pid": 0, "tid": 1, "ts": 3.5}"#,
        r#"{"ph": "f", "id": 1, "pid": 0, "tid": 1, "ts": 4.0, "bp": "e"}"#,
        r#"{"ph": "Q", "name": "unknown", "pid": 0, "ts": 5.0}"#,
        r#"{"ph": 5, "name": "numeric phase", "pid": 0, "ts": 6.0}"#,
        r#"{"ph": null, "name": "null phase", "pid": 0, "ts": 7.0}"#,
        r#"{"name": "no phase", "pid": 0, "ts": 8.0}"#,
    ];
    let json = format!(r#"{{"traceEvents": [{}]}}"#, events.join(",\n"));
    for strict in [false, true] {
        let full = read_trace_bytes(json.as_bytes(), path, ReadOptions { strict, ..ReadOptions::default() }).map_err(|e| e.to_string());
        let lean = read_trace_bytes(json.as_bytes(), path, ReadOptions { strict, drop_extra_args: true, ..ReadOptions::default() }).map_err(|e| e.to_string());
        assert_eq!(lean, full, "strict {strict}");
        let (t, skipped) = full.unwrap();
        assert_eq!((t.events.len(), t.counters.len(), t.process_names.len()), (1, 1, 1), "strict {strict}");
        assert_eq!(skipped.count, if strict { 0 } else { 4 }, "strict {strict}: the unknown, numeric, null and missing phases");
    }
    let repeated = br#"{"traceEvents": [{"ph": "X", "name": "k", "ts": 1.0, "dur": 1.0, "ph": "X"}]}"#;
    for drop_extra_args in [false, true] {
        let e = read_trace_bytes(repeated, path, ReadOptions { strict: true, drop_extra_args, ..ReadOptions::default() }).unwrap_err().to_string();
        assert!(e.contains("duplicate field `ph`"), "lean {drop_extra_args}: {e}");
    }
}

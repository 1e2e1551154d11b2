//! Capture writing speed (issue 14, item 2: at least 2 M events/s on one core into a
//! `.json.gz` that HTA, Perfetto and Chrome's trace engine open).
//!
//! Builds a trace of `EVENTS` kernel events (default 400 000) from the events of a real
//! H100 fixture (`h100-qwen-prefill`, repeated with timestamps shifted by whole ns, so names,
//! args and number shapes are real ones) and writes it with `gpuspan_export::kineto::write_trace_with`
//! the way the agent does: uncompressed into a file, serialised alone into `io::sink()`
//! (`write_trace_json_to`: the writing thread's share), gzip level 1 (what the
//! exit path uses) and level 6 (flate2's default), each deflated on the writing thread (+0)
//! and on `gzip::default_threads()` threads beside it (the exit path's; one gzip member
//! either way). Side by side in the same run, the same
//! JSON bytes are deflated with `miniz_oxide` (flate2's former backend) at levels 1 and 6, so
//! the backend's share shows as a ratio. Each figure is the best of `RUNS` (default 3), on
//! the calling thread (the writer is single-threaded).
//!
//! Then the same writes of `EVENTS` events as the agent's fine-mode capture holds them
//! ([`agent_capture_of`]: a launch event and a kernel event per kernel, the agent's args).
//!
//! Run: `cargo bench --bench capture_write` (environment: `EVENTS`, `RUNS`).

use gpuspan_core::trace::Trace;
use gpuspan_export::kineto::{write_trace_with, WriteOptions};
use std::path::Path;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `EVENTS` kernel events: the fixture's kernels, repeated back to back.
fn trace_of(events: usize) -> Trace {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/traces/h100-qwen-prefill.json.gz");
    let t = gpuspan_export::read_trace(&fixture).expect("fixture trace");
    let kernels: Vec<_> = t.kernels().cloned().collect();
    assert!(!kernels.is_empty());
    let span_us = kernels.iter().map(|k| k.ts_us + k.dur_us).fold(0.0, f64::max) - kernels.iter().map(|k| k.ts_us).fold(f64::INFINITY, f64::min);
    let mut out = Trace { events: Vec::with_capacity(events), ..t.clone() };
    let mut round = 0u64;
    while out.events.len() < events {
        for k in &kernels {
            if out.events.len() == events {
                break;
            }
            let mut e = k.clone();
            // Kept a whole number of ns, as CUPTI's timestamps and so every capture's are.
            e.ts_us = ((e.ts_us + round as f64 * (span_us + 1000.0)) * 1000.0).round() / 1000.0;
            out.events.push(e);
        }
        round += 1;
    }
    out
}

/// `events` events as the agent's fine-mode capture holds them (`gpuspan run --mode fine` of
/// the wan2.1 replay: one `cuda_driver` launch event and one kernel event per kernel, about
/// 470 bytes of JSON an event where the fixture's kernel events alone are about 780): the
/// fixture's kernels with the agent's typed args (device, stream, correlation, grid, block,
/// registers, shared memory, `gpuspan.stage` / `.trace_id` / `.scope`) in place of Kineto's
/// occupancy args, each after its `cuLaunchKernel` (`args.correlation` only).
fn agent_capture_of(events: usize) -> Trace {
    use gpuspan_core::trace::Category;
    let kernels = trace_of(events.div_ceil(2));
    let trace_id = "42bf122c828339933dd78a50ccd20343";
    let scope = format!("gpuspan.request 00-{trace_id}-7f0dc5139760ca1f-01 model=wan2.1");
    let stages = ["attention.spatial", "ffn", "elementwise", "norm", "gemm"];
    let mut out = Trace { events: Vec::with_capacity(events), ..kernels.clone() };
    for (i, k) in kernels.events.iter().enumerate() {
        let correlation = Some(i as i64 + 1);
        if out.events.len() < events {
            out.events.push(gpuspan_core::trace::TraceEvent {
                cat: Some(Category::CudaDriver),
                name: "cuLaunchKernel".into(),
                pid: 32551,
                tid: 32551,
                ts_us: ((k.ts_us - 5.0) * 1000.0).round() / 1000.0,
                dur_us: 3.25,
                correlation,
                ..Default::default()
            });
        }
        if out.events.len() < events {
            let mut e = k.clone();
            e.extra_args.clear();
            e.correlation = correlation;
            e.stage = Some(stages[i % stages.len()].into());
            e.trace_id = Some(trace_id.into());
            e.scope = Some(scope.clone());
            out.events.push(e);
        }
    }
    out
}

/// Best wall time of `runs` calls of `f`.
fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let events = env_usize("EVENTS", 400_000);
    let runs = env_usize("RUNS", 3);
    let trace = trace_of(events);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, level: Option<u32>, threads: usize| {
        let p = dir.path().join(name);
        let opts = WriteOptions { gzip_level: level, gzip_threads: Some(threads), ..Default::default() };
        let d = best(runs, || {
            write_trace_with(&trace, &p, &opts).expect("write");
        });
        (d, std::fs::metadata(&p).unwrap().len())
    };
    let rate = |d: Duration| events as f64 / d.as_secs_f64() / 1e6;
    let (json_d, json_bytes) = write("capture.json", None, 0);
    println!("{events} kernel events of the fixture, {:.1} MB of JSON", json_bytes as f64 / 1e6);
    println!("json into a file             {:>8.1} ms  {:>6.2} M events/s", json_d.as_secs_f64() * 1e3, rate(json_d));
    // The writing thread's own work: serialisation into io::sink(), no file, no deflate.
    let ser_d = best(runs, || {
        gpuspan_export::kineto::write_trace_json_to(&trace, std::io::sink(), &WriteOptions::default()).expect("serialise");
    });
    println!("json serialisation alone     {:>8.1} ms  {:>6.2} M events/s  (the writing thread's share)", ser_d.as_secs_f64() * 1e3, rate(ser_d));
    let threads = gpuspan_export::kineto::gzip::default_threads();
    for level in [1u32, 6] {
        for t in [0, threads] {
            let (d, bytes) = write(&format!("capture-{level}-{t}.json.gz"), Some(level), t);
            println!(
                "json.gz level {level}, +{t} deflate thread(s) {:>8.1} ms  {:>6.2} M events/s  {:>6.1} MB  (goal ≥ 2 M events/s)",
                d.as_secs_f64() * 1e3,
                rate(d),
                bytes as f64 / 1e6
            );
            if t == threads {
                break;
            }
        }
    }
    // The agent's own captures: shorter events on average (a launch event per kernel).
    let agent = agent_capture_of(events);
    let p = dir.path().join("agent.json");
    write_trace_with(&agent, &p, &WriteOptions::default()).expect("write");
    println!("{events} events as the agent's fine-mode capture holds them, {:.1} MB of JSON", std::fs::metadata(&p).unwrap().len() as f64 / 1e6);
    let ser_d = best(runs, || {
        gpuspan_export::kineto::write_trace_json_to(&agent, std::io::sink(), &WriteOptions::default()).expect("serialise");
    });
    println!("  json serialisation alone   {:>8.1} ms  {:>6.2} M events/s", ser_d.as_secs_f64() * 1e3, rate(ser_d));
    for t in [0, threads] {
        let p = dir.path().join(format!("agent-{t}.json.gz"));
        let opts = WriteOptions { gzip_level: Some(1), gzip_threads: Some(t), ..Default::default() };
        let d = best(runs, || {
            write_trace_with(&agent, &p, &opts).expect("write");
        });
        println!(
            "  json.gz level 1, +{t} deflate thread(s) {:>8.1} ms  {:>6.2} M events/s  {:>6.1} MB  (goal ≥ 2 M events/s)",
            d.as_secs_f64() * 1e3,
            rate(d),
            std::fs::metadata(&p).unwrap().len() as f64 / 1e6
        );
        if t == threads {
            break;
        }
    }
    // Its JSON through flate2 (zlib-rs) at level 1 alone: with serialisation on the same
    // core the rate cannot pass this one.
    let agent_json = std::fs::read(&p).unwrap();
    let d = best(runs, || {
        let mut z = flate2::write::DeflateEncoder::new(Vec::with_capacity(agent_json.len() / 4), flate2::Compression::new(1));
        std::io::Write::write_all(&mut z, &agent_json).unwrap();
        z.finish().unwrap();
    });
    println!("  deflate level 1 alone (flate2) {:>8.1} ms  {:>6.2} M events/s", d.as_secs_f64() * 1e3, rate(d));
    // The fixture's JSON bytes through miniz_oxide, side by side: deflate alone.
    let json = std::fs::read(dir.path().join("capture.json")).unwrap();
    for level in [1u8, 6] {
        let mut out_len = 0;
        let d = best(runs, || out_len = miniz_oxide::deflate::compress_to_vec(&json, level).len());
        println!("deflate level {level} (miniz_oxide) {:>8.1} ms  {:>6.2} M events/s  {:>6.1} MB", d.as_secs_f64() * 1e3, rate(d), out_len as f64 / 1e6);
    }
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(1));
    let d = best(runs, || {
        z = flate2::write::DeflateEncoder::new(Vec::with_capacity(json.len() / 4), flate2::Compression::new(1));
        std::io::Write::write_all(&mut z, &json).unwrap();
    });
    println!("deflate level 1 (flate2)      {:>8.1} ms  {:>6.2} M events/s", d.as_secs_f64() * 1e3, rate(d));
}

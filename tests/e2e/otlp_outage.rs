//! The OTLP endpoint is down for the first 10 s of a run, then comes up (issue 3): the
//! worker's steps take as long as they do with the endpoint up, the span backlog stays
//! under its bound, spans made after recovery arrive, and the dropped count is reported
//! in a metric and in one log line.

use crate::util::*;
use gpuspan_testkit::{OtlpReceiver, Transport};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Value of `gpuspan_records_dropped_total{reason="otlp_spans"}` on the agent's endpoint.
fn scrape_otlp_dropped(addr: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("gpuspan_records_dropped_total{") && l.contains("reason=\"otlp_spans\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// CPU durations (µs) of the `dit.step` ranges, with their end time relative to the first.
fn step_durations(capture: &std::path::Path) -> Vec<(f64, f64)> {
    let t = gpuspan_export::read_trace(capture).unwrap();
    let mut v: Vec<(f64, f64)> = t
        .events
        .iter()
        .filter(|e| e.name.starts_with("dit.step ") && e.cat.as_ref().is_some_and(|c| format!("{c:?}").contains("UserAnnotation")))
        .map(|e| (e.ts_us + e.dur_us, e.dur_us))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t0 = v.first().map(|x| x.0 - x.1).unwrap_or(0.0);
    v.iter().map(|(end, d)| (end - t0, *d)).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn endpoint_down_for_10s_then_up() {
    // Refuses connections until the receiver starts on it; held so no parallel test is
    // handed the same port meanwhile.
    let reserved = gpuspan_testkit::ReservedPort::new();
    let otlp_port = reserved.port();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // Kernel spans capped at 200 per request (≈ 240 spans, ≈ 150 KB per request): a 10 s
    // outage (≈ 3 requests) overflows a 256 KiB backlog, while one request's burst after
    // recovery fits in it even when a loaded machine exports slowly.
    let bound: usize = 256 << 10;
    let out = tempfile::tempdir().unwrap();
    let requests = 6;
    let mut c = gpuspan();
    c.args(["run", "--mode", "fine", "--sim", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--steps", "5", "--requests", &requests.to_string()])
        .env("GPUSPAN_SIM_CLOCK", "real")
        .env("GPUSPAN_METRICS_ADDR", &metrics_addr)
        .env("GPUSPAN_OTLP_BACKLOG_BYTES", bound.to_string())
        .env("GPUSPAN_KERNEL_SPAN_BUDGET", "200")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp_port}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = stderr;
        let _ = r.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_secs(10).saturating_sub(t0.elapsed()));
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, &format!("127.0.0.1:{}", reserved.release()));
    let recovered_at = t0.elapsed();
    // The metric counts drops while the worker runs.
    let mut dropped_metric = None;
    while child.try_wait().unwrap().is_none() {
        if let Some(v) = scrape_otlp_dropped(&metrics_addr) {
            dropped_metric = Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = child.wait().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(status.success(), "worker failed: {stderr}");
    let run_time = t0.elapsed();
    assert!(run_time > recovered_at + Duration::from_secs(2), "the run must outlast the outage: {run_time:?}");

    // Summary counters the agent wrote into the capture.
    let capture = capture_in(out.path());
    let trace = gpuspan_export::read_trace(&capture).unwrap();
    let summary = trace.events.iter().find(|e| e.name == "gpuspan.summary").unwrap();
    let arg = |k: &str| summary.extra_args.get(k).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("{k} missing"));
    let dropped = arg("gpuspan.otlp_spans_dropped");
    let exported = arg("gpuspan.otlp_spans_exported");
    assert!(dropped > 0, "a 10 s outage with a {bound}-byte backlog drops spans");
    assert_eq!(dropped + exported, arg("gpuspan.otlp_spans_submitted"));
    assert!(arg("gpuspan.otlp_backlog_peak_bytes") <= bound as u64, "backlog stayed under its bound");
    // Steps were finalized as they completed (all launches matched), none by the grace timer.
    assert_eq!(arg("gpuspan.span_steps"), 5 * requests as u64);
    assert_eq!(arg("gpuspan.span_units_timed_out"), 0);
    assert_eq!(arg("gpuspan.span_gpu_late"), 0);
    assert_eq!(rx.spans().len() as u64, exported, "every exported span arrived");

    println!(
        "run {run_time:?}, endpoint up at {recovered_at:?}: {dropped} spans dropped, {exported} exported, backlog peak {} bytes",
        arg("gpuspan.otlp_backlog_peak_bytes")
    );
    // Spans made after recovery arrived: the last request's tree, complete.
    let (last_trace, _) = {
        let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", requests - 1);
        let p: Vec<String> = tp.split('-').map(String::from).collect();
        (p[1].clone(), p[2].clone())
    };
    let last: Vec<_> = rx.spans().into_iter().filter(|s| s.trace_id == last_trace).collect();
    assert_eq!(last.iter().filter(|s| s.name == "gpu.request").count(), 1, "the last request's span arrived");
    assert_eq!(last.iter().filter(|s| s.name == "dit.step").count(), 5);

    // The dropped count: in the metric, and in exactly one log line.
    let m = dropped_metric.expect("scraped gpuspan_records_dropped_total{reason=\"otlp_spans\"}");
    assert!(m > 0.0 && m <= dropped as f64, "metric {m} vs dropped {dropped}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("spans were dropped")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&format!("{dropped} of")), "{}", lines[0]);

    // The app's steps took as long during the outage as after it.
    let steps = step_durations(&capture);
    let rec_us = recovered_at.as_micros() as f64;
    let during: Vec<f64> = steps.iter().filter(|(end, _)| *end < rec_us - 1e6).map(|x| x.1).collect();
    let after: Vec<f64> = steps.iter().filter(|(end, _)| *end > rec_us + 1e6).map(|x| x.1).collect();
    assert!(during.len() >= 3 && after.len() >= 3, "steps during {} after {}", during.len(), after.len());
    let (md, ma) = (median(during), median(after));
    println!("median step: {md:.0} µs during the outage, {ma:.0} µs after ({} dropped, {} exported)", dropped, exported);
    assert!((md / ma - 1.0).abs() < 0.05, "step time during the outage {md} µs vs after {ma} µs");
}

//! GPU spans over OTLP (issue 3): `gpuspan demo` and a fixture replay, received by an OTLP
//! receiver built on the official schema (`gpuspan-testkit`), over gRPC and HTTP/protobuf.
//! Checked against the capture the same run wrote: trace id from the request's
//! traceparent, the documented tree with no orphan, one kernel span per captured kernel
//! (under the budget), stage spans' `gpuspan.gpu_busy_ns` = the capture's stage totals.
//! The demo's metrics arrive too: the spec's names, and next to them the OpenTelemetry
//! semantic conventions' `hw.*` GPU metrics with the conventions' units, instrument kinds
//! and attributes (issue 15, item 5; [`check_hw_metrics`]).

use crate::util::*;
use gpuspan_testkit::{OtlpReceiver, ReceivedSpan, Transport};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `(trace id, parent span id)` of a traceparent.
fn ids_of(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    (p[1].to_string(), p[2].to_string())
}

fn with_otlp(c: &mut Command, rx: &OtlpReceiver) {
    c.env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env())
        .env("OTEL_SERVICE_NAME", "gpuspan-e2e")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000");
}

const STAGE_SPANS: [&str; 13] = [
    "attention.spatial",
    "attention.temporal",
    "attention.cross",
    "attention",
    "ffn",
    "norm",
    "gemm",
    "elementwise",
    "vae.decode",
    "memcpy",
    "memset",
    "other",
    "conv",
];

/// Checks the tree of one trace and returns its spans by name.
fn check_tree<'a>(spans: &'a [ReceivedSpan], trace_id: &str, worker_span: &str) -> BTreeMap<&'a str, Vec<&'a ReceivedSpan>> {
    let mine: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    assert!(!mine.is_empty(), "no span with trace id {trace_id}");
    let by_id: HashMap<&str, &ReceivedSpan> = mine.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    assert_eq!(by_id.len(), mine.len(), "span ids are unique");
    let mut by_name: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in &mine {
        by_name.entry(s.name.as_str()).or_default().push(s);
    }
    let req = &by_name["gpu.request"];
    assert_eq!(req.len(), 1, "one gpu.request");
    assert_eq!(req[0].parent_span_id, worker_span, "gpu.request is a child of the worker's span");
    for s in &mine {
        if s.name == "gpu.request" {
            continue;
        }
        let p = by_id
            .get(s.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("orphan {} (parent {})", s.name, s.parent_span_id));
        let ok = match s.name.as_str() {
            "dit.step" => p.name == "gpu.request",
            "cuda.kernel" => STAGE_SPANS.contains(&p.name.as_str()) || !matches!(p.name.as_str(), "gpu.request" | "dit.step" | "cuda.kernel"),
            _ => p.name == "dit.step" || p.name == "gpu.request",
        };
        assert!(ok, "{} under {}", s.name, p.name);
        assert!(s.start_unix_ns <= s.end_unix_ns);
        assert!(s.start_unix_ns >= p.start_unix_ns && s.end_unix_ns <= p.end_unix_ns, "{} outside its parent {}", s.name, p.name);
        assert_eq!(s.resource.get("service.name"), Some(&gpuspan_testkit::Val::Str("gpuspan-e2e".into())));
    }
    by_name
}

/// Per stage, summed `gpuspan.gpu_busy_ns` of the stage spans (ns).
fn stage_busy(by_name: &BTreeMap<&str, Vec<&ReceivedSpan>>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for (name, v) in by_name {
        if matches!(*name, "gpu.request" | "dit.step" | "cuda.kernel") {
            continue;
        }
        *m.entry(name.to_string()).or_insert(0) += v.iter().map(|s| s.int("gpuspan.gpu_busy_ns").unwrap()).sum::<i64>();
    }
    m
}

/// Capture's per-stage totals in ns, from `gpuspan stats --json` (kernels; memcpy /
/// memset events are added from the capture file itself).
fn capture_stage_totals_ns(capture: &Path) -> (BTreeMap<String, f64>, usize) {
    let s = stats_json(capture);
    let mut m: BTreeMap<String, f64> = s.stages.iter().map(|x| (x.stage.clone(), x.total_us * 1000.0)).collect();
    let trace = gpuspan_export::read_trace(capture).unwrap();
    for e in &trace.events {
        if let (Some(c), Some(stage)) = (&e.cat, &e.stage) {
            let cat = format!("{c:?}");
            if cat.contains("Memcpy") || cat.contains("Memset") {
                *m.entry(stage.clone()).or_insert(0.0) += e.dur_us * 1000.0;
            }
        }
    }
    (m, s.kernel_count)
}

fn compare_stage_totals(spans: &BTreeMap<String, i64>, capture: &BTreeMap<String, f64>, kernels: usize) {
    for (stage, ns) in spans {
        let want = capture.get(stage).copied().unwrap_or_else(|| panic!("stage {stage} not in the capture"));
        // The capture stores µs as floats (ns / 1000); allow half a ns per kernel of rounding.
        assert!((*ns as f64 - want).abs() <= 0.5 * kernels as f64 + 1.0, "stage {stage}: spans {ns} ns, capture {want} ns");
    }
    for (stage, ns) in capture {
        assert!(spans.contains_key(stage) || *ns == 0.0, "capture stage {stage} has no span");
    }
}

/// The semantic conventions' `hw.*` GPU metrics (`gpuspan_export::otlp::semconv`, which
/// cites the conventions' files) arrived next to the spec's `gpu_*` gauges: every one of
/// them, with the conventions' unit, instrument kind and attributes, under the scope whose
/// schema URL names the conventions' release, with values in the conventions' units.
fn check_hw_metrics(rx: &OtlpReceiver) {
    use gpuspan_export::otlp::semconv::{self, HwInstrument};
    use gpuspan_simgpu::sim::device;
    use gpuspan_testkit::{MetricKind, Val};
    let points = rx.metric_points();
    let names = rx.metric_names();
    let num = |v: &Val| match v {
        Val::Float(f) => *f,
        Val::Int(i) => *i as f64,
        other => panic!("not a number: {other:?}"),
    };
    let mut gpu_ids = std::collections::BTreeSet::new();
    for m in semconv::HW_METRICS {
        if m.name == "hw.gpu.io" {
            // A lone simulated GPU has no NVLink peers (`nvmlDeviceGetNvLinkState`): no
            // NVLink bytes to count. `ranks.rs` checks the counter against a node's traffic.
            assert!(points.iter().all(|p| p.name != m.name), "hw.gpu.io of a GPU without NVLink");
            continue;
        }
        if let Some(spec) = m.spec_metric {
            assert!(names.iter().any(|n| n == spec), "spec metric {spec} missing next to {}", m.name);
        }
        let mine: Vec<_> = points.iter().filter(|p| p.name == m.name).collect();
        assert!(!mine.is_empty(), "OTLP metric {} missing from {names:?}", m.name);
        for p in mine {
            assert_eq!(p.unit, m.unit, "{} unit", m.name);
            let kind = match m.instrument {
                HwInstrument::Gauge => MetricKind::Gauge,
                HwInstrument::UpDownCounter => MetricKind::Sum { monotonic: false, cumulative: true },
                HwInstrument::Counter => MetricKind::Sum { monotonic: true, cumulative: true },
            };
            assert_eq!(p.kind, kind, "{} instrument kind", m.name);
            assert_eq!(p.scope_schema_url, semconv::SCHEMA_URL, "{} schema URL", m.name);
            assert_eq!(p.resource.get("service.name"), Some(&Val::Str("gpuspan-e2e".into())));
            assert!(p.attributes.keys().all(|k| k.starts_with("hw.")), "{}: {:?}", m.name, p.attributes);
            let id = p.str("hw.id").unwrap_or_else(|| panic!("{} without hw.id (required)", m.name));
            let v = num(&p.value);
            match m.name {
                "hw.gpu.utilization" | "hw.gpu.memory.utilization" => assert!((0.0..=1.0).contains(&v), "{} = {v} is a ratio", m.name),
                "hw.gpu.memory.usage" => assert!(matches!(p.value, Val::Int(b) if b >= 0 && b as u64 <= device::TOTAL_MEM_BYTES), "{:?}", p.value),
                "hw.gpu.memory.limit" => assert_eq!(p.value, Val::Int(device::TOTAL_MEM_BYTES as i64)),
                "hw.temperature" => assert!((10.0..=120.0).contains(&v), "{v} °C"),
                "hw.power" => assert!(v > 0.0 && v < 1500.0, "{v} W"),
                other => panic!("unexpected {other}"),
            }
            match m.name {
                "hw.temperature" => {
                    let parent = p.str("hw.parent").expect("the sensor's hw.parent is its GPU");
                    assert_eq!(id, format!("{parent}_temperature_gpu"));
                    assert!(p.str("hw.sensor_location").is_some_and(|l| l.ends_with("_die")), "{:?}", p.attributes);
                }
                "hw.power" => {
                    assert_eq!(p.str("hw.type"), Some("gpu"), "hw.type is required on hw.power");
                    gpu_ids.insert(id.to_string());
                }
                _ => {
                    assert_eq!(p.str("hw.vendor"), Some("NVIDIA"));
                    assert_eq!(p.str("hw.model"), Some(device::NAME));
                    assert!(p.str("hw.name").is_some_and(|n| n.starts_with("gpu")), "{:?}", p.attributes);
                    assert_eq!(p.str("hw.gpu.task"), (m.name == "hw.gpu.utilization").then_some("general"));
                    assert_eq!(p.str("hw.type"), None, "the conventions give hw.gpu.* no hw.type");
                    gpu_ids.insert(id.to_string());
                }
            }
        }
    }
    // One id per GPU: the UUID, or gpu<index> while the sample carries no UUID.
    assert!(!gpu_ids.is_empty() && gpu_ids.iter().all(|id| id.starts_with("GPU-") || id.starts_with("gpu")), "{gpu_ids:?}");
}

fn demo_over(transport: Transport, steps: u32) {
    let rx = OtlpReceiver::start(transport, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.args(["demo", "--steps", &steps.to_string(), "--out"]).arg(out.path());
    with_otlp(&mut c, &rx);
    let o = output(&mut c);
    assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
    let (trace_id, worker_span) = ids_of(&gpuspan_simgpu::workload::preset::traceparent("stdit", 0));
    assert!(rx.wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.name == "gpu.request")), "no gpu.request arrived");
    let spans = rx.spans();
    let by_name = check_tree(&spans, &trace_id, &worker_span);
    let (capture_stages, kernel_count) = capture_stage_totals_ns(&capture_in(out.path()));
    let kernel_spans = by_name.get("cuda.kernel").map_or(0, |v| v.len());
    let req = by_name["gpu.request"][0];
    assert_eq!(req.int("gpuspan.kernel_count"), Some(kernel_count as i64));
    assert_eq!(by_name["dit.step"].len(), steps as usize);
    if kernel_count <= 20_000 {
        assert_eq!(kernel_spans, kernel_count, "one kernel span per captured kernel");
        assert_eq!(req.int("gpuspan.kernel_spans_omitted"), None);
    } else {
        assert_eq!(kernel_spans, 20_000, "the default budget");
        assert_eq!(req.int("gpuspan.kernel_spans_omitted"), Some(kernel_count as i64 - 20_000));
    }
    compare_stage_totals(&stage_busy(&by_name), &capture_stages, kernel_count);
    for st in ["attention.spatial", "attention.temporal", "attention.cross", "ffn", "vae.decode"] {
        assert!(by_name.contains_key(st), "stage span {st} missing");
    }
    assert_eq!(by_name["vae.decode"][0].parent_span_id, req.span_id, "vae.decode hangs off the request");
    // The same run's metrics arrived over OTLP too, with the Prometheus names.
    let names = rx.metric_names();
    for m in [
        "dit_inference_step_duration_ms",
        "vae_decode_duration_seconds",
        "video_generation_duration_seconds",
        "gpuspan_records",
        "gpuspan_capture_active",
        "gpu_utilization_percent",
        "gpu_temperature_celsius",
    ] {
        assert!(names.iter().any(|n| n == m), "OTLP metric {m} missing from {names:?}");
    }
    check_hw_metrics(&rx);
    let mut step_types = std::collections::BTreeSet::new();
    let mut step_count = 0u64;
    for r in rx.metrics() {
        for m in r.resource_metrics.iter().flat_map(|x| &x.scope_metrics).flat_map(|x| &x.metrics) {
            if m.name != "dit_inference_step_duration_ms" {
                continue;
            }
            if let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(h)) = &m.data {
                for dp in &h.data_points {
                    for kv in &dp.attributes {
                        if kv.key == "step_type" {
                            if let Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) =
                                kv.value.as_ref().and_then(|v| v.value.as_ref())
                            {
                                step_types.insert(v.clone());
                                if v == "step" {
                                    step_count = step_count.max(dp.count);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        step_types.into_iter().collect::<Vec<_>>(),
        ["cross_attn", "ffn", "spatial_attn", "step", "temporal_attn"],
        "step_type values over OTLP"
    );
    assert_eq!(step_count, steps as u64, "one step observation per step (cumulative)");
    let k = by_name["cuda.kernel"][0];
    for a in ["cuda.kernel.name", "cuda.kernel.grid", "cuda.kernel.block", "cuda.kernel.registers", "cuda.kernel.shared_memory_bytes", "gpu.stream.id", "gpu.device.id", "cuda.correlation_id"] {
        assert!(k.attributes.contains_key(a), "kernel span lacks {a}");
    }
}

#[test]
fn demo_spans_over_grpc_under_budget() {
    demo_over(Transport::Grpc, 10);
}

#[test]
fn demo_spans_over_http_protobuf_over_budget() {
    demo_over(Transport::HttpProtobuf, 50);
}

fn fixture_replay_over(transport: Transport) {
    let rx = OtlpReceiver::start(transport, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.arg("replay").arg(fixture("h100-vit-falconsai.json.gz")).arg("--out").arg(out.path());
    with_otlp(&mut c, &rx);
    let o = output(&mut c);
    assert!(o.status.success(), "replay failed: {}", String::from_utf8_lossy(&o.stderr));
    let (trace_id, worker_span) = ids_of(&gpuspan_simgpu::workload::preset::traceparent("h100-vit-falconsai", 0));
    assert!(rx.wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.name == "gpu.request")));
    let spans = rx.spans();
    let by_name = check_tree(&spans, &trace_id, &worker_span);
    let (capture_stages, kernel_count) = capture_stage_totals_ns(&capture_in(out.path()));
    assert_eq!(by_name["cuda.kernel"].len(), kernel_count);
    assert!(by_name.get("dit.step").is_some_and(|v| !v.is_empty()), "ProfilerStep ranges become steps");
    compare_stage_totals(&stage_busy(&by_name), &capture_stages, kernel_count);
}

#[test]
fn fixture_replay_spans_over_http_protobuf() {
    fixture_replay_over(Transport::HttpProtobuf);
}

#[test]
fn fixture_replay_spans_over_grpc() {
    fixture_replay_over(Transport::Grpc);
}

/// The record limit (`GPUSPAN_MAX_RECORDS`) bounds what the capture holds, not what the
/// spans count: with a limit of 2,000 records and 256 KiB CUPTI buffers, most buffers of a
/// 3-step stdit request are decoded at the limit (aside, `Collector::over_limit`), and still
/// the request span's `gpuspan.kernel_count` is every kernel replayed, while the capture holds
/// at most the limit and its summary counts the rest as `records_dropped_limit`.
#[test]
fn the_record_limit_drops_from_the_capture_not_from_the_spans() {
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.args(["run", "--sim", "--mode", "fine", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--steps", "3", "--requests", "1"])
        .env("GPUSPAN_MAX_RECORDS", "2000")
        .env("GPUSPAN_BUFFER_BYTES", "262144")
        .env("GPUSPAN_METRICS_ADDR", "off");
    with_otlp(&mut c, &rx);
    let o = output(&mut c);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let replayed = replayed_kernels(&stdout) as i64;
    let t = gpuspan_export::read_trace(&capture_in(out.path())).unwrap();
    let arg = |k: &str| summary_u64(&t, k);
    let (decoded, dropped) = (arg("gpuspan.records_decoded"), arg("gpuspan.records_dropped_limit"));
    assert!(dropped > decoded / 2, "most records over the limit: {dropped} of {decoded} dropped");
    // Held as records: the launches and their GPU work (gpuspan's external correlations
    // are held apart, as runs, and count toward neither).
    let held = t.events.iter().filter(|e| e.cat.as_ref().is_some_and(|c| c.is_gpu_activity() || c.is_launch_api())).count();
    assert!(held <= 2000, "the capture held at most the limit: {held} of {decoded}");
    assert!((t.kernels().count() as i64) < replayed / 2, "{} of {replayed} kernels captured", t.kernels().count());
    assert!(rx.wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.name == "gpu.request")));
    let spans = rx.spans();
    let request = spans.iter().find(|s| s.name == "gpu.request").unwrap();
    assert_eq!(request.int("gpuspan.kernel_count"), Some(replayed), "the spans saw every kernel");
    assert_eq!(arg("gpuspan.span_gpu_late") + arg("gpuspan.span_gpu_dropped") + arg("gpuspan.span_units_timed_out"), 0);
}

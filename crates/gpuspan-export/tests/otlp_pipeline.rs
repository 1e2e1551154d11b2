//! The OTLP span pipeline against a real OTLP receiver (official schema, gRPC and
//! HTTP/protobuf): spans arrive intact, and an endpoint outage costs only the oldest spans
//! beyond the backlog bound, with one warning.

use gpuspan_core::spans::{AttrValue, SpanRecord};
use gpuspan_export::otlp::{OtlpProtocol, OtlpSettings, SpanPipeline};
use gpuspan_testkit::{OtlpReceiver, Transport, Val};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn span(i: u64, parent: Option<u64>) -> SpanRecord {
    SpanRecord {
        trace_id: [0x4b; 16],
        span_id: (i + 1).to_be_bytes(),
        parent_span_id: parent.map(|p| (p + 1).to_be_bytes()),
        parent_is_remote: false,
        name: Arc::from(if parent.is_some() { "cuda.kernel" } else { "gpu.request" }),
        start_unix_ns: 1_700_000_000_000_000_000 + i * 1000,
        end_unix_ns: 1_700_000_000_000_000_000 + i * 1000 + 500,
        attributes: vec![
            (Cow::Borrowed("cuda.kernel.name"), AttrValue::Str(Arc::from("flash_fwd_kernel"))),
            (Cow::Borrowed("cuda.correlation_id"), AttrValue::Int(i as i64)),
            (Cow::Borrowed("cuda.kernel.grid"), AttrValue::IntArray(vec![4, 2, 1])),
        ],
        trace_state: Arc::from("vendor=1"),
        sampled: true,
    }
}

fn settings(protocol: OtlpProtocol, endpoint: String, backlog_bytes: usize) -> OtlpSettings {
    OtlpSettings {
        protocol,
        endpoint,
        backlog_bytes,
        batch_spans: 512,
        export_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(500),
        resource_attributes: vec![opentelemetry::KeyValue::new("gpu.device.name", "NVIDIA H100 80GB HBM3")],
    }
}

type Warnings = Arc<Mutex<Vec<String>>>;

fn warn_sink() -> (Warnings, gpuspan_export::otlp::pipeline::WarnFn) {
    let w: Warnings = Arc::default();
    let w2 = w.clone();
    (w, Arc::new(move |m: &str| w2.lock().unwrap().push(m.to_string())))
}

// `opentelemetry-otlp` reads OTEL_EXPORTER_OTLP_* itself; the endpoint is passed the same
// way the agent gets it. Each test runs in its own process under nextest.
fn deliver_all(transport: Transport, protocol: OtlpProtocol) {
    let rx = OtlpReceiver::start(transport, "127.0.0.1:0");
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint());
    std::env::set_var("OTEL_SERVICE_NAME", "pipeline-test");
    let (warnings, warn) = warn_sink();
    let p = SpanPipeline::start(settings(protocol, rx.endpoint(), 64 << 20), warn).unwrap();
    let mut spans = vec![span(0, None)];
    spans.extend((1..2000).map(|i| span(i, Some(0))));
    p.submit(spans[..1000].to_vec());
    p.submit(spans[1000..].to_vec());
    assert!(rx.wait_for(Duration::from_secs(20), |s| s.len() >= 2000), "got {}", rx.spans().len());
    p.shutdown(Duration::from_secs(5));
    let got = rx.spans();
    assert_eq!(got.len(), 2000);
    let root = got.iter().find(|s| s.name == "gpu.request").unwrap();
    assert_eq!(root.trace_id, "4b".repeat(16));
    assert_eq!(root.parent_span_id, "");
    assert_eq!(root.resource.get("service.name"), Some(&Val::Str("pipeline-test".into())));
    assert_eq!(root.resource.get("gpu.device.name"), Some(&Val::Str("NVIDIA H100 80GB HBM3".into())));
    assert_eq!(root.scope_name, "gpuspan");
    assert_eq!(root.trace_state, "vendor=1");
    let k = got.iter().find(|s| s.int("cuda.correlation_id") == Some(7)).unwrap();
    assert_eq!(k.parent_span_id, root.span_id);
    assert_eq!(k.start_unix_ns, 1_700_000_000_000_007_000);
    assert_eq!(k.end_unix_ns - k.start_unix_ns, 500);
    assert_eq!(k.attributes.get("cuda.kernel.grid"), Some(&Val::IntArray(vec![4, 2, 1])));
    assert_eq!(p.counters().exported.load(Ordering::Relaxed), 2000);
    assert_eq!(p.counters().dropped(), 0);
    assert!(warnings.lock().unwrap().is_empty());
}

#[test]
fn delivers_over_grpc() {
    deliver_all(Transport::Grpc, OtlpProtocol::Grpc);
}

#[test]
fn delivers_over_http_protobuf() {
    deliver_all(Transport::HttpProtobuf, OtlpProtocol::HttpProtobuf);
}

#[test]
fn outage_keeps_a_bounded_backlog_and_recovers() {
    // A port that refuses connections (yet), held so no parallel test is handed it.
    let reserved = gpuspan_testkit::ReservedPort::new();
    let port = reserved.port();
    let endpoint = format!("http://127.0.0.1:{port}");
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let bound = 256 << 10;
    let (warnings, warn) = warn_sink();
    let p = SpanPipeline::start(settings(OtlpProtocol::HttpProtobuf, endpoint, bound), warn).unwrap();
    // About 3 MiB of spans while the endpoint is down; submit never blocks.
    let mut worst_submit = Duration::ZERO;
    for b in 0..30u64 {
        let spans: Vec<SpanRecord> = (0..250).map(|i| span(b * 250 + i, Some(0))).collect();
        let t = Instant::now();
        p.submit(spans);
        worst_submit = worst_submit.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The exporter drains its queue between export attempts (each failed attempt may include
    // opentelemetry-otlp's own retries), so wait for the backlog to overflow, bounded.
    let c = p.counters().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.dropped_backlog.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.dropped_backlog.load(Ordering::Relaxed) > 0, "the backlog bound was never hit");
    assert!(c.backlog_peak_bytes.load(Ordering::Relaxed) <= bound as u64, "backlog exceeded its bound");
    assert!(c.export_failures.load(Ordering::Relaxed) > 0);
    println!("worst submit during the outage: {worst_submit:?}");

    // The endpoint comes up; spans made after recovery arrive.
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, &format!("127.0.0.1:{}", reserved.release()));
    let marker: Vec<SpanRecord> = (1_000_000..1_000_100).map(|i| span(i, Some(0))).collect();
    p.submit(marker);
    assert!(
        rx.wait_for(Duration::from_secs(20), |s| s
            .iter()
            .filter(|s| s.int("cuda.correlation_id").is_some_and(|c| c >= 1_000_000))
            .count()
            == 100),
        "spans after recovery did not arrive"
    );
    p.shutdown(Duration::from_secs(5));
    let submitted = c.submitted.load(Ordering::Relaxed);
    assert_eq!(submitted, 30 * 250 + 100);
    assert_eq!(c.exported.load(Ordering::Relaxed) + c.dropped(), submitted, "every span exported or counted");
    assert_eq!(rx.spans().len() as u64, c.exported.load(Ordering::Relaxed));
    let w = warnings.lock().unwrap();
    assert_eq!(w.iter().filter(|m| m.contains("dropping the oldest spans")).count(), 1, "{w:?}");
    assert_eq!(w.iter().filter(|m| m.contains("failed")).count(), 1, "{w:?}");
}

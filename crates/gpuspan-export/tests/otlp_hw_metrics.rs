//! The OpenTelemetry semantic conventions' `hw.*` GPU metrics (issue 15, item 5) over OTLP,
//! received by an OTLP receiver on the official schema (gRPC and HTTP/protobuf): each NVML
//! sample handed to `Metrics::set_gpu_sample` arrives both under the spec's `gpu_*` names
//! and under the conventions' names, units, instrument kinds and attributes
//! (`gpuspan_export::otlp::semconv` cites the conventions' files).

use gpuspan_export::metrics::{GpuSample, Metrics, MetricsLabels};
use gpuspan_export::otlp::semconv::{self, HwInstrument};
use gpuspan_export::otlp::{OtlpMetrics, OtlpSettings};
use gpuspan_testkit::{MetricKind, OtlpReceiver, ReceivedPoint, Transport, Val};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const H100: &str = "NVIDIA H100 80GB HBM3";

/// The last point of each metric, by name.
fn last_by_name(points: &[ReceivedPoint]) -> BTreeMap<String, ReceivedPoint> {
    points.iter().map(|p| (p.name.clone(), p.clone())).collect()
}

fn attr_map(p: &ReceivedPoint) -> BTreeMap<String, Val> {
    p.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn strs(kv: &[(&str, &str)]) -> BTreeMap<String, Val> {
    kv.iter().map(|(k, v)| (k.to_string(), s(v))).collect()
}

fn s(v: &str) -> Val {
    Val::Str(v.to_string())
}

// `opentelemetry-otlp` reads OTEL_EXPORTER_OTLP_* itself, as in the agent. Each test runs
// in its own process under nextest.
fn hw_metrics_over(transport: Transport) {
    let rx = OtlpReceiver::start(transport, "127.0.0.1:0");
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint());
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", transport.protocol_env());
    std::env::set_var("OTEL_SERVICE_NAME", "hw-test");
    let (settings, warnings) = OtlpSettings::from_env();
    assert!(warnings.is_empty(), "{warnings:?}");
    let metrics = Metrics::new(MetricsLabels { worker_id: "w-1".into(), gpu_index: 0, gpu_type: H100.into() });
    let base = vec![opentelemetry::KeyValue::new("worker_id", "w-1"), opentelemetry::KeyValue::new("gpu_index", 0i64)];
    let otlp = Arc::new(OtlpMetrics::start(&settings.expect("endpoint set"), base).expect("OTLP metrics start"));
    metrics.attach_otlp(otlp.clone());
    metrics.set_gpu_sample(&GpuSample {
        gpu_index: 1,
        uuid: None,
        utilization_percent: Some(87.0),
        memory_used_bytes: Some(20 << 30),
        memory_total_bytes: Some(80 << 30),
        temperature_celsius: Some(61.0),
        power_watts: Some(412.5),
        sm_clock_mhz: Some(1980.0),
        nvlink_gbps: None,
        nvlink_tx_bytes: Some(5 << 30),
    });
    // A later sample: memory moved and NVLink sent 1 GiB more (the up-down counters and
    // the counter report the latest value), the rest unread (kept).
    metrics.set_gpu_sample(&GpuSample {
        gpu_index: 1,
        memory_used_bytes: Some(40 << 30),
        memory_total_bytes: Some(80 << 30),
        nvlink_tx_bytes: Some(6 << 30),
        ..Default::default()
    });
    assert!(otlp.shutdown_within(Duration::from_secs(10)), "the last export finished");
    let points = rx.metric_points();
    let last = last_by_name(&points);

    // The spec's names are still there, unchanged.
    let spec = &last["gpu_utilization_percent"];
    assert_eq!((spec.unit.as_str(), &spec.value), ("%", &Val::Float(87.0)));
    assert_eq!(last["gpu_memory_utilization_percent"].value, Val::Float(50.0));

    // Every convention metric, with its name, unit, kind, brief and schema URL.
    for m in semconv::HW_METRICS {
        let p = last.get(m.name).unwrap_or_else(|| panic!("{} missing from {:?}", m.name, last.keys()));
        assert_eq!(p.unit, m.unit, "{}", m.name);
        assert_eq!(p.description, m.brief, "{}", m.name);
        let want_kind = match m.instrument {
            HwInstrument::Gauge => MetricKind::Gauge,
            HwInstrument::UpDownCounter => MetricKind::Sum { monotonic: false, cumulative: true },
            HwInstrument::Counter => MetricKind::Sum { monotonic: true, cumulative: true },
        };
        assert_eq!(p.kind, want_kind, "{}", m.name);
        assert_eq!(p.scope_name, "gpuspan");
        assert_eq!(p.scope_schema_url, semconv::SCHEMA_URL, "{}", m.name);
        assert_eq!(p.resource.get("service.name"), Some(&s("hw-test")));
        for k in p.attributes.keys() {
            let io = m.name == "hw.gpu.io" && k == "network.io.direction";
            assert!(k.starts_with("hw.") || io, "{}: only the conventions' attributes, got {k}", m.name);
        }
    }
    // Values, converted: percent → ratio, bytes as ints.
    assert_eq!(last["hw.gpu.utilization"].value, Val::Float(0.87));
    assert_eq!(last["hw.gpu.memory.usage"].value, Val::Int(40 << 30));
    assert_eq!(last["hw.gpu.memory.limit"].value, Val::Int(80 << 30));
    assert_eq!(last["hw.gpu.memory.utilization"].value, Val::Float(0.5));
    assert_eq!(last["hw.temperature"].value, Val::Float(61.0));
    assert_eq!(last["hw.power"].value, Val::Float(412.5));
    assert_eq!(last["hw.gpu.io"].value, Val::Int(6 << 30), "the running total, not an increment");

    // Attributes.
    let gpu = strs(&[("hw.id", "gpu1"), ("hw.name", "gpu1"), ("hw.vendor", "NVIDIA"), ("hw.model", H100)]);
    for name in ["hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.gpu.memory.utilization"] {
        assert_eq!(attr_map(&last[name]), gpu, "{name}");
    }
    let mut io = gpu.clone();
    io.insert("network.io.direction".into(), s("transmit"));
    assert_eq!(attr_map(&last["hw.gpu.io"]), io);
    let mut util = gpu.clone();
    util.insert("hw.gpu.task".into(), s("general"));
    assert_eq!(attr_map(&last["hw.gpu.utilization"]), util);
    assert_eq!(attr_map(&last["hw.power"]), strs(&[("hw.id", "gpu1"), ("hw.name", "gpu1"), ("hw.type", "gpu")]));
    let t = &last["hw.temperature"];
    assert_eq!(t.str("hw.id"), Some("gpu1_temperature_gpu"));
    assert_eq!(t.str("hw.parent"), Some("gpu1"));
    assert_eq!(t.str("hw.sensor_location"), Some("gpu1_die"));
    assert_eq!(t.str("hw.name"), Some("gpu1 die temperature"));
    assert_eq!(t.attributes.len(), 4);

    // No convention exists for the SM clock: nothing besides the spec's gauge.
    assert!(last.contains_key("gpu_sm_clock_mhz"));
    let hw_names: Vec<&String> = last.keys().filter(|n| n.starts_with("hw.")).collect();
    assert_eq!(hw_names.len(), semconv::HW_METRICS.len(), "{hw_names:?}");
}

#[test]
fn hw_metrics_over_http_protobuf() {
    hw_metrics_over(Transport::HttpProtobuf);
}

#[test]
fn hw_metrics_over_grpc() {
    hw_metrics_over(Transport::Grpc);
}

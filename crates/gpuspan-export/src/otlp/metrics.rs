//! The metrics of [`crate::metrics`] also exported as OTLP metrics, when an OTLP endpoint is
//! configured: the same names, units, buckets and labels, through an OpenTelemetry SDK
//! meter provider whose periodic reader runs on its own one-worker tokio runtime (the SDK's
//! async-runtime reader, so both tonic and the async HTTP client have their reactor).
//! Interval and timeout: the standard `OTEL_METRIC_EXPORT_INTERVAL` (default 60 000 ms) and
//! `OTEL_METRIC_EXPORT_TIMEOUT`; the provider's shutdown at exit exports a last time.
//!
//! OTLP exemplars are not written (the Rust SDK does not record them); the Prometheus
//! endpoint carries them.
//!
//! Next to the spec's `gpu_*` gauges, each NVML sample is also recorded as the
//! OpenTelemetry semantic conventions' hardware metrics (`hw.gpu.utilization`,
//! `hw.gpu.memory.usage` / `.limit` / `.utilization`, `hw.temperature`, `hw.power`; issue
//! 15, item 5; and `hw.gpu.io`, NVLink bytes transmitted), with the conventions' units, instrument kinds and `hw.*` attributes, under
//! an instrumentation scope `gpuspan` whose schema URL names the conventions' release
//! ([`super::semconv`], which cites the source of each name).

use super::config::{OtlpProtocol, OtlpSettings};
use super::semconv::{self, HwInstrument, HwValue};
use crate::metrics::families as f;
use crate::metrics::GpuSample;
use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider as _, ObservableCounter, ObservableUpDownCounter};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The instruments, mirroring the Prometheus families.
pub struct OtlpMetrics {
    provider: SdkMeterProvider,
    _rt: tokio::runtime::Runtime,
    base: Vec<KeyValue>,
    step: Histogram<f64>,
    vae: Histogram<f64>,
    video: Histogram<f64>,
    /// `tensor_parallel_comm_duration_ms` and `gpuspan_exposed_comm_duration_ms`, by name.
    comm: HashMap<&'static str, Histogram<f64>>,
    fps: Gauge<f64>,
    gpu: HashMap<&'static str, Gauge<f64>>,
    records: Counter<u64>,
    dropped: Counter<u64>,
    capture_active: Gauge<i64>,
    last_totals: Mutex<HashMap<&'static str, u64>>,
    hw: HwInstruments,
}

/// Latest value of each `hw.*` up-down-counter and counter point, by (metric name,
/// `hw.id`): its attributes and value, read by the observable instruments' callbacks at
/// each collection.
type HwObservedState = Arc<Mutex<BTreeMap<(&'static str, String), (Vec<KeyValue>, HwValue)>>>;

/// The instruments of the semantic conventions' `hw.*` metrics ([`semconv::HW_METRICS`]).
struct HwInstruments {
    /// The gauges (`hw.gpu.utilization`, `hw.gpu.memory.utilization`, `hw.temperature`,
    /// `hw.power`), by name.
    gauges: HashMap<&'static str, Gauge<f64>>,
    /// What the up-down counters (`hw.gpu.memory.usage`, `hw.gpu.memory.limit`) and the
    /// counter (`hw.gpu.io`) report.
    observed: HwObservedState,
    /// The observable up-down counters (kept for as long as the provider runs).
    _observers: Vec<ObservableUpDownCounter<i64>>,
    /// The observable counters (kept for as long as the provider runs).
    _counters: Vec<ObservableCounter<u64>>,
}

impl HwInstruments {
    /// Creates every [`semconv::HW_METRICS`] instrument with the conventions' name, unit,
    /// kind and brief, on a meter whose scope carries [`semconv::SCHEMA_URL`].
    fn new(provider: &SdkMeterProvider) -> HwInstruments {
        let scope = InstrumentationScope::builder("gpuspan").with_schema_url(semconv::SCHEMA_URL).build();
        let meter = provider.meter_with_scope(scope);
        let observed = HwObservedState::default();
        let mut gauges = HashMap::new();
        let mut observers = Vec::new();
        let mut counters = Vec::new();
        for m in semconv::HW_METRICS {
            match m.instrument {
                HwInstrument::Gauge => {
                    gauges.insert(m.name, meter.f64_gauge(m.name).with_unit(m.unit).with_description(m.brief).build());
                }
                HwInstrument::UpDownCounter => {
                    let pick = |v: &HwValue| if let HwValue::I64(v) = v { Some(*v) } else { None };
                    let callback = observe_latest(observed.clone(), m.name, pick);
                    observers.push(meter.i64_observable_up_down_counter(m.name).with_unit(m.unit).with_description(m.brief).with_callback(callback).build());
                }
                HwInstrument::Counter => {
                    let pick = |v: &HwValue| if let HwValue::Total(v) = v { Some(*v) } else { None };
                    let callback = observe_latest(observed.clone(), m.name, pick);
                    counters.push(meter.u64_observable_counter(m.name).with_unit(m.unit).with_description(m.brief).with_callback(callback).build());
                }
            }
        }
        HwInstruments { gauges, observed, _observers: observers, _counters: counters }
    }
}

/// The callback of an observable `hw.*` instrument: at each collection, observes the
/// latest value of metric `name` for each `hw.id` in `state`, as `pick` reads it.
fn observe_latest<T: 'static>(
    state: HwObservedState,
    name: &'static str,
    pick: fn(&HwValue) -> Option<T>,
) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<T>) + Send + Sync + 'static {
    move |obs| {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        for ((n, _), (attrs, v)) in state.iter() {
            if let (true, Some(v)) = (*n == name, pick(v)) {
                obs.observe(v, attrs);
            }
        }
    }
}

impl std::fmt::Debug for OtlpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpMetrics").finish_non_exhaustive()
    }
}

/// Names of the NVML gauges, as in the Prometheus families.
pub const GPU_GAUGES: [(&str, &str); 7] = [
    ("gpu_utilization_percent", "%"),
    ("gpu_memory_used_bytes", "By"),
    ("gpu_memory_utilization_percent", "%"),
    ("gpu_temperature_celsius", "Cel"),
    ("gpu_power_watts", "W"),
    ("gpu_sm_clock_mhz", "MHz"),
    ("nvlink_bandwidth_gbps", "GBy/s"),
];

impl OtlpMetrics {
    /// Starts the meter provider. `base` are the constant attributes (worker_id,
    /// gpu_index, gpu_type). Errors: runtime or exporter construction, with the reason.
    pub fn start(settings: &OtlpSettings, base: Vec<KeyValue>) -> Result<OtlpMetrics, String> {
        use opentelemetry_otlp::WithExportConfig;
        let rt = super::exporter_runtime("gpuspan-otlp-metrics", "OTLP metrics")?;
        let _enter = rt.enter();
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_timeout(settings.export_timeout)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(settings.export_timeout)
                .build(),
        }
        .map_err(|e| format!("OTLP metric exporter for {}: {e}", settings.endpoint))?;
        let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let provider = SdkMeterProvider::builder().with_resource(super::resource(settings)).with_reader(reader).build();
        let meter = provider.meter("gpuspan");
        let step = meter
            .f64_histogram("dit_inference_step_duration_ms")
            .with_unit("ms")
            .with_description(f::STEP_HELP)
            .with_boundaries(f::STEP_BUCKETS_MS.to_vec())
            .build();
        let vae = meter
            .f64_histogram("vae_decode_duration_seconds")
            .with_unit("s")
            .with_description(f::VAE_HELP)
            .with_boundaries(f::VAE_BUCKETS_S.to_vec())
            .build();
        let video = meter
            .f64_histogram("video_generation_duration_seconds")
            .with_unit("s")
            .with_description(f::VIDEO_HELP)
            .with_boundaries(f::VIDEO_BUCKETS_S.to_vec())
            .build();
        let fps = meter.f64_gauge("frames_per_second_generated").with_unit("{frame}/s").build();
        let comm = [("tensor_parallel_comm_duration_ms", f::COMM_HELP), ("gpuspan_exposed_comm_duration_ms", f::EXPOSED_COMM_HELP)]
            .into_iter()
            .map(|(n, help)| (n, meter.f64_histogram(n).with_unit("ms").with_description(help).with_boundaries(f::COMM_BUCKETS_MS.to_vec()).build()))
            .collect();
        let gpu = GPU_GAUGES.iter().map(|(n, u)| (*n, meter.f64_gauge(*n).with_unit(*u).build())).collect();
        let records = meter.u64_counter("gpuspan_records").with_unit("{record}").build();
        let dropped = meter.u64_counter("gpuspan_records_dropped").with_unit("{record}").build();
        let capture_active = meter.i64_gauge("gpuspan_capture_active").build();
        let hw = HwInstruments::new(&provider);
        drop(_enter);
        Ok(OtlpMetrics {
            provider,
            _rt: rt,
            base,
            step,
            vae,
            video,
            comm,
            fps,
            gpu,
            records,
            dropped,
            capture_active,
            last_totals: Mutex::new(HashMap::new()),
            hw,
        })
    }

    fn attrs(&self, extra: &[(&'static str, &str)]) -> Vec<KeyValue> {
        let mut v = self.base.clone();
        v.extend(extra.iter().map(|(k, val)| KeyValue::new(*k, val.to_string())));
        v
    }

    /// One `dit_inference_step_duration_ms` observation.
    pub fn step_ms(&self, model: &str, step_type: &'static str, ms: f64) {
        self.step.record(ms, &self.attrs(&[("model", model), ("step_type", step_type)]));
    }

    /// One `tensor_parallel_comm_duration_ms` or `gpuspan_exposed_comm_duration_ms`
    /// observation (`name`).
    pub fn comm_ms(&self, name: &'static str, model: &str, ms: f64) {
        if let Some(h) = self.comm.get(name) {
            h.record(ms, &self.attrs(&[("model", model)]));
        }
    }

    /// One `vae_decode_duration_seconds` observation.
    pub fn vae_s(&self, model: &str, s: f64) {
        self.vae.record(s, &self.attrs(&[("model", model)]));
    }

    /// One `video_generation_duration_seconds` observation.
    pub fn video_s(&self, model: &str, s: f64) {
        self.video.record(s, &self.attrs(&[("model", model)]));
    }

    /// `frames_per_second_generated`.
    pub fn fps(&self, model: &str, v: f64) {
        self.fps.record(v, &self.attrs(&[("model", model)]));
    }

    /// One NVML gauge (a name of [`GPU_GAUGES`]) of device `gpu_index`, with its `gpu_uuid`
    /// when known.
    pub fn gpu(&self, name: &'static str, gpu_index: u32, gpu_uuid: Option<&str>, v: f64) {
        if let Some(g) = self.gpu.get(name) {
            let mut a: Vec<KeyValue> = self.base.iter().filter(|k| k.key.as_str() != "gpu_index").cloned().collect();
            a.push(KeyValue::new("gpu_index", gpu_index as i64));
            if let Some(u) = gpu_uuid.filter(|u| !u.is_empty()) {
                a.push(KeyValue::new("gpu_uuid", u.to_string()));
            }
            g.record(v, &a);
        }
    }

    /// The semantic conventions' `hw.*` metrics of one NVML sample
    /// ([`semconv::hw_points`]): gauges recorded now, up-down counters and counters (their
    /// latest running total) reported at the next collection. `gpu_type` (the product name)
    /// becomes `hw.model`. `hw.id` is the GPU's UUID when the sample has one, else
    /// `gpu<index>`.
    pub fn hw_sample(&self, s: &GpuSample, gpu_type: &str) {
        let gpu = semconv::HwGpu::new(s.gpu_index, s.uuid.as_deref(), gpu_type);
        for p in semconv::hw_points(s, &gpu) {
            match p.value {
                HwValue::F64(v) => {
                    if let Some(g) = self.hw.gauges.get(p.metric.name) {
                        g.record(v, &p.attributes);
                    }
                }
                v @ (HwValue::I64(_) | HwValue::Total(_)) => {
                    let mut state = self.hw.observed.lock().unwrap_or_else(|e| e.into_inner());
                    state.insert((p.metric.name, gpu.id.clone()), (p.attributes, v));
                }
            }
        }
    }

    /// The agent counters from running totals (increments of what was not yet added).
    pub fn agent_counters(&self, records_total: u64, dropped: &[(&'static str, u64)], capture_active: bool) {
        let Ok(mut last) = self.last_totals.lock() else { return };
        let mut bump = |key: &'static str, total: u64| -> u64 {
            let prev = last.entry(key).or_insert(0);
            let d = total.saturating_sub(*prev);
            *prev = (*prev).max(total);
            d
        };
        let d = bump("\0records", records_total);
        self.records.add(d, &self.base);
        for (reason, total) in dropped {
            let d = bump(reason, *total);
            self.dropped.add(d, &self.attrs(&[("reason", reason)]));
        }
        self.capture_active.record(capture_active as i64, &self.base);
    }

    /// Exports a last time and stops (bounded by the exporter timeout).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }

    /// [`OtlpMetrics::shutdown`] on a thread of its own, waited for at most `timeout` (the
    /// SDK's `shutdown_with_timeout` ignores its timeout in 0.33, and an exit budget must
    /// hold); an export still running then ends with the process. Returns whether the
    /// shutdown finished in time.
    pub fn shutdown_within(&self, timeout: std::time::Duration) -> bool {
        let provider = self.provider.clone();
        super::shutdown_within("gpuspan-otlp-metrics-stop", timeout, move || {
            let _ = provider.shutdown();
        })
    }
}

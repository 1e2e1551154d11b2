//! Prometheus / OpenMetrics metrics of the agent (DESIGN.md "Spans, metrics, files"; the
//! family names are the platform's observability spec and must not change).
//!
//! [`Metrics`] holds a `prometheus-client` registry with these families:
//!
//! | family | type | labels | unit | source |
//! |---|---|---|---|---|
//! | `dit_inference_step_duration_ms` | histogram, `trace_id` exemplars | `model`, `step_type` | ms | [`StepTiming`] (CUPTI) |
//! | `vae_decode_duration_seconds` | histogram, exemplars | `model` | s | [`RequestTiming::vae_decode_ns`] |
//! | `video_generation_duration_seconds` | histogram, exemplars | `model` | s | [`RequestTiming::dur_ns`] |
//! | `frames_per_second_generated` | gauge | `model` | frames/s | [`RequestTiming`] frames / GPU duration |
//! | `tensor_parallel_comm_duration_ms` | histogram, exemplars | `model` | ms | [`StepTiming::comm_ns`], steps with communication only |
//! | `gpuspan_exposed_comm_duration_ms` | histogram, exemplars | `model` | ms | [`StepTiming::exposed_comm_ns`], steps with communication only |
//! | `nvlink_bandwidth_gbps` | gauge | `gpu_index`, `gpu_type` | GB/s (1e9 B/s) | NVML NVLink TX counter ([`GpuSample::nvlink_gbps`]) |
//! | `gpu_utilization_percent` | gauge | `gpu_index`, `gpu_type` | % | NVML ([`GpuSample`]) |
//! | `gpu_memory_used_bytes` | gauge | `gpu_index`, `gpu_type` | bytes | NVML |
//! | `gpu_memory_utilization_percent` | gauge | `gpu_index`, `gpu_type` | % | NVML used / total |
//! | `gpu_temperature_celsius` | gauge | `gpu_index`, `gpu_type` | °C | NVML |
//! | `gpu_power_watts` | gauge | `gpu_index`, `gpu_type` | W | NVML |
//! | `gpu_sm_clock_mhz` | gauge | `gpu_index`, `gpu_type` | MHz | NVML |
//! | `gpuspan_records_total` | counter | | records | the agent's collector |
//! | `gpuspan_records_dropped_total` | counter | `reason` | records | the agent |
//! | `gpuspan_capture_active` | gauge | | 0 / 1 | the agent |
//! | `gpuspan_coarse_cpu_fallbacks_total` | counter | `reason` | scope boundaries | the agent (coarse mode) |
//! | `gpuspan_model_label_folded_total` | counter | | observations | [`Metrics`] itself |
//!
//! The `model` label is bounded ([`gpuspan_core::cardinality`]): the first `max_models`
//! distinct values get series of their own ([`Metrics::with_max_models`], default
//! [`gpuspan_core::cardinality::DEFAULT_MAX_MODELS`]); observations of later ones go to
//! `model="other"` and count in `gpuspan_model_label_folded_total`. OTLP metrics get the same
//! folded value; spans keep the request's own model.
//!
//! Every sample also carries `worker_id`; all families but the `gpu_*` ones carry the
//! agent's own `gpu_index` and `gpu_type` as constant labels ([`MetricsLabels`]); the `gpu_*`
//! gauges label the sampled device. A family with no sample yet (a `gpu_*` gauge before the
//! first NVML sample, a histogram before the first step) is left out of the exposition
//! entirely.
//!
//! With OTLP attached ([`Metrics::attach_otlp`]) every observation is also recorded as an
//! OTLP metric of the same name, and each NVML sample also as the OpenTelemetry semantic
//! conventions' `hw.*` GPU metrics ([`crate::otlp::semconv`]); those are OTLP only.
//!
//! Two encodings: [`Metrics::encode_openmetrics`] (OpenMetrics 1.0 text with exemplars) and
//! [`Metrics::encode_prometheus_text`] (Prometheus text 0.0.4, no exemplars), served by
//! [`serve`] with content negotiation on `Accept`.

pub(crate) mod families;
mod server;
#[cfg(test)]
mod tests;
mod text;

pub use server::{serve, MetricsServer};

use families::*;
use gpuspan_core::spans::ids::hex;
use gpuspan_core::spans::{RequestTiming, StepTiming};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Constant labels of every sample: who is reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsLabels {
    /// `worker_id` label: the inference worker's id (configuration, e.g. the host name).
    pub worker_id: String,
    /// `gpu_index` label of the non-`gpu_*` families: the CUDA / NVML index of the worker's GPU.
    pub gpu_index: u32,
    /// `gpu_type` label: the GPU's product name (NVML `nvmlDeviceGetName`, e.g.
    /// `NVIDIA H100 80GB HBM3`).
    pub gpu_type: String,
}

/// One NVML reading of one device. A `None` field leaves its gauge as it was (absent until
/// the first `Some`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    /// NVML device index (`gpu_index` label of the `gpu_*` gauges).
    pub gpu_index: u32,
    /// The device's UUID (`nvmlDeviceGetUUID`, `GPU-…`): the `gpu_uuid` label of the
    /// `gpu_*` gauges (empty when unknown), `hw.id` of the `hw.*` metrics, the `gpu_uuid`
    /// attribute of the OTLP `gpu_*` gauges. Indices change with `CUDA_VISIBLE_DEVICES` and
    /// between nodes; the UUID names one physical GPU across a fleet.
    pub uuid: Option<String>,
    /// Percent (0–100) of the last NVML sample period with ≥ 1 kernel running
    /// (`nvmlDeviceGetUtilizationRates().gpu`).
    pub utilization_percent: Option<f64>,
    /// Allocated device memory, bytes (`nvmlDeviceGetMemoryInfo_v2().used`).
    pub memory_used_bytes: Option<u64>,
    /// Total device memory, bytes (`nvmlDeviceGetMemoryInfo_v2().total`).
    pub memory_total_bytes: Option<u64>,
    /// GPU die temperature, °C (`nvmlDeviceGetTemperature`, GPU sensor).
    pub temperature_celsius: Option<f64>,
    /// Power draw, W (`nvmlDeviceGetPowerUsage` mW / 1000).
    pub power_watts: Option<f64>,
    /// SM clock, MHz (`nvmlDeviceGetClockInfo(SM)`).
    pub sm_clock_mhz: Option<f64>,
    /// NVLink data transmitted per second since the previous sample, GB/s (1e9 bytes / s;
    /// from `NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX` over the samples' NVML timestamps).
    /// `None` for a GPU without NVLink or before a second reading.
    pub nvlink_gbps: Option<f64>,
    /// NVLink data transmitted since the driver loaded, bytes: the cumulative counter the
    /// rate above is taken from (`NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX`, KiB of link 0 ×
    /// 1024 × active links). Exported over OTLP only, as the semantic conventions'
    /// `hw.gpu.io` counter (transmit). `None` for a GPU without NVLink.
    pub nvlink_tx_bytes: Option<u64>,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistFamily = Family<StepLabels, ExemplarHistogram, fn() -> ExemplarHistogram>;
type ModelHistFamily = Family<ModelLabels, ExemplarHistogram, fn() -> ExemplarHistogram>;

/// The `gpu_*` gauge families.
#[derive(Debug, Default)]
struct GpuFamilies {
    utilization: Family<GpuLabels, FloatGauge>,
    memory_used: Family<GpuLabels, FloatGauge>,
    memory_utilization: Family<GpuLabels, FloatGauge>,
    temperature: Family<GpuLabels, FloatGauge>,
    power: Family<GpuLabels, FloatGauge>,
    sm_clock: Family<GpuLabels, FloatGauge>,
    nvlink: Family<GpuLabels, FloatGauge>,
}

/// The agent's metrics: a `prometheus-client` registry and handles on its families.
/// All methods take `&self` (atomics and the families' own locks); `Send + Sync`, shared
/// as `Arc<Metrics>` between the collector, the NVML sampler and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    /// Every family but the `gpu_*` ones; const labels worker_id, gpu_index, gpu_type.
    registry: Registry,
    /// The `gpu_*` gauges; const label worker_id.
    gpu_registry: Registry,
    gpu_type: Arc<str>,
    step: HistFamily,
    vae: ModelHistFamily,
    video: ModelHistFamily,
    comm: ModelHistFamily,
    exposed_comm: ModelHistFamily,
    fps: Family<ModelLabels, FloatGauge>,
    gpu: GpuFamilies,
    records: Counter,
    dropped: Family<ReasonLabels, Counter>,
    capture_active: FloatGauge,
    /// `gpuspan_coarse_cpu_fallbacks_total{reason}`.
    coarse_fallbacks: Family<ReasonLabels, Counter>,
    /// Serializes [`Metrics::set_agent_counters`] (total → increment).
    agent_lock: Mutex<()>,
    /// The `model` values with series of their own.
    models: Mutex<gpuspan_core::cardinality::LabelValues>,
    /// `gpuspan_model_label_folded_total`.
    models_folded: Counter,
    /// The same observations as OTLP metrics, once attached.
    otlp: std::sync::OnceLock<Arc<crate::otlp::OtlpMetrics>>,
}

impl Metrics {
    /// Creates the registry with every family of the module table. `labels` become the
    /// constant labels (see the module docs).
    pub fn new(labels: MetricsLabels) -> Arc<Metrics> {
        Self::with_max_models(labels, gpuspan_core::cardinality::DEFAULT_MAX_MODELS)
    }

    /// [`Metrics::new`] with at most `max_models` distinct `model` label values (the rest
    /// are folded into `model="other"`; module docs).
    pub fn with_max_models(labels: MetricsLabels, max_models: usize) -> Arc<Metrics> {
        let const_labels = vec![
            (
                Cow::Borrowed("worker_id"),
                Cow::Owned(labels.worker_id.clone()),
            ),
            (
                Cow::Borrowed("gpu_index"),
                Cow::Owned(labels.gpu_index.to_string()),
            ),
            (
                Cow::Borrowed("gpu_type"),
                Cow::Owned(labels.gpu_type.clone()),
            ),
        ];
        let mut registry = Registry::with_labels(const_labels.into_iter());
        let mut gpu_registry = Registry::with_labels(
            [(
                Cow::Borrowed("worker_id"),
                Cow::Owned(labels.worker_id.clone()),
            )]
            .into_iter(),
        );

        let step: HistFamily = Family::new_with_constructor(step_histogram);
        let vae: ModelHistFamily = Family::new_with_constructor(vae_histogram);
        let video: ModelHistFamily = Family::new_with_constructor(video_histogram);
        let comm: ModelHistFamily = Family::new_with_constructor(comm_histogram);
        let exposed_comm: ModelHistFamily = Family::new_with_constructor(comm_histogram);
        let fps = Family::<ModelLabels, FloatGauge>::default();
        let records = Counter::default();
        let dropped = Family::<ReasonLabels, Counter>::default();
        let capture_active = FloatGauge::default();
        let gpu = GpuFamilies::default();

        registry.register("dit_inference_step_duration_ms", STEP_HELP, step.clone());
        registry.register("vae_decode_duration_seconds", VAE_HELP, vae.clone());
        registry.register(
            "video_generation_duration_seconds",
            VIDEO_HELP,
            video.clone(),
        );
        registry.register("frames_per_second_generated", FPS_HELP, fps.clone());
        registry.register("tensor_parallel_comm_duration_ms", COMM_HELP, comm.clone());
        registry.register("gpuspan_exposed_comm_duration_ms", EXPOSED_COMM_HELP, exposed_comm.clone());
        // Counters are registered without `_total`: the encoder appends it to the sample.
        registry.register("gpuspan_records", RECORDS_HELP, records.clone());
        registry.register("gpuspan_records_dropped", DROPPED_HELP, dropped.clone());
        registry.register(
            "gpuspan_capture_active",
            CAPTURE_HELP,
            capture_active.clone(),
        );
        let models_folded = Counter::default();
        registry.register("gpuspan_model_label_folded", MODELS_FOLDED_HELP, models_folded.clone());
        let coarse_fallbacks = Family::<ReasonLabels, Counter>::default();
        registry.register("gpuspan_coarse_cpu_fallbacks", COARSE_FALLBACKS_HELP, coarse_fallbacks.clone());

        let g = &mut gpu_registry;
        g.register(
            "gpu_utilization_percent",
            GPU_UTIL_HELP,
            gpu.utilization.clone(),
        );
        g.register(
            "gpu_memory_used_bytes",
            GPU_MEM_USED_HELP,
            gpu.memory_used.clone(),
        );
        g.register(
            "gpu_memory_utilization_percent",
            GPU_MEM_UTIL_HELP,
            gpu.memory_utilization.clone(),
        );
        g.register(
            "gpu_temperature_celsius",
            GPU_TEMP_HELP,
            gpu.temperature.clone(),
        );
        g.register("gpu_power_watts", GPU_POWER_HELP, gpu.power.clone());
        g.register("gpu_sm_clock_mhz", GPU_SM_CLOCK_HELP, gpu.sm_clock.clone());
        g.register("nvlink_bandwidth_gbps", NVLINK_HELP, gpu.nvlink.clone());

        Arc::new(Metrics {
            registry,
            gpu_registry,
            gpu_type: Arc::from(labels.gpu_type.as_str()),
            step,
            vae,
            video,
            comm,
            exposed_comm,
            fps,
            gpu,
            records,
            dropped,
            capture_active,
            coarse_fallbacks,
            agent_lock: Mutex::new(()),
            models: Mutex::new(gpuspan_core::cardinality::LabelValues::new(max_models)),
            models_folded,
            otlp: std::sync::OnceLock::new(),
        })
    }

    /// Also records every later observation as OTLP metrics (once; later calls are ignored).
    pub fn attach_otlp(&self, otlp: Arc<crate::otlp::OtlpMetrics>) {
        let _ = self.otlp.set(otlp);
    }

    /// Observes one finished step in `dit_inference_step_duration_ms` (ms = ns / 1e6):
    /// `step_type="step"` ← [`StepTiming::dur_ns`]; `spatial_attn` / `temporal_attn` /
    /// `cross_attn` / `ffn` ← the step's `stage_busy_ns` of stage `attention.spatial` /
    /// `attention.temporal` / `attention.cross` / `ffn`, only when that stage is present
    /// (a stage listed twice is summed). A step with collective communication also observes
    /// `tensor_parallel_comm_duration_ms` ← [`StepTiming::comm_ns`] and
    /// `gpuspan_exposed_comm_duration_ms` ← [`StepTiming::exposed_comm_ns`] (ms). Each
    /// observation sets its bucket's exemplar to `{trace_id="<32 hex>"}`.
    pub fn observe_step(&self, t: &StepTiming) {
        let trace = TraceExemplar {
            trace_id: hex(&t.trace_id),
        };
        let model = self.model_label(&t.model);
        let observe = |step_type: &'static str, ns: u64| {
            self.step
                .get_or_create(&StepLabels {
                    model: model.clone(),
                    step_type,
                })
                .observe(ns_to_ms(ns), Some(trace.clone()), None);
            if let Some(o) = self.otlp.get() {
                o.step_ms(&model, step_type, ns_to_ms(ns));
            }
        };
        observe("step", t.dur_ns);
        if t.comm_ns > 0 {
            for (family, ns, name) in [(&self.comm, t.comm_ns, "tensor_parallel_comm_duration_ms"), (&self.exposed_comm, t.exposed_comm_ns, "gpuspan_exposed_comm_duration_ms")] {
                family.get_or_create(&ModelLabels { model: model.clone() }).observe(ns_to_ms(ns), Some(trace.clone()), None);
                if let Some(o) = self.otlp.get() {
                    o.comm_ms(name, &model, ns_to_ms(ns));
                }
            }
        }
        for (stage, step_type) in STAGE_STEP_TYPES {
            let mut found = false;
            let mut ns = 0u64;
            for (name, busy) in &t.stage_busy_ns {
                if &**name == stage {
                    found = true;
                    ns = ns.saturating_add(*busy);
                }
            }
            if found {
                observe(step_type, ns);
            }
        }
    }

    /// Observes one finished request: `video_generation_duration_seconds` ←
    /// [`RequestTiming::dur_ns`] (s); `vae_decode_duration_seconds` ← `vae_decode_ns` when
    /// `Some`; `frames_per_second_generated` = frames / (dur_ns / 1e9) when `frames` is `Some`
    /// and `dur_ns > 0`. Histogram observations carry the `trace_id` exemplar.
    pub fn observe_request(&self, t: &RequestTiming) {
        let trace = TraceExemplar {
            trace_id: hex(&t.trace_id),
        };
        let model = self.model_label(&t.model);
        let labels = ModelLabels {
            model: model.clone(),
        };
        let otlp = self.otlp.get();
        self.video
            .get_or_create(&labels)
            .observe(ns_to_s(t.dur_ns), Some(trace.clone()), None);
        if let Some(o) = otlp {
            o.video_s(&model, ns_to_s(t.dur_ns));
        }
        if let Some(vae) = t.vae_decode_ns {
            self.vae
                .get_or_create(&labels)
                .observe(ns_to_s(vae), Some(trace), None);
            if let Some(o) = otlp {
                o.vae_s(&model, ns_to_s(vae));
            }
        }
        if let (Some(frames), true) = (t.frames, t.dur_ns > 0) {
            let fps = frames as f64 / ns_to_s(t.dur_ns);
            self.fps.get_or_create(&labels).set(fps);
            if let Some(o) = otlp {
                o.fps(&model, fps);
            }
        }
    }

    /// The `model` label value for `model`: itself, or `other` past the limit (counted in
    /// `gpuspan_model_label_folded_total`).
    fn model_label(&self, model: &Arc<str>) -> Arc<str> {
        let Ok(mut m) = self.models.lock() else { return model.clone() };
        let before = m.folded();
        let v = m.fold(model);
        if m.folded() > before {
            self.models_folded.inc();
        }
        v
    }

    /// Observations whose `model` was folded into `other` so far (the agent warns once).
    pub fn models_folded(&self) -> u64 {
        self.models_folded.get()
    }

    /// Sets the `gpu_*` gauges of device `s.gpu_index` (label `gpu_type` = this agent's
    /// [`MetricsLabels::gpu_type`]). `None` fields leave their gauge untouched;
    /// `gpu_memory_utilization_percent` = 100 × used / total when both are `Some` and
    /// total > 0. With OTLP attached, the same sample is also recorded as the semantic
    /// conventions' `hw.*` metrics ([`crate::otlp::OtlpMetrics::hw_sample`]).
    pub fn set_gpu_sample(&self, s: &GpuSample) {
        let labels = GpuLabels {
            gpu_index: s.gpu_index,
            gpu_uuid: Arc::from(s.uuid.as_deref().unwrap_or("")),
            gpu_type: self.gpu_type.clone(),
        };
        let otlp = self.otlp.get();
        let set = |name: &'static str, f: &Family<GpuLabels, FloatGauge>, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                f.get_or_create(&labels).set(v);
                if let Some(o) = otlp {
                    o.gpu(name, s.gpu_index, s.uuid.as_deref(), v);
                }
            }
        };
        let g = &self.gpu;
        set("gpu_utilization_percent", &g.utilization, s.utilization_percent);
        set("gpu_memory_used_bytes", &g.memory_used, s.memory_used_bytes.map(|b| b as f64));
        let mem_pct = match (s.memory_used_bytes, s.memory_total_bytes) {
            (Some(u), Some(t)) if t > 0 => Some(100.0 * u as f64 / t as f64),
            _ => None,
        };
        set("gpu_memory_utilization_percent", &g.memory_utilization, mem_pct);
        set("gpu_temperature_celsius", &g.temperature, s.temperature_celsius);
        set("gpu_power_watts", &g.power, s.power_watts);
        set("gpu_sm_clock_mhz", &g.sm_clock, s.sm_clock_mhz);
        set("nvlink_bandwidth_gbps", &g.nvlink, s.nvlink_gbps);
        if let Some(o) = otlp {
            o.hw_sample(s, &self.gpu_type);
        }
    }

    /// Brings the agent's own families up to date from running totals:
    /// `gpuspan_records_total` ← `records_total`, `gpuspan_records_dropped_total{reason}` ←
    /// each `(reason, total)` (a reason appears, at its total, on its first call), and
    /// `gpuspan_capture_active` ← 1 / 0. Counters only move up: a total below the exported
    /// value (a reset upstream) is ignored until it is exceeded again.
    pub fn set_agent_counters(
        &self,
        records_total: u64,
        dropped: &[(&'static str, u64)],
        capture_active: bool,
    ) {
        let _serial = self.agent_lock.lock().unwrap_or_else(|e| e.into_inner());
        raise_counter(&self.records, records_total);
        for (reason, total) in dropped {
            raise_counter(
                &self.dropped.get_or_create(&ReasonLabels { reason }),
                *total,
            );
        }
        self.capture_active
            .set(if capture_active { 1.0 } else { 0.0 });
        if let Some(o) = self.otlp.get() {
            o.agent_counters(records_total, dropped, capture_active);
        }
    }

    /// Brings `gpuspan_coarse_cpu_fallbacks_total{reason}` up to each `(reason, total)`
    /// (coarse mode's scope boundaries timed on the CPU side; a reason appears, at its
    /// total, on its first call). Counters only move up, as in
    /// [`Metrics::set_agent_counters`]. Prometheus only (no OTLP counterpart yet).
    pub fn set_coarse_fallbacks(&self, totals: &[(&'static str, u64)]) {
        let _serial = self.agent_lock.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, total) in totals {
            raise_counter(&self.coarse_fallbacks.get_or_create(&ReasonLabels { reason }), *total);
        }
    }

    /// The OpenMetrics 1.0 text exposition (`prometheus_client::encoding::text::encode`):
    /// `# HELP` / `# TYPE` per family with samples, histogram bucket exemplars
    /// `# {trace_id="…"} value`, ending with `# EOF`.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail; an encoder error would leave a partial body,
        // still ended by `# EOF`.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.gpu_registry);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    /// The Prometheus text format 0.0.4 exposition: the same samples as
    /// [`Metrics::encode_openmetrics`] without exemplars, `# UNIT` and `# EOF`; `# HELP` and
    /// `# TYPE` for every family, counters' naming the `_total` sample.
    pub fn encode_prometheus_text(&self) -> String {
        text::openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

fn raise_counter(c: &Counter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

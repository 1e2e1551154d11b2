//! Where finished spans and timings go: the OTLP span pipeline, the metrics (Prometheus
//! endpoint, NVML gauges), and the agent's own counters. Owned by the agent, fed by the
//! collector thread outside its lock, shut down (bounded) at exit.

use crate::config::Config;
use crate::shared::Shared;
use gpuspan_core::spans::{ContextProblem, Finalized};
use gpuspan_export::metrics::{Metrics, MetricsLabels, MetricsServer};
use gpuspan_export::otlp::{OtlpMetrics, OtlpSettings, SpanPipeline};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for the OTLP exporter to deliver what is queued at exit.
pub const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest interval between two "no usable traceparent" warnings.
pub const CONTEXT_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// The agent's outputs besides the capture file.
pub struct Telemetry {
    /// OTLP span exporter, when an endpoint is configured.
    pub spans: Option<SpanPipeline>,
    /// Metrics registry (always kept; served when `GPUSPAN_METRICS_ADDR` is set).
    pub metrics: Arc<Metrics>,
    /// The same metrics over OTLP, when an endpoint is configured.
    otlp_metrics: Option<Arc<OtlpMetrics>>,
    /// The agent's log events over OTLP, when an endpoint is configured.
    otlp_logs: Option<Arc<gpuspan_export::otlp::logs::OtlpLogs>>,
    server: Mutex<Option<MetricsServer>>,
    sampler: Mutex<Option<crate::nvml::Sampler>>,
    context_warn: Mutex<(Option<Instant>, u64)>,
    /// NVML UUID of each CUDA device the process sees, by CUDA ordinal
    /// ([`crate::nvml::DeviceInfo::visible_uuids`]; empty without NVML).
    pub device_uuids: Vec<String>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("spans", &self.spans).finish_non_exhaustive()
    }
}

/// Kubernetes resource attributes (OpenTelemetry semantic conventions, `k8s.*` resource
/// attributes) and the environment variables they are read from, which a pod spec fills with
/// the downward API (`fieldRef: metadata.name`, `metadata.namespace`, `spec.nodeName`), the
/// names the OpenTelemetry documentation's Kubernetes examples use.
pub const K8S_ENV_ATTRIBUTES: [(&str, &str); 3] =
    [("K8S_POD_NAME", "k8s.pod.name"), ("K8S_NAMESPACE_NAME", "k8s.namespace.name"), ("K8S_NODE_NAME", "k8s.node.name")];

/// The OTel resource attributes gpuspan adds (the SDK adds `service.name`, `telemetry.sdk.*`
/// and those of `OTEL_RESOURCE_ATTRIBUTES` / `OTEL_SERVICE_NAME` itself):
/// `service.instance.id` (the worker id, `GPUSPAN_WORKER_ID`), `host.name`, `process.pid`,
/// the [`K8S_ENV_ATTRIBUTES`] that `get` finds non-empty, and for the worker's own GPU
/// `gpu.device.name`, `gpu.device.index` (NVML index), `gpu.device.uuid`,
/// `gpu.device.mig.uuid` (when `CUDA_VISIBLE_DEVICES` names a MIG instance) and
/// `gpu.driver.version`; in a process of a distributed job (`RANK` / `WORLD_SIZE`),
/// `gpuspan.rank` and `gpuspan.world_size`, so every span, metric and log of the rank says
/// which it is (the kernel spans too, not only `gpu.request`). The `gpu.*` names are
/// gpuspan's: the conventions define none for a process's GPU.
pub fn resource_attributes(config: &Config, device: Option<&crate::nvml::DeviceInfo>, get: impl Fn(&str) -> Option<String>) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let mut out = vec![
        KeyValue::new("service.instance.id", config.worker_id.clone()),
        KeyValue::new("host.name", crate::config::host_name()),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ];
    for (var, key) in K8S_ENV_ATTRIBUTES {
        if let Some(v) = get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            out.push(KeyValue::new(key, v));
        }
    }
    if let Some(d) = device {
        out.push(KeyValue::new("gpu.device.name", d.name.clone()));
        out.push(KeyValue::new("gpu.device.index", i64::from(d.index)));
        out.push(KeyValue::new("gpu.device.uuid", d.uuid.clone()));
        if let Some(m) = &d.mig {
            out.push(KeyValue::new("gpu.device.mig.uuid", m.clone()));
        }
        out.push(KeyValue::new("gpu.driver.version", d.driver.clone()));
    }
    if let Some(d) = config.distributed {
        out.push(KeyValue::new("gpuspan.rank", i64::from(d.rank)));
        out.push(KeyValue::new("gpuspan.world_size", i64::from(d.world_size)));
    }
    out
}

impl Telemetry {
    /// Starts what the configuration asks for. Problems (a bad endpoint, a port in use,
    /// no NVML) are one warning each; the rest still starts.
    pub fn start(config: &Config) -> Telemetry {
        let device = crate::nvml::device_info();
        let gpu_type = device.as_ref().map(|d| d.name.clone()).unwrap_or_else(|| "unknown".into());
        let gpu_index = device.as_ref().map_or(0, |d| d.index);
        let metrics = Metrics::with_max_models(
            MetricsLabels { worker_id: config.worker_id.clone(), gpu_index, gpu_type: gpu_type.clone() },
            config.max_models,
        );
        let (otlp, warnings) = OtlpSettings::from_env();
        for w in warnings {
            crate::log::warn(&w);
        }
        let otlp = otlp.map(|mut s| {
            s.resource_attributes.extend(resource_attributes(config, device.as_ref(), |k| std::env::var(k).ok()));
            s
        });
        let otlp_logs = otlp.as_ref().and_then(|s| match gpuspan_export::otlp::logs::OtlpLogs::start(s) {
            Ok(l) => {
                let l = Arc::new(l);
                let sink = l.clone();
                crate::log::set_event_sink(Box::new(move |level, event, message, fields| {
                    send_log(&sink, level, event, message, fields)
                }));
                Some(l)
            }
            Err(e) => {
                crate::log::warn(&format!("{e}; log events are not exported over OTLP"));
                None
            }
        });
        let otlp_metrics = otlp.as_ref().and_then(|s| {
            let base = vec![
                opentelemetry::KeyValue::new("worker_id", config.worker_id.clone()),
                opentelemetry::KeyValue::new("gpu_index", i64::from(gpu_index)),
                opentelemetry::KeyValue::new("gpu_type", gpu_type.clone()),
            ];
            match OtlpMetrics::start(s, base) {
                Ok(m) => {
                    let m = Arc::new(m);
                    metrics.attach_otlp(m.clone());
                    Some(m)
                }
                Err(e) => {
                    crate::log::warn(&format!("{e}; metrics are not exported over OTLP"));
                    None
                }
            }
        });
        let spans = otlp.and_then(|s| {
            // The pipeline's export-failure warning is the `otlp.export.failed` event.
            let warn: gpuspan_export::otlp::pipeline::WarnFn = Arc::new(|m: &str| {
                let name = if m.starts_with("OTLP export to ") { "otlp.export.failed" } else { "agent.warning" };
                crate::log::event(tracing::Level::WARN, name, m, &crate::log::Fields::default());
            });
            match SpanPipeline::start(s, warn) {
                Ok(p) => {
                    crate::log::info(&format!(
                        "exporting spans over OTLP ({:?}) to {}",
                        p.settings().protocol,
                        p.settings().endpoint
                    ));
                    Some(p)
                }
                Err(e) => {
                    crate::log::warn(&format!("{e}; spans are not exported"));
                    None
                }
            }
        });
        let server = config.metrics_addr.as_deref().and_then(|addr| {
            match gpuspan_export::metrics::serve(addr, metrics.clone()) {
                Ok(s) => {
                    crate::log::info(&format!("metrics on http://{}/metrics", s.local_addr()));
                    Some(s)
                }
                Err(e) => {
                    crate::log::warn(&format!("GPUSPAN_METRICS_ADDR={addr}: {e}; metrics are not served"));
                    None
                }
            }
        });
        let sampler = if server.is_some() || spans.is_some() {
            let indices = device.as_ref().map(|d| d.sampled.clone()).unwrap_or_default();
            crate::nvml::start_sampler(metrics.clone(), config.nvml_period, indices)
        } else {
            None
        };
        Telemetry {
            spans,
            metrics,
            otlp_metrics,
            otlp_logs,
            server: Mutex::new(server),
            sampler: Mutex::new(sampler),
            context_warn: Mutex::new((None, 0)),
            device_uuids: device.map(|d| d.visible_uuids).unwrap_or_default(),
        }
    }

    /// Address the metrics endpoint listens on, if serving.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.lock().ok().and_then(|g| g.as_ref().map(|s| s.local_addr()))
    }

    /// Publishes what the assembler finalized. Never blocks on the network.
    pub fn publish(&self, f: Finalized) {
        for s in &f.steps {
            self.metrics.observe_step(s);
        }
        for r in &f.requests {
            self.metrics.observe_request(r);
        }
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if self.metrics.models_folded() > 0 && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::log::warn(
                "more distinct models than GPUSPAN_MAX_MODELS: the metrics of the later ones are labelled model=\"other\" (gpuspan_model_label_folded_total counts them); their spans keep their model",
            );
        }
        if let Some(p) = &self.spans {
            p.submit(f.spans);
        }
    }

    /// Reports requests without a usable traceparent: one warning per
    /// [`CONTEXT_WARN_INTERVAL`], with the count since the last one.
    pub fn report_context_problems(&self, problems: Vec<ContextProblem>) {
        if problems.is_empty() {
            return;
        }
        let Ok(mut g) = self.context_warn.lock() else { return };
        g.1 += problems.len() as u64;
        let due = g.0.is_none_or(|t| t.elapsed() >= CONTEXT_WARN_INTERVAL);
        if due {
            crate::log::warn(&format!(
                "{} ({} request(s) so far): started a new trace for it; its GPU spans have no parent",
                problems[0], g.1
            ));
            *g = (Some(Instant::now()), 0);
        }
    }

    /// Refreshes the agent-counter metrics from `a`.
    pub fn update_counters(&self, a: &Shared) {
        let c = &a.counters;
        let otlp_dropped = self.spans.as_ref().map(|p| p.counters().dropped()).unwrap_or(0);
        self.metrics.set_agent_counters(
            c.records_decoded.load(Ordering::Relaxed),
            &[
                ("cupti", c.cupti_records_dropped.load(Ordering::Relaxed)),
                ("record_limit", c.records_over_limit.load(Ordering::Relaxed)),
                ("scope_queue", c.scope_events_dropped.load(Ordering::Relaxed)),
                ("buffer_queue", c.buffers_dropped.load(Ordering::Relaxed)),
                ("otlp_spans", otlp_dropped),
                ("coarse_marks", a.coarse.as_ref().map_or(0, |c| c.counters.marks_dropped.load(Ordering::Relaxed))),
            ],
            // 1 while CUPTI collects kernels: fine mode, a fine window, the flight recorder.
            a.fine_on.load(Ordering::Relaxed) && a.collecting.load(Ordering::Relaxed),
        );
        if let Some(cc) = &a.coarse {
            self.metrics.set_coarse_fallbacks(&[
                ("event_pool_exhausted", cc.counters.pool_exhausted.load(Ordering::Relaxed)),
                ("event_error", cc.counters.event_errors.load(Ordering::Relaxed)),
            ]);
        }
    }

    /// Stops the NVML sampler thread (the agent finishing), waiting for it at most until
    /// `until`.
    pub fn stop_sampler(&self, until: Instant) {
        if let Some(s) = self.sampler.lock().ok().and_then(|mut g| g.take()) {
            if !s.stop_until(until) {
                crate::log::info("the NVML sampler was still in an NVML call when the agent finished");
            }
        }
    }

    /// Exit: delivers queued spans within `timeout` (at most [`EXIT_FLUSH_TIMEOUT`]; what the
    /// exit budget leaves), reports spans lost to an unreachable endpoint in one line, and
    /// stops the metrics endpoint and the OTLP exporters' threads.
    pub fn shutdown(&self, a: &Shared, timeout: Duration) {
        let until = Instant::now() + timeout;
        if let Some(p) = &self.spans {
            p.shutdown(timeout.min(EXIT_FLUSH_TIMEOUT));
            let c = p.counters();
            let dropped = c.dropped();
            if dropped > 0 {
                crate::log::warn(&format!(
                    "OTLP: {dropped} of {} spans were dropped (endpoint {} unreachable or slow; backlog bound {} bytes)",
                    c.submitted.load(Ordering::Relaxed),
                    p.settings().endpoint,
                    p.settings().backlog_bytes
                ));
            }
        }
        self.update_counters(a);
        if let Some(m) = &self.otlp_metrics {
            if !m.shutdown_within(until.saturating_duration_since(Instant::now())) {
                crate::log::info("the OTLP metrics exporter had not finished its last export when the exit budget ran out");
            }
        }
        if let Some(l) = &self.otlp_logs {
            if !l.shutdown_within(until.saturating_duration_since(Instant::now())) {
                crate::log::info("the OTLP log exporter had not finished its last export when the exit budget ran out");
            }
        }
        if let Some(s) = self.server.lock().ok().and_then(|mut g| g.take()) {
            s.stop();
        }
    }
}

/// One log event to the OTLP log pipeline: its trace and span ids, and as attributes the
/// request id, the `context` members (as `context.<name>`) and the other fields.
fn send_log(logs: &gpuspan_export::otlp::logs::OtlpLogs, level: tracing::Level, event: &'static str, message: &str, f: &crate::log::Fields) {
    let mut attributes: Vec<(String, serde_json::Value)> = Vec::new();
    if let Some(r) = &f.request_id {
        attributes.push(("request_id".into(), r.clone().into()));
    }
    attributes.extend(f.context.iter().map(|(k, v)| (format!("context.{k}"), v.clone())));
    attributes.extend(f.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    logs.emit(&gpuspan_export::otlp::logs::LogEvent {
        level: level.as_str(),
        event,
        message,
        trace_id: f.trace_id,
        span_id: f.span_id,
        attributes: &attributes,
    });
}

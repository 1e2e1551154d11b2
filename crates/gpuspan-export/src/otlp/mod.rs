//! OTLP export of gpuspan's spans (and, in [`crate::metrics`], metrics) with
//! `opentelemetry-otlp`, over gRPC or HTTP/protobuf.
//!
//! - [`config`]: the standard `OTEL_EXPORTER_OTLP_*` / `OTEL_SERVICE_NAME` /
//!   `OTEL_RESOURCE_ATTRIBUTES` variables plus gpuspan's backlog bound;
//! - [`convert`]: [`gpuspan_core::spans::SpanRecord`] → the SDK's `SpanData`;
//! - [`metrics`]: the Prometheus families mirrored as OTLP metrics (SDK meter provider),
//!   plus the OpenTelemetry semantic conventions' `hw.*` GPU metrics;
//! - [`semconv`]: those `hw.*` names, units, attributes and conversions (issue 15, item 5);
//! - [`pipeline`]: the exporter thread: a bounded queue from the collector (never blocks
//!   it), a byte-bounded backlog that survives an endpoint outage (oldest spans dropped
//!   and counted, one warning), retries with backoff, and a bounded flush at exit;
//! - [`logs`]: the agent's log events as OTLP log records (SDK logger provider).
//!
//! The three exporters share `exporter_runtime`, `resource` and `shutdown_within`.

pub mod config;
pub mod convert;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod semconv;

pub use config::{OtlpProtocol, OtlpSettings};

/// A one-worker tokio runtime whose thread is named `thread_name`, for one exporter (tonic
/// and the async HTTP client need a reactor). Errors name `what` (`OTLP metrics`, …).
pub(crate) fn exporter_runtime(thread_name: &str, what: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread_name)
        .enable_all()
        .build()
        .map_err(|e| format!("{what} runtime: {e}"))
}

/// The SDK resource with `settings`' extra attributes (the SDK adds `service.name` and those
/// of `OTEL_RESOURCE_ATTRIBUTES`).
pub(crate) fn resource(settings: &OtlpSettings) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder().with_attributes(settings.resource_attributes.iter().cloned()).build()
}

/// Runs `shutdown` (a provider's) on a thread named `thread_name` and waits for it at most
/// `timeout`: the SDK's `shutdown_with_timeout` ignores its timeout in 0.33, and an exit
/// budget must hold; an export still running then ends with the process. Returns whether it
/// finished in time.
pub(crate) fn shutdown_within(thread_name: &str, timeout: std::time::Duration, shutdown: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name(thread_name.into()).spawn(move || {
        shutdown();
        let _ = tx.send(());
    });
    spawned.is_ok() && rx.recv_timeout(timeout).is_ok()
}
pub use metrics::OtlpMetrics;
pub use pipeline::{ExportCounters, SpanPipeline};

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
//!   and counted, one warning), retries with backoff, and a bounded flush at exit.

pub mod config;
pub mod convert;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod semconv;

pub use config::{OtlpProtocol, OtlpSettings};
pub use metrics::OtlpMetrics;
pub use pipeline::{ExportCounters, SpanPipeline};

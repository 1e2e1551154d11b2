//! `gpuspan-export`: everything that leaves (or enters) gpuspan as a file or over the wire.
//!
//! - [`kineto`]: the Kineto / torch.profiler Chrome-trace JSON capture format:
//!   [`read_trace`] turns a `.json` or `.json.gz` file written by torch.profiler, Kineto,
//!   HTA's test data or gpuspan itself into the pure model [`gpuspan_core::trace::Trace`],
//!   and [`write_trace`] writes a `Trace` back as a current-schema Kineto file that HTA,
//!   TraceLens, Perfetto and `chrome://tracing` open;
//! - [`otlp`]: spans (`gpuspan_core::spans::SpanRecord`) and metrics over OTLP gRPC or
//!   HTTP/protobuf with `opentelemetry-otlp`;
//! - [`metrics`]: the Prometheus families and their `/metrics` endpoint;
//! - [`waterfall`]: per-step kernel waterfalls of a trace, drawn for the terminal or as one
//!   self-contained HTML page (`gpuspan waterfall`, `gpuspan demo`).
//!
//! Who depends on it:
//! - `gpuspan-cli` (`gpuspan stats`, `waterfall`, `diff`, `replay`) reads traces with
//!   [`read_trace`] and hands them to `gpuspan-core`'s analyses;
//! - `gpuspan-agent` writes capture files (`DIR/capture-<pid>.json.gz`) with [`write_trace`];
//!   the CLI reads a file or a directory of them with [`read_captures`];
//! - `gpuspan-agent` feeds step / request timings, NVML samples and its own counters into
//!   [`metrics::Metrics`] and serves them on `/metrics` with [`metrics::serve`] (OpenMetrics
//!   with trace-id exemplars, or Prometheus text; its one thread, `gpuspan-metrics`);
//! - `gpuspan-agent` hands finished spans to [`otlp::SpanPipeline`] (its thread
//!   `gpuspan-otlp`, on a one-worker tokio runtime) and, with an OTLP endpoint, attaches
//!   [`otlp::OtlpMetrics`] to its [`metrics::Metrics`];
//! - the replay worker (`gpuspan-simgpu`) reads real Kineto traces with [`read_trace`] to
//!   replay their kernels on the simulated H100.
//!
//! The crate keeps no global state and is safe Rust only (`forbid`). The threads it starts
//! (metrics endpoint, OTLP exporter and its runtime) are owned by the value that started
//! them. All interpretation of a trace (stages, steps, busy time) stays in `gpuspan-core`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kineto;
pub mod metrics;
pub mod otlp;
pub mod waterfall;

pub use kineto::{process_captures, read_captures, read_captures_with, read_trace, read_trace_with, write_trace, ReadError, ReadErrorKind};

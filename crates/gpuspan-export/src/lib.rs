//! `gpuspan-export`: everything that leaves (or enters) gpuspan as a file or over the wire.
//!
//! Today that is the Kineto / torch.profiler Chrome-trace JSON capture format ([`kineto`]):
//! [`read_trace`] turns a `.json` or `.json.gz` file written by torch.profiler, Kineto, HTA's
//! test data or gpuspan itself into the pure model [`gpuspan_core::trace::Trace`], and
//! [`write_trace`] writes a `Trace` back as a current-schema Kineto file that HTA, TraceLens,
//! Perfetto and `chrome://tracing` open. The OTLP exporter, the Prometheus endpoint and the
//! HTML waterfall will live here as well (DESIGN.md "Data flow").
//!
//! Who depends on it:
//! - `gpuspan-cli` (`gpuspan stats`, `waterfall`, `diff`, `replay`) reads traces with
//!   [`read_trace`] and hands them to `gpuspan-core`'s analyses;
//! - `gpuspan-agent` writes capture files (`DIR/capture.json.gz`) with [`write_trace`];
//! - the replay worker (`gpuspan-simgpu`) reads real Kineto traces with [`read_trace`] to
//!   replay their kernels on the simulated H100.
//!
//! The crate does I/O but keeps no global state, spawns no threads and is safe Rust only
//! (`forbid`); all interpretation of a trace (stages, steps, busy time) stays in `gpuspan-core`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kineto;

pub use kineto::{read_trace, write_trace, ReadError, ReadErrorKind};

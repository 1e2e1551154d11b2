//! OpenTelemetry span assembly: scopes + decoded GPU records → the per-request span tree of
//! DESIGN.md "Spans, metrics, files", as plain data ([`SpanRecord`]) that `gpuspan-export`
//! turns into OTLP.
//!
//! ```text
//! gpu.request                       child of the worker's span (traceparent parent-id)
//! ├── dit.step ×N
//! │   └── <stage> (attention.spatial, ffn, gemm, …)   aggregates its kernels
//! │       └── cuda.kernel           fine mode, under GPUSPAN_KERNEL_SPAN_BUDGET per trace
//! └── vae.decode (and any stage launched outside a step)
//!     └── cuda.kernel
//! ```
//!
//! Modules, one job each:
//! - [`context`]: W3C trace context (traceparent, tracestate, baggage) of a request scope;
//! - [`ids`]: deterministic span / trace ids (a re-export of the same scopes does not
//!   duplicate spans);
//! - [`model`]: the span and timing types handed to exporters and metrics;
//! - [`assemble`]: the incremental assembler the agent's collector feeds and polls;
//! - [`corr_runs`]: its correlation id → scope map, kept as runs of consecutive ids.

pub mod assemble;
pub mod context;
pub mod corr_runs;
pub mod ids;
pub mod model;

pub use assemble::{
    gpu_work_expected, AssemblerStats, SpanAssembler, SpanOptions, DRIVER_GPU_WORK_CBIDS, RUNTIME_GPU_WORK_CBIDS, RUNTIME_GPU_WORK_CBIDS_13, DRIVER_GRAPH_LAUNCH_CBIDS, RUNTIME_GRAPH_LAUNCH_CBIDS,
};
pub use context::{ContextProblem, TraceContext};
pub use model::{AttrValue, Finalized, RequestTiming, ScopeGpuTime, SpanRecord, StepTiming, TimingSource};

#[cfg(test)]
mod tests;

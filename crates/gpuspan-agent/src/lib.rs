//! `gpuspan-agent`: the gpuspan agent that runs inside an inference worker (built into
//! `libgpuspan.so` by the root package, whose `src/lib.rs` holds the `extern "C"` symbols).
//!
//! Entry points ([`entry`]; with the exit handler in [`exit_handler`], the SIGTERM handler
//! and the signal masks of the agent's threads in [`signals`], the CUPTI callbacks
//! in [`cupti_callbacks`], the buffer decode in [`collector`] and the hot-path FFI shims in
//! [`hooks`], the only `unsafe` of this
//! crate): the `LD_PRELOAD` constructor, `InitializeInjection` (the CUDA driver
//! calls it for `CUDA_INJECTION64_PATH`) and `InitializeInjectionNvtx2` (every NVTX instance
//! calls it for `NVTX_INJECTION64_PATH`). All three end in [`lifecycle::activate_for`]
//! (through [`entry::activate`]), which is idempotent; [`lifecycle`] holds the agent's life
//! (activation, fork, finishing) as an explicit state machine.
//!
//! Data flow (DESIGN.md "Data flow"):
//! - app threads: NVTX push/pop → [`hooks`] → a fixed-size scope event and, in coarse
//!   mode, one pooled CUDA event per stream of the scope with a fixed-size mark
//!   ([`coarse`]), both in one entry on the thread's own bounded ring ([`thread_ring`];
//!   full ⇒ drop + count), and while CUPTI collects (fine mode, fine windows) a CUPTI
//!   external-correlation push/pop of the scope id;
//! - CUPTI threads: buffer requested / completed → [`cupti_callbacks`] → the bounded buffer
//!   pool and a bounded queue of completed buffers; no lock, no allocation;
//! - the collector thread ([`collector_thread`], state in [`collector`]): drains the rings
//!   and queues, decodes each buffer once,
//!   keeps scopes and records, and at exit (or [`flush_capture`]) joins them into a Kineto
//!   trace written to `GPUSPAN_OUT/capture-<pid>.json.gz` ([`capture`]); as steps and requests
//!   complete it assembles their span tree (`gpuspan_core::spans`) and hands spans and
//!   timings to [`telemetry`]: the OTLP exporter thread and the metrics (Prometheus
//!   endpoint, NVML gauges from [`nvml`]).
//! - the control thread ([`control`]): a Unix socket per process for `gpuspan status PID`,
//!   serving only the agent's uid and root.
//!
//! Inside someone else's process: every `extern "C"` entry is wrapped in `catch_unwind`,
//! problems are reported once on stderr ([`log`]) and the agent goes inactive; it never
//! exits, aborts or blocks the app.
//!
//! Who depends on it: the root crate `gpuspan` (Rust API facade), and every process it is
//! injected into.

// Modules from the bottom up: each imports only modules listed before it (no import
// cycle; `tests/module_layers.rs` checks it).
pub mod boundary_clock;
pub mod word_ring;
pub mod log;
pub mod signals;
pub mod nvml;
pub mod coarse;
pub mod config;
pub mod nvtx_domains;
pub mod bounded;
pub mod scope_names;
pub mod thread_ring;
pub mod shared;
pub mod unload;
pub mod telemetry;
pub mod hooks;
pub mod cupti_callbacks;
pub mod collector;
pub mod capture;
pub mod segment;
pub mod window;
pub mod agent;
pub mod control;
pub mod collector_thread;
pub mod lifecycle;
pub mod exit_handler;
pub mod entry;

pub use lifecycle::{flush_capture, AgentStatus};

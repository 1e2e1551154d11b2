//! `gpuspan-cupti`: the safe layer over CUPTI, and the NVTX injection types.
//!
//! This is one of the three places in gpuspan where `unsafe` lives (with `gpuspan-simgpu` and
//! the agent's `extern "C"` shims). Everything above it (the agent's collector, core's join)
//! sees only owned [`gpuspan_core::activity::ActivityRecord`]s.
//!
//! Layers, after cudarc's split:
//! - `sys`: cudarc's generated types (`cudarc::cupti::sys`, `cudarc::nvtx::sys`): record
//!   layouts and callback signatures. We use the *types* only.
//! - [`symbols`] (the "result" layer): our own symbol table, loaded with libloading. We do not
//!   call cudarc's function wrappers, because (CUPTI-NOTES "Traps for the agent") they panic
//!   when the library or a symbol is missing, they return `CUptiResult` as a Rust enum (an
//!   undocumented code from a newer CUPTI would be an invalid enum value), and cudarc's
//!   `Debug` for `CuptiError` calls `cuptiGetResultString(..).unwrap()`, which aborts the
//!   host process on CUPTI 13 without a driver. Here every call returns a raw `u32` code and a
//!   missing symbol is an [`error::CuptiError`], never a panic.
//! - safe: [`activity::ActivityApi`] (subscribe, enable, flush, external correlation),
//!   [`buffers::BufferPool`] (bounded activity buffers handed to CUPTI), [`decode`] (a
//!   completed buffer → owned records, once), reading only the fields that exist in the
//!   loaded CUPTI's records ([`layouts`]: which struct each CUPTI 12.0 … 13.5 writes).
//!
//! [`tsc`] and [`cpu_hint`] are the two CPU instructions of the agent's hot path (the
//! time-stamp counter, a prefetch), here because this crate is where `unsafe`
//! lives.
//!
//! [`nvtx`] holds the NVTX v3 injection ABI (export table, module slots) that the agent's
//! `InitializeInjectionNvtx2` uses.
//!
//! Who depends on it: `gpuspan-agent` (live collection) and the benches (decode throughput).

pub mod activity;
pub mod buffers;
pub mod cpu_hint;
pub mod decode;
pub mod error;
pub mod events;
pub mod foreign_client;
pub mod layouts;
pub mod multi_subscriber;
pub mod symbols;
pub mod tsc;
pub mod nvtx;

pub use error::CuptiError;

//! `gpuspan-core`: the data model and the pure logic of gpuspan.
//!
//! Everything here is plain data in, plain data out: safe Rust only (`forbid`), no FFI, no files, no threads.
//! The agent (`gpuspan-agent`) feeds it decoded CUPTI activity records ([`activity`]) and
//! scope events ([`scope`]); the exporters (`gpuspan-export`) read and write the
//! Kineto-schema [`trace::Trace`] it produces; the CLI runs [`stats`] on traces from either
//! source. Keeping this crate free of I/O is what lets the same join / classify / stats code
//! run on a live agent, on a capture file and on a third-party torch.profiler trace.
//!
//! Modules, one job each:
//! - [`activity`]: owned, decoded CUPTI activity records (kernel, memcpy, memset, API,
//!   external correlation, overhead), times in CUPTI ns.
//! - [`scope`]: scope events (request / step / stage ranges from NVTX or the API) and the
//!   parsing of their names.
//! - [`classify`]: stage classification rules (scope first, then kernel-name rules), cached
//!   per distinct kernel name.
//! - [`join`]: kernels ↔ scopes through external correlation ids, producing a [`trace::Trace`].
//! - [`trace`]: the Kineto-schema trace model (µs floats, as Kineto writes them).
//! - [`spans`]: the OpenTelemetry span tree (request → step → stage → kernel) and the step /
//!   request timings the metrics read, assembled incrementally as records arrive.
//! - [`stats`]: kernel / stage / step breakdown of a trace and the HTA-style analyses
//!   (kernel types, temporal and idle breakdown, launch delay, memcpy) (`gpuspan stats`).
//! - [`control`]: the control-socket protocol between a running agent and the CLI
//!   (messages, limits, socket path rules; the sockets themselves live in the agent and
//!   the CLI).
//! - [`diff`]: what got slower from one trace to another, per stage, kernel and step, with
//!   a noise test against the baseline's step-to-step spread (`gpuspan diff`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod activity;
pub mod cardinality;
pub mod classify;
pub mod control;
pub mod diff;
pub mod interval;
pub mod id_hash;
pub mod join;
pub mod scope;
pub mod spans;
pub mod stats;
pub mod step_detect;
pub mod trace;
pub mod triggers;

#[cfg(test)]
mod test_records;

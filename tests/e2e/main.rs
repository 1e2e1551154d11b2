//! End-to-end tests: the agent injected into real processes on the simulated H100, and the
//! `gpuspan` CLI on the real GPU traces of `../shared/fixtures/traces`.
//!
//! They start the workspace's built artifacts (`gpuspan`, `gpuspan-replay`,
//! `libgpuspan.so`, `libgpuspan_simgpu.so`); `scripts/test.sh` builds them first.

mod auto_python;
mod capture;
mod classify;
mod cli_errors;
mod coarse;
mod control;
mod demo;
mod deploy;
mod devices;
mod diff;
mod exit;
mod faults;
mod fork;
mod hot_path;
mod inject;
mod nvtx;
mod interop;
mod lenient;
mod logs;
mod otlp;
mod otlp_outage;
mod prometheus;
mod python_api;
mod ranks;
mod replay;
mod resource;
mod steps_auto;
mod streaming;
mod triggers;
mod util;
mod waterfall;

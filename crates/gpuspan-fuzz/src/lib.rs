//! Fuzz harnesses for every parser of input gpuspan does not control (issue 13, item 4).
//! Each takes arbitrary bytes and must return without panicking, hanging or touching memory
//! it does not own; what it parses may of course be rejected. They are shared by the
//! cargo-fuzz targets in `fuzz/` (nightly, libFuzzer, `scripts/fuzz.sh`) and by this crate's
//! `tests/regressions.rs`, which replays the seed corpora and every input a fuzzer ever
//! crashed on (`fuzz/regressions/<target>/`) on stable Rust in the test command.
//!
//! Who depends on it: `fuzz/` and the test command only.
#![forbid(unsafe_code)]

use std::path::Path;

/// A CUPTI activity buffer through the agent's decoder, walked by the simulated
/// `cuptiActivityGetNextRecord`; the first byte picks the CUPTI release (12.0 … 13.5) whose
/// record layouts apply ([`gpuspan_simgpu::fuzz_support`]).
pub fn activity_buffer(data: &[u8]) {
    let _ = gpuspan_simgpu::fuzz_support::decode_activity_bytes(data);
}

/// A Kineto / torch.profiler trace (plain JSON or gzip), read strictly and leniently.
pub fn kineto_reader(data: &[u8]) {
    use gpuspan_export::kineto::{read_trace_bytes, ReadOptions};
    let path = Path::new("fuzz.json");
    let _ = read_trace_bytes(data, path, ReadOptions { strict: true, ..ReadOptions::default() });
    if let Ok((trace, _)) = read_trace_bytes(data, path, ReadOptions { strict: false, ..ReadOptions::default() }) {
        // What `gpuspan stats` does next with a trace that read.
        let _ = gpuspan_core::stats::compute(&trace, "fuzz.json");
    }
}

/// One control-socket line, as the agent's server (a request) and the CLI (a reply) parse it.
pub fn control_message(data: &[u8]) {
    let _ = gpuspan_core::control::parse_request(data);
    let _ = gpuspan_core::control::parse_reply(data);
}

/// A request's trace context: the bytes as `traceparent\ntracestate\nbaggage`, through the
/// span assembler's parsing (`TraceContext::for_request`) and W3C baggage parsing.
pub fn trace_context(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (tp, ts, bg) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let attrs = vec![("tracestate".to_string(), ts.to_string()), ("baggage".to_string(), bg.to_string())];
    let _ = gpuspan_core::spans::TraceContext::for_request(tp, &attrs, 7, 1);
    let _ = gpuspan_core::spans::context::parse_baggage(bg);
    let _ = gpuspan_core::scope::ScopeKind::parse(&text);
}

/// A `GPUSPAN_RULES` file: stage rules and capture triggers.
pub fn rules_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = gpuspan_core::classify::StageRules::with_overrides(&text);
    let _ = gpuspan_core::triggers::Triggers::parse(&text);
}

/// An `nvtxEventAttributes_t` from arbitrary bytes, read as the NVTX hooks read it, and its
/// message parsed as a scope name.
pub fn nvtx_event_attributes(data: &[u8]) {
    if let Some(text) = gpuspan_cupti::nvtx::message_of_fuzz_bytes(data) {
        let _ = gpuspan_core::scope::ScopeKind::parse(&text);
    }
}

/// A fuzz target: its name (the cargo-fuzz target and corpus directory) and harness.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 6] = [
    ("activity_buffer", activity_buffer),
    ("kineto_reader", kineto_reader),
    ("control_message", control_message),
    ("trace_context", trace_context),
    ("rules_toml", rules_toml),
    ("nvtx_event_attributes", nvtx_event_attributes),
];

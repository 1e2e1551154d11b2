//! Writing the capture: join the collected records with the scopes and write
//! `GPUSPAN_OUT/capture-<pid>.json.gz` (Kineto schema, DESIGN.md "Spans, metrics, files").

use crate::collector::Collector;
use crate::state::Agent;
use gpuspan_core::activity::ActivityRecord;
use gpuspan_core::classify::Classifier;
use gpuspan_core::join::{build_trace, JoinOptions, ScopeTable};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// File name of the capture inside the output directory.
pub const CAPTURE_FILE_PREFIX: &str = "capture-";

/// The capture file name of this process: `capture-<pid>.json.gz`, so sibling workers
/// under one `gpuspan run` (one per GPU, a launcher's ranks) each write their own.
pub fn capture_file_name() -> String {
    format!("{CAPTURE_FILE_PREFIX}{}.json.gz", std::process::id())
}

/// Joins and writes. The loss counters are written as `gpuspan.*` trace-level metadata on a
/// `gpuspan.summary` event (cat `gpuspan`, zero duration, in its args), so a reader can tell a complete capture
/// from a lossy one.
pub fn write(a: &Agent, c: &mut Collector) -> Result<PathBuf, String> {
    let sp = &c.assembler.stats;
    let extra = vec![
        ("spans".to_string(), sp.spans),
        ("span_requests".to_string(), sp.requests),
        ("span_steps".to_string(), sp.steps),
        ("kernel_spans_omitted".to_string(), sp.kernel_spans_omitted),
        ("span_units_timed_out".to_string(), sp.units_timed_out),
        ("span_gpu_late".to_string(), sp.gpu_late),
    ];
    let seed = c.assembler.options().seed;
    write_parts(a, &c.records, &c.scopes, &mut c.classifier, seed, &a.config.out_dir, &extra)
}

/// Joins `records` with `scopes` and writes `dir/capture-<pid>.json.gz`, with the agent's loss
/// counters and `extra` (`gpuspan.<key>` = value) in the summary event. Used for the
/// exit capture and for each fine window's.
pub fn write_parts(
    a: &Agent,
    records: &[ActivityRecord],
    scopes: &ScopeTable,
    classifier: &mut Classifier,
    seed: u64,
    dir: &Path,
    extra: &[(String, u64)],
) -> Result<PathBuf, String> {
    let first_ns = records
        .iter()
        .filter_map(|r| match r {
            ActivityRecord::Kernel(k) if k.start_ns > 0 => Some(k.start_ns),
            ActivityRecord::Api(x) => Some(x.start_ns),
            ActivityRecord::Memcpy(m) => Some(m.start_ns),
            ActivityRecord::Memset(m) => Some(m.start_ns),
            _ => None,
        })
        .chain(scopes.iter_sorted().iter().map(|s| s.begin_ns))
        .min()
        .unwrap_or(0);
    // Whole milliseconds strictly before the first event, so relative µs timestamps stay
    // short and exact and none is 0 (Chrome's trace engine drops ts = 0 as out of bounds).
    let before = first_ns.saturating_sub(1);
    let base_time_ns = before - before % 1_000_000;
    let opts = JoinOptions {
        base_time_ns,
        process_id: std::process::id(),
        include_api: true,
        trace_seed: Some(seed),
    };
    let (mut trace, st) = build_trace(records, scopes, classifier, &opts);
    let counters = &a.counters;
    let mut summary = gpuspan_core::trace::TraceEvent {
        cat: Some(gpuspan_core::trace::Category::Other("gpuspan".into())),
        name: "gpuspan.summary".into(),
        pid: std::process::id() as i64,
        tid: 0,
        ts_us: 0.0,
        dur_us: 0.0,
        ..Default::default()
    };
    let mut put = |k: &str, v: u64| {
        summary.extra_args.insert(format!("gpuspan.{k}"), serde_json::Value::from(v));
    };
    put("gpu_events", st.gpu_events);
    put("gpu_events_attributed", st.attributed);
    put("kernels_incomplete", st.incomplete);
    put("records_decoded", counters.records_decoded.load(Ordering::Relaxed));
    put("records_dropped_cupti", counters.cupti_records_dropped.load(Ordering::Relaxed));
    put("records_dropped_limit", counters.records_over_limit.load(Ordering::Relaxed));
    put("scope_events_dropped", counters.scope_events_dropped.load(Ordering::Relaxed));
    put("buffers_dropped", counters.buffers_dropped.load(Ordering::Relaxed));
    put("buffers_declined", a.pool.declined());
    put("partial", counters.terminated_by_signal.load(Ordering::Relaxed));
    put("nvtx_ranges_too_deep", counters.nvtx_ranges_too_deep.load(Ordering::Relaxed));
    put("buffers_foreign", counters.foreign_buffers.load(Ordering::Relaxed));
    put("buffers_foreign_bytes_cut", counters.foreign_bytes_cut.load(Ordering::Relaxed));
    put("cupti_version", a.cupti_version() as u64);
    for (k, v) in extra {
        put(k, *v);
    }
    if let Some(p) = &a.telemetry.spans {
        let oc = p.counters();
        put("otlp_spans_submitted", oc.submitted.load(Ordering::Relaxed));
        put("otlp_spans_exported", oc.exported.load(Ordering::Relaxed));
        put("otlp_spans_dropped", oc.dropped());
        put("otlp_backlog_peak_bytes", oc.backlog_peak_bytes.load(Ordering::Relaxed));
        put("otlp_backlog_bound_bytes", p.settings().backlog_bytes as u64);
    }
    // At the first event's time: Kineto readers reject ts = 0 placeholders.
    summary.ts_us = trace.events.first().map(|e| e.ts_us).unwrap_or(0.0);
    trace.events.insert(0, summary);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(capture_file_name());
    gpuspan_export::write_trace(&trace, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    crate::log::info(&format!("wrote {} ({} GPU events)", path.display(), st.gpu_events));
    Ok(path)
}

//! Writing the capture: join the collected records with the scopes and write
//! `GPUSPAN_OUT/capture-<pid>.json.gz` (Kineto schema, DESIGN.md "Spans, metrics, files").

use crate::collector::Collector;
use crate::shared::Shared;
use crate::telemetry::Telemetry;
use gpuspan_core::activity::ActivityRecord;
use gpuspan_core::classify::Classifier;
use gpuspan_core::join::{JoinOptions, JoinedEvents, ScopeTable};
use gpuspan_core::spans::corr_runs::CorrelationRuns;
use gpuspan_core::trace::EventSource;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// File name of the capture inside the output directory.
pub const CAPTURE_FILE_PREFIX: &str = "capture-";

/// The capture file name of this process: `capture-<pid>.json.gz`, so sibling workers
/// under one `gpuspan run` (one per GPU, a launcher's ranks) each write their own.
pub fn capture_file_name() -> String {
    format!("{CAPTURE_FILE_PREFIX}{}.json.gz", std::process::id())
}

/// The name of this process's rolling capture segment `seq` (from 1):
/// `capture-<pid>-<seq>.json.gz` (`GPUSPAN_CAPTURE_SEGMENT_STEPS`). Each is a Kineto trace
/// of whole requests; `gpuspan stats DIR` reads them all as one trace.
pub fn segment_file_name(seq: u64) -> String {
    format!("{CAPTURE_FILE_PREFIX}{}-{seq}.json.gz", std::process::id())
}

/// Removes this process's segment `seq - keep` (and any older one left), keeping the
/// newest `keep`.
pub fn remove_old_segments(dir: &Path, seq: u64, keep: usize) {
    let mut old = seq.saturating_sub(keep as u64);
    while old >= 1 {
        let p = dir.join(segment_file_name(old));
        if std::fs::remove_file(&p).is_err() {
            break; // older ones went before
        }
        old -= 1;
    }
}

/// Joins and writes, stopping at `deadline` (the exit budget; see [`write_parts`]). The loss
/// counters are written as `gpuspan.*` trace-level metadata on a `gpuspan.summary` event
/// (cat `gpuspan`, zero duration, in its args; the file's last event), so a reader can tell
/// a complete capture from a lossy one.
pub fn write(a: &Shared, telemetry: &Telemetry, c: &mut Collector, deadline: Option<Instant>) -> Result<PathBuf, String> {
    let sp = &c.assembler.stats;
    let extra = vec![
        ("spans".to_string(), sp.spans),
        ("span_requests".to_string(), sp.requests),
        ("span_steps".to_string(), sp.steps),
        ("kernel_spans_omitted".to_string(), sp.kernel_spans_omitted),
        ("span_units_timed_out".to_string(), sp.units_timed_out),
        ("span_gpu_late".to_string(), sp.gpu_late),
        ("span_gpu_dropped".to_string(), sp.gpu_dropped),
        ("span_captured_scopes".to_string(), sp.captured_scopes),
    ];
    let seed = c.assembler.options().seed;
    // With rolling segments the rest goes into the next segment, not a capture of its own.
    let name = match a.config.capture_segment_steps {
        Some(_) => {
            c.segment_seq += 1;
            segment_file_name(c.segment_seq)
        }
        None => capture_file_name(),
    };
    let path = write_parts(a, telemetry, &c.records, &c.correlations, &c.scopes, &mut c.classifier, seed, &a.config.out_dir, &name, &extra, deadline)?;
    if a.config.capture_segment_steps.is_some() {
        remove_old_segments(&a.config.out_dir, c.segment_seq, a.config.capture_keep);
    }
    Ok(path)
}

/// The NVML sampler's NVLink rates since `base_time_ns` as the capture's
/// `nvlink_bandwidth_gbps` counter track, one per device (`pid` = the device's CUDA ordinal,
/// with its streams): each sample sits at the start of the interval it was measured over and
/// holds until the next, so the track reads as the bandwidth at each moment (Nsight Systems'
/// NVLink rows show the same). Value key `GB/s`.
fn nvlink_counters(base_time_ns: u64) -> Vec<gpuspan_core::trace::CounterEvent> {
    crate::nvml::nvlink_readings((base_time_ns / 1000) as i64)
        .into_iter()
        .filter_map(|r| {
            Some(gpuspan_core::trace::CounterEvent {
                name: "nvlink_bandwidth_gbps".into(),
                pid: i64::from(crate::nvml::cuda_ordinal(r.index)?),
                ts_us: (r.start_us.saturating_mul(1000) - base_time_ns as i64) as f64 / 1000.0,
                values: vec![("GB/s".into(), r.gbps)],
            })
        })
        .collect()
}

/// Joins `records` with `scopes` and writes `dir/<file_name>`, with the agent's loss
/// counters and `extra` (`gpuspan.<key>` = value) in the summary event. Used for the
/// exit capture (`capture-<pid>.json.gz`), each fine window's, and each rolling segment.
///
/// The join streams into the write ([`JoinedEvents`]): each event is built as it is
/// serialised and dropped once written, so writing holds about 16 bytes per event beyond the
/// records themselves.
///
/// With a `deadline` (the exit budget, `GPUSPAN_EXIT_BUDGET`), the file is written at gzip
/// level 1, the scopes' events go first (then the GPU activity, then the API calls), and
/// events stop at the deadline (`gpuspan.events_cut_exit_budget`): the capture is still a
/// valid trace of every scope and of the GPU activity up to the cut (GPU events are in `ts`
/// order, so what is cut is the end of the run), and its summary says `gpuspan.partial` = 1.
#[allow(clippy::too_many_arguments)]
pub fn write_parts(
    a: &Shared,
    telemetry: &Telemetry,
    records: &[ActivityRecord],
    correlations: &CorrelationRuns,
    scopes: &ScopeTable,
    classifier: &mut Classifier,
    seed: u64,
    dir: &Path,
    file_name: &str,
    extra: &[(String, u64)],
    deadline: Option<Instant>,
) -> Result<PathBuf, String> {
    // First: a directory that cannot be made fails the write before the join's work (a fifth
    // of fine mode's CPU at exit, issue 14 item 1) is spent on it.
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let opts = JoinOptions {
        base_time_ns: 0, // set below, from the first event the plan found
        process_id: std::process::id(),
        include_api: true,
        trace_seed: Some(seed),
        env_traceparent: crate::config::env_traceparent(),
    };
    // Built one event at a time as the writer asks: the capture's events are never all in
    // memory. With a deadline, the scopes go first, then the GPU activity, then the API calls:
    // if the deadline cuts the write, what goes is the API calls and then the tail of the GPU
    // activity, and every step and request keeps its range.
    let mut joined = JoinedEvents::with_correlations(records, correlations, scopes, classifier, &opts, deadline.is_some());
    // Whole milliseconds strictly before the first event, so relative µs timestamps stay
    // short and exact and none is 0 (Chrome's trace engine drops ts = 0 as out of bounds).
    // The plan finds the first event in its pass over the records (a pass of its own here
    // was 3.6 % of the exit thread, issue 14 item 1).
    let before = joined.first_ns().unwrap_or(0).saturating_sub(1);
    let base_time_ns = before - before % 1_000_000;
    joined.rebase(base_time_ns);
    let st = joined.stats();
    let mut header = joined.header();
    header.distributed_info = a.config.distributed.map(|d| d.kineto_info());
    header.counters = nvlink_counters(base_time_ns);
    let first_ts_us = (!joined.is_empty()).then(|| joined.shape(0).ts_us);
    let counters = &a.counters;
    let mut summary = gpuspan_core::trace::TraceEvent {
        cat: Some(gpuspan_core::trace::Category::Other("gpuspan".into())),
        name: "gpuspan.summary".into(),
        pid: std::process::id() as i64,
        tid: 0,
        // At the first event's time: Kineto readers reject ts = 0 placeholders.
        ts_us: first_ts_us.unwrap_or(0.0),
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
    put("buffers_unread_exit_budget", counters.buffers_unread_at_exit.load(Ordering::Relaxed));
    put("nvtx_ranges_too_deep", counters.nvtx_ranges_too_deep.load(Ordering::Relaxed));
    put("buffers_foreign", counters.foreign_buffers.load(Ordering::Relaxed));
    put("buffers_foreign_bytes_cut", counters.foreign_bytes_cut.load(Ordering::Relaxed));
    {
        use gpuspan_cupti::foreign_client::FOREIGN;
        put("foreign_client_known", FOREIGN.is_known() as u64);
        put("foreign_buffers_handed_back", FOREIGN.buffers_handed_back.load(Ordering::Relaxed));
        put("foreign_buffers_forwarded", FOREIGN.buffers_forwarded.load(Ordering::Relaxed));
        put("foreign_records_forwarded", FOREIGN.records_forwarded.load(Ordering::Relaxed));
        put("foreign_records_not_forwarded", FOREIGN.records_not_forwarded.load(Ordering::Relaxed));
    }
    put("unload_drains", counters.unload_drains.load(Ordering::Relaxed));
    put("unload_drain_timeouts", counters.unload_drain_timeouts.load(Ordering::Relaxed));
    put("cupti_version", a.cupti_version() as u64);
    put("nvlink_readings_dropped", crate::nvml::nvlink_readings_dropped());
    put("cupti_multi_subscriber_subscriptions", counters.multi_subscriber_subscriptions.load(Ordering::Relaxed));
    for (k, v) in extra {
        put(k, *v);
    }
    if let Some(p) = &telemetry.spans {
        let oc = p.counters();
        put("otlp_spans_submitted", oc.submitted.load(Ordering::Relaxed));
        put("otlp_spans_exported", oc.exported.load(Ordering::Relaxed));
        put("otlp_spans_dropped", oc.dropped());
        put("otlp_backlog_peak_bytes", oc.backlog_peak_bytes.load(Ordering::Relaxed));
        put("otlp_backlog_bound_bytes", p.settings().backlog_bytes as u64);
    }
    // Partial: SIGTERM ended collection, or the exit budget left buffers unread or events
    // unwritten (filled in once the writer knows).
    let signalled = counters.terminated_by_signal.load(Ordering::Relaxed) > 0;
    let unread = counters.buffers_unread_at_exit.load(Ordering::Relaxed) > 0
        || counters.cupti_flush_timed_out.load(Ordering::Relaxed) > 0;
    put("cupti_flush_timed_out", counters.cupti_flush_timed_out.load(Ordering::Relaxed));
    let fill = move |ev: &mut gpuspan_core::trace::TraceEvent, p: &gpuspan_export::kineto::WriteProgress| {
        let partial = signalled || unread || p.events_cut > 0;
        ev.extra_args.insert("gpuspan.partial".into(), serde_json::Value::from(u64::from(partial)));
        ev.extra_args.insert("gpuspan.events_cut_exit_budget".into(), serde_json::Value::from(p.events_cut as u64));
    };
    let opts = gpuspan_export::kineto::WriteOptions {
        deadline,
        // At exit (a deadline) at most level 1: the budget goes to writing every event.
        gzip_level: Some(deadline.map_or(a.config.capture_gzip_level, |_| a.config.capture_gzip_level.min(1))),
        // At exit (a deadline) the process is ending and wall time counts: deflate on the
        // other CPUs it may use. Windows and segments are written while the worker runs: on
        // the collector's thread alone, so the agent never competes with the worker for cores.
        gzip_threads: if deadline.is_some() { None } else { Some(0) },
        trailer: Some(gpuspan_export::kineto::Trailer { event: summary, fill: &fill }),
    };
    let path = dir.join(file_name);
    let written = gpuspan_export::kineto::write_events_with(&header, &mut joined, &path, &opts)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if written.events_cut > 0 {
        crate::log::warn(&format!(
            "the exit budget (GPUSPAN_EXIT_BUDGET) ran out while writing {}: {} of {} events written, the rest cut (marked partial)",
            path.display(),
            written.events_written,
            written.events_written + written.events_cut
        ));
    } else {
        crate::log::info(&format!("wrote {} ({} GPU events)", path.display(), st.gpu_events));
    }
    Ok(path)
}

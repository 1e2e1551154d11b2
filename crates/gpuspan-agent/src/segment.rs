//! Rolling capture segments (issue 13, item 2): a long fine-mode run writes
//! `capture-<pid>-<seq>.json.gz` every `GPUSPAN_CAPTURE_SEGMENT_STEPS` finished steps, each a
//! valid Kineto trace of whole requests, keeps the newest `GPUSPAN_CAPTURE_KEEP`, and releases
//! the records and scopes it wrote, so memory does not grow with the run.
//!
//! Where a segment ends: at the begin of the earliest root scope (a request, or a scope
//! outside any) that is still open or whose request the span assembler has not finalized
//! yet (its records may still be arriving); with none, everything decoded so far. A
//! segment therefore holds whole requests, and a request longer than N steps goes whole into
//! one segment. Records are cut by their launch: an API record by its CPU start; a kernel,
//! memcpy, memset or external-correlation record by the CPU start of the API call with its
//! correlation id (a step's kernels may run on the GPU after the next step began on the
//! CPU), or by its own start when that call's record is not there. Correlation ids are
//! per-process `u32`s: a segment of 2³² launches would alias, far beyond any segment.
//!
//! [`take`] runs under the collector lock and only moves vectors; the join and the gzip
//! write happen on a `gpuspan-segment` thread of their own ([`SegmentWriter`]), so the
//! collector keeps draining CUPTI's buffers meanwhile (on the collector thread, a debug
//! build's multi-second write let the buffer pool fill: 352 MB peak for 50 stdit requests,
//! against 255–316 MB with the writer thread). One segment is written at a time; the next is
//! taken once the writer is idle. The write builds each event as it serialises it
//! (`gpuspan_core::join::JoinedEvents`), and [`take`] moves the segment's records out in
//! place into a vector of their exact size: the agent's share of a worker's peak RSS over 50
//! stdit requests in 10-step segments went from 244 MB to 93 MB (release build). At exit, [`join_writer`] waits (within the exit budget) for the one in flight.

use crate::collector::Collector;
use crate::shared::Shared;
use crate::telemetry::Telemetry;
use gpuspan_core::activity::ActivityRecord;
use gpuspan_core::classify::Classifier;
use gpuspan_core::join::ScopeTable;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one segment holds, taken out of the collector.
#[derive(Debug)]
pub struct Segment {
    /// Its number (from 1): `capture-<pid>-<seq>.json.gz`.
    pub seq: u64,
    /// Its records, in arrival order.
    pub records: Vec<ActivityRecord>,
    /// Its scopes: every scope that began before the cut (all ended).
    pub scopes: ScopeTable,
    /// Steps the span assembler finished since the previous segment.
    pub steps: u64,
}

/// The CPU time (CUPTI ns) a segment may extend to: the begin of the earliest root scope
/// still in flight, `u64::MAX` when there is none.
fn cut_ns(c: &Collector) -> u64 {
    c.scopes
        .iter_sorted()
        .iter()
        .filter(|s| s.parent == 0)
        .filter(|s| {
            s.end_ns.is_none()
                || match s.kind {
                    gpuspan_core::scope::ScopeKind::Request { .. } => c.assembler.is_open_request(s.id),
                    _ => false,
                }
        })
        .map(|s| s.begin_ns)
        .min()
        .unwrap_or(u64::MAX)
}

/// Counts `finished_steps` toward the next segment and, once there are
/// `GPUSPAN_CAPTURE_SEGMENT_STEPS` of them, something can be cut and `writer_idle`, moves the
/// segment's records and scopes out of `c`. `None`: segments are off, not due, the writer is
/// busy, or nothing is whole yet.
pub fn take(c: &mut Collector, a: &Shared, finished_steps: usize, writer_idle: bool) -> Option<Segment> {
    let n = a.config.capture_segment_steps?;
    if a.config.mode != crate::config::Mode::Fine {
        return None;
    }
    c.segment_steps += finished_steps as u64;
    if c.segment_steps < n.max(1) || !writer_idle {
        return None;
    }
    let cut = cut_ns(c);
    // Launch time of every API call whose record is here, by correlation id.
    let launch: HashMap<u32, u64> = c
        .records
        .iter()
        .filter_map(|r| match r {
            ActivityRecord::Api(x) => Some((x.correlation_id, x.start_ns)),
            _ => None,
        })
        .collect();
    // Correlation ids grow with each call: an external-correlation record whose call's
    // record is not here goes with the calls cut before it.
    let last_cut_call = launch.iter().filter(|(_, &t)| t < cut).map(|(&id, _)| id).max().unwrap_or(0);
    let in_segment = |r: &ActivityRecord| -> bool {
        let own = match r {
            ActivityRecord::Api(x) => return x.start_ns < cut,
            ActivityRecord::Kernel(k) => k.start_ns,
            ActivityRecord::Memcpy(m) => m.start_ns,
            ActivityRecord::Memset(m) => m.start_ns,
            ActivityRecord::ExternalCorrelation(x) => {
                return launch.get(&x.correlation_id).map_or(x.correlation_id <= last_cut_call, |&t| t < cut)
            }
            ActivityRecord::Overhead(o) => return o.start_ns < cut,
        };
        match launch.get(&r.correlation_id()) {
            Some(&t) => t < cut,
            None => own < cut,
        }
    };
    // Moved out in place (what stays keeps its buffer), into a vector of exactly the size
    // needed: a partition into two growing vectors held three copies' worth at its peak.
    let n = c.records.iter().filter(|r| in_segment(r)).count();
    let mut taken = Vec::with_capacity(n);
    taken.extend(c.records.extract_if(.., |r| in_segment(r)));
    c.records.shrink_to(c.records.len().max(1 << 16));
    let scopes = c.scopes.subset(|s| s.begin_ns < cut && s.end_ns.is_some());
    if taken.is_empty() && scopes.is_empty() {
        return None;
    }
    // What was written is released: the scopes that ended before the cut (their requests
    // are finalized) go from the table.
    c.scopes.retain(|s| !(s.begin_ns < cut && s.end_ns.is_some()));
    c.segment_seq += 1;
    let steps = std::mem::take(&mut c.segment_steps);
    Some(Segment { seq: c.segment_seq, records: taken, scopes, steps })
}

/// Writes `seg` as `GPUSPAN_OUT/capture-<pid>-<seq>.json.gz` and removes the segments older
/// than the newest `GPUSPAN_CAPTURE_KEEP`. `classifier` is the collector thread's own copy
/// (the collector's stays with it).
pub fn write(a: &Shared, telemetry: &Telemetry, seg: &Segment, classifier: &mut Classifier, seed: u64) -> Result<PathBuf, String> {
    let name = crate::capture::segment_file_name(seg.seq);
    let extra = vec![("segment".to_string(), seg.seq), ("segment_steps".to_string(), seg.steps)];
    let path = crate::capture::write_parts(a, telemetry, &seg.records, &seg.scopes, classifier, seed, &a.config.out_dir, &name, &extra, None)?;
    crate::capture::remove_old_segments(&a.config.out_dir, seg.seq, a.config.capture_keep);
    Ok(path)
}

static WRITER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// The `gpuspan-segment` thread's end of the collector: one segment in flight at a time.
pub struct SegmentWriter {
    tx: SyncSender<Segment>,
    busy: Arc<AtomicBool>,
}

impl SegmentWriter {
    /// Starts the writer thread (it inherits the collector thread's blocked signals), with
    /// its own copy of the stage classifier and the trace-id seed. `None` when the thread
    /// cannot be started (one warning; segments are then not written until exit).
    pub fn start(a: &'static Shared, telemetry: &'static Telemetry, mut classifier: Classifier, seed: u64) -> Option<SegmentWriter> {
        let (tx, rx) = sync_channel::<Segment>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        let spawned = std::thread::Builder::new().name("gpuspan-segment".into()).spawn(move || {
            while let Ok(seg) = rx.recv() {
                match write(a, telemetry, &seg, &mut classifier, seed) {
                    Ok(p) => crate::log::info(&format!("capture segment {} written: {} ({} steps)", seg.seq, p.display(), seg.steps)),
                    Err(e) => crate::log::warn(&format!("capture segment {}: {e}", seg.seq)),
                }
                drop(seg);
                done.store(false, Ordering::Release);
            }
        });
        match spawned {
            Ok(h) => {
                if let Ok(mut g) = WRITER.lock() {
                    *g = Some(h);
                }
                Some(SegmentWriter { tx, busy })
            }
            Err(e) => {
                crate::log::warn(&format!("cannot start the capture segment writer: {e}; segments wait for exit"));
                None
            }
        }
    }

    /// No segment is being written.
    pub fn idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    /// Hands `seg` to the writer (call only when [`SegmentWriter::idle`]).
    pub fn send(&self, seg: Segment) {
        self.busy.store(true, Ordering::Release);
        if let Err(e) = self.tx.try_send(seg) {
            self.busy.store(false, Ordering::Release);
            crate::log::warn(&format!("capture segment not handed to the writer: {e}"));
        }
    }
}

/// At exit, after the collector thread (which owns the [`SegmentWriter`]) has stopped: waits
/// until `until` for the segment being written. False when it was still writing.
pub fn join_writer(until: Instant) -> bool {
    match WRITER.lock().ok().and_then(|mut g| g.take()) {
        Some(h) => crate::bounded::join_until(h, until),
        None => true,
    }
}

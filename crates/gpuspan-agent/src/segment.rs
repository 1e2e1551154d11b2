//! Rolling capture segments (issue 13, item 2): a long fine-mode run writes
//! `capture-<pid>-<seq>.json.gz` every `GPUSPAN_CAPTURE_SEGMENT_STEPS` finished steps, each a
//! valid Kineto trace of whole requests, keeps the newest `GPUSPAN_CAPTURE_KEEP`, and releases
//! the records and scopes it wrote, so memory does not grow with the run.
//!
//! Where a segment ends: at the begin of the earliest root scope (a request, or a scope
//! outside any) that is still open or whose request the span assembler has not finalized
//! yet (its records may still be arriving); with none, everything decoded so far. So a
//! segment holds whole requests, unless one request holds everything pending (a request
//! longer than N steps: a 50-step wan2.1 request makes about 3 M records): then the segment
//! ends inside it, at the begin of its earliest step still in flight (or the end of its last
//! finished step), and the request's scope is copied into the segment and kept for the
//! next, so each step is in exactly one segment and every segment's kernels keep their
//! request (issue 14, item 6). Records are cut by their launch: an API record by its CPU start; a kernel,
//! memcpy, memset or external-correlation record by the CPU start of the API call with its
//! correlation id (a step's kernels may run on the GPU after the next step began on the
//! CPU), or by its own start when that call's record is not there. Correlation ids are
//! per-process `u32`s: a segment of 2³² launches would alias, far beyond any segment.
//!
//! At exit the rest is the last segment ([`crate::capture::write`]), with the run's summary
//! (span totals, loss counters). When a cut while the worker ran had already taken its last
//! request (over, and finalized), the rest is only what came after: the worker's teardown
//! calls (`cuCtxSynchronize`, `cuMemFree_v2`) and no kernels. It is written all the same,
//! since it holds calls nothing else holds and the only summary of the whole run.
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
use gpuspan_core::join::{ScopeInfo, ScopeTable};
use gpuspan_core::spans::corr_runs::CorrelationRuns;
use gpuspan_core::scope::{ScopeId, ScopeKind};
use gpuspan_core::id_hash::{IdHashMap, IdHashSet};
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
    /// gpuspan's external correlations held when it was cut (a copy of the collector's
    /// runs: its records' launches among them).
    pub correlations: CorrelationRuns,
    /// Its scopes: every scope that began before the cut (all ended, but for the request a
    /// step cut runs through, which is a copy and may still be open).
    pub scopes: ScopeTable,
    /// Steps the span assembler finished since the previous segment.
    pub steps: u64,
}

/// Whether root scope `s` is still in flight: open, or a request the span assembler has not
/// finalized (its records may still be arriving).
fn in_flight(c: &Collector, s: &ScopeInfo) -> bool {
    s.end_ns.is_none() || matches!(s.kind, ScopeKind::Request { .. }) && c.assembler.is_open_request(s.id)
}

/// The CPU time (CUPTI ns) a segment may extend to, `u64::MAX` when nothing is in flight.
///
/// Whole requests when there are any: the begin of the earliest root scope in flight, if a
/// root scope began before it. Otherwise one request holds everything pending (a long
/// video request: a 50-step wan2.1 request makes about 3 M records), and the segment ends
/// inside it, at a step boundary ([`within_request`]), or earlier where another root (a
/// request of another thread) begins.
/// `sorted`: the collector's scopes, `ScopeTable::iter_sorted`.
fn cut_ns(c: &Collector, sorted: &[&ScopeInfo]) -> u64 {
    let roots: Vec<&ScopeInfo> = sorted.iter().copied().filter(|s| s.parent == 0).collect();
    let Some(first) = roots.iter().copied().filter(|s| in_flight(c, s)).min_by_key(|s| (s.begin_ns, s.id)) else {
        return u64::MAX;
    };
    if roots.iter().any(|s| s.begin_ns < first.begin_ns) || !matches!(first.kind, ScopeKind::Request { .. }) {
        return first.begin_ns;
    }
    let others = roots.iter().filter(|s| s.id != first.id && in_flight(c, s)).map(|s| s.begin_ns).min().unwrap_or(u64::MAX);
    within_request(c, sorted, first).min(others)
}

/// Where request `r`'s unfinished part begins: the begin of its earliest step still in
/// flight (open, or its records not all in), else the end of its last finished step (what
/// follows, the VAE say, is still running), else its own begin.
fn within_request(c: &Collector, sorted: &[&ScopeInfo], r: &ScopeInfo) -> u64 {
    let mut open: Option<u64> = None;
    let mut done_end: Option<u64> = None;
    for st in sorted.iter().filter(|s| matches!(s.kind, ScopeKind::Step { .. }) && s.attribution.request == Some(r.id)) {
        match st.end_ns {
            Some(e) if !c.assembler.is_open_unit(st.id) => done_end = Some(done_end.map_or(e, |d| d.max(e))),
            _ => open = Some(open.map_or(st.begin_ns, |o| o.min(st.begin_ns))),
        }
    }
    open.or(done_end).unwrap_or(r.begin_ns)
}

/// Whether scope `s` lies wholly before `cut` and is done with: ended by then, and not a
/// request still being finalized. Such scopes move into the segment; the others that began
/// before the cut (the request a step cut runs through) are copied into it and stay.
fn whole_before(c: &Collector, s: &ScopeInfo, cut: u64) -> bool {
    s.begin_ns < cut
        && s.end_ns.is_some_and(|e| e <= cut)
        && !(matches!(s.kind, ScopeKind::Request { .. }) && c.assembler.is_open_request(s.id))
}

/// Counts `finished_steps` toward the next segment and, once there are
/// `GPUSPAN_CAPTURE_SEGMENT_STEPS` of them (or half of `GPUSPAN_MAX_RECORDS` records are
/// held), something can be cut and `writer_idle`, moves the segment's records and scopes
/// out of `c`. `None`: segments are off, not due, the writer is
/// busy, or nothing is whole yet.
pub fn take(c: &mut Collector, a: &Shared, finished_steps: usize, writer_idle: bool) -> Option<Segment> {
    let n = a.config.capture_segment_steps?;
    if a.config.mode != crate::config::Mode::Fine {
        return None;
    }
    c.segment_steps += finished_steps as u64;
    // Due after N steps, or sooner when half the record limit is held (a long request's
    // steps, or a flood), so the limit drops records only when the writer falls behind.
    let pressed = c.records.len() >= a.config.max_records / 2;
    if (c.segment_steps < n.max(1) && !pressed) || !writer_idle {
        return None;
    }
    // The scopes sorted once: the cut, and which of them lie wholly before it.
    let (cut, whole) = {
        let sorted = c.scopes.iter_sorted();
        let cut = cut_ns(c, &sorted);
        // Nothing began before the cut (a first step still running while half the record
        // limit is held): nothing to write yet, and no pass over the records.
        if cut != u64::MAX && !sorted.iter().any(|s| s.begin_ns < cut) {
            return None;
        }
        let whole: IdHashSet<ScopeId> = sorted.iter().filter(|s| whole_before(c, s, cut)).map(|s| s.id).collect();
        (cut, whole)
    };
    // Launch time of every API call whose record is here, by correlation id.
    // (Correlation and scope ids are this process's and CUPTI's: `id_hash`; SipHash here,
    // with the membership below worked out twice per record, was a third of the collector
    // thread's samples in fine mode with segments; issue 14, item 1.)
    let mut launch: IdHashMap<u32, u64> = IdHashMap::default();
    // About a third of the records are API calls (a launch, its kernel, its external
    // correlation): room for them up front rather than rehashing as the map doubles.
    launch.reserve(c.records.len() / 3);
    launch.extend(c.records.iter().filter_map(|r| match r {
        ActivityRecord::Api(x) => Some((x.correlation_id, x.start_ns)),
        _ => None,
    }));
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
    // Each record's membership is worked out once (a byte per record) for the count and the
    // move, which visits the records in order.
    let member: Vec<bool> = c.records.iter().map(in_segment).collect();
    let n = member.iter().filter(|&&m| m).count();
    let mut taken = Vec::with_capacity(n);
    let mut next = member.iter();
    taken.extend(c.records.extract_if(.., |_| next.next().copied().unwrap_or(false)));
    drop(member);
    c.records.shrink_to(c.records.len().max(1 << 16));
    // Nothing new since the last segment (a step cut at the step it cut at before, which is
    // still running): no segment, rather than one holding only the request's scope again.
    if taken.is_empty() && whole.is_empty() {
        return None;
    }
    // Every scope that began before the cut: the whole ones, and (a step cut) the request
    // it runs through, so the segment's kernels keep their request.
    let scopes = c.scopes.subset(|s| s.begin_ns < cut);
    // What was written is released: the scopes wholly before the cut go from the table.
    c.scopes.retain(|s| !whole.contains(&s.id));
    c.segment_seq += 1;
    let steps = std::mem::take(&mut c.segment_steps);
    // The external correlations: the segment gets a copy of the runs; the collector keeps
    // those of the calls after the cut (ids grow with each call) and of any record it still
    // holds, and lets go of the rest, as the external-correlation records of the calls cut
    // went with the segment when they were records.
    let correlations = c.correlations.clone();
    let after_cut = last_cut_call.saturating_add(1);
    let keep_from = c.records.iter().map(|r| r.correlation_id()).filter(|&id| id != 0).min().map_or(after_cut, |m| m.min(after_cut));
    c.correlations.remove_below(keep_from);
    Some(Segment { seq: c.segment_seq, records: taken, correlations, scopes, steps })
}

/// Writes `seg` as `GPUSPAN_OUT/capture-<pid>-<seq>.json.gz` and removes the segments older
/// than the newest `GPUSPAN_CAPTURE_KEEP`. `classifier` is the collector thread's own copy
/// (the collector's stays with it).
pub fn write(a: &Shared, telemetry: &Telemetry, seg: &Segment, classifier: &mut Classifier, seed: u64) -> Result<PathBuf, String> {
    let name = crate::capture::segment_file_name(seg.seq);
    let extra = vec![("segment".to_string(), seg.seq), ("segment_steps".to_string(), seg.steps)];
    let path = crate::capture::write_parts(a, telemetry, &seg.records, &seg.correlations, &seg.scopes, classifier, seed, &a.config.out_dir, &name, &extra, None)?;
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

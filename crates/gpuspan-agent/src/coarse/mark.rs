//! The hot-path half of coarse timing: record one pooled event per stream at a scope
//! boundary and make a fixed-size [`GpuMark`], which the caller queues with the boundary's
//! scope event (`crate::hooks`, `crate::thread_ring`). No allocation, no lock; the only driver
//! calls are `cuStreamIsCapturing`, `cuEventRecord` (and `cuEventCreate` while the pool
//! fills), and at a root's begin and end (a request: twice per request) `cuStreamQuery`
//! between two `cuThreadExchangeStreamCaptureMode` calls, to learn whether the GPU is idle
//! there, plus `cuCtxGetDevice` at its begin (the device the worker uses, for NVML).
//!
//! CUDA graphs: an event recorded into a stream that is being captured becomes a graph
//! node, not a timestamp, and touching the legacy stream while a blocking stream captures
//! invalidates that capture (`CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`; CUPTI-NOTES §6b). So
//! each boundary first asks `cuStreamIsCapturing` of every stream it would record on (the
//! query is allowed during captures and invalidates nothing); when one is capturing, or the
//! legacy stream answers IMPLICIT, nothing is recorded and the mark says
//! [`TimingSource::Captured`]: the scope was recorded into the graph, is counted, and gets
//! no span. Its work runs later inside the graph launch that an enclosing scope times.

use super::pool::{PooledEvent, TakeError};
use super::Coarse;
use gpuspan_core::scope::ScopeId;
use gpuspan_core::spans::TimingSource;
use gpuspan_cupti::events::{CaptureStatus, Stream};
use std::sync::atomic::Ordering;

/// Most streams a scope is timed on (`gpuspan_use_streams` keeps the first 4).
pub const MAX_SCOPE_STREAMS: usize = 4;

/// One recorded boundary on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    /// The pooled event recorded.
    pub event: PooledEvent,
    /// The stream it was recorded on.
    pub stream: Stream,
}

/// A scope boundary as coarse timing saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMark {
    /// The scope.
    pub scope: ScopeId,
    /// Its enclosing scope on the thread (begin marks only; 0 for a root or an end).
    pub parent: ScopeId,
    /// `false` at the begin, `true` at the end.
    pub is_end: bool,
    /// CPU time of the boundary, CUPTI ns (the same value as the scope event's `ts_ns`).
    pub cpu_ns: u64,
    /// How the scope is timed: [`TimingSource::CudaEvent`] on named streams,
    /// [`TimingSource::LegacyStream`], [`TimingSource::CpuFallback`] when no event was
    /// recorded (then `n == 0`), or [`TimingSource::Cpu`] when the process has no driver.
    pub source: TimingSource,
    /// Events recorded, one per stream.
    pub marks: [Option<StreamMark>; MAX_SCOPE_STREAMS],
    /// How many of `marks` are set.
    pub n: u8,
    /// A root's boundary (begin or end) recorded while every one of its streams was idle
    /// (`cuStreamQuery` just before): the GPU reached the events as they were recorded, at
    /// `cpu_ns`, so the GPU-to-CPU clock chain is re-anchored there ([`super::resolve`]).
    pub idle: bool,
    /// A root's begin: the CUDA device current on the thread (`cuCtxGetDevice`), which the
    /// request span names; `None` for other marks or without a context.
    pub device: Option<u32>,
}

/// Records a boundary of `scope` on `streams` (empty: the legacy default stream) and returns
/// its mark, for the caller to queue with the boundary's scope event
/// (`crate::thread_ring::Boundary`; a caller that drops it gives its events back with
/// [`give_back_all`]). For a `root` scope (none encloses it on its thread: a request) it
/// first asks whether those streams are idle ([`GpuMark::idle`]). On a full pool or a driver
/// error the events taken so far go back and the mark says [`TimingSource::CpuFallback`].
#[inline]
pub fn record_boundary(c: &Coarse, scope: ScopeId, parent: ScopeId, is_end: bool, root: bool, cpu_ns: u64, streams: &[Stream]) -> GpuMark {
    let (targets, source): (&[Stream], TimingSource) = if streams.is_empty() {
        (&[Stream::LEGACY], TimingSource::LegacyStream)
    } else {
        (&streams[..streams.len().min(MAX_SCOPE_STREAMS)], TimingSource::CudaEvent)
    };
    let mut mark = GpuMark { scope, parent, is_end, cpu_ns, source, marks: [None; MAX_SCOPE_STREAMS], n: 0, idle: false, device: None };
    if let Some(events) = &c.events {
        let capturing = |s: Stream| matches!(events.capture_status(s), CaptureStatus::Capturing | CaptureStatus::ImplicitCapture);
        if targets.iter().any(|&s| capturing(s)) {
            mark.source = TimingSource::Captured;
            c.counters.scopes_in_capture.fetch_add(1, Ordering::Relaxed);
            return mark;
        }
        // A root's boundary (twice per request): is the GPU idle on its streams? Then its
        // events run as they are recorded (three driver calls per stream, RELAXED mode).
        mark.idle = root && targets.iter().all(|&s| events.stream_is_idle(s) == Some(true));
        // A request's begin: the device it runs on is one the worker uses (NVML samples it).
        if root && !is_end {
            if let Some(d) = events.current_device() {
                crate::nvml::note_cuda_device(i64::from(d));
                mark.device = u32::try_from(d).ok();
            }
        }
        for &stream in targets {
            let ev = match c.pool.take(events) {
                Ok(ev) => ev,
                Err(e) => {
                    let counter = match e {
                        TakeError::Exhausted => &c.counters.pool_exhausted,
                        TakeError::Driver(_) | TakeError::TooManyContexts => &c.counters.event_errors,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    fall_back(c, &mut mark);
                    break;
                }
            };
            if events.record(ev.0, stream).is_err() {
                c.pool.give_back(ev);
                c.counters.event_errors.fetch_add(1, Ordering::Relaxed);
                fall_back(c, &mut mark);
                break;
            }
            mark.marks[mark.n as usize] = Some(StreamMark { event: ev, stream });
            mark.n += 1;
        }
    } else {
        mark.source = TimingSource::Cpu;
    }
    mark
}

/// Queues `mark` on the shared mark queue (threads without a ring of their own,
/// `crate::thread_ring`); when it is full the mark's events go back and the drop is counted.
pub fn queue_shared(c: &Coarse, mark: GpuMark) {
    if let Err(m) = c.marks.push(mark) {
        drop_mark(c, &m);
    }
}

/// A mark that will not reach the collector: its events go back to the pool and
/// `marks_dropped` counts it.
pub fn drop_mark(c: &Coarse, mark: &GpuMark) {
    give_back_all(c, mark);
    c.counters.marks_dropped.fetch_add(1, Ordering::Relaxed);
}

fn fall_back(c: &Coarse, mark: &mut GpuMark) {
    give_back_all(c, mark);
    mark.marks = [None; MAX_SCOPE_STREAMS];
    mark.n = 0;
    mark.source = TimingSource::CpuFallback;
}

/// Returns every event of `mark` to the pool.
pub fn give_back_all(c: &Coarse, mark: &GpuMark) {
    for m in mark.marks.iter().flatten() {
        c.pool.give_back(m.event);
    }
}

//! The hot-path half of coarse timing: record one pooled event per stream at a scope
//! boundary and make a fixed-size [`GpuMark`], which the caller queues with the boundary's
//! scope event (`crate::hooks`, `crate::thread_ring`). No allocation, no lock; the only driver
//! calls are `cuStreamIsCapturing`, `cuCtxGetCurrent`, `cuEventRecord` (and `cuEventCreate` while the pool
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

use super::pool::{EventStash, PooledEvent, TakeError};
use super::Coarse;
use gpuspan_core::scope::ScopeId;
use gpuspan_core::spans::TimingSource;
use gpuspan_cupti::events::{CaptureStatus, Context, Event, Stream};
use crate::word_ring::Entry;
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

/// A scope boundary as coarse timing saw it, as the collector keeps it per open scope
/// ([`super::resolve`]), made from a boundary's scope event and [`Recorded`]
/// (`crate::thread_ring::Boundary::gpu_mark`): the scope, its parent and the
/// boundary's CPU time, with what was recorded on the GPU ([`Recorded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMark {
    /// The scope.
    pub scope: ScopeId,
    /// Its enclosing scope on the thread (begin marks only; 0 for a root or an end).
    pub parent: ScopeId,
    /// CPU time of the boundary, CUPTI ns (the same value as the scope event's `ts_ns`).
    pub cpu_ns: u64,
    /// What was recorded.
    pub rec: Recorded,
}

impl GpuMark {
    /// The mark of `scope`'s boundary at `cpu_ns` that recorded `rec`.
    pub fn new(scope: ScopeId, parent: ScopeId, cpu_ns: u64, rec: Recorded) -> GpuMark {
        GpuMark { scope, parent, cpu_ns, rec }
    }

    /// The `i`-th recorded event and its stream; `None` past `n` ([`Recorded::stream_mark`]).
    pub fn stream_mark(&self, i: usize) -> Option<StreamMark> {
        self.rec.stream_mark(i)
    }

    /// The recorded events, in stream order.
    pub fn stream_marks(&self) -> impl Iterator<Item = StreamMark> + '_ {
        self.rec.stream_marks()
    }
}

/// What a boundary recorded on the GPU: 88 bytes. This is what crosses the thread's ring
/// (`crate::thread_ring::Boundary`), next to the scope event that carries the scope, its
/// parent and the CPU time once: a ring entry of 128 bytes is copied inline, where the 152
/// of a scope event and a whole [`GpuMark`] took a `memcpy` call (issue 14, item 5). The
/// recorded events are stored as two arrays and one context (every event of a boundary is
/// taken in the context current at it), not as `[Option<StreamMark>; 4]` (32 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The context every recorded event was taken in; [`Context::UNSET`] when `n == 0`.
    ctx: Context,
    /// Events recorded, the first `n` set ([`Event::UNSET`] after them).
    events: [Event; MAX_SCOPE_STREAMS],
    /// The stream each of `events` was recorded on.
    streams: [Stream; MAX_SCOPE_STREAMS],
    /// A root's begin: the CUDA device current on the thread (`cuCtxGetDevice`), which the
    /// request span names; `None` for other marks or without a context.
    pub device: Option<u32>,
    /// `false` at the begin, `true` at the end.
    pub is_end: bool,
    /// How the scope is timed: [`TimingSource::CudaEvent`] on named streams,
    /// [`TimingSource::LegacyStream`], [`TimingSource::CpuFallback`] when no event was
    /// recorded (then `n == 0`), or [`TimingSource::Cpu`] when the process has no driver.
    pub source: TimingSource,
    /// How many events were recorded (one per stream, at most [`MAX_SCOPE_STREAMS`]).
    pub n: u8,
    /// A root's boundary (begin or end) recorded while every one of its streams was idle
    /// (`cuStreamQuery` just before): the GPU reached the events as they were recorded, at
    /// the boundary's CPU time, so the GPU-to-CPU clock chain is re-anchored there
    /// ([`super::resolve`]).
    pub idle: bool,
}

impl Recorded {
    /// Nothing recorded yet (`n == 0`), to be timed by `source`.
    pub fn new(is_end: bool, source: TimingSource) -> Recorded {
        Recorded {
            ctx: Context::UNSET,
            events: [Event::UNSET; MAX_SCOPE_STREAMS],
            streams: [Stream::LEGACY; MAX_SCOPE_STREAMS],
            device: None,
            is_end,
            source,
            n: 0,
            idle: false,
        }
    }

    /// The `i`-th recorded event and its stream; `None` past `n`.
    pub fn stream_mark(&self, i: usize) -> Option<StreamMark> {
        (i < usize::from(self.n).min(MAX_SCOPE_STREAMS)).then(|| StreamMark { event: (self.events[i], self.ctx), stream: self.streams[i] })
    }

    /// The recorded events, in stream order.
    pub fn stream_marks(&self) -> impl Iterator<Item = StreamMark> + '_ {
        (0..usize::from(self.n).min(MAX_SCOPE_STREAMS)).filter_map(|i| self.stream_mark(i))
    }

    /// Adds a recorded event. `false` (nothing added) when all [`MAX_SCOPE_STREAMS`] are set
    /// or `m` was taken in another context than the events already added (a boundary takes
    /// all of them in the context current at it, so neither happens).
    pub fn push_mark(&mut self, m: StreamMark) -> bool {
        let i = usize::from(self.n);
        if i >= MAX_SCOPE_STREAMS || (i > 0 && self.ctx != m.event.1) {
            return false;
        }
        self.ctx = m.event.1;
        self.events[i] = m.event.0;
        self.streams[i] = m.stream;
        self.n += 1;
        true
    }

    /// Stores this mark into words [`RECORDED_FIRST_WORD`].. of a ring entry
    /// (`crate::thread_ring`): the context, the `n` recorded events and their streams (the
    /// words of the others are left as they are: [`Recorded::load_words`] reads only `n`),
    /// then one word of the rest. Each word is read from the field that holds it, never
    /// through a copy of the whole struct (`crate::word_ring` says why).
    #[inline(always)]
    pub fn store_words(&self, e: &Entry) {
        let w = &e[RECORDED_FIRST_WORD..];
        w[0].store(self.ctx.addr() as u64, Ordering::Relaxed);
        for i in 0..usize::from(self.n).min(MAX_SCOPE_STREAMS) {
            w[1 + i].store(self.events[i].addr() as u64, Ordering::Relaxed);
            w[1 + MAX_SCOPE_STREAMS + i].store(self.streams[i].addr() as u64, Ordering::Relaxed);
        }
        let meta = self.device.map_or(0, |d| 1 | u64::from(d) << 32)
            | u64::from(self.is_end) << 1
            | u64::from(self.idle) << 2
            | u64::from(self.n) << 8
            | u64::from(source_code(self.source)) << 16;
        w[1 + 2 * MAX_SCOPE_STREAMS].store(meta, Ordering::Relaxed);
    }

    /// The mark [`Recorded::store_words`] stored in `e` (past `n`, the events and streams of
    /// [`Recorded::new`]).
    pub fn load_words(e: &Entry) -> Recorded {
        let w = &e[RECORDED_FIRST_WORD..];
        let word = |i: usize| w[i].load(Ordering::Relaxed) as usize;
        let meta = w[1 + 2 * MAX_SCOPE_STREAMS].load(Ordering::Relaxed);
        let n = ((meta >> 8) as u8).min(MAX_SCOPE_STREAMS as u8);
        let set = |i: usize| i < usize::from(n);
        Recorded {
            ctx: Context::from_raw(word(0)),
            events: std::array::from_fn(|i| if set(i) { Event::from_raw(word(1 + i)) } else { Event::UNSET }),
            streams: std::array::from_fn(|i| if set(i) { Stream::from_raw(word(1 + MAX_SCOPE_STREAMS + i)) } else { Stream::LEGACY }),
            device: (meta & 1 != 0).then_some((meta >> 32) as u32),
            is_end: meta & 2 != 0,
            idle: meta & 4 != 0,
            n,
            source: source_of_code((meta >> 16) as u8),
        }
    }

    /// Forgets the recorded events (their owner gave them back): as [`Recorded::new`] made it,
    /// but for the flags.
    fn clear_marks(&mut self) {
        self.ctx = Context::UNSET;
        self.events = [Event::UNSET; MAX_SCOPE_STREAMS];
        self.streams = [Stream::LEGACY; MAX_SCOPE_STREAMS];
        self.n = 0;
    }
}

/// The first word of a ring entry that [`Recorded::store_words`] uses; it uses
/// `2 + 2 * MAX_SCOPE_STREAMS` (10), up to the entry's end.
pub const RECORDED_FIRST_WORD: usize = crate::word_ring::ENTRY_WORDS - 2 - 2 * MAX_SCOPE_STREAMS;

/// `source` as one byte in a ring entry.
fn source_code(source: TimingSource) -> u8 {
    match source {
        TimingSource::CudaEvent => 0,
        TimingSource::LegacyStream => 1,
        TimingSource::CpuFallback => 2,
        TimingSource::Cpu => 3,
        TimingSource::Captured => 4,
    }
}

/// The source [`source_code`] wrote (an unknown byte, which it never writes, reads as the
/// CPU fallback).
fn source_of_code(code: u8) -> TimingSource {
    match code {
        0 => TimingSource::CudaEvent,
        1 => TimingSource::LegacyStream,
        3 => TimingSource::Cpu,
        4 => TimingSource::Captured,
        _ => TimingSource::CpuFallback,
    }
}

/// Records a scope boundary on `streams` (empty: the legacy default stream) into `mark`, a
/// [`Recorded::new`] of the boundary's kind made by the caller (in place: a returned mark was
/// copied once more, through loads that wait on the stores that built it,
/// `crate::word_ring`), for the caller to queue with the boundary's scope event
/// (`crate::thread_ring::Boundary`; a caller that drops it gives its events back with
/// [`give_back_all`]). For a `root` scope (none encloses it on its thread: a request) it
/// first asks whether those streams are idle ([`Recorded::idle`]). Events are taken through
/// the calling thread's `stash` ([`super::pool::EventPool::take_stashed`]). On a full pool or
/// a driver error the events taken so far go back and the mark says
/// [`TimingSource::CpuFallback`].
#[inline(always)]
pub fn record_boundary(c: &Coarse, stash: &EventStash, mark: &mut Recorded, root: bool, streams: &[Stream]) {
    let (targets, source): (&[Stream], TimingSource) = if streams.is_empty() {
        (&[Stream::LEGACY], TimingSource::LegacyStream)
    } else {
        (&streams[..streams.len().min(MAX_SCOPE_STREAMS)], TimingSource::CudaEvent)
    };
    mark.source = source;
    let is_end = mark.is_end;
    if let Some(events) = &c.events {
        let capturing = |s: Stream| matches!(events.capture_status(s), CaptureStatus::Capturing | CaptureStatus::ImplicitCapture);
        if targets.iter().any(|&s| capturing(s)) {
            mark.source = TimingSource::Captured;
            c.counters.scopes_in_capture.fetch_add(1, Ordering::Relaxed);
            return;
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
        // Every event of the boundary in the context current now: one `cuCtxGetCurrent`.
        let ctx = events.current_context().map_err(TakeError::Driver);
        for &stream in targets {
            let ev = match ctx.and_then(|ctx| c.pool.take_stashed(ctx, stash, || events.create())) {
                Ok(ev) => ev,
                Err(e) => {
                    let counter = match e {
                        TakeError::Exhausted => &c.counters.pool_exhausted,
                        TakeError::Driver(_) | TakeError::TooManyContexts => &c.counters.event_errors,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    fall_back(c, mark);
                    break;
                }
            };
            if events.record(ev.0, stream).is_err() {
                c.pool.give_back(ev);
                c.counters.event_errors.fetch_add(1, Ordering::Relaxed);
                fall_back(c, mark);
                break;
            }
            if !mark.push_mark(StreamMark { event: ev, stream }) {
                c.pool.give_back(ev);
                c.counters.event_errors.fetch_add(1, Ordering::Relaxed);
                fall_back(c, mark);
                break;
            }
        }
    } else {
        mark.source = TimingSource::Cpu;
    }
}

/// A mark that will not reach the collector: its events go back to the pool and
/// `marks_dropped` counts it.
pub fn drop_mark(c: &Coarse, mark: &Recorded) {
    give_back_all(c, mark);
    c.counters.marks_dropped.fetch_add(1, Ordering::Relaxed);
}

fn fall_back(c: &Coarse, mark: &mut Recorded) {
    give_back_all(c, mark);
    mark.clear_marks();
    mark.source = TimingSource::CpuFallback;
}

/// Returns every event of `mark` to the pool.
pub fn give_back_all(c: &Coarse, mark: &Recorded) {
    for m in mark.stream_marks() {
        c.pool.give_back(m.event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(event: usize, ctx: usize, stream: usize) -> StreamMark {
        StreamMark { event: (Event::from_raw(event), Context::from_raw(ctx)), stream: Stream::from_raw(stream) }
    }

    #[test]
    fn what_a_boundary_records_fits_a_128_byte_ring_entry() {
        // Recorded's docs: 88 bytes, and a GpuMark 112; the ring entry test
        // (thread_ring.rs) holds the boundary to 128.
        assert_eq!(std::mem::size_of::<Recorded>(), 88);
        assert_eq!(std::mem::size_of::<Option<Recorded>>(), 88, "the flags' niche holds None");
        assert_eq!(std::mem::size_of::<GpuMark>(), 112);
    }

    #[test]
    fn a_marks_events_come_back_in_stream_order_with_their_context() {
        let mut m = GpuMark::new(7, 3, 100, Recorded::new(false, TimingSource::CudaEvent));
        assert_eq!((m.rec.n, m.stream_mark(0)), (0, None));
        for i in 0..MAX_SCOPE_STREAMS {
            assert!(m.rec.push_mark(sm(0x100 + i, 0xc0, 0x10 + i)), "event {i}");
        }
        assert!(!m.rec.push_mark(sm(0x200, 0xc0, 0x20)), "a fifth stream is refused");
        let got: Vec<StreamMark> = m.stream_marks().collect();
        let want: Vec<StreamMark> = (0..MAX_SCOPE_STREAMS).map(|i| sm(0x100 + i, 0xc0, 0x10 + i)).collect();
        assert_eq!(got, want);
        assert_eq!(m.stream_mark(MAX_SCOPE_STREAMS), None);
        assert_eq!((m.scope, m.parent, m.cpu_ns, m.rec.n), (7, 3, 100, MAX_SCOPE_STREAMS as u8));
    }

    #[test]
    fn a_mark_comes_back_whole_from_a_ring_entrys_words() {
        let entry: Entry = std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0));
        let sources = [TimingSource::CudaEvent, TimingSource::LegacyStream, TimingSource::CpuFallback, TimingSource::Cpu, TimingSource::Captured];
        // Fewer events after more, as a reused ring slot sees them: the words past `n` hold an
        // earlier mark's, and read as none.
        for (k, source) in sources.into_iter().enumerate().rev() {
            let mut m = Recorded::new(k % 2 == 1, source);
            for i in 0..k.min(MAX_SCOPE_STREAMS) {
                assert!(m.push_mark(sm(0x1000 + i, 0xc0 + k, 0x20 + i)));
            }
            m.device = (k != 2).then_some(k as u32 * 3);
            m.idle = k >= 3;
            m.store_words(&entry);
            assert_eq!(Recorded::load_words(&entry), m, "source {source:?}");
            assert_eq!(entry[RECORDED_FIRST_WORD - 1].load(Ordering::Relaxed), 0, "words before the mark's are the scope event's");
            // A mark whose events went back reads as none recorded.
            let mut cleared = m;
            cleared.clear_marks();
            cleared.store_words(&entry);
            assert_eq!(Recorded::load_words(&entry), cleared, "source {source:?}, cleared");
        }
    }

    #[test]
    fn an_event_of_another_context_is_refused_and_cleared_marks_are_empty() {
        let mut m = Recorded::new(true, TimingSource::LegacyStream);
        assert!(m.push_mark(sm(0x100, 0xc0, 1)));
        assert!(!m.push_mark(sm(0x101, 0xc1, 2)), "one context per boundary");
        assert_eq!(m.stream_marks().collect::<Vec<_>>(), vec![sm(0x100, 0xc0, 1)]);
        m.clear_marks();
        assert_eq!((m.n, m.stream_marks().count()), (0, 0));
        assert!(m.push_mark(sm(0x102, 0xc1, 2)), "after clearing, any context");
        assert_eq!(m.stream_mark(0), Some(sm(0x102, 0xc1, 2)));
    }
}

//! The collector-thread half of coarse timing: marks → scope GPU intervals.
//!
//! Scopes resolve in the order their ends were queued (children before their parents),
//! each once every event of its begin and end has completed (`cuEventQuery`, never
//! blocking). Times are placed on the CUPTI clock like this:
//! - a *root* scope (no enclosing scope on its thread; normally a request) starts at the
//!   previous root's start plus `cuEventElapsedTime(previous root's begin, this begin)`,
//!   and never before its own CPU begin (the GPU cannot pass an event before the host
//!   recorded it); the first root starts at its CPU begin. The latest root's begin event
//!   is the *anchor*, kept out of the pool until the next root replaces it.
//! - re-anchoring: a root whose streams were idle when its begin was recorded
//!   ([`super::mark::Recorded::idle`]) starts at its CPU begin, whatever the chain says. The
//!   GPU's event timer and the host clock drift apart by tens of ppm (a day: several
//!   seconds), and a chain of elapsed times carries that drift, and the f32 rounding of
//!   each link, from request to request for the whole run; the clamp above only corrects a
//!   chain that falls behind. Re-anchored at each request that starts on an idle GPU (the
//!   usual case between requests), the error stays the drift within one request. A root
//!   whose end was recorded on an idle GPU (a worker that synchronizes before it ends the
//!   request) leaves its end event as a second reference at its CPU time (the *end
//!   anchor*, out of the pool until a later one replaces it): the next root, even one that
//!   begins while its own stream is still busy, is chained from whichever reference is
//!   newer, so only the gap between the two requests is measured by the drifting timer.
//! - any other scope on stream *i* starts at its root's start plus
//!   `cuEventElapsedTime(root begin, begin_i)` and ends at that plus
//!   `cuEventElapsedTime(begin_i, end_i)` (one short interval, so durations keep the
//!   events' ~0.5 µs resolution even in a long request, where an f32 of ms from the request
//!   start would lose µs).
//! - a scope timed on several streams spans from the latest begin (when every stream has
//!   reached it) to the latest end.
//!
//! Several devices: events of two devices cannot be compared (CUDA Programming Guide,
//! "Stream and Event Behavior": `cuEventElapsedTime` fails), so the anchor and the end
//! anchor are kept per CUDA context, and each device's roots are chained only to roots of
//! the same device.
//!
//! A scope with no event at a boundary, or whose events the driver will not compare, is
//! CPU-timed ([`TimingSource::CpuFallback`]).
//!
//! A root scope still open [`Coarse::root_timeout`] after it began (a request whose `end`
//! the worker skipped on an exception path) is given up: its begin events and those of its
//! children that never ended go back to the pool, and it gets no interval (counted in
//! `roots_timed_out`). Without this, each such request would keep an event out of the pool
//! for good, and a worker running for days would end up timing every scope on the CPU.
//! A root finds those children in its own list (`Resolver::children`), so resolving a root
//! costs its children, not the whole backlog of pending scopes.

use super::mark::{GpuMark, Recorded};
use super::pool::{EventReturns, PooledEvent};
use super::Coarse;
use gpuspan_core::scope::ScopeId;
use gpuspan_core::spans::{ScopeGpuTime, TimingSource};
use gpuspan_cupti::events::{Context, CudaEvents, Event};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Instant;

#[derive(Debug)]
struct Pending {
    root: ScopeId,
    begin: GpuMark,
    end: Option<GpuMark>,
    /// Roots: the established start, CUPTI ns.
    root_start_ns: Option<u64>,
    /// When the collector took the begin mark (for [`Coarse::root_timeout`]).
    accepted_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    event: PooledEvent,
    time_ns: u64,
    /// The root whose begin event this is has resolved: the anchor owns the event.
    owned: bool,
}

/// A resolved root's end event recorded on an idle GPU, at its CPU time: a second chain
/// reference, newer than the anchor until the next root begins. Its event is out of the pool.
#[derive(Debug, Clone, Copy)]
struct EndAnchor {
    event: PooledEvent,
    time_ns: u64,
}

/// Pending scopes and the anchor. Owned by the collector.
#[derive(Debug, Default)]
pub struct Resolver {
    pending: HashMap<ScopeId, Pending>,
    /// Per root, the scopes accepted under it: a resolved root looks at these for children
    /// that never ended. (A scan of every pending scope per resolved root made the collector
    /// quadratic in its backlog: a third of its CPU in the `nvtx_push_pop` bench.)
    children: HashMap<ScopeId, Vec<ScopeId>>,
    ended: VecDeque<ScopeId>,
    roots: VecDeque<ScopeId>,
    /// One anchor per CUDA context (device): events of two devices cannot be compared
    /// (`cuEventElapsedTime` fails), so each device's roots form a chain of their own.
    anchors: Vec<Anchor>,
    /// One end anchor per context, like `anchors`.
    end_anchors: Vec<EndAnchor>,
    current_ctx: Option<Context>,
    /// Last look for roots past their timeout (at most one a second).
    last_sweep: Option<Instant>,
    /// Events given back, in batches ([`EventReturns`]); flushed at the end of every public
    /// call that gives any back.
    returns: EventReturns,
}

/// Gives every event of `rec` back through `returns`, in batches (flushed by the resolver's
/// public caller).
fn give_back_all(returns: &mut EventReturns, c: &Coarse, rec: &Recorded) {
    for m in rec.stream_marks() {
        returns.give_back(&c.pool, m.event);
    }
}

/// An anchor kept per CUDA context (its event's).
trait PerContext: Copy {
    fn context(&self) -> Context;
}

impl PerContext for Anchor {
    fn context(&self) -> Context {
        self.event.1
    }
}

impl PerContext for EndAnchor {
    fn context(&self) -> Context {
        self.event.1
    }
}

/// The entry of `list` for context `ctx`.
fn of_context<T: PerContext>(list: &[T], ctx: Context) -> Option<T> {
    list.iter().find(|a| a.context() == ctx).copied()
}

/// Makes `item` its context's entry of `list`; returns the one it replaces.
fn replace_for_context<T: PerContext>(list: &mut Vec<T>, item: T) -> Option<T> {
    match list.iter_mut().find(|x| x.context() == item.context()) {
        Some(x) => Some(std::mem::replace(x, item)),
        None => {
            list.push(item);
            None
        }
    }
}

fn ms_to_ns(ms: f32) -> i64 {
    (ms as f64 * 1e6).round() as i64
}

fn add(t: u64, d_ns: i64) -> u64 {
    (t as i128 + d_ns as i128).max(0) as u64
}

impl Resolver {
    /// An empty resolver.
    pub fn new() -> Resolver {
        Resolver::default()
    }

    /// Scopes waiting for their end or their events.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether scope `id` still waits here.
    pub fn is_pending(&self, id: ScopeId) -> bool {
        self.pending.contains_key(&id)
    }

    /// Takes one mark from the queue. An end whose begin was never seen (a dropped mark)
    /// gives its events straight back.
    pub fn accept(&mut self, m: GpuMark, c: &Coarse) {
        if !m.rec.is_end {
            let root = match self.pending.get(&m.parent) {
                Some(p) if m.parent != 0 => p.root,
                _ => m.scope,
            };
            if root == m.scope {
                self.roots.push_back(m.scope);
            } else {
                self.children.entry(root).or_default().push(m.scope);
            }
            self.pending.insert(m.scope, Pending { root, begin: m, end: None, root_start_ns: None, accepted_at: Instant::now() });
        } else if let Some(p) = self.pending.get_mut(&m.scope) {
            p.end = Some(m);
            self.ended.push_back(m.scope);
        } else {
            give_back_all(&mut self.returns, c, &m.rec);
            self.returns.flush(&c.pool);
        }
    }

    fn use_ctx(&mut self, events: &CudaEvents, ctx: Context) {
        if self.current_ctx != Some(ctx) && events.set_current(ctx).is_ok() {
            self.current_ctx = Some(ctx);
        }
    }

    /// Whether `ev` has completed; a query error counts as completed (the interval then
    /// falls back to CPU times when the elapsed time cannot be read).
    fn done(&mut self, events: &CudaEvents, ev: PooledEvent) -> bool {
        self.use_ctx(events, ev.1);
        events.is_complete(ev.0).unwrap_or(true)
    }

    fn elapsed_ns(&mut self, events: &CudaEvents, a: PooledEvent, b: Event) -> Option<i64> {
        self.use_ctx(events, a.1);
        events.elapsed_ms(a.0, b).ok().map(ms_to_ns)
    }

    fn all_done(&mut self, events: &CudaEvents, m: &GpuMark) -> bool {
        m.stream_marks().all(|s| self.done(events, s.event))
    }

    /// Gives up the roots open longer than [`Coarse::root_timeout`] (module docs); looks at
    /// most once a second. Returns how many were given up.
    pub fn give_up_stale_roots(&mut self, c: &Coarse, now: Instant) -> usize {
        if self.last_sweep.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return 0;
        }
        self.last_sweep = Some(now);
        let stale: Vec<ScopeId> = self
            .pending
            .iter()
            .filter(|(id, p)| p.root == **id && p.end.is_none() && now.duration_since(p.accepted_at) >= c.root_timeout)
            .map(|(id, _)| *id)
            .collect();
        for &id in &stale {
            self.roots.retain(|r| *r != id);
            // As a resolved root: its begin events back (the anchor keeps its own), and its
            // children that never ended with it; ended children still waiting for their
            // events are placed against the anchor.
            self.release(c, id, None);
            c.counters.roots_timed_out.fetch_add(1, Ordering::Relaxed);
        }
        self.returns.flush(&c.pool);
        stale.len()
    }

    /// Resolves what it can, appending intervals to `out` in scope-end order.
    pub fn resolve(&mut self, c: &Coarse, out: &mut Vec<ScopeGpuTime>) {
        self.give_up_stale_roots(c, Instant::now());
        let Some(events) = &c.events else {
            self.resolve_cpu_only(c, out);
            return;
        };
        // A scope is placed relative to its root's start, so roots are placed first; a root
        // is placed after the scopes that ended before it resolved (the previous root's end
        // may leave an end anchor the new root is chained from).
        loop {
            let resolved = self.resolve_ended(c, events, out);
            let placed = self.place_next_root(c, events);
            if !resolved && !placed {
                break;
            }
        }
        self.returns.flush(&c.pool);
    }

    /// Places the oldest root whose begin events completed; false when there is none.
    fn place_next_root(&mut self, c: &Coarse, events: &CudaEvents) -> bool {
        while let Some(&r) = self.roots.front() {
            let Some(begin) = self.pending.get(&r).map(|p| p.begin) else {
                self.roots.pop_front();
                continue;
            };
            let start = match begin.stream_mark(0) {
                Some(b0) => {
                    if !self.done(events, b0.event) {
                        return false;
                    }
                    // The newer reference: the previous root's begin, or a root's end that
                    // ran on an idle GPU after it (then only the gap between requests is
                    // measured by the GPU's timer).
                    let ctx = b0.event.1;
                    let reference = match (of_context(&self.anchors, ctx), of_context(&self.end_anchors, ctx)) {
                        (Some(a), Some(e)) if e.time_ns >= a.time_ns => Some((e.event, e.time_ns)),
                        (Some(a), _) => Some((a.event, a.time_ns)),
                        (None, e) => e.map(|e| (e.event, e.time_ns)),
                    };
                    let chained = match reference {
                        Some((ev, t)) => self.elapsed_ns(events, ev, b0.event.0).map(|d| add(t, d)),
                        None => None,
                    };
                    let start = if begin.rec.idle {
                        c.counters.roots_reanchored.fetch_add(1, Ordering::Relaxed);
                        begin.cpu_ns
                    } else {
                        chained.unwrap_or(begin.cpu_ns).max(begin.cpu_ns)
                    };
                    if let Some(old) = replace_for_context(&mut self.anchors, Anchor { event: b0.event, time_ns: start, owned: false }) {
                        if old.owned {
                            self.returns.give_back(&c.pool, old.event);
                        }
                    }
                    start
                }
                None => begin.cpu_ns,
            };
            if let Some(p) = self.pending.get_mut(&r) {
                p.root_start_ns = Some(start);
            }
            self.roots.pop_front();
            return true;
        }
        false
    }

    /// Resolves ended scopes, in end order, while their root is placed and their events
    /// completed; true when any was.
    fn resolve_ended(&mut self, c: &Coarse, events: &CudaEvents, out: &mut Vec<ScopeGpuTime>) -> bool {
        let mut progress = false;
        while let Some(&id) = self.ended.front() {
            let Some(p) = self.pending.get(&id) else {
                self.ended.pop_front();
                continue;
            };
            let (root, begin, end) = (p.root, p.begin, p.end.expect("only ended scopes are queued"));
            let root_ref = match self.pending.get(&root) {
                Some(r) if r.root_start_ns.is_none() => break, // root not placed yet
                Some(r) => r.begin.stream_mark(0).map(|m| (m.event, r.root_start_ns.unwrap_or(r.begin.cpu_ns))),
                None => None,
            };
            if !(self.all_done(events, &end) && self.all_done(events, &begin)) {
                break;
            }
            let reference = root_ref.or_else(|| {
                let ctx = begin.stream_mark(0).map(|m| m.event.1)?;
                of_context(&self.anchors, ctx).map(|a| (a.event, a.time_ns))
            });
            let t = self.place(events, id, &begin, &end, reference);
            c.counters.scopes_timed.fetch_add(u64::from(t.source < TimingSource::CpuFallback), Ordering::Relaxed);
            c.counters.scopes_cpu_timed.fetch_add(u64::from(t.source == TimingSource::CpuFallback), Ordering::Relaxed);
            out.push(t);
            progress = true;
            self.ended.pop_front();
            // A root that ended on an idle GPU: its end event ran at its CPU time.
            let keep = (root == id && end.rec.idle && t.source < TimingSource::CpuFallback).then_some(end.stream_mark(0)).flatten();
            self.release(c, id, keep.map(|m| m.event));
            if let Some(m) = keep {
                if let Some(old) = replace_for_context(&mut self.end_anchors, EndAnchor { event: m.event, time_ns: end.cpu_ns }) {
                    self.returns.give_back(&c.pool, old.event);
                }
            }
        }
        progress
    }

    /// The interval of one scope whose events have all completed.
    fn place(
        &mut self,
        events: &CudaEvents,
        id: ScopeId,
        begin: &GpuMark,
        end: &GpuMark,
        reference: Option<(PooledEvent, u64)>,
    ) -> ScopeGpuTime {
        let cpu = ScopeGpuTime {
            id,
            start_ns: begin.cpu_ns,
            end_ns: end.cpu_ns.max(begin.cpu_ns),
            source: TimingSource::CpuFallback,
            device: begin.rec.device,
        };
        if begin.rec.source == TimingSource::Captured || end.rec.source == TimingSource::Captured {
            // Recorded into a CUDA graph: no GPU interval (the assembler emits no span).
            return ScopeGpuTime { source: TimingSource::Captured, ..cpu };
        }
        let (Some(reference), true, true) = (reference, begin.rec.n > 0, end.rec.n > 0) else { return cpu };
        let mut starts = [0u64; super::mark::MAX_SCOPE_STREAMS];
        let mut start = 0u64;
        for (i, b) in begin.stream_marks().enumerate() {
            let Some(d) = self.elapsed_ns(events, reference.0, b.event.0) else { return cpu };
            starts[i] = add(reference.1, d).max(begin.cpu_ns);
            start = start.max(starts[i]);
        }
        let mut stop = 0u64;
        for (j, e) in end.stream_marks().enumerate() {
            let t = match begin.stream_mark(j) {
                Some(b) if b.stream == e.stream => self.elapsed_ns(events, b.event, e.event.0).map(|d| add(starts[j], d)),
                _ => self.elapsed_ns(events, reference.0, e.event.0).map(|d| add(reference.1, d)),
            };
            let Some(t) = t else { return cpu };
            stop = stop.max(t);
        }
        ScopeGpuTime { id, start_ns: start, end_ns: stop.max(start), source: begin.rec.source.max(end.rec.source), device: begin.rec.device }
    }

    /// Gives a resolved scope's events back (a root's begin event stays with the anchor
    /// while it is the anchor); a resolved root also releases any scope under it that never
    /// ended (its end mark was dropped).
    fn release(&mut self, c: &Coarse, id: ScopeId, keep: Option<PooledEvent>) {
        let Some(p) = self.pending.remove(&id) else { return };
        for m in p.begin.stream_marks() {
            let anchor = self.anchors.iter_mut().find(|a| a.event == m.event);
            if let (Some(a), true) = (anchor, p.root == id) {
                a.owned = true;
            } else {
                self.returns.give_back(&c.pool, m.event);
            }
        }
        for m in p.end.iter().flat_map(|e| e.stream_marks()) {
            if Some(m.event) != keep {
                self.returns.give_back(&c.pool, m.event);
            }
        }
        if p.root == id {
            let kids = self.children.remove(&id).unwrap_or_default();
            for o in kids {
                if !self.pending.get(&o).is_some_and(|q| q.root == id && q.end.is_none()) {
                    continue; // resolved already, or ended and still waiting for its events
                }
                if let Some(q) = self.pending.remove(&o) {
                    give_back_all(&mut self.returns, c, &q.begin.rec);
                    c.counters.marks_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Without a driver every scope is CPU-timed ([`TimingSource::Cpu`]) as soon as it ends.
    fn resolve_cpu_only(&mut self, c: &Coarse, out: &mut Vec<ScopeGpuTime>) {
        self.roots.clear();
        while let Some(id) = self.ended.pop_front() {
            if let Some(p) = self.pending.remove(&id) {
                if p.root == id {
                    self.children.remove(&id);
                }
                let end = p.end.map(|e| e.cpu_ns).unwrap_or(p.begin.cpu_ns);
                c.counters.scopes_cpu_timed.fetch_add(1, Ordering::Relaxed);
                out.push(ScopeGpuTime {
                    id,
                    start_ns: p.begin.cpu_ns,
                    end_ns: end.max(p.begin.cpu_ns),
                    source: TimingSource::Cpu,
                    device: p.begin.rec.device,
                });
            }
        }
    }

    /// At exit: resolves until `deadline` (the application normally synchronized before
    /// exiting, so everything is complete), then CPU-times what is left of the ended
    /// scopes and gives every event back.
    pub fn finish(&mut self, c: &Coarse, deadline: Instant, out: &mut Vec<ScopeGpuTime>) {
        loop {
            let before = self.ended.len();
            self.resolve(c, out);
            if self.ended.is_empty() || Instant::now() >= deadline {
                break;
            }
            if self.ended.len() == before {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        while let Some(id) = self.ended.pop_front() {
            if let Some(p) = self.pending.get(&id) {
                let end = p.end.map(|e| e.cpu_ns).unwrap_or(p.begin.cpu_ns);
                out.push(ScopeGpuTime {
                    id,
                    start_ns: p.begin.cpu_ns,
                    end_ns: end.max(p.begin.cpu_ns),
                    source: TimingSource::CpuFallback,
                    device: p.begin.rec.device,
                });
                c.counters.scopes_cpu_timed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.children.clear();
        for (_, p) in self.pending.drain() {
            give_back_all(&mut self.returns, c, &p.begin.rec);
            if let Some(e) = &p.end {
                give_back_all(&mut self.returns, c, &e.rec);
            }
        }
        self.roots.clear();
        for a in self.anchors.drain(..) {
            // The anchor's event went back above with its root's begin, unless owned.
            if a.owned {
                self.returns.give_back(&c.pool, a.event);
            }
        }
        for e in self.end_anchors.drain(..) {
            self.returns.give_back(&c.pool, e.event);
        }
        self.returns.flush(&c.pool);
    }
}

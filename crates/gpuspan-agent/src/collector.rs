//! The collector's state ([`Collector`]): drains scope events and completed CUPTI buffers
//! from the [`Shared`] queues, decodes each buffer once, and keeps what the capture, the
//! spans and the flight recorder need. The thread that runs it is
//! [`crate::collector_thread`]; what else must see each scope event (windows, capture
//! rules) is told through [`ScopeObserver`], so this module knows nothing above it.
//!
//! Its lock is never held across `cuptiActivityFlushAll` (the buffer callback would then wait
//! on CUPTI's lock while CUPTI waits on ours, CUPTI-NOTES §1): flushes happen with the
//! [`Collector`] unlocked, and the callbacks themselves take no lock at all.

use crate::boundary_clock::{BoundaryClock, ClockPair, TickMap};
use crate::config::Config;
use crate::scope_names::QueuedScope;
use crate::thread_ring::Boundary;
use crate::shared::Shared;
use gpuspan_core::activity::ActivityRecord;
use gpuspan_core::classify::{Classifier, StageRules};
use gpuspan_core::join::ScopeTable;
use gpuspan_core::scope::{ScopeEvent, ScopeId};
use gpuspan_core::spans::corr_runs::CorrelationRuns;
use gpuspan_core::spans::{Finalized, SpanAssembler, SpanOptions};
use gpuspan_cupti::buffers::RawBuffer;
use gpuspan_cupti::decode::{decode_buffer_own_correlations_apart, DecodeStats, NameCache};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Steps a window starts with when the flight recorder is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Past {
    /// The recorder's ended steps, oldest first.
    pub ended: Vec<ScopeId>,
    /// Steps begun and not ended yet.
    pub in_progress: Vec<ScopeId>,
}

impl Past {
    /// How many steps.
    pub fn len(&self) -> usize {
        self.ended.len() + self.in_progress.len()
    }

    /// No step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What else sees each scope event the collector applies, and each scope whose GPU work
/// coarse timing saw finish: fine windows and the capture rules
/// ([`crate::collector_thread`]).
pub trait ScopeObserver {
    /// `ev` was applied to `c.scopes` (and the span assembler).
    fn scope_applied(&self, c: &Collector, ev: &ScopeEvent);
    /// Coarse timing resolved the GPU interval of scope `id`.
    fn gpu_done(&self, id: ScopeId);
}

/// A [`ScopeObserver`] that looks at nothing (tests, and drains where no window can be open).
pub struct NoObserver;

impl ScopeObserver for NoObserver {
    fn scope_applied(&self, _: &Collector, _: &ScopeEvent) {}
    fn gpu_done(&self, _: ScopeId) {}
}

/// What the collector has gathered.
#[derive(Debug)]
pub struct Collector {
    /// Scopes seen so far.
    pub scopes: ScopeTable,
    /// Decoded records, in arrival order (at most `GPUSPAN_MAX_RECORDS`), but for gpuspan's
    /// own external correlations, which are in `correlations`.
    pub records: Vec<ActivityRecord>,
    /// gpuspan's external correlations (kind CUSTOM2: correlation id → the scope the launch
    /// ran in) of the records held, as runs of consecutive ids (16 bytes a run, where each
    /// launch's record took 96 in `records`: a third of what fine mode held per launch, and
    /// of the collector's stores; issue 14, item 1). The capture's join reads them with
    /// the records (`JoinedEvents::with_correlations`).
    pub correlations: CorrelationRuns,
    /// A buffer's records decoded while `records` is at its limit: seen by the span
    /// assembler, then dropped (`records_dropped_limit`). Empty between buffers.
    over_limit: Vec<ActivityRecord>,
    /// Kernel-name interning.
    pub names: NameCache,
    /// Scope names by the keys the hot path sends ([`crate::scope_names`]).
    pub scope_names: crate::scope_names::NameTable,
    /// Stage classification, cached per kernel name.
    pub classifier: Classifier,
    /// Totals of all decoded buffers.
    pub decode_totals: DecodeStats,
    /// Span assembly (steps and requests as they complete).
    pub assembler: SpanAssembler,
    /// Path of the written capture, once written.
    pub written: Option<PathBuf>,
    /// [`finish`](crate::collector_thread::finish) ran (coarse mode writes nothing, so `written` cannot tell).
    pub finished: bool,
    /// Coarse mode: pending scope marks → scope GPU intervals.
    pub resolver: crate::coarse::resolve::Resolver,
    /// Converts boundary-clock readings into ns ([`crate::boundary_clock`]); the identity
    /// until activation sets the agent's.
    pub ticks: TickMap,
    times: Vec<gpuspan_core::spans::ScopeGpuTime>,
    /// Flight recorder: the last steps ended, oldest first (at most its step count).
    pub ring: std::collections::VecDeque<ScopeId>,
    /// Anomaly rules over finished steps and API errors.
    pub detector: gpuspan_core::triggers::AnomalyDetector,
    /// Rolling capture segments written so far (`crate::segment`; the exit capture is
    /// the next one).
    pub segment_seq: u64,
    /// Steps finished since the last segment.
    pub segment_steps: u64,
}

impl Collector {
    /// An empty collector using `rules` and span options `spans`.
    pub fn new(rules: StageRules, spans: SpanOptions) -> Collector {
        Collector {
            scopes: ScopeTable::new(),
            records: Vec::new(),
            correlations: CorrelationRuns::new(),
            over_limit: Vec::new(),
            names: NameCache::default(),
            scope_names: Default::default(),
            classifier: Classifier::new(rules),
            decode_totals: DecodeStats::default(),
            assembler: SpanAssembler::new(spans),
            written: None,
            finished: false,
            resolver: crate::coarse::resolve::Resolver::new(),
            ticks: TickMap::default(),
            times: Vec::new(),
            ring: std::collections::VecDeque::new(),
            detector: Default::default(),
            segment_seq: 0,
            segment_steps: 0,
        }
    }

    /// Finished steps and requests since the last call (`force`: everything, at exit).
    pub fn poll_spans(&mut self, now_ms: u64, force: bool) -> Finalized {
        self.assembler.poll(&self.scopes, now_ms, force)
    }

    /// Steps and requests complete by `now_ms`, between polls
    /// ([`gpuspan_core::spans::SpanAssembler::finalize_ready`]: no poll generation starts).
    pub fn finalize_ready_spans(&mut self, now_ms: u64) -> Finalized {
        self.assembler.finalize_ready(&self.scopes, now_ms, false)
    }

    fn feed_times(&mut self) {
        for t in self.times.drain(..) {
            self.assembler.observe_scope_time(&t, &self.scopes);
        }
    }

    /// Coarse mode at exit: resolves the remaining scope intervals (waiting at most
    /// `wait` for their events) and feeds them to the assembler.
    pub fn finish_coarse(&mut self, a: &Shared, wait: Duration) {
        if let Some(c) = &a.coarse {
            // Boundaries queued since the last drain (the exit drain came before).
            self.take_scope_events(a, &NoObserver);
            self.resolver.finish(c, Instant::now() + wait, &mut self.times);
            self.feed_times();
        }
    }

    /// Coarse mode: forgets the scopes of finalized requests and ended scopes outside any
    /// request, so the table holds only what is in flight (not while a window is open: its
    /// capture needs them). With the flight recorder on, scopes and records from the
    /// oldest recorded step's begin on are kept too.
    pub fn prune(&mut self, a: &Shared) {
        let cutoff_ns = match a.recorder_steps.get() {
            Some(&n) if self.ring.len() as u64 >= n => {
                self.ring.front().and_then(|s| self.scopes.get(*s)).map(|s| s.begin_ns)
            }
            Some(_) => return, // the ring is still filling: keep everything
            None => None,
        };
        let (asm, res) = (&self.assembler, &self.resolver);
        self.scopes.retain(|s| {
            s.end_ns.is_none()
                || cutoff_ns.is_some_and(|c| s.end_ns.is_some_and(|e| e >= c))
                || match s.attribution.request {
                    Some(r) => asm.is_open_request(r),
                    None => res.is_pending(s.id),
                }
        });
        if let Some(c) = cutoff_ns {
            prune_records_before(&mut self.records, &mut self.correlations, c);
        }
    }

    /// The flight recorder's steps a window starts with (none when it is off).
    pub fn past(&self, a: &Shared) -> Past {
        if a.recorder_steps.get().is_none() {
            return Default::default();
        }
        let mut in_progress: Vec<ScopeId> = self
            .scopes
            .iter_sorted()
            .iter()
            .filter(|s| s.end_ns.is_none() && matches!(s.kind, gpuspan_core::scope::ScopeKind::Step { .. }))
            .map(|s| s.id)
            .collect();
        in_progress.sort_unstable();
        Past { ended: self.ring.iter().copied().collect(), in_progress }
    }

    /// Flight recorder: a step ended; keep the last N.
    fn record_step_end(&mut self, a: &Shared, id: ScopeId) {
        let Some(&n) = a.recorder_steps.get() else { return };
        if !self.scopes.get(id).is_some_and(|s| matches!(s.kind, gpuspan_core::scope::ScopeKind::Step { .. })) {
            return;
        }
        self.ring.push_back(id);
        while self.ring.len() as u64 > n {
            self.ring.pop_front();
        }
    }

    /// Takes every queued scope boundary (scope events and coarse marks) into this collector:
    /// each thread's ring ([`crate::thread_ring`]), then the boundaries that were on the
    /// shared queue (threads without a ring, and boundaries made in a thread's teardown)
    /// before the rings were read, telling `obs` of each scope event. The boundary-clock map is
    /// calibrated first, so every reading drained is converted by a line through a pair taken
    /// after it ([`crate::boundary_clock`]).
    fn take_scope_events(&mut self, a: &Shared, obs: &dyn ScopeObserver) {
        if self.ticks.clock() == BoundaryClock::Tsc {
            self.ticks.calibrate(ClockPair::sample(&|| a.now_ns()));
        }
        // A thread moves from its ring to the shared queue when it exits (its later
        // boundaries, made in its teardown: `crate::thread_ring`), never back, so its ring's
        // boundaries come first. The shared queue's boundaries present now are counted, the
        // rings drained, then those boundaries taken (the queue is first in, first out, and
        // this is its one consumer): whatever a thread put on its ring before a boundary of
        // the shared queue counted here was published before that push, which the count's
        // read of the queue's tail saw, so the ring drain after it finds it. Boundaries queued
        // after the count wait for the next drain, behind the ring entries before them.
        let queued = a.scope_queue.len();
        a.thread_rings.drain(|b| self.take_boundary(a, obs, b));
        for _ in 0..queued {
            let Some(b) = a.scope_queue.pop() else { break };
            self.take_boundary(a, obs, b);
        }
    }

    /// One boundary: its reading converted to ns, its scope event applied, then its mark
    /// (coarse mode) taken by the resolver (an application thread queues both in one entry,
    /// so the scope a mark names is in the table before its interval is fed).
    fn take_boundary(&mut self, a: &Shared, obs: &dyn ScopeObserver, b: Boundary) {
        let ts_ns = self.ticks.to_ns(b.scope.ts_ticks());
        if !b.scope.name_dropped() {
            self.apply_queued(a, obs, b.scope, ts_ns);
        }
        if let (Some(m), Some(c)) = (b.gpu_mark(ts_ns), &a.coarse) {
            self.resolver.accept(m, c);
        }
    }

    /// One scope event from the hot path at `ts_ns`: its name resolved, applied to the scope
    /// table and the span assembler, and told to `obs`.
    fn apply_queued(&mut self, a: &Shared, obs: &dyn ScopeObserver, q: QueuedScope, ts_ns: u64) {
        let Some(ev) = self.scope_names.resolve(&a.scope_names, q, ts_ns) else {
            a.counters.scope_events_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.scopes.apply(&ev);
        self.assembler.observe_scope(&ev, &self.scopes);
        if let ScopeEvent::End { id, .. } = ev {
            self.record_step_end(a, id);
        }
        obs.scope_applied(self, &ev);
    }

    /// Drains both queues of `a` into this collector, telling `obs` of each scope event.
    pub fn drain(&mut self, a: &Shared, obs: &dyn ScopeObserver) {
        self.drain_limited(a, obs, DrainLimit::None);
    }

    /// [`Collector::drain`], but CUPTI buffers are decoded only until `until` passes (the
    /// exit budget); the rest stay in the queue. Returns whether the buffer queue was emptied.
    pub fn drain_until(&mut self, a: &Shared, obs: &dyn ScopeObserver, until: Instant) -> bool {
        self.drain_limited(a, obs, DrainLimit::Until(until))
    }

    /// [`Collector::drain`] within `limit`. Returns whether the buffer queue was emptied.
    pub fn drain_limited(&mut self, a: &Shared, obs: &dyn ScopeObserver, limit: DrainLimit<'_>) -> bool {
        self.take_scope_events(a, obs);
        if let Some(c) = &a.coarse {
            self.resolver.resolve(c, &mut self.times);
            for t in &self.times {
                obs.gpu_done(t.id);
            }
            self.feed_times();
        }
        // Buffers complete only where CUPTI was loaded and collecting.
        let Some(api) = &a.api else { return true };
        let next = api.next_record();
        let layouts = api.layouts();
        loop {
            let stop = match limit {
                DrainLimit::None => false,
                DrainLimit::Until(t) => Instant::now() >= t,
                DrainLimit::UntilSet(stop) => stop.load(Ordering::Acquire),
            };
            if stop {
                return a.completed_queue.is_empty();
            }
            let Some((addr, valid)) = a.completed_queue.pop() else { return true };
            // At the record limit a buffer is decoded aside: the span assembler still sees its
            // records, the capture drops them (counted). Decoded into `records` past the
            // limit, they made that vector double beyond it (256 Ki records, 19 MB, for the
            // 100 k of rolling segments) before the truncation below.
            let at_limit = self.records.len() >= a.config.max_records;
            // Coarse mode's spans come from scope intervals; its records (fine windows) only
            // go to the window's capture.
            let spans = a.coarse.is_none();
            let out = if at_limit { &mut self.over_limit } else { &mut self.records };
            let before = out.len();
            // gpuspan's external correlations go to the runs (not at the limit, where the
            // capture drops the buffer and its correlations with it) and to the span
            // assembler, never into `out` ([`take_own_correlation`]).
            let (correlations, assembler) = (&mut self.correlations, &mut self.assembler);
            let mut own = |corr: u32, scope: ScopeId| {
                take_own_correlation((!at_limit).then_some(&mut *correlations), spans.then_some(&mut *assembler), corr, scope)
            };
            // SAFETY: `addr` is a pool buffer CUPTI completed with `valid` bytes of records
            // laid out by the CUPTI whose GetNextRecord and layouts we pass; nobody else
            // touches it now.
            let st = unsafe { decode_buffer_own_correlations_apart(next, &layouts, addr as *mut u8, valid, &mut self.names, out, &mut own) };
            // SAFETY: decoded; the buffer goes back to the pool exactly once, and only its
            // `valid` bytes were written since the pool lent it zeroed (CUPTI fills buffers
            // from the start; a foreign buffer's copy is `valid` bytes long).
            unsafe { a.pool.give_back_written(RawBuffer(addr), valid) };
            a.counters.buffers_decoded.fetch_add(1, Ordering::Release);
            // Every device a kernel ran on is one the worker uses (NVML samples it).
            let mut last_device = None;
            let decoded = &out[before..];
            for r in decoded {
                if let ActivityRecord::Kernel(k) = r {
                    if last_device != Some(k.device_id) {
                        last_device = Some(k.device_id);
                        crate::nvml::note_cuda_device(i64::from(k.device_id));
                    }
                }
                if spans {
                    self.assembler.observe_record(r, &self.scopes, &mut self.classifier);
                }
            }
            // Every record decoded, gpuspan's external correlations (taken as runs) among them.
            a.counters.records_decoded.fetch_add(st.decoded, Ordering::Relaxed);
            if at_limit {
                a.counters.records_over_limit.fetch_add(st.decoded, Ordering::Relaxed);
                self.over_limit.clear();
            } else {
                if self.records.len() > a.config.max_records {
                    let over = self.records.len() - a.config.max_records;
                    self.records.truncate(a.config.max_records);
                    a.counters.records_over_limit.fetch_add(over as u64, Ordering::Relaxed);
                }
            }
            // The buffer that crossed the limit may have doubled the vector past it: what is
            // beyond half as much again goes back.
            let max = a.config.max_records;
            if self.records.capacity() > max.saturating_add(max / 2) {
                self.records.shrink_to(max);
            }
            self.decode_totals.decoded += st.decoded;
            self.decode_totals.skipped += st.skipped;
            self.decode_totals.invalid += st.invalid;
            self.decode_totals.incomplete_kernels += st.incomplete_kernels;
        }
    }
}

/// How long [`Collector::drain_limited`] decodes CUPTI buffers.
#[derive(Debug, Clone, Copy)]
pub enum DrainLimit<'a> {
    /// All of them.
    None,
    /// Until this instant (the exit budget).
    Until(Instant),
    /// Until this flag is set: the collector thread's rounds stop as soon as the agent
    /// starts finishing, so it lets go of the collector state at once.
    UntilSet(&'a AtomicBool),
}

/// Capture triggers from the `GPUSPAN_RULES` file (`[capture]`, see
/// [`gpuspan_core::triggers`]); none without a file. A bad `[capture]` part gets one warning
/// and no trigger.
pub fn load_triggers(config: &Config) -> gpuspan_core::triggers::Triggers {
    let Some(p) = &config.rules_path else { return Default::default() };
    let Ok(text) = std::fs::read_to_string(p) else { return Default::default() };
    gpuspan_core::triggers::Triggers::parse(&text).unwrap_or_else(|e| {
        crate::log::warn(&format!("GPUSPAN_RULES={}: [capture]: {e}; no capture trigger is active", p.display()));
        Default::default()
    })
}

/// Stage rules: built-in, plus the `GPUSPAN_RULES` file's rules first. A bad file gets one
/// warning naming it, and the built-in rules are used.
pub fn load_rules(config: &Config) -> StageRules {
    let Some(p) = &config.rules_path else { return StageRules::builtin() };
    match std::fs::read_to_string(p) {
        Ok(text) => StageRules::with_overrides(&text).unwrap_or_else(|e| {
            crate::log::warn(&format!("GPUSPAN_RULES={}: {e}; using built-in rules", p.display()));
            StageRules::builtin()
        }),
        Err(e) => {
            crate::log::warn(&format!("GPUSPAN_RULES={}: {e}; using built-in rules", p.display()));
            StageRules::builtin()
        }
    }
}

/// Where gpuspan's own external correlation (kind CUSTOM2: the API call of `corr` ran in
/// `scope`) goes as the collector decodes it
/// ([`gpuspan_cupti::decode::decode_buffer_own_correlations_apart`]): to the capture's
/// correlation runs (`None` when the capture drops the buffer at its record limit) and to the
/// span assembler (`None` in coarse mode). It is never stored as a record: storing each and
/// then moving them out (`take_correlations`, until issue 14 item 1's thirteenth part) was a
/// third of the records written and a pass that moved the rest.
pub fn take_own_correlation(correlations: Option<&mut CorrelationRuns>, assembler: Option<&mut SpanAssembler>, corr: u32, scope: ScopeId) {
    if let Some(c) = correlations {
        c.insert(corr, scope);
    }
    if let Some(s) = assembler {
        s.observe_external_correlation(corr, scope);
    }
}

/// Flight recorder: drops records that started before `cutoff_ns` (CUPTI ns), and the
/// external correlations (records and `correlations`) older than every record kept
/// (correlation ids grow with time). Records still in flight when their step left the ring
/// are kept, which only over-retains (a window's capture keeps its own steps' records alone).
pub fn prune_records_before(records: &mut Vec<ActivityRecord>, correlations: &mut CorrelationRuns, cutoff_ns: u64) {
    let start_of = |r: &ActivityRecord| match r {
        ActivityRecord::Kernel(k) => Some(k.start_ns),
        ActivityRecord::Memcpy(m) => Some(m.start_ns),
        ActivityRecord::Memset(m) => Some(m.start_ns),
        ActivityRecord::Api(x) => Some(x.start_ns),
        _ => None,
    };
    let min_corr = records
        .iter()
        .filter(|r| start_of(r).is_some_and(|t| t >= cutoff_ns))
        .map(|r| r.correlation_id())
        .min()
        .unwrap_or(u32::MAX);
    records.retain(|r| match start_of(r) {
        Some(t) => t >= cutoff_ns,
        None => r.correlation_id() >= min_corr,
    });
    correlations.remove_below(min_corr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::activity::{ApiDomain, ApiRecord, ExternalCorrelationRecord, KernelRecord};

    fn ext(kind: u32, corr: u32, scope: u64) -> ActivityRecord {
        ActivityRecord::ExternalCorrelation(ExternalCorrelationRecord { external_kind: kind, external_id: scope, correlation_id: corr })
    }

    fn api(corr: u32, start_ns: u64) -> ActivityRecord {
        ActivityRecord::Api(ApiRecord {
            domain: ApiDomain::Driver,
            cbid: 307,
            start_ns,
            end_ns: start_ns + 10,
            process_id: 1,
            thread_id: 1,
            correlation_id: corr,
            return_value: 0,
        })
    }

    fn kernel(corr: u32, start_ns: u64) -> ActivityRecord {
        ActivityRecord::Kernel(KernelRecord {
            name: "k".into(),
            start_ns,
            end_ns: start_ns + 100,
            device_id: 0,
            context_id: 1,
            stream_id: 7,
            correlation_id: corr,
            grid: [1, 1, 1],
            block: [1, 1, 1],
            registers_per_thread: 0,
            static_shared_memory_bytes: 0,
            dynamic_shared_memory_bytes: 0,
            graph_id: 0,
        })
    }

    /// gpuspan's external correlation goes to the runs and to the span assembler, either
    /// left out when not given (the record limit, coarse mode).
    #[test]
    fn an_own_external_correlation_goes_to_the_runs_and_the_span_assembler() {
        let mut runs = CorrelationRuns::new();
        let mut spans = SpanAssembler::new(SpanOptions::default());
        take_own_correlation(Some(&mut runs), Some(&mut spans), 2, 5);
        take_own_correlation(Some(&mut runs), None, 3, 5);
        take_own_correlation(None, None, 9, 6);
        assert_eq!((runs.get(2), runs.get(3), runs.get(9), runs.len(), runs.run_count()), (Some(5), Some(5), None, 2, 1));
        assert_eq!(spans.correlation_scope(2), Some(5), "the assembler was told");
        assert_eq!(spans.correlation_scope(3), None, "and only when given");
    }

    /// The flight recorder's pruning lets go of the runs of the calls older than every
    /// record it keeps, as it does of external-correlation records.
    #[test]
    fn pruning_drops_the_correlations_older_than_what_is_kept() {
        let mut records = vec![api(1, 10), kernel(1, 15), api(2, 20), kernel(2, 25), api(3, 40), kernel(3, 45), ext(1, 1, 777), ext(1, 3, 777)];
        let mut runs = CorrelationRuns::new();
        for corr in 1..=3 {
            runs.insert(corr, 5);
        }
        prune_records_before(&mut records, &mut runs, 22);
        assert_eq!(records, [kernel(2, 25), api(3, 40), kernel(3, 45), ext(1, 3, 777)]);
        assert_eq!((runs.get(1), runs.get(2), runs.get(3)), (None, Some(5), Some(5)));
    }
}

//! The collector thread: drains scope events and completed CUPTI buffers, decodes each
//! buffer once, and keeps what the capture needs.
//!
//! It never holds its own lock across `cuptiActivityFlushAll` (the buffer callback would
//! then wait on CUPTI's lock while CUPTI waits on ours, CUPTI-NOTES §1): flushes happen with
//! the [`Collector`] unlocked, and the callbacks themselves take no lock at all.

use crate::config::Config;
use crate::state::{agent, Agent};
use gpuspan_core::activity::ActivityRecord;
use gpuspan_core::classify::{Classifier, StageRules};
use gpuspan_core::join::ScopeTable;
use gpuspan_core::scope::{ScopeEvent, ScopeId};
use gpuspan_core::spans::{Finalized, SpanAssembler, SpanOptions};
use gpuspan_cupti::activity::FLUSH_FORCED;
use gpuspan_cupti::buffers::RawBuffer;
use gpuspan_cupti::decode::{decode_buffer, DecodeStats, NameCache};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the collector drains its queues.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(5);
/// How often it asks CUPTI for completed buffers (`cuptiActivityFlushAll(0)`).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait at exit for the events of scopes that ended (coarse mode); the
/// application has normally synchronized before exiting, so they are complete.
pub const COARSE_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Why coarse mode writes no `capture-<pid>.json.gz` at exit (kernel captures come from fine
/// windows, `gpuspan capture PID`).
pub const NO_COARSE_CAPTURE: &str = "coarse mode records no kernels: spans and metrics only (use `gpuspan capture PID` or GPUSPAN_MODE=fine for a kernel capture)";

/// How often it asks the span assembler for finished steps and requests.
pub const SPAN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What the collector has gathered.
#[derive(Debug)]
pub struct Collector {
    /// Scopes seen so far.
    pub scopes: ScopeTable,
    /// Decoded records, in arrival order.
    pub records: Vec<ActivityRecord>,
    /// Kernel-name interning.
    pub names: NameCache,
    /// Stage classification, cached per kernel name.
    pub classifier: Classifier,
    /// Totals of all decoded buffers.
    pub decode_totals: DecodeStats,
    /// Span assembly (steps and requests as they complete).
    pub assembler: SpanAssembler,
    /// Path of the written capture, once written.
    pub written: Option<PathBuf>,
    /// [`finish`] ran (coarse mode writes nothing, so `written` cannot tell).
    pub finished: bool,
    /// Coarse mode: pending scope marks → scope GPU intervals.
    pub resolver: crate::coarse::resolve::Resolver,
    times: Vec<gpuspan_core::spans::ScopeGpuTime>,
    /// Flight recorder: the last steps ended, oldest first (at most its step count).
    pub ring: std::collections::VecDeque<ScopeId>,
    /// Anomaly rules over finished steps and API errors.
    pub detector: gpuspan_core::triggers::AnomalyDetector,
}

impl Collector {
    /// An empty collector using `rules` and span options `spans`.
    pub fn new(rules: StageRules, spans: SpanOptions) -> Collector {
        Collector {
            scopes: ScopeTable::new(),
            records: Vec::new(),
            names: NameCache::default(),
            classifier: Classifier::new(rules),
            decode_totals: DecodeStats::default(),
            assembler: SpanAssembler::new(spans),
            written: None,
            finished: false,
            resolver: crate::coarse::resolve::Resolver::new(),
            times: Vec::new(),
            ring: std::collections::VecDeque::new(),
            detector: Default::default(),
        }
    }

    /// Finished steps and requests since the last call (`force`: everything, at exit).
    pub fn poll_spans(&mut self, now_ms: u64, force: bool) -> Finalized {
        self.assembler.poll(&self.scopes, now_ms, force)
    }

    fn feed_times(&mut self) {
        for t in self.times.drain(..) {
            self.assembler.observe_scope_time(&t, &self.scopes);
        }
    }

    /// Coarse mode at exit: resolves the remaining scope intervals (waiting at most
    /// `wait` for their events) and feeds them to the assembler.
    pub fn finish_coarse(&mut self, a: &Agent, wait: Duration) {
        if let Some(c) = &a.coarse {
            while let Some(m) = c.marks.pop() {
                self.resolver.accept(m, c);
            }
            self.resolver.finish(c, Instant::now() + wait, &mut self.times);
            self.feed_times();
        }
    }

    /// Coarse mode: forgets the scopes of finalized requests and ended scopes outside any
    /// request, so the table holds only what is in flight (not while a window is open: its
    /// capture needs them). With the flight recorder on, scopes and records from the
    /// oldest recorded step's begin on are kept too.
    pub fn prune(&mut self, a: &Agent) {
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
            prune_records_before(&mut self.records, c);
        }
    }

    /// The flight recorder's steps a window starts with (none when it is off).
    pub fn past(&self, a: &Agent) -> crate::window::Past {
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
        crate::window::Past { ended: self.ring.iter().copied().collect(), in_progress }
    }

    /// Flight recorder: a step ended; keep the last N.
    fn record_step_end(&mut self, a: &Agent, id: ScopeId) {
        let Some(&n) = a.recorder_steps.get() else { return };
        if !self.scopes.get(id).is_some_and(|s| matches!(s.kind, gpuspan_core::scope::ScopeKind::Step { .. })) {
            return;
        }
        self.ring.push_back(id);
        while self.ring.len() as u64 > n {
            self.ring.pop_front();
        }
    }

    /// Per-request rules: a request that begins and matches one opens a window on itself.
    fn apply_request_rules(&mut self, a: &Agent, id: ScopeId) {
        if a.triggers.request.is_empty() || a.windows.is_active() {
            return;
        }
        let Some(s) = self.scopes.get(id) else { return };
        let gpuspan_core::scope::ScopeKind::Request { traceparent, attrs } = &s.kind else { return };
        let (ctx, _) = gpuspan_core::spans::TraceContext::for_request(traceparent.as_deref(), attrs, self.assembler.options().seed, id);
        let decoded: Vec<(String, String)> = attrs
            .iter()
            .filter(|(k, _)| k != "tracestate" && k != "baggage")
            .map(|(k, v)| (gpuspan_core::spans::context::percent_decode(k), gpuspan_core::spans::context::percent_decode(v)))
            .collect();
        let facts = gpuspan_core::triggers::RequestFacts {
            trace_id: &ctx.trace_id,
            sampled: ctx.sampled,
            baggage: &ctx.baggage,
            attributes: &decoded,
        };
        let Some((i, rule)) = a.triggers.request.iter().enumerate().find(|(_, r)| r.matches(&facts)) else { return };
        let label = rule.label(i);
        let req = gpuspan_core::control::CaptureRequest { size: gpuspan_core::control::WindowSize::Requests(1), out: None };
        let past = self.past(a);
        match a.windows.open(a, &req, &format!("rule:{label}"), &past, Some(id)) {
            Ok(w) => crate::log::info(&format!(
                "rule {label}: request {} is captured fine (window {})",
                gpuspan_core::spans::ids::hex(&ctx.trace_id),
                w.id
            )),
            Err(e) => crate::log::info(&format!("rule {label} matched, no window: {e}")),
        }
    }

    /// Anomaly rules over the steps `f` finalized and the API error counters; opens a
    /// window on the next steps (with the recorder's past ones) when one fires.
    fn apply_anomaly_rules(&mut self, a: &Agent, f: &Finalized) {
        if self.detector.is_empty() {
            return;
        }
        let mut fired = None;
        for s in &f.steps {
            let x = self.detector.observe_step(&s.model, s.index, s.dur_ns);
            fired = fired.or(x);
        }
        let api = self.detector.observe_api_errors(
            a.counters.api_errors.load(Ordering::Relaxed),
            a.counters.api_ooms.load(Ordering::Relaxed),
        );
        let Some(an) = fired.or(api) else { return };
        if a.windows.is_active() {
            return;
        }
        let past = self.past(a);
        let req = gpuspan_core::control::CaptureRequest {
            size: gpuspan_core::control::WindowSize::Steps(an.capture_steps),
            out: None,
        };
        match a.windows.open(a, &req, &format!("anomaly:{}", an.label), &past, None) {
            Ok(w) => crate::log::warn(&format!(
                "anomaly {}: {}; capturing the next {} steps{} (window {})",
                an.label,
                an.reason,
                an.capture_steps,
                if past.is_empty() { String::new() } else { format!(" and the {} recorded before", past.len()) },
                w.id
            )),
            Err(e) => crate::log::info(&format!("anomaly {}: {}; no window: {e}", an.label, an.reason)),
        }
    }

    /// Drains both queues of `a` into this collector.
    pub fn drain(&mut self, a: &Agent) {
        self.drain_limited(a, DrainLimit::None);
    }

    /// [`Collector::drain`], but CUPTI buffers are decoded only until `until` passes (the
    /// exit budget); the rest stay in the queue. Returns whether the buffer queue was emptied.
    pub fn drain_until(&mut self, a: &Agent, until: Instant) -> bool {
        self.drain_limited(a, DrainLimit::Until(until))
    }

    fn drain_limited(&mut self, a: &Agent, limit: DrainLimit) -> bool {
        // Marks first: an application thread queues a scope's event before its mark, so
        // every scope a mark names is in the scope queue drained next, and in the table
        // before its interval is fed.
        if let Some(c) = &a.coarse {
            while let Some(m) = c.marks.pop() {
                self.resolver.accept(m, c);
            }
        }
        while let Some(ev) = a.scope_queue.pop() {
            self.scopes.apply(&ev);
            self.assembler.observe_scope(&ev, &self.scopes);
            a.windows.observe_scope(&ev, &self.scopes);
            match ev {
                ScopeEvent::End { id, .. } => self.record_step_end(a, id),
                ScopeEvent::Begin { id, .. } => self.apply_request_rules(a, id),
            }
        }
        if let Some(c) = &a.coarse {
            self.resolver.resolve(c, &mut self.times);
            for t in &self.times {
                a.windows.observe_gpu_done(t.id);
            }
            self.feed_times();
        }
        // Buffers complete only where CUPTI was loaded and collecting.
        let Some(api) = &a.api else { return true };
        let next = api.get_next_record_fn();
        let layouts = api.layouts();
        loop {
            let stop = match limit {
                DrainLimit::None => false,
                DrainLimit::Until(t) => Instant::now() >= t,
                DrainLimit::WhileRunning => STOP.load(Ordering::Acquire),
            };
            if stop {
                return a.completed_queue.is_empty();
            }
            let Some((addr, valid)) = a.completed_queue.pop() else { return true };
            let before = self.records.len();
            // SAFETY: `addr` is a pool buffer CUPTI completed with `valid` bytes of records
            // laid out by the CUPTI whose GetNextRecord and layouts we pass; nobody else
            // touches it now.
            let st = unsafe { decode_buffer(next, &layouts, addr as *mut u8, valid, &mut self.names, &mut self.records) };
            // SAFETY: decoded; the buffer goes back to the pool exactly once.
            unsafe { a.pool.give_back(RawBuffer(addr)) };
            // Coarse mode's spans come from scope intervals; its records (fine windows) only
            // go to the window's capture.
            if a.coarse.is_none() {
                for r in &self.records[before..] {
                    self.assembler.observe_record(r, &self.scopes, &mut self.classifier);
                }
            }
            let added = self.records.len() - before;
            a.counters.records_decoded.fetch_add(added as u64, Ordering::Relaxed);
            if self.records.len() > a.config.max_records {
                let over = self.records.len() - a.config.max_records;
                self.records.truncate(a.config.max_records);
                a.counters.records_over_limit.fetch_add(over as u64, Ordering::Relaxed);
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
enum DrainLimit {
    /// All of them.
    None,
    /// Until this instant (the exit budget).
    Until(Instant),
    /// Until [`finish`] stops the collector thread (the thread's own rounds), so it lets go
    /// of the collector state at once.
    WhileRunning,
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

static STOP: AtomicBool = AtomicBool::new(false);
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// Starts the collector thread (once).
pub fn start_thread() {
    let Ok(mut g) = THREAD.lock() else { return };
    if g.is_some() {
        return;
    }
    let h = std::thread::Builder::new().name("gpuspan-collector".into()).spawn(|| {
        let _ = std::panic::catch_unwind(run);
    });
    match h {
        Ok(h) => *g = Some(h),
        Err(e) => crate::log::warn(&format!("cannot start the collector thread: {e}")),
    }
}

/// Milliseconds since the collector's clock started (the span assembler's clock).
fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

fn run() {
    let Some(a) = agent() else { return };
    let mut relaxed = false;
    let start = *CLOCK_START.get_or_init(Instant::now);
    let mut last_flush = Instant::now();
    let mut last_poll = Instant::now();
    while !STOP.load(Ordering::Acquire) {
        std::thread::sleep(DRAIN_INTERVAL);
        if crate::entry::sigterm_seen() {
            finish_after_sigterm(a);
            break;
        }
        if let (true, true, Some(api)) = (last_flush.elapsed() >= FLUSH_INTERVAL, a.fine_on.load(Ordering::Acquire), &a.api) {
            // Unlocked: the completion callback must be able to run during the flush.
            let _ = api.flush_all(0);
            last_flush = Instant::now();
        }
        // This thread queries events while the application may hold a stream capture open in
        // GLOBAL mode: in RELAXED mode those queries never invalidate it (CUPTI-NOTES §6b).
        // Activation runs inside `cuInit`, so the driver may not answer yet: retried each
        // round until it does (no event exists before `cuInit` has returned).
        if !relaxed {
            relaxed = relax_capture_mode(a);
        }
        let mut done = None;
        if let Ok(mut c) = a.collector.lock() {
            c.drain_limited(a, DrainLimit::WhileRunning);
            if last_poll.elapsed() >= SPAN_POLL_INTERVAL {
                last_poll = Instant::now();
                let f = c.poll_spans(now_ms(start), false);
                c.apply_anomaly_rules(a, &f);
                done = Some((f, c.assembler.take_context_problems()));
                if a.coarse.is_some() && !a.windows.is_active() {
                    c.prune(a);
                }
            }
        }
        if let (true, Some(api)) = (a.fine_on.load(Ordering::Acquire), &a.api) {
            if let Ok(n) = api.dropped_records() {
                a.counters.cupti_records_dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        report_coarse_fallbacks(a);
        report_foreign_buffers(a);
        // Flushing CUPTI happens without the collector lock (see the module docs).
        if a.windows.ready_to_close() {
            a.windows.close(a, false, None);
        }
        // Outside the collector lock: exporting never delays draining.
        if let Some((f, problems)) = done {
            a.telemetry.report_context_problems(problems);
            if !f.is_empty() {
                a.telemetry.publish(f);
            }
            a.telemetry.update_counters(a);
        }
    }
}

static CLOCK_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// SIGTERM arrived while CUPTI collected ([`crate::entry::install_sigterm_handler`]): on a
/// thread of its own (finishing joins this collector thread), write what was collected,
/// marked partial (`gpuspan.partial`), then end the process as SIGTERM would have.
fn finish_after_sigterm(a: &'static Agent) {
    a.counters.terminated_by_signal.store(1, Ordering::Relaxed);
    let window = a.windows.is_active();
    let finish = move || {
        let _ = std::panic::catch_unwind(|| match crate::state::flush_capture() {
            Ok(p) => crate::log::warn(&format!("SIGTERM: wrote what was collected to {} (marked partial)", p.display())),
            Err(e) if e == NO_COARSE_CAPTURE && window => {
                crate::log::warn("SIGTERM: wrote what the open capture window collected (marked partial)")
            }
            Err(e) if e == NO_COARSE_CAPTURE => {}
            Err(e) => crate::log::warn(&format!("SIGTERM: capture not written: {e}")),
        });
        crate::entry::reraise_sigterm();
    };
    if std::thread::Builder::new().name("gpuspan-exit".into()).spawn(finish).is_err() {
        crate::entry::reraise_sigterm();
    }
}

/// Puts the collector thread in RELAXED capture mode (coarse mode: the only agent thread that
/// queries events). False while the driver is not initialised yet (`cuInit` still running);
/// true once done, and also when it cannot be done for another reason (one warning; an old
/// driver without the call has no graphs either), or when there is nothing to relax.
fn relax_capture_mode(a: &Agent) -> bool {
    let Some(ev) = a.coarse.as_ref().and_then(|c| c.events.as_ref()) else { return true };
    match ev.relax_thread_capture_mode() {
        Ok(()) => true,
        Err(gpuspan_cupti::events::CUDA_ERROR_NOT_INITIALIZED) => false,
        Err(code) => {
            crate::log::warn(&format!(
                "cuThreadExchangeStreamCaptureMode(RELAXED) failed ({code}): coarse timing may invalidate CUDA-graph captures of other threads"
            ));
            true
        }
    }
}

/// The flight recorder's steps a window starts with ([`Collector::past`]); takes the
/// collector lock.
pub fn recorder_past(a: &Agent) -> crate::window::Past {
    if a.recorder_steps.get().is_none() {
        return Default::default();
    }
    a.collector.lock().map(|c| c.past(a)).unwrap_or_default()
}

/// Flight recorder: drops records that started before `cutoff_ns` (CUPTI ns), and the
/// external-correlation records older than every record kept (correlation ids grow with
/// time). Records still in flight when their step left the ring are kept, which only
/// over-retains (a window's capture keeps its own steps' records alone).
pub fn prune_records_before(records: &mut Vec<ActivityRecord>, cutoff_ns: u64) {
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
}

/// One warning the first time another CUPTI activity client's buffer reached our completion
/// callback (the callback only counts and leaves it alone).
fn report_foreign_buffers(a: &Agent) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let n = a.counters.foreign_buffers.load(Ordering::Relaxed);
    if n > 0 && !WARNED.swap(true, Ordering::Relaxed) {
        crate::log::warn(&format!(
            "{n} CUPTI activity buffer(s) lent by another activity client (torch.profiler / Kineto?) reached gpuspan's completion callback: their records were copied and the buffers left untouched, but that client will not get them back"
        ));
    }
}

/// One warning the first time coarse timing had to fall back to CPU times (the hot path
/// only counts).
fn report_coarse_fallbacks(a: &Agent) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(c) = &a.coarse else { return };
    let exhausted = c.counters.pool_exhausted.load(Ordering::Relaxed);
    let errors = c.counters.event_errors.load(Ordering::Relaxed);
    if (exhausted > 0 || errors > 0) && !WARNED.swap(true, Ordering::Relaxed) {
        let why = if exhausted > 0 {
            format!(
                "the CUDA event pool (GPUSPAN_EVENT_POOL={}) was exhausted",
                c.pool.capacity()
            )
        } else {
            "the driver refused an event call (no CUDA context on the thread, or cuInit not called yet)".to_string()
        };
        crate::log::warn(&format!(
            "coarse mode: {why}; {} scope boundaries so far were timed on the CPU side (gpuspan.timing=cpu_fallback)",
            exhausted + errors
        ));
    }
}

/// The exit budget (`GPUSPAN_EXIT_BUDGET`) of one [`finish`], in phases: the agent's threads
/// stop within the first quarter, CUPTI hands over its last buffers by three eighths,
/// decoding, coarse events and spans are done by half ([`ExitBudget::collect_deadline`]),
/// and the capture write stops at [`ExitBudget::deadline`]. A phase that overruns (a thread
/// or CUPTI stuck on a lock of the thread that called `exit`) costs only its own share.
#[derive(Debug, Clone, Copy)]
pub struct ExitBudget {
    start: Instant,
    total: Duration,
}

impl ExitBudget {
    /// A budget of `total` starting now.
    pub fn start(total: Duration) -> ExitBudget {
        ExitBudget { start: Instant::now(), total }
    }
    /// When the agent's threads must have stopped: a quarter of the budget (a thread stuck
    /// in a CUDA / CUPTI call is left behind then).
    pub fn threads_deadline(&self) -> Instant {
        self.start + self.total / 4
    }
    /// When CUPTI must have handed over its last buffers: three eighths of the budget.
    pub fn cupti_deadline(&self) -> Instant {
        self.start + self.total * 3 / 8
    }
    /// When collecting (threads, CUPTI, decoding, spans) must be done: half the budget.
    pub fn collect_deadline(&self) -> Instant {
        self.start + self.total / 2
    }
    /// When everything must be done.
    pub fn deadline(&self) -> Instant {
        self.start + self.total
    }
    /// Time left until `until`, zero when past.
    pub fn left(until: Instant) -> Duration {
        until.saturating_duration_since(Instant::now())
    }
    /// Milliseconds since the start.
    pub fn elapsed_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }
}

/// Waits until `h` has finished or `until` passed (polling every ms): joins it if it
/// finished, else leaves it running (it exits with the process) and says so.
fn join_until(h: std::thread::JoinHandle<()>, until: Instant) -> bool {
    while !h.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    if h.is_finished() {
        let _ = h.join();
        true
    } else {
        false
    }
}

/// Runs `f` on a thread of its own named `name` and waits for it at most until `until`:
/// `Some(result)`, or `None` when it did not finish in time (it goes on, detached, and ends
/// with the process) or no thread could be made (then `f` runs here, unbounded).
pub(crate) fn run_bounded<R: Send + 'static>(name: &str, until: Instant, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let f = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let g = f.clone();
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        if let Some(f) = g.lock().ok().and_then(|mut x| x.take()) {
            let _ = tx.send(f());
        }
    });
    match spawned {
        Ok(_) => rx.recv_timeout(until.saturating_duration_since(Instant::now())).ok(),
        Err(_) => f.lock().ok().and_then(|mut x| x.take()).map(|f| f()),
    }
}

/// Takes the collector lock, waiting at most until `until` (the collector thread may still
/// hold it when it did not stop in time).
pub(crate) fn lock_until(a: &Agent, until: Instant) -> Result<std::sync::MutexGuard<'_, Collector>, String> {
    loop {
        match a.collector.try_lock() {
            Ok(g) => return Ok(g),
            Err(std::sync::TryLockError::Poisoned(_)) => return Err("collector state poisoned".into()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() >= until => {
                return Err("the collector thread still held its state when the exit budget ran out".into())
            }
            Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Stops collection, flushes CUPTI (complete records first, then a forced flush for the
/// rest), disables the activity kinds, releases the CUPTI subscriber, stops the agent's
/// threads (collector, control socket, NVML sampler, OTLP export) and writes the capture,
/// all within the exit budget ([`ExitBudget`], `GPUSPAN_EXIT_BUDGET`): buffers not decoded
/// by half the budget are counted (`gpuspan.buffers_unread_exit_budget`), events not
/// written by its end are cut (`gpuspan.events_cut_exit_budget`); either marks the capture
/// partial. Idempotent: later calls return the first path.
pub fn finish(a: &'static Agent) -> Result<PathBuf, String> {
    let budget = ExitBudget::start(a.config.exit_budget);
    // One finish at a time (the exit handler, `flush_capture`, the SIGTERM path): a second
    // caller waits for the first (itself bounded) and returns its outcome, so the capture is
    // written once.
    static FINISHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = loop {
        match FINISHING.try_lock() {
            Ok(g) => break g,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() >= budget.deadline() => {
                return Err("another finish (a flush or the exit handler) was still running when the exit budget ran out".into())
            }
            Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    if let Some((written, finished)) = lock_until(a, budget.collect_deadline()).ok().map(|c| (c.written.clone(), c.finished)) {
        match written {
            Some(p) => return Ok(p),
            None if finished => return Err(NO_COARSE_CAPTURE.into()),
            None => {}
        }
    }
    let collect_by = budget.collect_deadline();
    STOP.store(true, Ordering::Release);
    if let Some(h) = THREAD.lock().ok().and_then(|mut g| g.take()) {
        if !join_until(h, budget.threads_deadline()) {
            crate::log::warn("the collector thread did not stop within the exit budget");
        }
    }
    crate::control::stop(budget.threads_deadline());
    a.telemetry.stop_sampler(budget.threads_deadline());
    let t_threads = budget.elapsed_ms();
    a.collecting.store(false, Ordering::Release);
    if a.windows.is_active() {
        a.windows.close(a, true, Some(budget.deadline()));
    }
    // CUPTI may wait for a lock held by the thread that called exit (a signal handler that
    // interrupted it inside a CUDA call): bounded, and what it does not hand over in time is
    // counted and the capture marked partial.
    let release = move || {
        if let (true, Some(api)) = (a.fine_on.swap(false, Ordering::AcqRel), &a.api) {
            let _ = api.flush_all(0);
            let _ = api.flush_all(FLUSH_FORCED);
            if let Ok(n) = api.dropped_records() {
                a.counters.cupti_records_dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
            api.disable_fine_kinds();
        }
        if let (Some(s), Some(api)) = (a.subscriber.lock().ok().and_then(|mut g| g.take()), &a.api) {
            let _ = api.unsubscribe(s);
        }
    };
    if run_bounded("gpuspan-cupti-release", budget.cupti_deadline(), release).is_none() {
        a.counters.cupti_flush_timed_out.store(1, Ordering::Relaxed);
        crate::log::warn("CUPTI did not hand over its last buffers within the exit budget (a CUDA call interrupted by exit?); the capture holds what was decoded before and is marked partial");
    }
    let t_flush = budget.elapsed_ms();
    let mut c = lock_until(a, collect_by)?;
    c.drain_until(a, collect_by);
    let unread = a.completed_queue.len() as u64;
    if unread > 0 {
        a.counters.buffers_unread_at_exit.fetch_add(unread, Ordering::Relaxed);
        crate::log::warn(&format!(
            "the exit budget (GPUSPAN_EXIT_BUDGET={:?}) ran out with {unread} CUPTI buffer(s) not decoded; the capture is marked partial",
            a.config.exit_budget
        ));
    }
    let t_decode = budget.elapsed_ms();
    c.finish_coarse(a, COARSE_EXIT_WAIT.min(ExitBudget::left(collect_by)));
    report_coarse_fallbacks(a);
    if let Some(co) = &a.coarse {
        let k = &co.counters;
        let l = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        crate::log::info(&format!(
            "coarse timing: {} scopes timed with CUDA events, {} on the CPU side (event pool exhausted {}, driver errors {}, marks dropped {}); {} events made",
            l(&k.scopes_timed),
            l(&k.scopes_cpu_timed),
            l(&k.pool_exhausted),
            l(&k.event_errors),
            l(&k.marks_dropped),
            co.pool.created()
        ));
    }
    let start = *CLOCK_START.get_or_init(Instant::now);
    let last = c.poll_spans(now_ms(start), true);
    a.telemetry.report_context_problems(c.assembler.take_context_problems());
    a.telemetry.publish(last);
    a.telemetry.shutdown(a, ExitBudget::left(collect_by));
    let t_spans = budget.elapsed_ms();
    c.finished = true;
    if a.config.mode == crate::config::Mode::Coarse {
        return Err(NO_COARSE_CAPTURE.into());
    }
    let path = crate::capture::write(a, &mut c, Some(budget.deadline()));
    crate::log::info(&format!(
        "finished in {} ms of a {:?} budget: threads {t_threads} ms, CUPTI flush {} ms, decode {} ms, spans {} ms, capture {} ms",
        budget.elapsed_ms(),
        a.config.exit_budget,
        t_flush - t_threads,
        t_decode - t_flush,
        t_spans - t_decode,
        budget.elapsed_ms() - t_spans
    ));
    let path = path?;
    c.written = Some(path.clone());
    Ok(path)
}

//! The collector thread and the agent's finishing work: every 5 ms it drains the queues
//! into the [`Collector`], tells the fine windows and the capture rules of each scope
//! ([`Observer`]), every 100 ms polls the span assembler (and after each drain, while it
//! holds [`EARLY_FINALIZE_HELD`] records or more, takes the steps already complete), hands
//! finished spans to telemetry, closes windows whose steps are done, and notices SIGTERM;
//! [`finish`] stops it and everything else within the exit budget.

use crate::agent::Agent;
use crate::bounded::{join_until, lock_until, run_bounded, ExitBudget};
use crate::collector::{Collector, DrainLimit, ScopeObserver};
use gpuspan_core::scope::{ScopeEvent, ScopeId};
use gpuspan_core::spans::Finalized;
use gpuspan_cupti::activity::FLUSH_FORCED;
use gpuspan_export::kineto::gzip::thread_cpu_ns;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// GPU records held by the span assembler above which the collector also finalizes what is
/// complete after each drain, between polls (about 1.8 MB at 112 bytes a record). 100 ms
/// of a flood at 1 M kernels a second is 100,000 records that complete steps hold only until
/// the next poll; below this (100 ms at 160,000 kernels a second) the polls alone keep up.
pub const EARLY_FINALIZE_HELD: usize = 16_384;

/// What sees each scope event the collector applies: the fine windows (arming, opening,
/// closing on step boundaries) and the per-request capture rules.
pub struct Observer<'a>(pub &'a Agent);

impl ScopeObserver for Observer<'_> {
    fn scope_applied(&self, c: &Collector, ev: &ScopeEvent) {
        let a = self.0;
        a.windows.observe_scope(ev, &c.scopes);
        if let ScopeEvent::Begin { id, .. } = ev {
            apply_request_rules(c, a, *id);
        }
    }
    fn gpu_done(&self, id: ScopeId) {
        self.0.windows.observe_gpu_done(id);
    }
}

/// Per-request rules: a request that begins and matches one opens a window on itself.
fn apply_request_rules(c: &Collector, a: &Agent, id: ScopeId) {
    if a.triggers.request.is_empty() || a.windows.is_active() {
        return;
    }
    let Some(s) = c.scopes.get(id) else { return };
    let gpuspan_core::scope::ScopeKind::Request { traceparent, attrs } = &s.kind else { return };
    let (ctx, _) = gpuspan_core::spans::TraceContext::for_request(traceparent.as_deref(), attrs, c.assembler.options().seed, id);
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
    let past = c.past(a);
    match a.windows.open(a, &req, &format!("rule:{label}"), &past, Some(id)) {
        Ok(w) => crate::log::info(&format!(
            "rule {label}: request {} is captured fine (window {})",
            gpuspan_core::spans::ids::hex(&ctx.trace_id),
            w.id
        )),
        Err(e) => crate::log::info(&format!("rule {label} matched, no window: {e}")),
    }
}

/// The log events of one collector round (`crate::log`): `generation.step.completed`
/// (DEBUG) per finished step, `cuda.oom` (ERROR) when the OOM count rose, `records.dropped`
/// (WARN, at most one per [`DROP_LOG_INTERVAL`]) when a drop counter rose. `scopes`: the
/// scope table when the caller holds the collector (at exit); else it is locked briefly
/// (`try_lock`) to name the OOM's step, and an OOM whose scope the collector has not seen
/// yet waits for a later round (at most [`OOM_LOG_ROUNDS`]).
fn log_events(a: &Agent, f: &Finalized, scopes: Option<&gpuspan_core::join::ScopeTable>) {
    use tracing::Level;
    static OOMS_SEEN: AtomicU64 = AtomicU64::new(0);
    static DROPS_SEEN: AtomicU64 = AtomicU64::new(0);
    static DROP_LOGGED: Mutex<Option<Instant>> = Mutex::new(None);
    if crate::log::enabled(Level::DEBUG) {
        let mem_gb = crate::nvml::own_memory_used_bytes().map(|b| b as f64 / 1e9);
        for s in &f.steps {
            let mut fl = crate::log::Fields {
                request_id: Some(s.request_id.to_string()),
                trace_id: Some(s.trace_id),
                span_id: Some(s.span_id),
                ..Default::default()
            };
            fl.context.insert("model".into(), s.model.as_ref().into());
            fl.context.insert("step".into(), s.index.into());
            fl.context.insert("total_steps".into(), s.total.map_or(serde_json::Value::Null, Into::into));
            fl.context.insert("step_duration_ms".into(), (s.dur_ns as f64 / 1e6).into());
            fl.context.insert("gpu_memory_used_gb".into(), mem_gb.map_or(serde_json::Value::Null, Into::into));
            let msg = format!("step {} of {} finished in {:.3} ms", s.index, s.model, s.dur_ns as f64 / 1e6);
            crate::log::event(Level::DEBUG, "generation.step.completed", &msg, &fl);
        }
    }
    static OOM_WAITED: AtomicU64 = AtomicU64::new(0);
    let ooms = a.counters.api_ooms.load(Ordering::Relaxed);
    if ooms > OOMS_SEEN.load(Ordering::Relaxed) {
        let scope = a.counters.last_oom_scope.load(Ordering::Relaxed);
        let mut fl = crate::log::Fields::default();
        let mut step_name = "outside any step".to_string();
        let mut describe = |table: &gpuspan_core::join::ScopeTable| -> bool {
            let info = table.get(scope);
            if scope != 0 && info.is_none() {
                return false; // its Begin is still queued
            }
            let step = info.and_then(|s| s.attribution.step).and_then(|id| table.get(id));
            if let Some(gpuspan_core::scope::ScopeKind::Step { index, count }) = step.map(|s| &s.kind) {
                step_name = format!("step {index}");
                fl.context.insert("step".into(), (*index).into());
                fl.context.insert("total_steps".into(), count.map_or(serde_json::Value::Null, Into::into));
            }
            if let Some(r) = info.and_then(|s| s.attribution.request) {
                fl.request_id = Some(r.to_string());
            }
            true
        };
        let described = match scopes {
            Some(t) => describe(t),
            None => a.collector.try_lock().map(|c| describe(&c.scopes)).unwrap_or(false),
        };
        if described || scopes.is_some() || OOM_WAITED.fetch_add(1, Ordering::Relaxed) >= OOM_LOG_ROUNDS {
            OOM_WAITED.store(0, Ordering::Relaxed);
            OOMS_SEEN.store(ooms, Ordering::Relaxed);
            fl.extra.insert("ooms".into(), ooms.into());
            crate::log::event(Level::ERROR, "cuda.oom", &format!("CUDA OOM during DiT {step_name}"), &fl);
        }
    }
    let coarse_marks = a.coarse.as_ref().map_or(0, |c| c.counters.marks_dropped.load(Ordering::Relaxed));
    let by_reason = [
        ("cupti", a.counters.cupti_records_dropped.load(Ordering::Relaxed)),
        ("record_limit", a.counters.records_over_limit.load(Ordering::Relaxed)),
        ("scope_queue", a.counters.scope_events_dropped.load(Ordering::Relaxed)),
        ("buffer_queue", a.counters.buffers_dropped.load(Ordering::Relaxed)),
        ("coarse_marks", coarse_marks),
        ("log_lines", crate::log::json_lines_dropped()),
    ];
    let total: u64 = by_reason.iter().map(|(_, n)| n).sum();
    if total > DROPS_SEEN.load(Ordering::Relaxed) {
        let mut last = DROP_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
            let new = total - DROPS_SEEN.swap(total, Ordering::Relaxed);
            *last = Some(Instant::now());
            let mut fl = crate::log::Fields::default();
            fl.extra.insert("dropped".into(), new.into());
            let reasons: serde_json::Map<String, serde_json::Value> =
                by_reason.iter().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_string(), (*n).into())).collect();
            fl.extra.insert("dropped_total_by_reason".into(), reasons.into());
            crate::log::event(Level::WARN, "records.dropped", &format!("{new} records dropped since the last report ({total} in all)"), &fl);
        }
    }
}

/// Collector rounds an OOM report waits for its scope to reach the collector.
pub const OOM_LOG_ROUNDS: u64 = 20;

/// Shortest interval between two `records.dropped` log events.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Anomaly rules over the steps `f` finalized and the API error counters; opens a window on
/// the next steps (with the recorder's past ones) when one fires.
fn apply_anomaly_rules(c: &mut Collector, a: &Agent, f: &Finalized) {
    if c.detector.is_empty() {
        return;
    }
    let mut fired = None;
    for s in &f.steps {
        let x = c.detector.observe_step(&s.model, s.index, s.dur_ns);
        fired = fired.or(x);
    }
    let api = c.detector.observe_api_errors(
        a.counters.api_errors.load(Ordering::Relaxed),
        a.counters.api_ooms.load(Ordering::Relaxed),
    );
    let Some(an) = fired.or(api) else { return };
    if a.windows.is_active() {
        return;
    }
    let past = c.past(a);
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


static STOP: AtomicBool = AtomicBool::new(false);
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// Starts the collector thread (once).
pub fn start_thread(a: &'static Agent) {
    let Ok(mut g) = THREAD.lock() else { return };
    if g.is_some() {
        return;
    }
    let h = std::thread::Builder::new().name("gpuspan-collector".into()).spawn(move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(a)));
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

fn run(a: &'static Agent) {
    let mut relaxed = false;
    let start = *CLOCK_START.get_or_init(Instant::now);
    let mut last_flush = Instant::now();
    let mut last_poll = Instant::now();
    // Rolling capture segments are written on a thread of their own (started with the
    // first one), so draining goes on meanwhile.
    let mut segment_writer: Option<crate::segment::SegmentWriter> = None;
    crate::unload::set_collector_running(true);
    while !STOP.load(Ordering::Acquire) {
        std::thread::sleep(DRAIN_INTERVAL);
        if crate::signals::sigterm_seen() {
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
            c.drain_limited(a, &Observer(a), DrainLimit::UntilSet(&STOP));
            if last_poll.elapsed() >= SPAN_POLL_INTERVAL {
                last_poll = Instant::now();
                let f = c.poll_spans(now_ms(start), false);
                apply_anomaly_rules(&mut c, a, &f);
                let idle = segment_writer.as_ref().is_none_or(|w| w.idle());
                let mut segment = crate::segment::take(&mut c, a, f.steps.len(), idle).map(|s| (s, None));
                if let Some((_, inline)) = segment.as_mut().filter(|_| segment_writer.is_none()) {
                    let (classifier, seed) = (c.classifier.clone(), c.assembler.options().seed);
                    segment_writer = crate::segment::SegmentWriter::start(&a.shared, &a.telemetry, classifier.clone(), seed);
                    if segment_writer.is_none() {
                        *inline = Some((classifier, seed)); // no thread: written here
                    }
                }
                done = Some((f, c.assembler.take_context_problems(), segment));
                if a.coarse.is_some() && !a.windows.is_active() {
                    c.prune(a);
                }
            } else if c.assembler.held_gpu() >= EARLY_FINALIZE_HELD {
                // Under load, between polls: what is complete goes now, not at the next poll.
                let f = c.finalize_ready_spans(now_ms(start));
                if !f.is_empty() {
                    apply_anomaly_rules(&mut c, a, &f);
                    // Its steps count toward the next segment; the next poll cuts it.
                    let none = crate::segment::take(&mut c, a, f.steps.len(), false);
                    debug_assert!(none.is_none());
                    done = Some((f, Vec::new(), None));
                }
            }
        }
        if let (true, Some(api)) = (a.fine_on.load(Ordering::Acquire), &a.api) {
            if let Ok(n) = api.dropped_records() {
                a.counters.cupti_records_dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        report_coarse_fallbacks(a);
        report_coarse_pool(a);
        report_foreign_buffers(a);
        // Flushing CUPTI happens without the collector lock (see the module docs).
        if a.windows.ready_to_close() {
            a.windows.close(a, &a.collector, &a.telemetry, false, None);
        }
        // Outside the collector lock: exporting never delays draining.
        if let Some((f, problems, segment)) = done {
            log_events(a, &f, None);
            a.telemetry.report_context_problems(problems);
            if !f.is_empty() {
                a.telemetry.publish(f);
            }
            a.telemetry.update_counters(a);
            match (segment, &segment_writer) {
                (Some((seg, None)), Some(w)) => w.send(seg),
                (Some((seg, Some((mut classifier, seed)))), _) => {
                    if let Err(e) = crate::segment::write(a, &a.telemetry, &seg, &mut classifier, seed) {
                        crate::log::warn(&format!("capture segment {}: {e}", seg.seq));
                    }
                }
                _ => {}
            }
        }
    }
    crate::unload::set_collector_running(false);
    COLLECTOR_CPU_NS.store(thread_cpu_ns(), Ordering::Relaxed);
}

/// The collector thread's CPU time when it stopped, ns (the exit report's; issue 14,
/// item 1).
static COLLECTOR_CPU_NS: AtomicU64 = AtomicU64::new(0);

static CLOCK_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// SIGTERM arrived while CUPTI collected ([`crate::signals::install_sigterm_handler`]): on a
/// thread of its own (finishing joins this collector thread), write what was collected,
/// marked partial (`gpuspan.partial`), then end the process as SIGTERM would have.
fn finish_after_sigterm(a: &'static Agent) {
    a.counters.terminated_by_signal.store(1, Ordering::Relaxed);
    let window = a.windows.is_active();
    let work = move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match finish(a) {
            Ok(p) => crate::log::warn(&format!("SIGTERM: wrote what was collected to {} (marked partial)", p.display())),
            Err(e) if e == NO_COARSE_CAPTURE && window => {
                crate::log::warn("SIGTERM: wrote what the open capture window collected (marked partial)")
            }
            Err(e) if e == NO_COARSE_CAPTURE => {}
            Err(e) => crate::log::warn(&format!("SIGTERM: capture not written: {e}")),
        }));
        crate::signals::reraise_sigterm();
    };
    if std::thread::Builder::new().name("gpuspan-exit".into()).spawn(work).is_err() {
        crate::signals::reraise_sigterm();
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

/// One warning the first time another CUPTI activity client's buffer reached our completion
/// callback (the callback only counts and leaves it alone).
fn report_foreign_buffers(a: &Agent) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let n = a.counters.foreign_buffers.load(Ordering::Relaxed);
    if n > 0 && !WARNED.swap(true, Ordering::Relaxed) {
        if gpuspan_cupti::foreign_client::FOREIGN.is_known() {
            crate::log::info(&format!(
                "{n} CUPTI activity buffer(s) lent by another activity client (torch.profiler / Kineto?) reached gpuspan's completion callback: read and handed back to it; its later records are forwarded to it"
            ));
        } else {
            crate::log::warn(&format!(
                "{n} CUPTI activity buffer(s) lent by another activity client (torch.profiler / Kineto?) reached gpuspan's completion callback: their records were copied and the buffers left untouched, but that client will not get them back (preload libgpuspan.so so that gpuspan sees the client and returns them)"
            ));
        }
    }
}

/// One warning each, the first time: the event pool ran low (over 90 % of its events in
/// flight, before any boundary had to go without one), and root scopes were given up after
/// `GPUSPAN_SCOPE_TIMEOUT` (their events came back).
fn report_coarse_pool(a: &Agent) {
    static LOW: AtomicBool = AtomicBool::new(false);
    static STALE: AtomicBool = AtomicBool::new(false);
    let Some(c) = &a.coarse else { return };
    let cap = c.pool.capacity();
    let available = c.pool.free_len() + (cap - c.pool.created());
    if cap >= 10 && available < cap / 10 && !LOW.swap(true, Ordering::Relaxed) {
        crate::log::warn(&format!(
            "coarse mode: {} of the {cap} CUDA events of the pool are in flight (GPUSPAN_EVENT_POOL); scopes that never end hold theirs until GPUSPAN_SCOPE_TIMEOUT ({}), and a full pool times scopes on the CPU",
            cap - available,
            humantime::format_duration(c.root_timeout)
        ));
    }
    let stale = c.counters.roots_timed_out.load(Ordering::Relaxed);
    if stale > 0 && !STALE.swap(true, Ordering::Relaxed) {
        crate::log::warn(&format!(
            "coarse mode: {stale} request scope(s) still open after GPUSPAN_SCOPE_TIMEOUT ({}) were given up and their CUDA events returned to the pool (a gpuspan end / NVTX pop skipped on an error path?)",
            humantime::format_duration(c.root_timeout)
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

/// Stops collection, flushes CUPTI (complete records first, then a forced flush for the
/// rest), disables the activity kinds, releases the CUPTI subscriber, stops the agent's
/// threads (collector, control socket, NVML sampler, OTLP export) and writes the capture,
/// all within the exit budget ([`ExitBudget`], `GPUSPAN_EXIT_BUDGET`): buffers not decoded
/// by half the budget are counted (`gpuspan.buffers_unread_exit_budget`), events not
/// written by its end are cut (`gpuspan.events_cut_exit_budget`); either marks the capture
/// partial. Idempotent: later calls return the first path.
pub fn finish(a: &'static Agent) -> Result<PathBuf, String> {
    let budget = ExitBudget::start(a.config.exit_budget);
    let exit_cpu_start = thread_cpu_ns();
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
    // The collector thread lets go of its state at once when told to stop (it may be in
    // the middle of a large drain), so stop it before looking.
    STOP.store(true, Ordering::Release);
    crate::unload::set_collector_running(false);
    if let Some((written, finished)) = lock_until(&a.collector, budget.threads_deadline(), "the collector state").ok().map(|c| (c.written.clone(), c.finished)) {
        match written {
            Some(p) => return Ok(p),
            None if finished => return Err(NO_COARSE_CAPTURE.into()),
            None => {}
        }
    }
    let collect_by = budget.collect_deadline();
    if let Some(h) = THREAD.lock().ok().and_then(|mut g| g.take()) {
        if !join_until(h, budget.threads_deadline()) {
            crate::log::warn("the collector thread did not stop within the exit budget");
        }
    }
    if !crate::segment::join_writer(budget.threads_deadline()) {
        crate::log::warn("the capture segment being written was not finished within the exit budget");
    }
    crate::control::stop(budget.threads_deadline());
    a.telemetry.stop_sampler(budget.threads_deadline());
    let t_threads = budget.elapsed_ms();
    a.collecting.store(false, Ordering::Release);
    if a.windows.is_active() {
        a.windows.close(a, &a.collector, &a.telemetry, true, Some(&budget));
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
    let mut c = lock_until(&a.collector, collect_by, "the collector state")?;
    c.drain_until(a, &Observer(a), collect_by);
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
    report_coarse_pool(a);
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
    log_events(a, &last, Some(&c.scopes));
    a.telemetry.report_context_problems(c.assembler.take_context_problems());
    a.telemetry.publish(last);
    a.telemetry.shutdown(a, ExitBudget::left(collect_by));
    let t_spans = budget.elapsed_ms();
    c.finished = true;
    if a.config.mode == crate::config::Mode::Coarse {
        return Err(NO_COARSE_CAPTURE.into());
    }
    let path = crate::capture::write(a, &a.telemetry, &mut c, Some(budget.deadline()));
    crate::log::info(&format!(
        "finished in {} ms of a {:?} budget: threads {t_threads} ms, CUPTI flush {} ms, decode {} ms, spans {} ms, capture {} ms",
        budget.elapsed_ms(),
        a.config.exit_budget,
        t_flush - t_threads,
        t_decode - t_flush,
        t_spans - t_decode,
        budget.elapsed_ms() - t_spans
    ));
    // What the agent's own threads cost (`scripts/bench-agent-cpu.sh` reads this line):
    // the collector's run, this exit (the last decode, spans, the capture's join and JSON),
    // and every deflate worker of the process (the rolling segments' too). Not counted: the
    // segment writer's join and JSON, the control socket, NVML sampler and OTLP threads.
    crate::log::info(&format!(
        "agent threads' CPU: collector {:.3} ms, exit {:.3} ms, deflate {:.3} ms",
        COLLECTOR_CPU_NS.load(Ordering::Relaxed) as f64 / 1e6,
        thread_cpu_ns().saturating_sub(exit_cpu_start) as f64 / 1e6,
        gpuspan_export::kineto::gzip::deflate_cpu_ns() as f64 / 1e6
    ));
    let path = path?;
    c.written = Some(path.clone());
    Ok(path)
}

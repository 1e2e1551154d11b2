//! Fine-capture windows in coarse mode: coarse → fine → coarse at step boundaries, without
//! restarting the process (DESIGN.md "Collection modes", triggers).
//!
//! Life of a window:
//! 1. **armed** ([`Windows::open`], on the thread of the trigger: the control socket's, or
//!    the collector's for rules): CUPTI is subscribed, the buffer callbacks registered and
//!    the fine activity kinds enabled; from now on new scopes push their external
//!    correlation id. If CUPTI is held by another client
//!    (`CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED`) the window is refused with that
//!    reason (in the reply, in `status`, once in the log) and coarse timing goes on.
//! 2. **open** at the first step (request, for a `requests` window) that *begins* after
//!    arming, so the window never holds half a step; it takes the next N steps, the steps
//!    begun within the duration, or the next N requests.
//! 3. **closing** when the last of them has ended on the CPU; it waits (at most
//!    [`GPU_WAIT`]) until coarse timing has seen their GPU work finish, so no kernel of the
//!    window is still running when CUPTI is flushed.
//! 4. **written**: the collector flushes CUPTI (complete records, then a forced flush),
//!    disables the activity kinds and unsubscribes (releasing CUPTI for other tools), and
//!    writes `OUT/capture-<pid>.json.gz` with the records of the window's scopes only (records
//!    of work before or after it, collected while CUPTI was on, are dropped).
//!
//! With the flight recorder on (`GPUSPAN_FLIGHT_RECORDER=N`), CUPTI stays subscribed for the
//! whole run and the collector keeps the records of the last N steps; a window then starts
//! with those past steps already in it (so the slow step that fired an anomaly rule is in
//! its capture), does not subscribe, and leaves CUPTI subscribed when it closes.
//!
//! A per-request rule opens a window on the request that matched, from the first scope it
//! opens after the rule fired (the collector sees the request begin within milliseconds,
//! normally before its first step).
//!
//! One window at a time. All of it runs off the application's threads; the hot path only
//! reads `fine_on` once per scope begin.

use crate::collector::{Collector, Past};
use crate::shared::Shared;
use crate::telemetry::Telemetry;
use gpuspan_core::activity::ActivityRecord;
use gpuspan_core::control::{window_state, CaptureRequest, WindowSize, WindowStatus};
use gpuspan_core::join::ScopeTable;
use gpuspan_core::scope::{ScopeEvent, ScopeId, ScopeKind};
// Scope ids: `id_hash` (one multiply per key).
use gpuspan_core::id_hash::IdHashSet as HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest wait, once a window's last step has ended, for coarse timing to see its GPU
/// work finish before CUPTI is flushed anyway.
pub const GPU_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Armed,
    Open,
    Closing,
}

#[derive(Debug)]
struct Window {
    status: WindowStatus,
    size: WindowSize,
    out_dir: PathBuf,
    phase: Phase,
    /// Units (steps, or requests) in the window.
    units: Vec<ScopeId>,
    /// How many of `units` are the flight recorder's past steps.
    past: usize,
    accepting: bool,
    first_begin_ns: Option<u64>,
    /// The first scope id that surely pushed its external correlation id (see `arm`); new
    /// units are taken from it on.
    first_id: ScopeId,
    /// Units ended whose GPU work coarse timing has not yet seen finish.
    gpu_pending: HashSet<ScopeId>,
    closing_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    current: Option<Window>,
    last: Option<WindowStatus>,
    /// A window is being armed (CUPTI being subscribed, without this lock held): a second
    /// `open` is refused meanwhile.
    arming: bool,
}

/// The agent's windows: at most one current, and the last one's outcome.
#[derive(Debug, Default)]
pub struct Windows {
    active: AtomicBool,
    inner: Mutex<Inner>,
    refusal_logged: AtomicBool,
}

impl Windows {
    /// No window yet.
    pub fn new() -> Windows {
        Windows::default()
    }

    /// A window is armed, open or closing (one atomic load).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The current window's status, else the last one's.
    pub fn status(&self) -> Option<WindowStatus> {
        let g = self.inner.lock().ok()?;
        g.current.as_ref().map(|w| w.status.clone()).or_else(|| g.last.clone())
    }

    /// Arms a window (module docs, step 1). `trigger` names what asked (`control`, `rule`,
    /// `anomaly`). Errors are one-line reasons; a refused window also becomes the last
    /// window's status.
    ///
    /// `past`: units already in the window: the flight recorder's ended steps and the steps
    /// in progress, whose records it has too ([`Past`]); `start_unit`: a unit already begun
    /// that the window starts with (the request a rule matched).
    pub fn open(
        &self,
        a: &Shared,
        req: &CaptureRequest,
        trigger: &str,
        past: &Past,
        start_unit: Option<ScopeId>,
    ) -> Result<WindowStatus, String> {
        if a.config.mode != crate::config::Mode::Coarse {
            return Err(
                "GPUSPAN_MODE=fine already captures every kernel (GPUSPAN_OUT/capture-<pid>.json.gz); capture windows are for coarse mode"
                    .into(),
            );
        }
        if !a.collecting.load(Ordering::Acquire) {
            return Err("the agent is shutting down".into());
        }
        // Reserve the window under the lock, subscribe CUPTI without it (CUPTI calls may be
        // slow, and the collector takes this lock for every scope event while a window is
        // active; a rule may open a window from the collector thread), then install it.
        let (id, out_dir) = {
            let mut g = self.inner.lock().map_err(|_| "window state poisoned".to_string())?;
            if let Some(w) = &g.current {
                return Err(format!("window {} is already {}; one window at a time", w.status.id, w.status.state));
            }
            if g.arming {
                return Err("another window is being armed; one window at a time".into());
            }
            g.arming = true;
            g.next_id += 1;
            let id = g.next_id;
            let out_dir = match &req.out {
                Some(o) => PathBuf::from(o),
                None => absolute(&a.config.out_dir.join(format!("window-{}-{id}", std::process::id()))),
            };
            (id, out_dir)
        };
        let mut status = WindowStatus {
            id,
            state: window_state::ARMED.into(),
            trigger: trigger.into(),
            kind: req.size.kind().into(),
            target: req.size.target(),
            done: 0,
            out_dir: out_dir.to_string_lossy().into_owned(),
            capture: None,
            kernels: None,
            steps: None,
            error: None,
        };
        let refuse = |mut status: WindowStatus, why: String| {
            status.state = window_state::REFUSED.into();
            status.error = Some(why.clone());
            if let Ok(mut g) = self.inner.lock() {
                g.last = Some(status);
                g.arming = false;
            }
            Err(why)
        };
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            return refuse(status, format!("cannot create {}: {e}", out_dir.display()));
        }
        let recorder = a.recorder_steps.get().is_some();
        if !recorder {
            if let Err(why) = subscribe(a) {
                if why.contains("MULTIPLE_SUBSCRIBERS") && !self.refusal_logged.swap(true, Ordering::Relaxed) {
                    crate::log::warn(&format!("capture window refused: {why}; coarse timing continues (logged once)"));
                }
                return refuse(status, why);
            }
        }
        a.fine_on.store(true, Ordering::SeqCst);
        // Scopes numbered from here on pushed their external correlation id: the hot path
        // takes its id, then reads `fine_on` (both SeqCst), so an id at or past this one was
        // taken after the store above and saw it. An earlier step whose Begin the collector
        // only sees now did not push, and its kernels outside stage scopes would be missing.
        let first_id = if recorder { 0 } else { a.next_scope_id.load(Ordering::SeqCst) };
        let mut f = crate::log::Fields::default();
        f.extra.insert("window".into(), id.into());
        f.extra.insert("trigger".into(), trigger.to_string().into());
        f.extra.insert("path".into(), out_dir.display().to_string().into());
        crate::log::event(
            tracing::Level::INFO,
            "capture.window.opened",
            &format!("capture window {id} armed ({trigger}): {} {}, into {}", req.size.target(), req.size.kind(), out_dir.display()),
            &f,
        );
        status.state = window_state::ARMED.into();
        let mut w = Window {
            status: status.clone(),
            size: req.size,
            out_dir,
            phase: Phase::Armed,
            units: past.ended.iter().chain(&past.in_progress).copied().collect(),
            past: past.ended.len() + past.in_progress.len(),
            accepting: true,
            first_begin_ns: None,
            first_id,
            gpu_pending: HashSet::default(),
            closing_since: None,
        };
        if let Some(u) = start_unit {
            w.units.push(u);
            w.phase = Phase::Open;
            w.status.state = window_state::OPEN.into();
            w.accepting = w.new_units() < req.size.target();
        }
        let status = w.status.clone();
        let mut g = self.inner.lock().map_err(|_| "window state poisoned".to_string())?;
        g.arming = false;
        g.current = Some(w);
        self.active.store(true, Ordering::Release);
        Ok(status)
    }

    /// Collector: one scope event, after it was applied to `scopes`.
    pub fn observe_scope(&self, ev: &ScopeEvent, scopes: &ScopeTable) {
        if !self.is_active() {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        if let Some(w) = g.current.as_mut() {
            w.observe(ev, scopes);
        }
    }

    /// Collector: coarse timing resolved scope `id` (its GPU work has finished).
    pub fn observe_gpu_done(&self, id: ScopeId) {
        if !self.is_active() {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            if let Some(w) = g.current.as_mut() {
                w.gpu_pending.remove(&id);
            }
        }
    }

    /// Whether the current window may be written now: closing, and its GPU work seen
    /// finished (or [`GPU_WAIT`] passed).
    pub fn ready_to_close(&self) -> bool {
        if !self.is_active() {
            return false;
        }
        let Ok(g) = self.inner.lock() else { return false };
        g.current.as_ref().is_some_and(|w| {
            w.phase == Phase::Closing
                && (w.gpu_pending.is_empty() || w.closing_since.is_some_and(|t| t.elapsed() >= GPU_WAIT))
        })
    }

    /// Closes the current window (module docs, step 4). Called by the collector thread
    /// without the collector lock held; `cut_short` when the process is exiting with the
    /// window still open (what it holds so far is written). With an exit `budget`, CUPTI's
    /// release, the lock and decoding, and the write each stop at their phase's deadline.
    pub fn close(&self, a: &'static Shared, collector: &Mutex<Collector>, telemetry: &Telemetry, cut_short: bool, budget: Option<&crate::bounded::ExitBudget>) {
        // The window leaves `current` here; `last` shows it (closing) until it is written,
        // so a status poll never sees an older window in between.
        let taken = self.inner.lock().ok().and_then(|mut g| {
            let w = g.current.take()?;
            g.last = Some(w.status.clone());
            Some(w)
        });
        let Some(mut w) = taken else { return };
        // New scopes stop pushing external correlation ids (unless the flight recorder
        // keeps CUPTI); then CUPTI hands over what it holds: complete records first, then
        // the rest (the window's GPU work has finished, so what a forced flush cuts short
        // belongs to later steps).
        let recorder = a.recorder_steps.get().is_some() && !cut_short;
        if !recorder {
            a.fine_on.store(false, Ordering::Release);
        }
        let release = move || {
            if let Some(api) = &a.api {
                let _ = api.flush_all(0);
                let _ = api.flush_all(gpuspan_cupti::activity::FLUSH_FORCED);
                if let Ok(n) = api.dropped_records() {
                    a.counters.cupti_records_dropped.fetch_add(n as u64, Ordering::Relaxed);
                }
                if !recorder {
                    api.disable_fine_kinds();
                    if let Some(s) = a.subscriber.lock().ok().and_then(|mut g| g.take()) {
                        let _ = api.unsubscribe(s);
                    }
                }
            }
        };
        match budget {
            // At exit, CUPTI may wait on a lock of the thread that called exit: bounded.
            Some(b) => {
                if crate::bounded::run_bounded("gpuspan-cupti-release", b.cupti_deadline(), release).is_none() {
                    a.counters.cupti_flush_timed_out.store(1, Ordering::Relaxed);
                }
            }
            None => release(),
        }
        let locked = match budget {
            Some(b) => crate::bounded::lock_until(collector, b.collect_deadline(), "the collector state"),
            None => collector.lock().map_err(|_| "collector state poisoned".to_string()),
        };
        let outcome = match locked {
            Ok(mut c) => {
                match budget {
                    Some(b) => {
                        c.drain_until(a, &crate::collector::NoObserver, b.collect_deadline());
                    }
                    None => c.drain(a, &crate::collector::NoObserver),
                }
                let r = write(a, telemetry, &mut c, &w, budget.map(|b| b.deadline()));
                if !recorder {
                    c.records.clear();
                    c.correlations = Default::default();
                }
                r
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((path, kernels, steps)) => {
                w.status.state = window_state::WRITTEN.into();
                w.status.capture = Some(path.to_string_lossy().into_owned());
                w.status.kernels = Some(kernels);
                w.status.steps = Some(steps);
                if cut_short {
                    w.status.error = Some("the process exited before the window closed: partial capture".into());
                }
                let mut f = crate::log::Fields::default();
                f.extra.insert("window".into(), w.status.id.into());
                f.extra.insert("path".into(), path.display().to_string().into());
                f.extra.insert("kernels".into(), kernels.into());
                f.extra.insert("steps".into(), steps.into());
                crate::log::event(
                    tracing::Level::INFO,
                    "capture.window.closed",
                    &format!(
                        "capture window {} written: {} ({kernels} kernels, {steps} steps); {}",
                        w.status.id,
                        path.display(),
                        if recorder { "the flight recorder keeps CUPTI" } else { "CUPTI released" }
                    ),
                    &f,
                );
            }
            Err(e) => {
                w.status.state = window_state::FAILED.into();
                crate::log::warn(&format!("capture window {}: {e}", w.status.id));
                w.status.error = Some(e);
            }
        }
        if let Ok(mut g) = self.inner.lock() {
            g.last = Some(w.status);
        }
        self.active.store(false, Ordering::Release);
    }
}

impl Window {
    /// Units taken after arming (not the recorder's past steps).
    fn new_units(&self) -> u64 {
        (self.units.len() - self.past) as u64
    }

    /// One scope event, after it was applied to `scopes`: takes units, counts them done,
    /// closes.
    fn observe(&mut self, ev: &ScopeEvent, scopes: &ScopeTable) {
        match ev {
            ScopeEvent::Begin { id, ts_ns, .. } => {
                let Some(s) = scopes.get(*id) else { return };
                if !is_unit(self.size, &s.kind) || !self.accepting || self.phase == Phase::Closing || *id < self.first_id {
                    return;
                }
                let first = *self.first_begin_ns.get_or_insert(*ts_ns);
                let take = match self.size {
                    WindowSize::Steps(n) | WindowSize::Requests(n) => self.new_units() < n,
                    WindowSize::DurationMs(d) => ts_ns.saturating_sub(first) < d.saturating_mul(1_000_000),
                };
                if !take {
                    // A step begun past the duration: the window ends with the last one, which
                    // may already have ended (a gap between requests).
                    self.accepting = false;
                    self.close_if_complete(scopes);
                    return;
                }
                self.units.push(*id);
                self.phase = Phase::Open;
                self.status.state = window_state::OPEN.into();
                if let WindowSize::Steps(n) | WindowSize::Requests(n) = self.size {
                    self.accepting = self.new_units() < n;
                }
            }
            // A unit recorded into a graph finishes by its end like any other.
            ScopeEvent::InCapture { .. } => {}
            ScopeEvent::End { id, ts_ns, .. } => {
                if !self.units.contains(id) {
                    return;
                }
                self.gpu_pending.insert(*id);
                match self.size {
                    WindowSize::DurationMs(d) => {
                        let elapsed = ts_ns.saturating_sub(self.first_begin_ns.unwrap_or(*ts_ns));
                        self.status.done = elapsed / 1_000_000;
                        if elapsed >= d.saturating_mul(1_000_000) {
                            self.accepting = false;
                        }
                    }
                    _ => self.status.done = self.units[self.past..].iter().filter(|u| ended(scopes, **u)).count() as u64,
                }
                self.close_if_complete(scopes);
            }
        }
    }

    /// Closing once no more units are taken and every unit taken has ended. Whether a unit
    /// ended is read from the scope table, not counted from the end events this window saw:
    /// a flight-recorder step in progress when the window was armed may end between the
    /// collector listing it and the window being installed, and a count would then wait for
    /// that end forever (the soak found such a window stuck at 1 of 2 steps).
    fn close_if_complete(&mut self, scopes: &ScopeTable) {
        if !self.accepting && self.new_units() > 0 && self.units.iter().all(|u| ended(scopes, *u)) {
            self.phase = Phase::Closing;
            self.status.state = window_state::CLOSING.into();
            self.closing_since = Some(Instant::now());
        }
    }
}

/// Whether scope `id` has ended (a scope the table no longer holds has: only ended scopes
/// are pruned).
fn ended(scopes: &ScopeTable, id: ScopeId) -> bool {
    scopes.get(id).is_none_or(|s| s.end_ns.is_some())
}

fn absolute(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

fn is_unit(size: WindowSize, kind: &ScopeKind) -> bool {
    match size {
        WindowSize::Steps(_) | WindowSize::DurationMs(_) => matches!(kind, ScopeKind::Step { .. }),
        WindowSize::Requests(_) => matches!(kind, ScopeKind::Request { .. }),
    }
}

/// Subscribes CUPTI and enables the fine kinds (and the launch / copy / set / allocation
/// API callbacks, which count failed calls and OOMs for the anomaly rules); on any failure
/// CUPTI is left as found.
pub(crate) fn subscribe(a: &Shared) -> Result<(), String> {
    let api = a.cupti()?;
    let mut slot = a.subscriber.lock().map_err(|_| "subscriber state poisoned".to_string())?;
    if slot.is_some() {
        return Err("CUPTI is already subscribed by this agent".into());
    }
    let s = api.subscribe_with(crate::hooks::api_callback).map_err(|e| match e.code() {
        Some(39) => format!("CUPTI is held by another client ({e})"),
        _ => format!("cannot subscribe to CUPTI: {e}"),
    })?;
    if api.in_multi_subscriber_mode() {
        a.counters.multi_subscriber_subscriptions.fetch_add(1, Ordering::Relaxed);
    }
    let setup = api
        .register_callbacks(crate::cupti_callbacks::BUFFER_CALLBACKS)
        .and_then(|_| api.enable_fine_kinds());
    if let Err(e) = setup {
        api.disable_fine_kinds();
        let _ = api.unsubscribe(s);
        return Err(format!("cannot enable CUPTI activities: {e}"));
    }
    if let Err(e) = api.enable_launch_callbacks(&s).and_then(|()| api.enable_alloc_callbacks(&s)) {
        crate::log::info(&format!("API callbacks off ({e}): CUDA errors and OOMs are not seen"));
    }
    if let Err(e) = api.enable_unload_callbacks(&s) {
        crate::log::info(&format!("unload callbacks off ({e}): names of kernels of unloaded code may be wrong"));
    }
    if let Err(e) = api.enable_capture_callbacks(&s) {
        crate::log::info(&format!("stream-capture callbacks off ({e}): a scope that only captures waits for the span grace"));
    }
    *slot = Some(s);
    // CUPTI collects now: SIGTERM must not lose what it gathers.
    crate::signals::install_sigterm_handler();
    Ok(())
}

/// Writes the window's capture: only records whose scope lies in one of its units, and
/// only those units' scopes and their ancestors. Returns (path, kernels, steps).
fn write(a: &Shared, telemetry: &Telemetry, c: &mut Collector, w: &Window, deadline: Option<Instant>) -> Result<(PathBuf, u64, u64), String> {
    let units: HashSet<ScopeId> = w.units.iter().copied().collect();
    let in_window = |id: ScopeId| -> bool {
        c.scopes.get(id).is_some_and(|s| {
            let a = &s.attribution;
            a.step.is_some_and(|x| units.contains(&x)) || a.request.is_some_and(|x| units.contains(&x))
        })
    };
    // The launch's scope, by correlation id: gpuspan's external correlations, kept apart
    // from the records (`Collector::correlations`).
    let records: Vec<ActivityRecord> = c
        .records
        .iter()
        .filter(|r| c.correlations.get(r.correlation_id()).is_some_and(in_window))
        .cloned()
        .collect();
    // The units, what they contain, and their ancestors (the request: its trace id).
    let mut keep: HashSet<ScopeId> = HashSet::default();
    for &u in &w.units {
        let mut p = c.scopes.get(u).map(|s| s.parent).unwrap_or(0);
        while p != 0 && keep.insert(p) {
            p = c.scopes.get(p).map(|s| s.parent).unwrap_or(0);
        }
    }
    let scopes = c.scopes.subset(|s| keep.contains(&s.id) || in_window(s.id));
    let steps = scopes.iter_sorted().iter().filter(|s| matches!(s.kind, ScopeKind::Step { .. }) && in_window(s.id)).count() as u64;
    let kernels = records.iter().filter(|r| matches!(r, ActivityRecord::Kernel(_))).count() as u64;
    let extra = vec![
        ("window_id".to_string(), w.status.id),
        ("window_units".to_string(), w.units.len() as u64),
        ("window_steps".to_string(), steps),
    ];
    let path = crate::capture::write_parts(a, telemetry, &records, &c.correlations, &scopes, &mut c.classifier, c.assembler.options().seed, &w.out_dir, &crate::capture::capture_file_name(), &extra, deadline)?;
    Ok((path, kernels, steps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::scope::InlineName;

    fn begin(id: ScopeId, name: &str, ts_ns: u64) -> ScopeEvent {
        ScopeEvent::Begin { id, parent: 1, thread_id: 7, ts_ns, name: InlineName::new(name) }
    }

    fn end(id: ScopeId, ts_ns: u64) -> ScopeEvent {
        ScopeEvent::End { id, ts_ns, launches: None, graph_launches: 0 }
    }

    /// A 2-step window armed with the flight recorder's past: steps 2 and 3 ended, step 4 in
    /// progress when the collector listed them.
    fn window_with_past() -> Window {
        Window {
            status: WindowStatus {
                id: 1,
                state: window_state::ARMED.into(),
                trigger: "control".into(),
                kind: "steps".into(),
                target: 2,
                done: 0,
                out_dir: String::new(),
                capture: None,
                kernels: None,
                steps: None,
                error: None,
            },
            size: WindowSize::Steps(2),
            out_dir: PathBuf::new(),
            phase: Phase::Armed,
            units: vec![2, 3, 4],
            past: 3,
            accepting: true,
            first_begin_ns: None,
            first_id: 0,
            gpu_pending: HashSet::default(),
            closing_since: None,
        }
    }

    /// A request with steps 2 and 3 ended and step 4 begun (the recorder's past).
    fn table_with_past_steps() -> ScopeTable {
        let mut t = ScopeTable::new();
        t.apply(&begin(1, "gpuspan.request 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 model=m", 0));
        for (id, i) in [(2, 0), (3, 1), (4, 2)] {
            t.apply(&begin(id, &format!("dit.step {i}/9"), id * 10));
        }
        t.apply(&end(2, 25));
        t.apply(&end(3, 35));
        t
    }

    /// Applies `ev` to the table, then shows it to the window (the collector's order).
    fn feed(w: &mut Window, t: &mut ScopeTable, ev: ScopeEvent) {
        t.apply(&ev);
        w.observe(&ev, t);
    }

    #[test]
    fn a_past_step_that_ended_before_the_window_was_installed_does_not_hold_it_open() {
        let mut t = table_with_past_steps();
        // Step 4 ends after the collector listed it as in progress and before the window was
        // installed: this window never sees its end event.
        t.apply(&end(4, 45));
        let mut w = window_with_past();
        feed(&mut w, &mut t, begin(5, "dit.step 3/9", 50));
        feed(&mut w, &mut t, end(5, 55));
        assert_eq!((w.status.done, w.phase), (1, Phase::Open));
        feed(&mut w, &mut t, begin(6, "dit.step 4/9", 60));
        feed(&mut w, &mut t, end(6, 65));
        assert_eq!(w.status.done, 2);
        assert_eq!(w.phase, Phase::Closing, "both new steps ended: the window closes");
    }

    #[test]
    fn a_past_step_still_running_keeps_the_window_open_until_it_ends() {
        let mut t = table_with_past_steps();
        let mut w = window_with_past();
        // Steps on another thread overlap step 4 (several workers' threads in one process).
        feed(&mut w, &mut t, begin(5, "dit.step 3/9", 50));
        feed(&mut w, &mut t, end(5, 55));
        feed(&mut w, &mut t, begin(6, "dit.step 4/9", 60));
        feed(&mut w, &mut t, end(6, 65));
        assert_eq!(w.phase, Phase::Open, "step 4 of the past is still running");
        feed(&mut w, &mut t, end(4, 70));
        assert_eq!(w.phase, Phase::Closing);
    }
}

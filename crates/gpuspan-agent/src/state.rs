//! The process-wide agent: created once by [`activate`], read by the hot path with one
//! atomic load.

use crate::collector::Collector;
use crate::config::{Config, Mode};
use crossbeam::queue::ArrayQueue;
use gpuspan_core::scope::ScopeEvent;
use gpuspan_cupti::activity::{ActivityApi, Subscriber, BUFFER_DECLINE_MIN_VERSION};
use gpuspan_cupti::buffers::BufferPool;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Capacity of the scope-event queue (events; each ≈ 290 bytes, so ≈ 4.6 MiB; the
/// collector drains it every 5 ms).
pub const SCOPE_QUEUE_CAP: usize = 1 << 14;
/// Capacity of the completed-buffer queue; larger than any pool, so it never fills.
pub const COMPLETED_QUEUE_CAP: usize = 1024;

/// Counters of things lost, each reported in the capture and by [`AgentStatus`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Scope events dropped because the scope queue was full.
    pub scope_events_dropped: AtomicU64,
    /// Completed buffers dropped because the completed queue was full.
    pub buffers_dropped: AtomicU64,
    /// NVTX ranges of scope domains pushed beyond the per-thread stack (`hooks::MAX_DEPTH`).
    pub nvtx_ranges_too_deep: AtomicU64,
    /// 1 when SIGTERM ended collection early (the capture holds what came before it).
    pub terminated_by_signal: AtomicU64,
    /// Completed buffers our pool did not lend (another CUPTI activity client's): copied
    /// (read only) into a pool buffer for decoding, never written or freed.
    pub foreign_buffers: AtomicU64,
    /// Bytes of foreign buffers beyond one pool buffer, not copied.
    pub foreign_bytes_cut: AtomicU64,
    /// Completed buffers left undecoded because the exit budget ran out.
    pub buffers_unread_at_exit: AtomicU64,
    /// 1 when CUPTI's last flush at exit did not return within the exit budget.
    pub cupti_flush_timed_out: AtomicU64,
    /// Records CUPTI reported dropped (`cuptiActivityGetNumDroppedRecords`).
    pub cupti_records_dropped: AtomicU64,
    /// Records dropped because the capture reached `max_records`.
    pub records_over_limit: AtomicU64,
    /// Records decoded.
    pub records_decoded: AtomicU64,
    /// GPU-work API calls that failed (seen by the CUPTI API callback while subscribed).
    pub api_errors: AtomicU64,
    /// Those that failed with `CUDA_ERROR_OUT_OF_MEMORY` (2, in both the driver's and the
    /// runtime's enums).
    pub api_ooms: AtomicU64,
}

/// The live agent.
pub struct Agent {
    /// Configuration read at activation.
    pub config: Config,
    /// CUPTI; `None` in coarse mode when no usable CUPTI loaded (coarse timing needs only
    /// the driver; fine windows then refuse).
    pub api: Option<ActivityApi>,
    /// Activity buffers lent to CUPTI.
    pub pool: BufferPool,
    /// May the buffer-requested callback decline (CUPTI API ≥ 27)?
    pub allow_decline: bool,
    /// Scope events from app threads.
    pub scope_queue: ArrayQueue<ScopeEvent>,
    /// Completed buffers `(address, valid_bytes)` from CUPTI threads.
    pub completed_queue: ArrayQueue<(usize, usize)>,
    /// Next scope id (also the external correlation id); starts at 1.
    pub next_scope_id: AtomicU64,
    /// Collection on: the hot path does nothing while false.
    pub collecting: AtomicBool,
    /// CUPTI is subscribed with the activity kinds enabled (fine mode, or a fine window in
    /// coarse mode): the hot path pushes external correlation ids only while true.
    pub fine_on: AtomicBool,
    /// Coarse timing (coarse mode only).
    pub coarse: Option<crate::coarse::Coarse>,
    /// The CUPTI API callbacks count launches, so scope ends carry launch counts.
    pub counting_launches: AtomicBool,
    /// Loss counters.
    pub counters: Counters,
    /// The collector's state (scopes, records), shared with the exit path.
    pub collector: Mutex<Collector>,
    /// CUPTI subscriber slot we hold.
    pub subscriber: Mutex<Option<Subscriber>>,
    /// Span export, metrics.
    pub telemetry: crate::telemetry::Telemetry,
    /// Fine-capture windows (coarse mode).
    pub windows: crate::window::Windows,
    /// Capture triggers from the rules file (per-request and anomaly rules).
    pub triggers: gpuspan_core::triggers::Triggers,
    /// Steps the flight recorder keeps, when it holds CUPTI (coarse mode).
    pub recorder_steps: std::sync::OnceLock<u64>,
}

impl Agent {
    /// Now, ns, in the time domain of scope events and activity records: `cuptiGetTimestamp`
    /// when CUPTI is loaded, else `CLOCK_REALTIME`, which is CUPTI's own source on Linux
    /// (CUPTI-NOTES §2), so spans line up either way. Hot path: a vDSO clock read, no syscall.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.api {
            Some(api) => api.timestamp_ns(),
            None => realtime_ns(),
        }
    }

    /// The CUPTI API version in use, 0 without CUPTI.
    pub fn cupti_version(&self) -> u32 {
        self.api.as_ref().map_or(0, |a| a.version())
    }

    /// CUPTI, or why there is none (for the callers that need it: fine windows).
    pub fn cupti(&self) -> Result<&ActivityApi, String> {
        self.api.as_ref().ok_or_else(|| "no CUPTI library was loaded (coarse timing runs without it; fine capture needs it)".to_string())
    }
}

/// `CLOCK_REALTIME` in ns since the Unix epoch (0 before 1970).
#[inline]
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// One activation of the agent and what it made. A process has one; the `fork`ed child of
/// a process whose agent had started activating gets a fresh one ([`on_fork_child`]), so the
/// child never touches the parent's CUPTI session, queues, threads or half-finished
/// activation, and can activate cleanly on its own CUDA initialisation.
struct Lifecycle {
    /// Activation began (set before any work, so a fork during activation sees it).
    started: AtomicBool,
    /// The process that activated.
    pid: AtomicU64,
    activation: OnceLock<Result<(), String>>,
    agent: OnceLock<Agent>,
}

impl Lifecycle {
    const fn new() -> Lifecycle {
        Lifecycle { started: AtomicBool::new(false), pid: AtomicU64::new(0), activation: OnceLock::new(), agent: OnceLock::new() }
    }
}

/// Lifecycles for a process and the forked descendants that activate again; past the last
/// one a descendant stays inactive.
pub const LIFECYCLES: usize = 4;
static LIFECYCLE: [Lifecycle; LIFECYCLES] = [const { Lifecycle::new() }; LIFECYCLES];
/// Index of this process's lifecycle.
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// This process is the forked child of one whose agent had started: only the CUDA driver's
/// `InitializeInjection` (this process initialising CUDA itself) may activate here.
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

#[inline]
fn lifecycle() -> Option<&'static Lifecycle> {
    LIFECYCLE.get(GENERATION.load(Ordering::Acquire))
}

/// What the `pthread_atfork` child handler does (`entry`): if this process's agent had
/// started activating (or was active), the child moves to a fresh lifecycle and remembers it
/// was forked; the parent's agent stays behind in the child's memory, never used. Atomics
/// only: async-signal-safe, no allocation, no lock, so a fork in the middle of activation
/// cannot leave the child waiting for it.
pub fn on_fork_child() {
    if lifecycle().is_some_and(|l| l.started.load(Ordering::Acquire)) {
        GENERATION.fetch_add(1, Ordering::AcqRel);
        FORKED_CHILD.store(true, Ordering::Release);
    }
}

/// True in the process that activated the agent; false in a `fork`ed child that did not
/// activate itself.
pub fn in_activating_process() -> bool {
    lifecycle().is_some_and(|l| l.pid.load(Ordering::Relaxed) == std::process::id() as u64)
}

/// True in the forked child of a process whose agent had started (see [`on_fork_child`]).
pub fn is_forked_child() -> bool {
    FORKED_CHILD.load(Ordering::Acquire)
}

/// The agent if active: two atomic loads (hot path).
#[inline]
pub fn agent() -> Option<&'static Agent> {
    lifecycle()?.agent.get()
}

/// A snapshot of the agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// Why the agent is inactive, or `None` when collecting.
    pub inactive_reason: Option<String>,
    /// CUPTI API version in use (0 when inactive).
    pub cupti_version: u32,
    /// Records decoded so far.
    pub records_decoded: u64,
    /// Scope events dropped.
    pub scope_events_dropped: u64,
}

/// Status of the agent (activation is not triggered by this call).
pub fn status() -> AgentStatus {
    match (lifecycle().and_then(|l| l.activation.get()), agent()) {
        (_, Some(a)) => AgentStatus {
            inactive_reason: None,
            cupti_version: a.cupti_version(),
            records_decoded: a.counters.records_decoded.load(Ordering::Relaxed),
            scope_events_dropped: a.counters.scope_events_dropped.load(Ordering::Relaxed),
        },
        (Some(Err(e)), None) => AgentStatus {
            inactive_reason: Some(e.clone()),
            cupti_version: 0,
            records_decoded: 0,
            scope_events_dropped: 0,
        },
        _ => AgentStatus {
            inactive_reason: Some("not activated".into()),
            cupti_version: 0,
            records_decoded: 0,
            scope_events_dropped: 0,
        },
    }
}

/// Whether [`activate`] finished in this process (successfully or not). Two atomic loads.
#[inline]
pub fn activation_attempted() -> bool {
    lifecycle().is_none_or(|l| l.activation.get().is_some())
}

/// What asks for activation: the CUDA driver (`InitializeInjection`, this process's first
/// `cuInit`), an NVTX instance's first call, or a gpuspan API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `InitializeInjection`.
    Cuda,
    /// `InitializeInjectionNvtx2`.
    Nvtx,
    /// The C / Rust / Python API.
    Api,
}

/// Activates the agent once per process (later calls return the first outcome; a call
/// while another thread activates waits for it). On failure prints one warning saying why
/// the agent is inactive and returns the reason. In the forked child of a process whose
/// agent had started, only [`Trigger::Cuda`] activates (the child initialising CUDA itself);
/// NVTX and API calls there find the agent inactive, without a warning.
pub fn activate_for(trigger: Trigger) -> Result<(), String> {
    let Some(l) = lifecycle() else {
        return Err(format!("more than {} generations of forked processes activated", LIFECYCLES - 1));
    };
    if is_forked_child() && trigger != Trigger::Cuda && l.activation.get().is_none() {
        return Err("in a forked child that has not initialised CUDA itself".into());
    }
    l.activation
        .get_or_init(|| {
            crate::entry::register_fork_handler();
            l.started.store(true, Ordering::Release);
            l.pid.store(std::process::id() as u64, Ordering::Relaxed);
            crate::log::init_from_env();
            let r = activate_inner(l);
            if let Err(e) = &r {
                crate::log::warn(&format!("inactive: {e}"));
            }
            r
        })
        .clone()
}

/// [`activate_for`] the CUDA driver's injection (the trigger that works everywhere).
pub fn activate() -> Result<(), String> {
    activate_for(Trigger::Cuda)
}

/// Span options: the budget from the configuration, and the CUPTI → Unix clock offset
/// measured now (CUPTI timestamps are CLOCK_REALTIME ns on Linux, CUPTI-NOTES §2, so the
/// offset is ≈ 0 on a real GPU; the simulated H100's virtual clock needs it).
/// Kernel spans are only built when they have somewhere to go (an OTLP endpoint).
fn span_options(config: &Config, api: Option<&ActivityApi>, exporting: bool) -> gpuspan_core::spans::SpanOptions {
    let unix_ns = realtime_ns() as i128;
    let offset = api.map_or(0, |api| (unix_ns - api.timestamp_ns() as i128) as i64);
    let offset = if offset.unsigned_abs() < 1_000_000 { 0 } else { offset };
    gpuspan_core::spans::SpanOptions {
        kernel_span_budget: config.kernel_span_budget,
        kernel_spans: exporting && config.kernel_span_budget > 0 && config.mode == Mode::Fine,
        coarse: config.mode == Mode::Coarse,
        clock_offset_ns: offset,
        seed: ((std::process::id() as u64) << 32) ^ unix_ns as u64,
        ..Default::default()
    }
}

fn activate_inner(l: &'static Lifecycle) -> Result<(), String> {
    let (config, warnings) = Config::from_env();
    for w in &warnings {
        crate::log::warn(w);
    }
    if config.mode == Mode::Off {
        return Err("GPUSPAN_MODE=off".into());
    }
    // Fine mode needs CUPTI. Coarse mode loads it for fine windows and the flight recorder
    // but times scopes with the driver's events alone, so a missing (or too old) CUPTI
    // only turns those off; coarse mode needs a driver or CUPTI to be of any use.
    let (api, no_cupti) = match ActivityApi::load() {
        Ok(api) => (Some(api), None),
        Err(e) if config.mode == Mode::Coarse => (None, Some(e.to_string())),
        Err(e) => return Err(e.to_string()),
    };
    let subscriber = match (config.mode, &api) {
        (Mode::Fine, Some(api)) => Some(api.subscribe_with(crate::hooks::api_callback).map_err(|e| match e.code() {
            Some(39) => format!("CUPTI is held by another tool ({e}); the worker runs unprofiled"),
            Some(15) => format!("{e}: no CUDA driver or GPU available to CUPTI"),
            _ => format!("{e}"),
        })?),
        _ => None,
    };
    let coarse = (config.mode == Mode::Coarse).then(|| crate::coarse::Coarse::new(config.event_pool));
    if let Some(why) = &no_cupti {
        if coarse.as_ref().is_some_and(|c| c.events.is_none()) {
            return Err(format!("{why}, and no CUDA driver library for coarse timing"));
        }
        crate::log::warn(&format!("{why}: coarse timing goes on with the CUDA driver's events; fine capture windows are off"));
    }
    let allow_decline = api.as_ref().is_some_and(|a| a.version() >= BUFFER_DECLINE_MIN_VERSION);
    let rules = crate::collector::load_rules(&config);
    let triggers = crate::collector::load_triggers(&config);
    let telemetry = crate::telemetry::Telemetry::start(&config);
    let spans = span_options(&config, api.as_ref(), telemetry.spans.is_some());
    let agent = Agent {
        pool: BufferPool::new(config.buffer_bytes, config.max_buffers),
        allow_decline,
        scope_queue: ArrayQueue::new(SCOPE_QUEUE_CAP),
        completed_queue: ArrayQueue::new(COMPLETED_QUEUE_CAP),
        next_scope_id: AtomicU64::new(1),
        collecting: AtomicBool::new(false),
        fine_on: AtomicBool::new(false),
        coarse,
        counting_launches: AtomicBool::new(false),
        counters: Counters::default(),
        collector: Mutex::new({
            let mut c = Collector::new(rules, spans);
            c.detector = gpuspan_core::triggers::AnomalyDetector::new(triggers.anomaly.clone());
            c
        }),
        subscriber: Mutex::new(subscriber),
        telemetry,
        windows: crate::window::Windows::new(),
        triggers,
        recorder_steps: std::sync::OnceLock::new(),
        config,
        api,
    };
    if l.agent.set(agent).is_err() {
        return Ok(());
    }
    let a = l.agent.get().expect("just set");
    if a.config.mode == Mode::Coarse {
        if let Some(n) = a.config.flight_recorder.or(a.triggers.flight_recorder_steps) {
            match crate::window::subscribe(a) {
                Ok(()) => {
                    let _ = a.recorder_steps.set(n);
                    a.fine_on.store(true, Ordering::Release);
                    crate::log::info(&format!("flight recorder on: CUPTI collects the last {n} steps"));
                }
                Err(e) => crate::log::warn(&format!("flight recorder off: {e}")),
            }
        }
        a.collecting.store(true, Ordering::Release);
        crate::collector::start_thread();
        crate::control::start();
        crate::entry::register_exit_handler();
        let timing = match &a.coarse.as_ref().and_then(|c| c.events.as_ref()) {
            Some(ev) => format!("CUDA events from {}", ev.loaded_from),
            None => "CPU times (no CUDA driver)".into(),
        };
        let cupti = match &a.api {
            Some(api) => format!("CUPTI {} loaded, not subscribed", api.version()),
            None => "no CUPTI".to_string(),
        };
        crate::log::info(&format!("coarse mode on: scopes timed with {timing}; {cupti}"));
        return Ok(());
    }
    let Some(api) = a.api.as_ref() else { return Err("fine mode without CUPTI".into()) };
    let setup = api
        .register_callbacks(crate::cupti_callbacks::buffer_requested, crate::cupti_callbacks::buffer_completed)
        .and_then(|_| api.enable_fine_kinds());
    if let Err(e) = setup {
        if let Some(s) = a.subscriber.lock().ok().and_then(|mut g| g.take()) {
            let _ = api.unsubscribe(s);
        }
        return Err(format!("{e}"));
    }
    // Launch counting lets step spans finish as soon as their records are in; without it
    // they finish by the fallback rule (documented in gpuspan_core::spans::assemble).
    let counting = a
        .subscriber
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|s| api.enable_launch_callbacks(s)));
    match counting {
        Some(Ok(())) => a.counting_launches.store(true, Ordering::Release),
        Some(Err(e)) => crate::log::info(&format!("launch counting off ({e}); step spans finish by timing")),
        None => {}
    }
    a.fine_on.store(true, Ordering::Release);
    a.collecting.store(true, Ordering::Release);
    crate::entry::install_sigterm_handler();
    crate::collector::start_thread();
    crate::control::start();
    crate::entry::register_exit_handler();
    crate::log::info(&format!(
        "fine mode on: CUPTI API {} from {}",
        api.version(),
        api.loaded_from()
    ));
    Ok(())
}

/// Flushes CUPTI, stops collection and writes the capture now (also what the exit handler
/// does). Returns the capture path, or why nothing was written. Idempotent: a second call
/// returns the same path without writing again.
pub fn flush_capture() -> Result<std::path::PathBuf, String> {
    let a = agent().ok_or_else(|| status().inactive_reason.unwrap_or_default())?;
    if !in_activating_process() {
        return Err("in a forked child of the profiled process: the capture belongs to the parent".into());
    }
    crate::collector::finish(a)
}

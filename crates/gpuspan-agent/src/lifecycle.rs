//! The agent's lifecycle, as an explicit state machine per generation ([`Phase`]):
//! activation (on the process's first CUDA initialisation, NVTX call or gpuspan API call),
//! fork (a child of an activated process starts a fresh generation) and finishing (exit,
//! SIGTERM, `flush_capture`). It builds the [`Agent`] and starts the agent's threads; the
//! collector thread, the control socket and the windows get the agent as `&'static Agent`
//! and never call back into this module (only `entry` does, above it).
//!
//! ```text
//!   Dormant ──first trigger──▶ Activating ──ok──▶ Active ──finish──▶ Finishing ──▶ Finished
//!                                  └──error / GPUSPAN_MODE=off──▶ Inactive
//!   fork() of a process past Dormant: the child's next generation starts Dormant, and
//!   only its own CUDA initialisation may activate it.
//! ```

use crate::agent::Agent;
use crate::collector::Collector;
use crate::config::{Config, Mode};
use crate::shared::{generation, is_forked_child, realtime_ns, Counters, Shared, COMPLETED_QUEUE_CAP, GENERATIONS, SCOPE_QUEUE_CAP};
use crossbeam::queue::ArrayQueue;
use gpuspan_cupti::activity::{ActivityApi, BUFFER_DECLINE_MIN_VERSION};
use gpuspan_cupti::buffers::BufferPool;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where a generation's agent is in its life (see the module docs for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Nothing has asked for activation yet: no thread, no file, no output.
    Dormant = 0,
    /// A trigger is activating (loading CUPTI, starting threads).
    Activating = 1,
    /// Collecting.
    Active = 2,
    /// Activation failed or was turned off (the reason is in [`status`]).
    Inactive = 3,
    /// Finishing: flushing, writing the capture, stopping threads (exit budget).
    Finishing = 4,
    /// Finished: the capture (if any) is written; the hot path does nothing.
    Finished = 5,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Activating,
            2 => Phase::Active,
            3 => Phase::Inactive,
            4 => Phase::Finishing,
            5 => Phase::Finished,
            _ => Phase::Dormant,
        }
    }
}

/// One activation of the agent and what it made. A process has one; the `fork`ed child of
/// a process whose agent had started activating gets a fresh one ([`on_fork_child`]), so the
/// child never touches the parent's CUPTI session, queues, threads or half-finished
/// activation, and can activate cleanly on its own CUDA initialisation.
struct Lifecycle {
    /// Its [`Phase`] (set to `Activating` before any work, so a fork during activation sees
    /// it).
    phase: AtomicU8,
    /// The process that activated.
    pid: AtomicU64,
    activation: OnceLock<Result<(), String>>,
    agent: OnceLock<Agent>,
}

impl Lifecycle {
    const fn new() -> Lifecycle {
        Lifecycle { phase: AtomicU8::new(Phase::Dormant as u8), pid: AtomicU64::new(0), activation: OnceLock::new(), agent: OnceLock::new() }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves `from` → `to`; false (nothing changed) when the phase was not `from`.
    fn transition(&self, from: Phase, to: Phase) -> bool {
        self.phase.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

static LIFECYCLE: [Lifecycle; GENERATIONS] = [const { Lifecycle::new() }; GENERATIONS];

#[inline]
fn lifecycle() -> Option<&'static Lifecycle> {
    LIFECYCLE.get(generation())
}

/// This generation's phase ([`Phase::Dormant`] past the last generation).
pub fn phase() -> Phase {
    lifecycle().map_or(Phase::Dormant, |l| l.phase())
}

/// What the `pthread_atfork` child handler does (`entry`): if this process's agent had
/// started activating (or was active), the child moves to a fresh lifecycle and remembers it
/// was forked; the parent's agent stays behind in the child's memory, never used. Atomics
/// only: async-signal-safe, no allocation, no lock, so a fork in the middle of activation
/// cannot leave the child waiting for it.
pub fn on_fork_child() {
    if lifecycle().is_some_and(|l| l.phase() != Phase::Dormant) {
        crate::shared::enter_next_generation();
    }
}

/// True in the process that activated the agent; false in a `fork`ed child that did not
/// activate itself.
pub fn in_activating_process() -> bool {
    lifecycle().is_some_and(|l| l.pid.load(Ordering::Relaxed) == std::process::id() as u64)
}

/// The agent if this generation activated one (the hot path uses
/// [`crate::shared::shared`] instead).
#[inline]
pub fn agent() -> Option<&'static Agent> {
    lifecycle()?.agent.get()
}

/// A snapshot of the agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// Where the agent is in its life.
    pub phase: Phase,
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
            phase: phase(),
            inactive_reason: None,
            cupti_version: a.cupti_version(),
            records_decoded: a.counters.records_decoded.load(Ordering::Relaxed),
            scope_events_dropped: a.counters.scope_events_dropped.load(Ordering::Relaxed),
        },
        (Some(Err(e)), None) => AgentStatus {
            phase: phase(),
            inactive_reason: Some(e.clone()),
            cupti_version: 0,
            records_decoded: 0,
            scope_events_dropped: 0,
        },
        _ => AgentStatus {
            phase: phase(),
            inactive_reason: Some("not activated".into()),
            cupti_version: 0,
            records_decoded: 0,
            scope_events_dropped: 0,
        },
    }
}

/// Whether [`activate`](crate::entry::activate) finished in this process (successfully or not). Two atomic loads.
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
///
/// The caller (`entry`) registers the fork and exit handlers around it.
pub fn activate_for(trigger: Trigger) -> Result<(), String> {
    let Some(l) = lifecycle() else {
        return Err(format!("more than {} generations of forked processes activated", GENERATIONS - 1));
    };
    if is_forked_child() && trigger != Trigger::Cuda && l.activation.get().is_none() {
        return Err("in a forked child that has not initialised CUDA itself".into());
    }
    l.activation
        .get_or_init(|| {
            l.transition(Phase::Dormant, Phase::Activating);
            l.pid.store(std::process::id() as u64, Ordering::Relaxed);
            crate::log::init_from_env();
            // Every thread activation starts (and the threads those start) inherits a mask
            // with asynchronous signals blocked (`signals`); the calling thread's own mask is
            // restored after.
            let r = crate::signals::with_async_signals_blocked(|| activate_inner(l));
            match &r {
                Ok(()) => l.transition(Phase::Activating, Phase::Active),
                Err(e) => {
                    let mut f = crate::log::Fields::default();
                    f.extra.insert("reason".into(), e.clone().into());
                    crate::log::event(tracing::Level::WARN, "agent.inactive", &format!("inactive: {e}"), &f);
                    l.transition(Phase::Activating, Phase::Inactive)
                }
            };
            r
        })
        .clone()
}

/// Span options: the budget from the configuration, and the CUPTI → Unix clock offset
/// measured now (CUPTI timestamps are CLOCK_REALTIME ns on Linux, CUPTI-NOTES §2, so the
/// offset is ≈ 0 on a real GPU; the simulated H100's virtual clock needs it).
/// Kernel spans are only built when they have somewhere to go (an OTLP endpoint).
fn span_options(config: &Config, api: Option<&ActivityApi>, exporting: bool, device_uuids: &[String]) -> gpuspan_core::spans::SpanOptions {
    let unix_ns = realtime_ns() as i128;
    let offset = api.map_or(0, |api| (unix_ns - api.timestamp_ns() as i128) as i64);
    let offset = if offset.unsigned_abs() < 1_000_000 { 0 } else { offset };
    gpuspan_core::spans::SpanOptions {
        kernel_span_budget: config.kernel_span_budget,
        max_pending_gpu: config.max_pending_gpu,
        kernel_spans: exporting && config.kernel_span_budget > 0 && config.mode == Mode::Fine,
        coarse: config.mode == Mode::Coarse,
        clock_offset_ns: offset,
        seed: ((std::process::id() as u64) << 32) ^ unix_ns as u64,
        rank: config.distributed.map(|d| (d.rank, d.world_size)),
        env_traceparent: crate::config::env_traceparent(),
        device_uuids: device_uuids.iter().map(|u| std::sync::Arc::from(u.as_str())).collect(),
        ..Default::default()
    }
}

fn activate_inner(l: &'static Lifecycle) -> Result<(), String> {
    let (config, warnings) = Config::from_env();
    crate::log::set_identity(&crate::log::default_service(), &config.worker_id);
    crate::log::start_json_writer();
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
        Ok(api) => {
            api.set_multi_subscriber(config.cupti_multi_subscriber);
            (Some(api), None)
        }
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
    let coarse = (config.mode == Mode::Coarse).then(|| crate::coarse::Coarse::new(config.event_pool, config.scope_timeout));
    // A process with neither a driver nor CUPTI activated through the API (a PyTorch
    // worker on the CPU under auto-instrumentation, issue 12): its scopes are CPU-timed
    // (`gpuspan.timing=cpu`), which the coarse-mode line below says; only a missing CUPTI
    // next to a driver is worth a warning (fine windows are off).
    if let Some(why) = &no_cupti {
        if coarse.as_ref().is_some_and(|c| c.events.is_some()) {
            crate::log::warn(&format!("{why}: coarse timing goes on with the CUDA driver's events; fine capture windows are off"));
        }
    }
    let allow_decline = api.as_ref().is_some_and(|a| a.version() >= BUFFER_DECLINE_MIN_VERSION);
    let rules = crate::collector::load_rules(&config);
    let triggers = crate::collector::load_triggers(&config);
    let telemetry = crate::telemetry::Telemetry::start(&config);
    let spans = span_options(&config, api.as_ref(), telemetry.spans.is_some(), &telemetry.device_uuids);
    let now_ns = |api: Option<&ActivityApi>| api.map_or_else(realtime_ns, |api| api.timestamp_ns());
    let (boundary_clock, clock_why) = crate::boundary_clock::choose(config.boundary_clock, api.is_some(), &|| now_ns(api.as_ref()));
    crate::log::info(&clock_why);
    let clock_origin = crate::boundary_clock::ClockPair::sample(&|| now_ns(api.as_ref()));
    let shared = Shared {
        pool: BufferPool::new(config.buffer_bytes, config.max_buffers),
        allow_decline,
        scope_queue: ArrayQueue::new(SCOPE_QUEUE_CAP),
        scope_names: Default::default(),
        thread_rings: Default::default(),
        completed_queue: ArrayQueue::new(COMPLETED_QUEUE_CAP),
        next_scope_id: AtomicU64::new(1),
        collecting: AtomicBool::new(false),
        fine_on: AtomicBool::new(false),
        coarse,
        counting_launches: AtomicBool::new(false),
        counters: Counters::default(),
        subscriber: Mutex::new(subscriber),
        triggers,
        recorder_steps: std::sync::OnceLock::new(),
        boundary_clock,
        config,
        api,
    };
    let mut collector = Collector::new(rules, spans);
    collector.ticks = crate::boundary_clock::TickMap::new(boundary_clock, clock_origin);
    collector.detector = gpuspan_core::triggers::AnomalyDetector::new(shared.triggers.anomaly.clone()).with_max_models(shared.config.max_models);
    let agent = Agent { shared, collector: Mutex::new(collector), windows: crate::window::Windows::new(), telemetry };
    if l.agent.set(agent).is_err() {
        return Ok(());
    }
    let a: &'static Agent = l.agent.get().expect("just set");
    crate::shared::publish(&a.shared);
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
        crate::collector_thread::start_thread(a);
        crate::control::start(a);
        let timing = match &a.coarse.as_ref().and_then(|c| c.events.as_ref()) {
            Some(ev) => format!("CUDA events from {}", ev.loaded_from),
            None => "CPU times (no CUDA driver: spans carry gpuspan.timing=cpu)".into(),
        };
        let cupti = match &a.api {
            Some(api) => format!("CUPTI {} loaded, not subscribed", api.version()),
            None => "no CUPTI".to_string(),
        };
        activated("coarse", &format!("coarse mode on: scopes timed with {timing}; {cupti}"));
        return Ok(());
    }
    let Some(api) = a.api.as_ref() else { return Err("fine mode without CUPTI".into()) };
    let setup = api
        .register_callbacks(crate::cupti_callbacks::BUFFER_CALLBACKS)
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
        .and_then(|g| g.as_ref().map(|s| api.enable_launch_callbacks(s).and_then(|()| api.enable_alloc_callbacks(s))));
    match counting {
        Some(Ok(())) => a.counting_launches.store(true, Ordering::Release),
        Some(Err(e)) => crate::log::info(&format!("launch counting off ({e}); step spans finish by timing")),
        None => {}
    }
    if !api.buffers_promised_zeroed() {
        crate::log::info("CUPTI zeroes each activity buffer itself, on the application thread that needs it (the agent is not preloaded, or CUPTI refused CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER)");
    }
    // Kernel names are read before their module is unloaded (crate::unload).
    if let Some(Err(e)) = a.subscriber.lock().ok().and_then(|g| g.as_ref().map(|s| api.enable_unload_callbacks(s))) {
        crate::log::info(&format!("unload callbacks off ({e}): names of kernels of unloaded code may be wrong"));
    }
    // Launches into a stream capture expect no record (crate::hooks::api_callback).
    if let Some(Err(e)) = a.subscriber.lock().ok().and_then(|g| g.as_ref().map(|s| api.enable_capture_callbacks(s))) {
        crate::log::info(&format!("stream-capture callbacks off ({e}): a scope that only captures waits for the span grace"));
    }
    a.fine_on.store(true, Ordering::Release);
    a.collecting.store(true, Ordering::Release);
    crate::signals::install_sigterm_handler();
    crate::collector_thread::start_thread(a);
    crate::control::start(a);
    let multi = if api.in_multi_subscriber_mode() {
        a.counters.multi_subscriber_subscriptions.fetch_add(1, Ordering::Relaxed);
        " (multiple-subscriber mode: other CUPTI tools may subscribe alongside)"
    } else {
        ""
    };
    activated("fine", &format!("fine mode on: CUPTI API {} from {}{multi}", api.version(), api.loaded_from()));
    Ok(())
}

/// The `agent.activated` event (INFO) with the mode.
fn activated(mode: &str, message: &str) {
    let mut f = crate::log::Fields::default();
    f.extra.insert("mode".into(), mode.into());
    crate::log::event(tracing::Level::INFO, "agent.activated", message, &f);
}

/// Flushes CUPTI, stops collection and writes the capture now (also what the exit handler
/// does). Returns the capture path, or why nothing was written. Idempotent: a second call
/// returns the same path without writing again.
pub fn flush_capture() -> Result<std::path::PathBuf, String> {
    let (Some(l), Some(a)) = (lifecycle(), agent()) else {
        return Err(status().inactive_reason.unwrap_or_default());
    };
    if !in_activating_process() {
        return Err("in a forked child of the profiled process: the capture belongs to the parent".into());
    }
    l.transition(Phase::Active, Phase::Finishing);
    let r = crate::collector_thread::finish(a);
    l.transition(Phase::Finishing, Phase::Finished);
    // The JSON log writer's queue goes out last (bounded: about a second at most).
    crate::log::finish();
    r
}

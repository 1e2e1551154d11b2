//! The agent's shared state ([`Shared`]) and the hot path's way to it ([`shared`]): the
//! layer every other module of the agent builds on, importing none of them but `config`,
//! `coarse`, `scope_names`, `thread_ring` and `log`.
//!
//! A process has one agent per *generation*: a `fork`ed child of a process whose agent had
//! started moves to the next generation ([`crate::lifecycle`]), so the hot path of the
//! child never sees the parent's agent. [`shared`] is two atomic loads.

use crate::boundary_clock::BoundaryClock;
use crate::config::Config;
use crossbeam::queue::ArrayQueue;
use gpuspan_cupti::activity::{ActivityApi, Subscriber};
use gpuspan_cupti::buffers::BufferPool;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Capacity of the shared boundary queue (`Shared::scope_queue`: boundaries of 128 bytes, names
/// apart, [`crate::scope_names`]; ≈ 1.1 MiB with the queue's stamps). Only threads past the
/// rings' slots use it; the collector drains it every 5 ms.
pub const SCOPE_QUEUE_CAP: usize = 1 << 13;
/// Capacity of the completed-buffer queue; larger than any pool, so it never fills.
pub const COMPLETED_QUEUE_CAP: usize = 1024;

/// Counters of things lost, each reported in the capture and by [`AgentStatus`](crate::lifecycle::AgentStatus).
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
    /// Completed buffers put on the completed queue (ours and copies of foreign ones).
    pub buffers_queued: AtomicU64,
    /// Completed buffers the collector has decoded (with `buffers_queued`: what
    /// `unload::before_unload` waits for).
    pub buffers_decoded: AtomicU64,
    /// Driver unload calls at which CUPTI was flushed and decoded first (`unload`).
    pub unload_drains: AtomicU64,
    /// Of those, the ones that went ahead before the decode finished (`unload::UNLOAD_WAIT`).
    pub unload_drain_timeouts: AtomicU64,
    /// CUPTI subscriptions made in CUPTI 13.3+'s multiple-subscriber mode
    /// (`gpuspan_cupti::multi_subscriber`), so far.
    pub multi_subscriber_subscriptions: AtomicU64,
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
    /// The innermost scope open on the thread of the last OOM (0: none), for the
    /// `cuda.oom` log event's step.
    pub last_oom_scope: AtomicU64,
}

/// The agent's shared state: what the application's threads (hot path), CUPTI's threads
/// (buffer callbacks) and the agent's own threads all read, lock-free or under short locks.
/// The components that only the agent's threads use (collector state, windows, telemetry)
/// live beside it in [`crate::agent::Agent`], which dereferences to this.
pub struct Shared {
    /// Configuration read at activation.
    pub config: Config,
    /// CUPTI; `None` in coarse mode when no usable CUPTI loaded (coarse timing needs only
    /// the driver; fine windows then refuse).
    pub api: Option<ActivityApi>,
    /// Activity buffers lent to CUPTI.
    pub pool: BufferPool,
    /// May the buffer-requested callback decline (CUPTI API ≥ 27)?
    pub allow_decline: bool,
    /// Scope boundaries from app threads, one ring per thread ([`crate::thread_ring`]).
    pub thread_rings: crate::thread_ring::ThreadRings,
    /// Scope boundaries (scope events, their names as keys, with coarse mode's marks) from
    /// app threads that have no ring (more than [`crate::thread_ring::MAX_THREAD_RINGS`]
    /// threads, or a thread's teardown).
    pub scope_queue: ArrayQueue<crate::thread_ring::Boundary>,
    /// The names those keys stand for, and what the threads need to send them.
    pub scope_names: crate::scope_names::NameSender,
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
    /// CUPTI subscriber slot we hold.
    pub subscriber: Mutex<Option<Subscriber>>,
    /// Capture triggers from the rules file (per-request and anomaly rules).
    pub triggers: gpuspan_core::triggers::Triggers,
    /// Steps the flight recorder keeps, when it holds CUPTI (coarse mode).
    pub recorder_steps: std::sync::OnceLock<u64>,
    /// The clock scope boundaries read ([`crate::boundary_clock`]), chosen at activation.
    pub boundary_clock: BoundaryClock,
}

impl Shared {
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

    /// A scope boundary's CPU time as the hot path reads it: a reading of
    /// [`Shared::boundary_clock`] (time-stamp counter ticks, or [`Shared::now_ns`]'s ns), which
    /// the collector converts to ns ([`crate::boundary_clock::TickMap`]).
    #[inline(always)]
    pub fn boundary_ticks(&self) -> u64 {
        match self.boundary_clock {
            BoundaryClock::Tsc => gpuspan_cupti::tsc::read(),
            BoundaryClock::Ns => self.now_ns(),
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

pub use crate::boundary_clock::realtime_ns;

/// Generations of agents: a process and the forked descendants that activate again; past
/// the last one a descendant stays inactive.
pub const GENERATIONS: usize = 4;
static SHARED: [OnceLock<&'static Shared>; GENERATIONS] = [const { OnceLock::new() }; GENERATIONS];
/// This process's generation (index into the lifecycle tables).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// This process is the forked child of one whose agent had started.
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

/// This process's generation: 0, or more in forked children of active processes.
#[inline]
pub fn generation() -> usize {
    GENERATION.load(Ordering::Acquire)
}

/// Moves this process to the next generation and marks it a forked child (the
/// `pthread_atfork` child handler, through [`crate::lifecycle::on_fork_child`]). Atomics
/// only: async-signal-safe.
pub fn enter_next_generation() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    FORKED_CHILD.store(true, Ordering::Release);
}

/// True in the forked child of a process whose agent had started.
pub fn is_forked_child() -> bool {
    FORKED_CHILD.load(Ordering::Acquire)
}

/// Makes `s` the shared state of this generation (once; activation).
pub fn publish(s: &'static Shared) {
    if let Some(slot) = SHARED.get(generation()) {
        let _ = slot.set(s);
    }
}

/// The active agent's shared state, if this generation has one: two atomic loads (hot path).
#[inline]
pub fn shared() -> Option<&'static Shared> {
    SHARED.get(generation())?.get().copied()
}

//! Coarse mode (`GPUSPAN_MODE=coarse`, the default): scope timing with pooled CUDA events,
//! no CUPTI subscription (DESIGN.md "Collection modes").
//!
//! - [`pool`]: a bounded, reused pool of timed CUDA events, created lazily on the first
//!   application thread that needs one (events belong to that thread's context).
//! - [`mark`]: the hot-path half. At each scope boundary the application thread records
//!   one event per stream of the scope (the streams it named through
//!   `gpuspan_use_streams`, or the legacy default stream) and queues a fixed-size
//!   [`mark::GpuMark`]; when the pool is empty or the driver refuses, the mark carries no
//!   event and the scope is timed on the CPU side (counted).
//! - [`resolve`]: the collector-thread half. It polls `cuEventQuery` (never blocks, never
//!   synchronizes an application thread), reads `cuEventElapsedTime`, turns marks into
//!   [`gpuspan_core::spans::ScopeGpuTime`]s in scope-end order, and gives the events back
//!   to the pool.
//!
//! Cost on the application thread: one `cuEventRecord` per stream at each begin and end,
//! independent of the number of kernels (measured by the `coarse_scope` bench).

pub mod mark;
pub mod pool;
pub mod resolve;

use gpuspan_cupti::events::CudaEvents;
use std::sync::atomic::AtomicU64;

/// Counters of coarse timing, reported in `status` and as metrics.
#[derive(Debug, Default)]
pub struct CoarseCounters {
    /// Scope boundaries timed on the CPU side because the event pool was empty.
    pub pool_exhausted: AtomicU64,
    /// Scope boundaries timed on the CPU side because the driver refused an event call
    /// (no context on the thread, `cuInit` not called yet, a stale stream).
    pub event_errors: AtomicU64,
    /// Marks dropped: their boundary found its ring or the shared queue full, or their
    /// request was given up before they ended (their scopes get no GPU interval).
    pub marks_dropped: AtomicU64,
    /// Scope intervals resolved from CUDA events.
    pub scopes_timed: AtomicU64,
    /// Scope intervals that fell back to CPU times.
    pub scopes_cpu_timed: AtomicU64,
    /// Scope boundaries that ran while a stream they would be timed on was being captured
    /// into a CUDA graph (nothing recorded; the scope gets no span).
    pub scopes_in_capture: AtomicU64,
    /// Root scopes (requests) that had not ended `GPUSPAN_SCOPE_TIMEOUT` after they began:
    /// their events went back to the pool and they get no GPU interval.
    pub roots_timed_out: AtomicU64,
    /// Root scopes that began on an idle GPU: placed at their CPU begin, re-anchoring the
    /// clock chain ([`resolve`]).
    pub roots_reanchored: AtomicU64,
}

/// Default of `GPUSPAN_SCOPE_TIMEOUT`: a root scope (a request) not ended an hour after it
/// began is given up (a worker that skipped its `end` on an exception path), so its pooled
/// events come back; a video generation takes minutes, not hours.
pub const DEFAULT_ROOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Coarse timing state shared by application threads and the collector.
pub struct Coarse {
    /// The driver's event functions; `None` when no CUDA driver could be loaded (every
    /// scope is then CPU-timed).
    pub events: Option<CudaEvents>,
    /// The event pool.
    pub pool: pool::EventPool,
    /// Counters.
    pub counters: CoarseCounters,
    /// How long a root scope may stay open before the resolver gives it up
    /// (`GPUSPAN_SCOPE_TIMEOUT`, [`DEFAULT_ROOT_TIMEOUT`]).
    pub root_timeout: std::time::Duration,
}

impl std::fmt::Debug for Coarse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coarse").field("events", &self.events).field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl Coarse {
    /// Coarse timing with a pool of at most `pool_cap` events. Without a driver (a CPU-only
    /// process) every scope is CPU-timed; activation's one line says so.
    pub fn new(pool_cap: usize, root_timeout: std::time::Duration) -> Coarse {
        let events = CudaEvents::load().ok();
        Coarse {
            events,
            pool: pool::EventPool::new(pool_cap),
            counters: CoarseCounters::default(),
            root_timeout,
        }
    }
}

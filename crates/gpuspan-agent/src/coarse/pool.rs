//! A bounded pool of reusable timed CUDA events.
//!
//! Events are created on demand, on the application thread that needs one (an event
//! belongs to the context current on the thread that creates it; cuda.h `cuEventCreate`),
//! up to `cap`; afterwards they are only reused. Taking and giving back are lock-free
//! (`crossbeam` `ArrayQueue`). When all `cap` events are in flight, [`EventPool::take`]
//! returns `None` and the caller times the scope on the CPU side.

use crossbeam::queue::ArrayQueue;
use gpuspan_cupti::events::{Context, CudaEvents, CuResult, Event};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default most events alive (`GPUSPAN_EVENT_POOL`): 2 per scope boundary and stream, so
/// 4096 covers 1024 single-stream scopes in flight (a DiT step announces a few hundred).
pub const DEFAULT_EVENT_POOL: usize = 4096;

/// A pooled event with the context it was made in.
pub type PooledEvent = (Event, Context);

/// The pool.
#[derive(Debug)]
pub struct EventPool {
    free: ArrayQueue<PooledEvent>,
    created: AtomicUsize,
    cap: usize,
}

/// Why no event could be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// All `cap` events are in flight.
    Exhausted,
    /// `cuEventCreate` (or `cuCtxGetCurrent`) failed with this code.
    Driver(CuResult),
}

impl EventPool {
    /// An empty pool that will hold at most `cap` (≥ 1) events.
    pub fn new(cap: usize) -> EventPool {
        let cap = cap.max(1);
        EventPool { free: ArrayQueue::new(cap), created: AtomicUsize::new(0), cap }
    }

    /// Most events this pool makes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Events made so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed).min(self.cap)
    }

    /// A free event, or a new one made in the calling thread's current context while fewer
    /// than `cap` exist. Pooled events are not sorted by context: a process that switches
    /// devices may get an event of another context, and the driver's error on recording it
    /// makes that boundary CPU-timed (counted).
    pub fn take(&self, events: &CudaEvents) -> Result<PooledEvent, TakeError> {
        if let Some(e) = self.free.pop() {
            return Ok(e);
        }
        if self.created.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.created.fetch_sub(1, Ordering::Relaxed);
            return Err(TakeError::Exhausted);
        }
        events.create().map_err(|code| {
            self.created.fetch_sub(1, Ordering::Relaxed);
            TakeError::Driver(code)
        })
    }

    /// Returns an event to the pool. Never fails: the queue holds `cap` entries and at most
    /// `cap` events exist.
    pub fn give_back(&self, e: PooledEvent) {
        let _ = self.free.push(e);
    }

    /// Free events now.
    pub fn free_len(&self) -> usize {
        self.free.len()
    }
}

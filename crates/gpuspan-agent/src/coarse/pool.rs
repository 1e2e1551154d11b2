//! A bounded pool of reusable timed CUDA events, kept per CUDA context.
//!
//! An event belongs to the context current on the thread that creates it (cuda.h
//! `cuEventCreate`), and recording it on a stream of another device fails (CUDA Programming
//! Guide, "Stream and Event Behavior"). A worker that drives several devices from one
//! process (a thread per device, or one thread that switches devices) must therefore get
//! back an event of the context it is in now: the pool keeps one free list per context
//! (at most [`MAX_CONTEXTS`]), chosen by the calling thread's `cuCtxGetCurrent`.
//!
//! Events are created on demand, on the application thread that needs one, up to `cap` in
//! all contexts together; afterwards they are only reused. Taking and giving back are
//! lock-free (`crossbeam` `ArrayQueue`s; a context's free list is allocated when that
//! context is first seen). When all `cap` events are in flight, [`EventPool::take`] returns
//! [`TakeError::Exhausted`] and the caller times the scope on the CPU side.

use crossbeam::queue::ArrayQueue;
use gpuspan_cupti::events::{Context, CudaEvents, CuResult, Event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Default most events alive (`GPUSPAN_EVENT_POOL`): 2 per scope boundary and stream, so
/// 4096 covers 1024 single-stream scopes in flight (a DiT step announces a few hundred).
pub const DEFAULT_EVENT_POOL: usize = 4096;

/// Most CUDA contexts the pool keeps events for: one primary context per device, and an
/// HGX node has 8 GPUs; 16 leaves room for a worker that makes contexts of its own. Scope
/// boundaries in further contexts are CPU-timed ([`TakeError::TooManyContexts`]).
pub const MAX_CONTEXTS: usize = 16;

/// A pooled event with the context it was made in.
pub type PooledEvent = (Event, Context);

/// The free events of one context.
#[derive(Debug, Default)]
struct ContextSlot {
    /// The context's address; 0 while the slot is unclaimed (no context is at address 0).
    ctx: AtomicUsize,
    free: OnceLock<ArrayQueue<Event>>,
}

/// The pool.
#[derive(Debug)]
pub struct EventPool {
    slots: [ContextSlot; MAX_CONTEXTS],
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
    /// The calling thread's context is not among the first [`MAX_CONTEXTS`] the pool has seen.
    TooManyContexts,
}

impl EventPool {
    /// An empty pool that will hold at most `cap` (≥ 1) events.
    pub fn new(cap: usize) -> EventPool {
        let cap = cap.max(1);
        EventPool { slots: Default::default(), created: AtomicUsize::new(0), cap }
    }

    /// Most events this pool makes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Events made so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed).min(self.cap)
    }

    /// The slot of context `ctx`, claiming a free one the first time; `None` when all
    /// [`MAX_CONTEXTS`] are taken by other contexts.
    fn slot(&self, ctx: Context) -> Option<&ArrayQueue<Event>> {
        let want = ctx.addr();
        for s in &self.slots {
            let have = s.ctx.load(Ordering::Acquire);
            let mine = have == want
                || (have == 0
                    && match s.ctx.compare_exchange(0, want, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => true,
                        Err(other) => other == want,
                    });
            if mine {
                return Some(s.free.get_or_init(|| ArrayQueue::new(self.cap)));
            }
        }
        None
    }

    /// A free event of context `ctx`, the calling thread's current one (the caller asks the
    /// driver, `cuCtxGetCurrent`, once per boundary however many streams it records on), or
    /// a new one made in it while fewer than `cap` exist.
    pub fn take(&self, events: &CudaEvents, ctx: Context) -> Result<PooledEvent, TakeError> {
        let free = self.slot(ctx).ok_or(TakeError::TooManyContexts)?;
        if let Some(e) = free.pop() {
            return Ok((e, ctx));
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

    /// Returns an event to its context's free list. Never fails: each list holds `cap`
    /// entries and at most `cap` events exist (an event of a context the pool never gave
    /// out, which cannot happen, is dropped and stays in the driver).
    pub fn give_back(&self, e: PooledEvent) {
        if let Some(free) = self.slot(e.1) {
            let _ = free.push(e.0);
        }
    }

    /// Free events now, in all contexts.
    pub fn free_len(&self) -> usize {
        self.slots.iter().filter_map(|s| s.free.get()).map(|q| q.len()).sum()
    }
}

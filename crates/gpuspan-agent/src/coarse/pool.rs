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
//! lock-free (`crossbeam` `ArrayQueue`s; a context's free lists are allocated when that
//! context is first seen). When all `cap` events are in flight, [`EventPool::take_stashed`] returns
//! [`TakeError::Exhausted`] and the caller times the scope on the CPU side.
//!
//! Batches (issue 14, item 5): a compare-and-swap on a queue every thread shares was a tenth
//! of an NVTX push + pop. So the collector gives events back [`STASH_EVENTS`] at a time
//! ([`EventReturns`]: one queue push per batch), and an application thread takes a whole
//! batch into its [`EventStash`] (one queue pop), then takes from it with thread-local reads
//! and writes. Events in a thread's stash are free but in no free list: up to
//! `STASH_EVENTS - 1` per thread are held back from the others, and they come back when the
//! thread exits (or takes in another context). Each stash has a slot ([`MAX_STASHES`]) where
//! its thread stores how many it holds (a plain store, never a read-modify-write), so
//! [`EventPool::free_len`] counts them; threads past the slots take one event at a time.

use crossbeam::queue::ArrayQueue;
use gpuspan_cupti::events::{Context, CuResult, Event};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Events moved between the pool and a thread's [`EventStash`] in one queue operation.
pub const STASH_EVENTS: usize = 16;

/// Up to [`STASH_EVENTS`] free events of one context (the first `n` set; `n >= 1` in a queue).
#[derive(Debug, Clone, Copy)]
struct EventBatch {
    n: u8,
    events: [Event; STASH_EVENTS],
}

impl EventBatch {
    const EMPTY: EventBatch = EventBatch { n: 0, events: [Event::UNSET; STASH_EVENTS] };
}

/// The free lists of one context: single events (given back by application threads, and
/// whatever did not fit `batches`) and batches (given back by the collector).
#[derive(Debug)]
struct FreeLists {
    singles: ArrayQueue<Event>,
    /// `cap / STASH_EVENTS` full batches, and room for the partial ones of a few drains.
    batches: ArrayQueue<EventBatch>,
}

/// The free events of one context.
#[derive(Debug, Default)]
struct ContextSlot {
    /// The context's address; 0 while the slot is unclaimed (no context is at address 0).
    ctx: AtomicUsize,
    free: OnceLock<FreeLists>,
}

/// Most threads that keep an [`EventStash`] at once; further threads take one event at a time.
pub const MAX_STASHES: usize = 64;

/// A stash's slot: claimed by one thread, which alone writes `held` (module docs). A cache line
/// each, so that two threads' stores do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct StashCount {
    claimed: AtomicBool,
    held: AtomicUsize,
}

/// No slot ([`EventStash`]).
const NO_SLOT: u8 = u8::MAX;

/// The pool.
#[derive(Debug)]
pub struct EventPool {
    slots: [ContextSlot; MAX_CONTEXTS],
    /// Events held in threads' stashes, a slot per stash.
    stash_counts: [StashCount; MAX_STASHES],
    created: AtomicUsize,
    /// Events in `batches` queues, all contexts (a queue's `len` counts batches).
    in_batches: AtomicUsize,
    cap: usize,
}

/// An application thread's free events at hand: all of one context of one pool, taken from
/// it a batch at a time ([`EventPool::take_stashed`]). Lives in the thread's scope state
/// (`crate::hooks`), which gives it back at thread exit ([`EventPool::retire_stash`]). All
/// cells: the thread-local it lives in has no destructor.
#[derive(Debug)]
pub struct EventStash {
    /// The address of the pool the events and `slot` belong to (0: none yet); a forked
    /// child's new pool does not take its parent's.
    pool: Cell<usize>,
    /// This stash's slot in that pool's stash counts ([`NO_SLOT`] while it has none).
    slot: Cell<u8>,
    ctx: Cell<Context>,
    /// Events held, the first `n` of `events`.
    n: Cell<u8>,
    events: [Cell<Event>; STASH_EVENTS],
    /// Given back for good at its thread's exit: boundaries made later in the thread's
    /// teardown take one event at a time and claim no slot.
    retired: Cell<bool>,
}

impl EventStash {
    /// An empty stash.
    pub const fn new() -> EventStash {
        EventStash {
            pool: Cell::new(0),
            slot: Cell::new(NO_SLOT),
            ctx: Cell::new(Context::UNSET),
            n: Cell::new(0),
            events: [const { Cell::new(Event::UNSET) }; STASH_EVENTS],
            retired: Cell::new(false),
        }
    }

    /// Events held now.
    pub fn len(&self) -> usize {
        usize::from(self.n.get())
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.n.get() == 0
    }
}

impl Default for EventStash {
    fn default() -> Self {
        EventStash::new()
    }
}

/// The collector's side of giving events back: one partial batch per context, pushed to the
/// pool when full ([`STASH_EVENTS`]) or at [`EventReturns::flush`], which the collector calls
/// at the end of each pass, so that no event waits here longer than one drain.
#[derive(Debug, Default)]
pub struct EventReturns {
    /// At most one entry per context ([`MAX_CONTEXTS`] plus those the pool refused).
    partial: Vec<(Context, EventBatch)>,
}

impl EventReturns {
    /// Gives `e` back to `pool`, in a batch.
    pub fn give_back(&mut self, pool: &EventPool, e: PooledEvent) {
        let i = match self.partial.iter().position(|(c, _)| *c == e.1) {
            Some(i) => i,
            None => {
                self.partial.push((e.1, EventBatch::EMPTY));
                self.partial.len() - 1
            }
        };
        let b = &mut self.partial[i].1;
        b.events[usize::from(b.n)] = e.0;
        b.n += 1;
        if usize::from(b.n) == STASH_EVENTS {
            pool.give_back_batch(e.1, std::mem::replace(b, EventBatch::EMPTY));
        }
    }

    /// Pushes every partial batch to `pool`.
    pub fn flush(&mut self, pool: &EventPool) {
        for (ctx, b) in &mut self.partial {
            if b.n > 0 {
                pool.give_back_batch(*ctx, std::mem::replace(b, EventBatch::EMPTY));
            }
        }
    }

    /// Events waiting for the next flush.
    pub fn len(&self) -> usize {
        self.partial.iter().map(|(_, b)| usize::from(b.n)).sum()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        EventPool {
            slots: Default::default(),
            stash_counts: std::array::from_fn(|_| StashCount::default()),
            created: AtomicUsize::new(0),
            in_batches: AtomicUsize::new(0),
            cap,
        }
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
    fn slot(&self, ctx: Context) -> Option<&FreeLists> {
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
                return Some(s.free.get_or_init(|| FreeLists {
                    singles: ArrayQueue::new(self.cap),
                    batches: ArrayQueue::new(self.cap / STASH_EVENTS + 16),
                }));
            }
        }
        None
    }

    /// A free event of context `ctx`, the calling thread's current one (the caller asks the
    /// driver, `cuCtxGetCurrent`, once per boundary however many streams it records on),
    /// taken through the calling thread's `stash`: from the stash when it holds events of
    /// `ctx` from this pool (no shared memory touched); otherwise the stash is given back and
    /// refilled with a whole batch (one queue pop), or else a single free event is taken, or a
    /// new one made in `ctx` while fewer than `cap` exist.
    /// `create` makes an event in the calling thread's current context (`CudaEvents::create`).
    #[inline]
    pub fn take_stashed(&self, ctx: Context, stash: &EventStash, create: impl FnOnce() -> Result<PooledEvent, CuResult>) -> Result<PooledEvent, TakeError> {
        let n = stash.n.get();
        if n > 0 && stash.ctx.get() == ctx && stash.pool.get() == self.addr() {
            let n = n - 1;
            stash.n.set(n);
            // A stash with events of this pool has a slot of this pool.
            if let Some(c) = self.stash_counts.get(usize::from(stash.slot.get())) {
                c.held.store(usize::from(n), Ordering::Relaxed);
            }
            return Ok((stash.events[usize::from(n)].get(), ctx));
        }
        self.refill(ctx, stash, create)
    }

    /// [`Self::take_stashed`] with an empty stash (or one of another context or pool).
    #[cold]
    #[inline(never)]
    fn refill(&self, ctx: Context, stash: &EventStash, create: impl FnOnce() -> Result<PooledEvent, CuResult>) -> Result<PooledEvent, TakeError> {
        self.return_stash(stash);
        let free = self.slot(ctx).ok_or(TakeError::TooManyContexts)?;
        if let Some(b) = free.batches.pop() {
            self.in_batches.fetch_sub(usize::from(b.n), Ordering::Relaxed);
            let n = usize::from(b.n);
            let Some(slot) = self.stash_slot(stash) else {
                // No slot for this thread's stash: the rest of the batch goes back as singles.
                for &e in &b.events[1..n] {
                    let _ = free.singles.push(e);
                }
                return Ok((b.events[0], ctx));
            };
            let keep = n - 1;
            for (cell, &e) in stash.events.iter().zip(&b.events[..keep]) {
                cell.set(e);
            }
            stash.n.set(keep as u8);
            stash.ctx.set(ctx);
            slot.held.store(keep, Ordering::Relaxed);
            return Ok((b.events[keep], ctx));
        }
        if let Some(e) = free.singles.pop() {
            return Ok((e, ctx));
        }
        self.create(create)
    }

    /// `stash`'s slot in this pool, claimed the first time (the stash then belongs to this
    /// pool); `None` when all [`MAX_STASHES`] are claimed by other threads.
    fn stash_slot(&self, stash: &EventStash) -> Option<&StashCount> {
        if stash.retired.get() {
            return None;
        }
        if stash.pool.get() == self.addr() {
            if let Some(c) = self.stash_counts.get(usize::from(stash.slot.get())) {
                return Some(c);
            }
        }
        let (i, c) = self
            .stash_counts
            .iter()
            .enumerate()
            .find(|(_, c)| c.claimed.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        stash.pool.set(self.addr());
        stash.slot.set(i as u8);
        Some(c)
    }

    /// A new event in the calling thread's current context while fewer than `cap` exist.
    fn create(&self, create: impl FnOnce() -> Result<PooledEvent, CuResult>) -> Result<PooledEvent, TakeError> {
        if self.created.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.created.fetch_sub(1, Ordering::Relaxed);
            return Err(TakeError::Exhausted);
        }
        create().map_err(|code| {
            self.created.fetch_sub(1, Ordering::Relaxed);
            TakeError::Driver(code)
        })
    }

    /// This pool's address: which pool a stash's events came from.
    fn addr(&self) -> usize {
        self as *const EventPool as usize
    }

    /// Gives back every event in `stash` that came from this pool (a stash filled by another
    /// pool, a forked parent's, is only emptied) and leaves it empty; it keeps its slot.
    pub fn return_stash(&self, stash: &EventStash) {
        let n = usize::from(stash.n.replace(0));
        if stash.pool.get() != self.addr() {
            return;
        }
        let ctx = stash.ctx.get();
        for e in &stash.events[..n] {
            self.give_back((e.get(), ctx));
        }
        if let Some(c) = self.stash_counts.get(usize::from(stash.slot.get())) {
            c.held.store(0, Ordering::Relaxed);
        }
    }

    /// [`Self::return_stash`], and the stash's slot is freed for another thread (at the
    /// stash's thread's exit).
    pub fn release_stash(&self, stash: &EventStash) {
        self.return_stash(stash);
        if stash.pool.get() != self.addr() {
            return;
        }
        if let Some(c) = self.stash_counts.get(usize::from(stash.slot.replace(NO_SLOT))) {
            c.claimed.store(false, Ordering::Release);
        }
    }

    /// [`Self::release_stash`] at the stash's thread's exit, for good: a boundary the thread
    /// makes later (in its teardown) takes a single event, and never fills the stash again,
    /// which nothing would then give back.
    pub fn retire_stash(&self, stash: &EventStash) {
        stash.retired.set(true);
        self.release_stash(stash);
    }

    /// Returns an event to its context's free list. Never fails: each list holds `cap`
    /// entries and at most `cap` events exist (an event of a context the pool never gave
    /// out, which cannot happen, is dropped and stays in the driver).
    pub fn give_back(&self, e: PooledEvent) {
        if let Some(free) = self.slot(e.1) {
            let _ = free.singles.push(e.0);
        }
    }

    /// Returns a batch of events of context `ctx` (from [`EventReturns`]); when the batch
    /// queue is full, one by one.
    fn give_back_batch(&self, ctx: Context, b: EventBatch) {
        let Some(free) = self.slot(ctx) else { return };
        let n = usize::from(b.n);
        // Counted before it can be taken, so that the count never goes below zero.
        self.in_batches.fetch_add(n, Ordering::Relaxed);
        if let Err(b) = free.batches.push(b) {
            self.in_batches.fetch_sub(n, Ordering::Relaxed);
            for &e in &b.events[..n] {
                let _ = free.singles.push(e);
            }
        }
    }

    /// Free events now, in all contexts: in the free lists and in threads' stashes.
    pub fn free_len(&self) -> usize {
        let lists = self.slots.iter().filter_map(|s| s.free.get()).map(|q| q.singles.len()).sum::<usize>();
        let stashed = self.stash_counts.iter().map(|c| c.held.load(Ordering::Relaxed)).sum::<usize>();
        lists + self.in_batches.load(Ordering::Relaxed) + stashed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: fn() -> Context = || Context::from_raw(0xa0);
    const B: fn() -> Context = || Context::from_raw(0xb0);

    /// A driver's `cuEventCreate` in context `ctx`, numbering events from `next`.
    fn maker(ctx: Context, next: &Cell<usize>) -> impl FnOnce() -> Result<PooledEvent, CuResult> + '_ {
        move || {
            next.set(next.get() + 1);
            Ok((Event::from_raw(next.get()), ctx))
        }
    }

    /// `n` events made in `ctx` and given back through the collector's batches.
    fn fill(pool: &EventPool, ctx: Context, n: usize, next: &Cell<usize>) -> Vec<PooledEvent> {
        let none = EventStash::new();
        let made: Vec<PooledEvent> = (0..n).map(|_| pool.take_stashed(ctx, &none, maker(ctx, next)).unwrap()).collect();
        let mut returns = EventReturns::default();
        for &e in &made {
            returns.give_back(pool, e);
        }
        assert_eq!(returns.len(), n % STASH_EVENTS, "full batches go at once");
        returns.flush(pool);
        assert!(returns.is_empty());
        made
    }

    #[test]
    fn a_thread_takes_a_batch_into_its_stash_and_then_takes_from_it() {
        let pool = EventPool::new(64);
        let next = Cell::new(0);
        let made = fill(&pool, A(), 40, &next);
        assert_eq!((pool.created(), pool.free_len()), (40, 40));
        let stash = EventStash::new();
        let mut taken = Vec::new();
        for i in 0..STASH_EVENTS {
            taken.push(pool.take_stashed(A(), &stash, || panic!("no event is made while free ones remain")).unwrap());
            assert_eq!(pool.free_len(), 40 - 1 - i, "the free lists and the stash ({i})");
            assert_eq!(stash.len(), STASH_EVENTS - 1 - i);
        }
        assert!(taken.iter().all(|e| made.contains(e) && e.1 == A()));
        let mut unique = taken.clone();
        unique.sort_by_key(|e| e.0.addr());
        unique.dedup();
        assert_eq!(unique.len(), STASH_EVENTS, "no event is handed out twice");
    }

    #[test]
    fn a_stash_of_another_context_goes_back_before_the_thread_takes_in_the_new_one() {
        let pool = EventPool::new(64);
        let next = Cell::new(0);
        fill(&pool, A(), 20, &next);
        fill(&pool, B(), 20, &next);
        let stash = EventStash::new();
        assert_eq!(pool.take_stashed(A(), &stash, || unreachable!()).unwrap().1, A());
        assert_eq!((stash.len(), pool.free_len()), (STASH_EVENTS - 1, 39));
        let b = pool.take_stashed(B(), &stash, || unreachable!()).unwrap();
        assert_eq!(b.1, B(), "an event of the context current now");
        // A's stashed events are free again; B's batch is in the stash.
        assert_eq!((stash.len(), pool.free_len()), (STASH_EVENTS - 1, 40 - 2));
        pool.return_stash(&stash);
        assert_eq!((stash.len(), pool.free_len()), (0, 40 - 2), "all but the two taken");
    }

    #[test]
    fn a_stash_from_another_pool_is_emptied_not_given_to_this_one() {
        // A forked child's new pool: the parent's events are not the child's to hand out.
        let (parent, child) = (EventPool::new(64), EventPool::new(64));
        let next = Cell::new(0);
        fill(&parent, A(), 20, &next);
        let stash = EventStash::new();
        parent.take_stashed(A(), &stash, || unreachable!()).unwrap();
        assert!(!stash.is_empty());
        let e = child.take_stashed(A(), &stash, maker(A(), &next)).unwrap();
        assert_eq!(e.0.addr(), 21, "the child made its own event");
        assert_eq!((stash.len(), child.free_len(), child.created()), (0, 0, 1));
    }

    #[test]
    fn a_full_pool_says_exhausted_and_single_give_backs_are_taken_again() {
        let pool = EventPool::new(3);
        let next = Cell::new(0);
        let stash = EventStash::new();
        let made: Vec<PooledEvent> = (0..3).map(|_| pool.take_stashed(A(), &stash, maker(A(), &next)).unwrap()).collect();
        assert_eq!(pool.take_stashed(A(), &stash, maker(A(), &next)), Err(TakeError::Exhausted));
        assert_eq!(pool.created(), 3);
        // An application thread gives one back on its own (a failed record).
        pool.give_back(made[1]);
        assert_eq!(pool.free_len(), 1);
        assert_eq!(pool.take_stashed(A(), &stash, || unreachable!()), Ok(made[1]));
        assert_eq!(pool.take_stashed(A(), &stash, maker(A(), &next)), Err(TakeError::Exhausted));
    }

    #[test]
    fn a_driver_error_leaves_nothing_counted_as_made() {
        let pool = EventPool::new(3);
        let stash = EventStash::new();
        assert_eq!(pool.take_stashed(A(), &stash, || Err(201)), Err(TakeError::Driver(201)));
        assert_eq!(pool.created(), 0);
    }

    #[test]
    fn threads_past_the_stash_slots_take_one_event_at_a_time_until_a_slot_is_freed() {
        let pool = EventPool::new(4096);
        let next = Cell::new(0);
        fill(&pool, A(), 2000, &next);
        let stashes: Vec<EventStash> = (0..MAX_STASHES).map(|_| EventStash::new()).collect();
        for s in &stashes {
            pool.take_stashed(A(), s, || unreachable!()).unwrap();
            assert_eq!(s.len(), STASH_EVENTS - 1);
        }
        let late = EventStash::new();
        pool.take_stashed(A(), &late, || unreachable!()).unwrap();
        assert_eq!(late.len(), 0, "no slot: the batch's rest went back");
        assert_eq!(pool.free_len(), 2000 - MAX_STASHES - 1, "stashed events are counted free");
        // A thread exits: its slot and its events are free again.
        pool.release_stash(&stashes[3]);
        assert_eq!(pool.free_len(), 2000 - MAX_STASHES - 1);
        pool.take_stashed(A(), &late, || unreachable!()).unwrap();
        assert_eq!(late.len(), STASH_EVENTS - 1, "the freed slot is taken");
        assert_eq!(pool.free_len(), 2000 - MAX_STASHES - 2);
    }

    #[test]
    fn a_retired_stash_gives_its_events_and_slot_back_and_takes_one_event_at_a_time() {
        // A thread's exit, then a boundary in its teardown: nothing is stashed again, since
        // nothing would give it back.
        let pool = EventPool::new(64);
        let next = Cell::new(0);
        fill(&pool, A(), 40, &next);
        let stash = EventStash::new();
        pool.take_stashed(A(), &stash, || unreachable!()).unwrap();
        assert_eq!((stash.len(), pool.free_len()), (STASH_EVENTS - 1, 39));
        pool.retire_stash(&stash);
        assert_eq!((stash.len(), pool.free_len()), (0, 39), "the stashed events are free again");
        assert!(pool.stash_counts.iter().all(|c| !c.claimed.load(Ordering::Relaxed)), "and its slot");
        pool.take_stashed(A(), &stash, || unreachable!()).unwrap();
        assert_eq!((stash.len(), pool.free_len()), (0, 38), "one event taken, none stashed");
        assert!(pool.stash_counts.iter().all(|c| !c.claimed.load(Ordering::Relaxed)), "no slot claimed");
    }
}

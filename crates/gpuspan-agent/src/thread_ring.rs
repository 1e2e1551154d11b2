//! Per-thread rings: how a scope boundary travels from an application thread to the
//! collector (issue 14, item 5).
//!
//! Each application thread that opens a scope gets, at its first boundary, a
//! single-producer single-consumer ring of its own ([`rtrb`]: a push is a slot write and one
//! release store, no compare-and-swap, and the producer reads the collector's position only
//! when its cached copy says the ring is full). One entry, [`Boundary`], carries the
//! boundary's scope event and, in coarse mode, its mark together: one push per boundary,
//! where the shared multi-producer queues (`Shared::scope_queue`, `Coarse::marks`) took two,
//! each a compare-and-swap on a cache line every thread and the collector contend for.
//!
//! - **First boundary of a thread.** It allocates the ring ([`THREAD_RING_CAP`] entries of
//!   `size_of::<Boundary>()` (128 bytes): 1 MiB) and hands the consumer to a free registry slot
//!   (one of [`MAX_THREAD_RINGS`]) under that slot's `try_lock`: it never waits on the
//!   collector. When no slot is free, the thread uses the shared boundary queue
//!   (`Shared::scope_queue`) for the rest of this agent generation ([`Pushed::NoRing`]), so a
//!   thread's boundaries never move from one path to the other (the collector drains the
//!   shared queue and the rings one after the other, so a thread on both would be read out
//!   of order).
//! - **Steady state.** No allocation, no lock: the push, through the [`RingSide`] the caller
//!   keeps in its own thread-local (one thread-local access per boundary in all). A full
//!   ring drops the boundary ([`Pushed::Full`]; the caller counts it), it never blocks.
//! - **Thread exit.** The thread-local producer is dropped; the collector drains what is
//!   left and then frees the ring and its slot ([`ThreadRings::drain`]). A boundary made
//!   later in that thread's teardown (another thread-local destructor opening a scope)
//!   finds its caller's thread-local gone and is not tracked (`crate::hooks`).
//! - **fork.** The registry belongs to one agent generation (`crate::shared`): a forked
//!   child's thread still holds its parent's producer, sees that it belongs to another
//!   registry (by address) and registers anew.
//!
//! One consumer at a time: the collector, which holds its state lock while it drains.

use crate::coarse::mark::{GpuMark, Recorded};
use crate::scope_names::QueuedScope;
use rtrb::{Consumer, Producer, RingBuffer};
use std::cell::RefCell;
use std::sync::Mutex;

/// Entries per thread ring (1 MiB of address space, resident as it is used). The collector
/// drains every 5 ms, but a drain can wait behind the decoding of CUPTI buffers for tens of
/// milliseconds (fine mode, a debug build): 1,024 entries dropped scope events of the
/// simulated demo there, and the shared scope queue this replaces held 16,384 of all threads.
pub const THREAD_RING_CAP: usize = 8192;

/// Most threads with a ring at once (16 MiB of rings if all are taken and full); further
/// threads use the shared boundary queue. A worker announces scopes from one thread per device it
/// drives, at most 8 on an HGX node.
pub const MAX_THREAD_RINGS: usize = 16;

/// One scope boundary as an application thread queues it: 128 bytes, copied inline into the
/// ring (a bigger entry took a `memcpy` call per push and pop, issue 14 item 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Boundary {
    /// The scope event; a begin whose name could not be queued (the name queue was full,
    /// already counted as a dropped scope event) names [`crate::scope_names::NAME_DROPPED`]
    /// ([`QueuedScope::name_dropped`]), and still carries the scope for its mark.
    pub scope: QueuedScope,
    /// Coarse mode: the boundary's recorded CUDA events ([`Recorded`]); `None` otherwise.
    pub mark: Option<Recorded>,
}

impl Boundary {
    /// The boundary's mark as the collector keeps it: the recorded events with the scope and
    /// parent (begins only) of the scope event, at `cpu_ns` (the scope event's boundary-clock
    /// reading converted, [`crate::boundary_clock::TickMap`]). `None` without a mark.
    pub fn gpu_mark(&self, cpu_ns: u64) -> Option<GpuMark> {
        let rec = self.mark?;
        match self.scope {
            QueuedScope::Begin { id, parent, .. } => Some(GpuMark::new(id, parent, cpu_ns, rec)),
            QueuedScope::End { id, .. } => Some(GpuMark::new(id, 0, cpu_ns, rec)),
            QueuedScope::InCapture { .. } => None,
        }
    }
}

/// What became of a pushed boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// On this thread's ring.
    Ring,
    /// This thread's ring is full: the boundary is to be dropped and counted.
    Full,
    /// This thread has no ring (no registry slot was free, or the ring side is borrowed by
    /// an interrupted push: a signal handler's scope): the boundary is for the shared queue.
    NoRing,
}

/// One thread's side of the registry: what it holds of its ring. It lives in the caller's
/// thread-local (`crate::hooks`'s per-thread scope state, so a boundary takes one
/// thread-local access, not two: issue 14, item 5) and is dropped with it at thread exit,
/// which tells the collector the ring is abandoned.
#[derive(Default)]
pub struct RingSide(RefCell<ThreadSide>);

impl RingSide {
    /// No ring yet (registered at the thread's first boundary).
    pub const fn new() -> RingSide {
        RingSide(RefCell::new(ThreadSide::Unregistered))
    }
}

#[derive(Default)]
enum ThreadSide {
    /// No boundary made yet in any registry.
    #[default]
    Unregistered,
    /// The producer of a ring registered in the registry at address `registry`.
    Ring { registry: usize, producer: Producer<Boundary> },
    /// The registry at address `registry` had no free slot: the shared queue for good.
    Refused { registry: usize },
}

/// The registry of thread rings: one per agent generation, in `Shared`.
pub struct ThreadRings {
    slots: [Mutex<Option<Consumer<Boundary>>>; MAX_THREAD_RINGS],
}

impl Default for ThreadRings {
    fn default() -> Self {
        ThreadRings { slots: std::array::from_fn(|_| Mutex::new(None)) }
    }
}

impl std::fmt::Debug for ThreadRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadRings").field("live", &self.live()).finish()
    }
}

impl ThreadRings {
    /// Queues a copy of `b` on the ring of the thread whose side is `side`, registering one at
    /// the thread's first boundary. Never blocks; allocates only at that first boundary. (By
    /// reference: each move of a boundary is a copy the hot path pays for.)
    #[inline]
    pub fn push(&self, side: &RingSide, b: &Boundary) -> Pushed {
        let registry = self as *const ThreadRings as usize;
        // A signal handler that opens a scope while this thread is inside `push`: its
        // boundary takes the shared queue.
        let Ok(mut side) = side.0.try_borrow_mut() else { return Pushed::NoRing };
        if let ThreadSide::Ring { registry: r, producer } = &mut *side {
            if *r == registry {
                // A 128-byte copy, inline (`push_entire_slice`, a slice copy, called `memcpy`).
                return match producer.push(*b) {
                    Ok(()) => Pushed::Ring,
                    Err(_) => Pushed::Full,
                };
            }
        }
        self.push_cold(&mut side, b)
    }

    /// [`Self::push`] at a thread's first boundary in this registry (its first ever, or its
    /// first after a fork) or on a thread the registry refused.
    #[cold]
    #[inline(never)]
    fn push_cold(&self, side: &mut ThreadSide, b: &Boundary) -> Pushed {
        let registry = self as *const ThreadRings as usize;
        let mine = match &*side {
            ThreadSide::Ring { registry: r, .. } | ThreadSide::Refused { registry: r } => *r == registry,
            ThreadSide::Unregistered => false,
        };
        if !mine {
            *side = match self.register() {
                Some(producer) => ThreadSide::Ring { registry, producer },
                None => ThreadSide::Refused { registry },
            };
        }
        match side {
            ThreadSide::Ring { producer, .. } => match producer.push(*b) {
                Ok(()) => Pushed::Ring,
                Err(_) => Pushed::Full,
            },
            _ => Pushed::NoRing,
        }
    }

    /// A new ring whose consumer went into a free slot, or `None` when every slot is taken
    /// (or being drained).
    fn register(&self) -> Option<Producer<Boundary>> {
        for slot in &self.slots {
            let Ok(mut s) = slot.try_lock() else { continue };
            if s.is_none() {
                let (producer, consumer) = RingBuffer::new(THREAD_RING_CAP);
                *s = Some(consumer);
                return Some(producer);
            }
        }
        None
    }

    /// Hands every boundary queued on every ring to `f`, ring after ring, each in its
    /// thread's order, and frees the rings of threads that have exited once they are empty.
    pub fn drain(&self, mut f: impl FnMut(Boundary)) {
        for slot in &self.slots {
            let Ok(mut s) = slot.lock() else { continue };
            let Some(c) = s.as_mut() else { continue };
            // Read before draining: a producer that pushes and then exits has pushed
            // everything by the time it is seen gone.
            let gone = c.is_abandoned();
            while let Ok(b) = c.pop() {
                f(b);
            }
            if gone {
                *s = None;
            }
        }
    }

    /// Rings registered now (threads alive or not yet drained after their exit).
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.try_lock().map(|s| s.is_some()).unwrap_or(true)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SIDE: RingSide = const { RingSide::new() };
    }

    /// Pushes from the calling thread, as `crate::hooks` does with its own thread-local.
    fn push(r: &ThreadRings, b: &Boundary) -> Pushed {
        SIDE.with(|side| r.push(side, b))
    }

    fn end(id: u64) -> Boundary {
        Boundary { scope: QueuedScope::End { id, ts_ticks: id, launches: None, graph_launches: 0 }, mark: None }
    }

    fn ids(r: &ThreadRings) -> Vec<u64> {
        let mut out = Vec::new();
        r.drain(|b| match b.scope {
            QueuedScope::End { id, .. } => out.push(id),
            other => panic!("unexpected {other:?}"),
        });
        out
    }

    #[test]
    fn a_boundary_is_the_size_the_ring_capacity_assumes() {
        // THREAD_RING_CAP's doc: 8,192 entries of 128 bytes are 1 MiB; every byte of it is
        // copied by each NVTX push and pop, and up to 128 bytes the copy is inline (x86-64's
        // eight 16-byte moves, issue 14 item 5).
        assert!(std::mem::size_of::<Boundary>() <= 128, "{}", std::mem::size_of::<Boundary>());
    }

    #[test]
    fn a_boundarys_mark_takes_its_scope_and_parent_from_the_scope_event_and_the_converted_time() {
        use crate::scope_names::NAME_DROPPED;
        use gpuspan_core::spans::TimingSource;
        let rec = Recorded::new(false, TimingSource::LegacyStream);
        let begin = |name| QueuedScope::Begin { id: 7, parent: 3, thread_id: 11, ts_ticks: 500, name };
        let b = Boundary { scope: begin(1 << 63 | 42), mark: Some(rec) };
        // The time is the reading (500 ticks) as the collector converted it.
        assert_eq!(b.gpu_mark(12_345), Some(GpuMark::new(7, 3, 12_345, rec)));
        assert!(!b.scope.name_dropped());
        // A begin whose name was dropped still names the scope its mark belongs to.
        let dropped = Boundary { scope: begin(NAME_DROPPED), mark: Some(rec) };
        assert!(dropped.scope.name_dropped());
        assert_eq!(dropped.gpu_mark(500), Some(GpuMark::new(7, 3, 500, rec)));
        let end_rec = Recorded::new(true, TimingSource::LegacyStream);
        let e = Boundary { scope: QueuedScope::End { id: 7, ts_ticks: 900, launches: Some(2), graph_launches: 0 }, mark: Some(end_rec) };
        assert_eq!(e.gpu_mark(23_456), Some(GpuMark::new(7, 0, 23_456, end_rec)), "an end's mark has no parent");
        assert!(!e.scope.name_dropped());
        assert_eq!(Boundary { scope: QueuedScope::InCapture { id: 7 }, mark: None }.gpu_mark(1), None);
        assert_eq!(Boundary { scope: begin(5), mark: None }.gpu_mark(1), None, "no mark outside coarse mode");
    }

    #[test]
    fn a_threads_boundaries_come_out_in_order_and_a_full_ring_hands_back() {
        let r = ThreadRings::default();
        for i in 0..THREAD_RING_CAP as u64 {
            assert_eq!(push(&r, &end(i)), Pushed::Ring);
        }
        assert_eq!(push(&r, &end(99_999)), Pushed::Full);
        assert_eq!(ids(&r), (0..THREAD_RING_CAP as u64).collect::<Vec<_>>());
        assert!(push(&r, &end(7)) == Pushed::Ring);
        assert_eq!(ids(&r), vec![7]);
        assert_eq!(r.live(), 1);
    }

    #[test]
    fn an_exited_threads_ring_is_drained_then_freed() {
        let r = std::sync::Arc::new(ThreadRings::default());
        let r2 = r.clone();
        std::thread::spawn(move || {
            for i in 0..10 {
                assert_eq!(push(&r2, &end(i)), Pushed::Ring);
            }
        })
        .join()
        .unwrap();
        assert_eq!(r.live(), 1);
        assert_eq!(ids(&r), (0..10).collect::<Vec<_>>());
        assert_eq!(r.live(), 0, "the exited thread's ring is freed once drained");
    }

    #[test]
    fn threads_past_the_slots_use_the_shared_queues_for_good() {
        let r = std::sync::Arc::new(ThreadRings::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = std::sync::Arc::new(Mutex::new(stop_rx));
        let mut threads = Vec::new();
        for i in 0..MAX_THREAD_RINGS as u64 + 3 {
            let (r, tx, stop) = (r.clone(), tx.clone(), stop_rx.clone());
            threads.push(std::thread::spawn(move || {
                let first = push(&r, &end(i)) == Pushed::Ring;
                tx.send(first).unwrap();
                // Hold the ring until every thread has pushed, then push once more.
                let _ = stop.lock().unwrap().recv();
                let second = push(&r, &end(i)) == Pushed::Ring;
                assert_eq!(first, second, "thread {i} changed path");
            }));
        }
        let firsts: Vec<bool> = (0..MAX_THREAD_RINGS + 3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(firsts.iter().filter(|&&f| f).count(), MAX_THREAD_RINGS);
        drop(stop_tx);
        for t in threads {
            t.join().unwrap();
        }
        let drained = ids(&r);
        assert_eq!(drained.len(), 2 * MAX_THREAD_RINGS);
        assert_eq!(r.live(), 0);
    }

    #[test]
    fn another_registry_gets_a_ring_of_its_own() {
        // As after fork: the thread's producer belongs to the parent's registry.
        let parent = ThreadRings::default();
        let child = ThreadRings::default();
        assert_eq!(push(&parent, &end(1)), Pushed::Ring);
        assert_eq!(push(&child, &end(2)), Pushed::Ring);
        assert_eq!(ids(&child), vec![2]);
    }
}

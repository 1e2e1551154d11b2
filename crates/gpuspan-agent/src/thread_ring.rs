//! Per-thread rings: how a scope boundary travels from an application thread to the
//! collector (issue 14, item 5).
//!
//! Each application thread that opens a scope gets, at its first boundary, a
//! single-producer single-consumer ring of its own ([`crate::word_ring`]: a push is the
//! entry's word stores and one release store, no compare-and-swap, and the producer reads the
//! collector's position only when its cached copy says the ring is full). One entry carries
//! the boundary's scope event and, in coarse mode, its mark together ([`Boundary`], stored
//! word by word: [`store_boundary`]): one push per boundary, where the shared multi-producer
//! queues this replaced took two, each a compare-and-swap on a cache line every thread and
//! the collector contend for.
//!
//! - **First boundary of a thread.** It takes a free registry slot (one of
//!   [`MAX_THREAD_RINGS`]) under that slot's `try_lock`, never waiting on the collector, and
//!   the slot's ring: the one an exited thread left there, or a new one
//!   ([`THREAD_RING_CAP`] entries of 16 words (128 bytes): 1 MiB, allocated then). When no
//!   slot is free, the thread uses the shared boundary queue (`Shared::scope_queue`) for the
//!   rest of this agent generation ([`Pushed::NoRing`]). A thread moves from one path to the
//!   other only at its exit, from its ring to the shared queue (below), never back, and the
//!   collector reads the rings before the shared queue's boundaries queued by then, so each
//!   thread's boundaries are read in order.
//! - **Steady state.** No allocation, no lock: the push, through the [`RingSide`] the caller
//!   keeps in its own thread-local (one thread-local access per boundary in all). A full
//!   ring drops the boundary ([`Pushed::Full`]; the caller counts it), it never blocks.
//! - **Thread exit.** The caller retires the thread's side ([`RingSide::retire`], from a
//!   thread-local destructor of its own: `crate::hooks`): the ring is abandoned, and a
//!   boundary made later in the thread's teardown (a range popped by another thread-local's
//!   or a `pthread_key` destructor) takes the shared queue, with its scope stack still there
//!   (the side is cells in a thread-local without a destructor). The collector drains what
//!   is left and frees the slot ([`ThreadRings::drain`]); the slot keeps its ring for the
//!   next thread that registers (rings are never freed: `crate::word_ring`), so there are at
//!   most [`MAX_THREAD_RINGS`] per agent generation.
//! - **fork.** The registry belongs to one agent generation (`crate::shared`): a forked
//!   child's thread still holds its parent's producer, sees that it belongs to another
//!   registry (by address) and registers anew.
//!
//! One consumer at a time: the collector, which holds its state lock while it drains.

use crate::coarse::mark::{GpuMark, Recorded};
use crate::scope_names::QueuedScope;
use crate::word_ring::{Consumer, Entry, Producer, Ring};
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Entries per thread ring (1 MiB, zeroed and so resident from the thread's first boundary:
/// `crate::word_ring` allocates atomic words). The collector
/// drains every 5 ms, but a drain can wait behind the decoding of CUPTI buffers for tens of
/// milliseconds (fine mode, a debug build): 1,024 entries dropped scope events of the
/// simulated demo there, and the shared scope queue this replaces held 16,384 of all threads.
pub const THREAD_RING_CAP: usize = 8192;

/// Most threads with a ring at once (16 MiB of rings if all are taken); further
/// threads use the shared boundary queue. A worker announces scopes from one thread per device it
/// drives, at most 8 on an HGX node.
pub const MAX_THREAD_RINGS: usize = 16;

/// One scope boundary as an application thread queues it: on its ring as the words of one
/// entry ([`store_boundary`]), on the shared queue as is (128 bytes).
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
    /// This thread has no ring (no registry slot was free, the thread is exiting and its side
    /// was retired, or the side is busy with an interrupted push: a signal handler's scope):
    /// the boundary is for the shared queue.
    NoRing,
}

/// One thread's side of the registry: what it holds of its ring, in cells. It lives in the
/// caller's thread-local (`crate::hooks`'s per-thread scope state, so a boundary takes one
/// thread-local access, not two: issue 14, item 5), which has no destructor, so the side
/// stays readable through the thread's whole teardown; the caller retires it
/// ([`RingSide::retire`]) when the thread exits.
#[derive(Default)]
pub struct RingSide {
    /// Attached to a ring of `registry` (or to none: no boundary yet, refused, or retired).
    producer: Producer,
    /// The address of the registry the ring or the refusal belongs to; 0 before the
    /// thread's first boundary.
    registry: Cell<usize>,
    /// Retired at thread exit: the shared queue for good.
    retired: Cell<bool>,
    /// A push is under way (a signal handler's scope that interrupts it takes the shared
    /// queue).
    busy: Cell<bool>,
}

impl RingSide {
    /// No ring yet (registered at the thread's first boundary).
    pub const fn new() -> RingSide {
        RingSide { producer: Producer::new(), registry: Cell::new(0), retired: Cell::new(false), busy: Cell::new(false) }
    }

    /// At the thread's exit: abandons its ring (the collector drains it and frees its slot)
    /// and sends this thread's later boundaries to the shared queue.
    pub fn retire(&self) {
        self.producer.abandon();
        self.retired.set(true);
    }

    /// Whether [`RingSide::retire`] ran.
    pub fn is_retired(&self) -> bool {
        self.retired.get()
    }
}

/// One registry slot: the ring it keeps (made at its first registration, kept for the
/// next) and whether a thread holds it.
#[derive(Default)]
struct Slot {
    consumer: Option<Consumer>,
    /// A thread registered the ring and the collector has not yet drained it after its
    /// thread abandoned it.
    live: bool,
}

/// The registry of thread rings: one per agent generation, in `Shared`.
pub struct ThreadRings {
    slots: [Mutex<Slot>; MAX_THREAD_RINGS],
}

impl Default for ThreadRings {
    fn default() -> Self {
        ThreadRings { slots: std::array::from_fn(|_| Mutex::new(Slot::default())) }
    }
}

impl std::fmt::Debug for ThreadRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadRings").field("live", &self.live()).finish()
    }
}

impl ThreadRings {
    /// Queues the boundary of `scope` with coarse mode's `mark` on the ring of the thread
    /// whose side is `side`, registering one at the thread's first boundary. Never blocks;
    /// allocates only at that first boundary. The parts are passed by reference and stored
    /// word by word into the ring ([`store_boundary`]): a [`Boundary`] built to be pushed
    /// would be one more copy of them.
    #[inline(always)]
    pub fn push(&self, side: &RingSide, scope: &QueuedScope, mark: Option<&Recorded>) -> Pushed {
        let registry = self as *const ThreadRings as usize;
        // A signal handler that opens a scope while this thread is inside `push`: its
        // boundary takes the shared queue.
        if side.busy.replace(true) {
            return Pushed::NoRing;
        }
        let pushed = if side.registry.get() == registry && side.producer.is_attached() {
            if side.producer.push_with(|e| store_boundary(e, scope, mark)) {
                Pushed::Ring
            } else {
                Pushed::Full
            }
        } else {
            self.push_cold(side, scope, mark)
        };
        side.busy.set(false);
        pushed
    }

    /// [`Self::push`] at a thread's first boundary in this registry (its first ever, or its
    /// first after a fork), on a thread the registry refused, or on a retired side.
    #[cold]
    #[inline(never)]
    fn push_cold(&self, side: &RingSide, scope: &QueuedScope, mark: Option<&Recorded>) -> Pushed {
        let registry = self as *const ThreadRings as usize;
        if side.retired.get() {
            return Pushed::NoRing;
        }
        if side.registry.get() != registry {
            side.registry.set(registry);
            // A forked child's thread still holds its parent's ring: let go of it (in the
            // child's copy) and register here.
            side.producer.abandon();
            if let Some(ring) = self.register() {
                side.producer.attach(ring);
            }
        }
        if side.producer.push_with(|e| store_boundary(e, scope, mark)) {
            Pushed::Ring
        } else if side.producer.is_attached() {
            Pushed::Full
        } else {
            Pushed::NoRing
        }
    }

    /// A ring of a free slot, the slot's own or a new one, now taken; `None` when every slot
    /// is taken (or being drained).
    fn register(&self) -> Option<&'static Ring> {
        for slot in &self.slots {
            let Ok(mut s) = slot.try_lock() else { continue };
            if s.live {
                continue;
            }
            let ring = match &mut s.consumer {
                // Drained when its last thread was seen gone (`drain`).
                Some(c) if c.reopen() => c.ring(),
                Some(_) => continue,
                None => {
                    let c = Consumer::new(Ring::leak(THREAD_RING_CAP));
                    let ring = c.ring();
                    s.consumer = Some(c);
                    ring
                }
            };
            s.live = true;
            return Some(ring);
        }
        None
    }

    /// Hands every boundary queued on every ring to `f`, ring after ring, each in its
    /// thread's order, and frees the rings of threads that have exited once they are empty.
    pub fn drain(&self, mut f: impl FnMut(Boundary)) {
        for slot in &self.slots {
            let Ok(mut s) = slot.lock() else { continue };
            if !s.live {
                continue;
            }
            let Some(c) = s.consumer.as_mut() else { continue };
            // Read before draining: a producer that pushes and then exits has pushed
            // everything by the time it is seen gone.
            let gone = c.is_abandoned();
            while let Some(b) = c.pop_with(load_boundary) {
                // An entry of an unknown kind, which `store_boundary` never writes, is skipped.
                if let Some(b) = b {
                    f(b);
                }
            }
            if gone {
                s.live = false;
            }
        }
    }

    /// Rings registered now (threads alive or not yet drained after their exit).
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.try_lock().map(|s| s.live).unwrap_or(true)).count()
    }

    /// Rings made so far (each kept by its slot for the next thread): at most
    /// [`MAX_THREAD_RINGS`].
    pub fn made(&self) -> usize {
        self.slots.iter().filter(|s| s.try_lock().map(|s| s.consumer.is_some()).unwrap_or(true)).count()
    }
}

/// Entry header word: the kind (bits 0–7), a mark follows (bit 8), an end's launch count is
/// known (bit 9), a begin's thread id (bits 32–63).
const KIND_BEGIN: u64 = 0;
const KIND_END: u64 = 1;
const KIND_IN_CAPTURE: u64 = 2;
const HAS_MARK: u64 = 1 << 8;
const HAS_LAUNCHES: u64 = 1 << 9;

/// Stores a boundary into ring entry `e`, each word from the field that holds it: word 0 the
/// header, 1 the scope id, 2 a begin's parent or an end's launch counts, 3 the boundary-clock
/// reading, 4 a begin's name key, then the mark's words from [`crate::coarse::mark::RECORDED_FIRST_WORD`]
/// ([`Recorded::store_words`]).
#[inline(always)]
pub fn store_boundary(e: &Entry, scope: &QueuedScope, mark: Option<&Recorded>) {
    let has_mark = if mark.is_some() { HAS_MARK } else { 0 };
    let put = |i: usize, v: u64| e[i].store(v, Ordering::Relaxed);
    match *scope {
        QueuedScope::Begin { id, parent, thread_id, ts_ticks, name } => {
            put(0, KIND_BEGIN | has_mark | u64::from(thread_id) << 32);
            put(1, id);
            put(2, parent);
            put(3, ts_ticks);
            put(4, name);
        }
        QueuedScope::End { id, ts_ticks, launches, graph_launches } => {
            let has_launches = if launches.is_some() { HAS_LAUNCHES } else { 0 };
            put(0, KIND_END | has_mark | has_launches);
            put(1, id);
            put(2, u64::from(launches.unwrap_or(0)) | u64::from(graph_launches) << 32);
            put(3, ts_ticks);
        }
        QueuedScope::InCapture { id } => {
            put(0, KIND_IN_CAPTURE | has_mark);
            put(1, id);
        }
    }
    if let Some(m) = mark {
        m.store_words(e);
    }
}

/// The boundary [`store_boundary`] stored in `e`; `None` for an unknown kind.
pub fn load_boundary(e: &Entry) -> Option<Boundary> {
    let get = |i: usize| e[i].load(Ordering::Relaxed);
    let header = get(0);
    let scope = match header & 0xff {
        KIND_BEGIN => QueuedScope::Begin { id: get(1), parent: get(2), thread_id: (header >> 32) as u32, ts_ticks: get(3), name: get(4) },
        KIND_END => QueuedScope::End {
            id: get(1),
            ts_ticks: get(3),
            launches: (header & HAS_LAUNCHES != 0).then_some(get(2) as u32),
            graph_launches: (get(2) >> 32) as u32,
        },
        KIND_IN_CAPTURE => QueuedScope::InCapture { id: get(1) },
        _ => return None,
    };
    let mark = (header & HAS_MARK != 0).then(|| Recorded::load_words(e));
    Some(Boundary { scope, mark })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retires the thread's side at its exit, as `crate::hooks`'s guard does.
    struct Retire;

    impl Drop for Retire {
        fn drop(&mut self) {
            SIDE.with(RingSide::retire);
        }
    }

    thread_local! {
        static SIDE: RingSide = const { RingSide::new() };
        static RETIRE: Retire = const { Retire };
    }

    /// Pushes from the calling thread, as `crate::hooks` does with its own thread-local.
    fn push(r: &ThreadRings, b: &Boundary) -> Pushed {
        RETIRE.with(|_| ());
        SIDE.with(|side| r.push(side, &b.scope, b.mark.as_ref()))
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
    fn a_boundary_is_the_size_the_shared_queue_assumes() {
        // SCOPE_QUEUE_CAP's doc (shared.rs): boundaries of 128 bytes.
        assert!(std::mem::size_of::<Boundary>() <= 128, "{}", std::mem::size_of::<Boundary>());
    }

    #[test]
    fn every_kind_of_boundary_comes_back_whole_from_its_ring_entry() {
        use gpuspan_core::spans::TimingSource;
        use gpuspan_cupti::events::{Context, Event, Stream};
        let mut rec = Recorded::new(true, TimingSource::CudaEvent);
        for i in 0..3 {
            assert!(rec.push_mark(crate::coarse::mark::StreamMark {
                event: (Event::from_raw(0x500 + i), Context::from_raw(0xc0)),
                stream: Stream::from_raw(0x70 + i)
            }));
        }
        rec.device = Some(3);
        let begin = QueuedScope::Begin { id: u64::MAX - 1, parent: 41, thread_id: u32::MAX, ts_ticks: 1 << 62, name: 1 << 63 | 9 };
        let cases = [
            Boundary { scope: begin, mark: None },
            Boundary { scope: begin, mark: Some(Recorded::new(false, TimingSource::CpuFallback)) },
            Boundary { scope: QueuedScope::End { id: 7, ts_ticks: 900, launches: Some(u32::MAX), graph_launches: 5 }, mark: Some(rec) },
            Boundary { scope: QueuedScope::End { id: 7, ts_ticks: 900, launches: None, graph_launches: 0 }, mark: None },
            Boundary { scope: QueuedScope::InCapture { id: 12 }, mark: None },
        ];
        // One entry reused, as the ring reuses its slots: nothing of an earlier boundary
        // shows through a later one.
        let e: Entry = std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(u64::MAX));
        for b in cases {
            store_boundary(&e, &b.scope, b.mark.as_ref());
            assert_eq!(load_boundary(&e), Some(b));
        }
        e[0].store(77, Ordering::Relaxed);
        assert_eq!(load_boundary(&e), None, "an unknown kind");
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
        assert_eq!(r.live(), 0, "the exited thread's slot is freed once drained");
        // The next thread takes the slot and its ring over: no new ring.
        let r2 = r.clone();
        std::thread::spawn(move || {
            for i in 10..20 {
                assert_eq!(push(&r2, &end(i)), Pushed::Ring);
            }
        })
        .join()
        .unwrap();
        assert_eq!((r.live(), r.made()), (1, 1));
        assert_eq!(ids(&r), (10..20).collect::<Vec<_>>());
        assert_eq!(r.live(), 0);
    }

    #[test]
    fn a_retired_side_sends_its_later_boundaries_to_the_shared_queue() {
        // A range popped in the thread's teardown, after its side was retired: the boundary
        // is still made, and goes to the shared queue; the ring's earlier boundaries are
        // drained and its slot freed.
        let r = ThreadRings::default();
        let side = RingSide::new();
        assert_eq!(r.push(&side, &end(1).scope, None), Pushed::Ring);
        side.retire();
        assert!(side.is_retired());
        assert_eq!(r.push(&side, &end(2).scope, None), Pushed::NoRing);
        assert_eq!(r.live(), 1);
        assert_eq!(ids(&r), vec![1]);
        assert_eq!(r.live(), 0);
        assert_eq!(r.push(&side, &end(3).scope, None), Pushed::NoRing, "a retired side never registers again");
        assert_eq!(r.live(), 0);
    }

    #[test]
    fn a_push_interrupted_by_another_on_the_same_side_sends_that_one_to_the_shared_queue() {
        // As a signal handler's scope inside a push: the side is busy.
        let r = ThreadRings::default();
        let side = RingSide::new();
        assert_eq!(r.push(&side, &end(1).scope, None), Pushed::Ring);
        side.busy.set(true);
        assert_eq!(r.push(&side, &end(2).scope, None), Pushed::NoRing);
        side.busy.set(false);
        assert_eq!(r.push(&side, &end(3).scope, None), Pushed::Ring);
        assert_eq!(ids(&r), vec![1, 3]);
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

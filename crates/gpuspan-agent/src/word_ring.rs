//! A bounded single-producer single-consumer ring whose entries are [`ENTRY_WORDS`] atomic
//! words: what carries a thread's scope boundaries to the collector ([`crate::thread_ring`]).
//!
//! Why not a ring of structs (`rtrb`, which this replaced; issue 14, item 5): a boundary is
//! built field by field on the application thread (bytes, flags, `u32`s, arrays) and was then
//! moved into the ring as a 128-byte struct, with 16-byte vector loads. A load that spans
//! several smaller stores still in the store buffer cannot be forwarded from them and waits
//! for them to retire: `perf annotate` put about 40 % of `range_end`'s samples on three such
//! loads. Here the producer writes each word straight into the ring slot from the values it
//! has (`push_with`), so nothing is copied through the stack. The words are atomics
//! (`Relaxed`, plain moves on x86-64), published by the tail's `Release` store and read after
//! the consumer's `Acquire` load of it, so the ring needs no `unsafe`.
//!
//! Each entry sits on two cache lines of its own (`Slot`), and each push prefetches the
//! lines of the entry [`PREFETCH_AHEAD`] places on (`gpuspan_cupti::cpu_hint::prefetch_lines`):
//! the collector last read those lines on its own core, or they have left this core's
//! caches since the ring last came round, and waiting for them at the store was about a
//! third of an NVTX push + pop through the agent.
//!
//! Positions are free-running counters (`usize`, masked by the power-of-two capacity); the
//! producer keeps its own tail and a cached copy of the head, and reads the consumer's head
//! only when that copy says the ring is full, as `rtrb` does. The two positions sit on cache
//! lines of their own (`CachePadded`).

//!
//! Rings are never freed ([`Ring::leak`]): the producer's end lives in a thread-local that
//! must have no destructor (`crate::hooks` says why), so it holds the ring as a `&'static`
//! in cells ([`Producer`]), not an `Arc`. A ring whose producer is gone is drained and then
//! handed to the next producer ([`Producer::attach`]; `crate::thread_ring` keeps one ring
//! per registry slot), so their number stays bounded.

use crossbeam::utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Words per entry: 16 × 8 = 128 bytes, two cache lines.
pub const ENTRY_WORDS: usize = 16;

/// One entry.
pub type Entry = [AtomicU64; ENTRY_WORDS];

/// An entry on cache-line boundaries: two lines, neither shared with another entry. (The
/// ring's memory comes from malloc, which `mmap`s an allocation this large and returns its
/// page plus 16 bytes: unaligned, an entry straddled three lines.)
#[repr(C, align(64))]
struct Slot(Entry);

/// How many entries past the one just pushed the producer prefetches
/// ([`Producer::push_with`]). `benches/nvtx_push_pop.rs`'s worker through the agent with a
/// no-op driver, best of 9 alternated runs each (2026-12-05): none 111.6 ns a pair over no
/// agent, 1 ahead 92.2, 2 ahead 90.2, 4 ahead 87.2, 8 ahead 76.8; then, in another run,
/// none 117.4, 8 ahead 80.6, 16 ahead 84.9, 32 ahead 84.5. Eight entries are 1 KiB, four
/// scopes' boundaries.
pub const PREFETCH_AHEAD: usize = 8;

/// A ring's memory and positions, shared by its two ends.
pub struct Ring {
    entries: Box<[Slot]>,
    /// Capacity − 1 (the capacity is a power of two).
    mask: usize,
    /// Entries taken by the consumer (free-running).
    head: CachePadded<AtomicUsize>,
    /// Entries published by the producer (free-running).
    tail: CachePadded<AtomicUsize>,
    /// The producer let go of the ring ([`Producer::abandon`]: its thread exited).
    abandoned: AtomicBool,
}

impl Ring {
    /// A ring of at least `capacity` entries (rounded up to a power of two, at least 1),
    /// never freed. Allocates `capacity × 128` bytes, zeroed (so resident from the start).
    pub fn leak(capacity: usize) -> &'static Ring {
        let cap = capacity.max(1).next_power_of_two();
        let entries: Box<[Slot]> = (0..cap).map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0)))).collect();
        Box::leak(Box::new(Ring {
            entries,
            mask: cap - 1,
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            abandoned: AtomicBool::new(false),
        }))
    }

    /// Entries the ring holds.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }
}

/// The producer's end, in cells, so that it can live in a thread-local without a
/// destructor: attached to a ring or not. Dropping it does nothing; [`Producer::abandon`]
/// tells the consumer it is gone.
pub struct Producer {
    ring: Cell<Option<&'static Ring>>,
    tail: Cell<usize>,
    /// The head as last read: the ring has at least `capacity − (tail − cached_head)` free
    /// entries.
    cached_head: Cell<usize>,
}

/// The consumer's end.
pub struct Consumer {
    ring: &'static Ring,
    head: usize,
}

/// A new ring of at least `capacity` entries ([`Ring::leak`]) as its two ends.
pub fn ring(capacity: usize) -> (Producer, Consumer) {
    let ring = Ring::leak(capacity);
    let p = Producer::new();
    p.attach(ring);
    (p, Consumer::new(ring))
}

impl Producer {
    /// Attached to no ring: every push fails.
    pub const fn new() -> Producer {
        Producer { ring: Cell::new(None), tail: Cell::new(0), cached_head: Cell::new(0) }
    }

    /// Becomes `ring`'s producer, from its positions as they are (a new ring, or one whose
    /// last producer abandoned it and whose consumer drained it: see [`Consumer::reopen`]).
    /// The caller makes sure no other producer pushes to `ring` any more.
    pub fn attach(&self, ring: &'static Ring) {
        self.tail.set(ring.tail.load(Ordering::Acquire));
        self.cached_head.set(ring.head.load(Ordering::Acquire));
        self.ring.set(Some(ring));
    }

    /// Whether it is attached to a ring.
    pub fn is_attached(&self) -> bool {
        self.ring.get().is_some()
    }

    /// Writes one entry with `write` (which stores its words, `Relaxed`) and publishes it.
    /// `false`, with nothing written, when the ring is full or there is none. Not reentrant:
    /// the caller keeps a push interrupted by a signal handler from being joined by the
    /// handler's (`crate::thread_ring`'s busy flag).
    #[inline(always)]
    pub fn push_with(&self, write: impl FnOnce(&Entry)) -> bool {
        let Some(ring) = self.ring.get() else { return false };
        let cap = ring.mask + 1;
        let tail = self.tail.get();
        if tail.wrapping_sub(self.cached_head.get()) >= cap {
            self.cached_head.set(ring.head.load(Ordering::Acquire));
            if tail.wrapping_sub(self.cached_head.get()) >= cap {
                return false;
            }
        }
        write(&ring.entries[tail & ring.mask].0);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        ring.tail.store(tail, Ordering::Release);
        // An entry not yet written (the ring is not full) or one the consumer may still be
        // reading (it nearly is): either way a hint, which only moves a line.
        gpuspan_cupti::cpu_hint::prefetch_lines(&ring.entries[tail.wrapping_add(PREFETCH_AHEAD - 1) & ring.mask]);
        true
    }

    /// Lets go of the ring, telling its consumer ([`Consumer::is_abandoned`]); later pushes
    /// fail until [`Producer::attach`].
    pub fn abandon(&self) {
        if let Some(ring) = self.ring.take() {
            ring.abandoned.store(true, Ordering::Release);
        }
    }

    /// Entries the ring holds; 0 when attached to none.
    pub fn capacity(&self) -> usize {
        self.ring.get().map_or(0, Ring::capacity)
    }
}

impl Default for Producer {
    fn default() -> Self {
        Producer::new()
    }
}

impl Consumer {
    /// The consumer of `ring`, from its head as it is.
    pub fn new(ring: &'static Ring) -> Consumer {
        Consumer { ring, head: ring.head.load(Ordering::Acquire) }
    }

    /// The ring.
    pub fn ring(&self) -> &'static Ring {
        self.ring
    }

    /// Reads the oldest entry with `read` and frees it; `None` when the ring is empty.
    pub fn pop_with<T>(&mut self, read: impl FnOnce(&Entry) -> T) -> Option<T> {
        if self.head == self.ring.tail.load(Ordering::Acquire) {
            return None;
        }
        let v = read(&self.ring.entries[self.head & self.ring.mask].0);
        self.head = self.head.wrapping_add(1);
        self.ring.head.store(self.head, Ordering::Release);
        Some(v)
    }

    /// Whether the producer abandoned the ring. Read it before draining: what a producer
    /// pushed before it abandoned the ring is visible after this returns `true`.
    pub fn is_abandoned(&self) -> bool {
        self.ring.abandoned.load(Ordering::Acquire)
    }

    /// Makes an abandoned, drained ring ready for a new producer ([`Producer::attach`]):
    /// no longer abandoned. `false`, with nothing changed, when it still holds entries or
    /// was not abandoned.
    pub fn reopen(&self) -> bool {
        if !self.is_abandoned() || self.head != self.ring.tail.load(Ordering::Acquire) {
            return false;
        }
        self.ring.abandoned.store(false, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(p: &Producer, v: u64) -> bool {
        p.push_with(|e| {
            for (i, w) in e.iter().enumerate() {
                w.store(v * 100 + i as u64, Ordering::Relaxed);
            }
        })
    }

    fn pop(c: &mut Consumer) -> Option<u64> {
        c.pop_with(|e| {
            let v = e[0].load(Ordering::Relaxed) / 100;
            for (i, w) in e.iter().enumerate() {
                assert_eq!(w.load(Ordering::Relaxed), v * 100 + i as u64, "word {i} of entry {v}");
            }
            v
        })
    }

    #[test]
    fn entries_come_out_in_order_and_a_full_ring_refuses_without_writing() {
        let (p, mut c) = ring(3);
        assert_eq!(p.capacity(), 4);
        for v in 0..4 {
            assert!(push(&p, v));
        }
        assert!(!p.push_with(|_| panic!("nothing is written into a full ring")));
        assert_eq!((pop(&mut c), pop(&mut c)), (Some(0), Some(1)));
        // Positions wrap around the slots.
        for v in 4..6 {
            assert!(push(&p, v));
        }
        assert_eq!((0..5).map(|_| pop(&mut c)).collect::<Vec<_>>(), vec![Some(2), Some(3), Some(4), Some(5), None]);
    }

    #[test]
    fn a_dropped_producer_leaves_its_entries_and_says_so() {
        let (p, mut c) = ring(8);
        push(&p, 7);
        assert!(!c.is_abandoned());
        assert!(!c.reopen(), "a ring in use is not reopened");
        p.abandon();
        assert!(c.is_abandoned());
        assert!(!push(&p, 8), "an abandoned ring takes nothing more from its producer");
        assert!(!c.reopen(), "a ring with entries left is not reopened");
        assert_eq!((pop(&mut c), pop(&mut c)), (Some(7), None));
    }

    #[test]
    fn a_drained_ring_is_taken_over_by_a_new_producer_from_where_it_stood() {
        let (p, mut c) = ring(4);
        for v in 0..3 {
            assert!(push(&p, v));
        }
        p.abandon();
        assert_eq!((0..3).map(|_| pop(&mut c)).collect::<Vec<_>>(), vec![Some(0), Some(1), Some(2)]);
        assert!(c.reopen());
        assert!(!c.is_abandoned());
        let q = Producer::new();
        assert!(!push(&q, 1), "a producer attached to nothing takes nothing");
        q.attach(c.ring());
        // Positions carry on past the slots the last producer used, and the ring's capacity
        // is whole again.
        for v in 10..14 {
            assert!(push(&q, v));
        }
        assert!(!push(&q, 99), "full");
        assert_eq!((0..5).map(|_| pop(&mut c)).collect::<Vec<_>>(), vec![Some(10), Some(11), Some(12), Some(13), None]);
    }

    #[test]
    fn a_thread_and_a_consumer_move_a_million_entries_whole_and_in_order() {
        let (p, mut c) = ring(64);
        let n = 1_000_000u64;
        let t = std::thread::spawn(move || {
            let mut v = 0;
            while v < n {
                if push(&p, v) {
                    v += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0;
        while next < n {
            if let Some(v) = pop(&mut c) {
                assert_eq!(v, next);
                next += 1;
            }
        }
        t.join().unwrap();
        assert_eq!(pop(&mut c), None);
    }
}

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
//! Positions are free-running counters (`usize`, masked by the power-of-two capacity); the
//! producer keeps its own tail and a cached copy of the head, and reads the consumer's head
//! only when that copy says the ring is full, as `rtrb` does. The two positions sit on cache
//! lines of their own (`CachePadded`).

use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Words per entry: 16 × 8 = 128 bytes, two cache lines.
pub const ENTRY_WORDS: usize = 16;

/// One entry.
pub type Entry = [AtomicU64; ENTRY_WORDS];

struct Ring {
    entries: Box<[Entry]>,
    /// Capacity − 1 (the capacity is a power of two).
    mask: usize,
    /// Entries taken by the consumer (free-running).
    head: CachePadded<AtomicUsize>,
    /// Entries published by the producer (free-running).
    tail: CachePadded<AtomicUsize>,
    /// The producer was dropped (its thread exited).
    abandoned: AtomicBool,
}

/// The producer's end. Dropping it marks the ring abandoned ([`Consumer::is_abandoned`]).
pub struct Producer {
    ring: Arc<Ring>,
    tail: usize,
    /// The head as last read: the ring has at least `capacity − (tail − cached_head)` free
    /// entries.
    cached_head: usize,
}

/// The consumer's end.
pub struct Consumer {
    ring: Arc<Ring>,
    head: usize,
}

/// A ring of at least `capacity` entries (rounded up to a power of two, at least 1), as its
/// two ends. Allocates `capacity × 128` bytes, zeroed (so resident from the start).
pub fn ring(capacity: usize) -> (Producer, Consumer) {
    let cap = capacity.max(1).next_power_of_two();
    let entries: Box<[Entry]> = (0..cap).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect();
    let ring = Arc::new(Ring {
        entries,
        mask: cap - 1,
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        abandoned: AtomicBool::new(false),
    });
    (Producer { ring: ring.clone(), tail: 0, cached_head: 0 }, Consumer { ring, head: 0 })
}

impl Producer {
    /// Writes one entry with `write` (which stores its words, `Relaxed`) and publishes it.
    /// `false`, with nothing written, when the ring is full.
    #[inline(always)]
    pub fn push_with(&mut self, write: impl FnOnce(&Entry)) -> bool {
        let cap = self.ring.mask + 1;
        if self.tail.wrapping_sub(self.cached_head) >= cap {
            self.cached_head = self.ring.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) >= cap {
                return false;
            }
        }
        write(&self.ring.entries[self.tail & self.ring.mask]);
        self.tail = self.tail.wrapping_add(1);
        self.ring.tail.store(self.tail, Ordering::Release);
        true
    }

    /// Entries the ring holds.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.ring.abandoned.store(true, Ordering::Release);
    }
}

impl Consumer {
    /// Reads the oldest entry with `read` and frees it; `None` when the ring is empty.
    pub fn pop_with<T>(&mut self, read: impl FnOnce(&Entry) -> T) -> Option<T> {
        if self.head == self.ring.tail.load(Ordering::Acquire) {
            return None;
        }
        let v = read(&self.ring.entries[self.head & self.ring.mask]);
        self.head = self.head.wrapping_add(1);
        self.ring.head.store(self.head, Ordering::Release);
        Some(v)
    }

    /// Whether the producer was dropped. Read it before draining: what a producer pushed
    /// before it was dropped is visible after this returns `true`.
    pub fn is_abandoned(&self) -> bool {
        self.ring.abandoned.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(p: &mut Producer, v: u64) -> bool {
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
        let (mut p, mut c) = ring(3);
        assert_eq!(p.capacity(), 4);
        for v in 0..4 {
            assert!(push(&mut p, v));
        }
        assert!(!p.push_with(|_| panic!("nothing is written into a full ring")));
        assert_eq!((pop(&mut c), pop(&mut c)), (Some(0), Some(1)));
        // Positions wrap around the slots.
        for v in 4..6 {
            assert!(push(&mut p, v));
        }
        assert_eq!((0..5).map(|_| pop(&mut c)).collect::<Vec<_>>(), vec![Some(2), Some(3), Some(4), Some(5), None]);
    }

    #[test]
    fn a_dropped_producer_leaves_its_entries_and_says_so() {
        let (mut p, mut c) = ring(8);
        push(&mut p, 7);
        assert!(!c.is_abandoned());
        drop(p);
        assert!(c.is_abandoned());
        assert_eq!((pop(&mut c), pop(&mut c)), (Some(7), None));
    }

    #[test]
    fn a_thread_and_a_consumer_move_a_million_entries_whole_and_in_order() {
        let (mut p, mut c) = ring(64);
        let n = 1_000_000u64;
        let t = std::thread::spawn(move || {
            let mut v = 0;
            while v < n {
                if push(&mut p, v) {
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

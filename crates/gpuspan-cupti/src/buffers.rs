//! A bounded pool of activity buffers handed to CUPTI.
//!
//! CUPTI asks for a buffer through the buffer-requested callback and hands it back, filled,
//! through the buffer-completed callback, possibly from several threads at once (per-thread
//! buffers are the default, CUPTI-NOTES §1). The pool never grows past `max_buffers`: when
//! every buffer is out, a request is declined (NULL buffer: CUPTI drops and counts the
//! records) on CUPTI API ≥ 27, and on older CUPTI, where declining can crash, one extra
//! buffer is allocated and counted as an overflow. Free buffers sit in a lock-free
//! `crossbeam::queue::ArrayQueue`; no lock is taken in either callback.
//!
//! Buffers are 8-byte aligned (`ACTIVITY_RECORD_ALIGNMENT`, `cupti_common.h`) and handed out
//! zeroed.
//!
//! The pool remembers the address of every buffer it allocated ([`BufferPool::owns`]), in a
//! fixed table of atomics. CUPTI's buffer callbacks are process-wide: when another activity
//! client (Kineto under torch.profiler, an older gpuspan) registered its callbacks before
//! ours, its outstanding buffers come back through our completion callback. Such a buffer is
//! not ours to zero, recycle or free; the agent counts it and leaves it alone.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Alignment of activity buffers (CUPTI `ACTIVITY_RECORD_ALIGNMENT`).
pub const BUFFER_ALIGN: usize = 8;

/// Bytes past a buffer's reported extent that [`BufferPool::give_back_written`] zeroes too:
/// a guard against a record written but not counted in `validSize`, larger than any
/// activity record (the largest the agent decodes, the kernel record, is 208 bytes:
/// CUPTI-NOTES §1).
pub const WRITE_SLACK_BYTES: usize = 4096;

/// A raw activity buffer address (owned by the pool or lent to CUPTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawBuffer(pub usize);

/// Bounded pool of equally sized activity buffers.
#[derive(Debug)]
pub struct BufferPool {
    /// Addresses of free buffers.
    free: crossbeam_queue::ArrayQueue<usize>,
    buffer_bytes: usize,
    max_buffers: usize,
    allocated: AtomicUsize,
    declined: AtomicU64,
    overflow: AtomicU64,
    /// Addresses of every buffer currently allocated by this pool (0 = empty slot);
    /// `max_buffers + OVERFLOW_SLOTS` slots.
    lent: Box<[AtomicUsize]>,
}

/// Overflow buffers (CUPTI < API 27, which must not be declined) the ownership table can
/// hold beyond `max_buffers`; past that a request is declined after all and counted.
pub const OVERFLOW_SLOTS: usize = 64;

impl BufferPool {
    /// A pool of at most `max_buffers` buffers of `buffer_bytes` each (allocated lazily).
    /// Kineto uses 4 MiB buffers; NVIDIA recommends 1–10 MB (CUPTI-NOTES §1).
    pub fn new(buffer_bytes: usize, max_buffers: usize) -> BufferPool {
        let max_buffers = max_buffers.max(1);
        BufferPool {
            free: crossbeam_queue::ArrayQueue::new(max_buffers + OVERFLOW_SLOTS),
            buffer_bytes: buffer_bytes.max(64) & !(BUFFER_ALIGN - 1),
            max_buffers,
            allocated: AtomicUsize::new(0),
            declined: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            lent: (0..max_buffers + OVERFLOW_SLOTS).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Whether `addr` is the start of a buffer this pool allocated and has not freed: the
    /// check the completion callback makes before treating a buffer as ours. Lock-free, a
    /// scan of at most `max_buffers + OVERFLOW_SLOTS` atomics.
    pub fn owns(&self, addr: usize) -> bool {
        addr != 0 && self.lent.iter().any(|s| s.load(Ordering::Acquire) == addr)
    }

    /// Records `addr` in a free slot of the ownership table; false when the table is full.
    fn remember(&self, addr: usize) -> bool {
        self.lent
            .iter()
            .any(|s| s.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    fn forget(&self, addr: usize) {
        if let Some(s) = self.lent.iter().find(|s| s.load(Ordering::Acquire) == addr) {
            s.store(0, Ordering::Release);
        }
    }

    /// Size of every buffer, bytes.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    fn layout(&self) -> Layout {
        // buffer_bytes > 0 and BUFFER_ALIGN is a power of two: never fails.
        Layout::from_size_align(self.buffer_bytes, BUFFER_ALIGN).expect("valid layout")
    }

    /// Takes a zeroed buffer for CUPTI. `allow_decline`: may return `None` when the pool is
    /// exhausted (CUPTI ≥ API 27); otherwise allocates an overflow buffer.
    pub fn take(&self, allow_decline: bool) -> Option<RawBuffer> {
        if let Some(addr) = self.free.pop() {
            return Some(RawBuffer(addr));
        }
        let n = self.allocated.fetch_add(1, Ordering::Relaxed);
        if n >= self.max_buffers {
            if allow_decline {
                self.allocated.fetch_sub(1, Ordering::Relaxed);
                self.declined.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: non-zero size, valid alignment.
        let p = unsafe { alloc_zeroed(self.layout()) };
        if p.is_null() {
            self.allocated.fetch_sub(1, Ordering::Relaxed);
            self.declined.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !self.remember(p as usize) {
            // More overflow buffers than the table holds: decline after all.
            // SAFETY: just allocated with this layout, never handed out.
            unsafe { dealloc(p, self.layout()) };
            self.allocated.fetch_sub(1, Ordering::Relaxed);
            self.declined.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RawBuffer(p as usize))
    }

    /// Returns a buffer after its records were decoded. It is zeroed again (CUPTI-NOTES §1:
    /// hand over zeroed buffers) and kept, or freed when the free list is full.
    ///
    /// # Safety
    /// `b` came from [`BufferPool::take`] of this pool and is no longer used by CUPTI or us.
    pub unsafe fn give_back(&self, b: RawBuffer) {
        // SAFETY: caller contract; an extent of the whole buffer zeroes all of it.
        unsafe { self.give_back_written(b, self.buffer_bytes) };
    }

    /// [`BufferPool::give_back`] for a buffer of which only the first `written_bytes` can
    /// have been written since it was handed out zeroed: CUPTI's `validSize` of a completed
    /// buffer (CUPTI writes records one after another from the start and reports how many
    /// bytes they fill, CUPTI-NOTES §1), or the length of a copy. Only those bytes and
    /// [`WRITE_SLACK_BYTES`] after them are zeroed again, not the whole buffer (the zeroing
    /// is 9 % of the collector thread's CPU in fine mode; a full buffer still needs nearly
    /// all of it, one that a flush handed back part-filled no longer costs 4 MiB).
    ///
    /// # Safety
    /// As [`BufferPool::give_back`]; and nothing wrote to the buffer past `written_bytes` +
    /// [`WRITE_SLACK_BYTES`] since the pool handed it out.
    pub unsafe fn give_back_written(&self, b: RawBuffer, written_bytes: usize) {
        let n = written_bytes.saturating_add(WRITE_SLACK_BYTES).min(self.buffer_bytes);
        // SAFETY: caller contract: one of our buffers, of `buffer_bytes >= n` bytes.
        unsafe { std::ptr::write_bytes(b.0 as *mut u8, 0, n) };
        // Kept on the free list, or freed when the list is full.
        if let Err(addr) = self.free.push(b.0) {
            self.forget(addr);
            self.allocated.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: allocated by `take` with this layout (callers' contract) and not
            // referenced any more.
            unsafe { dealloc(addr as *mut u8, self.layout()) };
        }
    }

    /// Requests declined because the pool was exhausted.
    pub fn declined(&self) -> u64 {
        self.declined.load(Ordering::Relaxed)
    }

    /// Buffers allocated beyond `max_buffers` (only on CUPTI < 27).
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Buffers currently allocated (free or lent).
    pub fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_bounded_and_reuses() {
        let pool = BufferPool::new(4096, 2);
        let a = pool.take(true).unwrap();
        let b = pool.take(true).unwrap();
        assert_eq!(a.0 % BUFFER_ALIGN, 0);
        assert!(pool.take(true).is_none(), "third buffer must be declined");
        assert_eq!(pool.declined(), 1);
        // SAFETY: test writes inside the buffer it owns.
        unsafe { *(a.0 as *mut u8) = 7 };
        // SAFETY: `a` came from this pool and is not used after.
        unsafe { pool.give_back(a) };
        let c = pool.take(true).unwrap();
        assert_eq!(c, a, "freed buffer is reused");
        // SAFETY: reading the first byte of an owned buffer.
        assert_eq!(unsafe { *(c.0 as *const u8) }, 0, "reused buffer is zeroed");
        let d = pool.take(false).unwrap();
        assert_eq!(pool.overflow(), 1);
        for own in [b, c, d] {
            assert!(pool.owns(own.0));
        }
        // SAFETY: all from this pool, unused after.
        unsafe {
            pool.give_back(b);
            pool.give_back(c);
            pool.give_back(d);
        }
    }

    #[test]
    fn a_buffer_given_back_with_its_extent_is_zeroed_over_it_and_the_slack() {
        let pool = BufferPool::new(4 * WRITE_SLACK_BYTES, 1);
        let a = pool.take(true).unwrap();
        let written = 1000;
        // SAFETY: test writes inside the buffer it owns, up to the slack's end.
        unsafe { std::ptr::write_bytes(a.0 as *mut u8, 0xab, written + WRITE_SLACK_BYTES) };
        // SAFETY: from this pool, written only within the extent and its slack.
        unsafe { pool.give_back_written(a, written) };
        let b = pool.take(true).unwrap();
        assert_eq!(b, a);
        // SAFETY: reading the owned buffer.
        let bytes = unsafe { std::slice::from_raw_parts(b.0 as *const u8, 4 * WRITE_SLACK_BYTES) };
        assert!(bytes.iter().all(|&x| x == 0), "the whole buffer reads zero again");
        // An extent past the end is cut to the buffer.
        // SAFETY: writing the owned buffer, then giving it back with an oversized extent.
        unsafe {
            std::ptr::write_bytes(b.0 as *mut u8, 0xcd, 4 * WRITE_SLACK_BYTES);
            pool.give_back_written(b, usize::MAX);
        }
        let c = pool.take(true).unwrap();
        // SAFETY: reading the owned buffer.
        let bytes = unsafe { std::slice::from_raw_parts(c.0 as *const u8, 4 * WRITE_SLACK_BYTES) };
        assert!(bytes.iter().all(|&x| x == 0));
        // SAFETY: from this pool, unused after.
        unsafe { pool.give_back(c) };
    }

    #[test]
    fn foreign_buffers_are_not_owned() {
        let pool = BufferPool::new(4096, 1);
        let mine = pool.take(true).unwrap();
        let foreign = vec![0xabu8; 4096];
        assert!(pool.owns(mine.0));
        assert!(!pool.owns(foreign.as_ptr() as usize));
        assert!(!pool.owns(0));
        assert!(!pool.owns(mine.0 + 8), "an address inside a buffer is not a buffer");
        // SAFETY: from this pool, unused after.
        unsafe { pool.give_back(mine) };
        assert!(pool.owns(mine.0), "a recycled buffer stays ours");
    }

    #[test]
    fn overflow_beyond_the_ownership_table_is_declined() {
        let pool = BufferPool::new(64, 1);
        let taken: Vec<_> = (0..1 + OVERFLOW_SLOTS).map(|_| pool.take(false).unwrap()).collect();
        assert!(pool.take(false).is_none());
        assert_eq!(pool.declined(), 1);
        assert!(taken.iter().all(|b| pool.owns(b.0)));
        for b in taken {
            // SAFETY: from this pool, unused after.
            unsafe { pool.give_back(b) };
        }
    }
}

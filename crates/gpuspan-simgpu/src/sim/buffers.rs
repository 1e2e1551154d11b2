//! Client activity buffers: filling, "full" and "complete" bookkeeping, flush selection.
//!
//! Semantics from CUPTI-NOTES §1: the client hands buffers over through the request
//! callback (a NULL buffer declines and the record is counted as dropped); a buffer is
//! full when the next record does not fit or `maxNumRecords` is reached; a full buffer is
//! delivered once all its records are complete (GPU end ≤ host clock); `FlushAll(0)` also
//! hands back a non-full buffer whose records are complete; `FLUSH_FORCED` hands back
//! everything, zeroing the end of records still running. This module only decides;
//! calling the callbacks is `sim::delivery`'s job.

use super::records::{Record, RECORD_ALIGN};
use std::collections::VecDeque;

/// A buffer owned by the sim between the request and the completion callback.
#[derive(Debug)]
struct ClientBuffer {
    ptr: *mut u8,
    size: usize,
    /// 0 = as many records as fit.
    max_records: usize,
    /// End offset of the last written record (starts at the 8-byte alignment pad).
    used_end: usize,
    records: usize,
    complete_at_ns: u64,
    /// (offset of a u64 field, completion time of its record) to zero on a forced flush.
    patches: Vec<(usize, u64)>,
}

// SAFETY: the pointer is client memory handed to the sim (the "CUPTI") until it is given
// back through the completion callback; only the thread holding the sim lock touches it.
unsafe impl Send for ClientBuffer {}

/// A buffer ready to be handed back: arguments of the completion callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub ptr: *mut u8,
    pub size: usize,
    pub valid_size: usize,
}

// SAFETY: see `ClientBuffer`; ownership moves with the value.
unsafe impl Send for Delivery {}

/// Offset of the first 8-byte aligned address at or after `ptr`.
pub fn align_pad(ptr: usize) -> usize {
    (RECORD_ALIGN - ptr % RECORD_ALIGN) % RECORD_ALIGN
}

impl ClientBuffer {
    fn fits(&self, len: usize) -> bool {
        self.used_end + len <= self.size
            && (self.max_records == 0 || self.records < self.max_records)
    }

    fn write(&mut self, rec: &Record) {
        let off = self.used_end;
        debug_assert!(off + rec.bytes.len() <= self.size);
        // SAFETY: `fits` checked that [off, off+len) lies inside the client's `size`
        // bytes at `ptr`, which the sim owns until delivery; the source is a live Vec.
        unsafe {
            std::ptr::copy_nonoverlapping(rec.bytes.as_ptr(), self.ptr.add(off), rec.bytes.len())
        };
        for &field in &rec.zero_if_incomplete {
            self.patches.push((off + field, rec.complete_at_ns));
        }
        self.used_end = off + rec.bytes.len(); // record sizes are multiples of 8
        self.records += 1;
        self.complete_at_ns = self.complete_at_ns.max(rec.complete_at_ns);
    }

    fn into_delivery(self, forced_now_ns: Option<u64>) -> Delivery {
        if let Some(now) = forced_now_ns {
            for &(off, done_at) in &self.patches {
                if done_at > now {
                    // SAFETY: `off` points at a u64 field of a record written by `write`,
                    // inside the buffer; records are 8-aligned so the field is too.
                    unsafe { (self.ptr.add(off) as *mut u64).write_unaligned(0) };
                }
            }
        }
        Delivery {
            ptr: self.ptr,
            size: self.size,
            valid_size: self.used_end,
        }
    }
}

/// Result of trying to place a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Written; `filled` tells that a buffer became full on the way (wake the deliverer).
    Written { filled: bool },
    /// No buffer with room: ask the client for one.
    NeedBuffer,
}

/// All buffers the sim currently holds.
#[derive(Debug, Default)]
pub struct Pool {
    current: Option<ClientBuffer>,
    spare: VecDeque<ClientBuffer>,
    full: Vec<ClientBuffer>,
    /// Buffer address → bytes the sim wrote into it in its last use (its `valid_size` when
    /// handed back; at most [`WRITTEN_EXTENTS_MAX`] addresses, then forgotten): where a
    /// client that promised zeroed buffers must have zeroed it again before lending it anew
    /// ([`Pool::written_extent`]).
    written: gpuspan_core::id_hash::IdHashMap<usize, usize>,
}

/// Most buffer addresses [`Pool::written_extent`] remembers (a client recycles a bounded
/// pool; one that never frees would grow it without end).
pub const WRITTEN_EXTENTS_MAX: usize = 4096;

impl Pool {
    pub fn new() -> Self {
        Pool::default()
    }

    /// Adds a buffer returned by the request callback. False (nothing kept) for NULL or a
    /// size that cannot hold the alignment padding.
    pub fn add_buffer(&mut self, ptr: *mut u8, size: usize, max_records: usize) -> bool {
        if ptr.is_null() {
            return false;
        }
        let first = align_pad(ptr as usize);
        if size <= first {
            return false;
        }
        self.spare.push_back(ClientBuffer {
            ptr,
            size,
            max_records,
            used_end: first,
            records: 0,
            complete_at_ns: 0,
            patches: Vec::new(),
        });
        true
    }

    /// Writes `rec` into the current buffer, retiring it as full and switching to a spare
    /// one when it has no room.
    pub fn append(&mut self, rec: &Record) -> Append {
        let mut filled = false;
        loop {
            match self.current.as_mut() {
                Some(b) if b.fits(rec.bytes.len()) => {
                    b.write(rec);
                    return Append::Written { filled };
                }
                Some(_) => {
                    // No room: retire it as full (a buffer too small for even one record
                    // goes back empty at the next delivery).
                    let b = self.current.take().expect("checked Some");
                    filled |= b.records > 0;
                    self.full.push(b);
                }
                None => match self.spare.pop_front() {
                    Some(b) => self.current = Some(b),
                    None => return Append::NeedBuffer,
                },
            }
        }
    }

    /// True if some full buffer has all records complete at `now_ns`.
    pub fn has_deliverable(&self, now_ns: u64) -> bool {
        self.full.iter().any(|b| b.complete_at_ns <= now_ns)
    }

    /// Full buffers whose records are complete (the worker's periodic delivery).
    pub fn take_full_complete(&mut self, now_ns: u64) -> Vec<Delivery> {
        let (ready, keep): (Vec<_>, Vec<_>) = self
            .full
            .drain(..)
            .partition(|b| b.complete_at_ns <= now_ns);
        self.full = keep;
        let out: Vec<Delivery> = ready.into_iter().map(|b| b.into_delivery(None)).collect();
        self.remember(&out);
        out
    }

    /// Remembers how far each delivered buffer was written.
    fn remember(&mut self, delivered: &[Delivery]) {
        if self.written.len() + delivered.len() > WRITTEN_EXTENTS_MAX {
            self.written.clear();
        }
        for d in delivered {
            self.written.insert(d.ptr as usize, d.valid_size);
        }
    }

    /// Bytes the sim wrote into the buffer at `ptr` in its last use, 0 for one not seen
    /// before. Those pages are resident and writable, so reading them costs no fault (a
    /// read of a never-touched page would map the shared zero page and turn the sim's next
    /// write there into a copy-on-write fault with a TLB shootdown: not CUPTI's cost).
    pub fn written_extent(&self, ptr: *mut u8) -> usize {
        self.written.get(&(ptr as usize)).copied().unwrap_or(0)
    }

    /// `cuptiActivityFlushAll(0)`: complete full buffers plus the current buffer when it
    /// holds records and they are all complete.
    pub fn take_flush(&mut self, now_ns: u64) -> Vec<Delivery> {
        let mut out = self.take_full_complete(now_ns);
        if self
            .current
            .as_ref()
            .is_some_and(|b| b.records > 0 && b.complete_at_ns <= now_ns)
        {
            let d = self.current.take().expect("checked").into_delivery(None);
            self.remember(&[d]);
            out.push(d);
        }
        out
    }

    /// `cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED)`: every buffer, including
    /// empty spares (so the client gets its memory back); records still running get
    /// end = 0 and are never sent again.
    pub fn take_forced(&mut self, now_ns: u64) -> Vec<Delivery> {
        let mut all: Vec<ClientBuffer> = self.full.drain(..).collect();
        all.extend(self.current.take());
        all.extend(self.spare.drain(..));
        let out: Vec<Delivery> = all.into_iter().map(|b| b.into_delivery(Some(now_ns))).collect();
        self.remember(&out);
        out
    }

    /// Number of records written but not yet handed back (for tests).
    pub fn pending_records(&self) -> usize {
        self.full
            .iter()
            .chain(self.current.iter())
            .chain(self.spare.iter())
            .map(|b| b.records)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::CuptiAbi;
    use crate::sim::records::{api, kernel, kind, ApiFields, KernelFields};

    fn api_rec(corr: u32) -> Record {
        api(
            kind::DRIVER,
            &ApiFields {
                cbid: 1,
                correlation_id: corr,
                ..Default::default()
            },
        )
    }

    fn kern(end: u64) -> Record {
        kernel(
            kind::CONCURRENT_KERNEL,
            &KernelFields {
                start_ns: 1,
                end_ns: end,
                ..Default::default()
            },
            CuptiAbi::V12,
        )
    }

    #[test]
    fn fills_until_full_then_asks_for_another_buffer() {
        let mut mem = vec![0u64; 11]; // 88 bytes: two 40 B API records
        let mut pool = Pool::new();
        assert_eq!(pool.append(&api_rec(1)), Append::NeedBuffer);
        assert!(pool.add_buffer(mem.as_mut_ptr() as *mut u8, 88, 0));
        assert_eq!(pool.append(&api_rec(1)), Append::Written { filled: false });
        assert_eq!(pool.append(&api_rec(2)), Append::Written { filled: false });
        assert_eq!(pool.append(&api_rec(3)), Append::NeedBuffer);
        let d = pool.take_full_complete(0);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].valid_size, 80);
        assert_eq!(mem[0] as u32, kind::DRIVER);
        assert_eq!(mem[5] as u32, kind::DRIVER);
        // What a client promising zeroed buffers must zero again before lending it anew.
        assert_eq!(pool.written_extent(mem.as_mut_ptr() as *mut u8), 80);
        let mut other = [0u64; 4];
        assert_eq!(pool.written_extent(other.as_mut_ptr() as *mut u8), 0, "a buffer never lent");
    }

    #[test]
    fn max_records_caps_a_buffer() {
        let mut mem = vec![0u64; 64];
        let mut pool = Pool::new();
        pool.add_buffer(mem.as_mut_ptr() as *mut u8, 512, 1);
        assert_eq!(pool.append(&api_rec(1)), Append::Written { filled: false });
        assert_eq!(pool.append(&api_rec(2)), Append::NeedBuffer);
    }

    #[test]
    fn full_buffers_wait_for_their_kernels_and_forced_flush_zeroes_running_ends() {
        let mut a = vec![0u64; 26]; // exactly one 208 B kernel record
        let mut b = vec![0u64; 26];
        let mut pool = Pool::new();
        pool.add_buffer(a.as_mut_ptr() as *mut u8, 208, 0);
        pool.add_buffer(b.as_mut_ptr() as *mut u8, 208, 0);
        pool.append(&kern(1_000));
        assert_eq!(pool.append(&kern(5_000)), Append::Written { filled: true });
        assert!(!pool.has_deliverable(999));
        assert!(pool.has_deliverable(1_000));
        assert!(pool.take_flush(999).is_empty(), "nothing complete yet");
        let d = pool.take_flush(1_000);
        assert_eq!(d.len(), 1, "full buffer complete, current still running");
        let forced = pool.take_forced(2_000);
        assert_eq!(forced.len(), 1);
        assert_eq!(forced[0].valid_size, 208);
        assert_eq!(b[3], 0, "end zeroed");
        assert_eq!(b[4], 0, "completed zeroed");
        assert_eq!(b[2], 1, "start kept");
        assert_eq!(pool.pending_records(), 0);
    }
}

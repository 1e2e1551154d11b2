//! CUPTI buffer callbacks: the only code CUPTI's threads run in the agent.
//!
//! Both run under CUPTI's internal lock (CUPTI-NOTES §1), so they take no lock of ours,
//! allocate nothing beyond a pool buffer, make no CUDA or CUPTI call and never panic across
//! the FFI boundary.

use crate::shared::shared;
use gpuspan_cupti::activity::BufferCallbacks;
use gpuspan_cupti::buffers::RawBuffer;
use gpuspan_cupti::multi_subscriber::{BufferCompleteInfo, BufferRequestInfo};
use std::sync::atomic::Ordering;

/// The callbacks the agent registers, V1 and V2 ([`gpuspan_cupti::activity::ActivityApi::register_callbacks`]).
pub const BUFFER_CALLBACKS: BufferCallbacks = BufferCallbacks {
    requested: buffer_requested,
    completed: buffer_completed,
    requested_v2: buffer_requested_v2,
    completed_v2: buffer_completed_v2,
};

/// `CUpti_BuffersCallbackRequestFunc_v2` (CUPTI 13.2+, multiple-subscriber mode): as
/// [`buffer_requested`]; the info struct is not read.
///
/// # Safety
/// Called by CUPTI with valid out-pointers.
pub unsafe extern "C" fn buffer_requested_v2(
    buffer: *mut *mut u8,
    size: *mut usize,
    max_records: *mut usize,
    _info: *mut BufferRequestInfo,
) {
    // SAFETY: the same out-pointers, forwarded.
    unsafe { buffer_requested(buffer, size, max_records) }
}

/// `CUpti_BuffersCallbackCompleteFunc_v2` (CUPTI 13.2+, multiple-subscriber mode): as
/// [`buffer_completed`]. In that mode CUPTI hands each subscriber only the buffers it lent,
/// so a foreign buffer here would be CUPTI's mistake; it is still only read.
///
/// # Safety
/// Called by CUPTI with a buffer it got from a buffer-requested callback.
pub unsafe extern "C" fn buffer_completed_v2(buffer: *mut u8, size: usize, valid_bytes: usize, _info: *mut BufferCompleteInfo) {
    // SAFETY: the same buffer contract, forwarded.
    unsafe { completed(std::ptr::null_mut(), 0, buffer, size, valid_bytes, false) }
}

/// `CUpti_BuffersCallbackRequestFunc`: lends CUPTI a zeroed pool buffer, or declines
/// (`*buffer = NULL`) when the pool is exhausted and CUPTI ≥ API 27.
///
/// # Safety
/// Called by CUPTI with valid out-pointers.
pub unsafe extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    let r = std::panic::catch_unwind(|| {
        let (ptr, bytes) = match shared() {
            Some(a) => match a.pool.take(a.allow_decline) {
                Some(b) => (b.0 as *mut u8, a.pool.buffer_bytes()),
                None => (std::ptr::null_mut(), 0),
            },
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: CUPTI passes valid out-pointers (A12 CUpti_BuffersCallbackRequestFunc).
        unsafe {
            *buffer = ptr;
            *size = bytes;
            *max_records = 0;
        }
    });
    if r.is_err() {
        // SAFETY: as above; decline on an internal error.
        unsafe {
            *buffer = std::ptr::null_mut();
            *size = 0;
        }
    }
}

/// `CUpti_BuffersCallbackCompleteFunc`: queues the filled buffer for the collector thread.
/// If the queue were full (it is sized above the pool, so only with overflow buffers) the
/// buffer is returned unread and counted.
///
/// A buffer our pool did not lend (another activity client's, lent before we registered
/// these callbacks: CUPTI's buffer callbacks are one per process) is counted in
/// `foreign_buffers` and never written, zeroed, recycled or freed. CUPTI keeps filling that
/// client's current buffer after our registration, so it can hold our records too: its
/// valid bytes are copied into one of our pool buffers (at most a pool buffer's worth; the
/// cut is counted in `foreign_bytes_cut`) and the copy is decoded like any other buffer.
/// When that client registered through `libgpuspan.so`'s interposed
/// `cuptiActivityRegisterCallbacks` (`gpuspan_cupti::foreign_client`), its buffer is then
/// handed back to its completion callback unchanged, and the records of its kinds in each of
/// our buffers are copied into buffers it lends and handed to it; a buffer that arrives
/// while gpuspan itself collects nothing (the window closed, the other client's kinds still
/// on) is only forwarded and goes straight back to the pool.
///
/// # Safety
/// Called by CUPTI with a buffer it got from a buffer-requested callback, ours or not.
pub unsafe extern "C" fn buffer_completed(
    ctx: *mut std::ffi::c_void,
    stream_id: u32,
    buffer: *mut u8,
    size: usize,
    valid_bytes: usize,
) {
    // SAFETY: the caller's contract, forwarded.
    unsafe { completed(ctx, stream_id, buffer, size, valid_bytes, true) }
}

/// The completion callbacks' body; `v1` for the V1 callback, the only one another V1 client's
/// records can reach.
///
/// # Safety
/// As [`buffer_completed`].
unsafe fn completed(ctx: *mut std::ffi::c_void, stream_id: u32, buffer: *mut u8, size: usize, valid_bytes: usize, v1: bool) {
    use gpuspan_cupti::foreign_client::FOREIGN;
    let _ = std::panic::catch_unwind(|| {
        let Some(a) = shared() else { return };
        if buffer.is_null() {
            return;
        }
        if !a.pool.owns(buffer as usize) {
            a.counters.foreign_buffers.fetch_add(1, Ordering::Relaxed);
            if !(v1 && FOREIGN.is_known() && !FOREIGN.agent_collects()) {
                // SAFETY: CUPTI handed us `buffer` with `valid_bytes` readable bytes.
                unsafe { copy_foreign(a, buffer, valid_bytes) };
            }
            if v1 {
                // SAFETY: CUPTI's arguments for a buffer our pool did not lend; it is no
                // longer read here.
                unsafe { FOREIGN.hand_back(ctx, stream_id, buffer, size, valid_bytes) };
            }
            return;
        }
        if v1 && FOREIGN.is_known() {
            if let Some(gpuspan_cupti::decode::NextRecord::V1(next)) = a.api.as_ref().map(|api| api.next_record()) {
                // SAFETY: our pool buffer with `valid_bytes` of records CUPTI completed,
                // walked with the process's cuptiActivityGetNextRecord; only read.
                unsafe { FOREIGN.forward(next, ctx, stream_id, buffer, valid_bytes) };
            }
            if !FOREIGN.agent_collects() {
                // SAFETY: the buffer came from our pool and CUPTI hands ownership back here,
                // written over its `valid_bytes` only.
                unsafe { a.pool.give_back_written(RawBuffer(buffer as usize), valid_bytes) };
                return;
            }
        }
        if a.completed_queue.push((buffer as usize, valid_bytes)).is_ok() {
            a.counters.buffers_queued.fetch_add(1, Ordering::Release);
        } else {
            a.counters.buffers_dropped.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the buffer came from our pool and CUPTI hands ownership back here,
            // written over its `valid_bytes` only.
            unsafe { a.pool.give_back_written(RawBuffer(buffer as usize), valid_bytes) };
        }
    });
}

/// Copies the valid bytes of a buffer our pool did not lend into a pool buffer and queues the
/// copy for decoding (module docs; [`buffer_completed`]).
///
/// # Safety
/// `buffer` has `valid_bytes` readable bytes (a buffer CUPTI completed) and is not one of
/// the pool's.
unsafe fn copy_foreign(a: &crate::shared::Shared, buffer: *mut u8, valid_bytes: usize) {
    let Some(copy) = a.pool.take(true) else {
        a.counters.buffers_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let n = valid_bytes.min(a.pool.buffer_bytes());
    a.counters.foreign_bytes_cut.fetch_add((valid_bytes - n) as u64, Ordering::Relaxed);
    // SAFETY: the caller's contract gives `valid_bytes` readable bytes at `buffer`; `copy` is
    // a pool buffer of `buffer_bytes() >= n` bytes that nobody else uses; they do not overlap
    // (ours are our own allocations). The foreign buffer is only read.
    unsafe { std::ptr::copy_nonoverlapping(buffer as *const u8, copy.0 as *mut u8, n) };
    if a.completed_queue.push((copy.0, n)).is_err() {
        a.counters.buffers_dropped.fetch_add(1, Ordering::Relaxed);
        // SAFETY: our pool buffer, not queued anywhere, written over its first `n` bytes.
        unsafe { a.pool.give_back_written(copy, n) };
    } else {
        a.counters.buffers_queued.fetch_add(1, Ordering::Release);
    }
}

//! One traced driver API call: correlation id, callback-API ENTER/EXIT, host-clock cost,
//! API / external-correlation / GPU activity records, and writing them into client
//! buffers (requesting buffers through the client callback when needed).
//!
//! Record order per call: external-correlation records (one per non-empty kind stack of
//! the calling thread), then the GPU record, then the API record — the GPU record before
//! its API record as real buffers show (CUPTI-NOTES §2 "Ordering"), the external ones
//! before the API record they tag (§3).

use super::cupti::{BufferCallbacks, SubscriberCallback, Target};
use super::records::{self, kind, Record};
use super::{costs, os_tid, sim, State};
use gpuspan_cupti::multi_subscriber::BufferRequestInfo;
use cudarc::cupti::sys::{CUpti_ApiCallbackSite, CUpti_CallbackData, CUpti_CallbackDomain};
use cudarc::driver::sys::CUresult;
use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};

/// What the caller of [`traced`] describes about the call.
pub struct Call {
    /// `CUpti_driver_api_trace_cbid` of the function.
    pub cbid: u32,
    /// The function's name (`CUpti_CallbackData.functionName`).
    pub name: &'static CStr,
    /// Pointer to the `*_params` struct (`functionParams`), or NULL.
    pub params: *const c_void,
    /// Kernel name for launches (`symbolName`), or NULL.
    pub symbol: *const c_char,
}

/// What the body of a call sees and produces.
#[derive(Debug)]
pub struct Ctx {
    /// Host time at entry.
    pub t0_ns: u64,
    /// Correlation id for GPU records (0 while neither DRIVER nor RUNTIME is enabled).
    pub correlation_id: u32,
    /// Host cost charged to the virtual clock.
    pub cost_ns: u64,
    /// Synchronizing calls: host time the call returns no earlier than.
    pub wait_until_ns: Option<u64>,
    /// GPU records produced by the call.
    pub records: Vec<Record>,
}

/// CUPTI-style thread id for API records: `pthread_self()` truncated, or gettid with
/// `cuptiSetThreadIdType(SYSTEM)` (CUPTI-NOTES §2 `CUpti_ActivityAPI`).
fn api_thread_id(system: bool) -> u32 {
    if system {
        os_tid()
    } else {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() as u32 }
    }
}

fn call_subscriber(
    cb: SubscriberCallback,
    call: &Call,
    site: CUpti_ApiCallbackSite,
    ret: *mut CUresult,
    corr_data: &mut u64,
    corr: u32,
) {
    // The calling thread's current context (device 0's when it has none).
    let device = super::current_context().unwrap_or(0);
    let data = CUpti_CallbackData {
        callbackSite: site,
        functionName: call.name.as_ptr(),
        functionParams: call.params,
        functionReturnValue: ret as *mut c_void,
        symbolName: call.symbol,
        context: super::context_handle(device) as usize as cudarc::driver::sys::CUcontext,
        contextUid: super::context_id(device),
        correlationData: corr_data as *mut u64,
        correlationId: corr,
    };
    // SAFETY: `cb.0` is the subscriber's callback with the CUPTI signature; `data` and
    // everything it points to outlive the call; no sim lock is held.
    unsafe {
        (cb.0)(
            cb.1 as *mut c_void,
            CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API,
            call.cbid,
            &data as *const CUpti_CallbackData as *const c_void,
        )
    };
}

/// Runs `body` as a driver API call. `body` runs under the sim lock and must not call
/// out to client code. Every subscriber that enabled the call gets its ENTER and EXIT
/// callbacks (in subscription order, each with its own `correlationData` slot).
pub fn traced(call: Call, body: impl FnOnce(&mut State, &mut Ctx) -> CUresult) -> CUresult {
    let s = sim();
    let (cbs, corr, mut ctx) = {
        let mut st = s.lock();
        let cbs = st.cupti.callbacks_for(super::cupti::DOMAIN_DRIVER_API, call.cbid);
        let correlating = st.cupti.correlating();
        let corr = if correlating || !cbs.is_empty() {
            st.next_correlation()
        } else {
            0
        };
        let ctx = Ctx {
            t0_ns: st.clock.now_ns(),
            correlation_id: if correlating { corr } else { 0 },
            cost_ns: costs::DEFAULT_CALL_NS,
            wait_until_ns: None,
            records: Vec::new(),
        };
        (cbs, corr, ctx)
    };
    let mut corr_data = vec![0u64; cbs.len()];
    for (cb, slot) in cbs.iter().zip(corr_data.iter_mut()) {
        call_subscriber(*cb, &call, CUpti_ApiCallbackSite::CUPTI_API_ENTER, std::ptr::null_mut(), slot, corr);
    }

    let mut st = s.lock();
    let mut result = body(&mut st, &mut ctx);
    st.clock.charge(ctx.cost_ns);
    if let Some(t) = ctx.wait_until_ns {
        if let Some(sleep) = st.clock.wait_until(t) {
            drop(st);
            std::thread::sleep(sleep);
            st = s.lock();
        }
    }
    let out = finish_records(&mut st, &call, corr, ctx, result);
    drop(st);
    emit(out);

    if !cbs.is_empty() {
        // Re-read: a subscriber may have unsubscribed during the call.
        let still = s.lock().cupti.callbacks_for(super::cupti::DOMAIN_DRIVER_API, call.cbid);
        for (cb, slot) in cbs.iter().zip(corr_data.iter_mut()) {
            if still.contains(cb) {
                call_subscriber(*cb, &call, CUpti_ApiCallbackSite::CUPTI_API_EXIT, &mut result, slot, corr);
            }
        }
    }
    result
}

/// A record and whose buffers it goes to: `None` = every client that enabled its kind.
pub type Routed = (Option<Target>, Record);

/// Builds the records of a finished call in buffer order.
fn finish_records(st: &mut State, call: &Call, mut corr: u32, ctx: Ctx, result: CUresult) -> Vec<Routed> {
    let mut out = Vec::new();
    let api_on = st.cupti.is_enabled(kind::DRIVER);
    if api_on && corr == 0 {
        corr = st.next_correlation();
    }
    let tid = os_tid();
    if st.cupti.correlating() && corr != 0 {
        // Each client's own stacks, into its own buffers.
        for (t, c) in st.cupti.clients() {
            if c.is_enabled(kind::EXTERNAL_CORRELATION) {
                for (k, id) in c.external_tops(tid) {
                    out.push((Some(t), records::external_correlation(k, id, corr)));
                }
            }
        }
    }
    out.extend(ctx.records.into_iter().map(|r| (None, r)));
    if api_on {
        let f = records::ApiFields {
            cbid: call.cbid,
            start_ns: ctx.t0_ns,
            end_ns: st.clock.now_ns(),
            process_id: super::process_id(),
            thread_id: api_thread_id(st.cupti.system_thread_ids),
            correlation_id: corr,
            return_value: result as u32,
        };
        out.push((None, records::api(kind::DRIVER, &f)));
    }
    out
}

/// The clients a record goes to, each with the kind to write it as.
fn destinations(st: &State, to: Option<Target>, rec: &Record) -> Vec<(Target, u32)> {
    let k = rec.kind();
    st.cupti
        .clients()
        .filter(|(t, _)| to.is_none_or(|to| to == *t))
        .filter_map(|(t, c)| c.wants(k).map(|k| (t, k)))
        .collect()
}

/// Writes `records` into the buffers of the clients they go to, in order. A record is
/// dropped (and counted by each client it was for) when the client has no callbacks, declines
/// a buffer, or the `drop_records` fault picks it.
pub fn emit(records: Vec<Routed>) {
    let s = sim();
    let mut queue: VecDeque<Routed> = records.into();
    while let Some((to, rec)) = queue.pop_front() {
        let mut st = s.lock();
        st.record_seq += 1;
        let dests = destinations(&st, to, &rec);
        if st.cfg.faults.drop_records && st.record_seq.is_multiple_of(st.cfg.drop_every) {
            for (t, _) in dests {
                if let Some(c) = st.cupti.client_mut(t) {
                    c.dropped += 1;
                }
            }
            continue;
        }
        let last = dests.len().saturating_sub(1);
        let mut rec = Some(rec);
        for (i, (t, k)) in dests.into_iter().enumerate() {
            let Some(mut r) = (if i == last { rec.take() } else { rec.clone() }) else { break };
            if r.kind() != k {
                r.set_kind(k);
            }
            st = write_to(st, t, r, &mut queue);
        }
    }
}

/// Writes one record into client `t`'s buffers, asking the client for buffers (outside the
/// lock) as needed; a buffer-request overhead record goes to the back of `queue` for the
/// same client. Returns the lock.
fn write_to<'a>(
    mut st: std::sync::MutexGuard<'a, State>,
    t: Target,
    rec: Record,
    queue: &mut VecDeque<Routed>,
) -> std::sync::MutexGuard<'a, State> {
    let s = sim();
    let mut requests = 0;
    loop {
        let system_tids = st.cupti.system_thread_ids;
        let abi = st.cfg.cupti;
        let t0 = st.clock.now_ns();
        let Some(c) = st.cupti.client_mut(t) else { return st };
        let callbacks = c.buffers;
        if matches!(callbacks, BufferCallbacks::None) {
            c.dropped += 1;
            return st;
        }
        match c.pool.append(&rec) {
            super::buffers::Append::Written { filled } => {
                if filled {
                    s.wake.notify_all();
                }
                return st;
            }
            super::buffers::Append::NeedBuffer => {
                if requests == 2 {
                    c.dropped += 1;
                    return st;
                }
                requests += 1;
                let overhead = c.is_enabled(kind::OVERHEAD);
                let own_zeroed_out = c.zeroed_out_buffers;
                let zeroed_out = own_zeroed_out.unwrap_or(st.cupti.zeroed_out_buffers);
                drop(st);
                let (mut ptr, mut size, mut max) = (std::ptr::null_mut::<u8>(), 0usize, 0usize);
                match callbacks {
                    // SAFETY: `request` is the client's registered request callback with
                    // the CUPTI signature; the out-pointers are valid locals; no lock held.
                    BufferCallbacks::V1 { request, .. } => unsafe { request(&mut ptr, &mut size, &mut max) },
                    BufferCallbacks::V2 { request, .. } => {
                        let mut info = BufferRequestInfo { struct_size: std::mem::size_of::<BufferRequestInfo>() };
                        // SAFETY: as above with the V2 signature; `info` outlives the call.
                        unsafe { request(&mut ptr, &mut size, &mut max, &mut info) }
                    }
                    BufferCallbacks::None => {}
                }
                // CUPTI's default: it zeroes the buffer itself, here, on the thread that
                // needed it.
                let zero_here = !zeroed_out && !ptr.is_null();
                if zero_here {
                    // SAFETY: a non-NULL `ptr` is the client's buffer of `size` writable
                    // bytes (the request callback's contract); no lock held.
                    unsafe { std::ptr::write_bytes(ptr, 0, size) };
                }
                st = s.lock();
                if zero_here {
                    st.counters.buffers_zeroed_by_cupti += 1;
                } else if let Some(c) = st.cupti.client_mut(t) {
                    // A buffer lent as zeroed: where the sim wrote in its last use must read
                    // zero again. SAFETY: as above; `written_extent` is at most what the sim
                    // wrote into this buffer before, clamped to `size`.
                    let extent = c.pool.written_extent(ptr).min(size);
                    if unsafe { nonzero_sample(ptr, extent) } {
                        st.counters.buffers_lent_dirty += 1;
                    }
                }
                // The request's overhead record, for a buffer the client lent: a declined
                // request (NULL) makes none, else each overhead record of a client whose
                // pool is exhausted asked for a buffer again, without end (a pool of 4
                // buffers dropped 10^8 such records a minute).
                if overhead && !ptr.is_null() {
                    let t1 = st.clock.now_ns();
                    let pid = super::process_id();
                    let r = records::overhead_buffer_flush(t0, t1, pid, api_thread_id(system_tids), abi, true);
                    queue.push_back((Some(t), r));
                }
                let Some(c) = st.cupti.client_mut(t) else { return st };
                if !c.pool.add_buffer(ptr, size, max) {
                    c.dropped += 1;
                    return st;
                }
            }
        }
    }
}

/// Whether any of the 8-byte words at every 2 KiB of the first `len` bytes at `ptr`, or the
/// last whole word, is non-zero: the sim's check that a client which promised zeroed
/// buffers (`CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER`) zeroed again what the sim
/// wrote into a buffer before lending it anew (a real CUPTI would leave those stale bytes in
/// its records).
///
/// # Safety
/// `ptr` is NULL or valid for `len` bytes of reads.
unsafe fn nonzero_sample(ptr: *mut u8, len: usize) -> bool {
    if ptr.is_null() || len < 8 {
        return false;
    }
    const STRIDE: usize = 2048;
    (0..len - 7).step_by(STRIDE).chain(std::iter::once(len - 8)).any(|off| {
        // SAFETY: `off + 8 <= len` (the last offset is `len - 8`, the others below it);
        // unaligned reads are allowed.
        unsafe { (ptr.add(off) as *const u64).read_unaligned() != 0 }
    })
}

//! `libcupti.so.12` subset (`cupti_activity.h`, `cupti_callbacks.h` 12.9; CUPTI-NOTES §1–4),
//! plus CUPTI 13.3+'s subscriber-aware `_v2` calls (multiple-subscriber mode,
//! `gpuspan_cupti::multi_subscriber`; state in `crate::sim::cupti`). The `_v2` symbols are
//! exported whatever release the simulator claims; a tool checks `cuptiGetVersion` first.

// Safety contract of every export: the C prototype of the function it replaces (cuda.h,
// cupti_*.h, nvml.h): pointer arguments are NULL or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::guard;
use crate::sim::buffers::align_pad;
use crate::sim::config::CuptiAbi;
use crate::sim::cupti::{BufferCallbacks, Mode, Subscriber, Target, DOMAIN_MAX, EXTERNAL_KIND_MAX};
use crate::sim::records::record_size;
use crate::sim::{delivery, os_tid, sim};
use cudarc::cupti::sys::{
    CUptiResult, CUpti_Activity, CUpti_BuffersCallbackCompleteFunc,
    CUpti_BuffersCallbackRequestFunc, CUpti_CallbackFunc, CUpti_SubscriberHandle,
};
use cudarc::driver::sys::CUcontext;
use gpuspan_cupti::multi_subscriber::{
    reported_name, BufferCompletedV2Fn, BufferRequestedV2Fn, SubscriberParams, ATTR_MULTIPLE_SUBSCRIBER_STATE,
    MULTI_SUBSCRIBER_MIN_VERSION,
};
use std::ffi::{c_char, c_int, c_void, CStr};

use CUptiResult::*;

/// `CUPTI_ACTIVITY_FLAG_FLUSH_FORCED` (`cupti_activity.h` `CUpti_ActivityFlag`).
const FLUSH_FORCED: u32 = 1;
/// Highest `CUpti_ActivityKind` accepted by enable/disable (12.9 has kinds up to ~55).
const ACTIVITY_KIND_MAX: u32 = 64;

#[no_mangle]
pub unsafe extern "C" fn cuptiGetVersion(version: *mut u32) -> CUptiResult {
    guard(|| {
        if version.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let (v, slow) = {
            let st = sim().lock();
            (st.cfg.cupti.api_version(), st.cfg.faults.slow_cupti)
        };
        if slow {
            // Outside the sim lock: only this caller waits.
            std::thread::sleep(std::time::Duration::from_millis(crate::sim::config::SLOW_CUPTI_MS));
        }
        // SAFETY: non-NULL out-pointer from the caller.
        unsafe { *version = v };
        CUPTI_SUCCESS
    })
}

/// Result strings for the codes the sim returns (`cupti_result.h` docs).
fn result_text(r: c_int) -> Option<&'static CStr> {
    Some(match r {
        0 => c"CUPTI_SUCCESS",
        1 => c"CUPTI_ERROR_INVALID_PARAMETER",
        10 => c"CUPTI_ERROR_PARAMETER_SIZE_NOT_SUFFICIENT",
        7 => c"CUPTI_ERROR_INVALID_OPERATION",
        12 => c"CUPTI_ERROR_MAX_LIMIT_REACHED",
        15 => c"CUPTI_ERROR_NOT_INITIALIZED",
        18 => c"CUPTI_ERROR_QUEUE_EMPTY",
        21 => c"CUPTI_ERROR_INVALID_KIND",
        27 => c"CUPTI_ERROR_NOT_SUPPORTED",
        39 => c"CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED",
        999 => c"CUPTI_ERROR_UNKNOWN",
        _ => return None,
    })
}

/// `result` is a `CUptiResult`; taken as int so unknown values are not UB.
#[no_mangle]
pub unsafe extern "C" fn cuptiGetResultString(result: c_int, s: *mut *const c_char) -> CUptiResult {
    guard(|| {
        if s.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let Some(t) = result_text(result) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        // SAFETY: non-NULL out-pointer; the string is static.
        unsafe { *s = t.as_ptr() };
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiGetTimestamp(ts: *mut u64) -> CUptiResult {
    guard(|| {
        if ts.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let now = sim().lock().clock.now_ns();
        // SAFETY: non-NULL out-pointer.
        unsafe { *ts = now };
        CUPTI_SUCCESS
    })
}

/// Name the simulator reports as the holder under the `cupti_subscribed` fault, which stands
/// for an incompatible tool (Nsight Systems, Nsight Compute, cuda-gdb) holding CUPTI.
pub const FAULT_HOLDER_NAME: &str = "Nsight Systems";

/// Writes `name` NUL-terminated (cut to fit) into a caller's `oldSubscriberName` buffer.
///
/// # Safety
/// `buf` is NULL or valid for `size` bytes of writes.
unsafe fn write_old_name(buf: *mut c_char, size: usize, name: &str) {
    if buf.is_null() || size == 0 || name.is_empty() {
        return;
    }
    let n = name.len().min(size - 1);
    // SAFETY: caller's contract: `size` writable bytes at `buf`; n + 1 <= size.
    unsafe {
        std::ptr::copy_nonoverlapping(name.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

fn new_subscriber(st: &mut crate::sim::State, cb: CUpti_CallbackFunc, userdata: usize, name: String, own_client: bool) -> usize {
    let handle = st.cupti.issue_handle();
    st.cupti.subscribers.push(Subscriber {
        handle,
        callback: cb,
        userdata,
        domains: [false; DOMAIN_MAX as usize + 1],
        callbacks: Default::default(),
        name,
        activity: own_client.then(Default::default),
    });
    live_handles(|h| h.push(handle));
    handle
}

/// Handles of the live subscribers, readable without the simulator's lock (the `_v2`
/// record walk checks its handle per record).
fn live_handles<R>(f: impl FnOnce(&mut Vec<usize>) -> R) -> R {
    static LIVE: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    f(&mut LIVE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Forgets every live handle (`cuptiFinalize`, simulator reset).
pub(crate) fn forget_handles() {
    live_handles(|h| h.clear());
}

/// V1: one subscriber at a time; refused (39) once any subscriber fixed the mode, single or
/// multiple (V1 and V2 subscribers do not mix).
#[no_mangle]
pub unsafe extern "C" fn cuptiSubscribe(
    sub: *mut CUpti_SubscriberHandle,
    cb: CUpti_CallbackFunc,
    userdata: *mut c_void,
) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        st.counters.subscribes += 1;
        if sub.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        if st.cfg.faults.cupti_subscribed || st.cupti.mode.is_some() {
            return CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
        }
        st.cupti.mode = Some(Mode::Single);
        let h = new_subscriber(&mut st, cb, userdata as usize, String::new(), false);
        // SAFETY: non-NULL out-pointer.
        unsafe { *sub = h as CUpti_SubscriberHandle };
        CUPTI_SUCCESS
    })
}

/// V2 (`cupti_callbacks.h` 13.x): the mode rules of `gpuspan_cupti::multi_subscriber`.
/// Multiple subscribers need a CUPTI 13.3+ release and no `no_multi_subscriber` fault (the
/// driver's r610 requirement); the holder's name goes into `oldSubscriberName` on a 39.
#[no_mangle]
pub unsafe extern "C" fn cuptiSubscribe_v2(
    sub: *mut CUpti_SubscriberHandle,
    cb: CUpti_CallbackFunc,
    userdata: *mut c_void,
    params: *mut SubscriberParams,
) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        st.counters.subscribes += 1;
        if sub.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // SAFETY: NULL or the caller's CUpti_SubscriberParams.
        let p = unsafe { params.as_ref() }.copied();
        if p.is_some_and(|p| p.struct_size < std::mem::size_of::<SubscriberParams>()) {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let allow = p.is_some_and(|p| p.allow_multiple_subscribers == 1);
        let name = p
            .filter(|p| !p.subscriber_name.is_null())
            // SAFETY: a non-NULL subscriberName is a NUL-terminated string (the header).
            .map(|p| unsafe { CStr::from_ptr(p.subscriber_name) }.to_string_lossy().into_owned())
            .map(|n| reported_name(&n))
            .unwrap_or_default();
        let (old, old_size) = p.map_or((std::ptr::null_mut(), 0), |p| (p.old_subscriber_name, p.old_subscriber_size));
        let refuse = |holder: &str| {
            // SAFETY: the caller gave `old_size` writable bytes at `old` (or NULL).
            unsafe { write_old_name(old, old_size, holder) };
            CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED
        };
        if st.cfg.faults.cupti_subscribed {
            return refuse(FAULT_HOLDER_NAME);
        }
        let first = st.cupti.subscribers.first().map(|s| s.name.clone()).unwrap_or_default();
        let multi_ok = st.cfg.cupti.api_version() >= MULTI_SUBSCRIBER_MIN_VERSION && !st.cfg.faults.no_multi_subscriber;
        match (st.cupti.mode, allow) {
            (Some(Mode::Single), _) => return refuse(&first),
            (Some(Mode::Multiple), false) => return refuse(&first),
            (None, true) if !multi_ok => return refuse(""),
            (Some(Mode::Multiple), true) => {
                // SAFETY: as in `refuse`: the first subscriber's name, without an error.
                unsafe { write_old_name(old, old_size, &first) };
            }
            (None, true) => st.cupti.mode = Some(Mode::Multiple),
            (None, false) => st.cupti.mode = Some(Mode::Single),
        }
        let own_client = st.cupti.mode == Some(Mode::Multiple);
        let h = new_subscriber(&mut st, cb, userdata as usize, name, own_client);
        // SAFETY: non-NULL out-pointer.
        unsafe { *sub = h as CUpti_SubscriberHandle };
        CUPTI_SUCCESS
    })
}

/// Removes the subscriber and, in multiple mode, hands its buffers back (forced) through
/// its own completion callback; the mode is free again when none is left.
#[no_mangle]
pub unsafe extern "C" fn cuptiUnsubscribe(sub: CUpti_SubscriberHandle) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        let Some(i) = st.cupti.subscribers.iter().position(|s| s.handle == sub as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        let gone = st.cupti.subscribers.remove(i);
        live_handles(|h| h.retain(|&x| x != gone.handle));
        if st.cupti.subscribers.is_empty() {
            st.cupti.mode = None;
        }
        st.counters.unsubscribes += 1;
        if let Some(mut client) = gone.activity {
            let now = st.clock.now_ns();
            let d = delivery::with_callback(client.pool.take_forced(now), client.buffers.complete());
            if delivery::on_delivery_thread() {
                // From a buffer callback: queue them, do not wait on ourselves.
                st.jobs.push_back(delivery::Job { deliveries: d, done: None });
                drop(st);
                sim().wake.notify_all();
            } else {
                delivery::deliver_and_wait(st, d);
            }
        }
        CUPTI_SUCCESS
    })
}

/// `domain` is a `CUpti_CallbackDomain`, taken as u32.
#[no_mangle]
pub unsafe extern "C" fn cuptiEnableDomain(
    enable: u32,
    sub: CUpti_SubscriberHandle,
    domain: u32,
) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        if domain == 0 || domain > DOMAIN_MAX {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let Some(s) = st.cupti.subscriber_mut(sub as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        s.domains[domain as usize] = enable != 0;
        if enable == 0 {
            s.callbacks.retain(|&(d, _)| d != domain);
        }
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiEnableCallback(
    enable: u32,
    sub: CUpti_SubscriberHandle,
    domain: u32,
    cbid: u32,
) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        if domain == 0 || domain > DOMAIN_MAX {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let Some(s) = st.cupti.subscriber_mut(sub as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        if enable != 0 {
            s.callbacks.insert((domain, cbid));
        } else {
            s.callbacks.remove(&(domain, cbid));
        }
        CUPTI_SUCCESS
    })
}

/// Enables or disables `kind` for client `t`.
fn set_kind(st: &mut crate::sim::State, t: Target, kind: u32, on: bool) -> CUptiResult {
    if kind == 0 || kind > ACTIVITY_KIND_MAX {
        return CUPTI_ERROR_INVALID_KIND;
    }
    let Some(c) = st.cupti.client_mut(t) else {
        return CUPTI_ERROR_INVALID_PARAMETER;
    };
    if on {
        c.enabled.insert(kind);
    } else {
        c.enabled.remove(&kind);
    }
    CUPTI_SUCCESS
}

/// `kind` is a `CUpti_ActivityKind`, taken as u32 so unknown values are not UB. Acts on the
/// V1 (process-wide) client.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityEnable(kind: u32) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        st.counters.enables += 1;
        set_kind(&mut st, Target::Legacy, kind, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityDisable(kind: u32) -> CUptiResult {
    guard(|| set_kind(&mut sim().lock(), Target::Legacy, kind, false))
}

/// The subscriber's client (`Cupti::client_of_handle`); the config is not read (NULL allowed).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityEnable_v2(sub: CUpti_SubscriberHandle, kind: u32, _config: *mut c_void) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        st.counters.enables += 1;
        let Some(t) = st.cupti.client_of_handle(sub as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        set_kind(&mut st, t, kind, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityDisable_v2(sub: CUpti_SubscriberHandle, kind: u32, _config: *mut c_void) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        let Some(t) = st.cupti.client_of_handle(sub as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        set_kind(&mut st, t, kind, false)
    })
}

/// The V1 client's buffer callbacks: one pair per process, whoever registered last.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityRegisterCallbacks(
    request: CUpti_BuffersCallbackRequestFunc,
    complete: CUpti_BuffersCallbackCompleteFunc,
) -> CUptiResult {
    guard(|| {
        let (Some(request), Some(complete)) = (request, complete) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        sim().lock().cupti.legacy.buffers = BufferCallbacks::V1 { request, complete };
        delivery::ensure_started();
        CUPTI_SUCCESS
    })
}

/// The subscriber's own buffer callbacks in multiple mode (the V1 client's in single mode).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityRegisterCallbacks_v2(
    sub: CUpti_SubscriberHandle,
    request: Option<BufferRequestedV2Fn>,
    complete: Option<BufferCompletedV2Fn>,
) -> CUptiResult {
    guard(|| {
        let (Some(request), Some(complete)) = (request, complete) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        let mut st = sim().lock();
        let Some(t) = st.cupti.client_of_handle(sub as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        if let Some(c) = st.cupti.client_mut(t) {
            c.buffers = BufferCallbacks::V2 { request, complete };
        }
        drop(st);
        delivery::ensure_started();
        CUPTI_SUCCESS
    })
}

/// Flag 0: delivers complete buffers (full or not). Flag 1 (FORCED): everything, running
/// records with end = 0. Every client's buffers (no `_v2` exists: in multiple mode it
/// flushes every subscriber, A13). Blocks until the completion callbacks returned. Refused
/// from a buffer callback (INVALID_OPERATION), as CUPTI forbids it (CUPTI-NOTES §1).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityFlushAll(flag: u32) -> CUptiResult {
    guard(|| {
        if delivery::on_delivery_thread() {
            return CUPTI_ERROR_INVALID_OPERATION;
        }
        let mut st = sim().lock();
        let now = st.clock.now_ns();
        let d = if flag & FLUSH_FORCED != 0 {
            delivery::take_all(&mut st, |p| p.take_forced(now))
        } else {
            delivery::take_all(&mut st, |p| p.take_flush(now))
        };
        delivery::deliver_and_wait(st, d);
        CUPTI_SUCCESS
    })
}

/// Stored only: the worker already delivers full + complete buffers every few ms.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityFlushPeriod(ms: u32) -> CUptiResult {
    guard(|| {
        sim().lock().cupti.flush_period_ms = ms;
        CUPTI_SUCCESS
    })
}

/// Pure part of `cuptiActivityGetNextRecord` over addresses: the next record's address.
/// Codes exactly as CUPTI-NOTES §1: 12 at the end or for a record cut by `valid_size`,
/// 21 for a zero/unknown kind.
pub fn next_record(
    buffer: usize,
    valid_size: usize,
    current: usize,
    abi: CuptiAbi,
    read_kind: impl Fn(usize) -> u32,
) -> Result<usize, CUptiResult> {
    let end = buffer + valid_size;
    let mut pos = if current == 0 {
        buffer + align_pad(buffer)
    } else {
        let size = record_size(read_kind(current), abi).ok_or(CUPTI_ERROR_INVALID_KIND)?;
        current + size
    };
    pos += align_pad(pos);
    if pos + 4 > end {
        return Err(CUPTI_ERROR_MAX_LIMIT_REACHED);
    }
    let size = record_size(read_kind(pos), abi).ok_or(CUPTI_ERROR_INVALID_KIND)?;
    if pos + size > end {
        return Err(CUPTI_ERROR_MAX_LIMIT_REACHED);
    }
    Ok(pos)
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityGetNextRecord(
    buffer: *mut u8,
    valid_size: usize,
    record: *mut *mut CUpti_Activity,
) -> CUptiResult {
    guard(|| {
        if buffer.is_null() || record.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // No simulator lock: parsing a caller's buffer waits for no CUDA call.
        let abi = crate::sim::cupti_abi();
        // SAFETY: non-NULL in/out pointer from the caller.
        let current = unsafe { *record } as usize;
        // SAFETY: `next_record` only reads 4-byte kinds at addresses it checked to lie
        // inside [buffer, buffer + valid_size), which the caller owns.
        let read_kind = |addr: usize| unsafe { (addr as *const u32).read_unaligned() };
        match next_record(buffer as usize, valid_size, current, abi, read_kind) {
            Ok(p) => {
                // SAFETY: non-NULL out-pointer.
                unsafe { *record = p as *mut CUpti_Activity };
                CUPTI_SUCCESS
            }
            Err(e) => e,
        }
    })
}

/// `cuptiActivityGetNextRecord` for a live subscriber's buffers; an unknown handle is
/// INVALID_PARAMETER. Takes no simulator lock, as the V1 walk.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityGetNextRecord_v2(
    sub: CUpti_SubscriberHandle,
    buffer: *mut u8,
    valid_size: usize,
    record: *mut *mut CUpti_Activity,
) -> CUptiResult {
    if !live_handles(|h| h.contains(&(sub as usize))) {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    // SAFETY: the caller's contract is the V1 function's.
    unsafe { cuptiActivityGetNextRecord(buffer, valid_size, record) }
}

/// Reads and resets a client's dropped-record count.
fn take_dropped(t: Option<Target>, dropped: *mut usize) -> CUptiResult {
    if dropped.is_null() {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    let mut st = sim().lock();
    let Some(c) = t.and_then(|t| st.cupti.client_mut(t)) else {
        return CUPTI_ERROR_INVALID_PARAMETER;
    };
    let n = std::mem::take(&mut c.dropped);
    // SAFETY: non-NULL out-pointer.
    unsafe { *dropped = n as usize };
    CUPTI_SUCCESS
}

/// The subscriber's own count in multiple mode (`cupti_activity.h` 13.3+).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityGetNumDroppedRecords_v2(
    sub: CUpti_SubscriberHandle,
    _ctx: CUcontext,
    _stream_id: u32,
    dropped: *mut usize,
) -> CUptiResult {
    guard(|| {
        let t = sim().lock().cupti.client_of_handle(sub as usize);
        take_dropped(t, dropped)
    })
}

/// Reads and resets the dropped-record count (CUPTI-NOTES §1).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityGetNumDroppedRecords(
    _ctx: CUcontext,
    _stream_id: u32,
    dropped: *mut usize,
) -> CUptiResult {
    guard(|| take_dropped(Some(Target::Legacy), dropped))
}

/// Pushes `id` on client `t`'s stack of `kind` for the calling thread.
fn push_external(t: Option<Target>, kind: u32, id: u64) -> CUptiResult {
    if kind == 0 || kind > EXTERNAL_KIND_MAX {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    let mut st = sim().lock();
    let Some(c) = t.and_then(|t| st.cupti.client_mut(t)) else {
        return CUPTI_ERROR_INVALID_PARAMETER;
    };
    c.push_external(os_tid(), kind, id);
    CUPTI_SUCCESS
}

/// Pops client `t`'s stack of `kind` for the calling thread.
fn pop_external(t: Option<Target>, kind: u32, last: *mut u64) -> CUptiResult {
    if kind == 0 || kind > EXTERNAL_KIND_MAX {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    let mut st = sim().lock();
    let Some(c) = t.and_then(|t| st.cupti.client_mut(t)) else {
        return CUPTI_ERROR_INVALID_PARAMETER;
    };
    let Some(id) = c.pop_external(os_tid(), kind) else {
        return CUPTI_ERROR_QUEUE_EMPTY;
    };
    if !last.is_null() {
        // SAFETY: non-NULL out-pointer.
        unsafe { *last = id };
    }
    CUPTI_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityPushExternalCorrelationId(kind: u32, id: u64) -> CUptiResult {
    guard(|| push_external(Some(Target::Legacy), kind, id))
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityPopExternalCorrelationId(kind: u32, last: *mut u64) -> CUptiResult {
    guard(|| pop_external(Some(Target::Legacy), kind, last))
}

/// The subscriber's own stacks in multiple mode (`cupti_activity.h` 13.3+).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityPushExternalCorrelationId_v2(sub: CUpti_SubscriberHandle, kind: u32, id: u64) -> CUptiResult {
    guard(|| {
        let t = sim().lock().cupti.client_of_handle(sub as usize);
        push_external(t, kind, id)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityPopExternalCorrelationId_v2(
    sub: CUpti_SubscriberHandle,
    kind: u32,
    last: *mut u64,
) -> CUptiResult {
    guard(|| {
        let t = sim().lock().cupti.client_of_handle(sub as usize);
        pop_external(t, kind, last)
    })
}

/// `cuptiGetTimestamp` for a live subscriber (13.3+).
#[no_mangle]
pub unsafe extern "C" fn cuptiGetTimestamp_v2(sub: CUpti_SubscriberHandle, ts: *mut u64) -> CUptiResult {
    if !live_handles(|h| h.contains(&(sub as usize))) {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    // SAFETY: the caller's contract is the V1 function's.
    unsafe { cuptiGetTimestamp(ts) }
}

/// Only `CUPTI_ACTIVITY_ATTR_MULTIPLE_SUBSCRIBER_STATE` (12): a `uint8_t`, 0 single, 1
/// multiple, 2 not fixed; other attributes are NOT_SUPPORTED here.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityGetAttribute_v2(
    _sub: CUpti_SubscriberHandle,
    attr: u32,
    size: *mut usize,
    value: *mut c_void,
) -> CUptiResult {
    guard(|| {
        if size.is_null() || value.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        if attr != ATTR_MULTIPLE_SUBSCRIBER_STATE {
            return CUPTI_ERROR_NOT_SUPPORTED;
        }
        // SAFETY: non-NULL in/out size from the caller.
        if unsafe { *size } < 1 {
            return CUPTI_ERROR_PARAMETER_SIZE_NOT_SUFFICIENT;
        }
        let state = sim().lock().cupti.multiple_subscriber_state();
        // SAFETY: non-NULL, at least one byte (checked above).
        unsafe {
            *(value as *mut u8) = state;
            *size = 1;
        }
        CUPTI_SUCCESS
    })
}

/// `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` (`cupti_activity.h`).
const ATTR_ZEROED_OUT_ACTIVITY_BUFFER: u32 = 5;

/// Accepts every attribute (the sim has no device buffers) after checking the arguments;
/// keeps `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` (5, a `uint8_t`), which decides
/// whether the sim zeroes lent buffers on the requesting thread
/// (`sim::cupti::Cupti::zeroed_out_buffers`).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivitySetAttribute(
    attr: u32,
    size: *mut usize,
    value: *mut c_void,
) -> CUptiResult {
    guard(|| {
        // SAFETY: the caller's in-size and value (CUPTI's contract).
        match unsafe { zeroed_out_value(attr, size, value) } {
            Ok(Some(on)) => sim().lock().cupti.zeroed_out_buffers = on,
            Ok(None) => {}
            Err(code) => return code,
        }
        CUPTI_SUCCESS
    })
}

/// The value of `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` being set (a `uint8_t`, non-zero
/// for on); `None` for another attribute; INVALID_PARAMETER for a NULL `size` or `value`,
/// PARAMETER_SIZE_NOT_SUFFICIENT for a size under one byte.
///
/// # Safety
/// `size` and `value` are NULL or the caller's in-size and value (CUPTI's contract).
unsafe fn zeroed_out_value(attr: u32, size: *mut usize, value: *mut c_void) -> Result<Option<bool>, CUptiResult> {
    if size.is_null() || value.is_null() {
        return Err(CUPTI_ERROR_INVALID_PARAMETER);
    }
    if attr != ATTR_ZEROED_OUT_ACTIVITY_BUFFER {
        return Ok(None);
    }
    // SAFETY: non-NULL in-size from the caller.
    if unsafe { *size } < 1 {
        return Err(CUPTI_ERROR_PARAMETER_SIZE_NOT_SUFFICIENT);
    }
    // SAFETY: non-NULL, at least one readable byte (checked above).
    Ok(Some(unsafe { *(value as *const u8) } != 0))
}

/// `cuptiActivitySetAttribute` for one subscriber (13.3+): an unknown handle is
/// INVALID_PARAMETER; `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` (5) is kept for the
/// subscriber's activity client (in single mode, the V1 client: the process-wide value), so
/// only its buffers are used as lent (`sim::cupti::ActivityClient::zeroed_out_buffers`);
/// every other attribute is accepted.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivitySetAttribute_v2(
    sub: CUpti_SubscriberHandle,
    attr: u32,
    size: *mut usize,
    value: *mut c_void,
) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        let Some(t) = st.cupti.client_of_handle(sub as usize) else { return CUPTI_ERROR_INVALID_PARAMETER };
        // SAFETY: the caller's in-size and value (CUPTI's contract).
        match unsafe { zeroed_out_value(attr, size, value) } {
            Ok(Some(on)) => match t {
                Target::Legacy => st.cupti.zeroed_out_buffers = on,
                _ => {
                    if let Some(c) = st.cupti.client_mut(t) {
                        c.zeroed_out_buffers = Some(on);
                    }
                }
            },
            Ok(None) => {}
            Err(code) => return code,
        }
        CUPTI_SUCCESS
    })
}

/// `type_`: CUPTI_ACTIVITY_THREAD_ID_TYPE_DEFAULT 0 (pthread_self) or SYSTEM 1 (gettid).
#[no_mangle]
pub unsafe extern "C" fn cuptiSetThreadIdType(type_: u32) -> CUptiResult {
    guard(|| {
        if type_ > 1 {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        sim().lock().cupti.system_thread_ids = type_ == 1;
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiGetThreadIdType(type_: *mut u32) -> CUptiResult {
    guard(|| {
        if type_.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let v = sim().lock().cupti.system_thread_ids as u32;
        // SAFETY: non-NULL out-pointer.
        unsafe { *type_ = v };
        CUPTI_SUCCESS
    })
}

/// Hands every held buffer back (forced), then drops all CUPTI state; any later call
/// starts from scratch (CUPTI-NOTES §4 "Detach/attach"). Does nothing while more than one
/// subscriber is subscribed (multiple-subscriber mode, DOC §2.4).
#[no_mangle]
pub unsafe extern "C" fn cuptiFinalize() -> CUptiResult {
    guard(|| {
        if delivery::on_delivery_thread() {
            return CUPTI_ERROR_INVALID_OPERATION;
        }
        let mut st = sim().lock();
        if st.cupti.subscribers.len() > 1 {
            return CUPTI_SUCCESS;
        }
        let now = st.clock.now_ns();
        let d = delivery::take_all(&mut st, |p| p.take_forced(now));
        delivery::deliver_and_wait(st, d);
        sim().lock().reset_cupti();
        forget_handles();
        CUPTI_SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::records::kind;

    #[test]
    fn next_record_walks_and_reports_exact_codes() {
        // Two records: API (DRIVER, 40 B) then external correlation (24 B).
        let mut buf = [0u64; 16];
        buf[0] = kind::DRIVER as u64;
        buf[5] = kind::EXTERNAL_CORRELATION as u64;
        let ptr = buf.as_mut_ptr();
        let base = ptr as usize;
        // SAFETY: `next_record` reads only inside the array.
        let read = |a: usize| unsafe { (a as *const u32).read_unaligned() };
        let first = next_record(base, 64, 0, CuptiAbi::V12, read).unwrap();
        assert_eq!(first, base);
        let second = next_record(base, 64, first, CuptiAbi::V12, read).unwrap();
        assert_eq!(second, base + 40);
        assert_eq!(
            next_record(base, 64, second, CuptiAbi::V12, read),
            Err(CUPTI_ERROR_MAX_LIMIT_REACHED)
        );
        assert_eq!(
            next_record(base, 0, 0, CuptiAbi::V12, read),
            Err(CUPTI_ERROR_MAX_LIMIT_REACHED)
        );
        assert_eq!(
            next_record(base, 50, first, CuptiAbi::V12, read),
            Err(CUPTI_ERROR_MAX_LIMIT_REACHED),
            "cut record"
        );
        assert_eq!(
            next_record(base, 128, second, CuptiAbi::V12, read),
            Err(CUPTI_ERROR_INVALID_KIND),
            "zero-filled"
        );
        // SAFETY: `ptr` points at the live array; later reads go through the same pointer.
        unsafe { *ptr = 4242 };
        assert_eq!(
            next_record(base, 128, 0, CuptiAbi::V12, read),
            Err(CUPTI_ERROR_INVALID_KIND),
            "unknown kind"
        );
    }
}

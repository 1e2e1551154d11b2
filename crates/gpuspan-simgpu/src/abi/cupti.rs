//! `libcupti.so.12` subset (`cupti_activity.h`, `cupti_callbacks.h` 12.9; CUPTI-NOTES §1–4).

// Safety contract of every export: the C prototype of the function it replaces (cuda.h,
// cupti_*.h, nvml.h): pointer arguments are NULL or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::guard;
use crate::sim::buffers::align_pad;
use crate::sim::config::CuptiAbi;
use crate::sim::cupti::{Subscriber, DOMAIN_MAX, EXTERNAL_KIND_MAX, SUBSCRIBER_HANDLE};
use crate::sim::records::record_size;
use crate::sim::{delivery, os_tid, sim};
use cudarc::cupti::sys::{
    CUptiResult, CUpti_Activity, CUpti_BuffersCallbackCompleteFunc,
    CUpti_BuffersCallbackRequestFunc, CUpti_CallbackFunc, CUpti_SubscriberHandle,
};
use cudarc::driver::sys::CUcontext;
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
        7 => c"CUPTI_ERROR_INVALID_OPERATION",
        12 => c"CUPTI_ERROR_MAX_LIMIT_REACHED",
        15 => c"CUPTI_ERROR_NOT_INITIALIZED",
        18 => c"CUPTI_ERROR_QUEUE_EMPTY",
        21 => c"CUPTI_ERROR_INVALID_KIND",
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
        if st.cfg.faults.cupti_subscribed || st.cupti.subscriber.is_some() {
            return CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
        }
        st.cupti.subscriber = Some(Subscriber {
            callback: cb,
            userdata: userdata as usize,
            domains: [false; DOMAIN_MAX as usize + 1],
        });
        // SAFETY: non-NULL out-pointer.
        unsafe { *sub = SUBSCRIBER_HANDLE as CUpti_SubscriberHandle };
        CUPTI_SUCCESS
    })
}

fn is_ours(sub: CUpti_SubscriberHandle) -> bool {
    sub as usize == SUBSCRIBER_HANDLE
}

#[no_mangle]
pub unsafe extern "C" fn cuptiUnsubscribe(sub: CUpti_SubscriberHandle) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        if !is_ours(sub) || st.cupti.subscriber.is_none() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        st.cupti.subscriber = None;
        st.cupti.callbacks.clear();
        st.counters.unsubscribes += 1;
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
        if !is_ours(sub) || domain == 0 || domain > DOMAIN_MAX {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let Some(s) = st.cupti.subscriber.as_mut() else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        s.domains[domain as usize] = enable != 0;
        if enable == 0 {
            st.cupti.callbacks.retain(|&(d, _)| d != domain);
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
        if !is_ours(sub) || st.cupti.subscriber.is_none() || domain == 0 || domain > DOMAIN_MAX {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        if enable != 0 {
            st.cupti.callbacks.insert((domain, cbid));
        } else {
            st.cupti.callbacks.remove(&(domain, cbid));
        }
        CUPTI_SUCCESS
    })
}

/// `kind` is a `CUpti_ActivityKind`, taken as u32 so unknown values are not UB.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityEnable(kind: u32) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        st.counters.enables += 1;
        if kind == 0 || kind > ACTIVITY_KIND_MAX {
            return CUPTI_ERROR_INVALID_KIND;
        }
        st.cupti.enabled.insert(kind);
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityDisable(kind: u32) -> CUptiResult {
    guard(|| {
        let mut st = sim().lock();
        if kind == 0 || kind > ACTIVITY_KIND_MAX {
            return CUPTI_ERROR_INVALID_KIND;
        }
        st.cupti.enabled.remove(&kind);
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityRegisterCallbacks(
    request: CUpti_BuffersCallbackRequestFunc,
    complete: CUpti_BuffersCallbackCompleteFunc,
) -> CUptiResult {
    guard(|| {
        if request.is_none() || complete.is_none() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let mut st = sim().lock();
        st.cupti.request = request;
        st.cupti.complete = complete;
        drop(st);
        delivery::ensure_started();
        CUPTI_SUCCESS
    })
}

/// Flag 0: delivers complete buffers (full or not). Flag 1 (FORCED): everything, running
/// records with end = 0. Blocks until the completion callbacks returned. Refused from a
/// buffer callback (INVALID_OPERATION), as CUPTI forbids it (CUPTI-NOTES §1).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityFlushAll(flag: u32) -> CUptiResult {
    guard(|| {
        if delivery::on_delivery_thread() {
            return CUPTI_ERROR_INVALID_OPERATION;
        }
        let mut st = sim().lock();
        let now = st.clock.now_ns();
        let d = if flag & FLUSH_FORCED != 0 {
            st.pool.take_forced(now)
        } else {
            st.pool.take_flush(now)
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

/// Reads and resets the dropped-record count (CUPTI-NOTES §1).
#[no_mangle]
pub unsafe extern "C" fn cuptiActivityGetNumDroppedRecords(
    _ctx: CUcontext,
    _stream_id: u32,
    dropped: *mut usize,
) -> CUptiResult {
    guard(|| {
        if dropped.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let n = std::mem::take(&mut sim().lock().cupti.dropped);
        // SAFETY: non-NULL out-pointer.
        unsafe { *dropped = n as usize };
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityPushExternalCorrelationId(kind: u32, id: u64) -> CUptiResult {
    guard(|| {
        if kind == 0 || kind > EXTERNAL_KIND_MAX {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        sim().lock().cupti.push_external(os_tid(), kind, id);
        CUPTI_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuptiActivityPopExternalCorrelationId(
    kind: u32,
    last: *mut u64,
) -> CUptiResult {
    guard(|| {
        if kind == 0 || kind > EXTERNAL_KIND_MAX {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let Some(id) = sim().lock().cupti.pop_external(os_tid(), kind) else {
            return CUPTI_ERROR_QUEUE_EMPTY;
        };
        if !last.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { *last = id };
        }
        CUPTI_SUCCESS
    })
}

/// Accepts every attribute (the sim has no device buffers); checks the arguments only.
#[no_mangle]
pub unsafe extern "C" fn cuptiActivitySetAttribute(
    _attr: u32,
    size: *mut usize,
    value: *mut c_void,
) -> CUptiResult {
    guard(|| {
        if size.is_null() || value.is_null() {
            CUPTI_ERROR_INVALID_PARAMETER
        } else {
            CUPTI_SUCCESS
        }
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
/// starts from scratch (CUPTI-NOTES §4 "Detach/attach").
#[no_mangle]
pub unsafe extern "C" fn cuptiFinalize() -> CUptiResult {
    guard(|| {
        if delivery::on_delivery_thread() {
            return CUPTI_ERROR_INVALID_OPERATION;
        }
        let mut st = sim().lock();
        let now = st.clock.now_ns();
        let d = st.pool.take_forced(now);
        delivery::deliver_and_wait(st, d);
        sim().lock().reset_cupti();
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

//! A second CUPTI activity client inside the replay worker (`gpuspan-replay
//! --activity-client`), as torch.profiler's Kineto is inside a PyTorch worker: it registers
//! its own buffer callbacks and enables `CONCURRENT_KERNEL` through the process's CUPTI,
//! with no callback-API subscriber.
//!
//! CUPTI keeps one pair of buffer callbacks per process: whoever registered last receives
//! every completed buffer, including those the other client lent (CUPTI-NOTES §1). So the
//! client fills each buffer it lends with a canary byte ([`CANARY`]), and [`GUARD_BYTES`]
//! more past the size it lends, and, at the end, checks that nobody wrote into them beyond
//! what CUPTI filled: the bytes past `validSize` of the buffers it got back, and, in those
//! another client received instead, the bytes past the last record
//! `cuptiActivityGetNextRecord` still finds (plus [`MAX_RECORD_BYTES`]), must still be the
//! canary or zero (like Kineto, the client does not set
//! `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER`, so CUPTI zeroes a buffer when it takes
//! it, unless gpuspan set the process-wide attribute); the guard past the lent size must be
//! the canary. It counts the kernel records it received.
//!
//! The V1 client resolves `cuptiActivityRegisterCallbacks` / `cuptiActivityEnable` from the
//! process's global scope (after loading `libcupti.so.12` `RTLD_GLOBAL`), as Kineto's PLT
//! calls are: under `LD_PRELOAD=libgpuspan.so` it reaches gpuspan's interposed entry points
//! (`gpuspan_cupti::foreign_client`), as the real one would.
//!
//! Buffers are never freed (the checks read them at the end; a handful of MiB per run).
//!
//! [`ClientKind::MultiSubscriber`] is the same client as a CUPTI 13.3+ tool that subscribes
//! with `cuptiSubscribe_v2` as "torch.profiler" asking for multiple-subscriber mode and uses
//! the `_v2` calls with its handle (`gpuspan_cupti::multi_subscriber`): CUPTI then keeps its
//! kinds, buffer callbacks and buffers apart from gpuspan's. [`ClientKind::SingleSubscriber`]
//! subscribes the same way without asking for it, which makes CUPTI single-subscriber: a
//! later subscriber (gpuspan) is refused with this client's name.

use libloading::Library;
use std::sync::Mutex;

/// Size of each buffer the client lends, bytes: 32 MiB, room for ≈ 160 000 kernel records,
/// so a test run's records stay in the client's first buffer until a flush (the situation
/// in which another client's flush hands it over).
pub const BUFFER_BYTES: usize = 32 << 20;
/// The byte every lent buffer is filled with.
pub const CANARY: u8 = 0xA5;
/// Canary bytes allocated past the size each buffer is lent with: nothing may write there.
pub const GUARD_BYTES: usize = 4096;
/// The longest record a CUPTI 12.0 … 13.5 writes for the kinds enabled here (Kernel13,
/// 248 B), rounded up: how far past the start of the last record found a buffer may hold
/// record bytes.
pub const MAX_RECORD_BYTES: usize = 256;

/// `CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL` (`cupti_activity.h`).
const KIND_CONCURRENT_KERNEL: u32 = 10;
/// `CUPTI_ACTIVITY_FLAG_FLUSH_FORCED`.
const FLUSH_FORCED: u32 = 1;

type NextRecordFn = unsafe extern "C" fn(*mut u8, usize, *mut *mut u8) -> u32;
type NextRecordV2Fn = unsafe extern "C" fn(*mut std::ffi::c_void, *mut u8, usize, *mut *mut u8) -> u32;
type FlushFn = unsafe extern "C" fn(u32) -> u32;

/// How the client uses CUPTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// V1 activity calls, no subscriber (torch.profiler's Kineto today).
    V1,
    /// `cuptiSubscribe_v2` asking for multiple subscribers, then the `_v2` activity calls.
    MultiSubscriber,
    /// `cuptiSubscribe_v2` without asking for multiple subscribers (single mode).
    SingleSubscriber,
}

/// The name the subscribing kinds give CUPTI (reported as "CUPTI for torch.profiler").
pub const SUBSCRIBER_NAME: &std::ffi::CStr = c"torch.profiler";

#[derive(Default)]
struct State {
    /// (address, lent) of every buffer lent; `Some(valid_bytes)` once it came back.
    buffers: Vec<(usize, Option<usize>)>,
    kernels: u64,
    next_record: Option<NextRecordFn>,
    /// `cuptiActivityGetNextRecord_v2` and our handle, for the subscribing kinds.
    next_record_v2: Option<(NextRecordV2Fn, usize)>,
}

static STATE: Mutex<State> = Mutex::new(State { buffers: Vec::new(), kernels: 0, next_record: None, next_record_v2: None });

/// What the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Buffers lent to CUPTI.
    pub lent: usize,
    /// Buffers CUPTI gave back to this client.
    pub returned: usize,
    /// Kernel records in them.
    pub kernels: u64,
    /// Every canary byte checked was intact.
    pub canary_intact: bool,
}

unsafe extern "C" fn request(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    let b = vec![CANARY; BUFFER_BYTES + GUARD_BYTES].into_boxed_slice();
    let p = Box::leak(b).as_mut_ptr();
    if let Ok(mut st) = STATE.lock() {
        st.buffers.push((p as usize, None));
    }
    // SAFETY: CUPTI passes valid out-pointers to the buffer-requested callback.
    unsafe {
        *buffer = p;
        *size = BUFFER_BYTES;
        *max_records = 0;
    }
}

unsafe extern "C" fn complete(_ctx: *mut std::ffi::c_void, _stream: u32, buffer: *mut u8, _size: usize, valid: usize) {
    let Ok(mut st) = STATE.lock() else { return };
    let Some(i) = st.buffers.iter().position(|(a, _)| *a == buffer as usize) else { return };
    st.buffers[i].1 = Some(valid);
    let v1 = st.next_record;
    let v2 = st.next_record_v2;
    let mut rec: *mut u8 = std::ptr::null_mut();
    // SAFETY: `buffer` is one of ours with `valid` bytes of records, walked with the
    // process's cuptiActivityGetNextRecord(_v2) (with our handle); each record starts with its
    // u32 kind.
    let step = |rec: &mut *mut u8| unsafe {
        match (v2, v1) {
            (Some((f, h)), _) => f(h as *mut std::ffi::c_void, buffer, valid, rec),
            (None, Some(f)) => f(buffer, valid, rec),
            (None, None) => 1,
        }
    };
    while step(&mut rec) == 0 && !rec.is_null() {
        // SAFETY: a record CUPTI returned inside our buffer.
        if unsafe { (rec as *const u32).read_unaligned() } == KIND_CONCURRENT_KERNEL {
            st.kernels += 1;
        }
    }
}

unsafe extern "C" fn request_v2(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize, _info: *mut std::ffi::c_void) {
    // SAFETY: the same out-pointers.
    unsafe { request(buffer, size, max_records) }
}

unsafe extern "C" fn complete_v2(buffer: *mut u8, size: usize, valid: usize, _info: *mut std::ffi::c_void) {
    // SAFETY: the same buffer contract.
    unsafe { complete(std::ptr::null_mut(), 0, buffer, size, valid) }
}

/// `cuptiSubscribe_v2` as [`SUBSCRIBER_NAME`], then `_v2` enable and buffer callbacks with the
/// handle. Errors name the call and, on 39, the holder CUPTI named.
///
/// # Safety
/// `lib` is the process's CUPTI.
unsafe fn start_subscribed(lib: &Library, allow_multiple: bool) -> Result<(), String> {
    use gpuspan_cupti::multi_subscriber::{read_old_subscriber_name, SubscriberParams, OLD_SUBSCRIBER_NAME_MIN_LEN};
    type SubscribeV2 = unsafe extern "C" fn(*mut *mut std::ffi::c_void, Option<unsafe extern "C" fn()>, *mut std::ffi::c_void, *mut SubscriberParams) -> u32;
    type EnableV2 = unsafe extern "C" fn(*mut std::ffi::c_void, u32, *mut std::ffi::c_void) -> u32;
    type RegisterV2 = unsafe extern "C" fn(
        *mut std::ffi::c_void,
        unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize, *mut std::ffi::c_void),
        unsafe extern "C" fn(*mut u8, usize, usize, *mut std::ffi::c_void),
    ) -> u32;
    // SAFETY: symbols read with their cupti_callbacks.h / cupti_activity.h 13.x prototypes
    // (the subscriber callback is NULL: this client enables no callback).
    unsafe {
        let subscribe = *lib.get::<SubscribeV2>(b"cuptiSubscribe_v2\0").map_err(|e| e.to_string())?;
        let enable = *lib.get::<EnableV2>(b"cuptiActivityEnable_v2\0").map_err(|e| e.to_string())?;
        let register = *lib.get::<RegisterV2>(b"cuptiActivityRegisterCallbacks_v2\0").map_err(|e| e.to_string())?;
        let next = *lib.get::<NextRecordV2Fn>(b"cuptiActivityGetNextRecord_v2\0").map_err(|e| e.to_string())?;
        let mut holder = [0u8; OLD_SUBSCRIBER_NAME_MIN_LEN];
        let mut params = SubscriberParams::new(SUBSCRIBER_NAME, &mut holder, allow_multiple);
        let mut h = std::ptr::null_mut();
        match subscribe(&mut h, None, std::ptr::null_mut(), &mut params) {
            0 => {}
            c => {
                let by = read_old_subscriber_name(&holder).map(|n| format!(" (held by {n})")).unwrap_or_default();
                return Err(format!("cuptiSubscribe_v2 returned {c}{by}"));
            }
        }
        if let Ok(mut st) = STATE.lock() {
            st.next_record_v2 = Some((next, h as usize));
        }
        match register(h, request_v2, complete_v2) {
            0 => {}
            c => return Err(format!("cuptiActivityRegisterCallbacks_v2 returned {c}")),
        }
        match enable(h, KIND_CONCURRENT_KERNEL, std::ptr::null_mut()) {
            0 => {}
            c => return Err(format!("cuptiActivityEnable_v2(CONCURRENT_KERNEL) returned {c}")),
        }
    }
    Ok(())
}

/// Registers the client's buffer callbacks and enables `CONCURRENT_KERNEL` through
/// `libcupti.so.12` (the process's CUPTI), the way `kind` says. Errors name the call that
/// failed.
pub fn start(kind: ClientKind) -> Result<(), String> {
    // SAFETY: loading the process's CUPTI (already loaded under the simulator's driver, or
    // the real one) and resolving functions with their cupti_activity.h prototypes.
    unsafe {
        let lib = Library::new("libcupti.so.12").map_err(|e| format!("libcupti.so.12: {e}"))?;
        if kind != ClientKind::V1 {
            let r = start_subscribed(&lib, kind == ClientKind::MultiSubscriber);
            std::mem::forget(lib);
            return r;
        }
        // Kineto calls CUPTI through its PLT: the global lookup order, where a preloaded
        // library (libgpuspan.so) comes first. So the library is made global and the V1
        // calls are resolved from the process's global scope, not from this handle.
        let global = libloading::os::unix::Library::open(Some("libcupti.so.12"), libc::RTLD_NOW | libc::RTLD_GLOBAL)
            .map_err(|e| format!("libcupti.so.12 (RTLD_GLOBAL): {e}"))?;
        std::mem::forget(global);
        let scope = libloading::os::unix::Library::this();
        type RegisterFn = unsafe extern "C" fn(
            unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize),
            unsafe extern "C" fn(*mut std::ffi::c_void, u32, *mut u8, usize, usize),
        ) -> u32;
        let register = *scope.get::<RegisterFn>(b"cuptiActivityRegisterCallbacks\0").map_err(|e| e.to_string())?;
        let enable = *scope.get::<unsafe extern "C" fn(u32) -> u32>(b"cuptiActivityEnable\0").map_err(|e| e.to_string())?;
        let next = *scope.get::<NextRecordFn>(b"cuptiActivityGetNextRecord\0").map_err(|e| e.to_string())?;
        std::mem::forget(scope);
        if let Ok(mut st) = STATE.lock() {
            st.next_record = Some(next);
        }
        match register(request, complete) {
            0 => {}
            c => return Err(format!("cuptiActivityRegisterCallbacks returned {c}")),
        }
        match enable(KIND_CONCURRENT_KERNEL) {
            0 => {}
            c => return Err(format!("cuptiActivityEnable(CONCURRENT_KERNEL) returned {c}")),
        }
        std::mem::forget(lib);
    }
    Ok(())
}

/// Flushes CUPTI (forced: the run is over) and checks the canaries of every buffer lent.
pub fn finish() -> Report {
    // SAFETY: as in `start`.
    unsafe {
        if let Ok(lib) = Library::new("libcupti.so.12") {
            if let Ok(flush) = lib.get::<FlushFn>(b"cuptiActivityFlushAll\0") {
                flush(FLUSH_FORCED);
            }
            std::mem::forget(lib);
        }
    }
    let st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let mut intact = true;
    for &(addr, valid) in &st.buffers {
        let from = match (valid, st.next_record) {
            (Some(v), _) => v.min(BUFFER_BYTES),
            (None, Some(next)) => {
                // Records CUPTI wrote start at 0 and end where the canary begins: the walk
                // stops at the first non-record (the canary reads as an unknown kind).
                let mut rec: *mut u8 = std::ptr::null_mut();
                let mut last = None;
                // SAFETY: a buffer of ours, BUFFER_BYTES long; GetNextRecord reads inside it.
                unsafe {
                    while next(addr as *mut u8, BUFFER_BYTES, &mut rec) == 0 && !rec.is_null() {
                        last = Some(rec as usize - addr);
                    }
                }
                last.map_or(0, |o| (o + MAX_RECORD_BYTES).min(BUFFER_BYTES))
            }
            (None, None) => 0,
        };
        // SAFETY: each address is a leaked BUFFER_BYTES + GUARD_BYTES allocation of ours.
        let b = unsafe { std::slice::from_raw_parts(addr as *const u8, BUFFER_BYTES + GUARD_BYTES) };
        intact &= b[from..BUFFER_BYTES].iter().all(|&x| x == CANARY || x == 0);
        intact &= b[BUFFER_BYTES..].iter().all(|&x| x == CANARY);
    }
    Report {
        lent: st.buffers.len(),
        returned: st.buffers.iter().filter(|b| b.1.is_some()).count(),
        kernels: st.kernels,
        canary_intact: intact,
    }
}

//! The safe Activity / Callback API surface the agent uses.
//!
//! [`ActivityApi`] wraps [`CuptiSymbols`] with typed calls. Kinds and constants are from
//! `cupti_activity.h` (`CUpti_ActivityKind`, CUPTI 12.9 = 13.5 values).

use crate::error::{check, CuptiError, CUPTI_ERROR_QUEUE_EMPTY};
use crate::symbols::{BufferCompletedFn, BufferRequestedFn, CuptiSymbols};
use std::ffi::c_void;

use cudarc::cupti::sys::CUpti_ActivityKind as K;

/// `CUPTI_ACTIVITY_KIND_MEMCPY` (1). Every kind value comes from cudarc's bindgen of
/// `cupti_activity.h` and is checked against the 12.x / 13.x wheel headers
/// (`tests/header_layout.rs`).
pub const KIND_MEMCPY: u32 = K::CUPTI_ACTIVITY_KIND_MEMCPY as u32;
/// `CUPTI_ACTIVITY_KIND_MEMSET` (2).
pub const KIND_MEMSET: u32 = K::CUPTI_ACTIVITY_KIND_MEMSET as u32;
/// `CUPTI_ACTIVITY_KIND_KERNEL` (3; serialises kernels; we use CONCURRENT_KERNEL).
pub const KIND_KERNEL: u32 = K::CUPTI_ACTIVITY_KIND_KERNEL as u32;
/// `CUPTI_ACTIVITY_KIND_DRIVER` (4).
pub const KIND_DRIVER: u32 = K::CUPTI_ACTIVITY_KIND_DRIVER as u32;
/// `CUPTI_ACTIVITY_KIND_RUNTIME` (5).
pub const KIND_RUNTIME: u32 = K::CUPTI_ACTIVITY_KIND_RUNTIME as u32;
/// `CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL` (10).
pub const KIND_CONCURRENT_KERNEL: u32 = K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL as u32;
/// `CUPTI_ACTIVITY_KIND_OVERHEAD` (17).
pub const KIND_OVERHEAD: u32 = K::CUPTI_ACTIVITY_KIND_OVERHEAD as u32;
/// `CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION` (39).
pub const KIND_EXTERNAL_CORRELATION: u32 = K::CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION as u32;

/// `CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM` (`cupti_activity.h` `CUpti_ActivityThreadIdType`:
/// DEFAULT 0 = `pthread_self`, SYSTEM 1 = `gettid` on Linux).
pub const CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM: u32 = 1;

/// The kinds fine mode enables (DESIGN.md "Collection modes"): kernels, memcpy, memset,
/// driver + runtime API (external correlation needs both, CUPTI-NOTES §2), external
/// correlation, overhead.
pub const FINE_MODE_KINDS: [u32; 7] = [
    KIND_CONCURRENT_KERNEL,
    KIND_MEMCPY,
    KIND_MEMSET,
    KIND_DRIVER,
    KIND_RUNTIME,
    KIND_EXTERNAL_CORRELATION,
    KIND_OVERHEAD,
];

/// `cuptiActivityFlushAll` flag that returns incomplete records too
/// (`CUPTI_ACTIVITY_FLAG_FLUSH_FORCED` = 1). Still-running kernels come back with end = 0
/// and are never re-delivered (CUPTI-NOTES §1): use only for the final flush.
pub const FLUSH_FORCED: u32 = 1;

/// CUPTI API version from which declining a buffer request (NULL buffer) is safe
/// (CUPTI-NOTES §1; Kineto `kCuptiBufferRejectionMinVersion`).
pub const BUFFER_DECLINE_MIN_VERSION: u32 = 27;

/// A CUPTI subscriber handle (`CUpti_SubscriberHandle`).
#[derive(Debug)]
pub struct Subscriber(*mut c_void);
// SAFETY: a CUPTI subscriber handle is an opaque token CUPTI accepts from any thread
// (cupti_callbacks.h: cuptiSubscribe/cuptiUnsubscribe are thread-safe).
unsafe impl Send for Subscriber {}
// SAFETY: see Send; the handle is never dereferenced by us.
unsafe impl Sync for Subscriber {}

/// Typed access to the CUPTI calls gpuspan makes.
///
/// On a CUPTI 13.3+ that has the V2 calls, [`ActivityApi::subscribe_with`] asks for
/// multiple-subscriber mode ([`crate::multi_subscriber`]); while that subscription lasts,
/// every activity call (enable, buffer callbacks, external correlation, dropped count,
/// timestamp, record walk) goes through its `_v2` form with the subscriber's handle, so
/// another tool subscribed alongside keeps its own kinds, buffers and stacks. Otherwise the
/// V1 calls are used, as on CUPTI 12.x.
#[derive(Debug)]
pub struct ActivityApi {
    syms: CuptiSymbols,
    version: u32,
    layouts: crate::layouts::RecordLayouts,
    /// The subscriber handle while subscribed in multiple-subscriber mode, else NULL.
    session: std::sync::atomic::AtomicPtr<c_void>,
    /// Whether [`ActivityApi::subscribe_with`] may ask for multiple-subscriber mode.
    multi_wanted: std::sync::atomic::AtomicBool,
    /// CUPTI was told that gpuspan's buffers come zeroed
    /// ([`ATTR_ZEROED_OUT_ACTIVITY_BUFFER`]), so it does not zero them itself.
    buffers_promised_zeroed: std::sync::atomic::AtomicBool,
}

/// `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` (5, a `uint8_t`; `cupti_activity.h`,
/// CUPTI-NOTES §1): at 0, the default, CUPTI zeroes each buffer it is given on the
/// application thread that needed it (the header warns of stalls on the critical path); at
/// 1 the client promises zeroed buffers and CUPTI writes into them as they are.
pub const ATTR_ZEROED_OUT_ACTIVITY_BUFFER: u32 = 5;

/// The buffer callbacks gpuspan registers: the V1 pair (`cuptiActivityRegisterCallbacks`)
/// and the V2 pair used in multiple-subscriber mode (`cuptiActivityRegisterCallbacks_v2`),
/// which must do the same work.
#[derive(Debug, Clone, Copy)]
pub struct BufferCallbacks {
    /// `CUpti_BuffersCallbackRequestFunc`.
    pub requested: BufferRequestedFn,
    /// `CUpti_BuffersCallbackCompleteFunc`.
    pub completed: BufferCompletedFn,
    /// `CUpti_BuffersCallbackRequestFunc_v2`.
    pub requested_v2: crate::multi_subscriber::BufferRequestedV2Fn,
    /// `CUpti_BuffersCallbackCompleteFunc_v2`.
    pub completed_v2: crate::multi_subscriber::BufferCompletedV2Fn,
}

/// Name gpuspan subscribes under in multiple-subscriber mode: other tools see
/// "CUPTI for gpuspan" as the holder.
pub const SUBSCRIBER_NAME: &std::ffi::CStr = c"gpuspan";

unsafe extern "C" fn noop_callback(_: *mut c_void, _: u32, _: u32, _: *const c_void) {}

/// The `CUpti_CallbackFunc` signature: `(userdata, domain, cbid, const CUpti_CallbackData*)`
/// (`cupti_callbacks.h`; domain and cbid as u32 so unknown values are not UB).
pub type ApiCallbackFn = unsafe extern "C" fn(*mut c_void, u32, u32, *const c_void);

/// `CUPTI_CB_DOMAIN_DRIVER_API` (`cupti_callbacks.h`).
/// Driver API callback ids of the allocation calls (`cupti_driver_cbid.h`, 12.9 and 13.5
/// agree): cuMemAlloc, cuMemAlloc_v2, cuMemAllocPitch_v2, cuMemAllocHost_v2,
/// cuMemAllocManaged, cuMemAllocAsync, cuMemAllocFromPoolAsync.
pub const DRIVER_ALLOC_CBIDS: [u32; 7] = [29, 243, 244, 294, 371, 598, 611];

/// Runtime API callback ids of the allocation calls (`cupti_runtime_cbid.h`, 12.9 and 13.5
/// agree): cudaMalloc, cudaMallocPitch, cudaMallocHost, cudaMallocManaged, cudaMallocAsync,
/// cudaMallocFromPoolAsync.
pub const RUNTIME_ALLOC_CBIDS: [u32; 6] = [20, 21, 25, 206, 373, 391];

/// Driver API callback ids of the calls that unload GPU code (`cupti_driver_cbid.h`, the
/// same in 12.0, 12.9 and 13.5): cuModuleUnload (22), cuLibraryUnload (680, CUDA 12's library
/// management, which the CUDA runtime uses for its fatbinaries). Kernel records still in
/// CUPTI's buffers may name kernels of the code being unloaded, so the agent decodes them
/// at the ENTER callback of these, before the driver lets go of the module.
pub const DRIVER_UNLOAD_CBIDS: [u32; 2] = [22, 680];

/// Whether `(domain, cbid)` is a code unload ([`DRIVER_UNLOAD_CBIDS`]; the runtime has no
/// public unload call: `__cudaUnregisterFatBinary` reaches the driver's).
#[inline]
pub fn is_unload_callback(domain: u32, cbid: u32) -> bool {
    domain == DOMAIN_DRIVER_API && DRIVER_UNLOAD_CBIDS.contains(&cbid)
}

/// Driver API callback ids of the calls that begin a stream capture (`cupti_driver_cbid.h`):
/// cuStreamBeginCapture 495, _ptsz 496, _v2 539, _v2_ptsz 540, cuStreamBeginCaptureToGraph
/// 720, _ptsz 721 (12.3+), cuStreamBeginCaptureToCig 783, _ptsz 814 (13.x). The runtime's
/// `cudaStreamBeginCapture*` reach these. Ids a CUPTI does not know are skipped when enabling
/// ([`ActivityApi::enable_capture_callbacks`]).
pub const DRIVER_CAPTURE_BEGIN_CBIDS: [u32; 8] = [495, 496, 539, 540, 720, 721, 783, 814];

/// Driver API callback ids of the calls that end a stream capture: cuStreamEndCapture 497,
/// _ptsz 498, cuStreamEndCaptureToCig 815, _ptsz 816 (13.x).
pub const DRIVER_CAPTURE_END_CBIDS: [u32; 4] = [497, 498, 815, 816];

/// Whether `(domain, cbid)` begins a stream capture ([`DRIVER_CAPTURE_BEGIN_CBIDS`]).
#[inline]
pub fn is_capture_begin_callback(domain: u32, cbid: u32) -> bool {
    domain == DOMAIN_DRIVER_API && DRIVER_CAPTURE_BEGIN_CBIDS.contains(&cbid)
}

/// Whether `(domain, cbid)` ends a stream capture ([`DRIVER_CAPTURE_END_CBIDS`]).
#[inline]
pub fn is_capture_end_callback(domain: u32, cbid: u32) -> bool {
    domain == DOMAIN_DRIVER_API && DRIVER_CAPTURE_END_CBIDS.contains(&cbid)
}

/// Whether `(domain, cbid)` is a graph launch (`gpuspan_core::spans::DRIVER_GRAPH_LAUNCH_CBIDS`,
/// `RUNTIME_GRAPH_LAUNCH_CBIDS`).
#[inline]
pub fn is_graph_launch_callback(domain: u32, cbid: u32) -> bool {
    use gpuspan_core::spans::{DRIVER_GRAPH_LAUNCH_CBIDS, RUNTIME_GRAPH_LAUNCH_CBIDS};
    match domain {
        DOMAIN_DRIVER_API => DRIVER_GRAPH_LAUNCH_CBIDS.contains(&cbid),
        DOMAIN_RUNTIME_API => RUNTIME_GRAPH_LAUNCH_CBIDS.contains(&cbid),
        _ => false,
    }
}

/// Whether `(domain, cbid)` is an allocation call ([`DRIVER_ALLOC_CBIDS`],
/// [`RUNTIME_ALLOC_CBIDS`]).
#[inline]
pub fn is_alloc_callback(domain: u32, cbid: u32) -> bool {
    match domain {
        DOMAIN_DRIVER_API => DRIVER_ALLOC_CBIDS.contains(&cbid),
        DOMAIN_RUNTIME_API => RUNTIME_ALLOC_CBIDS.contains(&cbid),
        _ => false,
    }
}

pub const DOMAIN_DRIVER_API: u32 = 1;
/// `CUPTI_CB_DOMAIN_RUNTIME_API`.
pub const DOMAIN_RUNTIME_API: u32 = 2;
/// `CUPTI_API_ENTER` (`CUpti_ApiCallbackSite`).
pub const API_ENTER: u32 = 0;
/// `CUPTI_API_EXIT`.
pub const API_EXIT: u32 = 1;

/// Reads `callbackSite` and, on exit, the call's return value (`CUresult` /
/// `cudaError_t`, both C `int`) from a `CUpti_CallbackData` of the DRIVER or RUNTIME domain.
/// Offsets from cudarc's `CUpti_CallbackData` (the 12.9 header's layout, unchanged in 13.x).
///
/// # Safety
/// `data` is NULL or the `CUpti_CallbackData*` CUPTI passed to the subscriber callback for
/// an API domain, valid for the duration of the callback.
pub unsafe fn callback_site_and_result(data: *const c_void) -> Option<(u32, Option<i32>)> {
    use cudarc::cupti::sys::CUpti_CallbackData as D;
    if data.is_null() {
        return None;
    }
    let base = data as *const u8;
    // SAFETY: `data` points to a CUpti_CallbackData (contract); callbackSite is a 4-byte
    // enum at its offset, read as u32 so an unexpected value is not UB.
    let site = unsafe { std::ptr::read_unaligned(base.add(std::mem::offset_of!(D, callbackSite)) as *const u32) };
    if site != API_EXIT {
        return Some((site, None));
    }
    // SAFETY: as above; functionReturnValue is a pointer field, NULL or pointing at the
    // call's int-sized return value during the EXIT callback.
    let ret_ptr = unsafe { std::ptr::read_unaligned(base.add(std::mem::offset_of!(D, functionReturnValue)) as *const *const i32) };
    // SAFETY: non-NULL return-value pointer CUPTI provides for the EXIT site.
    let ret = (!ret_ptr.is_null()).then(|| unsafe { std::ptr::read_unaligned(ret_ptr) });
    Some((site, ret))
}

impl ActivityApi {
    /// Loads CUPTI and reads its API version (`cuptiGetVersion`: 28 for 12.9, 130500 for
    /// 13.5), which picks the record layouts the decoder reads ([`crate::layouts`]).
    /// Errors: library or symbol missing, `cuptiGetVersion` failing (CUPTI 13 without a
    /// driver returns 999 for everything), or a CUPTI older than 12.0
    /// ([`CuptiError::Unsupported`]).
    ///
    /// No CUPTI function is called when no CUDA driver library loads
    /// ([`CuptiError::NoDriver`]): CUPTI 13.2 overflows the stack in `cuptiGetVersion`
    /// without one, which a CPU-only PyTorch process (torch 2.15's wheel maps CUPTI 13.2)
    /// would die of.
    pub fn load() -> Result<ActivityApi, CuptiError> {
        let syms = CuptiSymbols::load()?;
        if !crate::events::driver_loads() {
            return Err(CuptiError::NoDriver { cupti: syms.loaded_from.to_string() });
        }
        let mut version = 0u32;
        // SAFETY: valid out-pointer to a u32, the documented signature.
        check("cuptiGetVersion", unsafe { (syms.get_version)(&mut version) })?;
        let layouts = crate::layouts::RecordLayouts::for_api_version(version)
            .map_err(|why| CuptiError::Unsupported(format!("{why} ({})", syms.loaded_from)))?;
        Ok(ActivityApi {
            syms,
            version,
            layouts,
            session: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            multi_wanted: std::sync::atomic::AtomicBool::new(true),
            buffers_promised_zeroed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether later subscriptions may ask for CUPTI 13.3+'s multiple-subscriber mode (on by
    /// default; the agent's `GPUSPAN_CUPTI_MULTI_SUBSCRIBER=0` turns it off).
    pub fn set_multi_subscriber(&self, on: bool) {
        self.multi_wanted.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this CUPTI offers multiple-subscriber mode: API version ≥
    /// [`crate::multi_subscriber::MULTI_SUBSCRIBER_MIN_VERSION`] and every V2 call present.
    pub fn supports_multi_subscriber(&self) -> bool {
        self.version >= crate::multi_subscriber::MULTI_SUBSCRIBER_MIN_VERSION && self.syms.v2.is_some()
    }

    /// Whether gpuspan is subscribed in multiple-subscriber mode now.
    pub fn in_multi_subscriber_mode(&self) -> bool {
        !self.session().is_null()
    }

    /// The multiple-subscriber handle, or NULL (V1 calls).
    #[inline]
    fn session(&self) -> *mut c_void {
        self.session.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The V2 table and handle while subscribed in multiple-subscriber mode.
    #[inline]
    fn v2(&self) -> Option<(&crate::symbols::V2Symbols, *mut c_void)> {
        let h = self.session();
        if h.is_null() {
            return None;
        }
        self.syms.v2.as_ref().map(|t| (t, h))
    }

    /// The record layouts of the loaded CUPTI, for [`crate::decode::decode_buffer`].
    pub fn layouts(&self) -> crate::layouts::RecordLayouts {
        self.layouts
    }

    /// The CUPTI API version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// True for a CUPTI 13.x API version (≥ 130000), whose records are longer (still
    /// prefix-compatible with 12.x, CUPTI-NOTES §2).
    pub fn is_cupti13(&self) -> bool {
        self.version >= 130_000
    }

    /// The library file that loaded.
    pub fn loaded_from(&self) -> &str {
        &self.syms.loaded_from
    }

    /// How to walk a completed buffer, for [`crate::decode::decode_buffer`]:
    /// `cuptiActivityGetNextRecord_v2` with our handle in multiple-subscriber mode, else
    /// `cuptiActivityGetNextRecord`.
    pub fn next_record(&self) -> crate::decode::NextRecord {
        match self.v2() {
            Some((t, h)) => crate::decode::NextRecord::V2 { v2: t.get_next_record, subscriber: h, v1: self.syms.get_next_record },
            None => crate::decode::NextRecord::V1(self.syms.get_next_record),
        }
    }

    /// `cuptiSubscribe` with a callback that does nothing and no domain enabled: it claims
    /// CUPTI's single subscriber slot, so a second tool (or a tool already there) is seen as
    /// code 39 instead of corrupting each other's state. Errors: 39 when another client holds
    /// CUPTI; 15 without a driver.
    pub fn subscribe(&self) -> Result<Subscriber, CuptiError> {
        self.subscribe_with(noop_callback)
    }

    /// Subscribes with `callback` as the subscriber's API callback (it runs on the
    /// application thread making each enabled call, ENTER and EXIT).
    ///
    /// On a CUPTI that [supports it](ActivityApi::supports_multi_subscriber) (unless turned
    /// off), first `cuptiSubscribe_v2` as [`SUBSCRIBER_NAME`] asking for multiple-subscriber
    /// mode; on success the activity calls go through their V2 forms until
    /// [`ActivityApi::unsubscribe`]. When that is refused (39: a tool holds CUPTI in single
    /// mode, or the driver is older than r610), `cuptiSubscribe`; if that is refused too, the
    /// error is [`CuptiError::HeldBy`] naming the holder when CUPTI named one.
    pub fn subscribe_with(&self, callback: ApiCallbackFn) -> Result<Subscriber, CuptiError> {
        let mut held_by = None;
        if self.multi_wanted.load(std::sync::atomic::Ordering::Relaxed) && self.supports_multi_subscriber() {
            match self.subscribe_multi(callback) {
                Ok(s) => return Ok(s),
                Err(e @ CuptiError::HeldBy { .. }) => held_by = Some(e),
                Err(e) if e.code() == Some(crate::error::CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED) => {}
                Err(e) => return Err(e),
            }
        }
        match self.subscribe_v1(callback) {
            Err(e) if e.code() == Some(crate::error::CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED) => Err(held_by.unwrap_or(e)),
            r => r,
        }
    }

    /// `cuptiSubscribe_v2(.., {subscriberName: "gpuspan", allowMultipleSubscribers: 1})`.
    fn subscribe_multi(&self, callback: ApiCallbackFn) -> Result<Subscriber, CuptiError> {
        use crate::multi_subscriber::{read_old_subscriber_name, SubscriberParams, OLD_SUBSCRIBER_NAME_MIN_LEN};
        let Some(t) = self.syms.v2.as_ref() else {
            return Err(CuptiError::MissingSymbol("cuptiSubscribe_v2"));
        };
        let mut holder = [0u8; OLD_SUBSCRIBER_NAME_MIN_LEN];
        let mut params = SubscriberParams::new(SUBSCRIBER_NAME, &mut holder, true);
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the callback is a 'static extern "C" fn with the
        // `CUpti_CallbackFunc` signature; `params` and the name buffer it points to outlive
        // the call, the buffer's size is what we say.
        let code = unsafe { (t.subscribe)(&mut h, Some(callback), std::ptr::null_mut(), &mut params) };
        if code == crate::error::CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED {
            if let Some(holder) = read_old_subscriber_name(&holder) {
                return Err(CuptiError::HeldBy { call: "cuptiSubscribe_v2", holder });
            }
        }
        check("cuptiSubscribe_v2", code)?;
        self.session.store(h, std::sync::atomic::Ordering::Release);
        Ok(Subscriber(h))
    }

    /// `cuptiSubscribe` (single-subscriber mode).
    fn subscribe_v1(&self, callback: ApiCallbackFn) -> Result<Subscriber, CuptiError> {
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the callback is a 'static extern "C" fn with the
        // `CUpti_CallbackFunc` signature; userdata NULL.
        let code = unsafe { (self.syms.subscribe)(&mut h, Some(callback), std::ptr::null_mut()) };
        check("cuptiSubscribe", code)?;
        Ok(Subscriber(h))
    }

    /// Enables the subscriber's API callbacks for the calls that make one GPU activity
    /// record each (`gpuspan_core::spans::DRIVER_GPU_WORK_CBIDS` in the DRIVER domain,
    /// `RUNTIME_GPU_WORK_CBIDS` in the RUNTIME domain), so the agent can count launches per
    /// scope. On an error the callbacks enabled so far are disabled again.
    /// The graph launches (`DRIVER_GRAPH_LAUNCH_CBIDS`, `RUNTIME_GRAPH_LAUNCH_CBIDS`) are
    /// enabled too: a scope with one inside has an unknown record count.
    pub fn enable_launch_callbacks(&self, s: &Subscriber) -> Result<(), CuptiError> {
        use gpuspan_core::spans::{
            DRIVER_GPU_WORK_CBIDS, DRIVER_GRAPH_LAUNCH_CBIDS, RUNTIME_GPU_WORK_CBIDS, RUNTIME_GPU_WORK_CBIDS_13,
            RUNTIME_GRAPH_LAUNCH_CBIDS,
        };
        let mut driver = DRIVER_GPU_WORK_CBIDS.to_vec();
        driver.extend(DRIVER_GRAPH_LAUNCH_CBIDS);
        let mut runtime = RUNTIME_GPU_WORK_CBIDS.to_vec();
        runtime.extend(RUNTIME_GRAPH_LAUNCH_CBIDS);
        if self.is_cupti13() {
            runtime.extend(RUNTIME_GPU_WORK_CBIDS_13);
        }
        self.enable_callbacks(s, &driver, &runtime)
    }

    /// Also enables the API callbacks of the calls that unload GPU code
    /// ([`DRIVER_UNLOAD_CBIDS`]), so names of kernels still in CUPTI's buffers can be read
    /// before their module goes. All or nothing.
    pub fn enable_unload_callbacks(&self, s: &Subscriber) -> Result<(), CuptiError> {
        self.enable_callbacks(s, &DRIVER_UNLOAD_CBIDS, &[])
    }

    /// Also enables the API callbacks of the calls that begin and end a stream capture
    /// ([`DRIVER_CAPTURE_BEGIN_CBIDS`], [`DRIVER_CAPTURE_END_CBIDS`]), so launches into a
    /// capture (graph nodes, no GPU record now) are told from launches that run. Each id is
    /// enabled on its own and ids this CUPTI does not know are skipped; an error only when
    /// not one begin and one end id could be enabled (then none stays enabled).
    pub fn enable_capture_callbacks(&self, s: &Subscriber) -> Result<(), CuptiError> {
        let mut begin = 0;
        let mut end = 0;
        let mut done = Vec::new();
        let mut last = None;
        for (cbid, is_begin) in DRIVER_CAPTURE_BEGIN_CBIDS.iter().map(|c| (*c, true)).chain(DRIVER_CAPTURE_END_CBIDS.iter().map(|c| (*c, false))) {
            // SAFETY: `s` is a live subscriber handle from `subscribe_with`.
            let code = unsafe { (self.syms.enable_callback)(1, s.0, DOMAIN_DRIVER_API, cbid) };
            match check("cuptiEnableCallback", code) {
                Ok(()) => {
                    done.push(cbid);
                    if is_begin {
                        begin += 1;
                    } else {
                        end += 1;
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        if begin > 0 && end > 0 {
            return Ok(());
        }
        for c in done {
            // SAFETY: as above; disabling what we enabled.
            unsafe { (self.syms.enable_callback)(0, s.0, DOMAIN_DRIVER_API, c) };
        }
        Err(last.unwrap_or_else(|| CuptiError::Unsupported("no stream-capture callback id".into())))
    }

    /// Also enables the API callbacks of the allocation calls ([`DRIVER_ALLOC_CBIDS`],
    /// [`RUNTIME_ALLOC_CBIDS`]), so failed allocations (OOMs) reach the subscriber callback.
    /// All or nothing, like [`ActivityApi::enable_launch_callbacks`].
    pub fn enable_alloc_callbacks(&self, s: &Subscriber) -> Result<(), CuptiError> {
        self.enable_callbacks(s, &DRIVER_ALLOC_CBIDS, &RUNTIME_ALLOC_CBIDS)
    }

    /// `cuptiEnableCallback(1, …)` for each driver and runtime callback id; on a failure the
    /// ones enabled so far are disabled again.
    fn enable_callbacks(&self, s: &Subscriber, driver: &[u32], runtime: &[u32]) -> Result<(), CuptiError> {
        let all = driver
            .iter()
            .map(|c| (DOMAIN_DRIVER_API, *c))
            .chain(runtime.iter().map(|c| (DOMAIN_RUNTIME_API, *c)));
        let mut done = Vec::new();
        for (domain, cbid) in all {
            // SAFETY: `s` is a live subscriber handle from `subscribe_with`.
            let code = unsafe { (self.syms.enable_callback)(1, s.0, domain, cbid) };
            if let Err(e) = check("cuptiEnableCallback", code) {
                for (d, c) in done {
                    // SAFETY: as above; disabling what we enabled.
                    unsafe { (self.syms.enable_callback)(0, s.0, d, c) };
                }
                return Err(e);
            }
            done.push((domain, cbid));
        }
        Ok(())
    }

    /// `cuptiUnsubscribe`: releases the subscriber slot for other tools (and leaves
    /// multiple-subscriber mode: later activity calls are V1 again).
    pub fn unsubscribe(&self, s: Subscriber) -> Result<(), CuptiError> {
        // SAFETY: `s` came from `subscribe` and is consumed, so it is released once.
        let code = unsafe { (self.syms.unsubscribe)(s.0) };
        let _ = self.session.compare_exchange(
            s.0,
            std::ptr::null_mut(),
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Relaxed,
        );
        check("cuptiUnsubscribe", code)
    }

    /// `cuptiActivityRegisterCallbacks`, or `cuptiActivityRegisterCallbacks_v2` with the V2
    /// pair in multiple-subscriber mode. The V1 registration is recorded in
    /// [`crate::foreign_client::FOREIGN`]: from then on another V1 client's registration
    /// through `libgpuspan.so`'s interposed symbol is remembered, not passed on.
    pub fn register_callbacks(&self, cbs: BufferCallbacks) -> Result<(), CuptiError> {
        if let Some((t, h)) = self.v2() {
            // SAFETY: live subscriber handle; both are 'static extern "C" fns with the V2
            // callback signatures.
            check("cuptiActivityRegisterCallbacks_v2", unsafe { (t.register_callbacks)(h, cbs.requested_v2, cbs.completed_v2) })?;
            // This subscriber's buffers are all gpuspan's pool's, lent zeroed: say so for this
            // subscriber alone (`cuptiActivitySetAttribute_v2`), so CUPTI no longer zeroes each
            // on the application thread that needs one; another subscriber's buffers, and
            // the process-wide V1 value, are left as they are.
            self.promise_zeroed_buffers_v2(t, h);
            return Ok(());
        }
        // SAFETY: both are 'static extern "C" fns with the CUPTI callback signatures.
        let code = crate::foreign_client::FOREIGN
            .agent_register(|| unsafe { (self.syms.register_callbacks)(cbs.requested, cbs.completed) });
        check("cuptiActivityRegisterCallbacks", code)?;
        // Every buffer CUPTI fills now comes from gpuspan's pool, zeroed (`BufferPool`): say
        // so, and CUPTI no longer zeroes 4 MiB on an application thread per buffer. Only
        // when `libgpuspan.so`'s interposed `cuptiActivityRegisterCallbacks` stands in front
        // of CUPTI's: the attribute is process-wide, and without the interposer a later
        // client (Kineto, whose buffers are not zeroed) would replace gpuspan's callbacks
        // and get records over stale bytes.
        if crate::foreign_client::interposed() {
            self.promise_zeroed_buffers();
        }
        Ok(())
    }

    /// Sets [`ATTR_ZEROED_OUT_ACTIVITY_BUFFER`] to 1; returns whether CUPTI took it (a CUPTI
    /// without `cuptiActivitySetAttribute`, or one that refuses the attribute, zeroes buffers
    /// itself as before).
    pub fn promise_zeroed_buffers(&self) -> bool {
        let Some(set) = self.syms.activity_set_attribute else { return false };
        // SAFETY: CUPTI's prototype; the pointers are `promise_zeroed_with`'s live locals.
        self.promise_zeroed_with(|size, value| unsafe { set(ATTR_ZEROED_OUT_ACTIVITY_BUFFER, size, value) })
    }

    /// [`Self::promise_zeroed_buffers`] for multiple-subscriber mode: the attribute for
    /// subscriber `h` alone; returns whether CUPTI took it.
    fn promise_zeroed_buffers_v2(&self, t: &crate::symbols::V2Symbols, h: *mut c_void) -> bool {
        let Some(set) = t.activity_set_attribute else { return false };
        // SAFETY: CUPTI's prototype; `h` is the live subscriber handle; the pointers are
        // `promise_zeroed_with`'s live locals.
        self.promise_zeroed_with(|size, value| unsafe { set(h, ATTR_ZEROED_OUT_ACTIVITY_BUFFER, size, value) })
    }

    /// Writes the attribute's value 1 (a `uint8_t`) with `set(size, value)`, pointers to live
    /// locals read during the call only; remembers a success.
    fn promise_zeroed_with(&self, set: impl FnOnce(*mut usize, *mut c_void) -> u32) -> bool {
        let mut value: u8 = 1;
        let mut size = std::mem::size_of::<u8>();
        let ok = set(&mut size, (&mut value as *mut u8).cast()) == 0;
        if ok {
            self.buffers_promised_zeroed.store(true, std::sync::atomic::Ordering::Release);
        }
        ok
    }

    /// Whether CUPTI was told that gpuspan's buffers come zeroed
    /// ([`ActivityApi::promise_zeroed_buffers`]).
    pub fn buffers_promised_zeroed(&self) -> bool {
        self.buffers_promised_zeroed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `cuptiActivityEnable(kind)` (`_v2` with our handle and no config in
    /// multiple-subscriber mode).
    pub fn enable(&self, kind: u32) -> Result<(), CuptiError> {
        if let Some((t, h)) = self.v2() {
            // SAFETY: live subscriber handle, plain kind, NULL config (allowed, A13).
            return check("cuptiActivityEnable_v2", unsafe { (t.activity_enable)(h, kind, std::ptr::null_mut()) });
        }
        // SAFETY: plain integer argument.
        check("cuptiActivityEnable", unsafe { (self.syms.activity_enable)(kind) })?;
        crate::foreign_client::FOREIGN.agent_enabled(kind);
        Ok(())
    }

    /// `cuptiActivityDisable(kind)` (`_v2` in multiple-subscriber mode). In V1, a kind that
    /// another V1 client enabled through the interposed symbol stays enabled for it
    /// ([`crate::foreign_client`]).
    pub fn disable(&self, kind: u32) -> Result<(), CuptiError> {
        if let Some((t, h)) = self.v2() {
            // SAFETY: as in `enable`.
            return check("cuptiActivityDisable_v2", unsafe { (t.activity_disable)(h, kind, std::ptr::null_mut()) });
        }
        // A kind another V1 client enabled too stays enabled (`crate::foreign_client`).
        // SAFETY: plain integer argument.
        check("cuptiActivityDisable", crate::foreign_client::FOREIGN.agent_disable(kind, || unsafe { (self.syms.activity_disable)(kind) }))
    }

    /// Enables every kind in [`FINE_MODE_KINDS`]; on the first failure disables what was
    /// enabled and returns the error.
    ///
    /// First, outside multiple-subscriber mode, asks for system thread ids in API records
    /// (`cuptiSetThreadIdType(CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM)`, `cupti_activity.h`): by
    /// default `CUpti_ActivityAPI::threadId` is `pthread_self()` truncated to 32 bits, while
    /// the agent's scopes, NVTX ranges and every other CPU row of a capture name threads by
    /// `gettid`, as Kineto's CPU ops and Perfetto's thread tracks do; without it a thread's
    /// launches and its ranges land on two rows. The setting is process-wide, so it is left
    /// alone when CUPTI is shared with other subscribers (13.3+ V2 mode); a CUPTI without
    /// the function, or one that refuses, keeps the default (nothing else depends on it).
    pub fn enable_fine_kinds(&self) -> Result<(), CuptiError> {
        if self.v2().is_none() {
            if let Some(f) = self.syms.set_thread_id_type {
                // SAFETY: plain integer argument (CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM = 1).
                let _ = unsafe { f(CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM) };
            }
        }
        for (i, k) in FINE_MODE_KINDS.iter().enumerate() {
            if let Err(e) = self.enable(*k) {
                for k2 in &FINE_MODE_KINDS[..i] {
                    let _ = self.disable(*k2);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Disables every kind in [`FINE_MODE_KINDS`] (errors ignored: best effort at shutdown).
    pub fn disable_fine_kinds(&self) {
        for k in FINE_MODE_KINDS {
            let _ = self.disable(k);
        }
    }

    /// `cuptiActivityFlushAll(flags)`: blocks until completed buffers are handed to the
    /// completion callback. Never call it from a buffer callback, nor while holding a lock
    /// that a buffer callback takes (CUPTI-NOTES §1, ABBA deadlock). It has no V2 form: in
    /// multiple-subscriber mode it flushes every subscriber's buffers (A13).
    pub fn flush_all(&self, flags: u32) -> Result<(), CuptiError> {
        // SAFETY: plain integer argument.
        check("cuptiActivityFlushAll", unsafe { (self.syms.flush_all)(flags) })
    }

    /// `cuptiActivityGetNumDroppedRecords(NULL, 0, &n)`: records CUPTI dropped for lack of
    /// buffer space since the last call (resets on read).
    pub fn dropped_records(&self) -> Result<usize, CuptiError> {
        let mut n = 0usize;
        if let Some((t, h)) = self.v2() {
            // SAFETY: live subscriber handle; NULL context; valid out-pointer.
            check("cuptiActivityGetNumDroppedRecords_v2", unsafe {
                (t.dropped_records)(h, std::ptr::null_mut(), 0, &mut n)
            })?;
            return Ok(n);
        }
        // SAFETY: NULL context is allowed (A12); valid out-pointer.
        check("cuptiActivityGetNumDroppedRecords", unsafe {
            (self.syms.dropped_records)(std::ptr::null_mut(), 0, &mut n)
        })?;
        Ok(n)
    }

    /// `cuptiActivityPushExternalCorrelationId(kind, id)` on the calling thread's stack.
    /// Hot path: one indirect call, no allocation. Returns the raw code.
    #[inline]
    pub fn push_external_correlation(&self, kind: u32, id: u64) -> u32 {
        if let Some((t, h)) = self.v2() {
            // SAFETY: live subscriber handle, plain integers.
            return unsafe { (t.push_external)(h, kind, id) };
        }
        // SAFETY: plain integer arguments.
        unsafe { (self.syms.push_external)(kind, id) }
    }

    /// `cuptiActivityPopExternalCorrelationId(kind, &last)`. `Ok(None)` on an empty stack
    /// (code 18). Hot path.
    #[inline]
    pub fn pop_external_correlation(&self, kind: u32) -> Result<Option<u64>, CuptiError> {
        let mut last = 0u64;
        let code = match self.v2() {
            // SAFETY: live subscriber handle; valid out-pointer.
            Some((t, h)) => unsafe { (t.pop_external)(h, kind, &mut last) },
            // SAFETY: valid out-pointer.
            None => unsafe { (self.syms.pop_external)(kind, &mut last) },
        };
        match code {
            0 => Ok(Some(last)),
            CUPTI_ERROR_QUEUE_EMPTY => Ok(None),
            c => Err(CuptiError::Call { call: "cuptiActivityPopExternalCorrelationId", code: c }),
        }
    }

    /// `cuptiGetTimestamp`: ns in the activity records' time domain (CLOCK_REALTIME on
    /// Linux). Returns 0 if the call fails. Hot path.
    #[inline]
    pub fn timestamp_ns(&self) -> u64 {
        let mut t = 0u64;
        let code = match self.v2() {
            // SAFETY: live subscriber handle; valid out-pointer.
            Some((v2, h)) => unsafe { (v2.get_timestamp)(h, &mut t) },
            // SAFETY: valid out-pointer.
            None => unsafe { (self.syms.get_timestamp)(&mut t) },
        };
        if code == 0 {
            t
        } else {
            0
        }
    }
}

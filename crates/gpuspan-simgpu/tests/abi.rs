//! Drives the built cdylib through its C ABI (dlopen via libloading), as the agent and
//! the replay worker will. The sim is process-global: tests serialize on `LOCK` and
//! start with `gpuspanSimReset`.

#[macro_use]
mod common;
use common::*;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

static LOCK: Mutex<()> = Mutex::new(());

// --- buffer callbacks -------------------------------------------------------------

static BUF_SIZE: AtomicUsize = AtomicUsize::new(1 << 16);
static DECLINE: AtomicBool = AtomicBool::new(false);
static RECORDS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
static DELIVERIES: Mutex<Vec<(std::thread::ThreadId, usize)>> = Mutex::new(Vec::new());

extern "C" fn request(buf: *mut *mut u8, size: *mut usize, max: *mut usize) {
    let n = BUF_SIZE.load(Ordering::SeqCst);
    // SAFETY: out-pointers from the sim; layout is non-zero-sized.
    unsafe {
        *buf = if DECLINE.load(Ordering::SeqCst) {
            std::ptr::null_mut()
        } else {
            alloc_zeroed(Layout::from_size_align(n, 8).unwrap())
        };
        *size = n;
        *max = 0;
    }
}

extern "C" fn complete(_ctx: *mut c_void, _stream: u32, buf: *mut u8, size: usize, valid: usize) {
    let next: unsafe extern "C" fn(*mut u8, usize, *mut *mut c_void) -> u32 =
        sym("cuptiActivityGetNextRecord");
    let mut rec: *mut c_void = std::ptr::null_mut();
    let mut starts = Vec::new();
    // SAFETY: buffer from our request callback, handed back by the sim.
    let last = loop {
        let r = unsafe { next(buf, valid, &mut rec) };
        if r != 0 {
            break r;
        }
        starts.push(rec as usize);
    };
    assert_eq!(last, 12, "walk ends with MAX_LIMIT_REACHED");
    let end = buf as usize + valid;
    let mut out = RECORDS.lock().unwrap();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(end);
        // SAFETY: [s, e) lies inside the valid part of the buffer.
        out.push(unsafe { std::slice::from_raw_parts(s as *const u8, e - s) }.to_vec());
    }
    DELIVERIES
        .lock()
        .unwrap()
        .push((std::thread::current().id(), starts.len()));
    // SAFETY: allocated in `request` with this size and alignment.
    unsafe { dealloc(buf, Layout::from_size_align(size, 8).unwrap()) };
}

fn u32_at(r: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(r[off..off + 4].try_into().unwrap())
}
fn u64_at(r: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(r[off..off + 8].try_into().unwrap())
}

fn take_records() -> Vec<Vec<u8>> {
    std::mem::take(&mut *RECORDS.lock().unwrap())
}

/// Locks, sets the sim's environment, resets the sim and the callback state.
fn fresh(env: &[(&str, &str)]) -> MutexGuard<'static, ()> {
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for v in [
        "GPUSPAN_SIM_FAULT",
        "GPUSPAN_SIM_DROP_EVERY",
        "GPUSPAN_SIM_CUPTI_VERSION",
        "GPUSPAN_SIM_CLOCK",
    ] {
        std::env::remove_var(v);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    c!(gpuspanSimReset() as fn() -> ());
    BUF_SIZE.store(1 << 16, Ordering::SeqCst);
    DECLINE.store(false, Ordering::SeqCst);
    take_records();
    DELIVERIES.lock().unwrap().clear();
    g
}

fn register() {
    type Req = extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Done = extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);
    assert_eq!(
        c!(cuptiActivityRegisterCallbacks(request, complete) as fn(Req, Done) -> u32),
        0
    );
}

fn enable(kinds: &[u32]) {
    for &k in kinds {
        assert_eq!(
            c!(cuptiActivityEnable(k) as fn(u32) -> u32),
            0,
            "enable {k}"
        );
    }
}

fn flush(flag: u32) {
    assert_eq!(c!(cuptiActivityFlushAll(flag) as fn(u32) -> u32), 0);
}

/// cuInit + primary context + module; returns (function "spin_kernel", stream).
fn setup(stream_flags: u32) -> (*mut c_void, *mut c_void) {
    assert_eq!(c!(cuInit(0) as fn(u32) -> u32), 0);
    let mut dev = -1i32;
    assert_eq!(c!(cuDeviceGet(&mut dev, 0) as fn(*mut i32, i32) -> u32), 0);
    let mut ctx: *mut c_void = std::ptr::null_mut();
    assert_eq!(
        c!(cuDevicePrimaryCtxRetain(&mut ctx, dev) as fn(*mut *mut c_void, i32) -> u32),
        0
    );
    assert_eq!(c!(cuCtxSetCurrent(ctx) as fn(*mut c_void) -> u32), 0);
    let mut m: *mut c_void = std::ptr::null_mut();
    assert_eq!(
        c!(cuModuleLoadData(&mut m, c"ptx".as_ptr() as *const c_void)
            as fn(*mut *mut c_void, *const c_void) -> u32),
        0
    );
    let mut f: *mut c_void = std::ptr::null_mut();
    assert_eq!(
        c!(cuModuleGetFunction(&mut f, m, c"spin_kernel".as_ptr())
            as fn(*mut *mut c_void, *mut c_void, *const c_char) -> u32),
        0
    );
    let mut s: *mut c_void = std::ptr::null_mut();
    assert_eq!(
        c!(cuStreamCreate(&mut s, stream_flags) as fn(*mut *mut c_void, u32) -> u32),
        0
    );
    (f, s)
}

/// Launches `f` on `s` for `ns` nanoseconds (the sim's kernelParams[0] convention).
fn launch(f: *mut c_void, s: *mut c_void, ns: u64) -> u32 {
    let mut dur = ns;
    let mut params = [&mut dur as *mut u64 as *mut c_void];
    c!(cuLaunchKernel(
        f,
        4,
        1,
        1,
        128,
        1,
        1,
        256,
        s,
        params.as_mut_ptr(),
        std::ptr::null_mut()
    )
        as fn(
            *mut c_void,
            u32,
            u32,
            u32,
            u32,
            u32,
            u32,
            u32,
            *mut c_void,
            *mut *mut c_void,
            *mut *mut c_void,
        ) -> u32)
}

fn sync(s: *mut c_void) {
    assert_eq!(c!(cuStreamSynchronize(s) as fn(*mut c_void) -> u32), 0);
}

// `CUpti_ActivityKind` values of `cupti_activity.h` (12.0 … 13.5 agree).
const KERNEL: u32 = 10;
const DRIVER: u32 = 4;
const MEMCPY: u32 = 1;
const MEMSET: u32 = 2;
const EXTCORR: u32 = 39;
const OVERHEAD: u32 = 17;

#[test]
fn launches_records_correlation_and_delivery() {
    let _g = fresh(&[]);
    register();
    enable(&[KERNEL, DRIVER, MEMCPY, MEMSET, EXTCORR, OVERHEAD]);
    let (f, s) = setup(0);
    assert_eq!(launch(f, s, 50_000), 0);
    assert_eq!(
        c!(cuptiActivityPushExternalCorrelationId(5, 777) as fn(u32, u64) -> u32),
        0
    );
    assert_eq!(launch(f, s, 20_000), 0);
    let mut last = 0u64;
    assert_eq!(
        c!(cuptiActivityPopExternalCorrelationId(5, &mut last) as fn(u32, *mut u64) -> u32),
        0
    );
    assert_eq!(last, 777);
    assert_eq!(
        c!(cuptiActivityPopExternalCorrelationId(5, &mut last) as fn(u32, *mut u64) -> u32),
        18,
        "QUEUE_EMPTY"
    );
    assert_eq!(
        c!(
            cuMemcpyHtoDAsync_v2(0x7f40_0000_0000, std::ptr::null(), 1 << 20, s)
                as fn(u64, *const c_void, usize, *mut c_void) -> u32
        ),
        0
    );
    assert_eq!(
        c!(cuMemsetD8Async(0x7f40_0000_0000, 0, 4096, s) as fn(u64, u8, usize, *mut c_void) -> u32),
        0
    );
    sync(s);
    flush(0);

    let recs = take_records();
    let deliveries = DELIVERIES.lock().unwrap().clone();
    assert!(!deliveries.is_empty());
    assert!(
        deliveries
            .iter()
            .all(|(t, _)| *t != std::thread::current().id()),
        "delivered from the sim's thread"
    );

    let kernels: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == KERNEL).collect();
    assert_eq!(kernels.len(), 2);
    assert!(kernels.iter().all(|r| r.len() == 208), "Kernel9 stride");
    let (a, b) = (kernels[0], kernels[1]);
    assert_eq!(
        u64_at(a, 24) - u64_at(a, 16),
        50_000,
        "duration from kernelParams[0]"
    );
    assert_eq!(u64_at(b, 16), u64_at(a, 24), "second starts at first's end");
    assert_eq!(u32_at(a, 48), u32_at(b, 48), "same streamId");
    assert_eq!(u64_at(a, 104), u64_at(b, 104), "one interned name pointer");
    // SAFETY: the name pointer lives as long as the process.
    let name = unsafe { CStr::from_ptr(u64_at(a, 104) as usize as *const c_char) };
    assert_eq!(name.to_str().unwrap(), "spin_kernel");
    assert_eq!(u32_at(a, 64), 128, "blockX");
    assert_eq!(u32_at(a, 80), 256, "dynamic shared memory");

    let apis: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == DRIVER).collect();
    assert!(apis.iter().all(|r| r.len() == 40));
    let launch_apis: Vec<&&Vec<u8>> = apis.iter().filter(|r| u32_at(r, 4) == 307).collect();
    assert_eq!(launch_apis.len(), 2);
    for (k, api) in kernels.iter().zip(&launch_apis) {
        assert_ne!(u32_at(k, 92), 0);
        assert_eq!(
            u32_at(k, 92),
            u32_at(api, 32),
            "kernel and API record share the correlation id"
        );
    }
    let corr_b = u32_at(b, 92);
    let ext_pos = recs
        .iter()
        .position(|r| u32_at(r, 0) == EXTCORR)
        .expect("ext corr record");
    let ext = &recs[ext_pos];
    assert_eq!(ext.len(), 24);
    assert_eq!(
        (u32_at(ext, 4), u64_at(ext, 8), u32_at(ext, 16)),
        (5, 777, corr_b)
    );
    let api_pos = recs
        .iter()
        .position(|r| u32_at(r, 0) == DRIVER && u32_at(r, 32) == corr_b)
        .unwrap();
    assert!(
        ext_pos < api_pos,
        "external correlation before its API record"
    );
    assert_eq!(
        recs.iter().filter(|r| u32_at(r, 0) == EXTCORR).count(),
        1,
        "only the call made while pushed"
    );

    let memcpy: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == MEMCPY).collect();
    assert_eq!(memcpy.len(), 1);
    assert_eq!(memcpy[0].len(), 96);
    assert_eq!(u64_at(memcpy[0], 8), 1 << 20, "bytes");
    assert!(
        u64_at(memcpy[0], 16) >= u64_at(b, 24),
        "copy after the kernels on its stream"
    );
    let memset: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == MEMSET).collect();
    assert_eq!(memset.len(), 1);
    assert_eq!(memset[0].len(), 88);

    let overhead: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == OVERHEAD).collect();
    assert!(!overhead.is_empty(), "buffer request overhead record");
    assert!(overhead
        .iter()
        .all(|r| r.len() == 56 && u32_at(r, 4) == 0x1_0000));

    // API record timing comes from the same host clock as cuptiGetTimestamp.
    let mut ts = 0u64;
    assert_eq!(c!(cuptiGetTimestamp(&mut ts) as fn(*mut u64) -> u32), 0);
    assert!(apis
        .iter()
        .all(|r| u64_at(r, 16) <= ts && u64_at(r, 8) <= u64_at(r, 16)));
    assert!(
        ts >= u64_at(memset[0], 24),
        "sync moved the host clock past the GPU end"
    );
}

#[test]
fn flush_semantics_and_worker_delivery() {
    let _g = fresh(&[]);
    register();
    enable(&[KERNEL]);
    let (f, s) = setup(0);
    assert_eq!(launch(f, s, 1_000_000_000), 0);
    flush(0);
    assert!(
        take_records().is_empty(),
        "running kernel's buffer is not complete"
    );
    flush(1);
    let recs = take_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        u64_at(&recs[0], 24),
        0,
        "forced flush: end = 0 while running"
    );
    assert_eq!(
        u32_at(&recs[0], 92),
        0,
        "no correlation ids without DRIVER/RUNTIME"
    );
    sync(s);
    flush(1);
    assert!(take_records().is_empty(), "never re-delivered");

    // A full buffer is delivered by the worker without any flush.
    BUF_SIZE.store(208 * 2, Ordering::SeqCst);
    DELIVERIES.lock().unwrap().clear();
    for _ in 0..3 {
        assert_eq!(launch(f, s, 1_000), 0);
    }
    sync(s);
    let t0 = std::time::Instant::now();
    while DELIVERIES.lock().unwrap().is_empty() && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        take_records().len(),
        2,
        "the full buffer with two records came back on its own"
    );
    flush(0);
    assert_eq!(
        take_records().len(),
        1,
        "flush(0) returns the non-full complete buffer"
    );
}

#[test]
fn dropped_records_count_and_reset_on_read() {
    let _g = fresh(&[
        ("GPUSPAN_SIM_FAULT", "drop_records"),
        ("GPUSPAN_SIM_DROP_EVERY", "3"),
    ]);
    register();
    enable(&[DRIVER]);
    assert_eq!(c!(cuInit(0) as fn(u32) -> u32), 0);
    let mut n = 0i32;
    for _ in 0..8 {
        assert_eq!(c!(cuDeviceGetCount(&mut n) as fn(*mut i32) -> u32), 0);
    }
    assert_eq!(n, 1);
    flush(0);
    assert_eq!(take_records().len(), 6, "9 API records, every 3rd dropped");
    let mut dropped = 99usize;
    assert_eq!(
        c!(
            cuptiActivityGetNumDroppedRecords(std::ptr::null_mut(), 0, &mut dropped)
                as fn(*mut c_void, u32, *mut usize) -> u32
        ),
        0
    );
    assert_eq!(dropped, 3);
    assert_eq!(
        c!(
            cuptiActivityGetNumDroppedRecords(std::ptr::null_mut(), 0, &mut dropped)
                as fn(*mut c_void, u32, *mut usize) -> u32
        ),
        0
    );
    assert_eq!(dropped, 0, "reset on read");

    drop(_g);
    let _g = fresh(&[]);
    register();
    enable(&[DRIVER]);
    DECLINE.store(true, Ordering::SeqCst);
    assert_eq!(c!(cuInit(0) as fn(u32) -> u32), 0);
    assert_eq!(c!(cuDeviceGetCount(&mut n) as fn(*mut i32) -> u32), 0);
    assert_eq!(
        c!(
            cuptiActivityGetNumDroppedRecords(std::ptr::null_mut(), 0, &mut dropped)
                as fn(*mut c_void, u32, *mut usize) -> u32
        ),
        0
    );
    assert_eq!(dropped, 2, "declined buffers drop the records");
}

#[test]
fn events_not_ready_then_success() {
    let _g = fresh(&[]);
    let (f, s) = setup(0);
    let mk = |flags: u32| {
        let mut e: *mut c_void = std::ptr::null_mut();
        assert_eq!(
            c!(cuEventCreate(&mut e, flags) as fn(*mut *mut c_void, u32) -> u32),
            0
        );
        e
    };
    let (e1, e2, nt, never) = (mk(0), mk(0), mk(2), mk(0));
    let query = |e| c!(cuEventQuery(e) as fn(*mut c_void) -> u32);
    let elapsed = |a, b| {
        let mut ms = -1f32;
        let r =
            c!(cuEventElapsedTime(&mut ms, a, b) as fn(*mut f32, *mut c_void, *mut c_void) -> u32);
        (r, ms)
    };
    assert_eq!(query(never), 0, "never recorded → SUCCESS");
    assert_eq!(elapsed(e1, e2).0, 400, "unrecorded → INVALID_HANDLE");
    assert_eq!(
        c!(cuEventRecord(e1, s) as fn(*mut c_void, *mut c_void) -> u32),
        0
    );
    assert_eq!(launch(f, s, 1_000_000), 0);
    assert_eq!(
        c!(cuEventRecord(e2, s) as fn(*mut c_void, *mut c_void) -> u32),
        0
    );
    assert_eq!(
        c!(cuEventRecord(nt, s) as fn(*mut c_void, *mut c_void) -> u32),
        0
    );
    assert_eq!(query(e2), 600, "NOT_READY while the kernel runs");
    assert_eq!(elapsed(e1, e2).0, 600);
    assert_eq!(c!(cuEventSynchronize(e2) as fn(*mut c_void) -> u32), 0);
    assert_eq!(query(e2), 0);
    let (r, ms) = elapsed(e1, e2);
    assert_eq!(r, 0);
    assert!((1.0..1.01).contains(&ms), "elapsed {ms} ms");
    assert_eq!(elapsed(e1, nt).0, 400, "DISABLE_TIMING → INVALID_HANDLE");
    assert_eq!(c!(cuEventDestroy_v2(e1) as fn(*mut c_void) -> u32), 0);
    assert_eq!(query(e1), 400);
}

/// (callbackSite, cbid, correlationId, symbolName) per subscriber callback.
type Seen = (u32, u32, u32, Option<String>);
static CALLBACKS: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

extern "C" fn on_api(_ud: *mut c_void, domain: u32, cbid: u32, data: *const c_void) {
    assert_eq!(domain, 1);
    let d = data as *const u8;
    // SAFETY: `data` is a CUpti_CallbackData (site @0, symbolName @32, correlationId @64).
    let (site, sym, corr) = unsafe {
        let sym = *(d.add(32) as *const *const c_char);
        (
            *(d as *const u32),
            (!sym.is_null()).then(|| CStr::from_ptr(sym).to_string_lossy().into_owned()),
            *(d.add(64) as *const u32),
        )
    };
    CALLBACKS.lock().unwrap().push((site, cbid, corr, sym));
}

#[test]
fn single_subscriber_and_enter_exit_callbacks() {
    let _g = fresh(&[]);
    type Cb = extern "C" fn(*mut c_void, u32, u32, *const c_void);
    let subscribe = |sub: &mut *mut c_void| {
        c!(cuptiSubscribe(sub, on_api, std::ptr::null_mut())
            as fn(*mut *mut c_void, Cb, *mut c_void) -> u32)
    };
    let mut sub = std::ptr::null_mut();
    assert_eq!(subscribe(&mut sub), 0);
    let mut sub2 = std::ptr::null_mut();
    assert_eq!(subscribe(&mut sub2), 39, "second subscriber refused");
    assert_eq!(
        c!(cuptiEnableDomain(1, sub, 1) as fn(u32, *mut c_void, u32) -> u32),
        0
    );
    register();
    enable(&[DRIVER, KERNEL]);
    CALLBACKS.lock().unwrap().clear();
    let (f, s) = setup(0);
    assert_eq!(launch(f, s, 5_000), 0);
    sync(s);
    flush(0);
    let cbs = CALLBACKS.lock().unwrap().clone();
    let launches: Vec<_> = cbs.iter().filter(|c| c.1 == 307).collect();
    assert_eq!(launches.len(), 2, "ENTER and EXIT");
    assert_eq!((launches[0].0, launches[1].0), (0, 1));
    assert_eq!(launches[0].2, launches[1].2);
    assert_eq!(launches[0].3.as_deref(), Some("spin_kernel"));
    let recs = take_records();
    let api = recs
        .iter()
        .find(|r| u32_at(r, 0) == DRIVER && u32_at(r, 4) == 307)
        .unwrap();
    assert_eq!(
        u32_at(api, 32),
        launches[0].2,
        "callback correlationId = API record's"
    );

    assert_eq!(c!(cuptiUnsubscribe(sub) as fn(*mut c_void) -> u32), 0);
    assert_eq!(subscribe(&mut sub2), 0, "free again after unsubscribe");
    let (mut n_sub, mut n_en) = (0u64, 0u64);
    c!(gpuspanSimCuptiCounters(&mut n_sub, &mut n_en) as fn(*mut u64, *mut u64) -> ());
    assert_eq!((n_sub, n_en), (3, 2));
    assert_eq!(c!(cuptiFinalize() as fn() -> u32), 0);
    assert_eq!(subscribe(&mut sub2), 0, "finalize released the subscriber");

    drop(_g);
    let _g = fresh(&[("GPUSPAN_SIM_FAULT", "cupti_subscribed")]);
    assert_eq!(subscribe(&mut sub), 39, "held by another tool");
}

#[test]
fn cupti_13_layouts() {
    let _g = fresh(&[("GPUSPAN_SIM_CUPTI_VERSION", "13")]);
    let mut v = 0u32;
    assert_eq!(c!(cuptiGetVersion(&mut v) as fn(*mut u32) -> u32), 0);
    assert_eq!(v, 130_500);
    register();
    enable(&[KERNEL, MEMCPY, MEMSET]);
    let (f, s) = setup(0);
    assert_eq!(launch(f, s, 1_000), 0);
    assert_eq!(
        c!(cuMemcpyDtoDAsync_v2(0, 0, 4096, s) as fn(u64, u64, usize, *mut c_void) -> u32),
        0
    );
    assert_eq!(
        c!(cuMemsetD32Async(0, 7, 1024, s) as fn(u64, u32, usize, *mut c_void) -> u32),
        0
    );
    sync(s);
    flush(0);
    let sizes: Vec<(u32, usize)> = take_records()
        .iter()
        .map(|r| (u32_at(r, 0), r.len()))
        .collect();
    assert_eq!(sizes, vec![(KERNEL, 248), (MEMCPY, 112), (MEMSET, 104)]);

    drop(_g);
    let _g = fresh(&[]);
    assert_eq!(c!(cuptiGetVersion(&mut v) as fn(*mut u32) -> u32), 0);
    assert_eq!(v, 28);
}

#[test]
fn no_device_fault() {
    let _g = fresh(&[("GPUSPAN_SIM_FAULT", "no_device")]);
    assert_eq!(c!(cuInit(0) as fn(u32) -> u32), 100);
    let mut n = -1i32;
    assert_eq!(c!(cuDeviceGetCount(&mut n) as fn(*mut i32) -> u32), 0);
    assert_eq!(n, 0);
    assert_eq!(c!(nvmlInit_v2() as fn() -> u32), 9);
}

#[test]
fn nvml_device_queries_and_utilization() {
    let _g = fresh(&[]);
    let (f, s) = setup(0);
    assert_eq!(c!(nvmlInit_v2() as fn() -> u32), 0);
    let mut dev: *mut c_void = std::ptr::null_mut();
    assert_eq!(
        c!(nvmlDeviceGetHandleByIndex_v2(0, &mut dev) as fn(u32, *mut *mut c_void) -> u32),
        0
    );
    let mut name = [0 as c_char; 96];
    assert_eq!(
        c!(nvmlDeviceGetName(dev, name.as_mut_ptr(), 96)
            as fn(*mut c_void, *mut c_char, u32) -> u32),
        0
    );
    // SAFETY: NUL-terminated by the sim.
    assert_eq!(
        unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap(),
        "NVIDIA H100 80GB HBM3"
    );
    #[repr(C)]
    struct MemV2 {
        version: u32,
        total: u64,
        reserved: u64,
        free: u64,
        used: u64,
    }
    let mut m = MemV2 {
        version: 1 << 24,
        total: 0,
        reserved: 0,
        free: 0,
        used: 0,
    };
    assert_eq!(
        c!(nvmlDeviceGetMemoryInfo_v2(dev, &mut m) as fn(*mut c_void, *mut MemV2) -> u32),
        25,
        "version mismatch"
    );
    m.version = std::mem::size_of::<MemV2>() as u32 | 2 << 24;
    assert_eq!(
        c!(nvmlDeviceGetMemoryInfo_v2(dev, &mut m) as fn(*mut c_void, *mut MemV2) -> u32),
        0
    );
    assert_eq!(m.total, m.reserved + m.free + m.used);
    assert!(m.total > 80_000_000_000);

    #[repr(C)]
    struct Util {
        gpu: u32,
        memory: u32,
    }
    assert_eq!(launch(f, s, 500_000_000), 0);
    sync(s);
    let mut u = Util { gpu: 0, memory: 0 };
    assert_eq!(
        c!(nvmlDeviceGetUtilizationRates(dev, &mut u) as fn(*mut c_void, *mut Util) -> u32),
        0
    );
    assert_eq!(u.gpu, 50, "500 ms kernel in the last 1 s");
    let before_ns = c!(gpuspanSimHostNowNs() as fn() -> u64);
    c!(gpuspanSimAdvanceHostNs(2_000_000_000) as fn(u64) -> ());
    assert_eq!(c!(gpuspanSimHostNowNs() as fn() -> u64) - before_ns, 2_000_000_000, "the virtual host clock moved by the advance only");
    assert_eq!(
        c!(nvmlDeviceGetUtilizationRates(dev, &mut u) as fn(*mut c_void, *mut Util) -> u32),
        0
    );
    assert_eq!(u.gpu, 0, "idle for the whole last second");
    assert_eq!(c!(gpuspanSimIsVirtual() as fn() -> i32), 1);
    assert_eq!(c!(nvmlShutdown() as fn() -> u32), 0);
}

#[test]
fn get_proc_address_returns_our_exports() {
    let _g = fresh(&[]);
    let gpa = |name: &CStr| {
        let mut p: *mut c_void = std::ptr::null_mut();
        let mut status = 9u32;
        let r = c!(
            cuGetProcAddress_v2(name.as_ptr(), &mut p, 12090, 0, &mut status)
                as fn(*const c_char, *mut *mut c_void, i32, u64, *mut u32) -> u32
        );
        (r, p as usize, status)
    };
    let launch: usize = sym::<unsafe extern "C" fn()>("cuLaunchKernel") as usize;
    let alloc_v2: usize = sym::<unsafe extern "C" fn()>("cuMemAlloc_v2") as usize;
    assert_eq!(gpa(c"cuLaunchKernel"), (0, launch, 0));
    assert_eq!(
        gpa(c"cuMemAlloc"),
        (0, alloc_v2, 0),
        "the _v2 export for the base name"
    );
    assert_eq!(gpa(c"cuNoSuchThing").0, 500);
}

#[test]
fn real_clock_sleeps_until_the_simulated_end() {
    let _g = fresh(&[("GPUSPAN_SIM_CLOCK", "real")]);
    assert_eq!(c!(gpuspanSimIsVirtual() as fn() -> i32), 0);
    let (f, s) = setup(0);
    let mut t0 = 0u64;
    assert_eq!(c!(cuptiGetTimestamp(&mut t0) as fn(*mut u64) -> u32), 0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(t0.abs_diff(wall) < 1_000_000_000, "CLOCK_REALTIME domain");
    let started = std::time::Instant::now();
    assert_eq!(launch(f, s, 30_000_000), 0);
    sync(s);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(29),
        "sync slept {:?}",
        started.elapsed()
    );
    drop(_g);
    let _g = fresh(&[]);
}

// --- CUPTI 13.3+ multiple-subscriber mode ------------------------------------------

use gpuspan_cupti::multi_subscriber::SubscriberParams;

/// Handles of the two V2 subscribers of `multiple_subscribers_each_get_their_own_records`.
static V2_HANDLES: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Records each V2 subscriber's completion callback received.
static V2_RECORDS: [Mutex<Vec<Vec<u8>>>; 2] = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];

extern "C" fn request_v2<const N: usize>(buf: *mut *mut u8, size: *mut usize, max: *mut usize, _info: *mut c_void) {
    request(buf, size, max);
}

extern "C" fn complete_v2<const N: usize>(buf: *mut u8, size: usize, valid: usize, info: *mut usize) {
    // SAFETY: the sim passes a CUpti_BufferCallbackCompleteInfo; structSize is its first field.
    assert_eq!(unsafe { *info }, 32, "CompleteInfo.structSize");
    let next: unsafe extern "C" fn(*mut c_void, *mut u8, usize, *mut *mut c_void) -> u32 = sym("cuptiActivityGetNextRecord_v2");
    let h = V2_HANDLES[N].load(Ordering::SeqCst) as *mut c_void;
    let mut rec: *mut c_void = std::ptr::null_mut();
    let mut starts = Vec::new();
    // SAFETY: our buffer, handed back by the sim, walked with our handle.
    while unsafe { next(h, buf, valid, &mut rec) } == 0 {
        starts.push(rec as usize);
    }
    let end = buf as usize + valid;
    let mut out = V2_RECORDS[N].lock().unwrap();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(end);
        // SAFETY: [s, e) lies inside the valid part of the buffer.
        out.push(unsafe { std::slice::from_raw_parts(s as *const u8, e - s) }.to_vec());
    }
    // SAFETY: allocated in `request` with this size and alignment.
    unsafe { dealloc(buf, Layout::from_size_align(size, 8).unwrap()) };
}

/// `cuptiSubscribe_v2` as `name`; returns (code, handle, what CUPTI wrote as the old name).
fn subscribe_v2(name: &CStr, allow_multiple: bool) -> (u32, *mut c_void, String) {
    type Cb = extern "C" fn(*mut c_void, u32, u32, *const c_void);
    let mut old = [0u8; 64];
    let mut p = SubscriberParams::new(name, &mut old, allow_multiple);
    let mut h = std::ptr::null_mut();
    let code = c!(cuptiSubscribe_v2(&mut h, on_api, std::ptr::null_mut(), &mut p)
        as fn(*mut *mut c_void, Cb, *mut c_void, *mut SubscriberParams) -> u32);
    let end = old.iter().position(|&b| b == 0).unwrap_or(old.len());
    (code, h, String::from_utf8_lossy(&old[..end]).into_owned())
}

fn subscriber_state(h: *mut c_void) -> u8 {
    let (mut size, mut v) = (1usize, 9u8);
    assert_eq!(
        c!(cuptiActivityGetAttribute_v2(h, 12, &mut size, &mut v as *mut u8 as *mut c_void)
            as fn(*mut c_void, u32, *mut usize, *mut c_void) -> u32),
        0
    );
    v
}

/// Two V2 subscribers and the V1 activity client side by side on a CUPTI 13.3: each gets the
/// kinds it enabled, in its own buffers through its own callbacks, external correlation
/// from its own stacks only; the mode rules (V1 subscribe and a single-mode request refused
/// with the first subscriber's name, finalize a no-op while two are subscribed, the mode
/// free again once both left); refused before 13.3 and under the old-driver fault.
#[test]
fn multiple_subscribers_each_get_their_own_records() {
    type Req2 = extern "C" fn(*mut *mut u8, *mut usize, *mut usize, *mut c_void);
    type Done2 = extern "C" fn(*mut u8, usize, usize, *mut usize);
    let _g = fresh(&[("GPUSPAN_SIM_CUPTI_VERSION", "13.3")]);
    for r in &V2_RECORDS {
        r.lock().unwrap().clear();
    }
    let (code, a, old) = subscribe_v2(c"tool-a", true);
    assert_eq!((code, old.as_str()), (0, ""));
    assert_eq!(subscriber_state(a), 1, "multiple");
    let (code, b, old) = subscribe_v2(c"tool-b", true);
    assert_eq!((code, old.as_str()), (0, "CUPTI for tool-a"), "the first subscriber is named");
    V2_HANDLES[0].store(a as usize, Ordering::SeqCst);
    V2_HANDLES[1].store(b as usize, Ordering::SeqCst);
    let (code, _, old) = subscribe_v2(c"tool-c", false);
    assert_eq!((code, old.as_str()), (39, "CUPTI for tool-a"), "single mode asked in multiple mode");
    type Cb = extern "C" fn(*mut c_void, u32, u32, *const c_void);
    let mut v1 = std::ptr::null_mut();
    assert_eq!(
        c!(cuptiSubscribe(&mut v1, on_api, std::ptr::null_mut()) as fn(*mut *mut c_void, Cb, *mut c_void) -> u32),
        39,
        "V1 and V2 subscribers do not mix"
    );

    let enable_v2 = |h: *mut c_void, k: u32| {
        assert_eq!(c!(cuptiActivityEnable_v2(h, k, std::ptr::null_mut()) as fn(*mut c_void, u32, *mut c_void) -> u32), 0)
    };
    for k in [KERNEL, DRIVER, EXTCORR] {
        enable_v2(a, k);
    }
    enable_v2(b, KERNEL);
    assert_eq!(
        c!(cuptiActivityRegisterCallbacks_v2(a, request_v2::<0>, complete_v2::<0>) as fn(*mut c_void, Req2, Done2) -> u32),
        0
    );
    assert_eq!(
        c!(cuptiActivityRegisterCallbacks_v2(b, request_v2::<1>, complete_v2::<1>) as fn(*mut c_void, Req2, Done2) -> u32),
        0
    );
    // The V1 activity-only client (torch.profiler's Kineto) alongside.
    register();
    enable(&[KERNEL]);

    let (f, s) = setup(0);
    assert_eq!(c!(cuptiActivityPushExternalCorrelationId_v2(a, 5, 77) as fn(*mut c_void, u32, u64) -> u32), 0);
    for _ in 0..3 {
        assert_eq!(launch(f, s, 5_000), 0);
    }
    let mut last = 0u64;
    assert_eq!(c!(cuptiActivityPopExternalCorrelationId_v2(a, 5, &mut last) as fn(*mut c_void, u32, *mut u64) -> u32), 0);
    assert_eq!(last, 77);
    assert_eq!(
        c!(cuptiActivityPopExternalCorrelationId_v2(b, 5, &mut last) as fn(*mut c_void, u32, *mut u64) -> u32),
        18,
        "b's stack is its own: empty"
    );
    sync(s);
    assert_eq!(c!(cuptiFinalize() as fn() -> u32), 0, "a no-op with two subscribers");
    assert_eq!(subscriber_state(a), 1, "finalize left both subscribed");
    flush(0);

    let count = |recs: &[Vec<u8>], k: u32| recs.iter().filter(|r| u32_at(r, 0) == k).count();
    let ra = V2_RECORDS[0].lock().unwrap().clone();
    let rb = V2_RECORDS[1].lock().unwrap().clone();
    let rl = take_records();
    assert_eq!(count(&ra, KERNEL), 3, "a's kernels");
    assert!(count(&ra, DRIVER) >= 3, "a's API records");
    let ext: Vec<_> = ra.iter().filter(|r| u32_at(r, 0) == EXTCORR).collect();
    assert_eq!(ext.len(), 3, "one external record per launch, from a's stack");
    assert!(ext.iter().all(|r| u64_at(r, 8) == 77));
    assert_eq!((count(&rb, KERNEL), rb.len()), (3, 3), "b gets its kernels and nothing else");
    assert_eq!((count(&rl, KERNEL), rl.len()), (3, 3), "the V1 client gets its kernels and nothing else");
    let kernels = |recs: &[Vec<u8>]| -> Vec<Vec<u8>> { recs.iter().filter(|r| u32_at(r, 0) == KERNEL).cloned().collect() };
    assert_eq!(kernels(&ra), kernels(&rb), "the same kernel records, byte for byte");
    assert_eq!(kernels(&ra), kernels(&rl));
    let mut dropped = 99usize;
    assert_eq!(
        c!(cuptiActivityGetNumDroppedRecords_v2(b, std::ptr::null_mut(), 0, &mut dropped)
            as fn(*mut c_void, *mut c_void, u32, *mut usize) -> u32),
        0
    );
    assert_eq!(dropped, 0);

    assert_eq!(c!(cuptiUnsubscribe(a) as fn(*mut c_void) -> u32), 0);
    let mut next_rec: *mut c_void = std::ptr::null_mut();
    let mut scratch = [0u64; 8];
    assert_eq!(
        c!(cuptiActivityGetNextRecord_v2(a, scratch.as_mut_ptr() as *mut u8, 64, &mut next_rec)
            as fn(*mut c_void, *mut u8, usize, *mut *mut c_void) -> u32),
        1,
        "a handle that unsubscribed is refused"
    );
    assert_eq!(c!(cuptiUnsubscribe(b) as fn(*mut c_void) -> u32), 0);
    assert_eq!(
        c!(cuptiSubscribe(&mut v1, on_api, std::ptr::null_mut()) as fn(*mut *mut c_void, Cb, *mut c_void) -> u32),
        0,
        "the mode is free again once both left"
    );
    assert_eq!(subscriber_state(v1), 0, "single");
    drop(_g);

    for (env, why) in [
        (vec![("GPUSPAN_SIM_CUPTI_VERSION", "13.2")], "before 13.3"),
        (vec![("GPUSPAN_SIM_CUPTI_VERSION", "13.5"), ("GPUSPAN_SIM_FAULT", "no_multi_subscriber")], "driver older than r610"),
    ] {
        let _g = fresh(&env);
        assert_eq!(subscribe_v2(c"tool-a", true).0, 39, "{why}");
        assert_eq!(subscribe_v2(c"tool-a", false).0, 0, "{why}: single mode still works");
    }
    let _g = fresh(&[("GPUSPAN_SIM_CUPTI_VERSION", "13.5"), ("GPUSPAN_SIM_FAULT", "cupti_subscribed")]);
    assert_eq!(subscribe_v2(c"tool-a", true), (39, std::ptr::null_mut(), "Nsight Systems".to_string()), "held by a tool");
}

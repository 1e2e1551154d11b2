//! Stream capture and CUDA graphs through the simulator's C ABI (dlopen, as the agent and
//! the replay worker use it): the capture-mode rules of cuda.h
//! `cuThreadExchangeStreamCaptureMode`, the legacy-stream rule (906), captured work not
//! executed, graph launches' kernel records (CUPTI-NOTES §6b). The sim is process-global:
//! tests serialize on `LOCK` and start with `gpuspanSimReset`; capture modes are
//! per-thread, so each test runs its capturing code on a fresh thread.

#[macro_use]
mod common;
use common::*;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, MutexGuard};

static LOCK: Mutex<()> = Mutex::new(());

type P = *mut c_void;

// cuda.h values (cudarc `driver::sys`).
const GLOBAL: u32 = 0;
const THREAD_LOCAL: u32 = 1;
const RELAXED: u32 = 2;
const STATUS_NONE: u32 = 0;
const STATUS_ACTIVE: u32 = 1;
const STATUS_INVALIDATED: u32 = 2;
const UNSUPPORTED: u32 = 900;
const INVALIDATED: u32 = 901;
const UNJOINED: u32 = 904;
const ISOLATION: u32 = 905;
const IMPLICIT: u32 = 906;
const CAPTURED_EVENT: u32 = 907;
const WRONG_THREAD: u32 = 908;
const ILLEGAL_STATE: u32 = 401;
const CU_STREAM_LEGACY: usize = 0x1;
const CU_STREAM_PER_THREAD: usize = 0x2;
const NON_BLOCKING: u32 = 0x1;
// `CUpti_ActivityKind`: CONCURRENT_KERNEL 10, DRIVER 4, MEMSET 2.
const KERNEL: u32 = 10;
const DRIVER: u32 = 4;
const MEMSET: u32 = 2;
// Kernel9: start 16, end 24, streamId 48, correlationId 92, graphNodeId 144, graphId 156;
// API: cbid 4, correlationId 32; Memset4: correlationId 44, graphNodeId 64, graphId 72.

use common::records::{complete, request, u32_at, RECORDS};
fn u64_at(r: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(r[off..off + 8].try_into().unwrap())
}

/// Locks, resets the sim and the record list, registers the buffer callbacks and enables
/// `kinds`.
fn fresh(kinds: &[u32]) -> MutexGuard<'static, ()> {
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for v in [
        "GPUSPAN_SIM_FAULT",
        "GPUSPAN_SIM_CUPTI_VERSION",
        "GPUSPAN_SIM_CLOCK",
    ] {
        std::env::remove_var(v);
    }
    c!(gpuspanSimReset() as fn() -> ());
    RECORDS.lock().unwrap().clear();
    type Req = extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Done = extern "C" fn(P, u32, *mut u8, usize, usize);
    assert_eq!(
        c!(cuptiActivityRegisterCallbacks(request, complete) as fn(Req, Done) -> u32),
        0
    );
    for &k in kinds {
        assert_eq!(c!(cuptiActivityEnable(k) as fn(u32) -> u32), 0);
    }
    g
}

fn records() -> Vec<Vec<u8>> {
    assert_eq!(c!(cuptiActivityFlushAll(0) as fn(u32) -> u32), 0);
    std::mem::take(&mut *RECORDS.lock().unwrap())
}

/// cuInit, primary context current on this thread, and function `spin_kernel`.
fn setup() -> P {
    assert_eq!(c!(cuInit(0) as fn(u32) -> u32), 0);
    let mut ctx: P = std::ptr::null_mut();
    assert_eq!(
        c!(cuDevicePrimaryCtxRetain(&mut ctx, 0) as fn(*mut P, i32) -> u32),
        0
    );
    assert_eq!(c!(cuCtxSetCurrent(ctx) as fn(P) -> u32), 0);
    let mut m: P = std::ptr::null_mut();
    assert_eq!(
        c!(cuModuleLoadData(&mut m, c"ptx".as_ptr() as *const c_void)
            as fn(*mut P, *const c_void) -> u32),
        0
    );
    let mut f: P = std::ptr::null_mut();
    assert_eq!(
        c!(cuModuleGetFunction(&mut f, m, c"spin_kernel".as_ptr())
            as fn(*mut P, P, *const c_char) -> u32),
        0
    );
    f
}

fn stream(flags: u32) -> P {
    let mut s: P = std::ptr::null_mut();
    assert_eq!(
        c!(cuStreamCreate(&mut s, flags) as fn(*mut P, u32) -> u32),
        0
    );
    s
}

fn event() -> P {
    let mut e: P = std::ptr::null_mut();
    assert_eq!(c!(cuEventCreate(&mut e, 0) as fn(*mut P, u32) -> u32), 0);
    e
}

/// Launches `f` on `s` for `ns` (the sim reads kernelParams[0]).
fn launch(f: P, s: P, ns: u64) -> u32 {
    let mut dur = ns;
    let mut params = [&mut dur as *mut u64 as P];
    c!(cuLaunchKernel(
        f,
        2,
        1,
        1,
        64,
        1,
        1,
        0,
        s,
        params.as_mut_ptr(),
        std::ptr::null_mut()
    )
        as fn(
            P,
            u32,
            u32,
            u32,
            u32,
            u32,
            u32,
            u32,
            P,
            *mut P,
            *mut P,
        ) -> u32)
}

fn begin(s: P, mode: u32) -> u32 {
    c!(cuStreamBeginCapture_v2(s, mode) as fn(P, u32) -> u32)
}

/// (result, graph) of cuStreamEndCapture.
fn end(s: P) -> (u32, P) {
    let mut g: P = 0xdead as P;
    let r = c!(cuStreamEndCapture(s, &mut g) as fn(P, *mut P) -> u32);
    (r, g)
}

fn is_capturing(s: P) -> (u32, u32) {
    let mut st = 99u32;
    let r = c!(cuStreamIsCapturing(s, &mut st) as fn(P, *mut u32) -> u32);
    (r, st)
}

fn exchange_mode(mode: u32) -> u32 {
    let mut m = mode;
    assert_eq!(
        c!(cuThreadExchangeStreamCaptureMode(&mut m) as fn(*mut u32) -> u32),
        0
    );
    m
}

fn query(e: P) -> u32 {
    c!(cuEventQuery(e) as fn(P) -> u32)
}

fn record(e: P, s: P) -> u32 {
    c!(cuEventRecord(e, s) as fn(P, P) -> u32)
}

fn instantiate(g: P) -> P {
    let mut x: P = std::ptr::null_mut();
    assert_eq!(
        c!(cuGraphInstantiateWithFlags(&mut x, g, 0) as fn(*mut P, P, u64) -> u32),
        0
    );
    x
}

fn graph_launch(x: P, s: P) -> u32 {
    c!(cuGraphLaunch(x, s) as fn(P, P) -> u32)
}

/// Runs `f` on a new thread (default GLOBAL capture mode) and returns its result.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

/// Raw pointers cross threads as integers.
fn addr(p: P) -> usize {
    p as usize
}

#[test]
fn global_capture_prohibits_unsafe_calls_of_other_threads_unless_relaxed_or_thread_local() {
    let _g = fresh(&[]);
    on_thread(|| {
        let f = setup();
        let s = stream(NON_BLOCKING);
        let ev = addr(event());

        // Thread B in GLOBAL mode queries an event while A (this thread) captures in GLOBAL.
        assert_eq!(begin(s, GLOBAL), 0);
        assert_eq!(launch(f, s, 1_000), 0);
        assert_eq!(
            on_thread(move || query(ev as P)),
            UNSUPPORTED,
            "B (GLOBAL) is prohibited"
        );
        assert_eq!(
            is_capturing(s),
            (0, STATUS_INVALIDATED),
            "B's call invalidated A's capture"
        );
        assert_eq!(
            launch(f, s, 1_000),
            INVALIDATED,
            "work on an invalidated capture"
        );
        let (r, g) = end(s);
        assert_eq!(
            (r, g as usize),
            (INVALIDATED, 0),
            "EndCapture: 901 and a NULL graph"
        );
        assert_eq!(is_capturing(s), (0, STATUS_NONE));

        // B switched to RELAXED: allowed, A's capture ends with a graph.
        assert_eq!(begin(s, GLOBAL), 0);
        assert_eq!(launch(f, s, 1_000), 0);
        let (old, r) = on_thread(move || {
            let old = exchange_mode(RELAXED);
            (old, query(ev as P))
        });
        assert_eq!(
            (old, r),
            (GLOBAL, 0),
            "exchange returns the old mode; RELAXED B may query"
        );
        assert_eq!(is_capturing(s), (0, STATUS_ACTIVE));
        let (r, g) = end(s);
        assert_eq!(r, 0);
        assert!(!g.is_null());

        // B in THREAD_LOCAL ignores other threads' captures.
        assert_eq!(begin(s, GLOBAL), 0);
        let r = on_thread(move || {
            assert_eq!(exchange_mode(THREAD_LOCAL), GLOBAL);
            let r = (query(ev as P), c!(cuCtxSynchronize() as fn() -> u32));
            assert_eq!(exchange_mode(GLOBAL), THREAD_LOCAL);
            r
        });
        assert_eq!(r, (0, 0));
        assert_eq!(end(s).0, 0);

        // A capture begun in THREAD_LOCAL mode does not prohibit a GLOBAL thread B ...
        assert_eq!(begin(s, THREAD_LOCAL), 0);
        assert_eq!(on_thread(move || query(ev as P)), 0);
        // ... but prohibits A itself, which is in GLOBAL mode.
        assert_eq!(c!(cuCtxSynchronize() as fn() -> u32), UNSUPPORTED);
        assert_eq!(end(s).0, INVALIDATED);

        // A RELAXED capture prohibits nobody; EndCapture may come from another thread.
        assert_eq!(begin(s, RELAXED), 0);
        assert_eq!(query(ev as P), 0);
        let mut p: u64 = 0;
        assert_eq!(
            c!(cuMemAlloc_v2(&mut p, 256) as fn(*mut u64, usize) -> u32),
            0
        );
        assert_eq!(on_thread(move || query(ev as P)), 0);
        let sa = addr(s);
        assert_eq!(on_thread(move || end(sa as P).0), 0);

        // A GLOBAL capture must end on its own thread.
        assert_eq!(begin(s, GLOBAL), 0);
        assert_eq!(on_thread(move || end(sa as P).0), WRONG_THREAD);
        assert_eq!(is_capturing(s), (0, STATUS_ACTIVE), "the capture goes on");
        // cuStreamIsCapturing is always allowed and invalidates nothing.
        assert_eq!(on_thread(move || is_capturing(sa as P)), (0, STATUS_ACTIVE));
        // Allocation is a potentially unsafe call: A's own GLOBAL capture forbids it.
        assert_eq!(
            c!(cuMemAlloc_v2(&mut p, 256) as fn(*mut u64, usize) -> u32),
            UNSUPPORTED
        );
        assert_eq!(end(s).0, INVALIDATED);
    });
}

#[test]
fn legacy_stream_work_during_a_blocking_capture_is_implicit() {
    let _g = fresh(&[]);
    on_thread(|| {
        let f = setup();
        let blocking = stream(0);
        let nb = stream(NON_BLOCKING);
        let ev = event();
        for h in [0, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD] {
            assert_eq!(
                begin(h as P, GLOBAL),
                UNSUPPORTED,
                "the legacy / per-thread stream cannot be captured"
            );
        }
        assert_eq!(end(blocking).0, ILLEGAL_STATE, "not capturing");

        assert_eq!(begin(blocking, GLOBAL), 0);
        assert_eq!(begin(blocking, GLOBAL), ILLEGAL_STATE, "already capturing");
        // The query is allowed and invalidates nothing.
        assert_eq!(is_capturing(std::ptr::null_mut()).0, IMPLICIT);
        assert_eq!(is_capturing(CU_STREAM_LEGACY as P).0, IMPLICIT);
        assert_eq!(is_capturing(blocking), (0, STATUS_ACTIVE));
        let mut status = 9u32;
        assert_eq!(
            c!(
                cuStreamGetCaptureInfo(CU_STREAM_LEGACY as P, &mut status, std::ptr::null_mut())
                    as fn(P, *mut u32, *mut u64) -> u32
            ),
            IMPLICIT
        );
        assert_eq!(is_capturing(blocking), (0, STATUS_ACTIVE));
        // Work on the legacy stream: 906 and the capture invalidated.
        assert_eq!(launch(f, std::ptr::null_mut(), 1_000), IMPLICIT);
        assert_eq!(is_capturing(blocking), (0, STATUS_INVALIDATED));
        assert_eq!(end(blocking).0, INVALIDATED);

        assert_eq!(begin(blocking, RELAXED), 0);
        assert_eq!(
            record(ev, CU_STREAM_LEGACY as P),
            IMPLICIT,
            "cuEventRecord on CU_STREAM_LEGACY"
        );
        assert_eq!(end(blocking).0, INVALIDATED);
        assert_eq!(begin(blocking, RELAXED), 0);
        assert_eq!(
            c!(cuMemsetD8Async(0, 0, 64, std::ptr::null_mut()) as fn(u64, u8, usize, P) -> u32),
            IMPLICIT,
            "memset on stream 0"
        );
        assert_eq!(end(blocking).0, INVALIDATED);

        // A non-blocking capture leaves the legacy stream alone.
        assert_eq!(begin(nb, GLOBAL), 0);
        assert_eq!(is_capturing(std::ptr::null_mut()), (0, STATUS_NONE));
        assert_eq!(launch(f, std::ptr::null_mut(), 1_000), 0);
        assert_eq!(launch(f, CU_STREAM_LEGACY as P, 1_000), 0);
        assert_eq!(record(ev, std::ptr::null_mut()), 0);
        assert_eq!(is_capturing(nb), (0, STATUS_ACTIVE));
        let (r, g) = end(nb);
        assert_eq!(r, 0);
        assert!(!g.is_null());
    });
}

/// (site, cbid, correlationId) of each driver callback.
static CALLBACKS: Mutex<Vec<(u32, u32, u32)>> = Mutex::new(Vec::new());

extern "C" fn on_api(_ud: P, _domain: u32, cbid: u32, data: *const c_void) {
    let d = data as *const u8;
    // SAFETY: `data` is a CUpti_CallbackData (callbackSite @0, correlationId @64).
    let (site, corr) = unsafe { (*(d as *const u32), *(d.add(64) as *const u32)) };
    CALLBACKS.lock().unwrap().push((site, cbid, corr));
}

#[test]
fn captured_kernels_do_not_run_and_graph_launches_produce_records() {
    let _g = fresh(&[KERNEL, DRIVER, MEMSET]);
    type Cb = extern "C" fn(P, u32, u32, *const c_void);
    let mut sub: P = std::ptr::null_mut();
    assert_eq!(
        c!(cuptiSubscribe(&mut sub, on_api, std::ptr::null_mut()) as fn(*mut P, Cb, P) -> u32),
        0
    );
    assert_eq!(
        c!(cuptiEnableDomain(1, sub, 1) as fn(u32, P, u32) -> u32),
        0
    );
    CALLBACKS.lock().unwrap().clear();
    on_thread(|| {
        let f = setup();
        let s = stream(NON_BLOCKING);
        let ev = event();
        assert_eq!(begin(s, GLOBAL), 0);
        for ns in [10_000, 20_000, 30_000] {
            assert_eq!(launch(f, s, ns), 0);
        }
        assert_eq!(
            c!(cuMemsetD32Async(0x7f40_0000_0000, 0, 1024, s) as fn(u64, u32, usize, P) -> u32),
            0
        );
        // An event recorded in the capture holds a dependency, not a timestamp.
        assert_eq!(record(ev, s), 0);
        // RELAXED: not prohibited, but the event still cannot be queried (907).
        let old = exchange_mode(RELAXED);
        assert_eq!(query(ev), CAPTURED_EVENT);
        assert_eq!(c!(cuEventSynchronize(ev) as fn(P) -> u32), CAPTURED_EVENT);
        exchange_mode(old);
        let (mut status, mut id, mut graph, mut deps, mut n) = (
            9u32,
            0u64,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null::<P>(),
            0usize,
        );
        assert_eq!(
            c!(
                cuStreamGetCaptureInfo_v2(s, &mut status, &mut id, &mut graph, &mut deps, &mut n)
                    as fn(P, *mut u32, *mut u64, *mut P, *mut *const P, *mut usize) -> u32
            ),
            0
        );
        assert_eq!((status, n), (STATUS_ACTIVE, 1));
        assert!(id != 0 && !graph.is_null() && !deps.is_null());
        let (r, g) = end(s);
        assert_eq!(r, 0);
        assert_eq!(g, graph, "the graph handle GetCaptureInfo lent out");
        assert_eq!(
            query(ev),
            CAPTURED_EVENT,
            "still last recorded in a capture"
        );
        let so_far = records();
        assert!(
            so_far
                .iter()
                .all(|r| u32_at(r, 0) != KERNEL && u32_at(r, 0) != MEMSET),
            "captured work did not run"
        );
        RECORDS.lock().unwrap().splice(0..0, so_far);

        let x = instantiate(g);
        assert_eq!(graph_launch(x, s), 0);
        assert_eq!(graph_launch(x, s), 0);
        assert_eq!(c!(cuStreamSynchronize(s) as fn(P) -> u32), 0);
        assert_eq!(record(ev, s), 0, "recorded again outside capture");
        assert_eq!(c!(cuEventSynchronize(ev) as fn(P) -> u32), 0);
        assert_eq!(query(ev), 0);
        assert_eq!(c!(cuGraphExecDestroy(x) as fn(P) -> u32), 0);
        assert_eq!(c!(cuGraphDestroy(g) as fn(P) -> u32), 0);
        assert_eq!(graph_launch(x, s), 1, "destroyed exec: INVALID_VALUE");
    });
    let recs = records();
    let launches: Vec<u32> = recs
        .iter()
        .filter(|r| u32_at(r, 0) == DRIVER && u32_at(r, 4) == 514)
        .map(|r| u32_at(r, 32))
        .collect();
    assert_eq!(
        launches.len(),
        3,
        "two launches and the failed one, cbid 514"
    );
    let captured: Vec<u32> = recs
        .iter()
        .filter(|r| u32_at(r, 0) == DRIVER && u32_at(r, 4) == 307)
        .map(|r| u32_at(r, 32))
        .collect();
    assert_eq!(
        captured.len(),
        3,
        "captured launches still have their API records"
    );
    let kernels: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == KERNEL).collect();
    assert_eq!(kernels.len(), 6, "2 launches × 3 kernel nodes");
    let graph_id = u32_at(kernels[0], 156);
    assert_ne!(graph_id, 0);
    for (i, launch_corr) in launches[..2].iter().enumerate() {
        let ks: Vec<&&Vec<u8>> = kernels
            .iter()
            .filter(|k| u32_at(k, 92) == *launch_corr)
            .collect();
        assert_eq!(
            ks.len(),
            3,
            "launch {i}: kernels carry the cuGraphLaunch correlation id"
        );
        let durs: Vec<u64> = ks.iter().map(|k| u64_at(k, 24) - u64_at(k, 16)).collect();
        assert_eq!(durs, vec![10_000, 20_000, 30_000], "captured durations");
        let nodes: std::collections::HashSet<u64> = ks.iter().map(|k| u64_at(k, 144)).collect();
        assert_eq!(nodes.len(), 3);
        assert!(nodes.iter().all(|&n| n != 0));
        assert!(ks.iter().all(|k| u32_at(k, 156) == graph_id));
        assert!(
            ks.windows(2).all(|w| u64_at(w[1], 16) >= u64_at(w[0], 24)),
            "a chain runs in order"
        );
    }
    assert!(
        kernels.iter().all(|k| !captured.contains(&u32_at(k, 92))),
        "no kernel record for a captured launch"
    );
    let (k1, k2) = (kernels[2], kernels[3]);
    assert!(
        u64_at(k2, 16) >= u64_at(k1, 24),
        "the second launch runs after the first"
    );
    assert_eq!(
        u64_at(kernels[0], 144),
        u64_at(kernels[3], 144),
        "the same exec node ids in every launch"
    );
    let memsets: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == MEMSET).collect();
    assert_eq!(memsets.len(), 2);
    assert!(memsets.iter().all(|m| u32_at(m, 72) == graph_id
        && u64_at(m, 64) != 0
        && launches.contains(&u32_at(m, 44))));
    let cbs = CALLBACKS.lock().unwrap().clone();
    let graph_cbs: Vec<&(u32, u32, u32)> = cbs.iter().filter(|c| c.1 == 514).collect();
    assert_eq!(graph_cbs.len(), 6, "ENTER and EXIT per cuGraphLaunch");
    assert_eq!(
        graph_cbs[0].2, launches[0],
        "callback correlationId = API record's"
    );
    assert_eq!(c!(cuptiUnsubscribe(sub) as fn(P) -> u32), 0);
}

#[test]
fn fork_join_captures_two_streams_into_one_graph() {
    let _g = fresh(&[KERNEL]);
    on_thread(|| {
        let f = setup();
        let (a, b) = (stream(NON_BLOCKING), stream(NON_BLOCKING));
        let (fork, join, outside) = (event(), event(), event());
        assert_eq!(record(outside, a), 0);
        assert_eq!(begin(a, GLOBAL), 0);
        assert_eq!(record(fork, a), 0);
        assert_eq!(
            c!(cuStreamWaitEvent(b, fork, 0) as fn(P, P, u32) -> u32),
            0,
            "fork"
        );
        assert_eq!(is_capturing(b), (0, STATUS_ACTIVE));
        assert_eq!(launch(f, a, 50_000), 0);
        assert_eq!(launch(f, b, 20_000), 0);
        assert_eq!(launch(f, b, 20_000), 0);
        // Unjoined: b's work is not reachable from a.
        assert_eq!(end(a).0, UNJOINED);
        assert_eq!(is_capturing(b), (0, STATUS_NONE));

        assert_eq!(begin(a, GLOBAL), 0);
        assert_eq!(record(fork, a), 0);
        assert_eq!(c!(cuStreamWaitEvent(b, fork, 0) as fn(P, P, u32) -> u32), 0);
        assert_eq!(launch(f, a, 50_000), 0);
        assert_eq!(launch(f, b, 20_000), 0);
        assert_eq!(launch(f, b, 20_000), 0);
        assert_eq!(record(join, b), 0);
        assert_eq!(
            c!(cuStreamWaitEvent(a, join, 0) as fn(P, P, u32) -> u32),
            0,
            "join"
        );
        assert_eq!(launch(f, a, 5_000), 0);
        let (r, g) = end(a);
        assert_eq!(r, 0);
        let x = instantiate(g);
        assert_eq!(graph_launch(x, a), 0);
        assert_eq!(c!(cuCtxSynchronize() as fn() -> u32), 0);

        // A capturing stream may not wait on work recorded outside its capture.
        assert_eq!(begin(a, GLOBAL), 0);
        assert_eq!(
            c!(cuStreamWaitEvent(a, outside, 0) as fn(P, P, u32) -> u32),
            ISOLATION
        );
        assert_eq!(end(a).0, INVALIDATED);
    });
    let ks = records();
    let ks: Vec<&Vec<u8>> = ks.iter().filter(|r| u32_at(r, 0) == KERNEL).collect();
    assert_eq!(ks.len(), 4);
    let span = |k: &Vec<u8>| (u64_at(k, 16), u64_at(k, 24));
    let (a0, b0, b1, a1) = (span(ks[0]), span(ks[1]), span(ks[2]), span(ks[3]));
    assert_eq!(a0.0, b0.0, "both branches start together (roots)");
    assert_eq!(b1.0, b0.1);
    assert_eq!(a1.0, a0.1.max(b1.1), "the join waits for both branches");
    assert!(
        ks.iter().all(|k| u32_at(k, 48) == u32_at(ks[0], 48)),
        "records carry the launch stream"
    );
}

#[test]
fn get_proc_address_resolves_capture_and_graph_entry_points_by_version() {
    let _g = fresh(&[]);
    let gpa = |name: &CStr, version: i32| {
        let mut p: P = std::ptr::null_mut();
        let mut status = 9u32;
        let r = c!(
            cuGetProcAddress_v2(name.as_ptr(), &mut p, version, 0, &mut status)
                as fn(*const c_char, *mut P, i32, u64, *mut u32) -> u32
        );
        assert_eq!((r, status), (0, 0), "{name:?} @ {version}");
        p as usize
    };
    let addr_of = |name: &str| sym::<unsafe extern "C" fn()>(name) as usize;
    assert_eq!(
        gpa(c"cuGraphInstantiate", 12090),
        addr_of("cuGraphInstantiateWithFlags")
    );
    assert_eq!(
        gpa(c"cuGraphInstantiate", 11080),
        addr_of("cuGraphInstantiate_v2")
    );
    assert_eq!(
        gpa(c"cuGraphInstantiate", 10020),
        addr_of("cuGraphInstantiate")
    );
    assert_eq!(
        gpa(c"cuStreamGetCaptureInfo", 12090),
        addr_of("cuStreamGetCaptureInfo_v2")
    );
    assert_eq!(
        gpa(c"cuStreamGetCaptureInfo", 13000),
        addr_of("cuStreamGetCaptureInfo_v3")
    );
    assert_eq!(
        gpa(c"cuStreamGetCaptureInfo", 11020),
        addr_of("cuStreamGetCaptureInfo")
    );
    assert_eq!(
        gpa(c"cuStreamBeginCapture", 12090),
        addr_of("cuStreamBeginCapture_v2")
    );
    for n in [
        c"cuStreamEndCapture",
        c"cuStreamIsCapturing",
        c"cuThreadExchangeStreamCaptureMode",
        c"cuGraphLaunch",
        c"cuGraphExecDestroy",
        c"cuGraphDestroy",
        c"cuEventRecordWithFlags",
    ] {
        assert_eq!(gpa(n, 12090), addr_of(n.to_str().unwrap()), "{n:?}");
    }
    let mut name: *const c_char = std::ptr::null();
    assert_eq!(
        c!(cuGetErrorName(907, &mut name) as fn(i32, *mut *const c_char) -> u32),
        0
    );
    // SAFETY: a static NUL-terminated string from the sim.
    assert_eq!(
        unsafe { CStr::from_ptr(name) }.to_str().unwrap(),
        "CUDA_ERROR_CAPTURED_EVENT"
    );
}

#[test]
fn external_event_wait_becomes_a_wait_node() {
    let _g = fresh(&[KERNEL]);
    on_thread(|| {
        let f = setup();
        let (a, other) = (stream(NON_BLOCKING), stream(NON_BLOCKING));
        let outside = event();
        assert_eq!(
            c!(cuStreamWaitEvent(a, outside, 1) as fn(P, P, u32) -> u32),
            1,
            "CU_EVENT_WAIT_EXTERNAL outside capture: INVALID_VALUE"
        );
        assert_eq!(begin(a, GLOBAL), 0);
        assert_eq!(
            c!(cuStreamWaitEvent(a, outside, 1) as fn(P, P, u32) -> u32),
            0
        );
        assert_eq!(launch(f, a, 1_000), 0);
        let (r, g) = end(a);
        assert_eq!(r, 0);
        let x = instantiate(g);
        // The event is recorded behind 5 ms of work on another stream; the graph waits.
        assert_eq!(launch(f, other, 5_000_000), 0);
        assert_eq!(record(outside, other), 0);
        assert_eq!(graph_launch(x, a), 0);
        assert_eq!(c!(cuCtxSynchronize() as fn() -> u32), 0);
    });
    let recs = records();
    let ks: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == KERNEL).collect();
    assert_eq!(ks.len(), 2);
    assert!(
        u64_at(ks[1], 16) >= u64_at(ks[0], 24),
        "the graph's kernel starts after the awaited event"
    );
    assert_ne!(u32_at(ks[1], 156), 0);
}

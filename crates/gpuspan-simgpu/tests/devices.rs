//! Several devices in one process (`GPUSPAN_SIM_DEVICES=2`) through the simulator's C ABI:
//! one primary context per device, current per thread; streams, events and kernels belong
//! to a device, and the rules of the CUDA Programming Guide's "Stream and Event Behavior"
//! hold: a launch into another device's stream fails, recording an event on another
//! device's stream fails, two devices' events cannot be compared; CUPTI stream ids count
//! per context, so both devices' first streams are stream 13.

#[macro_use]
mod common;
use std::ffi::{c_char, c_void};

type P = *mut c_void;

const INVALID_DEVICE: u32 = 101;
const INVALID_HANDLE: u32 = 400;
const CU_STREAM_LEGACY: usize = 0x1;
/// `CUpti_ActivityKind` CONCURRENT_KERNEL.
const KERNEL: u32 = 10;
/// Kernel9 offsets (tests/layout.rs): deviceId 40, contextId 44, streamId 48.
const DEVICE_ID_AT: usize = 40;
const CONTEXT_ID_AT: usize = 44;
const STREAM_ID_AT: usize = 48;

use common::records::{complete, request, u32_at, RECORDS};

fn set_current(ctx: P) {
    assert_eq!(c!(cuCtxSetCurrent(ctx) as fn(P) -> u32), 0);
}

fn current() -> P {
    let mut c: P = std::ptr::null_mut();
    assert_eq!(c!(cuCtxGetCurrent(&mut c) as fn(*mut P) -> u32), 0);
    c
}

fn stream() -> P {
    let mut s: P = std::ptr::null_mut();
    assert_eq!(c!(cuStreamCreate(&mut s, 1) as fn(*mut P, u32) -> u32), 0);
    s
}

fn event() -> P {
    let mut e: P = std::ptr::null_mut();
    assert_eq!(c!(cuEventCreate(&mut e, 0) as fn(*mut P, u32) -> u32), 0);
    e
}

fn record(e: P, s: P) -> u32 {
    c!(cuEventRecord(e, s) as fn(P, P) -> u32)
}

/// Launches `f` on `s` for 10 µs (the sim reads kernelParams[0]).
fn launch(f: P, s: P) -> u32 {
    let mut dur = 10_000u64;
    let mut params = [&mut dur as *mut u64 as P];
    c!(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, params.as_mut_ptr(), std::ptr::null_mut())
        as fn(P, u32, u32, u32, u32, u32, u32, u32, P, *mut P, *mut P) -> u32)
}

#[test]
fn two_devices_keep_their_contexts_streams_events_and_kernels_apart() {
    std::env::set_var("GPUSPAN_SIM_DEVICES", "2");
    c!(gpuspanSimReset() as fn() -> ());
    type Req = extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Done = extern "C" fn(P, u32, *mut u8, usize, usize);
    assert_eq!(c!(cuptiActivityRegisterCallbacks(request, complete) as fn(Req, Done) -> u32), 0);
    assert_eq!(c!(cuptiActivityEnable(KERNEL) as fn(u32) -> u32), 0);

    assert_eq!(c!(cuInit(0) as fn(u32) -> u32), 0);
    let mut n = 0i32;
    assert_eq!(c!(cuDeviceGetCount(&mut n) as fn(*mut i32) -> u32), 0);
    assert_eq!(n, 2);
    let mut dev = -1i32;
    assert_eq!(c!(cuDeviceGet(&mut dev, 1) as fn(*mut i32, i32) -> u32), 0);
    assert_eq!(dev, 1);
    assert_eq!(c!(cuDeviceGet(&mut dev, 2) as fn(*mut i32, i32) -> u32), INVALID_DEVICE);
    let mut ctx = [std::ptr::null_mut(); 2];
    for (d, c) in ctx.iter_mut().enumerate() {
        assert_eq!(c!(cuDevicePrimaryCtxRetain(c, d as i32) as fn(*mut P, i32) -> u32), 0);
    }
    assert_ne!(ctx[0], ctx[1], "one primary context per device");

    let mut m: P = std::ptr::null_mut();
    assert_eq!(c!(cuModuleLoadData(&mut m, c"ptx".as_ptr() as *const c_void) as fn(*mut P, *const c_void) -> u32), 0);
    let mut f: P = std::ptr::null_mut();
    assert_eq!(c!(cuModuleGetFunction(&mut f, m, c"spin_kernel".as_ptr()) as fn(*mut P, P, *const c_char) -> u32), 0);

    set_current(ctx[0]);
    let (s0, e0) = (stream(), event());
    set_current(ctx[1]);
    let (s1, e1) = (stream(), event());
    assert_eq!(c!(cuCtxGetDevice(&mut dev) as fn(*mut i32) -> u32), 0);
    assert_eq!(dev, 1);

    // Device 1 current: its stream takes launches, device 0's does not.
    assert_eq!(launch(f, s1), 0);
    assert_eq!(launch(f, s0), INVALID_HANDLE, "a launch into another device's stream fails");
    assert_eq!(record(e0, s1), INVALID_HANDLE, "device 0's event on device 1's stream");
    assert_eq!(record(e1, s1), 0);
    // The legacy stream is the current device's.
    assert_eq!(record(e0, CU_STREAM_LEGACY as P), INVALID_HANDLE);
    set_current(ctx[0]);
    assert_eq!(launch(f, s0), 0);
    assert_eq!(record(e0, CU_STREAM_LEGACY as P), 0);
    assert_eq!(record(e1, CU_STREAM_LEGACY as P), INVALID_HANDLE);
    // Waiting on another device's event is allowed.
    assert_eq!(c!(cuStreamWaitEvent(s0, e1, 0) as fn(P, P, u32) -> u32), 0);
    assert_eq!(c!(cuCtxSynchronize() as fn() -> u32), 0);
    set_current(ctx[1]);
    assert_eq!(c!(cuCtxSynchronize() as fn() -> u32), 0);
    let mut ms = 0f32;
    assert_eq!(c!(cuEventElapsedTime(&mut ms, e0, e1) as fn(*mut f32, P, P) -> u32), INVALID_HANDLE, "two devices' events");

    // The current context is per thread: a thread that sets device 0 leaves this one on 1;
    // a thread that never chose follows the process's last choice.
    let c0 = ctx[0] as usize;
    std::thread::spawn(move || set_current(c0 as P)).join().unwrap();
    assert_eq!(current(), ctx[1]);
    let seen = std::thread::spawn(|| current() as usize).join().unwrap();
    assert_eq!(seen, c0, "a thread that never chose sees the last context made current");

    assert_eq!(c!(cuptiActivityFlushAll(0) as fn(u32) -> u32), 0);
    let kernels: Vec<(u32, u32, u32)> = RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| u32_at(r, 0) == KERNEL)
        .map(|r| (u32_at(r, DEVICE_ID_AT), u32_at(r, CONTEXT_ID_AT), u32_at(r, STREAM_ID_AT)))
        .collect();
    assert_eq!(kernels.len(), 2, "{kernels:?}");
    let on = |d: u32| kernels.iter().find(|k| k.0 == d).copied().unwrap_or_else(|| panic!("no kernel on device {d}: {kernels:?}"));
    let (k0, k1) = (on(0), on(1));
    assert_ne!(k0.1, k1.1, "each device's kernel names its own context");
    assert_eq!((k0.2, k1.2), (13, 13), "stream ids count per context");
}

//! `libcuda.so.1` subset (cuda.h 12.9 signatures via cudarc's `driver::sys` types).
//!
//! Kernel durations: the sim computes nothing. A kernel runs for the number of ns in the
//! `u64` that `kernelParams[0]` points to (the spin kernel's argument); with
//! `kernelParams == NULL` it runs [`costs::DEFAULT_KERNEL_NS`]. Memory calls move no data.
//!
//! Stream capture (`sim::graphs`, CUPTI-NOTES §6b): launches, async copies / sets and
//! event records on a capturing stream become graph nodes (API record and callbacks as
//! usual, no GPU record); work on the legacy stream while a blocking stream captures fails
//! with 906 and invalidates that capture; the potentially unsafe calls (event query /
//! synchronize, stream query / synchronize, context synchronize, allocation and free,
//! synchronous copies and sets) follow the capture-mode rule of
//! `cuThreadExchangeStreamCaptureMode`. The capture and graph entry points are in
//! [`super::graph`].

// Safety contract of every export: the C prototype of the function it replaces (cuda.h,
// cupti_*.h, nvml.h): pointer arguments are NULL or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::cbid;
use super::guard;
use crate::sim::records::{self, kind, KernelFields, MemFields};
use crate::sim::timeline::WorkKind;
use crate::sim::trace::{traced, Call, Ctx};
use crate::sim::graphs::{self, NodeOp, Wait};
use crate::sim::{context_handle, context_id, costs, device, device_of_context, os_tid, sim, State};
use cudarc::driver::sys::{
    cuuint64_t, CUcontext, CUdevice, CUdeviceptr, CUdriverProcAddressQueryResult, CUevent,
    CUfunction, CUmodule, CUresult, CUstream,
};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::ptr::null;

use CUresult::*;

/// A [`Call`] without parameters or symbol.
pub(super) fn call(cbid: u32, name: &'static CStr) -> Call {
    Call {
        cbid,
        name,
        params: null(),
        symbol: null(),
    }
}

/// Refuses calls before a successful `cuInit` (CUDA_ERROR_NOT_INITIALIZED = 3).
fn need_init(st: &State) -> Result<(), CUresult> {
    if st.initialized {
        Ok(())
    } else {
        Err(CUDA_ERROR_NOT_INITIALIZED)
    }
}

/// Runs a traced call whose body may bail out with an error code.
pub(super) fn run(c: Call, body: impl FnOnce(&mut State, &mut Ctx) -> Result<(), CUresult>) -> CUresult {
    traced(c, |st, ctx| {
        match need_init(st).and_then(|()| body(st, ctx)) {
            Ok(()) => CUDA_SUCCESS,
            Err(e) => e,
        }
    })
}

/// Writes `v` through an out-pointer, or fails with INVALID_VALUE for NULL.
pub(super) fn out<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL out-pointer supplied by the caller for a `T`, as the API requires.
    unsafe { p.write(v) };
    Ok(())
}

fn copy_str(name: *mut c_char, len: c_int, s: &str) -> Result<(), CUresult> {
    if name.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: the caller provides `len` writable bytes at `name`; we write n + 1 ≤ len.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), name as *mut u8, n);
        *name.add(n) = 0;
    }
    Ok(())
}

/// `CU_STREAM_LEGACY` (cuda.h): the legacy default stream, as is handle 0.
pub(super) const CU_STREAM_LEGACY: u64 = 0x1;

/// The cuda.h rule for potentially unsafe calls, for the calling thread and its capture
/// mode (`sim::graphs::Graphs::check_unsafe`): 900 and the offending captures invalidated.
pub(super) fn unsafe_call(st: &mut State) -> Result<(), CUresult> {
    st.graphs.check_unsafe(os_tid(), graphs::thread_mode())
}

/// Work on the legacy stream (handle 0 or `CU_STREAM_LEGACY`) while a blocking stream
/// captures would depend on that capture: `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT` (906), and
/// the captures with a blocking stream are invalidated.
pub(super) fn legacy_use(st: &mut State, h: u64) -> Result<(), CUresult> {
    if (h == 0 || h == CU_STREAM_LEGACY) && st.graphs.blocking_capture() {
        st.graphs.invalidate_blocking();
        return Err(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    }
    Ok(())
}

/// Whether stream-ordered work on `h` is captured (true) or runs (false); fails for
/// legacy-stream work during a blocking capture (906) and on an invalidated capture (901).
pub(super) fn captured(st: &mut State, h: u64) -> Result<bool, CUresult> {
    legacy_use(st, h)?;
    st.graphs.captures_work(h)
}

/// `CUDA_ERROR_CAPTURED_EVENT` (907) for an event last recorded in a capture: it holds a
/// graph dependency, no timestamp (cuda.h `CUresult`, `cuThreadExchangeStreamCaptureMode`).
fn not_captured_event(st: &State, ev: CUevent) -> Result<(), CUresult> {
    if st.graphs.is_captured_event(ev as usize as u64) {
        Err(CUDA_ERROR_CAPTURED_EVENT)
    } else {
        Ok(())
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    guard(|| {
        super::injection::run_once();
        traced(call(cbid::cuInit, c"cuInit"), |st, _| {
            if st.cfg.faults.no_device {
                return CUDA_ERROR_NO_DEVICE;
            }
            if st.cfg.bad_cupti_version {
                // GPUSPAN_SIM_CUPTI_VERSION named no known release (said on stderr when the
                // configuration was read).
                return CUDA_ERROR_INVALID_VALUE;
            }
            st.initialized = true;
            CUDA_SUCCESS
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    guard(|| {
        out(v, device::CUDA_DRIVER_VERSION)
            .err()
            .unwrap_or(CUDA_SUCCESS)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    guard(|| {
        traced(
            call(cbid::cuDeviceGetCount, c"cuDeviceGetCount"),
            |st, _| {
                let n = if st.cfg.faults.no_device { 0 } else { st.cfg.devices as c_int };
                if !st.cfg.faults.no_device && !st.initialized {
                    return CUDA_ERROR_NOT_INITIALIZED;
                }
                out(count, n).err().unwrap_or(CUDA_SUCCESS)
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard(|| {
        run(call(cbid::cuDeviceGet, c"cuDeviceGet"), |st, _| {
            if ordinal < 0 || ordinal as u32 >= st.cfg.devices {
                return Err(CUDA_ERROR_INVALID_DEVICE);
            }
            out(dev, ordinal)
        })
    })
}

/// Device `dev` is one of this process's (`GPUSPAN_SIM_DEVICES`), or INVALID_DEVICE.
fn check_dev(st: &State, dev: CUdevice) -> Result<(), CUresult> {
    if dev >= 0 && (dev as u32) < st.cfg.devices {
        Ok(())
    } else {
        Err(CUDA_ERROR_INVALID_DEVICE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard(|| {
        run(call(cbid::cuDeviceGetName, c"cuDeviceGetName"), |st, _| {
            check_dev(st, dev).and_then(|()| copy_str(name, len, device::NAME))
        })
    })
}

/// `attrib` is a `CUdevice_attribute`; taken as int so unknown values are not UB.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuDeviceGetAttribute, c"cuDeviceGetAttribute"),
            |st, _| {
                check_dev(st, dev)?;
                let v = device::attribute(attrib).ok_or(CUDA_ERROR_INVALID_VALUE)?;
                out(pi, v)
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuDeviceTotalMem_v2, c"cuDeviceTotalMem_v2"),
            |st, _| check_dev(st, dev).and_then(|()| out(bytes, device::TOTAL_MEM_BYTES as usize)),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard(|| {
        run(call(cbid::cuMemGetInfo_v2, c"cuMemGetInfo_v2"), |st, _| {
            let d = st.current_device() as usize;
            let free_b = device::TOTAL_MEM_BYTES - device::RESERVED_MEM_BYTES - st.allocated_bytes[d];
            out(free, free_b as usize)?;
            out(total, device::TOTAL_MEM_BYTES as usize)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuDevicePrimaryCtxRetain, c"cuDevicePrimaryCtxRetain"),
            |st, _| check_dev(st, dev).and_then(|()| out(pctx, context_handle(dev as u32) as usize as CUcontext)),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard(|| {
        run(
            call(
                cbid::cuDevicePrimaryCtxRelease_v2,
                c"cuDevicePrimaryCtxRelease_v2",
            ),
            |st, _| check_dev(st, dev),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    guard(|| {
        run(
            call(
                cbid::cuDevicePrimaryCtxRelease,
                c"cuDevicePrimaryCtxRelease",
            ),
            |st, _| check_dev(st, dev),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    guard(|| {
        run(call(cbid::cuCtxSetCurrent, c"cuCtxSetCurrent"), |st, _| {
            match ctx as usize as u64 {
                0 => st.set_current(None),
                h => st.set_current(Some(device_of_context(h, st.cfg.devices).ok_or(CUDA_ERROR_INVALID_CONTEXT)?)),
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    guard(|| {
        run(call(cbid::cuCtxGetCurrent, c"cuCtxGetCurrent"), |st, _| {
            let h = st.current_context().map_or(0, context_handle);
            out(pctx, h as usize as CUcontext)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    guard(|| {
        run(call(cbid::cuCtxGetDevice, c"cuCtxGetDevice"), |st, _| {
            let d = st.current_context().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
            out(dev, d as CUdevice)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard(|| {
        run(
            call(cbid::cuCtxSynchronize, c"cuCtxSynchronize"),
            |st, ctx| {
                unsafe_call(st)?;
                ctx.wait_until_ns = Some(st.current_timeline().device_tail_ns());
                ctx.cost_ns = costs::SYNC_RETURN_NS;
                Ok(())
            },
        )
    })
}

fn create_stream(ph: *mut CUstream, flags: c_uint, c: Call) -> CUresult {
    run(c, |st, _| {
        if ph.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = st.current_timeline().create_stream(flags);
        out(ph, h as usize as CUstream)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut CUstream, flags: c_uint) -> CUresult {
    guard(|| create_stream(ph, flags, call(cbid::cuStreamCreate, c"cuStreamCreate")))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph: *mut CUstream,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    guard(|| {
        create_stream(
            ph,
            flags,
            call(
                cbid::cuStreamCreateWithPriority,
                c"cuStreamCreateWithPriority",
            ),
        )
    })
}

fn destroy_stream(h: CUstream, c: Call) -> CUresult {
    run(c, |st, _| {
        let hs = h as usize as u64;
        if !crate::sim::timeline::is_legacy(hs) && st.timeline_of(hs).is_some_and(|t| t.destroy_stream(hs)) {
            st.graphs.stream_destroyed(h as usize as u64);
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(h: CUstream) -> CUresult {
    guard(|| destroy_stream(h, call(cbid::cuStreamDestroy_v2, c"cuStreamDestroy_v2")))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy(h: CUstream) -> CUresult {
    guard(|| destroy_stream(h, call(cbid::cuStreamDestroy, c"cuStreamDestroy")))
}

/// Where everything enqueued so far on `h` ends; INVALID_HANDLE for an unknown stream.
pub(super) fn stream_tail(st: &State, h: CUstream) -> Result<u64, CUresult> {
    let d = st.stream_device(h as usize as u64).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    st.timelines[d as usize]
        .tail_ns(h as usize as u64)
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(h: CUstream) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuStreamSynchronize, c"cuStreamSynchronize"),
            |st, ctx| {
                unsafe_call(st)?;
                legacy_use(st, h as usize as u64)?;
                st.graphs.check_stream_wait(h as usize as u64)?;
                ctx.wait_until_ns = Some(stream_tail(st, h)?);
                ctx.cost_ns = costs::SYNC_RETURN_NS;
                Ok(())
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(h: CUstream) -> CUresult {
    guard(|| {
        run(call(cbid::cuStreamQuery, c"cuStreamQuery"), |st, ctx| {
            unsafe_call(st)?;
            legacy_use(st, h as usize as u64)?;
            st.graphs.check_stream_wait(h as usize as u64)?;
            if stream_tail(st, h)? > ctx.t0_ns {
                Err(CUDA_ERROR_NOT_READY)
            } else {
                Ok(())
            }
        })
    })
}

/// `CU_EVENT_WAIT_EXTERNAL` (cuda.h `CUevent_wait_flags`): in a capture, an event-wait node.
const CU_EVENT_WAIT_EXTERNAL: c_uint = 0x1;

/// Makes later work on `h` wait for `ev` (by placing a zero-length op at the event time).
/// Under capture (`sim::graphs::Graphs::wait_event`): waiting on an event recorded in a
/// capture forks `h` into that capture or joins it back; a capturing stream may not wait
/// on work recorded outside its capture (905) unless `CU_EVENT_WAIT_EXTERNAL` makes it an
/// event-wait node.
#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(h: CUstream, ev: CUevent, flags: c_uint) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuStreamWaitEvent, c"cuStreamWaitEvent"),
            |st, _| {
                let (hs, evh) = (h as usize as u64, ev as usize as u64);
                if flags & !CU_EVENT_WAIT_EXTERNAL != 0 {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                legacy_use(st, hs)?;
                let at = st
                    .events
                    .recorded_at(evh)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
                // Waiting on another device's event is allowed (Programming Guide, "Stream and
                // Event Behavior").
                let Some(dev) = st.stream_device(hs) else {
                    return Err(CUDA_ERROR_INVALID_HANDLE);
                };
                if crate::sim::timeline::is_legacy(hs) {
                    // The legacy / per-thread stream cannot take part in a capture.
                    if let Some(cap) = st.graphs.event_capture(evh) {
                        st.graphs.invalidate(cap);
                        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
                    }
                    not_captured_event(st, ev)?;
                } else {
                    let blocking = st.timelines[dev as usize].is_blocking(hs).unwrap_or(false);
                    let external = flags & CU_EVENT_WAIT_EXTERNAL != 0;
                    if st.graphs.wait_event(hs, blocking, evh, at.is_some(), external)? == Wait::Captured {
                        return Ok(());
                    }
                }
                if flags != 0 {
                    // cuda.h: CU_EVENT_WAIT_EXTERNAL "is invalid outside of stream capture".
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                if let Some(t) = at {
                    st.timelines[dev as usize]
                        .place(h as usize as u64, t, 0, WorkKind::Memory)
                        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
                }
                Ok(())
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(m: *mut CUmodule, _image: *const c_void) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuModuleLoadData, c"cuModuleLoadData"),
            |st, _| {
                let h = st.new_module();
                out(m, h as usize as CUmodule)
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    m: *mut CUmodule,
    _image: *const c_void,
    _n: c_uint,
    _opts: *mut c_void,
    _vals: *mut *mut c_void,
) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuModuleLoadDataEx, c"cuModuleLoadDataEx"),
            |st, _| {
                let h = st.new_module();
                out(m, h as usize as CUmodule)
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(m: CUmodule) -> CUresult {
    guard(|| {
        run(call(cbid::cuModuleUnload, c"cuModuleUnload"), |st, _| {
            if st.unload_module(m as usize as u64) {
                Ok(())
            } else {
                Err(CUDA_ERROR_INVALID_HANDLE)
            }
        })
    })
}

/// Any name resolves: the sim records it and uses it as the kernel name.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut CUfunction,
    m: CUmodule,
    name: *const c_char,
) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuModuleGetFunction, c"cuModuleGetFunction"),
            |st, _| {
                if !st.modules.contains(&(m as usize as u64)) {
                    return Err(CUDA_ERROR_INVALID_HANDLE);
                }
                if name.is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                // SAFETY: non-NULL NUL-terminated name from the caller.
                let n = unsafe { CStr::from_ptr(name) }.to_string_lossy();
                let h = st.new_function(m as usize as u64, &n);
                out(f, h as usize as CUfunction)
            },
        )
    })
}

/// Kernel duration per the crate convention (see module docs).
fn kernel_duration_ns(kernel_params: *mut *mut c_void) -> u64 {
    if kernel_params.is_null() {
        return costs::DEFAULT_KERNEL_NS;
    }
    // SAFETY: a non-NULL kernelParams is an array with one pointer per kernel argument;
    // by the sim's convention the first points to a u64 duration in ns.
    let first = unsafe { *kernel_params };
    if first.is_null() {
        return costs::DEFAULT_KERNEL_NS;
    }
    // SAFETY: see above; read unaligned to tolerate packed argument buffers.
    unsafe { (first as *const u64).read_unaligned() }
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_bytes: c_uint,
    h: CUstream,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard(|| {
        let name = sim().lock().functions.get(&(f as usize as u64)).map(|(_, n)| *n);
        let params = cudarc::cupti::sys::cuLaunchKernel_params_st {
            f: f as usize as _,
            gridDimX: gx,
            gridDimY: gy,
            gridDimZ: gz,
            blockDimX: bx,
            blockDimY: by,
            blockDimZ: bz,
            sharedMemBytes: shared_bytes,
            hStream: h as usize as _,
            kernelParams: kernel_params,
            extra,
        };
        let c = Call {
            cbid: cbid::cuLaunchKernel,
            name: c"cuLaunchKernel",
            params: &params as *const _ as *const c_void,
            symbol: name.map_or(null(), |n| n.as_ptr()),
        };
        run(c, |st, ctx| {
            let name = name.ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            if gx == 0
                || gy == 0
                || gz == 0
                || bx == 0
                || by == 0
                || bz == 0
                || (bx as u64) * (by as u64) * (bz as u64) > 1024
            {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let dur = kernel_duration_ns(kernel_params);
            ctx.cost_ns = costs::LAUNCH_HOST_NS;
            if captured(st, h as usize as u64)? {
                let op = NodeOp::Kernel {
                    name,
                    grid: [gx, gy, gz],
                    block: [bx, by, bz],
                    shared_bytes,
                };
                st.graphs.add_node(h as usize as u64, op, dur)?;
                return Ok(());
            }
            let ready = ctx.t0_ns + costs::LAUNCH_LATENCY_NS;
            // A launch into a stream of another device than the current one fails
            // (Programming Guide, "Stream and Event Behavior").
            let dev = st.stream_device(h as usize as u64).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            if dev != st.current_device() {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            let collective = st.collectives.get(&(f as usize as u64)).copied().filter(|_| st.node.in_node());
            let dur = match collective {
                // An NCCL kernel of a node's rank: its parameter is the message size; it
                // ends when every rank has arrived and the transfer is done (sim::node).
                Some(kind) => {
                    let start = ready.max(st.timelines[dev as usize].tail_ns(h as usize as u64).ok_or(CUDA_ERROR_INVALID_HANDLE)?);
                    st.node.collective(kind, dur, start) - start
                }
                None => dur,
            };
            let p = st.timelines[dev as usize]
                .place(h as usize as u64, ready, dur, WorkKind::Kernel)
                .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            if collective.is_none() {
                st.node.note_kernel(p.start_ns, p.end_ns);
            }
            st.grid_id += 1;
            if let Some(k) = st.cupti.kernel_kind() {
                let fields = KernelFields {
                    start_ns: p.start_ns,
                    end_ns: p.end_ns,
                    device_id: dev,
                    context_id: context_id(dev),
                    stream_id: p.stream_id,
                    grid: [gx as i32, gy as i32, gz as i32],
                    block: [bx as i32, by as i32, bz as i32],
                    dynamic_shared_bytes: shared_bytes as i32,
                    registers_per_thread: 32,
                    correlation_id: ctx.correlation_id,
                    grid_id: st.grid_id,
                    name_ptr: name.as_ptr() as usize,
                    graph_id: 0,
                    graph_node_id: 0,
                };
                ctx.records.push(records::kernel(k, &fields, st.cfg.cupti));
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(ph: *mut CUevent, flags: c_uint) -> CUresult {
    guard(|| {
        run(call(cbid::cuEventCreate, c"cuEventCreate"), |st, _| {
            if ph.is_null() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let d = st.current_device();
            let h = st.events.create(flags, d);
            out(ph, h as usize as CUevent)
        })
    })
}

fn destroy_event(ev: CUevent, c: Call) -> CUresult {
    run(c, |st, _| {
        if st.events.destroy(ev as usize as u64) {
            st.graphs.forget_event(ev as usize as u64);
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(ev: CUevent) -> CUresult {
    guard(|| destroy_event(ev, call(cbid::cuEventDestroy_v2, c"cuEventDestroy_v2")))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy(ev: CUevent) -> CUresult {
    guard(|| destroy_event(ev, call(cbid::cuEventDestroy, c"cuEventDestroy")))
}

/// `CU_EVENT_RECORD_EXTERNAL` (cuda.h `CUevent_record_flags`): in a capture, an event-record
/// node; invalid outside capture.
const CU_EVENT_RECORD_EXTERNAL: c_uint = 0x1;

/// `cuEventRecord` / `cuEventRecordWithFlags`: records at the stream's tail, or shortly after
/// the call if the stream is idle. On a capturing stream the event takes the stream's
/// dependency set instead (no timestamp: queries then fail with 907) or, with
/// `CU_EVENT_RECORD_EXTERNAL`, becomes an event-record node.
fn event_record(ev: CUevent, h: CUstream, flags: c_uint, c: Call) -> CUresult {
    run(c, |st, ctx| {
        ctx.cost_ns = costs::EVENT_RECORD_HOST_NS;
        let (evh, hs) = (ev as usize as u64, h as usize as u64);
        if flags & !CU_EVENT_RECORD_EXTERNAL != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if st.events.recorded_at(evh).is_none() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        // CUDA Programming Guide, "Stream and Event Behavior": recording fails when the
        // event and the stream belong to different devices (the legacy stream is the
        // calling thread's current device's).
        if st.stream_device(hs).is_some_and(|d| st.events.device(evh) != Some(d)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        if captured(st, hs)? {
            if flags & CU_EVENT_RECORD_EXTERNAL != 0 {
                st.graphs.add_node(hs, NodeOp::EventRecord { event: evh }, 0)?;
                return Ok(());
            }
            return st.graphs.record_event(hs, evh);
        }
        if flags & CU_EVENT_RECORD_EXTERNAL != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let at = stream_tail(st, h)?.max(ctx.t0_ns + costs::LAUNCH_LATENCY_NS);
        st.graphs.forget_event(evh);
        if st.events.record(evh, at) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    })
}

/// Records at the stream's tail, or shortly after the call if the stream is idle.
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(ev: CUevent, h: CUstream) -> CUresult {
    guard(|| {
        let params = cudarc::cupti::sys::cuEventRecord_params_st {
            hEvent: ev as usize as _,
            hStream: h as usize as _,
        };
        let c = Call {
            cbid: cbid::cuEventRecord,
            name: c"cuEventRecord",
            params: &params as *const _ as *const c_void,
            symbol: null(),
        };
        event_record(ev, h, 0, c)
    })
}

/// `cuEventRecord` with `CUevent_record_flags` (cuda.h 11.1+).
#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(ev: CUevent, h: CUstream, flags: c_uint) -> CUresult {
    guard(|| {
        let params = cudarc::cupti::sys::cuEventRecordWithFlags_params_st {
            hEvent: ev as usize as _,
            hStream: h as usize as _,
            flags,
        };
        let c = Call {
            cbid: cbid::cuEventRecordWithFlags,
            name: c"cuEventRecordWithFlags",
            params: &params as *const _ as *const c_void,
            symbol: null(),
        };
        event_record(ev, h, flags, c)
    })
}

fn event_status(s: crate::sim::events::EventStatus) -> CUresult {
    use crate::sim::events::EventStatus::*;
    match s {
        Ready => CUDA_SUCCESS,
        NotReady => CUDA_ERROR_NOT_READY,
        InvalidHandle => CUDA_ERROR_INVALID_HANDLE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(ev: CUevent) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuEventQuery, c"cuEventQuery"),
            |st, ctx| {
                unsafe_call(st)?;
                not_captured_event(st, ev)?;
                match event_status(st.events.query(ev as usize as u64, ctx.t0_ns)) {
                    CUDA_SUCCESS => Ok(()),
                    e => Err(e),
                }
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(ev: CUevent) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuEventSynchronize, c"cuEventSynchronize"),
            |st, ctx| {
                unsafe_call(st)?;
                not_captured_event(st, ev)?;
                let at = st
                    .events
                    .recorded_at(ev as usize as u64)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
                ctx.wait_until_ns = at;
                ctx.cost_ns = costs::SYNC_RETURN_NS;
                Ok(())
            },
        )
    })
}

fn elapsed(ms: *mut f32, a: CUevent, b: CUevent, c: Call) -> CUresult {
    run(c, |st, ctx| {
        not_captured_event(st, a)?;
        not_captured_event(st, b)?;
        let v = st
            .events
            .elapsed_ms(a as usize as u64, b as usize as u64, ctx.t0_ns)
            .map_err(event_status)?;
        // The GPU's timer drifts against the host clock (`GPUSPAN_SIM_GPU_CLOCK_PPM`).
        let v = if st.cfg.gpu_clock_ppm == 0 { v } else { (v as f64 * (1.0 + st.cfg.gpu_clock_ppm as f64 * 1e-6)) as f32 };
        out(ms, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: CUevent, b: CUevent) -> CUresult {
    guard(|| {
        elapsed(
            ms,
            a,
            b,
            call(cbid::cuEventElapsedTime, c"cuEventElapsedTime"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: CUevent, b: CUevent) -> CUresult {
    guard(|| {
        elapsed(
            ms,
            a,
            b,
            call(cbid::cuEventElapsedTime_v2, c"cuEventElapsedTime_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    guard(|| {
        run(call(cbid::cuMemAlloc_v2, c"cuMemAlloc_v2"), |st, _| {
            unsafe_call(st)?;
            if dptr.is_null() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let p = st.alloc(bytes as u64).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
            out(dptr, p)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard(|| {
        run(call(cbid::cuMemFree_v2, c"cuMemFree_v2"), |st, _| {
            unsafe_call(st)?;
            if st.free(dptr) {
                Ok(())
            } else {
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        })
    })
}

/// Direction of a copy: CUPTI copyKind, srcKind, dstKind and bandwidth.
#[derive(Clone, Copy)]
pub(super) enum Dir {
    HtoD,
    DtoH,
    DtoD,
}

impl Dir {
    /// (`CUpti_ActivityMemcpyKind`, src `CUpti_ActivityMemoryKind`, dst kind, bytes/µs).
    fn cupti(self) -> (u8, u8, u8, u64) {
        match self {
            Dir::HtoD => (1, 1, 3, device::HOST_COPY_BYTES_PER_US),
            Dir::DtoH => (2, 3, 1, device::HOST_COPY_BYTES_PER_US),
            Dir::DtoD => (8, 3, 3, device::DEVICE_COPY_BYTES_PER_US),
        }
    }
}

/// GPU time of moving `bytes` at `bytes_per_us`, plus the fixed setup cost.
pub(super) fn transfer_ns(bytes: u64, bytes_per_us: u64) -> u64 {
    device::COPY_SETUP_NS + (bytes as u128 * 1_000 / bytes_per_us as u128) as u64
}

/// A copy's or memset's record fields; `dev` is its stream's device.
fn mem_fields(dev: u32, ctx: &Ctx, p: crate::sim::timeline::Placed, bytes: u64) -> MemFields {
    MemFields {
        start_ns: p.start_ns,
        end_ns: p.end_ns,
        bytes,
        device_id: dev,
        context_id: context_id(dev),
        stream_id: p.stream_id,
        correlation_id: ctx.correlation_id,
        graph_id: 0,
        graph_node_id: 0,
    }
}

/// A copy on stream `h`; synchronous copies use the legacy stream and wait for the end.
fn memcpy(dir: Dir, bytes: usize, h: CUstream, is_async: bool, c: Call) -> CUresult {
    run(c, |st, ctx| {
        let (ck, sk, dk, bw) = dir.cupti();
        let stream = if is_async { h as usize as u64 } else { 0 };
        ctx.cost_ns = costs::ASYNC_COPY_HOST_NS;
        if !is_async {
            unsafe_call(st)?;
        }
        if captured(st, stream)? {
            let op = NodeOp::Memcpy { copy_kind: ck, src_kind: sk, dst_kind: dk, bytes: bytes as u64 };
            st.graphs.add_node(stream, op, transfer_ns(bytes as u64, bw))?;
            return Ok(());
        }
        let ready = ctx.t0_ns + costs::LAUNCH_LATENCY_NS;
        // A copy may go to a stream of another device than the current one (Programming
        // Guide, "Stream and Event Behavior").
        let dev = st.stream_device(stream).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let p = st.timelines[dev as usize]
            .place(
                stream,
                ready,
                transfer_ns(bytes as u64, bw),
                WorkKind::Memory,
            )
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if !is_async {
            ctx.wait_until_ns = Some(p.end_ns);
        }
        if st.cupti.is_enabled(kind::MEMCPY) {
            let f = mem_fields(dev, ctx, p, bytes as u64);
            ctx.records
                .push(records::memcpy(&f, ck, sk, dk, is_async, st.cfg.cupti));
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    _dst: CUdeviceptr,
    _src: *const c_void,
    n: usize,
) -> CUresult {
    guard(|| {
        memcpy(
            Dir::HtoD,
            n,
            std::ptr::null_mut(),
            false,
            call(cbid::cuMemcpyHtoD_v2, c"cuMemcpyHtoD_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    _dst: *mut c_void,
    _src: CUdeviceptr,
    n: usize,
) -> CUresult {
    guard(|| {
        memcpy(
            Dir::DtoH,
            n,
            std::ptr::null_mut(),
            false,
            call(cbid::cuMemcpyDtoH_v2, c"cuMemcpyDtoH_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    _dst: CUdeviceptr,
    _src: CUdeviceptr,
    n: usize,
) -> CUresult {
    guard(|| {
        memcpy(
            Dir::DtoD,
            n,
            std::ptr::null_mut(),
            false,
            call(cbid::cuMemcpyDtoD_v2, c"cuMemcpyDtoD_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    _dst: CUdeviceptr,
    _src: *const c_void,
    n: usize,
    h: CUstream,
) -> CUresult {
    guard(|| {
        memcpy(
            Dir::HtoD,
            n,
            h,
            true,
            call(cbid::cuMemcpyHtoDAsync_v2, c"cuMemcpyHtoDAsync_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    _dst: *mut c_void,
    _src: CUdeviceptr,
    n: usize,
    h: CUstream,
) -> CUresult {
    guard(|| {
        memcpy(
            Dir::DtoH,
            n,
            h,
            true,
            call(cbid::cuMemcpyDtoHAsync_v2, c"cuMemcpyDtoHAsync_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    _dst: CUdeviceptr,
    _src: CUdeviceptr,
    n: usize,
    h: CUstream,
) -> CUresult {
    guard(|| {
        memcpy(
            Dir::DtoD,
            n,
            h,
            true,
            call(cbid::cuMemcpyDtoDAsync_v2, c"cuMemcpyDtoDAsync_v2"),
        )
    })
}

/// A memset of `bytes` on stream `h`; synchronous ones use the legacy stream and wait.
fn memset(bytes: u64, value: u32, h: CUstream, is_async: bool, c: Call) -> CUresult {
    run(c, |st, ctx| {
        let stream = if is_async { h as usize as u64 } else { 0 };
        ctx.cost_ns = costs::ASYNC_COPY_HOST_NS;
        let dur = transfer_ns(bytes, device::MEMSET_BYTES_PER_US);
        if !is_async {
            unsafe_call(st)?;
        }
        if captured(st, stream)? {
            st.graphs.add_node(stream, NodeOp::Memset { bytes, value }, dur)?;
            return Ok(());
        }
        let ready = ctx.t0_ns + costs::LAUNCH_LATENCY_NS;
        let dev = st.stream_device(stream).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let p = st.timelines[dev as usize]
            .place(stream, ready, dur, WorkKind::Memory)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if !is_async {
            ctx.wait_until_ns = Some(p.end_ns);
        }
        if st.cupti.is_enabled(kind::MEMSET) {
            let f = mem_fields(dev, ctx, p, bytes);
            ctx.records
                .push(records::memset(&f, value, is_async, st.cfg.cupti));
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(_dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    guard(|| {
        memset(
            n as u64,
            v as u32,
            std::ptr::null_mut(),
            false,
            call(cbid::cuMemsetD8_v2, c"cuMemsetD8_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(_dst: CUdeviceptr, v: c_uint, n: usize) -> CUresult {
    guard(|| {
        memset(
            n as u64 * 4,
            v,
            std::ptr::null_mut(),
            false,
            call(cbid::cuMemsetD32_v2, c"cuMemsetD32_v2"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    _dst: CUdeviceptr,
    v: u8,
    n: usize,
    h: CUstream,
) -> CUresult {
    guard(|| {
        memset(
            n as u64,
            v as u32,
            h,
            true,
            call(cbid::cuMemsetD8Async, c"cuMemsetD8Async"),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    _dst: CUdeviceptr,
    v: c_uint,
    n: usize,
    h: CUstream,
) -> CUresult {
    guard(|| {
        memset(
            n as u64 * 4,
            v,
            h,
            true,
            call(cbid::cuMemsetD32Async, c"cuMemsetD32Async"),
        )
    })
}

/// (name, description) of the codes the sim returns (cuda.h `cudaError_enum` docs).
fn error_text(e: c_int) -> Option<(&'static CStr, &'static CStr)> {
    Some(match e {
        0 => (c"CUDA_SUCCESS", c"no error"),
        1 => (c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
        2 => (c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
        3 => (c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
        100 => (
            c"CUDA_ERROR_NO_DEVICE",
            c"no CUDA-capable device is detected",
        ),
        101 => (c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
        201 => (c"CUDA_ERROR_INVALID_CONTEXT", c"invalid device context"),
        400 => (c"CUDA_ERROR_INVALID_HANDLE", c"invalid resource handle"),
        401 => (
            c"CUDA_ERROR_ILLEGAL_STATE",
            c"the operation cannot be performed in the present state",
        ),
        500 => (c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
        600 => (c"CUDA_ERROR_NOT_READY", c"device not ready"),
        900 => (
            c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
            c"operation not permitted when stream is capturing",
        ),
        901 => (
            c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
            c"operation failed due to a previous error during capture",
        ),
        902 => (
            c"CUDA_ERROR_STREAM_CAPTURE_MERGE",
            c"operation would result in a merge of separate capture sequences",
        ),
        903 => (
            c"CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
            c"capture was not ended in the same stream as it began",
        ),
        904 => (
            c"CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
            c"capturing stream has unjoined work",
        ),
        905 => (
            c"CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
            c"dependency created on uncaptured work in another stream",
        ),
        906 => (
            c"CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
            c"operation would make the legacy stream depend on a capturing blocking stream",
        ),
        907 => (
            c"CUDA_ERROR_CAPTURED_EVENT",
            c"operation not permitted on an event last recorded in a capturing stream",
        ),
        908 => (
            c"CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
            c"attempt to terminate a thread-local capture sequence from another thread",
        ),
        999 => (c"CUDA_ERROR_UNKNOWN", c"unknown error"),
        _ => return None,
    })
}

/// `error` is a `CUresult`; taken as int so unknown values are not UB.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: c_int, s: *mut *const c_char) -> CUresult {
    guard(|| match error_text(error) {
        Some((_, d)) => out(s, d.as_ptr()).err().unwrap_or(CUDA_SUCCESS),
        None => CUDA_ERROR_INVALID_VALUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: c_int, s: *mut *const c_char) -> CUresult {
    guard(|| match error_text(error) {
        Some((n, _)) => out(s, n.as_ptr()).err().unwrap_or(CUDA_SUCCESS),
        None => CUDA_ERROR_INVALID_VALUE,
    })
}

/// Entry points whose symbol depends on the caller's CUDA version, as the real driver's
/// per-version table resolves them: `(name, minimum cudaVersion, export)`, newest first. From
/// cuda.h's `#define`s: 12.x `cuGraphInstantiate` → `cuGraphInstantiateWithFlags` (11.x:
/// `cuGraphInstantiate_v2`), `cuStreamGetCaptureInfo` → `_v2` from 11.3 (13.x: `_v3`),
/// `cuStreamBeginCapture` → `_v2` from 10.1. Below every minimum the unversioned export.
const VERSIONED_SYMBOLS: &[(&str, c_int, &str)] = &[
    ("cuGraphInstantiate", 12000, "cuGraphInstantiateWithFlags"),
    ("cuGraphInstantiate", 11000, "cuGraphInstantiate_v2"),
    ("cuStreamGetCaptureInfo", 13000, "cuStreamGetCaptureInfo_v3"),
    ("cuStreamGetCaptureInfo", 11030, "cuStreamGetCaptureInfo_v2"),
    ("cuStreamBeginCapture", 10010, "cuStreamBeginCapture_v2"),
];

/// The export `cuGetProcAddress_v2` hands out for `name` at `cuda_version`.
fn resolve_symbol(name: &str, cuda_version: c_int) -> Option<*mut c_void> {
    if VERSIONED_SYMBOLS.iter().any(|(n, _, _)| *n == name) {
        let pick = VERSIONED_SYMBOLS
            .iter()
            .find(|(n, min, _)| *n == name && cuda_version >= *min)
            .map_or(name, |(_, _, export)| export);
        return super::ext::own_symbol(pick);
    }
    super::ext::own_symbol(&format!("{name}_v2")).or_else(|| super::ext::own_symbol(name))
}

/// Resolves `symbol` to this library's export of the same name (trying `_v2` first, as
/// the per-version table of the real driver would for 12.x callers; the names of
/// `VERSIONED_SYMBOLS` by `cuda_version`).
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    _flags: cuuint64_t,
    status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    guard(|| {
        if symbol.is_null() || pfn.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: non-NULL NUL-terminated symbol name from the caller.
        let name = unsafe { CStr::from_ptr(symbol) }
            .to_string_lossy()
            .into_owned();
        let found = resolve_symbol(&name, cuda_version);
        let (p, st, r) = match found {
            Some(p) => (
                p,
                CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SUCCESS,
                CUDA_SUCCESS,
            ),
            None => (
                std::ptr::null_mut(),
                CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
                CUDA_ERROR_NOT_FOUND,
            ),
        };
        // SAFETY: `pfn` is non-NULL (checked); `status` may be NULL and is then skipped.
        unsafe {
            *pfn = p;
            if !status.is_null() {
                *status = st;
            }
        }
        r
    })
}

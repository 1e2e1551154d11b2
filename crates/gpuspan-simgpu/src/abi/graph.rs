//! Stream capture and CUDA graph entry points of `libcuda.so.1` (cuda.h 12.9 signatures;
//! the unversioned `cuStreamBeginCapture`, `cuStreamGetCaptureInfo` and `cuGraphInstantiate`
//! exports are the legacy forms cuda.h declares under `__CUDA_API_VERSION_INTERNAL`, which
//! its macros redirect new callers away from). State and rules: [`crate::sim::graphs`].
//!
//! A graph launch runs the exec's nodes on `hStream`'s timeline the way launches place
//! work (ready at the call's entry + [`costs::LAUNCH_LATENCY_NS`], behind the stream's
//! earlier work and the exec's previous launch), each node when its dependencies have
//! ended. Every kernel node writes a kernel record with the `cuGraphLaunch` call's
//! correlation id and its `graphId` / `graphNodeId`; copies and sets write memcpy / memset
//! records likewise. The call costs [`costs::GRAPH_LAUNCH_HOST_NS`] of host time whatever
//! the node count.

// Safety contract of every export: the C prototype of the function it replaces (cuda.h):
// pointer arguments are NULL or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::cbid;
use super::cuda::{call, captured, out, run, stream_tail};
use super::guard;
use crate::sim::graphs::{self, CaptureMode, CaptureStatus, NodeOp};
use crate::sim::records::{self, kind, KernelFields, MemFields};
use crate::sim::timeline::{is_legacy, WorkKind};
use crate::sim::trace::{Call, Ctx};
use crate::sim::{context_id, costs, os_tid, State};
use cudarc::driver::sys::{cuuint64_t, CUgraph, CUgraphExec, CUgraphNode, CUresult, CUstream};
use std::ffi::{c_char, c_uint, c_ulonglong, c_void};
use std::ptr::null;

use CUresult::*;

/// `CU_STREAM_PER_THREAD` (cuda.h): what stream 0 means to the `_ptsz` entry points.
const CU_STREAM_PER_THREAD: u64 = 0x2;

/// Flags `cuGraphInstantiateWithFlags` accepts (cuda.h `CUgraphInstantiate_flags`:
/// AUTO_FREE_ON_LAUNCH 1, UPLOAD 2, DEVICE_LAUNCH 4, USE_NODE_PRIORITY 8).
const INSTANTIATE_FLAGS: c_ulonglong = 0x1 | 0x2 | 0x4 | 0x8;

fn begin_capture(h: CUstream, mode: c_uint, c: Call) -> CUresult {
    run(c, |st, _| {
        let hs = h as usize as u64;
        if is_legacy(hs) {
            // cuda.h: "Capture may not be initiated if stream is CU_STREAM_LEGACY".
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        let blocking = st
            .timeline_of(hs)
            .and_then(|t| t.is_blocking(hs))
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let mode = CaptureMode::from_raw(mode).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        st.graphs.begin(hs, blocking, mode, os_tid()).map(|_| ())
    })
}

/// The CUDA 10.0 form (no mode argument; cbid 495): a GLOBAL-mode capture, the default
/// mode of cuda.h.
#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture(h: CUstream) -> CUresult {
    guard(|| {
        begin_capture(
            h,
            CaptureMode::Global.raw(),
            call(cbid::cuStreamBeginCapture, c"cuStreamBeginCapture"),
        )
    })
}

/// `mode` is a `CUstreamCaptureMode`; taken as an int so unknown values are not UB.
#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(h: CUstream, mode: c_uint) -> CUresult {
    guard(|| {
        begin_capture(
            h,
            mode,
            call(cbid::cuStreamBeginCapture_v2, c"cuStreamBeginCapture_v2"),
        )
    })
}

/// Ends the capture begun on `h`: the graph, or NULL with 901 (invalidated; always under
/// the `capture_invalidated` fault) / 904 (unjoined fork); 401 when `h` is not capturing,
/// 903 when `h` is not where it began, 908 for a non-RELAXED capture ended from another
/// thread.
#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(h: CUstream, ph: *mut CUgraph) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuStreamEndCapture, c"cuStreamEndCapture"),
            |st, _| {
                if ph.is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                if st.cfg.faults.capture_invalidated {
                    if let Some(id) = st.graphs.capture_of(h as usize as u64).map(|c| c.id) {
                        st.graphs.invalidate(id);
                    }
                }
                match st.graphs.end(h as usize as u64, os_tid()) {
                    Ok(g) => out(ph, g as usize as CUgraph),
                    Err(e) => {
                        if matches!(
                            e,
                            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                                | CUDA_ERROR_STREAM_CAPTURE_UNJOINED
                        ) {
                            out(ph, std::ptr::null_mut())?;
                        }
                        Err(e)
                    }
                }
            },
        )
    })
}

/// The capture status of `h` (allowed during any capture; invalidates nothing). The legacy
/// stream while a blocking stream captures: 906 (cuda.h `cuStreamIsCapturing`).
fn capture_status(st: &State, h: u64) -> Result<CaptureStatus, CUresult> {
    if h == 0 || h == super::cuda::CU_STREAM_LEGACY {
        if st.graphs.blocking_capture() {
            return Err(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
        }
        return Ok(CaptureStatus::None);
    }
    if st.stream_device(h).is_none() {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    Ok(st.graphs.status(h))
}

/// `status` is a `CUstreamCaptureStatus*`, written as a u32.
#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(h: CUstream, status: *mut c_uint) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuStreamIsCapturing, c"cuStreamIsCapturing"),
            |st, _| {
                if status.is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                out(status, capture_status(st, h as usize as u64)?.raw())
            },
        )
    })
}

/// Out-pointers of the `cuStreamGetCaptureInfo` family (any may be NULL but `status`).
struct InfoOut {
    status: *mut c_uint,
    id: *mut cuuint64_t,
    graph: *mut CUgraph,
    deps: *mut *const CUgraphNode,
    edges: *mut *const c_void,
    num_deps: *mut usize,
}

/// Writes `v` through `p` when it is not NULL.
fn out_opt<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL out-pointer from the caller, valid for a `T` per cuda.h.
        unsafe { p.write(v) };
    }
}

fn capture_info(h: CUstream, o: InfoOut, c: Call) -> CUresult {
    run(c, |st, _| {
        if o.status.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let hs = h as usize as u64;
        let status = capture_status(st, hs)?;
        out(o.status, status.raw())?;
        if status == CaptureStatus::None {
            return Ok(());
        }
        let info = st.graphs.info(hs).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        out_opt(o.id, info.id);
        out_opt(o.graph, info.graph as usize as CUgraph);
        out_opt(o.deps, info.deps as *const CUgraphNode);
        out_opt(o.edges, info.edges as *const c_void);
        out_opt(o.num_deps, info.num_deps);
        Ok(())
    })
}

/// The CUDA 10.1 form: status and capture id only.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo(
    h: CUstream,
    status: *mut c_uint,
    id: *mut cuuint64_t,
) -> CUresult {
    guard(|| {
        let o = InfoOut {
            status,
            id,
            graph: std::ptr::null_mut(),
            deps: std::ptr::null_mut(),
            edges: std::ptr::null_mut(),
            num_deps: std::ptr::null_mut(),
        };
        capture_info(
            h,
            o,
            call(cbid::cuStreamGetCaptureInfo, c"cuStreamGetCaptureInfo"),
        )
    })
}

/// What cuda.h 11.3 … 12.9 calls `cuStreamGetCaptureInfo`.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v2(
    h: CUstream,
    status: *mut c_uint,
    id: *mut cuuint64_t,
    graph: *mut CUgraph,
    deps: *mut *const CUgraphNode,
    num_deps: *mut usize,
) -> CUresult {
    guard(|| {
        let o = InfoOut {
            status,
            id,
            graph,
            deps,
            edges: std::ptr::null_mut(),
            num_deps,
        };
        capture_info(
            h,
            o,
            call(
                cbid::cuStreamGetCaptureInfo_v2,
                c"cuStreamGetCaptureInfo_v2",
            ),
        )
    })
}

/// What cuda.h 13.x calls `cuStreamGetCaptureInfo` (12.3+): also the edge data, all default
/// edges for captured work. `edges` without `deps` is INVALID_VALUE (cuda.h).
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v3(
    h: CUstream,
    status: *mut c_uint,
    id: *mut cuuint64_t,
    graph: *mut CUgraph,
    deps: *mut *const CUgraphNode,
    edges: *mut *const c_void,
    num_deps: *mut usize,
) -> CUresult {
    guard(|| {
        let c = call(
            cbid::cuStreamGetCaptureInfo_v3,
            c"cuStreamGetCaptureInfo_v3",
        );
        if !edges.is_null() && deps.is_null() {
            return run(c, |_, _| Err(CUDA_ERROR_INVALID_VALUE));
        }
        capture_info(
            h,
            InfoOut {
                status,
                id,
                graph,
                deps,
                edges,
                num_deps,
            },
            c,
        )
    })
}

/// Swaps the calling thread's capture interaction mode (`mode` is a `CUstreamCaptureMode*`).
#[no_mangle]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_uint) -> CUresult {
    guard(|| {
        run(
            call(
                cbid::cuThreadExchangeStreamCaptureMode,
                c"cuThreadExchangeStreamCaptureMode",
            ),
            |_, _| {
                if mode.is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                // SAFETY: non-NULL in/out pointer to a CUstreamCaptureMode from the caller.
                let want = unsafe { mode.read() };
                let want = CaptureMode::from_raw(want).ok_or(CUDA_ERROR_INVALID_VALUE)?;
                out(mode, graphs::exchange_thread_mode(want).raw())
            },
        )
    })
}

fn instantiate(exec: *mut CUgraphExec, graph: CUgraph, flags: c_ulonglong, c: Call) -> CUresult {
    run(c, |st, ctx| {
        if exec.is_null() || flags & !INSTANTIATE_FLAGS != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let n = st
            .graphs
            .graph(graph as usize as u64)
            .map(|g| g.nodes.len() as u64);
        let h = st.graphs.instantiate(graph as usize as u64)?;
        ctx.cost_ns =
            costs::DEFAULT_CALL_NS + n.unwrap_or(0) * costs::GRAPH_INSTANTIATE_NS_PER_NODE;
        out(exec, h as usize as CUgraphExec)
    })
}

/// The CUDA 11 form (also the legacy unversioned export): on failure `*errNode` = NULL
/// when given and a one-line reason in `log` (NUL-terminated, cut to `log_bytes`).
fn instantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    err_node: *mut CUgraphNode,
    log: *mut c_char,
    log_bytes: usize,
    c: Call,
) -> CUresult {
    let r = instantiate(exec, graph, 0, c);
    if r != CUDA_SUCCESS {
        out_opt(err_node, std::ptr::null_mut());
        if !log.is_null() && log_bytes > 0 {
            let msg = b"gpuspan-simgpu: not a graph made by cuStreamEndCapture";
            let n = msg.len().min(log_bytes - 1);
            // SAFETY: the caller provides `log_bytes` writable bytes at `log`; n + 1 ≤ that.
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), log as *mut u8, n);
                *log.add(n) = 0;
            }
        }
    }
    r
}

/// The legacy unversioned export (cuda.h `__CUDA_API_VERSION_INTERNAL`: the 5-argument
/// form; 12.x callers reach `cuGraphInstantiateWithFlags` through the header's macro).
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    err_node: *mut CUgraphNode,
    log: *mut c_char,
    log_bytes: usize,
) -> CUresult {
    guard(|| {
        instantiate_v2(
            exec,
            graph,
            err_node,
            log,
            log_bytes,
            call(cbid::cuGraphInstantiate, c"cuGraphInstantiate"),
        )
    })
}

/// What cuda.h 11.x calls `cuGraphInstantiate`.
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    err_node: *mut CUgraphNode,
    log: *mut c_char,
    log_bytes: usize,
) -> CUresult {
    guard(|| {
        instantiate_v2(
            exec,
            graph,
            err_node,
            log,
            log_bytes,
            call(cbid::cuGraphInstantiate_v2, c"cuGraphInstantiate_v2"),
        )
    })
}

/// What cuda.h 12.x calls `cuGraphInstantiate`.
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    flags: c_ulonglong,
) -> CUresult {
    guard(|| {
        instantiate(
            exec,
            graph,
            flags,
            call(
                cbid::cuGraphInstantiateWithFlags,
                c"cuGraphInstantiateWithFlags",
            ),
        )
    })
}

/// Places exec `e`'s nodes on stream `s` and writes their GPU records (module docs).
fn launch_exec(st: &mut State, ctx: &mut Ctx, e: u64, s: u64) -> Result<(), CUresult> {
    let exec = st.graphs.exec(e).ok_or(CUDA_ERROR_INVALID_VALUE)?.clone();
    let ready = ctx.t0_ns + costs::LAUNCH_LATENCY_NS;
    let base = ready
        .max(stream_tail(st, s as usize as CUstream)?)
        .max(exec.tail_ns);
    let times = graphs::schedule(&exec.nodes, base, |n| match n.op {
        NodeOp::EventWait { event } => st.events.recorded_at(event).flatten().unwrap_or(0),
        _ => 0,
    });
    let end = times.iter().map(|t| t.1).max().unwrap_or(base);
    // A graph runs on the device of the stream it is launched into.
    let dev = st.stream_device(s).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let stream_id = st.timelines[dev as usize]
        .extend_tail(s, end)
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    if let Some(x) = st.graphs.exec_mut(e) {
        x.tail_ns = end;
    }
    let abi = st.cfg.cupti;
    for (n, &(start_ns, end_ns)) in exec.nodes.iter().zip(&times) {
        let mem = MemFields {
            start_ns,
            end_ns,
            bytes: 0,
            device_id: dev,
            context_id: context_id(dev),
            stream_id,
            correlation_id: ctx.correlation_id,
            graph_id: exec.graph_id,
            graph_node_id: n.id,
        };
        match &n.op {
            NodeOp::Kernel {
                name,
                grid,
                block,
                shared_bytes,
            } => {
                st.timelines[dev as usize].add_busy(WorkKind::Kernel, start_ns, end_ns);
                st.grid_id += 1;
                if let Some(k) = st.cupti.kernel_kind() {
                    let f = KernelFields {
                        start_ns,
                        end_ns,
                        device_id: dev,
                        context_id: context_id(dev),
                        stream_id,
                        grid: grid.map(|v| v as i32),
                        block: block.map(|v| v as i32),
                        dynamic_shared_bytes: *shared_bytes as i32,
                        registers_per_thread: 32,
                        correlation_id: ctx.correlation_id,
                        grid_id: st.grid_id,
                        name_ptr: name.as_ptr() as usize,
                        graph_id: exec.graph_id,
                        graph_node_id: n.id,
                    };
                    ctx.records.push(records::kernel(k, &f, abi));
                }
            }
            NodeOp::Memcpy {
                copy_kind,
                src_kind,
                dst_kind,
                bytes,
            } => {
                st.timelines[dev as usize].add_busy(WorkKind::Memory, start_ns, end_ns);
                if st.cupti.is_enabled(kind::MEMCPY) {
                    let f = MemFields {
                        bytes: *bytes,
                        ..mem
                    };
                    ctx.records.push(records::memcpy(
                        &f, *copy_kind, *src_kind, *dst_kind, true, abi,
                    ));
                }
            }
            NodeOp::Memset { bytes, value } => {
                st.timelines[dev as usize].add_busy(WorkKind::Memory, start_ns, end_ns);
                if st.cupti.is_enabled(kind::MEMSET) {
                    let f = MemFields {
                        bytes: *bytes,
                        ..mem
                    };
                    ctx.records.push(records::memset(&f, *value, true, abi));
                }
            }
            NodeOp::EventRecord { event } => {
                st.graphs.forget_event(*event);
                st.events.record(*event, start_ns);
            }
            NodeOp::EventWait { .. } => {}
        }
    }
    Ok(())
}

fn graph_launch(exec: CUgraphExec, h: CUstream, c: Call) -> CUresult {
    run(c, |st, ctx| {
        let (e, s) = (exec as usize as u64, h as usize as u64);
        ctx.cost_ns = costs::GRAPH_LAUNCH_HOST_NS;
        if st.graphs.exec(e).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if captured(st, s)? {
            // A graph launched into a capturing stream becomes part of the captured graph.
            return st.graphs.capture_exec(s, e);
        }
        launch_exec(st, ctx, e, s)
    })
}

/// Launches an executable graph on `h` (cbid 514; see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: CUgraphExec, h: CUstream) -> CUresult {
    guard(|| {
        let params = cudarc::cupti::sys::cuGraphLaunch_params_st {
            hGraph: exec as usize as _,
            hStream: h as usize as _,
        };
        let c = Call {
            cbid: cbid::cuGraphLaunch,
            name: c"cuGraphLaunch",
            params: &params as *const _ as *const c_void,
            symbol: null(),
        };
        graph_launch(exec, h, c)
    })
}

/// `cuGraphLaunch` where stream 0 is the per-thread default stream (cbid 515).
#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(exec: CUgraphExec, h: CUstream) -> CUresult {
    guard(|| {
        let h = if h.is_null() {
            CU_STREAM_PER_THREAD as usize as CUstream
        } else {
            h
        };
        let params = cudarc::cupti::sys::cuGraphLaunch_ptsz_params_st {
            hGraphExec: exec as usize as _,
            hStream: h as usize as _,
        };
        let c = Call {
            cbid: cbid::cuGraphLaunch_ptsz,
            name: c"cuGraphLaunch_ptsz",
            params: &params as *const _ as *const c_void,
            symbol: null(),
        };
        graph_launch(exec, h, c)
    })
}

/// Destroys an executable graph (INVALID_VALUE for an unknown handle).
#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    guard(|| {
        run(
            call(cbid::cuGraphExecDestroy, c"cuGraphExecDestroy"),
            |st, _| {
                if st.graphs.destroy_exec(exec as usize as u64) {
                    Ok(())
                } else {
                    Err(CUDA_ERROR_INVALID_VALUE)
                }
            },
        )
    })
}

/// Destroys a graph; its executable graphs stay usable (INVALID_VALUE for an unknown handle).
#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(graph: CUgraph) -> CUresult {
    guard(|| {
        run(call(cbid::cuGraphDestroy, c"cuGraphDestroy"), |st, _| {
            if st.graphs.destroy_graph(graph as usize as u64) {
                Ok(())
            } else {
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        })
    })
}

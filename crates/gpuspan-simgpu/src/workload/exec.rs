//! Plays a [`Workload`] through the CUDA driver API, like a real inference worker.
//!
//! `libcuda.so.1` is opened at run time with `libloading` (never linked), so the same binary
//! drives the simulated H100 (the sim's cdylib installed under that soname first on
//! `LD_LIBRARY_PATH`) or a real driver. `cuInit(0)` is where the driver honours
//! `CUDA_INJECTION64_PATH`; NVTX ranges go through [`crate::nvtx_loader`], so the agent's
//! `InitializeInjectionNvtx2` path is the one exercised.
//!
//! Conventions agreed with the simulator: every kernel is the `spin` kernel's image loaded
//! with `cuModuleLoadData` and looked up under the recorded kernel name
//! (`cuModuleGetFunction` accepts any name in the sim; on a real driver unknown names fall
//! back to `spin`); the kernel's only parameter is a `u64` duration in ns, which the sim
//! reads from `kernelParams[0]` and the real `spin` kernel busy-waits for. Host gaps use the
//! sim's `gpuspanSimAdvanceHostNs` when the virtual clock is on, else the thread sleeps.
//!
//! With [`ExecOptions::cuda_graph`] each step's forward pass ([`super::graph_plan`]) is
//! captured into a CUDA graph the first time its kernels are seen (`cuStreamBeginCapture_v2`
//! in GLOBAL mode on the origin stream; other streams forked in and joined back with
//! events; `cuStreamEndCapture`, `cuGraphInstantiateWithFlags`) and every step launches its
//! graph with one `cuGraphLaunch` on the origin stream. During a capture the region's ops
//! are issued as usual (its NVTX ranges and host gaps run on the CPU, its launches become
//! graph nodes); on later steps they are skipped: the CPU code of a captured forward pass
//! does not run on replay. Ops outside the regions run normally.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::fmt;
use std::ptr::null_mut;

use libloading::Library;

use super::graph_plan::{self, GraphPlan, GraphRegion};
use super::{parallel, MemcpyKind, Op, Workload};
use crate::nvtx_loader;

/// PTX of the `spin` kernel: busy-waits `%globaltimer` for its `u64` parameter (ns).
pub const SPIN_PTX: &str = r#".version 7.8
.target sm_90
.address_size 64

.visible .entry spin(.param .u64 spin_param_0)
{
	.reg .pred 	%p<2>;
	.reg .b64 	%rd<6>;

	ld.param.u64 	%rd1, [spin_param_0];
	mov.u64 	%rd2, %globaltimer;
$L__spin:
	mov.u64 	%rd3, %globaltimer;
	sub.s64 	%rd4, %rd3, %rd2;
	setp.lt.u64 	%p1, %rd4, %rd1;
	@%p1 bra 	$L__spin;
	ret;
}
"#;

/// `CU_STREAM_NON_BLOCKING` (cuda.h `CUstream_flags`).
pub const CU_STREAM_NON_BLOCKING: c_uint = 0x1;

/// Largest device / host buffer used for copies, bytes (larger copies are clamped).
pub const MAX_COPY_BYTES: u64 = 512 << 20;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuStream = *mut c_void;
type CuDevicePtr = u64;
type CuEvent = *mut c_void;
type CuGraph = *mut c_void;
type CuGraphExec = *mut c_void;

type FnInit = unsafe extern "C" fn(c_uint) -> CuResult;
type FnDeviceGet = unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult;
type FnDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult;
type FnPrimaryCtxRetain = unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult;
type FnPrimaryCtxRelease = unsafe extern "C" fn(CuDevice) -> CuResult;
type FnCtxSetCurrent = unsafe extern "C" fn(CuContext) -> CuResult;
type FnCtxSynchronize = unsafe extern "C" fn() -> CuResult;
type FnModuleLoadData = unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult;
type FnModuleGetFunction =
    unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult;
type FnModuleUnload = unsafe extern "C" fn(CuModule) -> CuResult;
type FnStreamCreate = unsafe extern "C" fn(*mut CuStream, c_uint) -> CuResult;
type FnStreamDestroy = unsafe extern "C" fn(CuStream) -> CuResult;
type FnMemAlloc = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type FnMemFree = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
#[allow(clippy::type_complexity)]
type FnLaunchKernel = unsafe extern "C" fn(
    CuFunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CuStream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;
type FnMemcpyHtoDAsync =
    unsafe extern "C" fn(CuDevicePtr, *const c_void, usize, CuStream) -> CuResult;
type FnMemcpyDtoHAsync =
    unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize, CuStream) -> CuResult;
type FnMemcpyDtoDAsync =
    unsafe extern "C" fn(CuDevicePtr, CuDevicePtr, usize, CuStream) -> CuResult;
type FnMemsetD8Async = unsafe extern "C" fn(CuDevicePtr, u8, usize, CuStream) -> CuResult;
type FnMemsetD32Async = unsafe extern "C" fn(CuDevicePtr, c_uint, usize, CuStream) -> CuResult;
type FnSimAdvanceHostNs = unsafe extern "C" fn(u64);
type FnStreamBeginCapture = unsafe extern "C" fn(CuStream, c_uint) -> CuResult;
type FnStreamEndCapture = unsafe extern "C" fn(CuStream, *mut CuGraph) -> CuResult;
type FnGraphInstantiateWithFlags = unsafe extern "C" fn(*mut CuGraphExec, CuGraph, u64) -> CuResult;
type FnGraphLaunch = unsafe extern "C" fn(CuGraphExec, CuStream) -> CuResult;
type FnGraphExecDestroy = unsafe extern "C" fn(CuGraphExec) -> CuResult;
type FnGraphDestroy = unsafe extern "C" fn(CuGraph) -> CuResult;
type FnEventCreate = unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult;
type FnEventRecord = unsafe extern "C" fn(CuEvent, CuStream) -> CuResult;
type FnStreamWaitEvent = unsafe extern "C" fn(CuStream, CuEvent, c_uint) -> CuResult;
type FnEventDestroy = unsafe extern "C" fn(CuEvent) -> CuResult;
type FnGetErrorName = unsafe extern "C" fn(c_int, *mut *const c_char) -> CuResult;
type FnSimIsVirtual = unsafe extern "C" fn() -> c_int;

/// Why a replay could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// `libcuda.so.1` could not be opened (message from the loader).
    NoDriver(String),
    /// A required driver symbol is missing.
    MissingSymbol(&'static str),
    /// A driver call returned a non-zero `CUresult`.
    Cuda {
        /// The driver function.
        call: &'static str,
        /// Its raw `CUresult`.
        code: i32,
    },
    /// `--cuda-graph`: a call of a capture, instantiation or graph launch failed.
    Graph {
        /// The driver function.
        call: &'static str,
        /// Its raw `CUresult`.
        code: i32,
        /// The code's name from `cuGetErrorName` (`CUresult <code>` when it has none).
        name: String,
    },
    /// `--cuda-graph`: the workload's steps cannot be captured ([`graph_plan::plan`]'s reason).
    NotCapturable(String),
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::NoDriver(m) => write!(f, "cannot load libcuda.so.1: {m}"),
            ExecError::MissingSymbol(s) => write!(f, "libcuda.so.1 lacks {s}"),
            ExecError::Cuda { call, code } => write!(f, "{call} failed with CUresult {code}"),
            ExecError::Graph { call, code, name } => write!(f, "{call} failed with {name} ({code})"),
            ExecError::NotCapturable(why) => write!(f, "--cuda-graph: {why}"),
        }
    }
}

impl std::error::Error for ExecError {}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecSummary {
    /// Kernels launched.
    pub kernels: u64,
    /// [`Op::AllocProbe`]s the driver refused.
    pub failed_allocs: u64,
    /// Memcpys issued.
    pub memcpys: u64,
    /// Memsets issued.
    pub memsets: u64,
    /// Range pushes issued.
    pub ranges: u64,
    /// Device 0's name (`cuDeviceGetName`).
    pub device_name: String,
    /// True when the sim's virtual clock drove host gaps.
    pub virtual_clock: bool,
    /// `--cuda-graph`: graphs captured and instantiated.
    pub graphs_captured: u64,
    /// `--cuda-graph`: `cuGraphLaunch` calls.
    pub graph_launches: u64,
}

struct Api {
    init: FnInit,
    device_get: FnDeviceGet,
    device_get_name: FnDeviceGetName,
    primary_ctx_retain: FnPrimaryCtxRetain,
    primary_ctx_release: FnPrimaryCtxRelease,
    ctx_set_current: FnCtxSetCurrent,
    ctx_synchronize: FnCtxSynchronize,
    module_load_data: FnModuleLoadData,
    module_get_function: FnModuleGetFunction,
    module_unload: FnModuleUnload,
    stream_create: FnStreamCreate,
    stream_destroy: FnStreamDestroy,
    mem_alloc: FnMemAlloc,
    mem_free: FnMemFree,
    launch_kernel: FnLaunchKernel,
    memcpy_htod: FnMemcpyHtoDAsync,
    memcpy_dtoh: FnMemcpyDtoHAsync,
    memcpy_dtod: FnMemcpyDtoDAsync,
    memset_d8: FnMemsetD8Async,
    memset_d32: FnMemsetD32Async,
    sim_advance: Option<FnSimAdvanceHostNs>,
    sim_is_virtual: Option<FnSimIsVirtual>,
    event_create: FnEventCreate,
    event_record: FnEventRecord,
    stream_wait_event: FnStreamWaitEvent,
    event_destroy: FnEventDestroy,
}

/// Resolves `name` from `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the symbol's true C signature.
unsafe fn sym<T: Copy>(lib: &Library, name: &'static str) -> Result<T, ExecError> {
    let cname = format!("{name}\0");
    // SAFETY: forwarded to the caller: `T` is the C signature of `name`.
    unsafe {
        lib.get::<T>(cname.as_bytes())
            .map(|s| *s)
            .map_err(|_| ExecError::MissingSymbol(name))
    }
}

impl Api {
    fn load(lib: &Library) -> Result<Api, ExecError> {
        // SAFETY: every type alias above transcribes the cuda.h prototype of the symbol it
        // is resolved for (CUresult = int, handles = pointers, CUdeviceptr = u64, size_t =
        // usize); the two sim extras are `void(uint64_t)` and `int(void)`.
        unsafe {
            Ok(Api {
                init: sym(lib, "cuInit")?,
                device_get: sym(lib, "cuDeviceGet")?,
                device_get_name: sym(lib, "cuDeviceGetName")?,
                primary_ctx_retain: sym(lib, "cuDevicePrimaryCtxRetain")?,
                primary_ctx_release: sym(lib, "cuDevicePrimaryCtxRelease_v2")?,
                ctx_set_current: sym(lib, "cuCtxSetCurrent")?,
                ctx_synchronize: sym(lib, "cuCtxSynchronize")?,
                module_load_data: sym(lib, "cuModuleLoadData")?,
                module_get_function: sym(lib, "cuModuleGetFunction")?,
                module_unload: sym(lib, "cuModuleUnload")?,
                stream_create: sym(lib, "cuStreamCreate")?,
                stream_destroy: sym(lib, "cuStreamDestroy_v2")?,
                mem_alloc: sym(lib, "cuMemAlloc_v2")?,
                mem_free: sym(lib, "cuMemFree_v2")?,
                launch_kernel: sym(lib, "cuLaunchKernel")?,
                memcpy_htod: sym(lib, "cuMemcpyHtoDAsync_v2")?,
                memcpy_dtoh: sym(lib, "cuMemcpyDtoHAsync_v2")?,
                memcpy_dtod: sym(lib, "cuMemcpyDtoDAsync_v2")?,
                memset_d8: sym(lib, "cuMemsetD8Async")?,
                memset_d32: sym(lib, "cuMemsetD32Async")?,
                sim_advance: sym(lib, "gpuspanSimAdvanceHostNs").ok(),
                sim_is_virtual: sym(lib, "gpuspanSimIsVirtual").ok(),
                event_create: sym(lib, "cuEventCreate")?,
                event_record: sym(lib, "cuEventRecord")?,
                stream_wait_event: sym(lib, "cuStreamWaitEvent")?,
                event_destroy: sym(lib, "cuEventDestroy_v2")?,
            })
        }
    }
}

/// The driver entry points of `--cuda-graph` (resolved only in that mode).
struct GraphApi {
    begin_capture: FnStreamBeginCapture,
    end_capture: FnStreamEndCapture,
    instantiate: FnGraphInstantiateWithFlags,
    launch: FnGraphLaunch,
    exec_destroy: FnGraphExecDestroy,
    graph_destroy: FnGraphDestroy,
    event_create: FnEventCreate,
    event_record: FnEventRecord,
    stream_wait_event: FnStreamWaitEvent,
    event_destroy: FnEventDestroy,
    error_name: FnGetErrorName,
}

impl GraphApi {
    fn load(lib: &Library) -> Result<GraphApi, ExecError> {
        // SAFETY: each alias transcribes the cuda.h 12.x prototype of the symbol it is
        // resolved for (CUstreamCaptureMode = unsigned int, unsigned long long = u64).
        unsafe {
            Ok(GraphApi {
                begin_capture: sym(lib, "cuStreamBeginCapture_v2")?,
                end_capture: sym(lib, "cuStreamEndCapture")?,
                instantiate: sym(lib, "cuGraphInstantiateWithFlags")?,
                launch: sym(lib, "cuGraphLaunch")?,
                exec_destroy: sym(lib, "cuGraphExecDestroy")?,
                graph_destroy: sym(lib, "cuGraphDestroy")?,
                event_create: sym(lib, "cuEventCreate")?,
                event_record: sym(lib, "cuEventRecord")?,
                stream_wait_event: sym(lib, "cuStreamWaitEvent")?,
                event_destroy: sym(lib, "cuEventDestroy_v2")?,
                error_name: sym(lib, "cuGetErrorName")?,
            })
        }
    }

    /// `code` of `call` as an error carrying the driver's name for it.
    fn check(&self, call: &'static str, code: CuResult) -> Result<(), ExecError> {
        if code == 0 {
            return Ok(());
        }
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: `cuGetErrorName(CUresult, const char**)`; the out-pointer is a live local and
        // the returned string is static driver memory.
        let name = unsafe {
            if (self.error_name)(code, &mut p) == 0 && !p.is_null() {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            } else {
                format!("CUresult {code}")
            }
        };
        Err(ExecError::Graph { call, code, name })
    }

    /// Re-labels a plain CUDA error of an op issued inside a capture with the driver's name.
    fn named(&self, e: ExecError) -> ExecError {
        match e {
            ExecError::Cuda { call, code } => self.check(call, code).err().unwrap_or(ExecError::Cuda { call, code }),
            other => other,
        }
    }
}

/// `CU_STREAM_CAPTURE_MODE_GLOBAL` (cuda.h `CUstreamCaptureMode`), the mode torch.cuda.graph
/// captures in by default.
const CAPTURE_MODE_GLOBAL: c_uint = 0;
/// `CU_EVENT_DISABLE_TIMING` (cuda.h `CUevent_flags`): fork / join events carry no time.
const EVENT_DISABLE_TIMING: c_uint = 0x2;

fn check(call: &'static str, code: CuResult) -> Result<(), ExecError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ExecError::Cuda { call, code })
    }
}

/// The simulator's ground truth of this rank's device (`gpuspanSimNodeTruth`, see
/// `sim::node`), `None` under a driver that is not the simulator.
pub fn node_truth(lib: &Library) -> Option<crate::sim::node::Truth> {
    type FnTruth = unsafe extern "C" fn(*mut crate::sim::node::Truth);
    // SAFETY: `gpuspanSimNodeTruth(GpuspanSimNodeTruth*)` is the sim's export of that
    // prototype; it writes one `Truth` (repr(C)) into the live local.
    unsafe {
        let f: FnTruth = sym(lib, "gpuspanSimNodeTruth").ok()?;
        let mut t = crate::sim::node::Truth::default();
        f(&mut t);
        Some(t)
    }
}

/// This rank's NVLink transfers, `(start_ns, end_ns, bytes)` on the sim's clock
/// (`gpuspanSimNodeTransfers`, `sim::node::Node::transfers`), `None` under a driver that is
/// not the simulator.
pub fn node_transfers(lib: &Library) -> Option<Vec<(u64, u64, u64)>> {
    type FnTransfers = unsafe extern "C" fn(*mut u64, usize) -> usize;
    // SAFETY: `gpuspanSimNodeTransfers(uint64_t*, size_t)` is the sim's export of that
    // prototype; it writes at most `cap` triples into the buffer sized for them.
    unsafe {
        let f: FnTransfers = sym(lib, "gpuspanSimNodeTransfers").ok()?;
        let n = f(std::ptr::null_mut(), 0);
        let mut buf = vec![0u64; 3 * n];
        let n = f(buf.as_mut_ptr(), n).min(n);
        Some(buf[..3 * n].chunks_exact(3).map(|c| (c[0], c[1], c[2])).collect())
    }
}

/// Opens `libcuda.so.1` (the dynamic loader's search, so `LD_LIBRARY_PATH` decides whether
/// it is the simulator or a real driver).
pub fn open_driver() -> Result<Library, ExecError> {
    // SAFETY: loading the CUDA driver runs its initializers; that is what a CUDA program does.
    unsafe { Library::new("libcuda.so.1") }.map_err(|e| ExecError::NoDriver(e.to_string()))
}

/// Runs `workload` on device 0 of the driver in `lib`: `cuInit(0)`, primary context,
/// one non-blocking stream per workload stream id, then every op in order, then
/// `cuCtxSynchronize`. The streams are named to gpuspan (`gpuspan_use_streams`, when the
/// agent is in the process) as a worker using gpuspan's API does.
pub fn execute(lib: &Library, workload: &Workload) -> Result<ExecSummary, ExecError> {
    execute_with(lib, workload, &ExecOptions::default())
}

/// How [`execute_with`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Name the workload's streams to the gpuspan agent through `gpuspan_use_streams`
    /// (looked up in the process with `dlsym(RTLD_DEFAULT)`) so coarse mode times scopes
    /// on them; `false` behaves like a worker that only uses NVTX (scopes are timed on the
    /// legacy default stream). Default `true`.
    pub announce_streams: bool,
    /// Capture each step's forward pass into a CUDA graph and launch it (module docs);
    /// [`ExecError::NotCapturable`] when [`graph_plan::plan`] refuses the workload.
    /// Default `false`.
    pub cuda_graph: bool,
    /// After the last kernel has finished (`cuCtxSynchronize`), unload the module the
    /// kernels came from (`cuModuleUnload`) before releasing the context, as the CUDA
    /// runtime does with every fatbinary at process exit (`__cudaUnregisterFatBinary`):
    /// records still in CUPTI's buffers then name kernels of an unloaded module. Default
    /// `false`.
    pub unload_module: bool,
    /// Print `request begin_unix_ns=<CLOCK_REALTIME ns>` on stdout for each `gpuspan.request`
    /// range: the time read just before the range is pushed (printed after the push), the
    /// host time a coarse-mode request span should start at when the GPU is idle. Default
    /// `false`.
    pub print_request_begins: bool,
    /// The CUDA device (ordinal) to run on: its primary context is made current on the
    /// calling thread, and the workload's streams, copies and kernels go to it. Default 0.
    pub device: i32,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions { announce_streams: true, cuda_graph: false, unload_module: false, print_request_begins: false, device: 0 }
    }
}

/// `int gpuspan_use_streams(void *const *streams, size_t n)` (`include/gpuspan.h`).
type UseStreamsFn = unsafe extern "C" fn(*const CuStream, usize) -> c_int;

/// [`execute`] with options ([`ExecOptions::cuda_graph`]: the module docs).
pub fn execute_with(lib: &Library, workload: &Workload, opts: &ExecOptions) -> Result<ExecSummary, ExecError> {
    execute_requests(lib, std::iter::once(workload), opts, &mut || true)
}

/// Runs the parts of a workload one after another (a replay's requests, issue 13 item 1):
/// [`execute_with`] of their concatenation, holding one part at a time. Before each part,
/// `keep_going()` decides whether to run it (a `--duration` or a signal ends the run between
/// requests). Streams are created as parts name them (and named to the agent again when
/// one is added), the copy buffers grow to the largest copy seen (after a synchronise), and
/// with [`ExecOptions::cuda_graph`] a part's steps launch the graphs earlier parts captured
/// ([`graph_plan::plan_with`]).
pub fn execute_requests<W: std::borrow::Borrow<Workload>>(
    lib: &Library,
    parts: impl IntoIterator<Item = W>,
    opts: &ExecOptions,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<ExecSummary, ExecError> {
    let api = Api::load(lib)?;
    let graphs = if opts.cuda_graph { Some(GraphApi::load(lib)?) } else { None };
    let mut out = ExecSummary::default();
    // SAFETY (whole block): each call passes arguments of the types its cuda.h prototype
    // declares; out-pointers point at live locals; the context is made current before any
    // context-bound call; buffers passed to copies are at least `bytes` long (clamped to
    // MAX_COPY_BYTES, the size allocated); kernel parameter arrays point at live locals for
    // the duration of the launch call (the driver copies them).
    unsafe {
        check("cuInit", (api.init)(0))?;
        let mut dev: CuDevice = 0;
        check("cuDeviceGet", (api.device_get)(&mut dev, opts.device))?;
        let mut name = [0 as c_char; 256];
        check(
            "cuDeviceGetName",
            (api.device_get_name)(name.as_mut_ptr(), name.len() as c_int, dev),
        )?;
        out.device_name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        let mut ctx: CuContext = null_mut();
        check(
            "cuDevicePrimaryCtxRetain",
            (api.primary_ctx_retain)(&mut ctx, dev),
        )?;
        check("cuCtxSetCurrent", (api.ctx_set_current)(ctx))?;

        let ptx = CString::new(SPIN_PTX).expect("PTX has no NUL");
        let mut module: CuModule = null_mut();
        check(
            "cuModuleLoadData",
            (api.module_load_data)(&mut module, ptx.as_ptr() as *const c_void),
        )?;
        let mut spin: CuFunction = null_mut();
        check(
            "cuModuleGetFunction",
            (api.module_get_function)(&mut spin, module, c"spin".as_ptr()),
        )?;
        out.virtual_clock = api.sim_is_virtual.map(|f| f() != 0).unwrap_or(false);
        let mut r = Replay {
            api: &api,
            announce_streams: opts.announce_streams,
            print_request_begins: opts.print_request_begins,
            module,
            spin,
            functions: HashMap::new(),
            streams: HashMap::new(),
            dbuf: 0,
            hbuf: Vec::new(),
            max_bytes: 0,
            out,
            keys: graph_plan::GraphKeys::default(),
            execs: Vec::new(),
            events: Vec::new(),
            wait_events: HashMap::new(),
        };
        let mut result = Ok(());
        for part in parts {
            if !keep_going() {
                break;
            }
            let part = part.borrow();
            result = r.prepare(part).and_then(|()| match &graphs {
                Some(g) => {
                    let plan = graph_plan::plan_with(part, &mut r.keys).map_err(ExecError::NotCapturable)?;
                    r.run_graphs(&part.ops, g, &plan)
                }
                None => part.ops.iter().try_for_each(|op| r.op(op, true)),
            });
            if result.is_err() {
                break;
            }
        }
        if let Some(g) = &graphs {
            result = result.and(r.destroy_graphs(g));
        }
        result?;
        let Replay { streams, dbuf, out, module, wait_events, .. } = r;
        check("cuCtxSynchronize", (api.ctx_synchronize)())?;
        for (_, e) in wait_events {
            check("cuEventDestroy_v2", (api.event_destroy)(e))?;
        }
        if opts.unload_module {
            check("cuModuleUnload", (api.module_unload)(module))?;
        }
        for (_, s) in streams {
            check("cuStreamDestroy_v2", (api.stream_destroy)(s))?;
        }
        if dbuf != 0 {
            check("cuMemFree_v2", (api.mem_free)(dbuf))?;
        }
        check(
            "cuDevicePrimaryCtxRelease_v2",
            (api.primary_ctx_release)(dev),
        )?;
        Ok(out)
    }
}

/// The replay's driver objects and counters while ops are issued.
struct Replay<'a> {
    /// [`ExecOptions::print_request_begins`].
    print_request_begins: bool,
    api: &'a Api,
    /// [`ExecOptions::announce_streams`].
    announce_streams: bool,
    module: CuModule,
    spin: CuFunction,
    functions: HashMap<String, CuFunction>,
    streams: HashMap<u32, CuStream>,
    /// Device buffer of `2 × max_bytes`: two halves so DtoD copies have distinct source and
    /// destination (0 until the first part is prepared).
    dbuf: CuDevicePtr,
    hbuf: Vec<u8>,
    max_bytes: u64,
    out: ExecSummary,
    /// `--cuda-graph`: the graphs seen so far and their instantiations, by graph index.
    keys: graph_plan::GraphKeys,
    execs: Vec<Option<(CuGraph, CuGraphExec)>>,
    /// Fork / join events of the captures.
    events: Vec<CuEvent>,
    /// [`Op::StreamWait`]: one event per stream waited on, re-recorded at each wait.
    wait_events: HashMap<u32, CuEvent>,
}

impl Replay<'_> {
    /// Before a part runs: creates the streams it names that do not exist yet (naming the
    /// whole set to the agent again, in stream-id order) and grows the copy buffers to its
    /// largest copy (after a synchronise, so no copy in flight uses the old ones).
    ///
    /// # Safety
    /// The context is current.
    unsafe fn prepare(&mut self, part: &Workload) -> Result<(), ExecError> {
        let api = self.api;
        let mut added = false;
        let mut max_bytes = self.max_bytes.max(4096);
        for op in &part.ops {
            // The streams the op uses (a wait uses two) and its copy size.
            let (streams, b) = match op {
                Op::Launch { stream, .. } | Op::Collective { stream, .. } => ([Some(*stream), None], 0),
                Op::StreamWait { stream, on } => ([Some(*stream), Some(*on)], 0),
                Op::Memcpy { stream, bytes, .. } | Op::Memset { stream, bytes } => ([Some(*stream), None], *bytes),
                _ => ([None, None], 0),
            };
            max_bytes = max_bytes.max(b.min(MAX_COPY_BYTES));
            for s in streams.into_iter().flatten() {
                if let std::collections::hash_map::Entry::Vacant(e) = self.streams.entry(s) {
                    let mut h: CuStream = null_mut();
                    // SAFETY: `cuStreamCreate(CUstream*, unsigned)` into a live local.
                    check("cuStreamCreate", unsafe { (api.stream_create)(&mut h, CU_STREAM_NON_BLOCKING) })?;
                    e.insert(h);
                    added = true;
                }
            }
        }
        if added && self.announce_streams {
            let mut ids: Vec<u32> = self.streams.keys().copied().collect();
            ids.sort_unstable();
            let handles: Vec<CuStream> = ids.iter().map(|i| self.streams[i]).collect();
            // SAFETY: dlsym in the whole process; a non-NULL result is the agent's
            // `gpuspan_use_streams`, of the header's prototype, called with a live array.
            unsafe {
                let f = libc::dlsym(libc::RTLD_DEFAULT, c"gpuspan_use_streams".as_ptr());
                if !f.is_null() {
                    let f: UseStreamsFn = std::mem::transmute(f);
                    f(handles.as_ptr(), handles.len());
                }
            }
        }
        if max_bytes > self.max_bytes {
            // SAFETY: cuda.h prototypes; the old buffer is idle after the synchronise.
            unsafe {
                if self.dbuf != 0 {
                    check("cuCtxSynchronize", (api.ctx_synchronize)())?;
                    check("cuMemFree_v2", (api.mem_free)(self.dbuf))?;
                    self.dbuf = 0;
                }
                check("cuMemAlloc_v2", (api.mem_alloc)(&mut self.dbuf, (2 * max_bytes) as usize))?;
            }
            self.hbuf = vec![0u8; max_bytes as usize];
            self.max_bytes = max_bytes;
        }
        Ok(())
    }

    /// Destroys the graphs, instantiations and events of the run, once each.
    ///
    /// # Safety
    /// `g` was resolved from the same driver as the handles.
    unsafe fn destroy_graphs(&mut self, g: &GraphApi) -> Result<(), ExecError> {
        let mut result = Ok(());
        // SAFETY: destroying the execs, graphs and events this replay made, once each (the
        // vectors are drained).
        unsafe {
            for (graph, exec) in self.execs.drain(..).flatten() {
                let e = g.check("cuGraphExecDestroy", (g.exec_destroy)(exec)).and(g.check("cuGraphDestroy", (g.graph_destroy)(graph)));
                result = result.and(e);
            }
            for ev in self.events.drain(..) {
                result = result.and(g.check("cuEventDestroy_v2", (g.event_destroy)(ev)));
            }
        }
        result
    }

    /// The function named `name` in the replay's module (the simulator makes one for any
    /// name, so CUPTI and the sim see the kernel's own name), looked up once; the spin kernel
    /// when the driver has none of that name.
    ///
    /// # Safety
    /// The context is current and `self.module` is loaded.
    unsafe fn function(&mut self, name: &str) -> CuFunction {
        if let Some(f) = self.functions.get(name) {
            return *f;
        }
        let mut f: CuFunction = null_mut();
        let cname = CString::new(name.replace('\0', " ")).unwrap_or_default();
        // SAFETY: `cuModuleGetFunction(CUfunction*, CUmodule, const char*)` with a live
        // out-pointer, a loaded module (caller) and a NUL-terminated name.
        let rc = unsafe { (self.api.module_get_function)(&mut f, self.module, cname.as_ptr()) };
        let f = if rc == 0 && !f.is_null() { f } else { self.spin };
        self.functions.insert(name.to_string(), f);
        f
    }

    /// Issues one op. `count`: add its GPU work to the summary (false while capturing: the
    /// work runs, and is counted, when the graph is launched).
    ///
    /// # Safety
    /// The context is current; `self` holds the module, streams and buffers made by
    /// [`execute_with`].
    unsafe fn op(&mut self, op: &Op, count: bool) -> Result<(), ExecError> {
        let api = self.api;
        // SAFETY (whole body): arguments of the types each cuda.h prototype declares;
        // buffers passed to copies are at least `n` ≤ `max_bytes` long (the sizes allocated);
        // the kernel parameter array points at a live local for the duration of the launch
        // call (the driver copies it, also when capturing).
        unsafe {
            match op {
                Op::RangePush(n) => {
                    // Read right before the push, printed after it (no I/O in between).
                    let begin = (self.print_request_begins && n.starts_with("gpuspan.request "))
                        .then(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
                    nvtx_loader::nvtx_range_push(n);
                    if let Some(ns) = begin {
                        println!("request begin_unix_ns={ns}");
                    }
                    self.out.ranges += 1;
                }
                Op::RangePop => {
                    nvtx_loader::nvtx_range_pop();
                }
                Op::Launch {
                    name,
                    dur_ns,
                    stream,
                    grid,
                    block,
                    shared_mem_bytes,
                } => {
                    let f = self.function(name);
                    let mut dur: u64 = *dur_ns;
                    let mut params: [*mut c_void; 1] = [&mut dur as *mut u64 as *mut c_void];
                    let g = grid.map(|v| v.max(1));
                    let b = block.map(|v| v.max(1));
                    check(
                        "cuLaunchKernel",
                        (api.launch_kernel)(
                            f,
                            g[0],
                            g[1],
                            g[2],
                            b[0],
                            b[1],
                            b[2],
                            *shared_mem_bytes,
                            self.streams[stream],
                            params.as_mut_ptr(),
                            null_mut(),
                        ),
                    )?;
                    self.out.kernels += count as u64;
                }
                Op::Memcpy {
                    kind,
                    bytes,
                    stream,
                } => {
                    let n = (*bytes).clamp(1, self.max_bytes) as usize;
                    let s = self.streams[stream];
                    let (dbuf, max_bytes) = (self.dbuf, self.max_bytes);
                    match kind {
                        MemcpyKind::HtoD => check(
                            "cuMemcpyHtoDAsync_v2",
                            (api.memcpy_htod)(dbuf, self.hbuf.as_ptr() as *const c_void, n, s),
                        )?,
                        MemcpyKind::DtoH => check(
                            "cuMemcpyDtoHAsync_v2",
                            (api.memcpy_dtoh)(self.hbuf.as_mut_ptr() as *mut c_void, dbuf, n, s),
                        )?,
                        MemcpyKind::DtoD => check(
                            "cuMemcpyDtoDAsync_v2",
                            (api.memcpy_dtod)(dbuf + max_bytes, dbuf, n, s),
                        )?,
                    }
                    self.out.memcpys += count as u64;
                }
                Op::Memset { bytes, stream } => {
                    let n = (*bytes).clamp(1, self.max_bytes);
                    let s = self.streams[stream];
                    if n % 4 == 0 {
                        check(
                            "cuMemsetD32Async",
                            (api.memset_d32)(self.dbuf, 0, (n / 4) as usize, s),
                        )?;
                    } else {
                        check("cuMemsetD8Async", (api.memset_d8)(self.dbuf, 0, n as usize, s))?;
                    }
                    self.out.memsets += count as u64;
                }
                Op::HostGap { ns } => host_gap(api, self.out.virtual_clock, *ns),
                Op::StreamWait { stream, on } => {
                    let ev = match self.wait_events.get(on) {
                        Some(e) => *e,
                        None => {
                            let mut e: CuEvent = null_mut();
                            check("cuEventCreate", (api.event_create)(&mut e, EVENT_DISABLE_TIMING))?;
                            self.wait_events.insert(*on, e);
                            e
                        }
                    };
                    check("cuEventRecord", (api.event_record)(ev, self.streams[on]))?;
                    check("cuStreamWaitEvent", (api.stream_wait_event)(self.streams[stream], ev, 0))?;
                }
                Op::Collective { kind, bytes, stream } => {
                    let name = kind.kernel_name();
                    let f = self.function(name);
                    let mut size: u64 = *bytes;
                    let mut params: [*mut c_void; 1] = [&mut size as *mut u64 as *mut c_void];
                    let (g, b) = (parallel::NCCL_GRID, parallel::NCCL_BLOCK);
                    check(
                        "cuLaunchKernel",
                        (api.launch_kernel)(f, g[0], g[1], g[2], b[0], b[1], b[2], 0, self.streams[stream], params.as_mut_ptr(), null_mut()),
                    )?;
                    self.out.kernels += count as u64;
                }
                Op::Synchronize => check("cuCtxSynchronize", (api.ctx_synchronize)())?,
                Op::AllocProbe { bytes } => {
                    let mut p: CuDevicePtr = 0;
                    if (api.mem_alloc)(&mut p, *bytes as usize) == 0 {
                        check("cuMemFree_v2", (api.mem_free)(p))?;
                    } else {
                        self.out.failed_allocs += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Issues `ops` with the regions of `plan` captured once per graph and launched.
    ///
    /// # Safety
    /// As [`Replay::op`]; `g` was resolved from the same driver.
    unsafe fn run_graphs(&mut self, ops: &[Op], g: &GraphApi, plan: &GraphPlan) -> Result<(), ExecError> {
        self.execs.resize(plan.graphs.max(self.execs.len()), None);
        let mut i = 0;
        while i < ops.len() {
            let Some(r) = plan.region_at(i) else {
                // SAFETY: forwarded from the caller.
                unsafe { self.op(&ops[i], true)? };
                i += 1;
                continue;
            };
            let exec = match self.execs[r.graph] {
                Some((_, x)) => x,
                None => {
                    // SAFETY: forwarded from the caller.
                    let pair = unsafe { self.capture(ops, r, g)? };
                    self.execs[r.graph] = Some(pair);
                    self.out.graphs_captured += 1;
                    pair.1
                }
            };
            // SAFETY: `cuGraphLaunch(CUgraphExec, CUstream)` with a live exec and stream.
            g.check("cuGraphLaunch", unsafe { (g.launch)(exec, self.streams[&r.origin]) })?;
            self.out.graph_launches += 1;
            self.out.kernels += r.kernels;
            self.out.memcpys += r.memcpys;
            self.out.memsets += r.memsets;
            i = r.end;
        }
        Ok(())
    }

    /// Captures region `r` into a graph and instantiates it: GLOBAL-mode capture on the
    /// origin stream, the other streams forked in with an event recorded on the origin and
    /// joined back with one event each. `events` is the pool of fork / join events.
    ///
    /// # Safety
    /// As [`Replay::run_graphs`].
    unsafe fn capture(&mut self, ops: &[Op], r: &GraphRegion, g: &GraphApi) -> Result<(CuGraph, CuGraphExec), ExecError> {
        let origin = self.streams[&r.origin];
        let mut events = std::mem::take(&mut self.events);
        let result = unsafe { self.capture_with(ops, r, g, origin, &mut events) };
        self.events = events;
        result
    }

    /// [`Replay::capture`] with the event pool taken out of `self`.
    ///
    /// # Safety
    /// As [`Replay::run_graphs`].
    unsafe fn capture_with(
        &mut self,
        ops: &[Op],
        r: &GraphRegion,
        g: &GraphApi,
        origin: CuStream,
        events: &mut Vec<CuEvent>,
    ) -> Result<(CuGraph, CuGraphExec), ExecError> {
        let mut event = |k: usize| -> Result<CuEvent, ExecError> {
            while events.len() <= k {
                let mut e: CuEvent = null_mut();
                // SAFETY: `cuEventCreate(CUevent*, unsigned)` into a live local.
                g.check("cuEventCreate", unsafe { (g.event_create)(&mut e, EVENT_DISABLE_TIMING) })?;
                events.push(e);
            }
            Ok(events[k])
        };
        // SAFETY (whole block): cuda.h prototypes; handles made by this replay; out-pointers
        // are live locals.
        unsafe {
            g.check("cuStreamBeginCapture_v2", (g.begin_capture)(origin, CAPTURE_MODE_GLOBAL))?;
            if !r.forked.is_empty() {
                let fork = event(0)?;
                g.check("cuEventRecord", (g.event_record)(fork, origin))?;
                for s in &r.forked {
                    g.check("cuStreamWaitEvent", (g.stream_wait_event)(self.streams[s], fork, 0))?;
                }
            }
            for op in &ops[r.start..r.end] {
                self.op(op, false).map_err(|e| g.named(e))?;
            }
            for (k, s) in r.forked.iter().enumerate() {
                let join = event(k + 1)?;
                g.check("cuEventRecord", (g.event_record)(join, self.streams[s]))?;
                g.check("cuStreamWaitEvent", (g.stream_wait_event)(origin, join, 0))?;
            }
            let mut graph: CuGraph = null_mut();
            g.check("cuStreamEndCapture", (g.end_capture)(origin, &mut graph))?;
            let mut exec: CuGraphExec = null_mut();
            g.check("cuGraphInstantiateWithFlags", (g.instantiate)(&mut exec, graph, 0))?;
            Ok((graph, exec))
        }
    }
}

/// Host work of `ns`: the sim's virtual clock when on, else a sleep (short gaps spin).
fn host_gap(api: &Api, virtual_clock: bool, ns: u64) {
    if ns == 0 {
        return;
    }
    if virtual_clock {
        if let Some(adv) = api.sim_advance {
            // SAFETY: `gpuspanSimAdvanceHostNs(uint64_t)` is the sim's documented extra.
            unsafe { adv(ns) };
            return;
        }
    }
    // GPUSPAN_SIM_SPEED: the simulated H100 (in this process) runs F times as fast, so the
    // host's work takes 1/F of its time too.
    static SPEED_MILLI: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let speed_milli = *SPEED_MILLI.get_or_init(|| crate::sim::config::Config::from_env().speed_milli.max(1));
    let ns = (ns as u128 * 1000 / speed_milli as u128) as u64;
    let d = std::time::Duration::from_nanos(ns);
    if ns >= 50_000 {
        std::thread::sleep(d);
    } else {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < d {
            std::hint::spin_loop();
        }
    }
}

//! CUDA driver events for coarse timing: the few `libcuda.so.1` entry points the agent's
//! coarse mode calls (`cuEventCreate`, `cuEventRecord`, `cuEventQuery`,
//! `cuEventElapsedTime(_v2)`, `cuCtxGetCurrent`, `cuCtxSetCurrent`),
//! resolved by hand like [`crate::symbols`] and wrapped so that no caller needs `unsafe`.
//!
//! Semantics (cuda.h; CUPTI-NOTES §6): `cuEventRecord` captures the stream's work at call
//! time; `cuEventQuery` answers `CUDA_SUCCESS` or `CUDA_ERROR_NOT_READY` (600) and never
//! blocks; `cuEventElapsedTime(ms, start, end)` gives ms with about 0.5 µs resolution, 600
//! until both have completed and 400 (`CUDA_ERROR_INVALID_HANDLE`) if one was never
//! recorded. CUDA 13 supplants `cuEventElapsedTime` by `cuEventElapsedTime_v2` (same
//! signature), which is preferred when present. Nothing here synchronizes. Events are
//! never destroyed: the agent reuses a bounded pool of them for the life of the process.
//!
//! Handles: an [`Event`] only comes from [`CudaEvents::create`], so every event passed back
//! to the driver is one it made. A [`Stream`] is whatever the application named through
//! gpuspan's API (`gpuspan_use_streams`): the driver is trusted to reject a stale handle
//! with an error code, as it does for the application's own calls; [`Stream::LEGACY`]
//! (`CU_STREAM_LEGACY`, 0x1) is always valid.

use std::ffi::c_void;

/// `CUresult` of a failed driver call (cuda.h `cudaError_enum`).
pub type CuResult = i32;
/// `CUDA_ERROR_NOT_READY`: the event has not completed yet.
pub const CUDA_ERROR_NOT_READY: CuResult = 600;
/// `CUDA_ERROR_INVALID_HANDLE`.
pub const CUDA_ERROR_INVALID_HANDLE: CuResult = 400;
/// `CUDA_ERROR_NOT_INITIALIZED`: `cuInit` has not run yet.
pub const CUDA_ERROR_NOT_INITIALIZED: CuResult = 3;
/// `CUDA_ERROR_INVALID_CONTEXT`: no context is current on the calling thread.
pub const CUDA_ERROR_INVALID_CONTEXT: CuResult = 201;
/// `CU_EVENT_DEFAULT` (cuda.h `CUevent_flags`): a timed event.
pub const CU_EVENT_DEFAULT: u32 = 0;
/// `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT` (cuda.h): the legacy stream was used while a
/// blocking stream was capturing; `cuStreamIsCapturing` on the legacy stream answers it then.
pub const CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: CuResult = 906;
/// `CU_STREAM_CAPTURE_MODE_RELAXED` (cuda.h `CUstreamCaptureMode`: GLOBAL 0, THREAD_LOCAL 1,
/// RELAXED 2).
pub const CU_STREAM_CAPTURE_MODE_RELAXED: u32 = 2;

/// Library names tried in order: the driver's soname, then the development link.
pub const CUDA_LIB_NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

type EventCreateFn = unsafe extern "C" fn(*mut *mut c_void, u32) -> CuResult;
type EventRecordFn = unsafe extern "C" fn(*mut c_void, *mut c_void) -> CuResult;
type EventQueryFn = unsafe extern "C" fn(*mut c_void) -> CuResult;
type EventElapsedFn = unsafe extern "C" fn(*mut f32, *mut c_void, *mut c_void) -> CuResult;
type CtxGetCurrentFn = unsafe extern "C" fn(*mut *mut c_void) -> CuResult;
type CtxSetCurrentFn = unsafe extern "C" fn(*mut c_void) -> CuResult;
type StreamIsCapturingFn = unsafe extern "C" fn(*mut c_void, *mut u32) -> CuResult;
type ExchangeCaptureModeFn = unsafe extern "C" fn(*mut u32) -> CuResult;
type StreamQueryFn = unsafe extern "C" fn(*mut c_void) -> CuResult;
type CtxGetDeviceFn = unsafe extern "C" fn(*mut i32) -> CuResult;

/// What `cuStreamIsCapturing` says about a stream (cuda.h `CUstreamCaptureStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureStatus {
    /// `CU_STREAM_CAPTURE_STATUS_NONE`: work on it executes; an event recorded on it is a
    /// timestamp.
    None,
    /// `ACTIVE` (1) or `INVALIDATED` (2): the stream is being captured into a graph; work
    /// and event records become graph nodes, not executed.
    Capturing,
    /// The legacy stream while a blocking stream captures
    /// ([`CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`]): touching it would invalidate that capture.
    ImplicitCapture,
    /// The driver refused the query (a stale stream handle, say): recording on the stream
    /// would fail the same way.
    Unknown,
}

/// A CUDA event made by [`CudaEvents::create`] (`CUevent`, an opaque driver pointer kept
/// as an address so it can travel through lock-free queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event(usize);

impl Event {
    /// No event (address 0): fills the unused slots of fixed-size arrays
    /// (`gpuspan_agent`'s scope-boundary marks); never passed to the driver.
    pub const UNSET: Event = Event(0);

    /// An event handle by address, as the driver returned it (for tests of code that keeps
    /// events; nothing is checked and the driver is not called).
    pub fn from_raw(addr: usize) -> Event {
        Event(addr)
    }

    /// The handle's address (for logs and tests).
    pub fn addr(self) -> usize {
        self.0
    }
}

/// A CUDA context (`CUcontext`) as returned by `cuCtxGetCurrent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Context(usize);

impl Context {
    /// No context (address 0, which `cuCtxGetCurrent` never returns): the context of a mark
    /// that recorded no event; never passed to the driver.
    pub const UNSET: Context = Context(0);

    /// A context handle by address, as the driver returned it (for tests of code that keeps
    /// contexts; nothing is checked and the driver is not called).
    pub fn from_raw(addr: usize) -> Context {
        Context(addr)
    }

    /// The handle's address (never 0 for a context `cuCtxGetCurrent` returned).
    pub fn addr(self) -> usize {
        self.0
    }
}

/// A CUDA stream (`CUstream`) named by the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stream(usize);

impl Stream {
    /// `CU_STREAM_LEGACY` (cuda.h: `((CUstream)0x1)`): the legacy default stream, which
    /// waits for all blocking streams and never sees non-blocking ones.
    pub const LEGACY: Stream = Stream(0x1);

    /// A stream handle the application passed (`cudaStream_t` / `CUstream` as an address).
    /// 0 is the default stream (legacy unless the application was built per-thread).
    pub fn from_raw(addr: usize) -> Stream {
        Stream(addr)
    }

    /// The handle's address.
    pub fn addr(self) -> usize {
        self.0
    }
}

/// The driver's event functions, loaded once and kept for the life of the process.
pub struct CudaEvents {
    _lib: libloading::Library,
    /// The file name that loaded.
    pub loaded_from: &'static str,
    create: EventCreateFn,
    record: EventRecordFn,
    query: EventQueryFn,
    elapsed: EventElapsedFn,
    ctx_get: CtxGetCurrentFn,
    ctx_set: CtxSetCurrentFn,
    is_capturing: Option<StreamIsCapturingFn>,
    exchange_mode: Option<ExchangeCaptureModeFn>,
    stream_query: Option<StreamQueryFn>,
    ctx_device: Option<CtxGetDeviceFn>,
}

impl std::fmt::Debug for CudaEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEvents").field("loaded_from", &self.loaded_from).finish()
    }
}

/// Why the driver's event functions could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// No library among [`CUDA_LIB_NAMES`] loaded.
    NotFound,
    /// The library lacks this symbol.
    MissingSymbol(&'static str),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::NotFound => write!(f, "no CUDA driver library ({})", CUDA_LIB_NAMES.join(", ")),
            LoadError::MissingSymbol(s) => write!(f, "the CUDA driver library lacks {s}"),
        }
    }
}

fn symbol(lib: &libloading::Library, name: &'static str) -> Result<*const c_void, LoadError> {
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    // SAFETY: reading a symbol's address as a raw pointer; the caller casts it to the
    // symbol's cuda.h prototype.
    match unsafe { lib.get::<*const c_void>(&z) } {
        Ok(s) if !(*s).is_null() => Ok(*s),
        _ => Err(LoadError::MissingSymbol(name)),
    }
}

/// True when a CUDA driver library among [`CUDA_LIB_NAMES`] loads (the process's own
/// when it already has one). Loading runs the driver's ELF constructors, as any CUDA
/// program does, and initializes nothing; the handle is closed again (the library stays
/// while anyone else holds it).
pub fn driver_loads() -> bool {
    CUDA_LIB_NAMES.iter().any(|name| {
        // SAFETY: loading the driver runs its ELF constructors, as any CUDA program does.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

impl CudaEvents {
    /// Loads the driver library (the dynamic linker's search: the process's own driver when
    /// the application already loaded it) and resolves the event functions. Loading does not
    /// initialize the driver (`cuInit` stays the application's call).
    pub fn load() -> Result<CudaEvents, LoadError> {
        for name in CUDA_LIB_NAMES {
            // SAFETY: loading the driver runs its ELF constructors, as any CUDA program does.
            if let Ok(lib) = unsafe { libloading::Library::new(name) } {
                return Self::resolve(lib, name);
            }
        }
        Err(LoadError::NotFound)
    }

    fn resolve(lib: libloading::Library, name: &'static str) -> Result<CudaEvents, LoadError> {
        let elapsed = symbol(&lib, "cuEventElapsedTime_v2").or_else(|_| symbol(&lib, "cuEventElapsedTime"))?;
        // SAFETY (each transmute): the pointer is the named driver function, and the target
        // type is its cuda.h prototype: `CUresult cuEventCreate(CUevent*, unsigned int)`,
        // `cuEventRecord(CUevent, CUstream)`, `cuEventQuery(CUevent)`,
        // `cuEventElapsedTime(_v2)(float*, CUevent, CUevent)`,
        // `cuCtxGetCurrent(CUcontext*)`, `cuCtxSetCurrent(CUcontext)`; the library stays
        // loaded as long as `self`.
        #[allow(clippy::missing_transmute_annotations)]
        unsafe {
            Ok(CudaEvents {
                create: std::mem::transmute(symbol(&lib, "cuEventCreate")?),
                record: std::mem::transmute(symbol(&lib, "cuEventRecord")?),
                query: std::mem::transmute(symbol(&lib, "cuEventQuery")?),
                elapsed: std::mem::transmute(elapsed),
                ctx_get: std::mem::transmute(symbol(&lib, "cuCtxGetCurrent")?),
                ctx_set: std::mem::transmute(symbol(&lib, "cuCtxSetCurrent")?),
                // `cuStreamIsCapturing(CUstream, CUstreamCaptureStatus*)` and
                // `cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode*)` (CUDA 10.0+;
                // optional so an older driver still gets coarse timing).
                is_capturing: symbol(&lib, "cuStreamIsCapturing").ok().map(|p| std::mem::transmute(p)),
                exchange_mode: symbol(&lib, "cuThreadExchangeStreamCaptureMode").ok().map(|p| std::mem::transmute(p)),
                // `cuStreamQuery(CUstream)`; optional: without it roots are never re-anchored.
                stream_query: symbol(&lib, "cuStreamQuery").ok().map(|p| std::mem::transmute(p)),
                // `cuCtxGetDevice(CUdevice*)`; optional (the device then is not reported).
                ctx_device: symbol(&lib, "cuCtxGetDevice").ok().map(|p| std::mem::transmute(p)),
                loaded_from: name,
                _lib: lib,
            })
        }
    }

    /// The calling thread's current context (`cuCtxGetCurrent`). Errors: the driver's code,
    /// `CUDA_ERROR_INVALID_CONTEXT` when no context is current.
    #[inline]
    pub fn current_context(&self) -> Result<Context, CuResult> {
        let mut ctx: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a live local (cuda.h `cuCtxGetCurrent`).
        let rc = unsafe { (self.ctx_get)(&mut ctx) };
        if rc != 0 {
            return Err(rc);
        }
        if ctx.is_null() {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        Ok(Context(ctx as usize))
    }

    /// Creates a timed event in the calling thread's current context and returns it with
    /// that context. Errors: the driver's code (`CUDA_ERROR_NOT_INITIALIZED` before `cuInit`,
    /// `CUDA_ERROR_INVALID_CONTEXT` with no current context, …).
    pub fn create(&self) -> Result<(Event, Context), CuResult> {
        let Context(ctx) = self.current_context()?;
        let mut ev: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a live local; flags CU_EVENT_DEFAULT.
        let rc = unsafe { (self.create)(&mut ev, CU_EVENT_DEFAULT) };
        match rc {
            0 if !ev.is_null() => Ok((Event(ev as usize), Context(ctx))),
            0 => Err(CUDA_ERROR_INVALID_HANDLE),
            e => Err(e),
        }
    }

    /// `cuEventRecord(ev, stream)`: non-blocking.
    #[inline]
    pub fn record(&self, ev: Event, stream: Stream) -> Result<(), CuResult> {
        // SAFETY: `ev` came from `create`; `stream` is the application's handle or LEGACY
        // (module docs on trusting it).
        match unsafe { (self.record)(ev.0 as *mut c_void, stream.0 as *mut c_void) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    /// `cuEventQuery`: `Ok(true)` completed, `Ok(false)` not yet (600), `Err` otherwise.
    pub fn is_complete(&self, ev: Event) -> Result<bool, CuResult> {
        // SAFETY: `ev` came from `create`.
        match unsafe { (self.query)(ev.0 as *mut c_void) } {
            0 => Ok(true),
            CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(e),
        }
    }

    /// `cuEventElapsedTime(_v2)`: ms from `start` to `end` (negative when `end` came first).
    pub fn elapsed_ms(&self, start: Event, end: Event) -> Result<f32, CuResult> {
        let mut ms = 0f32;
        // SAFETY: out-pointer to a live local; both events came from `create`.
        match unsafe { (self.elapsed)(&mut ms, start.0 as *mut c_void, end.0 as *mut c_void) } {
            0 => Ok(ms),
            e => Err(e),
        }
    }

    /// `cuStreamIsCapturing(stream)`: whether an event recorded on `stream` now would be a
    /// timestamp ([`CaptureStatus::None`]) or a graph node. The query itself is allowed
    /// during any capture and invalidates nothing (cuda.h).
    /// A driver without the function (before CUDA 10.0, which has no graphs) answers
    /// [`CaptureStatus::None`].
    #[inline]
    pub fn capture_status(&self, stream: Stream) -> CaptureStatus {
        let Some(f) = self.is_capturing else { return CaptureStatus::None };
        let mut status = 0u32;
        // SAFETY: out-pointer to a live local; `stream` is the application's handle or
        // LEGACY (module docs on trusting it).
        match unsafe { f(stream.0 as *mut c_void, &mut status) } {
            0 if status == 0 => CaptureStatus::None,
            0 => CaptureStatus::Capturing,
            CUDA_ERROR_STREAM_CAPTURE_IMPLICIT => CaptureStatus::ImplicitCapture,
            _ => CaptureStatus::Unknown,
        }
    }

    /// Puts the calling thread in `CU_STREAM_CAPTURE_MODE_RELAXED` (what PyTorch does around
    /// its allocator's event queries, CUPTI-NOTES §6b), so that this thread's event queries
    /// never invalidate a capture another thread has open in GLOBAL mode. For the agent's
    /// own threads; never called on an application thread. Returns the driver's code on
    /// failure (or when the driver lacks the function).
    pub fn relax_thread_capture_mode(&self) -> Result<(), CuResult> {
        let Some(f) = self.exchange_mode else { return Err(CUDA_ERROR_INVALID_HANDLE) };
        let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: in/out pointer to a live local holding a valid CUstreamCaptureMode.
        match unsafe { f(&mut mode) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    /// Whether every operation queued on `stream` has completed (`cuStreamQuery`: 0 yes,
    /// `CUDA_ERROR_NOT_READY` no), asked with the calling thread switched to
    /// `CU_STREAM_CAPTURE_MODE_RELAXED` and back (`cuThreadExchangeStreamCaptureMode` twice),
    /// so that the query, a potentially unsafe call, never invalidates a capture another
    /// thread has open in GLOBAL mode (CUPTI-NOTES §6b). Safe on an application thread; the
    /// caller must have checked that `stream` itself is not capturing. `None` when the driver
    /// lacks a function or answers anything else.
    pub fn stream_is_idle(&self, stream: Stream) -> Option<bool> {
        let (Some(query), Some(exchange)) = (self.stream_query, self.exchange_mode) else { return None };
        let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: in/out pointer to a live local holding a valid CUstreamCaptureMode; the
        // thread's previous mode comes back in it and is restored below.
        if unsafe { exchange(&mut mode) } != 0 {
            return None;
        }
        // SAFETY: `stream` is the application's handle or LEGACY (module docs on trusting it).
        let rc = unsafe { query(stream.0 as *mut c_void) };
        // SAFETY: as above, restoring the thread's own mode.
        unsafe { exchange(&mut mode) };
        match rc {
            0 => Some(true),
            CUDA_ERROR_NOT_READY => Some(false),
            _ => None,
        }
    }

    /// The CUDA device ordinal of the calling thread's current context (`cuCtxGetDevice`),
    /// `None` without one or without the function.
    pub fn current_device(&self) -> Option<i32> {
        let f = self.ctx_device?;
        let mut dev = -1i32;
        // SAFETY: out-pointer to a live local (cuda.h `cuCtxGetDevice(CUdevice*)`, CUdevice
        // is an int).
        (unsafe { f(&mut dev) } == 0 && dev >= 0).then_some(dev)
    }

    /// Makes `ctx` current on the calling thread (the collector's, before it queries events
    /// of that context).
    pub fn set_current(&self, ctx: Context) -> Result<(), CuResult> {
        // SAFETY: `ctx` came from `cuCtxGetCurrent` in `create`.
        match unsafe { (self.ctx_set)(ctx.0 as *mut c_void) } {
            0 => Ok(()),
            e => Err(e),
        }
    }
}

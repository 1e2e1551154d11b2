//! `libgpuspan.so`: the agent as the shared object that goes into a worker
//! (`LD_PRELOAD`, `CUDA_INJECTION64_PATH`, `NVTX_INJECTION64_PATH`).
//!
//! It is the root `gpuspan` package (the agent's C ABI `include/gpuspan.h`, the injection
//! entry points `InitializeInjection` / `InitializeInjectionNvtx2` and the load-time
//! constructor, all exported from there) plus the three CUPTI entry points below, which the
//! root package cannot define: they would clash with the simulator's `libcupti` symbols in
//! every test binary that links both. This crate is a cdylib only and nothing links it.
//!
//! # Interposed CUPTI calls
//!
//! When `libgpuspan.so` is preloaded it comes before `libcupti` in the global symbol lookup
//! order, so another activity client that calls CUPTI through its PLT (torch.profiler's
//! Kineto in `libtorch_cuda.so`) calls these first:
//! `cuptiActivityRegisterCallbacks`, `cuptiActivityEnable`, `cuptiActivityDisable`. Each
//! tells [`gpuspan_cupti::foreign_client::FOREIGN`] what that client asked for and forwards
//! to the process's CUPTI ([`gpuspan_cupti::foreign_client::real_cupti`]), so that a fine
//! window neither steals the client's records nor disables its kinds (the module's docs say
//! how). With no CUPTI loaded they answer `CUPTI_ERROR_NOT_INITIALIZED`; a panic inside reads
//! as `CUPTI_ERROR_UNKNOWN` (999) and never crosses into C. The agent itself never calls
//! them: it resolves CUPTI through its own library handle.
//!
//! Loaded only through `CUDA_INJECTION64_PATH` (`RTLD_LOCAL`), nothing is interposed.

#![deny(unsafe_op_in_unsafe_fn)]

// Links the root package, whose `#[no_mangle]` entry points this cdylib exports.
pub use gpuspan_lib::{flush_capture, request, stage, status, step};

use gpuspan_cupti::foreign_client::{real_cupti, FOREIGN, NOT_INITIALIZED};
use gpuspan_cupti::symbols::{BufferCompletedFn, BufferRequestedFn};
use std::panic::catch_unwind;

/// `CUPTI_ERROR_UNKNOWN` (`cupti_result.h`): what a panic inside an interposed call reads as.
const CUPTI_ERROR_UNKNOWN: u32 = 999;

/// Runs `call` with the process's CUPTI: `CUPTI_ERROR_NOT_INITIALIZED` when none is loaded,
/// `CUPTI_ERROR_UNKNOWN` if it panics (never across the C boundary).
fn forward(call: impl FnOnce(&gpuspan_cupti::foreign_client::RealCupti) -> u32) -> u32 {
    catch_unwind(std::panic::AssertUnwindSafe(|| match real_cupti() {
        Some(real) => call(&real),
        None => NOT_INITIALIZED,
    }))
    .unwrap_or(CUPTI_ERROR_UNKNOWN)
}

/// `CUptiResult cuptiActivityRegisterCallbacks(CUpti_BuffersCallbackRequestFunc,
/// CUpti_BuffersCallbackCompleteFunc)` (`cupti_activity.h`), as another activity client
/// calls it: remembered, and passed on to CUPTI unless gpuspan's buffer callbacks are
/// registered (`ForeignClient::register`).
#[no_mangle]
pub extern "C" fn cuptiActivityRegisterCallbacks(requested: Option<BufferRequestedFn>, completed: Option<BufferCompletedFn>) -> u32 {
    forward(|real| FOREIGN.register(real, requested, completed))
}

/// `CUptiResult cuptiActivityEnable(CUpti_ActivityKind)` (`cupti_activity.h`), as another
/// activity client calls it: passed on, and the kind remembered as that client's.
#[no_mangle]
pub extern "C" fn cuptiActivityEnable(kind: u32) -> u32 {
    forward(|real| FOREIGN.enable(real, kind))
}

/// `CUptiResult cuptiActivityDisable(CUpti_ActivityKind)` (`cupti_activity.h`), as another
/// activity client calls it: passed on unless gpuspan still collects the kind.
#[no_mangle]
pub extern "C" fn cuptiActivityDisable(kind: u32) -> u32 {
    forward(|real| FOREIGN.disable(real, kind))
}

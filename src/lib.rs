//! `gpuspan`: the GPU-side profiling agent for DiT inference workers, as a Rust library and
//! as `libgpuspan.so`.
//!
//! This root package builds the shared object that gets injected (`LD_PRELOAD`,
//! `CUDA_INJECTION64_PATH`, `NVTX_INJECTION64_PATH`): its three C entry points below are
//! thin shims over `gpuspan-agent`, each wrapped in `catch_unwind` there. [`flush_capture`]
//! and [`status`] are re-exported for programs that link the agent.
//!
//! How a worker tells the agent about its requests, steps and stages (scopes), besides NVTX:
//! - Rust: [`request`], [`step`], [`stage`] return a [`ScopeGuard`] that closes the scope
//!   when dropped (module [`api`]).
//! - C: `include/gpuspan.h` (`gpuspan_request_begin`, `gpuspan_step_begin`,
//!   `gpuspan_stage_begin`, `gpuspan_end`, `gpuspan_is_active`, `gpuspan_version`),
//!   exported by `libgpuspan.so`.
//! - Python: the `python/gpuspan` package, a ctypes wrapper over the C ABI (no build step),
//!   and its auto-instrumentation of PyTorch / diffusers workers (`gpuspan.auto`).
//!
//! All three share the allocation-free NVTX hot path ([`hooks::scope_begin`]) and cost one
//! atomic load when the agent is not collecting.

mod capi;
mod capi_py;
pub mod api;
pub mod kernels;
pub use api::{request, stage, step, ScopeGuard};
pub use gpuspan_agent::hooks;
pub use gpuspan_agent::lifecycle::{flush_capture, status, AgentStatus};

#[ctor::ctor]
fn gpuspan_on_load() {
    gpuspan_agent::entry::on_load();
}

/// Called by the CUDA driver when `CUDA_INJECTION64_PATH` names this library.
#[no_mangle]
pub extern "C" fn InitializeInjection() -> i32 {
    gpuspan_agent::entry::initialize_injection()
}

/// Called by every NVTX v3 instance when `NVTX_INJECTION64_PATH` names this library.
///
/// # Safety
/// Called by NVTX with its export-table accessor.
#[no_mangle]
pub unsafe extern "C" fn InitializeInjectionNvtx2(
    get_export_table: Option<gpuspan_cupti::nvtx::GetExportTableFn>,
) -> i32 {
    // SAFETY: forwarded from NVTX unchanged.
    unsafe { gpuspan_agent::entry::initialize_injection_nvtx2(get_export_table) }
}

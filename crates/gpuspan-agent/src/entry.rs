//! The `extern "C"` entry points of `libgpuspan.so`, and the exit handler.
//!
//! - ELF constructor (`LD_PRELOAD`): points `NVTX_INJECTION64_PATH` at this library when it
//!   is unset, then activates. Under `CUDA_INJECTION64_PATH` alone the constructor also
//!   runs (at dlopen time, inside `cuInit`), which is equally fine.
//! - `InitializeInjection` (CUDA driver, `CUDA_INJECTION64_PATH`): activates; returns 1.
//! - `InitializeInjectionNvtx2` (each NVTX instance): installs the hooks when the agent is
//!   active and returns 1; returns 0 (NVTX then turns its calls into no-ops) when inactive.
//!   It makes no NVTX call (CUPTI-NOTES §5: that would spin forever).
//!
//! Every entry is wrapped in `catch_unwind`.

use crate::state;

/// Returns the path of this shared object (via `dladdr` on one of its functions).
pub fn own_path() -> Option<std::path::PathBuf> {
    let mut info: libc::Dl_info = unsafe_zeroed_dl_info();
    // SAFETY: dladdr reads the address of a function of this object and fills `info`.
    let ok = unsafe { libc::dladdr(own_path as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic linker.
    let s = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let p = std::path::PathBuf::from(s.to_string_lossy().into_owned());
    // An executable linking the rlib reports itself; only a shared object is useful here.
    let is_so = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".so"));
    is_so.then(|| std::fs::canonicalize(&p).unwrap_or(p))
}

fn unsafe_zeroed_dl_info() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    }
}

/// Keeps this library loaded for the life of the process (`RTLD_NODELETE`), so the exit
/// handler and the CUPTI callbacks stay valid even if NVTX or the driver `dlclose` it.
fn pin_self() {
    if let Some(p) = own_path() {
        if let Ok(c) = std::ffi::CString::new(p.to_string_lossy().as_bytes()) {
            // SAFETY: dlopen of an already-loaded object with NOLOAD only bumps its flags.
            unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE) };
        }
    }
}

#[ctor::ctor]
fn on_load() {
    // Only when loaded as libgpuspan.so (not when the rlib is linked into a test binary).
    let _ = std::panic::catch_unwind(|| {
        let Some(me) = own_path() else { return };
        if std::env::var_os("GPUSPAN_NO_AUTOSTART").is_some() {
            return;
        }
        if std::env::var_os("NVTX_INJECTION64_PATH").is_none() {
            std::env::set_var("NVTX_INJECTION64_PATH", &me);
        }
        pin_self();
        let _ = state::activate();
    });
}

/// Called by the CUDA driver for `CUDA_INJECTION64_PATH` (CUPTI sample
/// `cupti_trace_injection`). Returns 1 (Kineto and Parca return 1 on success).
#[no_mangle]
pub extern "C" fn InitializeInjection() -> i32 {
    let _ = std::panic::catch_unwind(|| {
        pin_self();
        let _ = state::activate();
    });
    1
}

/// Called by each NVTX v3 instance (`nvtxInitOnce`) with its export-table accessor.
///
/// # Safety
/// `get_export_table` is NVTX's accessor (or NULL).
#[no_mangle]
pub unsafe extern "C" fn InitializeInjectionNvtx2(
    get_export_table: Option<gpuspan_cupti::nvtx::GetExportTableFn>,
) -> i32 {
    std::panic::catch_unwind(|| {
        let Some(get) = get_export_table else { return 0 };
        if state::activate().is_err() {
            return 0;
        }
        // SAFETY: `get` is the accessor NVTX passed us.
        let n = unsafe { gpuspan_cupti::nvtx::install_hooks(get, &crate::hooks::nvtx_hooks()) };
        i32::from(n > 0)
    })
    .unwrap_or(0)
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Err(e) = state::flush_capture() {
            crate::log::warn(&format!("capture not written: {e}"));
        }
    });
}

/// Registers the exit handler that writes the capture (once).
pub fn register_exit_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `at_exit` is an `extern "C" fn()` living as long as the (pinned) library.
        unsafe { libc::atexit(at_exit) };
    });
}

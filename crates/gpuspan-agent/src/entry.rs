//! What the `extern "C"` entry points of `libgpuspan.so` do (the exit handler is in
//! [`crate::exit_handler`]).
//!
//! The `#[no_mangle]` symbols and the ELF constructor themselves are in the root package
//! (`src/lib.rs`), which builds `libgpuspan.so`: cargo cannot have this crate's library also
//! be named `gpuspan` next to the root package's.
//!
//! - ELF constructor (`LD_PRELOAD`): only arranges injection. It points
//!   `NVTX_INJECTION64_PATH` and `CUDA_INJECTION64_PATH` at this library when they are unset
//!   and pins it; it does not activate, so a process that never initialises CUDA, calls NVTX
//!   or calls the gpuspan API (a shell, a compiler, an Inductor compile worker,
//!   `nvidia-smi`) gets no thread, no socket, no file and no output from us. Under
//!   `CUDA_INJECTION64_PATH` alone the constructor runs at dlopen time inside `cuInit`,
//!   which is equally fine.
//! - `InitializeInjection` (CUDA driver, `CUDA_INJECTION64_PATH`, called during the
//!   process's first `cuInit`): activates; returns 1.
//! - The first gpuspan API call (C ABI, Rust guards, the Python helper): activates
//!   ([`on_api_call`]), for workers that link the library or load it by path after CUDA
//!   was initialised, and for processes where another tool owns `CUDA_INJECTION64_PATH`.
//! - `InitializeInjectionNvtx2` (each NVTX instance): installs the hooks when the agent is
//!   active and returns 1; returns 0 (NVTX then turns its calls into no-ops) when inactive.
//!   It makes no NVTX call (CUPTI-NOTES §5: that would spin forever).
//!
//! Every entry is wrapped in `catch_unwind`.

use crate::lifecycle;
use crate::lifecycle::Trigger;

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

/// What the ELF constructor of `libgpuspan.so` does (`LD_PRELOAD`, or `dlopen` by the CUDA
/// driver / NVTX): when running from a shared object, points `NVTX_INJECTION64_PATH` and
/// `CUDA_INJECTION64_PATH` at it where unset (another tool's injection is left in place),
/// and pins it. It does not activate: activation waits for the process's first CUDA
/// initialisation, NVTX call or gpuspan API call. No thread, allocation of note, file or
/// output. Does nothing when this code is linked into an executable (tests, the CLI) or
/// when `GPUSPAN_NO_AUTOSTART` is set.
pub fn on_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(me) = own_path() else { return };
        if std::env::var_os("GPUSPAN_NO_AUTOSTART").is_some() {
            return;
        }
        for var in ["NVTX_INJECTION64_PATH", "CUDA_INJECTION64_PATH"] {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                std::env::set_var(var, &me);
            }
        }
        pin_self();
    });
}

/// Activates the agent on the first gpuspan API call of the process (later calls: two
/// atomic loads). `GPUSPAN_NO_AUTOSTART` turns this off as it does the constructor; in a
/// forked child of an active process it does nothing (`lifecycle::activate_for`).
#[inline]
pub fn on_api_call() {
    if lifecycle::agent().is_none() && !lifecycle::activation_attempted() && !crate::shared::is_forked_child() {
        let _ = std::panic::catch_unwind(|| {
            if std::env::var_os("GPUSPAN_NO_AUTOSTART").is_none() {
                let _ = activate(Trigger::Api);
            }
        });
    }
}

/// The `pthread_atfork` child handler: the child starts with the agent inactive
/// (`lifecycle::on_fork_child`), without the parent's control socket, and with SIGTERM back
/// at its default disposition if the agent had installed its handler. Atomics and one
/// `close`, all async-signal-safe (POSIX `fork`: the child of a multithreaded process may
/// only make such calls until it execs).
extern "C" fn at_fork_child() {
    lifecycle::on_fork_child();
    crate::signals::reset_in_forked_child();
    if let Some(fd) = crate::control::take_listener_fd() {
        // SAFETY: `fd` is the control socket's listening descriptor, whose owner (the
        // parent's server thread) does not exist in this child; nothing else closes it here.
        unsafe { libc::close(fd) };
    }
}

/// Activates the agent for `trigger` ([`crate::lifecycle::activate_for`]) with the
/// process-level handlers this module owns: the fork handler is registered before any
/// activation work (so a fork in the middle of it is seen), the exit handler once the agent
/// is active.
pub fn activate(trigger: Trigger) -> Result<(), String> {
    register_fork_handler();
    let r = lifecycle::activate_for(trigger);
    if r.is_ok() {
        crate::exit_handler::arm();
    }
    r
}

/// Registers `at_fork_child` with `pthread_atfork`, once, before activation starts work.
pub fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a 'static `extern "C" fn()` child handler, no prepare / parent handler.
        unsafe { libc::pthread_atfork(None, None, Some(at_fork_child)) };
    });
}

/// What `InitializeInjection` (CUDA driver, `CUDA_INJECTION64_PATH`; CUPTI sample
/// `cupti_trace_injection`) does. Returns 1, as Kineto and Parca do on success.
pub fn initialize_injection() -> i32 {
    let _ = std::panic::catch_unwind(|| {
        pin_self();
        let _ = activate(Trigger::Cuda);
    });
    1
}

/// What `InitializeInjectionNvtx2` does: installs the hooks into the calling NVTX instance
/// and returns 1, or returns 0 when the agent is inactive (NVTX then makes its calls no-ops).
/// Makes no NVTX call (CUPTI-NOTES §5).
///
/// # Safety
/// `get_export_table` is the accessor NVTX passed (or `None`).
pub unsafe fn initialize_injection_nvtx2(get_export_table: Option<gpuspan_cupti::nvtx::GetExportTableFn>) -> i32 {
    std::panic::catch_unwind(|| {
        let Some(get) = get_export_table else { return 0 };
        if activate(Trigger::Nvtx).is_err() {
            return 0;
        }
        // SAFETY: `get` is the accessor NVTX passed us.
        let n = unsafe { gpuspan_cupti::nvtx::install_hooks(get, &crate::hooks::nvtx_hooks()) };
        i32::from(n > 0)
    })
    .unwrap_or(0)
}

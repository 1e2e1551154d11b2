//! `CUDA_INJECTION64_PATH` handling at `cuInit`, as the real driver does (CUPTI-NOTES §5):
//! dlopen the library once, dlsym `InitializeInjection`, call it as `int (*)(void)`.
//! Any failure is reported with one stderr line and otherwise ignored.

use std::sync::atomic::{AtomicBool, Ordering};

/// Loads and initializes the injection library, at most once per process. Must be called
/// without the sim lock (the injection calls back into CUPTI).
pub fn run_once() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(path) = std::env::var_os("CUDA_INJECTION64_PATH").filter(|p| !p.is_empty()) else {
        return;
    };
    // SAFETY: loading a user-named shared object runs its initializers; that is exactly
    // what CUDA_INJECTION64_PATH asks for. The library is leaked (never unloaded).
    let lib = match unsafe { libloading::Library::new(&path) } {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "gpuspan-simgpu: CUDA_INJECTION64_PATH={}: cannot load: {e}",
                path.to_string_lossy()
            );
            return;
        }
    };
    // SAFETY: `InitializeInjection` has the documented signature `int (*)(void)`.
    let init = unsafe { lib.get::<unsafe extern "C" fn() -> i32>(b"InitializeInjection\0") };
    match init {
        Ok(f) => {
            // SAFETY: calling the injection's entry point with its documented signature.
            let _ = unsafe { f() };
        }
        Err(e) => eprintln!(
            "gpuspan-simgpu: CUDA_INJECTION64_PATH={}: no InitializeInjection: {e}",
            path.to_string_lossy()
        ),
    }
    std::mem::forget(lib);
}

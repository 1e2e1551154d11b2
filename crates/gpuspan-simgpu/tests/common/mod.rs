//! What the simulator's C-ABI tests share: the built cdylib loaded once (as the agent and
//! the replay worker `dlopen` it), symbol lookup, and the `c!` call macro.

use libloading::Library;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The built `libgpuspan_simgpu.so`: where `install::find_sim_lib` finds it, else
/// `target/debug`.
pub fn lib_path() -> PathBuf {
    if let Some(p) = gpuspan_simgpu::install::find_sim_lib() {
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug").join(gpuspan_simgpu::install::SIM_LIB_NAME)
}

/// The simulator library, loaded once for the test process.
pub fn lib() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let p = lib_path();
        // SAFETY: loading our own cdylib; its initializers are Rust statics only.
        unsafe { Library::new(&p) }.unwrap_or_else(|e| panic!("load {}: {e}", p.display()))
    })
}

/// Looks up `name` as the fn-pointer type `T`.
pub fn sym<T: Copy>(name: &str) -> T {
    let n = format!("{name}\0");
    // SAFETY: each caller declares the symbol with its C signature.
    unsafe { *lib().get::<T>(n.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}")) }
}

/// Calls the export `name` with the given C prototype:
/// `c!(cuInit(0) as fn(u32) -> u32)`.
macro_rules! c {
    ($name:ident ( $($arg:expr),* $(,)? ) as fn($($t:ty),* $(,)?) -> $r:ty) => {{
        let f: unsafe extern "C" fn($($t),*) -> $r = $crate::common::sym(stringify!($name));
        // SAFETY: argument types match the C prototype of the export.
        unsafe { f($($arg),*) }
    }};
}

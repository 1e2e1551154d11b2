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

/// Activity buffers for the C-ABI tests: `request` hands out 64 KiB buffers, `complete`
/// splits each returned buffer into its records (`cuptiActivityGetNextRecord`) and keeps
/// their bytes in `RECORDS`.
#[allow(dead_code)]
pub mod records {
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::ffi::c_void;
    use std::sync::Mutex;

    /// Records delivered so far, each as its bytes.
    pub static RECORDS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// `CUpti_BuffersCallbackRequestFunc`.
    pub extern "C" fn request(buf: *mut *mut u8, size: *mut usize, max: *mut usize) {
        // SAFETY: out-pointers from the sim; the layout is non-zero-sized.
        unsafe {
            *buf = alloc_zeroed(Layout::from_size_align(1 << 16, 8).unwrap());
            *size = 1 << 16;
            *max = 0;
        }
    }

    /// `CUpti_BuffersCallbackCompleteFunc`.
    pub extern "C" fn complete(_ctx: *mut c_void, _stream: u32, buf: *mut u8, size: usize, valid: usize) {
        let next: unsafe extern "C" fn(*mut u8, usize, *mut *mut c_void) -> u32 = super::sym("cuptiActivityGetNextRecord");
        let mut rec: *mut c_void = std::ptr::null_mut();
        let mut starts = Vec::new();
        // SAFETY: a buffer from `request`, handed back by the sim with `valid` bytes.
        while unsafe { next(buf, valid, &mut rec) } == 0 {
            starts.push(rec as usize);
        }
        let end = buf as usize + valid;
        let mut out = RECORDS.lock().unwrap();
        for (i, &s) in starts.iter().enumerate() {
            let e = starts.get(i + 1).copied().unwrap_or(end);
            // SAFETY: [s, e) lies inside the valid part of the buffer.
            out.push(unsafe { std::slice::from_raw_parts(s as *const u8, e - s) }.to_vec());
        }
        // SAFETY: allocated in `request` with this size and alignment.
        unsafe { dealloc(buf, Layout::from_size_align(size, 8).unwrap()) };
    }

    /// The u32 at `off` of record `r`.
    pub fn u32_at(r: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes(r[off..off + 4].try_into().unwrap())
    }
}

//! The exported C ABI: `libcuda.so.1` ([`cuda`]), `libcupti.so.12` ([`cupti`]),
//! `libnvidia-ml.so.1` ([`nvml`]) subsets, stream capture and CUDA graphs ([`graph`]) and the
//! sim's own hooks ([`ext`]).
//!
//! Every export runs inside [`guard`]: a panic never unwinds into C; it becomes the
//! library's "unknown error" code.

pub mod cbid;
pub mod cuda;
pub mod cupti;
pub mod ext;
pub mod graph;
pub mod injection;
pub mod nvml;

use cudarc::cupti::sys::CUptiResult;
use cudarc::driver::sys::CUresult;

/// The value an export returns when its body panicked.
pub trait PanicCode {
    const ON_PANIC: Self;
}

impl PanicCode for CUresult {
    const ON_PANIC: Self = CUresult::CUDA_ERROR_UNKNOWN;
}

impl PanicCode for CUptiResult {
    const ON_PANIC: Self = CUptiResult::CUPTI_ERROR_UNKNOWN;
}

/// NVML return codes are plain ints (`nvmlReturn_t`); 999 = NVML_ERROR_UNKNOWN.
impl PanicCode for u32 {
    const ON_PANIC: Self = 999;
}

impl PanicCode for i32 {
    const ON_PANIC: Self = 0;
}

impl PanicCode for () {
    const ON_PANIC: Self = ();
}

impl PanicCode for u64 {
    const ON_PANIC: Self = 0;
}

impl PanicCode for usize {
    const ON_PANIC: Self = 0;
}

impl<T> PanicCode for *const T {
    const ON_PANIC: Self = std::ptr::null();
}

/// Runs `f`, turning a panic into `R::ON_PANIC`.
pub fn guard<R: PanicCode>(f: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(R::ON_PANIC)
}

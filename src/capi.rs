//! The C ABI of `include/gpuspan.h`: `#[no_mangle]` shims over the agent's scope hot path.
//!
//! Each body is wrapped in `catch_unwind` (a panic must never cross into C; it reads as
//! "not collecting", -2) and allocates nothing: names are formatted into a stack buffer of
//! [`gpuspan_core::scope::INLINE_NAME_CAP`] bytes (longer names are cut) and handed to
//! [`gpuspan_agent::hooks::scope_begin`], the same path NVTX push takes.

use crate::api::{write_request_head, write_step, NameBuf};
use gpuspan_agent::hooks::{scope_begin, scope_end, NO_PUSH_POP_TRACKING};
use std::ffi::{c_char, c_int, CStr};
use std::panic::catch_unwind;

/// `gpuspan_version()`'s string.
const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(v) => v,
    Err(_) => panic!("version has a NUL"),
};

/// The bytes of a NUL-terminated C string, or an empty slice for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for `'a`.
unsafe fn c_bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        return b"";
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_bytes()
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// `int gpuspan_request_begin(const char *traceparent, const char *attrs)`: opens
/// `gpuspan.request <traceparent> <attrs>` on the calling thread.
///
/// # Safety
/// `traceparent` and `attrs` are each NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gpuspan_request_begin(traceparent: *const c_char, attrs: *const c_char) -> c_int {
    catch_unwind(|| {
        // `is_active` activates the agent on the first API call.
        if !crate::api::is_active() {
            return NO_PUSH_POP_TRACKING;
        }
        let mut name = NameBuf::new();
        // SAFETY: the caller passes NULL or a NUL-terminated string (header contract).
        write_request_head(&mut name, unsafe { c_bytes(traceparent) });
        // SAFETY: as above.
        let attrs = trim(unsafe { c_bytes(attrs) });
        if !attrs.is_empty() {
            name.push(b" ");
            name.push(attrs);
        }
        scope_begin(name.as_bytes())
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `int gpuspan_step_begin(uint32_t index, uint32_t count)`: opens `dit.step <index>/<count>`.
#[no_mangle]
pub extern "C" fn gpuspan_step_begin(index: u32, count: u32) -> c_int {
    catch_unwind(|| {
        // `is_active` activates the agent on the first API call.
        if !crate::api::is_active() {
            return NO_PUSH_POP_TRACKING;
        }
        let mut name = NameBuf::new();
        write_step(&mut name, index, count);
        scope_begin(name.as_bytes())
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `int gpuspan_stage_begin(const char *name)`: opens a scope named `name` (NULL: unnamed).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gpuspan_stage_begin(name: *const c_char) -> c_int {
    catch_unwind(|| {
        gpuspan_agent::entry::on_api_call();
        // SAFETY: the caller passes NULL or a NUL-terminated string (header contract); the
        // agent copies (and cuts) it into its inline name.
        scope_begin(unsafe { c_bytes(name) })
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `int gpuspan_end(void)`: closes the innermost open scope of the calling thread.
#[no_mangle]
pub extern "C" fn gpuspan_end() -> c_int {
    catch_unwind(scope_end).unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `int gpuspan_use_streams(void *const *streams, size_t n)`: the CUDA streams the calling
/// thread's next scopes are timed on in coarse mode (at most 4 kept; `n == 0` or NULL: the
/// legacy default stream). Returns how many were kept, or -2 when the agent is not loaded.
///
/// # Safety
/// `streams` is NULL or points to `n` readable pointers.
#[no_mangle]
pub unsafe extern "C" fn gpuspan_use_streams(streams: *const *mut std::ffi::c_void, n: usize) -> c_int {
    catch_unwind(|| {
        gpuspan_agent::entry::on_api_call();
        if gpuspan_agent::shared::shared().is_none() {
            return NO_PUSH_POP_TRACKING;
        }
        let mut addrs = [0usize; gpuspan_agent::coarse::mark::MAX_SCOPE_STREAMS];
        let n = if streams.is_null() { 0 } else { n.min(addrs.len()) };
        for (i, a) in addrs.iter_mut().enumerate().take(n) {
            // SAFETY: `streams` points to at least `n` pointers (caller's contract), i < n.
            *a = unsafe { *streams.add(i) } as usize;
        }
        crate::api::use_streams(&addrs[..n]) as c_int
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `int gpuspan_is_active(void)`: 1 when the agent is collecting, else 0.
#[no_mangle]
pub extern "C" fn gpuspan_is_active() -> c_int {
    catch_unwind(crate::api::is_active).map_or(0, c_int::from)
}

/// `const char *gpuspan_version(void)`: this library's version, a static string.
#[no_mangle]
pub extern "C" fn gpuspan_version() -> *const c_char {
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_no_ops_when_inactive() {
        // Fine mode: with no CUPTI on the test binary's library path the first API call
        // activates nothing. (Coarse mode, the default, would activate and time scopes on
        // the CPU: a CPU-only process.)
        std::env::set_var("GPUSPAN_MODE", "fine");
        let tp = c"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // SAFETY: NUL-terminated literals and NULLs, as the header allows.
        unsafe {
            assert_eq!(gpuspan_request_begin(tp.as_ptr(), c"model=x".as_ptr()), NO_PUSH_POP_TRACKING);
            assert_eq!(gpuspan_request_begin(std::ptr::null(), std::ptr::null()), NO_PUSH_POP_TRACKING);
            assert_eq!(gpuspan_stage_begin(c"ffn".as_ptr()), NO_PUSH_POP_TRACKING);
            assert_eq!(gpuspan_stage_begin(std::ptr::null()), NO_PUSH_POP_TRACKING);
        }
        assert_eq!(gpuspan_step_begin(1, 2), NO_PUSH_POP_TRACKING);
        assert_eq!(gpuspan_end(), NO_PUSH_POP_TRACKING);
        assert_eq!(gpuspan_is_active(), 0);
    }

    #[test]
    fn version_is_the_package_version() {
        // SAFETY: gpuspan_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(gpuspan_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn trims_ascii_whitespace() {
        assert_eq!(trim(b"  a=b c=d \n"), b"a=b c=d");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim(b""), b"");
    }
}

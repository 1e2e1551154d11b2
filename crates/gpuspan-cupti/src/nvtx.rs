//! The NVTX v3 injection ABI (tool side).
//!
//! An NVTX instance (every shared object that compiled the NVTX v3 headers, or NVIDIA's
//! `libnvtx3interop`) reads `NVTX_INJECTION64_PATH` at its first NVTX call, `dlopen`s the
//! tool and calls `int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t)`. The tool asks the
//! export table for `NVTX_ETID_CALLBACKS` and gets, per module, a table of *pointers to the
//! instance's function-pointer slots*; writing our function into `*table[slot]` redirects
//! that NVTX API. Layouts and numbers: `nvtx3/nvtxDetail/nvtxTypes.h`, `nvtxInit.h`,
//! `nvtxImpl.h` (CUPTI-NOTES §5).

use std::ffi::c_void;

/// `NvtxGetExportTableFunc_t`: `const void *(*)(uint32_t exportTableId)`.
pub type GetExportTableFn = unsafe extern "C" fn(u32) -> *const c_void;

/// `NVTX_ETID_CALLBACKS` (nvtxTypes.h).
pub const ETID_CALLBACKS: u32 = 1;

/// `NvtxCallbackModule` values (nvtxTypes.h).
pub mod module {
    /// `NVTX_CB_MODULE_CORE`.
    pub const CORE: u32 = 1;
    /// `NVTX_CB_MODULE_CORE2` (domain APIs).
    pub const CORE2: u32 = 5;
}

/// `NvtxCallbackIdCore` slots (nvtxTypes.h).
pub mod core_slot {
    /// `nvtxMarkEx`.
    pub const MARK_EX: usize = 1;
    /// `nvtxMarkA`.
    pub const MARK_A: usize = 2;
    /// `nvtxRangePushEx`.
    pub const RANGE_PUSH_EX: usize = 8;
    /// `nvtxRangePushA`.
    pub const RANGE_PUSH_A: usize = 9;
    /// `nvtxRangePushW` (wide string, `wchar_t` = UTF-32 on Linux).
    pub const RANGE_PUSH_W: usize = 10;
    /// `nvtxRangePop`.
    pub const RANGE_POP: usize = 11;
}

/// `NvtxCallbackIdCore2` slots (nvtxTypes.h).
pub mod core2_slot {
    /// `nvtxDomainRangePushEx`.
    pub const DOMAIN_RANGE_PUSH_EX: usize = 4;
    /// `nvtxDomainRangePop`.
    pub const DOMAIN_RANGE_POP: usize = 5;
    /// `nvtxDomainRegisterStringA`.
    pub const DOMAIN_REGISTER_STRING_A: usize = 10;
    /// `nvtxDomainRegisterStringW`.
    pub const DOMAIN_REGISTER_STRING_W: usize = 11;
    /// `nvtxDomainCreateA`.
    pub const DOMAIN_CREATE_A: usize = 12;
    /// `nvtxDomainCreateW`.
    pub const DOMAIN_CREATE_W: usize = 13;
}

/// `NvtxFunctionPointer`: a generic function-pointer slot.
pub type FunctionPointer = Option<unsafe extern "C" fn()>;
/// `NvtxFunctionTable`: array of pointers to slots (`NvtxFunctionPointer **`).
pub type FunctionTable = *mut *mut FunctionPointer;

/// `NvtxExportTableCallbacks` (nvtxTypes.h): `{ size_t struct_size; GetModuleFunctionTable }`.
#[repr(C)]
pub struct ExportTableCallbacks {
    /// `sizeof` of the struct as the instance compiled it.
    pub struct_size: usize,
    /// `int (*)(NvtxCallbackModule module, NvtxFunctionTable *out_table, unsigned *out_size)`.
    pub get_module_function_table:
        Option<unsafe extern "C" fn(u32, *mut FunctionTable, *mut u32) -> i32>,
}

/// `nvtxEventAttributes_t` v2 (48 bytes, nvToolsExt.h; cudarc `nvtx::sys`).
pub use cudarc::nvtx::sys::nvtxEventAttributes_t as EventAttributes;

/// `NVTX_MESSAGE_TYPE_ASCII` (nvToolsExt.h).
pub const MESSAGE_TYPE_ASCII: i32 = 1;
/// `NVTX_MESSAGE_TYPE_UNICODE`: message is a `const wchar_t *` (UTF-32 on Linux).
pub const MESSAGE_TYPE_UNICODE: i32 = 2;
/// `NVTX_MESSAGE_TYPE_REGISTERED`: message is a registered string handle.
pub const MESSAGE_TYPE_REGISTERED: i32 = 3;

/// Our functions for the slots we take over.
#[derive(Debug, Clone, Copy)]
pub struct Hooks {
    /// `int nvtxRangePushA(const char *)`.
    pub range_push_a: unsafe extern "C" fn(*const std::ffi::c_char) -> i32,
    /// `int nvtxRangePushEx(const nvtxEventAttributes_t *)`.
    pub range_push_ex: unsafe extern "C" fn(*const EventAttributes) -> i32,
    /// `int nvtxRangePop(void)`.
    pub range_pop: unsafe extern "C" fn() -> i32,
    /// `int nvtxDomainRangePushEx(nvtxDomainHandle_t, const nvtxEventAttributes_t *)`.
    pub domain_range_push_ex: unsafe extern "C" fn(*mut c_void, *const EventAttributes) -> i32,
    /// `int nvtxDomainRangePop(nvtxDomainHandle_t)`.
    pub domain_range_pop: unsafe extern "C" fn(*mut c_void) -> i32,
    /// `int nvtxRangePushW(const wchar_t *)`.
    pub range_push_w: unsafe extern "C" fn(*const WChar) -> i32,
    /// `nvtxDomainHandle_t nvtxDomainCreateA(const char *)`.
    pub domain_create_a: unsafe extern "C" fn(*const std::ffi::c_char) -> *mut c_void,
    /// `nvtxDomainHandle_t nvtxDomainCreateW(const wchar_t *)`.
    pub domain_create_w: unsafe extern "C" fn(*const WChar) -> *mut c_void,
    /// `nvtxStringHandle_t nvtxDomainRegisterStringA(nvtxDomainHandle_t, const char *)`.
    pub domain_register_string_a: unsafe extern "C" fn(*mut c_void, *const std::ffi::c_char) -> *const c_void,
    /// `nvtxStringHandle_t nvtxDomainRegisterStringW(nvtxDomainHandle_t, const wchar_t *)`.
    pub domain_register_string_w: unsafe extern "C" fn(*mut c_void, *const WChar) -> *const c_void,
}

/// Installs `hooks` into the NVTX instance behind `get_export_table`. Returns the number of
/// slots written (0 when the instance offers no callbacks table).
///
/// Must not make any NVTX call (the instance is mid-initialisation; a call would spin
/// forever, CUPTI-NOTES §5).
///
/// # Safety
/// `get_export_table` is the function NVTX passed to `InitializeInjectionNvtx2`.
#[allow(clippy::missing_transmute_annotations)] // target type: the slot's generic fn pointer
pub unsafe fn install_hooks(get_export_table: GetExportTableFn, hooks: &Hooks) -> usize {
    // SAFETY: calling NVTX's own export-table accessor with a documented id.
    let cb = unsafe { get_export_table(ETID_CALLBACKS) } as *const ExportTableCallbacks;
    if cb.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL CALLBACKS table has at least struct_size and the function.
    let get = match unsafe { (*cb).get_module_function_table } {
        Some(f) => f,
        None => return 0,
    };
    let mut written = 0;
    let mut put = |module: u32, slot: usize, f: unsafe extern "C" fn()| {
        let mut table: FunctionTable = std::ptr::null_mut();
        let mut size: u32 = 0;
        // SAFETY: valid out-pointers; NVTX fills them for a known module.
        let ok = unsafe { get(module, &mut table, &mut size) };
        if ok == 0 || table.is_null() || slot >= size as usize {
            return;
        }
        // SAFETY: `table` has `size` entries (excluding the NULL sentinel), each a pointer to
        // one of the instance's function-pointer slots; `slot < size`.
        unsafe {
            let slot_ptr = *table.add(slot);
            if !slot_ptr.is_null() {
                *slot_ptr = Some(f);
                written += 1;
            }
        }
    };
    // SAFETY (transmutes): each hook has exactly the C signature of the NVTX API whose slot it
    // fills; NVTX stores slots as a generic fn pointer and calls them with that signature.
    unsafe {
        put(module::CORE, core_slot::RANGE_PUSH_A, std::mem::transmute(hooks.range_push_a as *const ()));
        put(module::CORE, core_slot::RANGE_PUSH_EX, std::mem::transmute(hooks.range_push_ex as *const ()));
        put(module::CORE, core_slot::RANGE_POP, std::mem::transmute(hooks.range_pop as *const ()));
        put(module::CORE2, core2_slot::DOMAIN_RANGE_PUSH_EX, std::mem::transmute(hooks.domain_range_push_ex as *const ()));
        put(module::CORE2, core2_slot::DOMAIN_RANGE_POP, std::mem::transmute(hooks.domain_range_pop as *const ()));
        put(module::CORE, core_slot::RANGE_PUSH_W, std::mem::transmute(hooks.range_push_w as *const ()));
        put(module::CORE2, core2_slot::DOMAIN_CREATE_A, std::mem::transmute(hooks.domain_create_a as *const ()));
        put(module::CORE2, core2_slot::DOMAIN_CREATE_W, std::mem::transmute(hooks.domain_create_w as *const ()));
        put(module::CORE2, core2_slot::DOMAIN_REGISTER_STRING_A, std::mem::transmute(hooks.domain_register_string_a as *const ()));
        put(module::CORE2, core2_slot::DOMAIN_REGISTER_STRING_W, std::mem::transmute(hooks.domain_register_string_w as *const ()));
    }
    written
}

/// `wchar_t` on Linux: 32 bits, one UTF-32 code point (glibc; NVTX's `W` APIs).
pub type WChar = i32;

/// The message of an event-attributes struct as UTF-8 bytes, for the three message types:
/// ASCII (`const char *`), UNICODE (`const wchar_t *`, converted into `buf`) and REGISTERED
/// (an `nvtxStringHandle_t`; gpuspan's `nvtxDomainRegisterString*` hooks hand out pointers
/// to NUL-terminated UTF-8 strings, so a handle is read as one). `None` for no attributes,
/// no message or another message type. No allocation.
///
/// # Safety
/// `attr` is NULL or points to a valid `nvtxEventAttributes_t` whose message, if any, is a
/// NUL-terminated string of its type (or a string handle from gpuspan's hooks) valid for the
/// returned lifetime.
pub unsafe fn message_text(attr: *const EventAttributes, buf: &mut [u8]) -> Option<&[u8]> {
    if attr.is_null() {
        return None;
    }
    // SAFETY: caller contract.
    let a = unsafe { &*attr };
    match a.messageType {
        MESSAGE_TYPE_ASCII | MESSAGE_TYPE_REGISTERED => {
            // SAFETY: for ASCII messages the union holds a `const char *`; for registered ones
            // a handle that gpuspan made from a NUL-terminated string (caller contract).
            let p = unsafe { a.message.ascii };
            if p.is_null() {
                return None;
            }
            // SAFETY: caller contract: NUL-terminated.
            Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
        }
        MESSAGE_TYPE_UNICODE => {
            // SAFETY: for UNICODE messages the union holds a `const wchar_t *`.
            let p = unsafe { a.message.unicode } as *const WChar;
            // SAFETY: caller contract: NUL-terminated wide string.
            let n = unsafe { wide_to_utf8(p, buf) };
            Some(&buf[..n])
        }
        _ => None,
    }
}

/// Fuzzing entry (`crates/gpuspan-fuzz`): an `nvtxEventAttributes_t` built from arbitrary
/// bytes (version, size, message type and the message's bytes, made NUL-terminated as the
/// NVTX contract requires; a wide message from 4-byte groups, any code point) read by
/// [`message_text`] into a 256-byte buffer, as the agent's NVTX hooks do. Returns the text
/// (lossy UTF-8).
pub fn message_of_fuzz_bytes(data: &[u8]) -> Option<String> {
    let take = |i: usize| data.get(i).copied().unwrap_or(0);
    let message_type = i32::from_le_bytes([take(0), take(1), take(2), take(3)]);
    let body = data.get(8..).unwrap_or(&[]);
    let ascii: Vec<u8> = body.iter().copied().filter(|&b| b != 0).chain(std::iter::once(0)).collect();
    let wide: Vec<WChar> = body
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .filter(|&w| w != 0)
        .chain(std::iter::once(0))
        .collect();
    // SAFETY: a zeroed attributes struct is a valid value (integers and a pointer union).
    let mut attr: EventAttributes = unsafe { std::mem::zeroed() };
    attr.version = u16::from_le_bytes([take(4), take(5)]);
    attr.size = u16::from_le_bytes([take(6), take(7)]);
    attr.messageType = message_type;
    attr.message.ascii = if message_type == MESSAGE_TYPE_UNICODE { wide.as_ptr() as *const std::ffi::c_char } else { ascii.as_ptr() as *const std::ffi::c_char };
    let mut buf = [0u8; 256];
    // SAFETY: `attr` is a valid struct whose message is a NUL-terminated string of the type
    // it claims (ASCII / registered: `ascii`; UNICODE: `wide`), both alive for this call.
    unsafe { message_text(&attr, &mut buf) }.map(|t| String::from_utf8_lossy(t).into_owned())
}

/// Converts the NUL-terminated wide string at `p` to UTF-8 into `buf`, stopping at the NUL
/// or when the next character would not fit; invalid code points become U+FFFD. Returns the
/// bytes written (0 for NULL). No allocation.
///
/// # Safety
/// `p` is NULL or a NUL-terminated `wchar_t` string; only the characters up to the NUL, or
/// up to what fits in `buf`, are read.
pub unsafe fn wide_to_utf8(p: *const WChar, buf: &mut [u8]) -> usize {
    if p.is_null() {
        return 0;
    }
    let mut n = 0;
    let mut i = 0;
    loop {
        // SAFETY: caller contract: every element up to the NUL is readable; we stop at it.
        let w = unsafe { p.add(i).read_unaligned() };
        if w == 0 {
            break;
        }
        let c = u32::try_from(w).ok().and_then(char::from_u32).unwrap_or(char::REPLACEMENT_CHARACTER);
        if n + c.len_utf8() > buf.len() {
            break;
        }
        n += c.encode_utf8(&mut buf[n..]).len();
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(s: &str) -> Vec<WChar> {
        s.chars().map(|c| c as WChar).chain(std::iter::once(0)).collect()
    }

    #[test]
    fn wide_strings_convert_to_utf8_within_the_buffer() {
        let w = wide("dit.step 3/50 · ü");
        let mut buf = [0u8; 64];
        // SAFETY: NUL-terminated wide string.
        let n = unsafe { wide_to_utf8(w.as_ptr(), &mut buf) };
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "dit.step 3/50 · ü");
        let mut small = [0u8; 5];
        // SAFETY: as above; the buffer cuts before the two-byte '·'.
        let n = unsafe { wide_to_utf8(w.as_ptr(), &mut small) };
        assert_eq!(&small[..n], b"dit.s");
        let bad: [WChar; 3] = [0x41, -5, 0];
        // SAFETY: NUL-terminated.
        let n = unsafe { wide_to_utf8(bad.as_ptr(), &mut buf) };
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "A\u{FFFD}");
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { wide_to_utf8(std::ptr::null(), &mut buf) }, 0);
    }

    #[test]
    fn messages_of_every_type() {
        let ascii = c"attention.spatial";
        let w = wide("ffn");
        let mut buf = [0u8; 32];
        // SAFETY: zeroed attributes are a valid (message-less) struct.
        let mut a: EventAttributes = unsafe { std::mem::zeroed() };
        a.messageType = MESSAGE_TYPE_ASCII;
        a.message.ascii = ascii.as_ptr();
        // SAFETY: valid attributes with a NUL-terminated message.
        assert_eq!(unsafe { message_text(&a, &mut buf) }, Some(&b"attention.spatial"[..]));
        a.messageType = MESSAGE_TYPE_UNICODE;
        a.message.unicode = w.as_ptr() as *const _;
        // SAFETY: as above, wide.
        assert_eq!(unsafe { message_text(&a, &mut buf) }, Some(&b"ffn"[..]));
        a.messageType = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { message_text(&a, &mut buf) }, None);
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { message_text(std::ptr::null(), &mut buf) }, None);
    }
}

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
    /// `nvtxRangePop`.
    pub const RANGE_POP: usize = 11;
}

/// `NvtxCallbackIdCore2` slots (nvtxTypes.h).
pub mod core2_slot {
    /// `nvtxDomainRangePushEx`.
    pub const DOMAIN_RANGE_PUSH_EX: usize = 4;
    /// `nvtxDomainRangePop`.
    pub const DOMAIN_RANGE_POP: usize = 5;
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
    }
    written
}

/// The ASCII message of an event-attributes struct, if it has one.
///
/// # Safety
/// `attr` is NULL or points to a valid `nvtxEventAttributes_t` whose ASCII message, if any,
/// is a NUL-terminated string valid for the returned lifetime.
pub unsafe fn ascii_message<'a>(attr: *const EventAttributes) -> Option<&'a [u8]> {
    if attr.is_null() {
        return None;
    }
    // SAFETY: caller contract.
    let a = unsafe { &*attr };
    if a.messageType != MESSAGE_TYPE_ASCII {
        return None;
    }
    // SAFETY: for ASCII messages the union holds a `const char *`.
    let p = unsafe { a.message.ascii };
    if p.is_null() {
        return None;
    }
    // SAFETY: caller contract: NUL-terminated.
    Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
}

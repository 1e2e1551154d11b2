//! The NVTX v3 loader, in Rust, for the replay worker.
//!
//! A real worker emits its NVTX ranges through the header-only NVTX v3 library compiled into
//! it (`nvtx3/nvtxDetail/nvtxInit.h`, `nvtxImpl.h`): every API starts as an init stub; the
//! first call reads `NVTX_INJECTION64_PATH`, `dlopen`s that library, resolves
//! `InitializeInjectionNvtx2` and calls it with the instance's `nvtxGetExportTable`, through
//! which the tool writes its handlers into the instance's function-pointer slots
//! (CUPTI-NOTES §5). This module is that loader, so that `gpuspan-replay` exercises exactly
//! the agent's `InitializeInjectionNvtx2` path, without linking any NVTX library.
//!
//! Semantics kept from the C loader (NI `nvtxInitOnce`, ND `nvtxSetInitFunctionsToNoops`):
//! - the environment variable is read once, at the first NVTX call of this process;
//! - the injection returning 0 (or a missing library / symbol) makes every call a no-op;
//!   a non-zero return keeps what the tool wrote; untouched slots are no-ops;
//! - no-op results: push / pop return −2 (`NVTX_NO_PUSH_POP_TRACKING`);
//! - initialization runs once (a `std::sync::Once`) and makes no NVTX call itself; a tool
//!   that calls back into these functions from inside `InitializeInjectionNvtx2` deadlocks,
//!   as with the real loader.

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Once;

use cudarc::nvtx::sys::{
    nvtxMarkA_impl_fntype, nvtxRangePop_impl_fntype, nvtxRangePushA_impl_fntype,
};

/// Result of push / pop when no tool handles them (`NVTX_NO_PUSH_POP_TRACKING`, nvtxImplCore.h).
pub const NVTX_NO_PUSH_POP_TRACKING: i32 = -2;

/// `NVTX_ETID_CALLBACKS` (nvtxTypes.h `NvtxExportTableID`).
pub const NVTX_ETID_CALLBACKS: u32 = 1;
/// `NVTX_ETID_VERSIONINFO` (nvtxTypes.h `NvtxExportTableID`).
pub const NVTX_ETID_VERSIONINFO: u32 = 3;
/// `NVTX_CB_MODULE_CORE` (nvtxTypes.h `NvtxCallbackModule`).
pub const NVTX_CB_MODULE_CORE: u32 = 1;
/// `NVTX_CB_MODULE_CORE2` (nvtxTypes.h `NvtxCallbackModule`).
pub const NVTX_CB_MODULE_CORE2: u32 = 5;
/// `NVTX_CBID_CORE_MarkA` (nvtxTypes.h `NvtxCallbackIdCore`).
pub const NVTX_CBID_CORE_MARK_A: usize = 2;
/// `NVTX_CBID_CORE_RangePushA` (nvtxTypes.h `NvtxCallbackIdCore`).
pub const NVTX_CBID_CORE_RANGE_PUSH_A: usize = 9;
/// `NVTX_CBID_CORE_RangePop` (nvtxTypes.h `NvtxCallbackIdCore`).
pub const NVTX_CBID_CORE_RANGE_POP: usize = 11;
/// `NVTX_CBID_CORE_SIZE` = `NVTX_CBID_CORE2_SIZE` = 16: slots 1..=15 are callbacks, index 0
/// is `INVALID`; the function table has one more entry, a NULL sentinel (nvtxImpl.h
/// `functionTable_CORE[NVTX_CBID_CORE_SIZE + 1]`), and `outSize` excludes it.
pub const NVTX_MODULE_TABLE_SIZE: u32 = 16;
/// NVTX API version reported in the version-info table (`NVTX_VERSION`, nvtx3 = 3).
pub const NVTX_VERSION: u32 = 3;

const TABLE_LEN: usize = NVTX_MODULE_TABLE_SIZE as usize + 1;

/// `NvtxExportTableCallbacks` (nvtxTypes.h): `{ size_t struct_size; int
/// (*GetModuleFunctionTable)(NvtxCallbackModule, NvtxFunctionTable *, unsigned int *); }`.
/// `NvtxFunctionTable` is `NvtxFunctionPointer **`, an array of pointers to the instance's
/// function-pointer slots.
#[repr(C)]
pub struct NvtxExportTableCallbacks {
    /// `sizeof(NvtxExportTableCallbacks)`.
    pub struct_size: usize,
    /// `GetModuleFunctionTable(module, &table, &size)`: 1 on success, 0 for an unknown module.
    pub get_module_function_table: Option<
        unsafe extern "C" fn(
            module: u32,
            out_table: *mut *mut *mut c_void,
            out_size: *mut u32,
        ) -> c_int,
    >,
}

/// `NvtxExportTableVersionInfo` (nvtxTypes.h): `{ size_t struct_size; uint32_t version;
/// uint32_t reserved0; void (*SetInjectionNvtxVersion)(uint32_t); }`.
#[repr(C)]
pub struct NvtxExportTableVersionInfo {
    /// `sizeof(NvtxExportTableVersionInfo)`.
    pub struct_size: usize,
    /// NVTX version of this instance (3).
    pub version: u32,
    /// Reserved, 0.
    pub reserved0: u32,
    /// Lets the tool announce its own NVTX version; ignored here as in nvtxImpl.h.
    pub set_injection_nvtx_version: Option<unsafe extern "C" fn(version: u32)>,
}

/// `NvtxGetExportTableFunc_t` (nvtxTypes.h): `const void *(*)(uint32_t exportTableId)`.
pub type NvtxGetExportTableFunc = unsafe extern "C" fn(export_table_id: u32) -> *const c_void;

/// `int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t)` (nvtxInit.h).
pub type InitializeInjectionNvtx2Func =
    unsafe extern "C" fn(get_export_table: NvtxGetExportTableFunc) -> c_int;

/// One NVTX instance's function-pointer slots and the tables that point at them
/// (nvtxImpl.h `nvtxGlobals_t`). Slots hold `NvtxFunctionPointer` values written by the
/// tool; `AtomicPtr<c_void>` has the layout of a pointer, so the tool's plain stores through
/// the table land in them.
pub struct NvtxInstance {
    core: [AtomicPtr<c_void>; TABLE_LEN],
    core2: [AtomicPtr<c_void>; TABLE_LEN],
    core_table: [AtomicPtr<c_void>; TABLE_LEN],
    core2_table: [AtomicPtr<c_void>; TABLE_LEN],
}

impl NvtxInstance {
    /// An instance with every slot empty (every call a no-op).
    pub const fn new() -> NvtxInstance {
        NvtxInstance {
            core: [const { AtomicPtr::new(null_mut()) }; TABLE_LEN],
            core2: [const { AtomicPtr::new(null_mut()) }; TABLE_LEN],
            core_table: [const { AtomicPtr::new(null_mut()) }; TABLE_LEN],
            core2_table: [const { AtomicPtr::new(null_mut()) }; TABLE_LEN],
        }
    }

    /// Points the function tables at the slots: entry `i` (1..=15) at slot `i`; entry 0
    /// (`INVALID`) and entry 16 (sentinel) stay NULL.
    pub fn fill_tables(&self) {
        for i in 1..NVTX_MODULE_TABLE_SIZE as usize {
            self.core_table[i].store(self.core[i].as_ptr() as *mut c_void, Ordering::Release);
            self.core2_table[i].store(self.core2[i].as_ptr() as *mut c_void, Ordering::Release);
        }
    }

    /// What `GetModuleFunctionTable` hands out for `module`: the table (array of pointers to
    /// slots) and its size without the sentinel, or `None` for modules this instance lacks.
    pub fn module_table(&self, module: u32) -> Option<(*mut *mut c_void, u32)> {
        match module {
            NVTX_CB_MODULE_CORE => Some((
                self.core_table.as_ptr() as *mut *mut c_void,
                NVTX_MODULE_TABLE_SIZE,
            )),
            NVTX_CB_MODULE_CORE2 => Some((
                self.core2_table.as_ptr() as *mut *mut c_void,
                NVTX_MODULE_TABLE_SIZE,
            )),
            _ => None,
        }
    }

    /// Empties every slot (nvtxSetInitFunctionsToNoops): all calls become no-ops.
    pub fn clear(&self) {
        for s in self.core.iter().chain(self.core2.iter()) {
            s.store(null_mut(), Ordering::Release);
        }
    }

    /// The raw value of CORE slot `cbid` (NULL when no tool handles it).
    pub fn core_slot(&self, cbid: usize) -> *mut c_void {
        self.core
            .get(cbid)
            .map_or(null_mut(), |s| s.load(Ordering::Acquire))
    }

    /// `nvtxRangePushA` through this instance's slot; −2 when not handled.
    pub fn range_push(&self, name: &str) -> i32 {
        let f = self.core_slot(NVTX_CBID_CORE_RANGE_PUSH_A);
        if f.is_null() {
            return NVTX_NO_PUSH_POP_TRACKING;
        }
        let c = c_string(name);
        // SAFETY: a non-NULL CORE slot 9 was written by the tool with its
        // `nvtxRangePushA_impl_fntype` handler (nvtxTypes.h); `c` is NUL-terminated and lives
        // across the call.
        unsafe {
            let f: nvtxRangePushA_impl_fntype =
                std::mem::transmute::<*mut c_void, nvtxRangePushA_impl_fntype>(f);
            f.map_or(NVTX_NO_PUSH_POP_TRACKING, |f| f(c.as_ptr()))
        }
    }

    /// `nvtxRangePop` through this instance's slot; −2 when not handled.
    pub fn range_pop(&self) -> i32 {
        let f = self.core_slot(NVTX_CBID_CORE_RANGE_POP);
        if f.is_null() {
            return NVTX_NO_PUSH_POP_TRACKING;
        }
        // SAFETY: a non-NULL CORE slot 11 holds the tool's `nvtxRangePop_impl_fntype`.
        unsafe {
            let f: nvtxRangePop_impl_fntype =
                std::mem::transmute::<*mut c_void, nvtxRangePop_impl_fntype>(f);
            f.map_or(NVTX_NO_PUSH_POP_TRACKING, |f| f())
        }
    }

    /// `nvtxMarkA` through this instance's slot; nothing when not handled.
    pub fn mark(&self, name: &str) {
        let f = self.core_slot(NVTX_CBID_CORE_MARK_A);
        if f.is_null() {
            return;
        }
        let c = c_string(name);
        // SAFETY: a non-NULL CORE slot 2 holds the tool's `nvtxMarkA_impl_fntype`; `c` is
        // NUL-terminated and outlives the call.
        unsafe {
            let f: nvtxMarkA_impl_fntype =
                std::mem::transmute::<*mut c_void, nvtxMarkA_impl_fntype>(f);
            if let Some(f) = f {
                f(c.as_ptr() as *const c_char)
            }
        }
    }
}

impl Default for NvtxInstance {
    fn default() -> Self {
        NvtxInstance::new()
    }
}

/// A NUL-terminated copy of `s`, cut at its first interior NUL.
fn c_string(s: &str) -> CString {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap_or_default()
}

/// This process's (the replay worker's) NVTX instance.
static INSTANCE: NvtxInstance = NvtxInstance::new();
static INIT: Once = Once::new();
static LOADED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn get_module_function_table(
    module: u32,
    out_table: *mut *mut *mut c_void,
    out_size: *mut u32,
) -> c_int {
    match INSTANCE.module_table(module) {
        Some((table, size)) => {
            if !out_size.is_null() {
                // SAFETY: the caller (the tool) passes a writable `unsigned int *` or NULL.
                unsafe { *out_size = size };
            }
            if !out_table.is_null() {
                // SAFETY: the caller passes a writable `NvtxFunctionTable *` or NULL.
                unsafe { *out_table = table };
            }
            1
        }
        None => 0,
    }
}

unsafe extern "C" fn set_injection_nvtx_version(_version: u32) {}

static ETBL_CALLBACKS: NvtxExportTableCallbacks = NvtxExportTableCallbacks {
    struct_size: std::mem::size_of::<NvtxExportTableCallbacks>(),
    get_module_function_table: Some(get_module_function_table),
};

static ETBL_VERSION_INFO: NvtxExportTableVersionInfo = NvtxExportTableVersionInfo {
    struct_size: std::mem::size_of::<NvtxExportTableVersionInfo>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version: Some(set_injection_nvtx_version),
};

/// This instance's `nvtxGetExportTable` (nvtxImpl.h): the callbacks table for id 1, the
/// version-info table for id 3, NULL otherwise.
///
/// # Safety
/// None beyond the C ABI: any id may be passed; the returned tables are `'static`.
pub unsafe extern "C" fn nvtx_get_export_table(export_table_id: u32) -> *const c_void {
    match export_table_id {
        NVTX_ETID_CALLBACKS => &ETBL_CALLBACKS as *const NvtxExportTableCallbacks as *const c_void,
        NVTX_ETID_VERSIONINFO => {
            &ETBL_VERSION_INFO as *const NvtxExportTableVersionInfo as *const c_void
        }
        _ => std::ptr::null(),
    }
}

/// The load sequence (NI `nvtxInitOnce`, v2 path): env → dlopen(RTLD_LAZY) → dlsym →
/// `InitializeInjectionNvtx2(nvtxGetExportTable)`; 0 → no-ops. Returns true when a tool
/// accepted (non-zero return).
fn load_injection() -> bool {
    let path = match std::env::var_os("NVTX_INJECTION64_PATH") {
        Some(p) if !p.is_empty() => p,
        _ => return false,
    };
    let Ok(cpath) = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) else {
        return false;
    };
    INSTANCE.fill_tables();
    // SAFETY: `cpath` is a NUL-terminated path; dlopen has no other preconditions. Loading
    // runs the library's constructors, which is the point of injection.
    let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_LAZY) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: `handle` is a live dlopen handle; the symbol name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"InitializeInjectionNvtx2".as_ptr()) };
    if sym.is_null() {
        // SAFETY: `handle` came from dlopen above and is not used afterwards.
        unsafe { libc::dlclose(handle) };
        return false;
    }
    // SAFETY: `InitializeInjectionNvtx2` has the documented signature
    // `int (*)(NvtxGetExportTableFunc_t)` (nvtxInit.h); `nvtx_get_export_table` matches
    // `NvtxGetExportTableFunc_t` and the tables it returns are 'static.
    let rc = unsafe {
        let init = std::mem::transmute::<*mut c_void, InitializeInjectionNvtx2Func>(sym);
        init(nvtx_get_export_table)
    };
    if rc == 0 {
        INSTANCE.clear();
        // SAFETY: the tool declined; nothing of it is referenced any more (slots cleared).
        unsafe { libc::dlclose(handle) };
        return false;
    }
    // The library stays loaded for the life of the process (its handlers sit in our slots).
    true
}

fn ensure_init() {
    INIT.call_once(|| LOADED.store(load_injection(), Ordering::Release));
}

/// True when an NVTX injection library was loaded and accepted (initializes on first use).
pub fn nvtx_injection_loaded() -> bool {
    ensure_init();
    LOADED.load(Ordering::Acquire)
}

/// `nvtxRangePushA(name)`: opens a range on the calling thread. Returns the tool's result
/// (the new nesting depth by convention), or −2 when no tool handles it.
pub fn nvtx_range_push(name: &str) -> i32 {
    ensure_init();
    INSTANCE.range_push(name)
}

/// `nvtxRangePop()`: closes the calling thread's innermost range. Returns the tool's result,
/// or −2 when no tool handles it.
pub fn nvtx_range_pop() -> i32 {
    ensure_init();
    INSTANCE.range_pop()
}

/// `nvtxMarkA(name)`: an instantaneous marker.
pub fn nvtx_mark(name: &str) {
    ensure_init();
    INSTANCE.mark(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;

    static PUSHES: AtomicI32 = AtomicI32::new(0);
    unsafe extern "C" fn fake_push(msg: *const c_char) -> c_int {
        // SAFETY: the loader passes a NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(msg) };
        assert_eq!(s.to_str().unwrap(), "dit.step 1/2");
        PUSHES.fetch_add(1, Ordering::SeqCst) + 1
    }
    unsafe extern "C" fn fake_pop() -> c_int {
        PUSHES.fetch_sub(1, Ordering::SeqCst) - 1
    }

    #[test]
    fn export_table_ids() {
        // SAFETY: plain lookups in 'static tables.
        unsafe {
            assert!(nvtx_get_export_table(2).is_null());
            assert!(nvtx_get_export_table(0).is_null());
            let cb =
                &*(nvtx_get_export_table(NVTX_ETID_CALLBACKS) as *const NvtxExportTableCallbacks);
            assert_eq!(cb.struct_size, 16);
            let vi = &*(nvtx_get_export_table(NVTX_ETID_VERSIONINFO)
                as *const NvtxExportTableVersionInfo);
            assert_eq!((vi.struct_size, vi.version), (24, 3));
            let mut size = 99u32;
            let mut table: *mut *mut c_void = null_mut();
            assert_eq!(
                (cb.get_module_function_table.unwrap())(2, &mut table, &mut size),
                0
            );
            assert_eq!(size, 99);
        }
    }

    #[test]
    fn tool_writes_slots_through_table() {
        let inst = NvtxInstance::new();
        assert_eq!(inst.range_push("x"), NVTX_NO_PUSH_POP_TRACKING);
        assert_eq!(inst.range_pop(), NVTX_NO_PUSH_POP_TRACKING);
        inst.fill_tables();
        let (table, size) = inst.module_table(NVTX_CB_MODULE_CORE).unwrap();
        assert_eq!(size, 16);
        assert!(inst.module_table(NVTX_CB_MODULE_CORE2).is_some());
        assert!(inst.module_table(3).is_none());
        // SAFETY: emulate a tool: `*table[cbid] = fn` for in-range cbids; entries 0 and 16
        // are NULL as in nvtxImpl.h.
        unsafe {
            assert!((*table.add(0)).is_null());
            assert!((*table.add(16)).is_null());
            let slot = *table.add(NVTX_CBID_CORE_RANGE_PUSH_A) as *mut *mut c_void;
            *slot = fake_push as *mut c_void;
            let slot = *table.add(NVTX_CBID_CORE_RANGE_POP) as *mut *mut c_void;
            *slot = fake_pop as *mut c_void;
        }
        assert_eq!(inst.range_push("dit.step 1/2\0ignored"), 1);
        assert_eq!(inst.range_pop(), 0);
        inst.mark("unhandled"); // MarkA slot left NULL: no-op
        inst.clear();
        assert_eq!(inst.range_push("dit.step 1/2"), NVTX_NO_PUSH_POP_TRACKING);
    }
}

//! The "result" layer: CUPTI entry points resolved by hand, returning raw codes.
//!
//! Signatures are those of `cupti_activity.h` / `cupti_callbacks.h` / `cupti_version.h`
//! (CUPTI 12.9; unchanged in 13.x for these symbols), with `CUptiResult` taken as `u32`.

use crate::error::CuptiError;
use cudarc::cupti::sys::CUpti_Activity;
use std::ffi::c_void;

/// `CUpti_BuffersCallbackRequestFunc` (A12).
pub type BufferRequestedFn = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
/// `CUpti_BuffersCallbackCompleteFunc` (A12): (ctx, streamId, buffer, size, validSize).
pub type BufferCompletedFn = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);
/// `CUpti_CallbackFunc` (CB) with the domain enum taken as `u32`.
pub type CallbackFn = Option<unsafe extern "C" fn(*mut c_void, u32, u32, *const c_void)>;
/// `cuptiActivityGetNextRecord(buffer, validBufferSizeBytes, &record)`.
pub type GetNextRecordFn = unsafe extern "C" fn(*mut u8, usize, *mut *mut CUpti_Activity) -> u32;

/// Library file names tried in order (cudarc's order: unversioned first, then majors).
pub const CUPTI_LIB_NAMES: [&str; 4] =
    ["libcupti.so", "libcupti.so.12", "libcupti.so.13", "libcupti.so.11.8"];

/// The CUPTI functions gpuspan calls. Loaded once; kept for the life of the process
/// (the library is never unloaded: CUPTI owns threads that call back into us).
pub struct CuptiSymbols {
    _lib: libloading::Library,
    /// The file name that loaded.
    pub loaded_from: String,
    pub(crate) get_version: unsafe extern "C" fn(*mut u32) -> u32,
    pub(crate) subscribe: unsafe extern "C" fn(*mut *mut c_void, CallbackFn, *mut c_void) -> u32,
    pub(crate) unsubscribe: unsafe extern "C" fn(*mut c_void) -> u32,
    /// `cuptiEnableCallback(enable, subscriber, domain, cbid)`.
    pub(crate) enable_callback: unsafe extern "C" fn(u32, *mut c_void, u32, u32) -> u32,
    pub(crate) activity_enable: unsafe extern "C" fn(u32) -> u32,
    pub(crate) activity_disable: unsafe extern "C" fn(u32) -> u32,
    pub(crate) register_callbacks: unsafe extern "C" fn(BufferRequestedFn, BufferCompletedFn) -> u32,
    pub(crate) flush_all: unsafe extern "C" fn(u32) -> u32,
    pub(crate) dropped_records: unsafe extern "C" fn(*mut c_void, u32, *mut usize) -> u32,
    pub(crate) push_external: unsafe extern "C" fn(u32, u64) -> u32,
    pub(crate) pop_external: unsafe extern "C" fn(u32, *mut u64) -> u32,
    pub(crate) get_timestamp: unsafe extern "C" fn(*mut u64) -> u32,
    /// `cuptiActivityGetNextRecord`, public because [`crate::decode`] takes it as a parameter
    /// (benches pass the simulator's).
    pub get_next_record: GetNextRecordFn,
}

impl std::fmt::Debug for CuptiSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CuptiSymbols").field("loaded_from", &self.loaded_from).finish()
    }
}

macro_rules! sym {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the type we read the symbol as is the C signature of that CUPTI function
        // (see the field types above and the CUPTI headers); the pointer is copied out and the
        // library is kept loaded for as long as `CuptiSymbols` lives.
        match unsafe { $lib.get::<*const c_void>(concat!($name, "\0").as_bytes()) } {
            Ok(s) if !(*s).is_null() => unsafe { std::mem::transmute(*s) },
            _ => return Err(CuptiError::MissingSymbol($name)),
        }
    }};
}

impl CuptiSymbols {
    /// Loads the first CUPTI library that `dlopen` finds among [`CUPTI_LIB_NAMES`] and
    /// resolves every symbol gpuspan uses. Errors: [`CuptiError::NotFound`] with the names
    /// tried, [`CuptiError::MissingSymbol`]. Never panics.
    pub fn load() -> Result<CuptiSymbols, CuptiError> {
        let mut tried = Vec::new();
        for name in CUPTI_LIB_NAMES {
            // SAFETY: loading libcupti runs its ELF constructors, which is what every CUPTI
            // client does; we pass a plain file name so the dynamic linker's search applies.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Self::resolve(lib, name),
                Err(_) => tried.push(name.to_string()),
            }
        }
        Err(CuptiError::NotFound { tried })
    }

    // Each transmute's target type is the field it initialises (the C signature above).
    #[allow(clippy::missing_transmute_annotations)]
    fn resolve(lib: libloading::Library, name: &str) -> Result<CuptiSymbols, CuptiError> {
        let s = CuptiSymbols {
            get_version: sym!(lib, "cuptiGetVersion"),
            subscribe: sym!(lib, "cuptiSubscribe"),
            unsubscribe: sym!(lib, "cuptiUnsubscribe"),
            enable_callback: sym!(lib, "cuptiEnableCallback"),
            activity_enable: sym!(lib, "cuptiActivityEnable"),
            activity_disable: sym!(lib, "cuptiActivityDisable"),
            register_callbacks: sym!(lib, "cuptiActivityRegisterCallbacks"),
            flush_all: sym!(lib, "cuptiActivityFlushAll"),
            dropped_records: sym!(lib, "cuptiActivityGetNumDroppedRecords"),
            push_external: sym!(lib, "cuptiActivityPushExternalCorrelationId"),
            pop_external: sym!(lib, "cuptiActivityPopExternalCorrelationId"),
            get_timestamp: sym!(lib, "cuptiGetTimestamp"),
            get_next_record: sym!(lib, "cuptiActivityGetNextRecord"),
            loaded_from: name.to_string(),
            _lib: lib,
        };
        Ok(s)
    }
}

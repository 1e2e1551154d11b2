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
/// `cuptiActivityGetNextRecord_v2(subscriber, buffer, validBufferSizeBytes, &record)` (13.3+).
pub type GetNextRecordV2Fn = unsafe extern "C" fn(*mut c_void, *mut u8, usize, *mut *mut CUpti_Activity) -> u32;

/// Library file names tried in order: the versioned sonames first (the unversioned
/// `libcupti.so` is a development symlink that may point at another toolkit's CUPTI than the
/// worker's), then the unversioned one. A CUPTI already loaded in the process (by
/// torch.profiler, say) under any of these names is preferred over all of them.
pub const CUPTI_LIB_NAMES: [&str; 3] = ["libcupti.so.12", "libcupti.so.13", "libcupti.so"];

/// Where pip's NVIDIA wheels put CUPTI under a `site-packages` directory
/// (`nvidia-cuda-cupti-cu12`, `nvidia-cuda-cupti` 13.x).
pub const WHEEL_CUPTI_PATHS: [&str; 2] = ["nvidia/cuda_cupti/lib/libcupti.so.12", "nvidia/cu13/lib/libcupti.so.13"];

/// The `site-packages` directories of the libraries mapped into this process (from
/// `/proc/self/maps` text), in first-seen order: a Python worker that imported torch has its
/// environment's `site-packages` mapped, and the CUPTI wheel it installed lives there even
/// when it is not on the loader's path.
pub fn site_packages_in_maps(maps: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else { continue };
        if let Some(i) = path.find("/site-packages/") {
            let dir = std::path::PathBuf::from(&path[..i + "/site-packages".len()]);
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

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
    /// `cuptiSetThreadIdType(CUpti_ActivityThreadIdType)` (`cupti_activity.h`, CUPTI 5.5+);
    /// `None` when the library lacks it.
    pub(crate) set_thread_id_type: Option<unsafe extern "C" fn(u32) -> u32>,
    /// `cuptiActivitySetAttribute(CUpti_ActivityAttribute, size_t *valueSize, void *value)`
    /// (`cupti_activity.h`); `None` when the library lacks it.
    pub(crate) activity_set_attribute: Option<unsafe extern "C" fn(u32, *mut usize, *mut c_void) -> u32>,
    /// `cuptiActivityGetNextRecord`, public because [`crate::decode`] takes it as a parameter
    /// (benches pass the simulator's).
    pub get_next_record: GetNextRecordFn,
    /// The subscriber-aware V2 calls of CUPTI 13.3+, when the library has every one of them
    /// ([`crate::multi_subscriber`]); `None` for older CUPTIs.
    pub(crate) v2: Option<V2Symbols>,
}

/// The subscriber-aware V2 functions gpuspan calls in multiple-subscriber mode
/// (`cupti_callbacks.h` / `cupti_activity.h` 13.3+; [`crate::multi_subscriber`]).
pub(crate) struct V2Symbols {
    /// `cuptiSubscribe_v2(&subscriber, callback, userdata, CUpti_SubscriberParams*)`.
    pub(crate) subscribe: unsafe extern "C" fn(*mut *mut c_void, CallbackFn, *mut c_void, *mut crate::multi_subscriber::SubscriberParams) -> u32,
    /// `cuptiActivityEnable_v2(subscriber, kind, CUpti_ActivityConfig*)` (config NULL).
    pub(crate) activity_enable: unsafe extern "C" fn(*mut c_void, u32, *mut c_void) -> u32,
    /// `cuptiActivityDisable_v2(subscriber, kind, CUpti_ActivityConfig*)`.
    pub(crate) activity_disable: unsafe extern "C" fn(*mut c_void, u32, *mut c_void) -> u32,
    /// `cuptiActivityRegisterCallbacks_v2(subscriber, requested, completed)`.
    pub(crate) register_callbacks: unsafe extern "C" fn(
        *mut c_void,
        crate::multi_subscriber::BufferRequestedV2Fn,
        crate::multi_subscriber::BufferCompletedV2Fn,
    ) -> u32,
    /// `cuptiActivityGetNumDroppedRecords_v2(subscriber, ctx, streamId, size_t*)`.
    pub(crate) dropped_records: unsafe extern "C" fn(*mut c_void, *mut c_void, u32, *mut usize) -> u32,
    /// `cuptiActivityPushExternalCorrelationId_v2(subscriber, kind, id)`.
    pub(crate) push_external: unsafe extern "C" fn(*mut c_void, u32, u64) -> u32,
    /// `cuptiActivityPopExternalCorrelationId_v2(subscriber, kind, &last)`.
    pub(crate) pop_external: unsafe extern "C" fn(*mut c_void, u32, *mut u64) -> u32,
    /// `cuptiGetTimestamp_v2(subscriber, &ts)`.
    pub(crate) get_timestamp: unsafe extern "C" fn(*mut c_void, *mut u64) -> u32,
    /// `cuptiActivityGetNextRecord_v2`.
    pub(crate) get_next_record: GetNextRecordV2Fn,
    /// `cuptiActivitySetAttribute_v2(subscriber, attr, size_t*, value*)`: an attribute for
    /// this subscriber alone; `None` when the library lacks it (the table does not need it).
    pub(crate) activity_set_attribute: Option<unsafe extern "C" fn(*mut c_void, u32, *mut usize, *mut c_void) -> u32>,
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
    /// Loads CUPTI and resolves every symbol gpuspan uses: a CUPTI already loaded in the
    /// process under one of [`CUPTI_LIB_NAMES`] (`RTLD_NOLOAD`), else the first of those names
    /// that `dlopen` finds, else the CUPTI wheel in a `site-packages` directory this process
    /// has mapped ([`site_packages_in_maps`], [`WHEEL_CUPTI_PATHS`]). Errors:
    /// [`CuptiError::NotFound`] with the names tried, [`CuptiError::MissingSymbol`]. Never
    /// panics.
    pub fn load() -> Result<CuptiSymbols, CuptiError> {
        for name in CUPTI_LIB_NAMES {
            // SAFETY: RTLD_NOLOAD only looks up an object that is already loaded (its
            // constructors have run); nothing new is loaded.
            let loaded = unsafe {
                libloading::os::unix::Library::open(Some(name), libc::RTLD_NOW | libc::RTLD_NOLOAD)
            };
            if let Ok(lib) = loaded {
                return Self::resolve(lib.into(), name);
            }
        }
        let mut tried = Vec::new();
        for name in CUPTI_LIB_NAMES {
            // SAFETY: loading libcupti runs its ELF constructors, which is what every CUPTI
            // client does; we pass a plain file name so the dynamic linker's search applies.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Self::resolve(lib, name),
                Err(_) => tried.push(name.to_string()),
            }
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let wheels = site_packages_in_maps(&maps)
            .into_iter()
            .flat_map(|sp| WHEEL_CUPTI_PATHS.iter().map(move |w| sp.join(w)))
            .filter(|p| p.exists());
        for path in wheels {
            let name = path.to_string_lossy().into_owned();
            // SAFETY: as above, by full path.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => return Self::resolve(lib, &name),
                Err(_) => tried.push(name),
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
            // SAFETY: the symbol has the C signature of the field (`cupti_activity.h`).
            set_thread_id_type: unsafe { lib.get::<unsafe extern "C" fn(u32) -> u32>(b"cuptiSetThreadIdType\0") }.ok().map(|f| *f),
            // SAFETY: the symbol has the C signature of the field (`cupti_activity.h`).
            activity_set_attribute: unsafe {
                lib.get::<unsafe extern "C" fn(u32, *mut usize, *mut c_void) -> u32>(b"cuptiActivitySetAttribute\0")
            }
            .ok()
            .map(|f| *f),
            get_next_record: sym!(lib, "cuptiActivityGetNextRecord"),
            v2: Self::resolve_v2(&lib),
            loaded_from: name.to_string(),
            _lib: lib,
        };
        Ok(s)
    }

    /// The V2 table, or `None` if any of its symbols is missing (CUPTI before 13.3).
    #[allow(clippy::missing_transmute_annotations)]
    fn resolve_v2(lib: &libloading::Library) -> Option<V2Symbols> {
        let table = || -> Result<V2Symbols, CuptiError> {
            Ok(V2Symbols {
                subscribe: sym!(lib, "cuptiSubscribe_v2"),
                activity_enable: sym!(lib, "cuptiActivityEnable_v2"),
                activity_disable: sym!(lib, "cuptiActivityDisable_v2"),
                register_callbacks: sym!(lib, "cuptiActivityRegisterCallbacks_v2"),
                dropped_records: sym!(lib, "cuptiActivityGetNumDroppedRecords_v2"),
                push_external: sym!(lib, "cuptiActivityPushExternalCorrelationId_v2"),
                pop_external: sym!(lib, "cuptiActivityPopExternalCorrelationId_v2"),
                get_timestamp: sym!(lib, "cuptiGetTimestamp_v2"),
                get_next_record: sym!(lib, "cuptiActivityGetNextRecord_v2"),
                // SAFETY: the symbol has the C signature of the field (`cupti_activity.h` 13.3+).
                activity_set_attribute: unsafe {
                    lib.get::<unsafe extern "C" fn(*mut c_void, u32, *mut usize, *mut c_void) -> u32>(b"cuptiActivitySetAttribute_v2\0")
                }
                .ok()
                .map(|f| *f),
            })
        };
        table().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_packages_come_from_mapped_libraries() {
        let maps = "\
7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f02-7f03 r-xp 00000000 08:01 2 /opt/venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so
7f04-7f05 r--p 00000000 08:01 3 /opt/venv/lib/python3.11/site-packages/torch/lib/libc10.so
7f06-7f07 rw-p 00000000 00:00 0
7f08-7f09 r-xp 00000000 08:01 4 /home/u/.local/lib/python3.11/site-packages/numpy/core/_m.so
";
        assert_eq!(
            site_packages_in_maps(maps),
            [
                std::path::PathBuf::from("/opt/venv/lib/python3.11/site-packages"),
                std::path::PathBuf::from("/home/u/.local/lib/python3.11/site-packages"),
            ]
        );
        assert!(site_packages_in_maps("").is_empty());
    }
}

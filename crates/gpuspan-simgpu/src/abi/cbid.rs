//! `CUpti_driver_api_trace_cbid` values of the exported driver functions
//! (`cupti_driver_cbid.h`, the same numbers in every CUPTI 12.0 … 13.5 header —
//! CUPTI-NOTES §4; `tests/cbid_headers.rs` checks [`ALL`] against each header in
//! `.venv/cupti-headers/`).
#![allow(non_upper_case_globals)]

/// Defines one constant per driver function and the [`ALL`] table.
macro_rules! cbids {
    ($($name:ident = $v:expr),* $(,)?) => {
        $(
            #[doc = concat!("`CUPTI_DRIVER_TRACE_CBID_", stringify!($name), "` = ", stringify!($v), ".")]
            pub const $name: u32 = $v;
        )*
        /// Every `(function name, cbid)` above, in cbid order.
        pub const ALL: &[(&str, u32)] = &[$((stringify!($name), $v)),*];
    };
}

cbids! {
    cuInit = 1,
    cuDriverGetVersion = 2,
    cuDeviceGet = 3,
    cuDeviceGetCount = 4,
    cuDeviceGetName = 5,
    cuDeviceGetAttribute = 9,
    cuCtxGetDevice = 16,
    cuCtxSynchronize = 17,
    cuModuleLoadData = 19,
    cuModuleLoadDataEx = 20,
    cuModuleUnload = 22,
    cuModuleGetFunction = 23,
    cuEventCreate = 118,
    cuEventRecord = 119,
    cuEventQuery = 120,
    cuEventSynchronize = 121,
    cuEventDestroy = 122,
    cuEventElapsedTime = 123,
    cuStreamCreate = 124,
    cuStreamQuery = 125,
    cuStreamSynchronize = 126,
    cuStreamDestroy = 127,
    cuMemsetD8Async = 216,
    cuMemsetD32Async = 220,
    cuMemGetInfo_v2 = 242,
    cuMemAlloc_v2 = 243,
    cuMemFree_v2 = 245,
    cuMemsetD8_v2 = 249,
    cuMemsetD32_v2 = 251,
    cuDeviceTotalMem_v2 = 259,
    cuMemcpyHtoD_v2 = 276,
    cuMemcpyHtoDAsync_v2 = 277,
    cuMemcpyDtoH_v2 = 278,
    cuMemcpyDtoHAsync_v2 = 279,
    cuMemcpyDtoD_v2 = 280,
    cuMemcpyDtoDAsync_v2 = 281,
    cuStreamWaitEvent = 295,
    cuCtxSetCurrent = 303,
    cuCtxGetCurrent = 304,
    cuLaunchKernel = 307,
    cuEventDestroy_v2 = 325,
    cuStreamDestroy_v2 = 326,
    cuStreamCreateWithPriority = 367,
    cuDevicePrimaryCtxRetain = 386,
    cuDevicePrimaryCtxRelease = 387,
    cuStreamBeginCapture = 495,
    cuStreamEndCapture = 497,
    cuStreamIsCapturing = 499,
    cuGraphInstantiate = 513,
    cuGraphLaunch = 514,
    cuGraphLaunch_ptsz = 515,
    cuGraphExecDestroy = 516,
    cuGraphDestroy = 517,
    cuStreamGetCaptureInfo = 536,
    cuStreamBeginCapture_v2 = 539,
    cuThreadExchangeStreamCaptureMode = 541,
    cuDevicePrimaryCtxRelease_v2 = 544,
    cuGraphInstantiate_v2 = 578,
    cuEventRecordWithFlags = 587,
    cuStreamGetCaptureInfo_v2 = 629,
    cuGraphInstantiateWithFlags = 643,
    cuGetProcAddress_v2 = 677,
    cuStreamGetCaptureInfo_v3 = 729,
    cuEventElapsedTime_v2 = 780,
}

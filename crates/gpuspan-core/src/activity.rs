//! Owned, decoded CUPTI activity records.
//!
//! The CUPTI layer (`gpuspan-cupti`) decodes each raw record of a completed activity buffer
//! exactly once into one of these; nothing downstream touches CUPTI memory. Field meanings
//! and units follow `cupti_activity.h` (CUPTI 12.9 `CUpti_ActivityKernel9`,
//! `CUpti_ActivityMemcpy6`, `CUpti_ActivityMemset4`, `CUpti_ActivityAPI`,
//! `CUpti_ActivityExternalCorrelation`, `CUpti_ActivityOverhead3`; CUPTI 13.x records are
//! append-only extensions with the same prefix). All timestamps are CUPTI ns
//! (`CLOCK_REALTIME` domain on Linux, the same domain as `cuptiGetTimestamp`).

use std::sync::Arc;

/// A kernel execution (`CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL`, record `CUpti_ActivityKernel9`).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRecord {
    /// Mangled kernel name as CUPTI reports it, interned per distinct name.
    pub name: Arc<str>,
    /// GPU start, CUPTI ns. 0 with `end_ns == 0` means timing was not collected.
    pub start_ns: u64,
    /// GPU end, CUPTI ns. 0 for a kernel still running at a forced flush.
    pub end_ns: u64,
    /// CUDA device ordinal.
    pub device_id: u32,
    /// CUPTI context id.
    pub context_id: u32,
    /// CUPTI stream id.
    pub stream_id: u32,
    /// Correlation id of the launching driver / runtime API call.
    pub correlation_id: u32,
    /// Grid dimensions (x, y, z).
    pub grid: [i32; 3],
    /// Block dimensions (x, y, z).
    pub block: [i32; 3],
    /// Registers per thread.
    pub registers_per_thread: u16,
    /// Static shared memory per block, bytes.
    pub static_shared_memory_bytes: i32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_shared_memory_bytes: i32,
    /// CUDA graph id, 0 when not launched from a graph.
    pub graph_id: u32,
}

/// Direction of a memory copy (`CUpti_ActivityMemcpyKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemcpyKind {
    /// Host to device (`CUPTI_ACTIVITY_MEMCPY_KIND_HTOD` = 1).
    HtoD,
    /// Device to host (`..._DTOH` = 2).
    DtoH,
    /// Device to device (`..._DTOD` = 8).
    DtoD,
    /// Any other value, kept raw.
    Other(u8),
}

impl MemcpyKind {
    /// From the raw `copyKind` byte of `CUpti_ActivityMemcpy6`.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::HtoD,
            2 => Self::DtoH,
            8 => Self::DtoD,
            r => Self::Other(r),
        }
    }
    /// The raw `CUpti_ActivityMemcpyKind` value.
    pub fn to_raw(self) -> u8 {
        match self {
            Self::HtoD => 1,
            Self::DtoH => 2,
            Self::DtoD => 8,
            Self::Other(r) => r,
        }
    }
    /// Kineto's event name for this direction, e.g. `Memcpy HtoD (Pageable -> Device)` is
    /// shortened by us to `Memcpy HtoD`.
    pub fn kineto_name(self) -> &'static str {
        match self {
            Self::HtoD => "Memcpy HtoD",
            Self::DtoH => "Memcpy DtoH",
            Self::DtoD => "Memcpy DtoD",
            Self::Other(_) => "Memcpy",
        }
    }
}

/// A memory copy (`CUPTI_ACTIVITY_KIND_MEMCPY`, record `CUpti_ActivityMemcpy6`).
#[derive(Debug, Clone, PartialEq)]
pub struct MemcpyRecord {
    /// Copy direction.
    pub kind: MemcpyKind,
    /// Bytes copied.
    pub bytes: u64,
    /// GPU start, CUPTI ns.
    pub start_ns: u64,
    /// GPU end, CUPTI ns.
    pub end_ns: u64,
    /// CUDA device ordinal.
    pub device_id: u32,
    /// CUPTI context id.
    pub context_id: u32,
    /// CUPTI stream id.
    pub stream_id: u32,
    /// Correlation id of the API call.
    pub correlation_id: u32,
}

/// A memset (`CUPTI_ACTIVITY_KIND_MEMSET`, record `CUpti_ActivityMemset4`).
#[derive(Debug, Clone, PartialEq)]
pub struct MemsetRecord {
    /// Value written (low 32 bits, as CUPTI reports it).
    pub value: u32,
    /// Bytes set.
    pub bytes: u64,
    /// GPU start, CUPTI ns.
    pub start_ns: u64,
    /// GPU end, CUPTI ns.
    pub end_ns: u64,
    /// CUDA device ordinal.
    pub device_id: u32,
    /// CUPTI context id.
    pub context_id: u32,
    /// CUPTI stream id.
    pub stream_id: u32,
    /// Correlation id of the API call.
    pub correlation_id: u32,
}

/// Which API a [`ApiRecord`] traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiDomain {
    /// CUDA driver API (`CUPTI_ACTIVITY_KIND_DRIVER` = 6).
    Driver,
    /// CUDA runtime API (`CUPTI_ACTIVITY_KIND_RUNTIME` = 7).
    Runtime,
}

/// A driver or runtime API call (`CUpti_ActivityAPI`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRecord {
    /// Driver or runtime.
    pub domain: ApiDomain,
    /// Callback id (`CUpti_driver_api_trace_cbid` / `CUpti_runtime_api_trace_cbid`),
    /// e.g. 307 = `cuLaunchKernel`.
    pub cbid: u32,
    /// CPU start, CUPTI ns.
    pub start_ns: u64,
    /// CPU end, CUPTI ns.
    pub end_ns: u64,
    /// OS process id.
    pub process_id: u32,
    /// Thread id (`pthread_self()` truncated, CUPTI's default thread id type).
    pub thread_id: u32,
    /// Correlation id shared with the GPU records this call produced.
    pub correlation_id: u32,
    /// `CUresult` / `cudaError_t` returned.
    pub return_value: u32,
}

/// The external-correlation kind gpuspan pushes (`CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM2`
/// = 5; Kineto owns CUSTOM0 = 3 and CUSTOM1 = 4, see CUPTI-NOTES §3).
pub const GPUSPAN_EXTERNAL_KIND: u32 = 5;

/// `CUpti_ActivityExternalCorrelation`: ties an API call's correlation id to the id on top of
/// a per-thread external-correlation stack at the time of the call.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalCorrelationRecord {
    /// `CUpti_ExternalCorrelationKind` (gpuspan uses [`GPUSPAN_EXTERNAL_KIND`]).
    pub external_kind: u32,
    /// The pushed id: for gpuspan, a [`crate::scope::ScopeId`].
    pub external_id: u64,
    /// The API call's correlation id.
    pub correlation_id: u32,
}

/// CUPTI's own overhead (`CUpti_ActivityOverhead3`), e.g. buffer flushes.
#[derive(Debug, Clone, PartialEq)]
pub struct OverheadRecord {
    /// `CUpti_ActivityOverheadKind` raw value.
    pub overhead_kind: u32,
    /// Start, CUPTI ns.
    pub start_ns: u64,
    /// End, CUPTI ns.
    pub end_ns: u64,
    /// Correlation id, 0 when not tied to an API call.
    pub correlation_id: u32,
}

/// One decoded activity record.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivityRecord {
    /// Kernel execution.
    Kernel(KernelRecord),
    /// Memory copy.
    Memcpy(MemcpyRecord),
    /// Memset.
    Memset(MemsetRecord),
    /// Driver / runtime API call.
    Api(ApiRecord),
    /// External correlation.
    ExternalCorrelation(ExternalCorrelationRecord),
    /// CUPTI overhead.
    Overhead(OverheadRecord),
}

impl ActivityRecord {
    /// Correlation id of the record (0 for overhead records not tied to a call).
    pub fn correlation_id(&self) -> u32 {
        match self {
            Self::Kernel(r) => r.correlation_id,
            Self::Memcpy(r) => r.correlation_id,
            Self::Memset(r) => r.correlation_id,
            Self::Api(r) => r.correlation_id,
            Self::ExternalCorrelation(r) => r.correlation_id,
            Self::Overhead(r) => r.correlation_id,
        }
    }
}

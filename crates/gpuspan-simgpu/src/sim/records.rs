//! Activity records encoded byte-exact in CUPTI's layouts.
//!
//! Offsets come from cudarc's bindgen structs of `cupti_activity.h` 12.9
//! (`CUpti_ActivityKernel9` 208 B, `Memcpy6` 96, `Memset4` 88, `API` 40,
//! `ExternalCorrelation` 24, `Overhead3` 56). Each simulated CUPTI release
//! (`GPUSPAN_SIM_CUPTI_VERSION`, [`gpuspan_cupti::layouts::RELEASES`]) writes the record
//! struct that release writes, at its size: kernel, memcpy and memset records of other
//! releases differ from the 12.9 ones only in their length (fields appended, or `copyCount`
//! and the graph ids' tail missing from the 88-byte Memcpy5 of 12.0–12.6), and all fields
//! the sim fills lie in every one of them; the overhead record is `CUpti_ActivityOverhead`
//! (40 B, no `correlationId`) on 12.0–12.2, `Overhead2` (48 B) on 12.3 and `Overhead3`
//! (56 B, with `overheadData`, a `malloc`ed block the client must free) from 12.4
//! (`tests/header_layout.rs` in `gpuspan-cupti` checks the table against the headers).
//! Records are built in a `Vec<u8>` with explicit offsets.

use super::config::CuptiAbi;
use cudarc::cupti::sys::{
    CUpti_ActivityAPI as Api, CUpti_ActivityExternalCorrelation as ExtCorr,
    CUpti_ActivityKernel9 as K9, CUpti_ActivityMemcpy6 as M6, CUpti_ActivityMemset4 as S4,
    CUpti_ActivityOverhead3 as O3,
};
use std::mem::{offset_of, size_of};

/// `CUpti_ActivityKind` values used by the sim: the agent's own constants
/// (`gpuspan_cupti::activity`, from cudarc's bindgen enum and checked against every 12.x /
/// 13.x header by `gpuspan-cupti/tests/header_layout.rs`): MEMCPY 1, MEMSET 2, KERNEL 3,
/// DRIVER 4, RUNTIME 5, CONCURRENT_KERNEL 10, OVERHEAD 17, EXTERNAL_CORRELATION 39.
pub mod kind {
    pub use gpuspan_cupti::activity::{
        KIND_CONCURRENT_KERNEL as CONCURRENT_KERNEL, KIND_DRIVER as DRIVER, KIND_EXTERNAL_CORRELATION as EXTERNAL_CORRELATION,
        KIND_KERNEL as KERNEL, KIND_MEMCPY as MEMCPY, KIND_MEMSET as MEMSET, KIND_OVERHEAD as OVERHEAD, KIND_RUNTIME as RUNTIME,
    };
}

/// Records are 8-byte aligned (`cupti_common.h` `ACTIVITY_RECORD_ALIGNMENT`).
pub const RECORD_ALIGN: usize = 8;

/// Size in bytes of a record of `kind` under `abi`; `None` for kinds the sim never writes.
pub fn record_size(kind_: u32, abi: CuptiAbi) -> Option<usize> {
    let r = abi.0;
    Some(match kind_ {
        kind::KERNEL | kind::CONCURRENT_KERNEL => r.kernel.1,
        kind::MEMCPY => r.memcpy.1,
        kind::MEMSET => r.memset.1,
        kind::DRIVER | kind::RUNTIME => size_of::<Api>(),
        kind::EXTERNAL_CORRELATION => size_of::<ExtCorr>(),
        kind::OVERHEAD => r.overhead.size(),
        _ => return None,
    })
}

/// One encoded record plus what the buffer logic needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub bytes: Vec<u8>,
    /// Host time from which the record is complete (GPU end; 0 for host-side records).
    pub complete_at_ns: u64,
    /// Offsets of u64 timestamp fields zeroed when a forced flush hands the record back
    /// before `complete_at_ns` (a still-running kernel gets end=0; pytorch/pytorch#195844).
    pub zero_if_incomplete: Vec<usize>,
}

impl Record {
    fn new(kind_: u32, abi: CuptiAbi) -> Record {
        let size = record_size(kind_, abi).expect("sim writes only known kinds");
        let mut r = Record {
            bytes: vec![0; size],
            complete_at_ns: 0,
            zero_if_incomplete: Vec::new(),
        };
        r.put_u32(0, kind_);
        r
    }
    pub fn kind(&self) -> u32 {
        self.get_u32(0)
    }

    /// Rewrites the kind field (KERNEL and CONCURRENT_KERNEL share one struct, so a kernel
    /// record is written as each client's enabled kernel kind).
    pub fn set_kind(&mut self, k: u32) {
        self.put_u32(0, k);
    }
    pub fn put_u8(&mut self, off: usize, v: u8) {
        self.bytes[off] = v;
    }
    pub fn put_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u64(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.bytes[off..off + 4].try_into().expect("4 bytes"))
    }
    pub fn get_u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.bytes[off..off + 8].try_into().expect("8 bytes"))
    }
}

/// Fields of a kernel record the sim fills.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelFields {
    pub start_ns: u64,
    pub end_ns: u64,
    pub device_id: u32,
    pub context_id: u32,
    pub stream_id: u32,
    pub grid: [i32; 3],
    pub block: [i32; 3],
    pub dynamic_shared_bytes: i32,
    pub registers_per_thread: u16,
    pub correlation_id: u32,
    pub grid_id: i64,
    /// Interned, process-lifetime C string (see `sim::names`).
    pub name_ptr: usize,
    /// CUPTI `graphId` of the graph that launched the kernel; 0 outside graph launches.
    pub graph_id: u32,
    /// CUPTI `graphNodeId` of the node that launched the kernel; 0 outside graph launches.
    pub graph_node_id: u64,
}

/// `CUpti_ActivityKernel9` (or Kernel13 under 13.x); `kind_` is KERNEL or CONCURRENT_KERNEL.
pub fn kernel(kind_: u32, f: &KernelFields, abi: CuptiAbi) -> Record {
    let mut r = Record::new(kind_, abi);
    r.put_u16(offset_of!(K9, registersPerThread), f.registers_per_thread);
    r.put_u64(offset_of!(K9, start), f.start_ns);
    r.put_u64(offset_of!(K9, end), f.end_ns);
    r.put_u64(offset_of!(K9, completed), f.end_ns);
    r.put_u32(offset_of!(K9, deviceId), f.device_id);
    r.put_u32(offset_of!(K9, contextId), f.context_id);
    r.put_u32(offset_of!(K9, streamId), f.stream_id);
    for (i, off) in [
        offset_of!(K9, gridX),
        offset_of!(K9, gridY),
        offset_of!(K9, gridZ),
    ]
    .into_iter()
    .enumerate()
    {
        r.put_u32(off, f.grid[i] as u32);
    }
    for (i, off) in [
        offset_of!(K9, blockX),
        offset_of!(K9, blockY),
        offset_of!(K9, blockZ),
    ]
    .into_iter()
    .enumerate()
    {
        r.put_u32(off, f.block[i] as u32);
    }
    r.put_u32(
        offset_of!(K9, dynamicSharedMemory),
        f.dynamic_shared_bytes as u32,
    );
    r.put_u32(offset_of!(K9, correlationId), f.correlation_id);
    r.put_u64(offset_of!(K9, gridId), f.grid_id as u64);
    r.put_u64(offset_of!(K9, name), f.name_ptr as u64);
    r.put_u64(offset_of!(K9, graphNodeId), f.graph_node_id);
    r.put_u32(offset_of!(K9, graphId), f.graph_id);
    r.put_u8(offset_of!(K9, launchType), 0); // CUPTI_ACTIVITY_LAUNCH_TYPE_REGULAR
    r.put_u32(
        offset_of!(K9, sharedMemoryExecuted),
        f.dynamic_shared_bytes as u32,
    );
    r.complete_at_ns = f.end_ns;
    r.zero_if_incomplete = vec![offset_of!(K9, end), offset_of!(K9, completed)];
    r
}

/// Fields shared by memcpy and memset records.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemFields {
    pub start_ns: u64,
    pub end_ns: u64,
    pub bytes: u64,
    pub device_id: u32,
    pub context_id: u32,
    pub stream_id: u32,
    pub correlation_id: u32,
    /// CUPTI `graphId` / `graphNodeId` for a graph node's copy or set; 0 otherwise.
    pub graph_id: u32,
    pub graph_node_id: u64,
}

/// `CUpti_ActivityMemcpy6` (Memcpy7 under 13.x). `copy_kind`: `CUpti_ActivityMemcpyKind`
/// (HTOD 1, DTOH 2, DTOD 8); src/dst: `CUpti_ActivityMemoryKind` (PAGEABLE 1, DEVICE 3).
pub fn memcpy(
    f: &MemFields,
    copy_kind: u8,
    src_kind: u8,
    dst_kind: u8,
    is_async: bool,
    abi: CuptiAbi,
) -> Record {
    let mut r = Record::new(kind::MEMCPY, abi);
    r.put_u8(offset_of!(M6, copyKind), copy_kind);
    r.put_u8(offset_of!(M6, srcKind), src_kind);
    r.put_u8(offset_of!(M6, dstKind), dst_kind);
    // CUPTI_ACTIVITY_FLAG_MEMCPY_ASYNC = 1
    r.put_u8(offset_of!(M6, flags), is_async as u8);
    r.put_u64(offset_of!(M6, bytes), f.bytes);
    r.put_u64(offset_of!(M6, start), f.start_ns);
    r.put_u64(offset_of!(M6, end), f.end_ns);
    r.put_u32(offset_of!(M6, deviceId), f.device_id);
    r.put_u32(offset_of!(M6, contextId), f.context_id);
    r.put_u32(offset_of!(M6, streamId), f.stream_id);
    r.put_u32(offset_of!(M6, correlationId), f.correlation_id);
    // Same offsets in Memcpy5 (88 B) … Memcpy7 (records only grow at the end).
    r.put_u64(offset_of!(M6, graphNodeId), f.graph_node_id);
    r.put_u32(offset_of!(M6, graphId), f.graph_id);
    if r.bytes.len() >= offset_of!(M6, copyCount) + 8 {
        // Not in the 88-byte Memcpy5 of CUPTI 12.0–12.6.
        r.put_u64(offset_of!(M6, copyCount), 1);
    }
    r.complete_at_ns = f.end_ns;
    r.zero_if_incomplete = vec![offset_of!(M6, end)];
    r
}

/// `CUpti_ActivityMemset4` (Memset5 under 13.x); memory kind DEVICE.
pub fn memset(f: &MemFields, value: u32, is_async: bool, abi: CuptiAbi) -> Record {
    let mut r = Record::new(kind::MEMSET, abi);
    r.put_u32(offset_of!(S4, value), value);
    r.put_u64(offset_of!(S4, bytes), f.bytes);
    r.put_u64(offset_of!(S4, start), f.start_ns);
    r.put_u64(offset_of!(S4, end), f.end_ns);
    r.put_u32(offset_of!(S4, deviceId), f.device_id);
    r.put_u32(offset_of!(S4, contextId), f.context_id);
    r.put_u32(offset_of!(S4, streamId), f.stream_id);
    r.put_u32(offset_of!(S4, correlationId), f.correlation_id);
    r.put_u64(offset_of!(S4, graphNodeId), f.graph_node_id);
    r.put_u32(offset_of!(S4, graphId), f.graph_id);
    r.put_u16(offset_of!(S4, flags), is_async as u16);
    r.put_u16(offset_of!(S4, memoryKind), 3);
    r.complete_at_ns = f.end_ns;
    r.zero_if_incomplete = vec![offset_of!(S4, end)];
    r
}

/// Fields of a `CUpti_ActivityAPI` record.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiFields {
    pub cbid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub process_id: u32,
    pub thread_id: u32,
    pub correlation_id: u32,
    pub return_value: u32,
}

/// `CUpti_ActivityAPI` with kind DRIVER or RUNTIME.
pub fn api(kind_: u32, f: &ApiFields) -> Record {
    let mut r = Record::new(kind_, CuptiAbi::V12);
    r.put_u32(offset_of!(Api, cbid), f.cbid);
    r.put_u64(offset_of!(Api, start), f.start_ns);
    r.put_u64(offset_of!(Api, end), f.end_ns);
    r.put_u32(offset_of!(Api, processId), f.process_id);
    r.put_u32(offset_of!(Api, threadId), f.thread_id);
    r.put_u32(offset_of!(Api, correlationId), f.correlation_id);
    r.put_u32(offset_of!(Api, returnValue), f.return_value);
    r
}

/// `CUpti_ActivityExternalCorrelation`.
pub fn external_correlation(external_kind: u32, external_id: u64, correlation_id: u32) -> Record {
    let mut r = Record::new(kind::EXTERNAL_CORRELATION, CuptiAbi::V12);
    r.put_u32(offset_of!(ExtCorr, externalKind), external_kind);
    r.put_u64(offset_of!(ExtCorr, externalId), external_id);
    r.put_u32(offset_of!(ExtCorr, correlationId), correlation_id);
    r
}

/// Bytes of the `overheadData` block the sim `malloc`s for each `Overhead3` record.
pub const OVERHEAD_DATA_BYTES: usize = 32;

/// The overhead record of `abi` (`CUpti_ActivityOverhead`, `2` or `3`) of kind
/// CUPTI_BUFFER_FLUSH (0x10000) for a thread, correlationId 0 where it exists. An
/// `Overhead3` record's `overheadData` points to a fresh `malloc`ed block of
/// [`OVERHEAD_DATA_BYTES`] that the client must free, as CUPTI 12.4+ documents; when
/// `with_data` is false it is NULL.
pub fn overhead_buffer_flush(
    start_ns: u64,
    end_ns: u64,
    process_id: u32,
    thread_id: u32,
    abi: CuptiAbi,
    with_data: bool,
) -> Record {
    let mut r = Record::new(kind::OVERHEAD, abi);
    if with_data && abi.0.overhead.has_overhead_data() {
        // SAFETY: malloc of a small non-zero size; a NULL result is written as NULL. The
        // block is the client's to free (CUPTI 12.4 `cupti_activity.h`, Overhead3).
        let data = unsafe { libc::malloc(OVERHEAD_DATA_BYTES) };
        if !data.is_null() {
            // SAFETY: `data` holds OVERHEAD_DATA_BYTES writable bytes.
            unsafe { std::ptr::write_bytes(data as *mut u8, 0x5a, OVERHEAD_DATA_BYTES) };
        }
        r.put_u64(offset_of!(O3, overheadData), data as u64);
    }
    r.put_u32(offset_of!(O3, overheadKind), 0x1_0000);
    r.put_u32(offset_of!(O3, objectKind), 2); // CUPTI_ACTIVITY_OBJECT_THREAD
    let oid = offset_of!(O3, objectId);
    r.put_u32(oid, process_id);
    r.put_u32(oid + 4, thread_id);
    r.put_u64(offset_of!(O3, start), start_ns);
    r.put_u64(offset_of!(O3, end), end_ns);
    r
}

/// Byte offsets the tests and the buffer logic read back.
pub mod offsets {
    use super::*;
    pub const KERNEL_START: usize = offset_of!(K9, start);
    pub const KERNEL_END: usize = offset_of!(K9, end);
    pub const KERNEL_STREAM_ID: usize = offset_of!(K9, streamId);
    pub const KERNEL_CORRELATION_ID: usize = offset_of!(K9, correlationId);
    pub const KERNEL_NAME: usize = offset_of!(K9, name);
    pub const KERNEL_GRAPH_NODE_ID: usize = offset_of!(K9, graphNodeId);
    pub const KERNEL_GRAPH_ID: usize = offset_of!(K9, graphId);
    pub const API_CORRELATION_ID: usize = offset_of!(Api, correlationId);
    pub const API_CBID: usize = offset_of!(Api, cbid);
    pub const EXT_EXTERNAL_ID: usize = offset_of!(ExtCorr, externalId);
    pub const EXT_CORRELATION_ID: usize = offset_of!(ExtCorr, correlationId);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_per_abi_match_cupti_notes() {
        for (k, v12, v13) in [
            (10, 208, 248),
            (3, 208, 248),
            (1, 96, 112),
            (2, 88, 104),
            (4, 40, 40),
            (5, 40, 40),
            (39, 24, 24),
            (17, 56, 56),
        ] {
            assert_eq!(record_size(k, CuptiAbi::V12), Some(v12), "kind {k} v12");
            assert_eq!(record_size(k, CuptiAbi::V13), Some(v13), "kind {k} v13");
            assert_eq!(v12 % RECORD_ALIGN, 0);
            assert_eq!(v13 % RECORD_ALIGN, 0);
        }
        let v12_0 = CuptiAbi::parse("12.0").unwrap();
        assert_eq!(record_size(kind::OVERHEAD, v12_0), Some(40));
        assert_eq!(record_size(kind::MEMCPY, v12_0), Some(88));
        assert_eq!(record_size(kind::OVERHEAD, CuptiAbi::parse("12.3").unwrap()), Some(48));
        assert_eq!(record_size(kind::CONCURRENT_KERNEL, CuptiAbi::parse("13.0").unwrap()), Some(216));
        assert_eq!(record_size(0, CuptiAbi::V12), None);
        assert_eq!(record_size(9999, CuptiAbi::V12), None);
    }

    #[test]
    fn kernel_record_fields_land_at_cupti_offsets() {
        let f = KernelFields {
            start_ns: 11,
            end_ns: 22,
            stream_id: 13,
            correlation_id: 77,
            name_ptr: 0xabc,
            grid: [4, 2, 1],
            ..Default::default()
        };
        let r = kernel(kind::CONCURRENT_KERNEL, &f, CuptiAbi::V12);
        assert_eq!(r.kind(), 10);
        assert_eq!(r.get_u64(16), 11);
        assert_eq!(r.get_u64(24), 22);
        assert_eq!(r.get_u32(48), 13);
        assert_eq!(r.get_u32(52), 4);
        assert_eq!(r.get_u32(92), 77);
        assert_eq!(r.get_u64(104), 0xabc);
        assert_eq!((r.get_u64(144), r.get_u32(156)), (0, 0), "no graph ids outside graph launches");
        let g = kernel(kind::CONCURRENT_KERNEL, &KernelFields { graph_id: 3, graph_node_id: 99, ..f }, CuptiAbi::V13);
        assert_eq!((g.get_u64(144), g.get_u32(156), g.bytes.len()), (99, 3, 248), "Kernel9 graphNodeId @144, graphId @156");
        let mg = memset(&MemFields { graph_id: 4, graph_node_id: 5, ..Default::default() }, 0, true, CuptiAbi::V12);
        assert_eq!((mg.get_u64(64), mg.get_u32(72)), (5, 4), "Memset4 graphNodeId @64, graphId @72");
        let m = memcpy(&MemFields { bytes: 4096, ..Default::default() }, 1, 1, 3, false, CuptiAbi::parse("12.0").unwrap());
        assert_eq!((m.bytes.len(), m.get_u64(8)), (88, 4096), "Memcpy5 has no copyCount");
        let o = overhead_buffer_flush(1, 2, 3, 4, CuptiAbi::parse("12.2").unwrap(), true);
        assert_eq!((o.bytes.len(), o.get_u64(24), o.get_u64(32)), (40, 1, 2), "Overhead (v1) has no overheadData");
        let a = api(
            kind::DRIVER,
            &ApiFields {
                cbid: 307,
                correlation_id: 77,
                thread_id: 9,
                ..Default::default()
            },
        );
        assert_eq!((a.kind(), a.get_u32(4), a.get_u32(28), a.get_u32(32)), (4, 307, 9, 77));
        let e = external_correlation(5, 0xfeed, 77);
        assert_eq!((e.get_u32(4), e.get_u64(8), e.get_u32(16)), (5, 0xfeed, 77));
    }
}

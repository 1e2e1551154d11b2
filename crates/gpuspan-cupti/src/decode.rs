//! Decoding a completed activity buffer into owned records, once.
//!
//! Records are walked with `cuptiActivityGetNextRecord` (never by striding with a struct
//! size: CUPTI 13 records are longer, CUPTI-NOTES "Traps"), and each field is read at its
//! offset in cudarc's `sys` struct of the CUPTI 12.9 layout. Which fields exist depends on
//! the CUPTI version ([`crate::layouts`]): every kernel, memcpy, memset, API and
//! external-correlation field we read sits at the same offset in every record struct CUPTI
//! 12.0 … 13.5 writes, while the overhead record has no `correlationId` before 12.3 and no
//! `overheadData` (heap memory we must free) before 12.4, so those two are read only when
//! the [`RecordLayouts`] say they exist.
//!
//! Kernel names are copied while the buffer is processed (their lifetime is undocumented)
//! and interned per distinct name pointer/content in a [`NameCache`].

use crate::error::{CUPTI_ERROR_INVALID_KIND, CUPTI_ERROR_MAX_LIMIT_REACHED};
use crate::layouts::RecordLayouts;
use crate::symbols::{GetNextRecordFn, GetNextRecordV2Fn};
use cudarc::cupti::sys::{
    CUpti_Activity, CUpti_ActivityAPI, CUpti_ActivityExternalCorrelation, CUpti_ActivityKernel9,
    CUpti_ActivityMemcpy6, CUpti_ActivityMemset4, CUpti_ActivityOverhead3,
};
use gpuspan_core::activity::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Arc;

/// Interns kernel names: one `Arc<str>` per distinct name, looked up by the name pointer
/// first (CUPTI shares one pointer per kernel, A12 `Kernel9.name`) and by content after.
///
/// A pointer hit is trusted only when the bytes there still spell the cached name: a module
/// unloaded and another loaded at the same address (Triton / torch.compile kernels come and
/// go for days) would otherwise give later kernels a stale name. The check is one `strlen`
/// and one `memcmp` of the name; on a mismatch the pointer is looked up again by content.
/// (One `strncmp` of the cached length and a look at the NUL after it was tried instead:
/// `callgrind` counted as many instructions, 16.2 M for 11,348 kernels' names either way.)
#[derive(Debug, Default)]
pub struct NameCache {
    /// By the name's address (CUPTI hands out the same pointer for a kernel's every
    /// record): one multiply over the integer (`gpuspan_core::id_hash`), not std's SipHash.
    by_ptr: gpuspan_core::id_hash::IdHashMap<usize, Arc<str>>,
    by_name: HashMap<Box<str>, Arc<str>>,
}

impl NameCache {
    /// Number of distinct names seen.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when no name was seen.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// # Safety
    /// `p` is NULL or a NUL-terminated string valid for this call.
    unsafe fn intern(&mut self, p: *const std::ffi::c_char) -> Arc<str> {
        if p.is_null() {
            return Arc::from("<unnamed>");
        }
        // SAFETY: caller guarantees a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
        if let Some(a) = self.by_ptr.get(&(p as usize)) {
            if a.as_bytes() == bytes {
                return a.clone();
            }
        }
        let s = String::from_utf8_lossy(bytes);
        let a = match self.by_name.get(s.as_ref()) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(s.as_ref());
                self.by_name.insert(s.as_ref().into(), a.clone());
                a
            }
        };
        self.by_ptr.insert(p as usize, a.clone());
        a
    }
}

/// What one buffer yielded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Records decoded into owned records.
    pub decoded: u64,
    /// Records of kinds gpuspan does not use (skipped).
    pub skipped: u64,
    /// `cuptiActivityGetNextRecord` reported an invalid / incomplete record
    /// (`CUPTI_ERROR_INVALID_KIND`); the rest of the buffer is abandoned.
    pub invalid: u64,
    /// Kernels handed back by a forced flush while still running (end = 0).
    pub incomplete_kernels: u64,
}

/// The function that walks a completed buffer: `cuptiActivityGetNextRecord`, or in CUPTI
/// 13.3+'s multiple-subscriber mode `cuptiActivityGetNextRecord_v2` with the handle of the
/// subscriber the buffer was delivered to ([`crate::multi_subscriber`]).
#[derive(Debug, Clone, Copy)]
pub enum NextRecord {
    /// `cuptiActivityGetNextRecord(buffer, validSize, &record)`.
    V1(GetNextRecordFn),
    /// `cuptiActivityGetNextRecord_v2(subscriber, buffer, validSize, &record)`. A buffer
    /// decoded after its subscriber unsubscribed (the handle is then refused with
    /// `CUPTI_ERROR_INVALID_PARAMETER`) is walked with `v1` instead.
    V2 {
        /// `cuptiActivityGetNextRecord_v2`.
        v2: GetNextRecordV2Fn,
        /// The subscriber the buffer was delivered to.
        subscriber: *mut std::ffi::c_void,
        /// `cuptiActivityGetNextRecord`.
        v1: GetNextRecordFn,
    },
}

impl From<GetNextRecordFn> for NextRecord {
    fn from(f: GetNextRecordFn) -> NextRecord {
        NextRecord::V1(f)
    }
}

impl NextRecord {
    /// One step of the walk: the raw `CUptiResult`.
    ///
    /// # Safety
    /// As the CUPTI function: `buf` holds `valid_bytes` of records, `rec` is NULL or the
    /// previous record returned; for V2 the handle is a live subscriber's.
    #[inline]
    unsafe fn step(self, buf: *mut u8, valid_bytes: usize, rec: &mut *mut CUpti_Activity) -> u32 {
        match self {
            // SAFETY: the caller's contract is the function's.
            NextRecord::V1(f) => unsafe { f(buf, valid_bytes, rec) },
            NextRecord::V2 { v2, subscriber, v1 } => {
                // SAFETY: as above, with the subscriber handle the buffer belongs to.
                let code = unsafe { v2(subscriber, buf, valid_bytes, rec) };
                if code == crate::error::CUPTI_ERROR_INVALID_PARAMETER && !buf.is_null() {
                    // SAFETY: the caller's contract is the function's.
                    return unsafe { v1(buf, valid_bytes, rec) };
                }
                code
            }
        }
    }
}

/// Decodes every record of `buf[..valid_bytes]`, appending to `out`.
///
/// `next_record` walks the buffer: the CUPTI's that filled it (`ActivityApi::next_record`),
/// or any function with its contract (`NextRecord::from(f)`); `layouts` are that CUPTI's
/// (`ActivityApi::layouts`).
///
/// # Safety
/// `buf` points to a buffer of at least `valid_bytes` bytes that CUPTI completed, holding
/// records laid out by the CUPTI whose `next_record` and `layouts` are passed; name pointers
/// inside the records are valid for the duration of this call.
pub unsafe fn decode_buffer(
    next_record: NextRecord,
    layouts: &RecordLayouts,
    buf: *mut u8,
    valid_bytes: usize,
    names: &mut NameCache,
    out: &mut Vec<ActivityRecord>,
) -> DecodeStats {
    // SAFETY: the caller's contract, passed on.
    unsafe { decode_records(next_record, layouts, buf, valid_bytes, names, out, None) }
}

/// [`decode_buffer`], but gpuspan's own external correlations (kind
/// [`GPUSPAN_EXTERNAL_KIND`]) are handed to `own` as (correlation id, external id: the
/// scope) as they are decoded, and not appended to `out`; every other record, another tool's
/// external correlation kinds among them, is, in order. The agent's collector keeps its
/// correlations as runs, so storing them as records first (a third of a fine-mode buffer's
/// records) and moving them out again was wasted (issue 14, item 1). They count in
/// [`DecodeStats::decoded`].
///
/// # Safety
/// As [`decode_buffer`].
pub unsafe fn decode_buffer_own_correlations_apart(
    next_record: NextRecord,
    layouts: &RecordLayouts,
    buf: *mut u8,
    valid_bytes: usize,
    names: &mut NameCache,
    out: &mut Vec<ActivityRecord>,
    own: &mut dyn FnMut(u32, u64),
) -> DecodeStats {
    // SAFETY: the caller's contract, passed on.
    unsafe { decode_records(next_record, layouts, buf, valid_bytes, names, out, Some(own)) }
}

/// The walk of both: `own`, when given, takes gpuspan's external correlations. Inlined into
/// each, with `decode_one` inlined into it: called out of line, `decode_one` made decoding
/// take 1.4× as long (`benches/hot_path.rs`, `decode`).
///
/// # Safety
/// As [`decode_buffer`].
#[inline(always)]
unsafe fn decode_records(
    next_record: NextRecord,
    layouts: &RecordLayouts,
    buf: *mut u8,
    valid_bytes: usize,
    names: &mut NameCache,
    out: &mut Vec<ActivityRecord>,
    mut own: Option<&mut dyn FnMut(u32, u64)>,
) -> DecodeStats {
    let mut st = DecodeStats::default();
    if buf.is_null() || valid_bytes == 0 {
        return st;
    }
    let mut rec: *mut CUpti_Activity = std::ptr::null_mut();
    loop {
        // SAFETY: buffer contract from the caller; `rec` is NULL or the previous record.
        let code = unsafe { next_record.step(buf, valid_bytes, &mut rec) };
        if code == CUPTI_ERROR_MAX_LIMIT_REACHED {
            break;
        }
        if code == CUPTI_ERROR_INVALID_KIND || code != 0 || rec.is_null() {
            st.invalid += 1;
            break;
        }
        // SAFETY: CUPTI returned a record pointer inside the buffer; every record starts with
        // a u32 kind (`CUpti_Activity`). Read unaligned-tolerant.
        let kind = unsafe { std::ptr::read_unaligned(rec as *const u32) };
        // SAFETY: for each kind, CUPTI wrote the record struct of its version at `rec`, and
        // `decode_one` reads only fields that exist in it (`layouts`).
        // The record is pushed first and looked at where it lies: built on the stack and
        // matched there, it was copied into the vector with 16-byte loads over the narrower
        // stores that had just built it, which the store buffer cannot forward (a fifth of
        // this function's samples; issue 14, item 1).
        out.reserve(1);
        match unsafe { decode_one(kind, rec as *const u8, layouts, names) } {
            Some(r) => out.push(r),
            None => {
                st.skipped += 1;
                continue;
            }
        }
        st.decoded += 1;
        match out.last() {
            Some(ActivityRecord::Kernel(k)) if k.end_ns == 0 && k.start_ns != 0 => st.incomplete_kernels += 1,
            Some(ActivityRecord::ExternalCorrelation(e)) if e.external_kind == GPUSPAN_EXTERNAL_KIND => {
                if let Some(f) = own.as_deref_mut() {
                    f(e.correlation_id, e.external_id);
                    out.pop();
                }
            }
            _ => {}
        }
    }
    st
}

/// Reads field `$f` of cudarc struct `$S` at record pointer `$p` as `$T`, by offset, without
/// materialising the whole struct (some fields are Rust enums; a value CUPTI adds later would
/// be an invalid enum).
macro_rules! field {
    ($p:expr, $S:ty, $f:ident, $T:ty) => {
        std::ptr::read_unaligned($p.add(std::mem::offset_of!($S, $f)) as *const $T)
    };
}

/// # Safety
/// `p` points to a complete record of kind `kind` written by the CUPTI `layouts` describe.
#[inline(always)]
unsafe fn decode_one(kind: u32, p: *const u8, layouts: &RecordLayouts, names: &mut NameCache) -> Option<ActivityRecord> {
    use crate::activity::*;
    // SAFETY (whole body): per the fn contract, the record struct of `kind` that this CUPTI
    // writes lies at `p`; every field read below exists in it at the 12.9 offset (checked
    // against every wheel header by tests/header_layout.rs), the overhead record's optional
    // fields only where `layouts` says so; reads are unaligned-tolerant and use the field's
    // own C type (enums as u32).
    unsafe {
        Some(match kind {
            KIND_KERNEL | KIND_CONCURRENT_KERNEL => {
                type K = CUpti_ActivityKernel9;
                ActivityRecord::Kernel(KernelRecord {
                    name: names.intern(field!(p, K, name, *const std::ffi::c_char)),
                    start_ns: field!(p, K, start, u64),
                    end_ns: field!(p, K, end, u64),
                    device_id: field!(p, K, deviceId, u32),
                    context_id: field!(p, K, contextId, u32),
                    stream_id: field!(p, K, streamId, u32),
                    correlation_id: field!(p, K, correlationId, u32),
                    grid: [field!(p, K, gridX, i32), field!(p, K, gridY, i32), field!(p, K, gridZ, i32)],
                    block: [field!(p, K, blockX, i32), field!(p, K, blockY, i32), field!(p, K, blockZ, i32)],
                    registers_per_thread: field!(p, K, registersPerThread, u16),
                    static_shared_memory_bytes: field!(p, K, staticSharedMemory, i32),
                    dynamic_shared_memory_bytes: field!(p, K, dynamicSharedMemory, i32),
                    graph_id: field!(p, K, graphId, u32),
                })
            }
            KIND_MEMCPY => {
                type M = CUpti_ActivityMemcpy6;
                ActivityRecord::Memcpy(MemcpyRecord {
                    kind: MemcpyKind::from_raw(field!(p, M, copyKind, u8)),
                    bytes: field!(p, M, bytes, u64),
                    start_ns: field!(p, M, start, u64),
                    end_ns: field!(p, M, end, u64),
                    device_id: field!(p, M, deviceId, u32),
                    context_id: field!(p, M, contextId, u32),
                    stream_id: field!(p, M, streamId, u32),
                    correlation_id: field!(p, M, correlationId, u32),
                })
            }
            KIND_MEMSET => {
                type M = CUpti_ActivityMemset4;
                ActivityRecord::Memset(MemsetRecord {
                    value: field!(p, M, value, u32),
                    bytes: field!(p, M, bytes, u64),
                    start_ns: field!(p, M, start, u64),
                    end_ns: field!(p, M, end, u64),
                    device_id: field!(p, M, deviceId, u32),
                    context_id: field!(p, M, contextId, u32),
                    stream_id: field!(p, M, streamId, u32),
                    correlation_id: field!(p, M, correlationId, u32),
                })
            }
            KIND_DRIVER | KIND_RUNTIME => {
                type A = CUpti_ActivityAPI;
                ActivityRecord::Api(ApiRecord {
                    domain: if kind == KIND_DRIVER { ApiDomain::Driver } else { ApiDomain::Runtime },
                    cbid: field!(p, A, cbid, u32),
                    start_ns: field!(p, A, start, u64),
                    end_ns: field!(p, A, end, u64),
                    process_id: field!(p, A, processId, u32),
                    thread_id: field!(p, A, threadId, u32),
                    correlation_id: field!(p, A, correlationId, u32),
                    return_value: field!(p, A, returnValue, u32),
                })
            }
            KIND_EXTERNAL_CORRELATION => {
                type E = CUpti_ActivityExternalCorrelation;
                ActivityRecord::ExternalCorrelation(ExternalCorrelationRecord {
                    external_kind: field!(p, E, externalKind, u32),
                    external_id: field!(p, E, externalId, u64),
                    correlation_id: field!(p, E, correlationId, u32),
                })
            }
            KIND_OVERHEAD => {
                type O = CUpti_ActivityOverhead3;
                if layouts.overhead.has_overhead_data() {
                    // `overheadData` is heap memory the client must free (12.4 Overhead3).
                    let data = field!(p, O, overheadData, *mut std::ffi::c_void);
                    if !data.is_null() {
                        libc::free(data);
                    }
                }
                ActivityRecord::Overhead(OverheadRecord {
                    overhead_kind: field!(p, O, overheadKind, u32),
                    start_ns: field!(p, O, start, u64),
                    end_ns: field!(p, O, end, u64),
                    correlation_id: if layouts.overhead.has_correlation_id() { field!(p, O, correlationId, u32) } else { 0 },
                })
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_name_address_never_gives_a_stale_name() {
        let mut names = NameCache::default();
        // One buffer standing in for a module's string table, reused after an unload.
        let mut table = *b"flash_fwd_kernel\0";
        let p = table.as_ptr() as *const std::ffi::c_char;
        // SAFETY: NUL-terminated, alive for each call.
        assert_eq!(&*unsafe { names.intern(p) }, "flash_fwd_kernel");
        assert_eq!(&*unsafe { names.intern(p) }, "flash_fwd_kernel", "pointer hit");
        table[..16].copy_from_slice(b"gemm_bf16_kernel");
        // SAFETY: as above.
        assert_eq!(&*unsafe { names.intern(table.as_ptr() as *const std::ffi::c_char) }, "gemm_bf16_kernel");
        assert_eq!(names.len(), 2);
    }

    /// A shorter name, a longer one that starts with the cached one, and an empty one at the
    /// same address each read as themselves; a name that is not UTF-8 reads the same
    /// (replacement characters) on every hit.
    #[test]
    fn a_reused_name_address_with_a_shorter_or_longer_name_reads_it() {
        let mut names = NameCache::default();
        // One table at one address throughout, standing in for a reused string table.
        let mut table = [0u8; 32];
        let mut at = |table: &mut [u8; 32], name: &[u8]| {
            table.fill(0xee);
            table[..name.len()].copy_from_slice(name);
            table[name.len()] = 0;
            // SAFETY: NUL-terminated within the table, alive for the call.
            unsafe { names.intern(table.as_ptr() as *const std::ffi::c_char) }.to_string()
        };
        assert_eq!(at(&mut table, b"flash_fwd_kernel"), "flash_fwd_kernel");
        assert_eq!(at(&mut table, b"flash"), "flash", "a shorter name");
        assert_eq!(at(&mut table, b"flash_fwd_kernel_v2"), "flash_fwd_kernel_v2", "a longer one");
        assert_eq!(at(&mut table, b"flash_fwd_kernel_v2"), "flash_fwd_kernel_v2", "pointer hit");
        assert_eq!(at(&mut table, b""), "", "an empty one");
        assert_eq!(at(&mut table, b"k\xff1"), "k\u{fffd}1");
        assert_eq!(at(&mut table, b"k\xff1"), "k\u{fffd}1", "not UTF-8: the same on a hit");
    }
}

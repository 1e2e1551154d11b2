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
///
/// The check is made once per address per pass ([`NameCache::next_pass`]; the decoder starts
/// one per buffer), not for every record: the bytes are read when the buffer is decoded, all
/// of its records within the same short walk, and an unload waits until the buffers it
/// flushed are decoded (the agent's `unload` module), so they cannot differ between two
/// records of one buffer. A buffer's kernels share a few dozen names, and the check of every
/// record was 5–8 % of the collector thread (issue 14, item 1).
#[derive(Debug, Default)]
pub struct NameCache {
    /// By the name's address (CUPTI hands out the same pointer for a kernel's every
    /// record): one multiply over the integer (`gpuspan_core::id_hash`), not std's SipHash.
    /// With the pass in which the bytes there last spelled the name.
    by_ptr: gpuspan_core::id_hash::IdHashMap<usize, (Arc<str>, u64)>,
    by_name: HashMap<Box<str>, Arc<str>>,
    /// The current pass ([`NameCache::next_pass`]).
    pass: u64,
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

    /// Starts a pass: the next hit on each address checks the bytes there again. The decoder
    /// starts one for every buffer.
    pub fn next_pass(&mut self) {
        self.pass += 1;
    }

    /// # Safety
    /// `p` is NULL or a NUL-terminated string valid for this call.
    unsafe fn intern(&mut self, p: *const std::ffi::c_char) -> Arc<str> {
        if p.is_null() {
            return Arc::from("<unnamed>");
        }
        let pass = self.pass;
        if let Some((a, checked)) = self.by_ptr.get_mut(&(p as usize)) {
            if *checked == pass {
                return a.clone();
            }
            // SAFETY: caller guarantees a NUL-terminated string.
            if a.as_bytes() == unsafe { CStr::from_ptr(p) }.to_bytes() {
                *checked = pass;
                return a.clone();
            }
        }
        // SAFETY: caller guarantees a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
        let s = String::from_utf8_lossy(bytes);
        let a = match self.by_name.get(s.as_ref()) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(s.as_ref());
                self.by_name.insert(s.as_ref().into(), a.clone());
                a
            }
        };
        self.by_ptr.insert(p as usize, (a.clone(), pass));
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
    names.next_pass();
    let end = buf as usize + valid_bytes;
    let mut prefetched = buf as usize;
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
        // The buffer's lines up to `PREFETCH_AHEAD` bytes past this record asked for.
        let ahead = (rec as usize + PREFETCH_AHEAD).min(end);
        while prefetched < ahead {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(prefetched as *const i8)
            };
            prefetched += 64;
        }
        // SAFETY: CUPTI returned a record pointer inside the buffer; every record starts with
        // a u32 kind (`CUpti_Activity`). Read unaligned-tolerant.
        let kind = unsafe { std::ptr::read_unaligned(rec as *const u32) };
        // gpuspan's own external correlations go to `own` without being stored. Written in
        // place (`put!`) and popped again, each was read back whole (96 bytes, of which it
        // writes 32), and a read past the written bytes into a page not touched yet mapped
        // the zero page there, so the next record's store took a second fault and a TLB
        // shootdown of the other CPUs (issue 14, item 1).
        if kind == crate::activity::KIND_EXTERNAL_CORRELATION {
            if let Some(f) = own.as_deref_mut() {
                // SAFETY: CUPTI wrote an external correlation record at `rec` (its kind).
                if let Some((correlation_id, external_id)) = unsafe { own_correlation(rec as *const u8) } {
                    st.decoded += 1;
                    f(correlation_id, external_id);
                    continue;
                }
            }
        }
        // SAFETY: for each kind, CUPTI wrote the record struct of its version at `rec`, and
        // `decode_one` reads only fields that exist in it (`layouts`).
        // The record is written straight into the vector and looked at where it lies
        // (`put!`): built on the stack, it was copied into the vector with 16-byte loads over
        // the narrower stores that had just built it, which the store buffer cannot forward
        // (half of this function's samples; issue 14, item 1).
        out.reserve(1);
        if !unsafe { decode_one(kind, rec as *const u8, layouts, names, out) } {
            st.skipped += 1;
            continue;
        }
        st.decoded += 1;
        if let Some(ActivityRecord::Kernel(k)) = out.last() {
            if k.end_ns == 0 && k.start_ns != 0 {
                st.incomplete_kernels += 1;
            }
        }
    }
    st
}

/// Appends the record `$r` to `$out`, whose capacity the caller reserved, its slot found
/// before the record is built, so nothing (no call, no check) comes between the record's
/// fields and their stores into the vector. `Vec::push` may grow the vector (a call), so the
/// record was built on the stack first and then copied with 16-byte loads over the narrower
/// stores that had just built it, which the store buffer cannot forward (half of the
/// decoder's samples; issue 14, item 1). Panics when `$out` has no spare capacity (the
/// caller's `reserve(1)` forgotten).
macro_rules! put {
    ($out:expr, $r:expr) => {{
        let slot: *mut ActivityRecord = $out.spare_capacity_mut()[0].as_mut_ptr();
        // SAFETY: `slot` is the vector's first spare slot, written once here before the
        // length takes it in. (Used inside `decode_one`'s unsafe body, hence the allow.)
        #[allow(unused_unsafe)]
        unsafe {
            slot.write($r);
            $out.set_len($out.len() + 1);
        }
    }};
}

/// How far ahead of the record being decoded [`decode_records`] asks for the buffer's cache
/// lines, bytes. The buffer was written by the worker thread on another core, and its lines
/// are read once, in order; reading them as they came was about a quarter of the collector
/// thread (issue 14, item 1). 2 KiB and 4 KiB measured alike.
const PREFETCH_AHEAD: usize = 2048;

/// Reads field `$f` of cudarc struct `$S` at record pointer `$p` as `$T`, by offset, without
/// materialising the whole struct (some fields are Rust enums; a value CUPTI adds later would
/// be an invalid enum).
macro_rules! field {
    ($p:expr, $S:ty, $f:ident, $T:ty) => {
        std::ptr::read_unaligned($p.add(std::mem::offset_of!($S, $f)) as *const $T)
    };
}

/// `(correlation id, external id)` of the external correlation record at `p` when its kind is
/// gpuspan's ([`GPUSPAN_EXTERNAL_KIND`]).
///
/// # Safety
/// `p` points to a complete `CUpti_ActivityExternalCorrelation` record.
#[inline(always)]
unsafe fn own_correlation(p: *const u8) -> Option<(u32, u64)> {
    type E = CUpti_ActivityExternalCorrelation;
    // SAFETY: the fields exist in every CUPTI's external correlation record (12.9 offsets,
    // checked against every wheel header by tests/header_layout.rs); unaligned-tolerant.
    unsafe {
        (field!(p, E, externalKind, u32) == GPUSPAN_EXTERNAL_KIND).then(|| (field!(p, E, correlationId, u32), field!(p, E, externalId, u64)))
    }
}

/// # Safety
/// `p` points to a complete record of kind `kind` written by the CUPTI `layouts` describe.
#[inline(always)]
unsafe fn decode_one(kind: u32, p: *const u8, layouts: &RecordLayouts, names: &mut NameCache, out: &mut Vec<ActivityRecord>) -> bool {
    use crate::activity::*;
    // SAFETY (whole body): per the fn contract, the record struct of `kind` that this CUPTI
    // writes lies at `p`; every field read below exists in it at the 12.9 offset (checked
    // against every wheel header by tests/header_layout.rs), the overhead record's optional
    // fields only where `layouts` says so; reads are unaligned-tolerant and use the field's
    // own C type (enums as u32).
    unsafe {
        match kind {
            KIND_KERNEL | KIND_CONCURRENT_KERNEL => {
                type K = CUpti_ActivityKernel9;
                let name = names.intern(field!(p, K, name, *const std::ffi::c_char));
                put!(out, ActivityRecord::Kernel(KernelRecord {
                    name,
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
                }));
            }
            KIND_MEMCPY => {
                type M = CUpti_ActivityMemcpy6;
                put!(out, ActivityRecord::Memcpy(MemcpyRecord {
                    kind: MemcpyKind::from_raw(field!(p, M, copyKind, u8)),
                    bytes: field!(p, M, bytes, u64),
                    start_ns: field!(p, M, start, u64),
                    end_ns: field!(p, M, end, u64),
                    device_id: field!(p, M, deviceId, u32),
                    context_id: field!(p, M, contextId, u32),
                    stream_id: field!(p, M, streamId, u32),
                    correlation_id: field!(p, M, correlationId, u32),
                }));
            }
            KIND_MEMSET => {
                type M = CUpti_ActivityMemset4;
                put!(out, ActivityRecord::Memset(MemsetRecord {
                    value: field!(p, M, value, u32),
                    bytes: field!(p, M, bytes, u64),
                    start_ns: field!(p, M, start, u64),
                    end_ns: field!(p, M, end, u64),
                    device_id: field!(p, M, deviceId, u32),
                    context_id: field!(p, M, contextId, u32),
                    stream_id: field!(p, M, streamId, u32),
                    correlation_id: field!(p, M, correlationId, u32),
                }));
            }
            KIND_DRIVER | KIND_RUNTIME => {
                type A = CUpti_ActivityAPI;
                put!(out, ActivityRecord::Api(ApiRecord {
                    domain: if kind == KIND_DRIVER { ApiDomain::Driver } else { ApiDomain::Runtime },
                    cbid: field!(p, A, cbid, u32),
                    start_ns: field!(p, A, start, u64),
                    end_ns: field!(p, A, end, u64),
                    process_id: field!(p, A, processId, u32),
                    thread_id: field!(p, A, threadId, u32),
                    correlation_id: field!(p, A, correlationId, u32),
                    return_value: field!(p, A, returnValue, u32),
                }));
            }
            KIND_EXTERNAL_CORRELATION => {
                type E = CUpti_ActivityExternalCorrelation;
                put!(out, ActivityRecord::ExternalCorrelation(ExternalCorrelationRecord {
                    external_kind: field!(p, E, externalKind, u32),
                    external_id: field!(p, E, externalId, u64),
                    correlation_id: field!(p, E, correlationId, u32),
                }));
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
                put!(out, ActivityRecord::Overhead(OverheadRecord {
                    overhead_kind: field!(p, O, overheadKind, u32),
                    start_ns: field!(p, O, start, u64),
                    end_ns: field!(p, O, end, u64),
                    correlation_id: if layouts.overhead.has_correlation_id() { field!(p, O, correlationId, u32) } else { 0 },
                }));
            }
            _ => return false,
        }
        true
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
        assert_eq!(&*unsafe { names.intern(table.as_ptr() as *const std::ffi::c_char) }, "flash_fwd_kernel", "a hit within one pass is not checked again");
        names.next_pass();
        // SAFETY: as above.
        assert_eq!(&*unsafe { names.intern(table.as_ptr() as *const std::ffi::c_char) }, "gemm_bf16_kernel", "checked again in the next pass");
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
            // Each name as a buffer decoded after the address was reused would read it.
            names.next_pass();
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

    use crate::activity::{KIND_CONCURRENT_KERNEL, KIND_DRIVER, KIND_EXTERNAL_CORRELATION, KIND_MEMSET};
    use std::mem::{offset_of, size_of};

    /// `cuptiActivityGetNextRecord` over a buffer of the kinds below, striding by each
    /// kind's 12.9 record size (as CUPTI 12.9 does, CUPTI-NOTES §1).
    unsafe extern "C" fn next_record(buf: *mut u8, valid: usize, rec: *mut *mut CUpti_Activity) -> u32 {
        // SAFETY: `rec` is the caller's cursor, NULL or a record of this buffer.
        let off = unsafe {
            if (*rec).is_null() {
                0
            } else {
                let cur = *rec as *mut u8;
                let size = match std::ptr::read_unaligned(cur as *const u32) {
                    KIND_CONCURRENT_KERNEL => size_of::<CUpti_ActivityKernel9>(),
                    KIND_DRIVER => size_of::<CUpti_ActivityAPI>(),
                    KIND_EXTERNAL_CORRELATION => size_of::<CUpti_ActivityExternalCorrelation>(),
                    KIND_MEMSET => size_of::<CUpti_ActivityMemset4>(),
                    _ => return CUPTI_ERROR_INVALID_KIND,
                };
                cur.offset_from(buf) as usize + size
            }
        };
        if off + 8 > valid {
            return CUPTI_ERROR_MAX_LIMIT_REACHED;
        }
        // SAFETY: within the buffer.
        unsafe { *rec = buf.add(off) as *mut CUpti_Activity };
        0
    }

    fn put_at<T: Copy>(buf: &mut Vec<u8>, at: usize, v: T) {
        if buf.len() < at + size_of::<T>() {
            buf.resize(at + size_of::<T>(), 0);
        }
        // SAFETY: in bounds (resized above); an unaligned write of a plain value.
        unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(at) as *mut T, v) };
    }

    /// gpuspan's own external correlations go to the callback, in buffer order, and are not
    /// stored; every other record is, in order and whole (each kind written in place, issue
    /// 14 item 1), another tool's external correlation kind among them; the stats count
    /// every record.
    #[test]
    fn own_correlations_go_to_the_callback_and_every_other_record_is_kept_in_order() {
        static NAME: &[u8] = b"flash_fwd_kernel\0";
        let mut b = Vec::new();
        let mut at = 0;
        let ext = |b: &mut Vec<u8>, at: &mut usize, kind: u32, id: u64, corr: u32| {
            type E = CUpti_ActivityExternalCorrelation;
            put_at(b, *at, KIND_EXTERNAL_CORRELATION);
            put_at(b, *at + offset_of!(E, externalKind), kind);
            put_at(b, *at + offset_of!(E, externalId), id);
            put_at(b, *at + offset_of!(E, correlationId), corr);
            *at += size_of::<E>();
        };
        ext(&mut b, &mut at, GPUSPAN_EXTERNAL_KIND, 42, 7);
        ext(&mut b, &mut at, 1, 900, 7);
        type A = CUpti_ActivityAPI;
        put_at(&mut b, at, KIND_DRIVER);
        put_at(&mut b, at + offset_of!(A, cbid), 307u32);
        put_at(&mut b, at + offset_of!(A, start), 100u64);
        put_at(&mut b, at + offset_of!(A, end), 180u64);
        put_at(&mut b, at + offset_of!(A, correlationId), 7u32);
        at += size_of::<A>();
        ext(&mut b, &mut at, GPUSPAN_EXTERNAL_KIND, 43, 8);
        type K = CUpti_ActivityKernel9;
        put_at(&mut b, at, KIND_CONCURRENT_KERNEL);
        put_at(&mut b, at + offset_of!(K, start), 200u64);
        put_at(&mut b, at + offset_of!(K, end), 290u64);
        put_at(&mut b, at + offset_of!(K, deviceId), 1u32);
        put_at(&mut b, at + offset_of!(K, streamId), 13u32);
        put_at(&mut b, at + offset_of!(K, correlationId), 7u32);
        put_at(&mut b, at + offset_of!(K, gridX), 132i32);
        put_at(&mut b, at + offset_of!(K, blockZ), 4i32);
        put_at(&mut b, at + offset_of!(K, registersPerThread), 96u16);
        put_at(&mut b, at + offset_of!(K, dynamicSharedMemory), 4096i32);
        put_at(&mut b, at + offset_of!(K, graphId), 3u32);
        put_at(&mut b, at + offset_of!(K, name), NAME.as_ptr() as usize);
        at += size_of::<K>();
        type M = CUpti_ActivityMemset4;
        put_at(&mut b, at, KIND_MEMSET);
        put_at(&mut b, at + offset_of!(M, bytes), 1u64 << 20);
        put_at(&mut b, at + offset_of!(M, start), 300u64);
        put_at(&mut b, at + offset_of!(M, end), 310u64);
        put_at(&mut b, at + offset_of!(M, correlationId), 8u32);
        at += size_of::<M>();
        b.resize(at + 8, 0);

        let mut own = Vec::new();
        let mut out = Vec::new();
        let mut names = NameCache::default();
        // SAFETY: `b` holds `at` bytes of records in the layout `next_record` walks.
        let st = unsafe {
            decode_buffer_own_correlations_apart(NextRecord::V1(next_record), &RecordLayouts::cupti_12_9(), b.as_mut_ptr(), at, &mut names, &mut out, &mut |c, id| own.push((c, id)))
        };
        assert_eq!(own, [(7, 42), (8, 43)]);
        assert_eq!((st.decoded, st.skipped, st.invalid), (6, 0, 0));
        let mut all = Vec::new();
        // SAFETY: as above.
        unsafe { decode_buffer(NextRecord::V1(next_record), &RecordLayouts::cupti_12_9(), b.as_mut_ptr(), at, &mut NameCache::default(), &mut all) };
        assert_eq!(all.len(), 6, "decode_buffer keeps every record");
        let kept: Vec<_> = all.iter().filter(|r| !matches!(r, ActivityRecord::ExternalCorrelation(e) if e.external_kind == GPUSPAN_EXTERNAL_KIND)).collect();
        assert_eq!(out.iter().collect::<Vec<_>>(), kept);
        match &out[..] {
            [ActivityRecord::ExternalCorrelation(e), ActivityRecord::Api(a), ActivityRecord::Kernel(k), ActivityRecord::Memset(m)] => {
                assert_eq!((e.external_kind, e.external_id, e.correlation_id), (1, 900, 7));
                assert_eq!((a.cbid, a.start_ns, a.end_ns, a.correlation_id), (307, 100, 180, 7));
                assert_eq!((&*k.name, k.start_ns, k.end_ns, k.device_id, k.stream_id, k.correlation_id), ("flash_fwd_kernel", 200, 290, 1, 13, 7));
                assert_eq!((k.grid, k.block, k.registers_per_thread, k.dynamic_shared_memory_bytes, k.graph_id), ([132, 0, 0], [0, 0, 4], 96, 4096, 3));
                assert_eq!((m.bytes, m.start_ns, m.end_ns, m.correlation_id), (1 << 20, 300, 310, 8));
            }
            other => panic!("unexpected records {other:?}"),
        }
    }
}

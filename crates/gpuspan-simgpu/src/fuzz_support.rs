//! Fuzzing support (issue 13, item 4; `crates/gpuspan-fuzz`): arbitrary bytes as a completed
//! CUPTI activity buffer, decoded by the agent's decoder (`gpuspan_cupti::decode`) walking it
//! with this simulator's `cuptiActivityGetNextRecord` (CUPTI's contract: 8-byte aligned
//! records, 12 at the end or for a cut record, 21 for an unknown kind; CUPTI-NOTES §1).
//!
//! The first byte picks the CUPTI release whose layouts the buffer has (12.0 … 13.5). Every
//! field is the fuzzer's except the two pointers CUPTI owns, which no real buffer holds
//! garbage in: a kernel record's `name` (set to a valid string, or NULL when the record's
//! first payload byte is odd) and an `Overhead3` record's `overheadData` (heap memory the
//! decoder frees; set to NULL).

use crate::sim::config::CuptiAbi;
use crate::sim::records::{kind, record_size};
use gpuspan_cupti::decode::{decode_buffer, NameCache, NextRecord};
use gpuspan_cupti::layouts::{OverheadLayout, RecordLayouts, RELEASES};

/// `name` in every kernel record struct (Kernel9 … Kernel13): cudarc's
/// `CUpti_ActivityKernel9`, checked against the headers by gpuspan-cupti's layout test.
const KERNEL_NAME_OFFSET: usize = std::mem::offset_of!(cudarc::cupti::sys::CUpti_ActivityKernel9, name);
/// `overheadData` of `CUpti_ActivityOverhead3` (CUPTI 12.4+).
const OVERHEAD_DATA_OFFSET: usize = 48;

static KERNEL_NAME: &std::ffi::CStr = c"void fuzz_kernel<float>(float*)";

/// The simulator's `cuptiActivityGetNextRecord` with the raw `u32` result the decoder's
/// `GetNextRecordFn` takes (what a `dlsym`ed CUPTI symbol returns).
unsafe extern "C" fn next_record_raw(buffer: *mut u8, valid: usize, record: *mut *mut cudarc::cupti::sys::CUpti_Activity) -> u32 {
    // SAFETY: the caller's contract is CUPTI's, passed through unchanged.
    unsafe { crate::abi::cupti::cuptiActivityGetNextRecord(buffer, valid, record) as u32 }
}

/// Decodes `data` (see the module docs). Never panics on any input; returns the number of
/// records decoded.
pub fn decode_activity_bytes(data: &[u8]) -> usize {
    let Some((&pick, bytes)) = data.split_first() else { return 0 };
    let release = &RELEASES[pick as usize % RELEASES.len()];
    crate::sim::publish_cupti_abi(CuptiAbi(release));
    let abi = crate::sim::cupti_abi();
    let Ok(layouts) = RecordLayouts::for_api_version(release.api_version) else { return 0 };
    // An 8-byte aligned copy, as CUPTI's buffers are.
    let mut words = vec![0u64; bytes.len().div_ceil(8) + 1];
    let base = words.as_mut_ptr() as *mut u8;
    // SAFETY: `words` holds at least `bytes.len()` bytes; the regions do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, bytes.len()) };
    // Walk as CUPTI would and put valid pointers where CUPTI keeps its own.
    let mut pos = 0usize;
    while let Ok(next) = crate::abi::cupti::next_record(base as usize, bytes.len(), pos, abi, |a| {
        // SAFETY: `next_record` reads kinds only inside [base, base + len), which we own.
        unsafe { (a as *const u32).read_unaligned() }
    }) {
        let at = next - base as usize;
        // SAFETY: the record at `at` lies inside the buffer (checked by `next_record`).
        let kind_ = unsafe { (base.add(at) as *const u32).read_unaligned() };
        let size = record_size(kind_, abi).unwrap_or(0);
        match kind_ {
            kind::KERNEL | kind::CONCURRENT_KERNEL if size >= KERNEL_NAME_OFFSET + 8 => {
                // SAFETY: inside the record (size checked), which lies inside the buffer.
                let odd = unsafe { *base.add(at + 4) } & 1 == 1;
                let p = if odd { std::ptr::null() } else { KERNEL_NAME.as_ptr() };
                // SAFETY: as above; unaligned write of a pointer-sized field.
                unsafe { (base.add(at + KERNEL_NAME_OFFSET) as *mut *const std::ffi::c_char).write_unaligned(p) };
            }
            kind::OVERHEAD if release.overhead == OverheadLayout::V3 && size >= OVERHEAD_DATA_OFFSET + 8 => {
                // SAFETY: as above.
                unsafe { (base.add(at + OVERHEAD_DATA_OFFSET) as *mut u64).write_unaligned(0) };
            }
            _ => {}
        }
        pos = next;
    }
    let mut names = NameCache::default();
    let mut out = Vec::new();
    // SAFETY: the buffer holds `bytes.len()` valid bytes of records in `release`'s layouts,
    // walked by the simulator's GetNextRecord (publishing `release` above); the pointers
    // CUPTI owns are valid or NULL.
    unsafe { decode_buffer(NextRecord::V1(next_record_raw), &layouts, base, bytes.len(), &mut names, &mut out) };
    out.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_a_record_and_survives_garbage() {
        // An external-correlation record (kind 39, 24 bytes) after the release byte.
        let mut data = vec![8u8];
        data.extend_from_slice(&39u32.to_le_bytes());
        data.extend_from_slice(&[0u8; 20]);
        assert_eq!(super::decode_activity_bytes(&data), 1);
        assert_eq!(super::decode_activity_bytes(&[3, 0xff, 0xff, 0xff]), 0);
        assert_eq!(super::decode_activity_bytes(&[]), 0);
    }
}

//! A CPU hint for the agent's hot path: bring a value's cache lines into this core's cache
//! ahead of a write (issue 14, item 5).
//!
//! Why: each scope boundary writes one 128-byte entry into its thread's ring
//! (`gpuspan-agent`'s `word_ring`), on lines the collector thread last read on another core
//! or that have left this core's caches since the ring last came round. Each store then
//! waited for its line, and on this project's VM that was about a third of an NVTX push +
//! pop through the agent (`benches/nvtx_push_pop.rs`'s worker with a no-op driver: 111.6
//! against 76.8 ns a pair with the entry 8 ahead prefetched, 9 alternated runs,
//! 2026-12-05).
//!
//! The instruction is `PREFETCHT0` (SSE, every x86-64 CPU has it). `PREFETCHW`, which asks
//! for the line in the exclusive state, measured the same here (76.5 against 78.4 ns a pair,
//! 9 alternated runs) and needs a CPU feature (`PRFCHW`) that a distributed build cannot
//! assume; the line fetched shared costs the store only the other copy's invalidation.
//!
//! The one `unsafe` here is the instruction itself (`core::arch` marks its intrinsic unsafe,
//! being a `#[target_feature]` function that takes a pointer): a prefetch is a hint, reads
//! and writes nothing observable, and cannot fault, whatever the address (Intel SDM vol. 2B,
//! PREFETCHh: "merely a hint and does not affect program behavior"). Elsewhere than x86-64
//! it compiles to nothing.

/// Cache line size assumed (x86-64).
const LINE_BYTES: usize = 64;

/// Asks the CPU to bring every cache line of `*value` (from its address, `size_of_val`
/// bytes, rounded out to 64-byte lines) into all levels of this core's cache, for a write
/// soon after. Returns at once; changes nothing observable.
#[inline(always)]
pub fn prefetch_lines<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = value as *const T as *const u8 as usize;
        let end = start + std::mem::size_of_val(value).max(1);
        let mut line = start & !(LINE_BYTES - 1);
        while line < end {
            // SAFETY: a prefetch reads and writes nothing observable and cannot fault
            // (module docs).
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
            line += LINE_BYTES;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_changes_nothing_it_is_given() {
        // Lines of a value, of a value straddling two lines, of a zero-sized value, and of
        // the last bytes of an allocation: all left as they were, nothing faults.
        #[repr(C, align(64))]
        struct Two([u64; 16]);
        let two = Two(std::array::from_fn(|i| i as u64));
        prefetch_lines(&two);
        assert_eq!(two.0, std::array::from_fn(|i| i as u64));
        let bytes = [7u8; 100];
        prefetch_lines(&bytes[60..70]);
        prefetch_lines(&bytes[99]);
        prefetch_lines(&());
        assert!(bytes.iter().all(|&b| b == 7));
    }
}

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
pub const LINE_BYTES: usize = 64;

/// Asks the CPU to bring every cache line of `*value` ([`line_addrs`] of its address and
/// `size_of_val`) into all levels of this core's cache, for a write soon after. Returns at
/// once; changes nothing observable.
#[inline(always)]
pub fn prefetch_lines<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    for line in line_addrs(value as *const T as *const u8 as usize, std::mem::size_of_val(value)) {
        // SAFETY: a prefetch reads and writes nothing observable and cannot fault (module
        // docs).
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The address of each 64-byte line that `len` bytes from `start` touch, in order; the one
/// line of `start` when `len` is 0.
#[inline(always)]
pub fn line_addrs(start: usize, len: usize) -> impl Iterator<Item = usize> {
    let end = start.saturating_add(len.max(1));
    let mut line = start & !(LINE_BYTES - 1);
    std::iter::from_fn(move || {
        (line < end).then(|| {
            let this = line;
            line = line.saturating_add(LINE_BYTES);
            this
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_of_a_value_are_every_line_it_touches() {
        let lines = |start, len| line_addrs(start, len).collect::<Vec<_>>();
        // A ring entry on its own two lines, and one unaligned as malloc handed the ring out
        // (its page plus 16 bytes), which straddles three.
        assert_eq!(lines(0x1000, 128), [0x1000, 0x1040]);
        assert_eq!(lines(0x1010, 128), [0x1000, 0x1040, 0x1080]);
        // One byte, a value ending on a line's last byte, one starting on a line's last byte.
        assert_eq!(lines(0x1047, 1), [0x1040]);
        assert_eq!(lines(0x1000, 64), [0x1000]);
        assert_eq!(lines(0x103f, 2), [0x1000, 0x1040]);
        // A zero-sized value: its own line, nothing past it.
        assert_eq!(lines(0x1010, 0), [0x1000]);
        // The top of the address space: no overflow.
        assert_eq!(lines(usize::MAX - 10, 100), [usize::MAX & !63]);
    }

    #[test]
    fn a_prefetch_changes_nothing_it_is_given() {
        #[repr(C, align(64))]
        struct Two([u64; 16]);
        let two = Two(std::array::from_fn(|i| i as u64));
        prefetch_lines(&two);
        assert_eq!(two.0, std::array::from_fn(|i| i as u64));
        let bytes = [7u8; 100];
        prefetch_lines(&bytes[60..70]);
        prefetch_lines(&());
        assert!(bytes.iter().all(|&b| b == 7));
    }
}

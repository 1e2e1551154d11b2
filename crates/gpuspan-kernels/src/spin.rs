//! `spin_ns` (`kernels/spin.cu`): one thread busy-waits on `%globaltimer` for a given number
//! of nanoseconds. The replay mode of `dit_worker` launches one per recorded kernel, with
//! the recorded duration, on the recorded stream.
//!
//! Launch: grid 1×1×1, block 1×1×1, one `u64` parameter `dur_ns`.
//!
//! There is no numerical output; the "reference" is the duration the GPU should report for
//! it (CUPTI kernel record, CUDA events around it). `%globaltimer` is the GPU's global
//! nanosecond timer, but it ticks coarser than 1 ns (about 32 ns on Hopper, up to 1 µs on
//! older parts), so the kernel may stop up to one tick early; launch and teardown add a few
//! microseconds on top.

/// How much shorter than requested a spin kernel may measure, ns (one `%globaltimer` tick
/// of older GPUs; Hopper's tick is about 32 ns).
pub const SPIN_EARLY_NS: u64 = 1_000;
/// Fixed part of how much longer a spin kernel may measure, ns (kernel start-up and exit).
pub const SPIN_LATE_NS: u64 = 5_000;
/// Proportional part of how much longer it may measure (timer drift, preemption), as a
/// fraction of the request.
pub const SPIN_LATE_FRACTION: f64 = 0.02;

/// Shortest acceptable measured duration for a request of `requested_ns`, ns.
pub fn spin_min_ns(requested_ns: u64) -> u64 {
    requested_ns.saturating_sub(SPIN_EARLY_NS)
}

/// Longest acceptable measured duration for a request of `requested_ns`, ns.
pub fn spin_max_ns(requested_ns: u64) -> u64 {
    requested_ns + SPIN_LATE_NS + (requested_ns as f64 * SPIN_LATE_FRACTION).ceil() as u64
}

/// True when a spin kernel asked to run `requested_ns` was measured at `measured_ns`
/// within the tolerance above.
pub fn spin_duration_ok(requested_ns: u64, measured_ns: u64) -> bool {
    (spin_min_ns(requested_ns)..=spin_max_ns(requested_ns)).contains(&measured_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        // 100 µs: [99 µs, 100 µs + 5 µs + 2 µs].
        assert_eq!(spin_min_ns(100_000), 99_000);
        assert_eq!(spin_max_ns(100_000), 107_000);
        assert!(spin_duration_ok(100_000, 99_000));
        assert!(spin_duration_ok(100_000, 107_000));
        assert!(!spin_duration_ok(100_000, 98_999));
        assert!(!spin_duration_ok(100_000, 107_001));
        // Zero-length request: only launch overhead is allowed.
        assert!(spin_duration_ok(0, 0));
        assert!(spin_duration_ok(0, SPIN_LATE_NS));
        assert!(!spin_duration_ok(0, SPIN_LATE_NS + 1));
    }

    #[test]
    fn window_grows_with_the_request() {
        let mut prev = 0;
        for r in [1_000u64, 10_000, 1_000_000, 1_000_000_000] {
            let w = spin_max_ns(r) - spin_min_ns(r);
            assert!(w > prev);
            prev = w;
        }
        // One second: 20 ms late is still fine, 21 ms is not... plus the fixed part.
        assert!(spin_duration_ok(1_000_000_000, 1_020_005_000));
        assert!(!spin_duration_ok(1_000_000_000, 1_021_000_000));
    }
}

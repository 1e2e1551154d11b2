//! Deterministic pseudo-random inputs (SplitMix64), so the CPU tests and the real-GPU check
//! (`dit_worker --check`) feed the kernels reproducible data without a dependency.

use crate::bf16;

/// SplitMix64 generator (Steele, Lea, Flood 2014): 64-bit state, full period.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform f32 in `[lo, hi)` (24 random mantissa bits).
    pub fn uniform_f32(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// `n` bf16 bit patterns of values uniform in `[lo, hi)` (then rounded to bf16).
    pub fn bf16_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<u16> {
        (0..n).map(|_| bf16::from_f32(self.uniform_f32(lo, hi))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_in_range_and_roughly_uniform() {
        let a: Vec<u64> = { let mut r = Rng::new(7); (0..4).map(|_| r.next_u64()).collect() };
        let b: Vec<u64> = { let mut r = Rng::new(7); (0..4).map(|_| r.next_u64()).collect() };
        assert_eq!(a, b);
        assert_ne!(a, { let mut r = Rng::new(8); (0..4).map(|_| r.next_u64()).collect::<Vec<_>>() });
        let mut r = Rng::new(1);
        let xs: Vec<f32> = (0..100_000).map(|_| r.uniform_f32(-1.0, 1.0)).collect();
        assert!(xs.iter().all(|&x| (-1.0..1.0).contains(&x)));
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        // Uniform(-1,1): mean 0, sd of the mean = sqrt(1/3)/sqrt(1e5) ≈ 0.0018.
        assert!(mean.abs() < 0.01, "mean {mean}");
        let below = xs.iter().filter(|&&x| x < 0.0).count();
        assert!((49_000..51_000).contains(&below), "{below} below 0");
    }
}

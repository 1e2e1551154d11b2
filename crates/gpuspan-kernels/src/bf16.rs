//! bfloat16 as `u16` bit patterns, converted exactly as the kernels do (no `cuda_bf16.h`:
//! NVRTC's wheel does not ship it, so `kernels/common.cuh` converts by hand).
//!
//! bf16 is the upper half of an IEEE-754 binary32: 1 sign, 8 exponent, 7 mantissa bits.
//! bf16 → f32 is exact (`bits << 16`); f32 → bf16 rounds to nearest, ties to even, and
//! keeps NaN a (quiet) NaN.

/// The f32 value of a bf16 bit pattern (exact).
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The bf16 bit pattern nearest to `x` (round to nearest, ties to even; NaN → quiet NaN;
/// values beyond bf16's range round to ±infinity). Same as `f32_to_bf16` in
/// `kernels/common.cuh`.
pub fn from_f32(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    (rounded >> 16) as u16
}

/// `x` rounded to the nearest bf16 value, as f32 (what a kernel stores and the check reads
/// back).
pub fn round(x: f32) -> f32 {
    to_f32(from_f32(x))
}

/// Converts a slice of f32 to bf16 bit patterns.
pub fn from_f32_slice(xs: &[f32]) -> Vec<u16> {
    xs.iter().map(|&x| from_f32(x)).collect()
}

/// Converts a slice of bf16 bit patterns to f32.
pub fn to_f32_slice(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| to_f32(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bit_patterns() {
        assert_eq!(from_f32(1.0), 0x3f80);
        assert_eq!(from_f32(-2.0), 0xc000);
        assert_eq!(from_f32(0.0), 0x0000);
        assert_eq!(from_f32(-0.0), 0x8000);
        assert_eq!(from_f32(f32::INFINITY), 0x7f80);
        assert_eq!(to_f32(0x3f80), 1.0);
        assert_eq!(to_f32(0x4049), 3.140625); // π in bf16
        assert_eq!(from_f32(std::f32::consts::PI), 0x4049);
    }

    #[test]
    fn rounds_to_nearest_ties_to_even() {
        // bf16 spacing at 1.0 is 2^-7. 1 + 2^-8 is half-way between 0x3f80 and 0x3f81:
        // ties go to the even mantissa (0x3f80); 1 + 3·2^-8 lies between 0x3f81 and 0x3f82
        // and goes to 0x3f82.
        assert_eq!(from_f32(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(from_f32(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // Just above the half-way point rounds up.
        assert_eq!(from_f32(f32::from_bits(0x3f80_8001)), 0x3f81);
        // The largest finite f32 overflows to infinity.
        assert_eq!(from_f32(f32::MAX), 0x7f80);
    }

    #[test]
    fn nan_stays_nan_and_round_trip_is_exact_for_bf16_values() {
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        assert!(to_f32(from_f32(f32::from_bits(0x7f80_0001))).is_nan()); // signalling NaN
        for bits in (0u16..=0xffff).step_by(7) {
            let x = to_f32(bits);
            if !x.is_nan() {
                assert_eq!(from_f32(x), bits);
            }
        }
        // Rounding error is at most half a bf16 ulp (2^-8 relative).
        for i in 1..1000 {
            let x = i as f32 * 0.7317;
            assert!((round(x) - x).abs() <= x.abs() * 2f32.powi(-8));
        }
    }
}

//! Element-wise comparison of a GPU result with its CPU reference.

/// How far a GPU value may be from the reference value: `|got − want| ≤ abs + rel·|want|`.
/// NaN on either side never passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute allowance, in the unit of the tensor's elements.
    pub abs: f32,
    /// Relative allowance, as a fraction of `|want|` (0.01 = 1 %).
    pub rel: f32,
}

impl Tolerance {
    /// True when `got` is within the tolerance of `want`.
    pub fn allows(&self, got: f32, want: f32) -> bool {
        let err = (got - want).abs();
        err <= self.abs + self.rel * want.abs()
    }
}

/// Outcome of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Elements compared.
    pub len: usize,
    /// Elements outside the tolerance (a length mismatch counts every missing element).
    pub mismatches: usize,
    /// Largest `|got − want|` seen.
    pub max_abs_err: f32,
    /// Index of the first element outside the tolerance, if any.
    pub first_bad_index: Option<usize>,
}

impl Comparison {
    /// True when every element is within the tolerance and the lengths agree.
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

/// Compares `got` (GPU) with `want` (CPU reference) element by element.
pub fn compare(got: &[f32], want: &[f32], tol: Tolerance) -> Comparison {
    let n = got.len().min(want.len());
    let mut c = Comparison {
        len: got.len().max(want.len()),
        mismatches: got.len().abs_diff(want.len()),
        max_abs_err: 0.0,
        first_bad_index: if got.len() != want.len() { Some(n) } else { None },
    };
    for i in 0..n {
        let err = (got[i] - want[i]).abs();
        if err > c.max_abs_err || err.is_nan() {
            c.max_abs_err = if err.is_nan() { f32::INFINITY } else { err };
        }
        if !tol.allows(got[i], want[i]) {
            c.mismatches += 1;
            if c.first_bad_index.is_none_or(|b| i < b) {
                c.first_bad_index = Some(i);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    // Binary fractions, so the boundaries are exact in f32.
    const T: Tolerance = Tolerance { abs: 0.25, rel: 0.5 };

    #[test]
    fn absolute_and_relative_parts_add_up() {
        // 10 ± (0.25 + 5).
        assert!(T.allows(15.25, 10.0));
        assert!(T.allows(4.75, 10.0));
        assert!(!T.allows(15.3, 10.0));
        assert!(T.allows(-0.25, 0.0));
        assert!(!T.allows(0.26, 0.0));
    }

    #[test]
    fn nan_and_length_mismatch_fail() {
        assert!(!T.allows(f32::NAN, 1.0));
        assert!(!T.allows(1.0, f32::NAN));
        let c = compare(&[1.0, f32::NAN], &[1.0, 1.0], T);
        assert_eq!((c.mismatches, c.first_bad_index), (1, Some(1)));
        assert_eq!(c.max_abs_err, f32::INFINITY);
        let c = compare(&[1.0], &[1.0, 2.0, 3.0], T);
        assert_eq!((c.len, c.mismatches, c.first_bad_index), (3, 2, Some(1)));
        assert!(!c.passed());
        assert!(compare(&[1.0, 2.0], &[1.05, 2.9], T).passed());
        assert!(!compare(&[1.0, 2.0], &[1.05, 4.6], T).passed());
    }
}

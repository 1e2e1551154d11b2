//! Interval arithmetic on `[start, end)` pairs, in ns (`u64`) or µs (`f64`): the disjoint
//! union of a set of intervals and the length of two unions' intersection. What the span
//! assembler (a step's exposed communication) and `stats::ranks` share.
//!
//! (`stats::intervals::merge` keeps HTA's exact merge rule for the HTA analyses; the
//! simulator computes its ground truth with its own code, so a bug here cannot hide in a
//! test that compares the two.)

use std::ops::{Add, Sub};

/// A time type: ns as `u64` or µs as `f64`.
pub trait Time: Copy + PartialOrd + Add<Output = Self> + Sub<Output = Self> + Default {}
impl Time for u64 {}
impl Time for f64 {}

/// The disjoint union of `iv`, ascending; empty and inverted intervals are dropped.
pub fn union<T: Time>(mut iv: Vec<(T, T)>) -> Vec<(T, T)> {
    iv.retain(|(s, e)| e > s);
    iv.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let mut out: Vec<(T, T)> = Vec::with_capacity(iv.len());
    for (s, e) in iv {
        match out.last_mut() {
            Some(last) if s <= last.1 => {
                if e > last.1 {
                    last.1 = e;
                }
            }
            _ => out.push((s, e)),
        }
    }
    out
}

/// Total length of disjoint intervals.
pub fn length<T: Time>(iv: &[(T, T)]) -> T {
    iv.iter().fold(T::default(), |acc, &(s, e)| acc + (e - s))
}

/// Length of the intersection of two disjoint, ascending lists (as [`union`] returns).
pub fn overlap<T: Time>(a: &[(T, T)], b: &[(T, T)]) -> T {
    let (mut i, mut j, mut sum) = (0, 0, T::default());
    while i < a.len() && j < b.len() {
        let s = if a[i].0 > b[j].0 { a[i].0 } else { b[j].0 };
        let e = if a[i].1 < b[j].1 { a[i].1 } else { b[j].1 };
        if e > s {
            sum = sum + (e - s);
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_and_overlap_in_ns_and_us() {
        let a = union(vec![(20u64, 30), (0, 10), (5, 8), (9, 9)]);
        assert_eq!(a, vec![(0, 10), (20, 30)]);
        assert_eq!(length(&a), 20);
        let b = union(vec![(5u64, 25)]);
        assert_eq!(overlap(&a, &b), 10);
        let f = union(vec![(0.5f64, 1.5), (1.0, 2.0)]);
        assert_eq!(f, vec![(0.5, 2.0)]);
        assert!((overlap(&f, &[(1.75, 3.0)]) - 0.25).abs() < 1e-12);
    }
}

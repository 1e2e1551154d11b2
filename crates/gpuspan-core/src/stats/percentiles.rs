//! Percentiles and duration summaries (`p50_us`, `p99_us`, `{count, mean_us, p50_us, p99_us,
//! max_us}`).
//!
//! Percentiles are *nearest-rank* (the smallest sample with at least p % of the samples at
//! or below it), so every reported percentile is a duration that occurred in the trace.
//! HTA reports no percentiles for kernels; where it describes distributions (pandas
//! `describe()` in `get_idle_time_breakdown(show_idle_interval_stats=True)`,
//! `get_memory_bw_summary`) it interpolates linearly between samples, which can differ
//! from nearest rank on small samples.

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile of `sorted` (ascending, no NaN): the sample at 1-based rank
/// ⌈pct · n / 100⌉ (computed in integers, clamped to 1..=n). 0.0 for an empty slice.
/// `pct` is in percent (50 for the median, 99 for p99); values above 100 act as 100.
pub fn nearest_rank(sorted: &[f64], pct: u32) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let pct = pct.min(100) as usize;
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

/// Count, mean, median, p99 and maximum of a set of durations, µs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DurationSummary {
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean, µs (0 when empty).
    pub mean_us: f64,
    /// Nearest-rank median, µs (0 when empty).
    pub p50_us: f64,
    /// Nearest-rank 99th percentile, µs (0 when empty).
    pub p99_us: f64,
    /// Largest sample, µs (0 when empty).
    pub max_us: f64,
}

impl DurationSummary {
    /// Summarises `values` (µs); sorts them in place (O(n log n)).
    pub fn of(values: &mut [f64]) -> DurationSummary {
        if values.is_empty() {
            return DurationSummary::default();
        }
        let sum: f64 = values.iter().sum();
        values.sort_by(f64::total_cmp);
        DurationSummary {
            count: values.len(),
            mean_us: sum / values.len() as f64,
            p50_us: nearest_rank(values, 50),
            p99_us: nearest_rank(values, 99),
            max_us: values[values.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_known_answers() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50), 50.0);
        assert_eq!(nearest_rank(&v, 99), 99.0);
        assert_eq!(nearest_rank(&v, 100), 100.0);
        assert_eq!(nearest_rank(&v, 1), 1.0);
        assert_eq!(nearest_rank(&v, 0), 1.0, "rank clamps to 1");
        // n = 4: p50 is the 2nd sample (rank ⌈2⌉), p99 the 4th (rank ⌈3.96⌉).
        let w = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(nearest_rank(&w, 50), 20.0);
        assert_eq!(nearest_rank(&w, 99), 40.0);
        // n = 5: p50 = rank ⌈2.5⌉ = 3.
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0, 5.0], 50), 3.0);
        // n = 1000: p99 = rank 990 exactly.
        let big: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(nearest_rank(&big, 99), 990.0);
        assert_eq!(nearest_rank(&[], 50), 0.0);
        assert_eq!(nearest_rank(&[7.5], 99), 7.5);
    }

    #[test]
    fn summary_of_unsorted_values() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0, 100.0];
        let s = DurationSummary::of(&mut v);
        assert_eq!(s.count, 6);
        assert_eq!(s.mean_us, 115.0 / 6.0);
        assert_eq!(s.p50_us, 3.0); // rank 3 of 1,2,3,4,5,100
        assert_eq!(s.p99_us, 100.0);
        assert_eq!(s.max_us, 100.0);
        assert_eq!(DurationSummary::of(&mut []), DurationSummary::default());
    }
}

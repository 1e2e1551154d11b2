//! Bounded label values (issue 13, item 2): a worker that serves many models, or names each
//! request's model from user input, must not create a Prometheus series (or an anomaly
//! history) per value for days. [`LabelValues`] admits the first `max` distinct values of a
//! label and folds every later one into [`OTHER`].
//!
//! Why the first values and not a running top N: a Prometheus series that is renamed or
//! dropped once exported breaks `rate()` and `histogram_quantile()` over it, so a value,
//! once admitted, stays; the values a worker serves most are also, in practice, those it
//! serves from its first minutes. Used by `gpuspan_export::metrics::Metrics` (the `model`
//! label) and [`crate::triggers::AnomalyDetector`] (per-model step histories).

use std::collections::HashSet;
use std::sync::Arc;

/// The value every label value past the limit is folded into.
pub const OTHER: &str = "other";

/// Default number of distinct `model` values kept (`GPUSPAN_MAX_MODELS`).
pub const DEFAULT_MAX_MODELS: usize = 32;

/// The admitted values of one label and how many observations were folded.
#[derive(Debug, Clone)]
pub struct LabelValues {
    max: usize,
    admitted: HashSet<Arc<str>>,
    other: Arc<str>,
    folded: u64,
}

impl LabelValues {
    /// At most `max` distinct values (0 folds everything into [`OTHER`]); [`OTHER`] itself
    /// is always allowed and does not count.
    pub fn new(max: usize) -> LabelValues {
        LabelValues { max, admitted: HashSet::new(), other: Arc::from(OTHER), folded: 0 }
    }

    /// The value to use for `v`: `v` itself when admitted (now or before), else [`OTHER`]
    /// (counted in [`LabelValues::folded`]).
    pub fn fold(&mut self, v: &Arc<str>) -> Arc<str> {
        if &**v == OTHER || self.admitted.contains(v) {
            return v.clone();
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(v.clone());
            return v.clone();
        }
        self.folded += 1;
        self.other.clone()
    }

    /// Observations folded into [`OTHER`] so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Distinct values admitted.
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_values_stay_and_later_ones_fold_into_other() {
        let mut l = LabelValues::new(2);
        let v = |s: &str| Arc::<str>::from(s);
        assert_eq!(&*l.fold(&v("wan2.1")), "wan2.1");
        assert_eq!(&*l.fold(&v("stdit")), "stdit");
        assert_eq!(&*l.fold(&v("sd3")), OTHER);
        assert_eq!(&*l.fold(&v("wan2.1")), "wan2.1", "an admitted value stays");
        assert_eq!(&*l.fold(&v("flux")), OTHER);
        assert_eq!(&*l.fold(&v(OTHER)), OTHER, "`other` itself is not folded, nor counted");
        assert_eq!((l.admitted(), l.folded()), (2, 2));
        let mut none = LabelValues::new(0);
        assert_eq!(&*none.fold(&v("wan2.1")), OTHER);
        // A million distinct values keep the set at its limit.
        let mut big = LabelValues::new(32);
        for i in 0..1_000_000u32 {
            big.fold(&v(&format!("model-{i}")));
        }
        assert_eq!((big.admitted(), big.folded()), (32, 1_000_000 - 32));
    }
}

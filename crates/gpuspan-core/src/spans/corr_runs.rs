//! Correlation id → scope, stored as runs of consecutive ids (issue 14, item 6).
//!
//! The span assembler learns which scope each launch ran in from CUPTI's external
//! correlation records (`CUpti_ActivityExternalCorrelation`: one per launch made while a
//! scope had pushed its id, kind CUSTOM2). It keeps the mapping until the request is
//! finalized and a grace period has passed, so in a flood (1 M launches a second) a
//! `HashMap<u32, ScopeId>` held about two million entries, 40–70 MB.
//!
//! CUPTI numbers the driver / runtime calls of a process with one increasing 32-bit
//! counter (`correlationId`, cupti_activity.h), and a scope's launches on one thread are
//! consecutive calls, so consecutive ids nearly always map to the same scope: a stage of a
//! DiT block is one run of a few hundred ids. [`CorrelationRuns`] keeps one
//! `(first, last, scope)` entry per run, sorted by `first`:
//!
//! - [`CorrelationRuns::insert`] of the next id of the last run extends it (the common case,
//!   O(1)); an id after every run appends one; anything else (another thread's calls
//!   interleaved, ids out of order, the counter wrapping after 2³² calls) is placed by
//!   binary search, splitting a run it lands inside, with `HashMap::insert`'s meaning: the
//!   id now maps to the new scope.
//! - [`CorrelationRuns::get`] is a binary search.
//! - [`CorrelationRuns::retain`] keeps the runs whose scope passes, as `HashMap::retain` kept
//!   the entries.
//!
//! Memory: 16 bytes per run, against ≈ 20 bytes per id in the hash map.

use crate::scope::ScopeId;

/// One run: ids `first..=last` map to `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u32,
    last: u32,
    scope: ScopeId,
}

/// Correlation id → scope id, as runs of consecutive ids (module docs).
#[derive(Debug, Default, Clone)]
pub struct CorrelationRuns {
    /// Sorted by `first`, disjoint.
    runs: Vec<Run>,
    /// Ids mapped ([`CorrelationRuns::len`]).
    ids: u64,
}

impl CorrelationRuns {
    /// An empty map.
    pub fn new() -> CorrelationRuns {
        CorrelationRuns::default()
    }

    /// Maps `corr` to `scope`, replacing what it mapped to before.
    pub fn insert(&mut self, corr: u32, scope: ScopeId) {
        match self.runs.last_mut() {
            None => {}
            Some(last) if corr > last.last => {
                if corr == last.last + 1 && last.scope == scope {
                    last.last = corr;
                } else {
                    self.runs.push(Run { first: corr, last: corr, scope });
                }
                self.ids += 1;
                return;
            }
            Some(_) => return self.insert_within(corr, scope),
        }
        self.runs.push(Run { first: corr, last: corr, scope });
        self.ids += 1;
    }

    /// [`CorrelationRuns::insert`] of an id at or before the last run's end.
    fn insert_within(&mut self, corr: u32, scope: ScopeId) {
        // The first run starting after `corr`; the one before it may contain `corr`.
        let i = self.runs.partition_point(|r| r.first <= corr);
        if i > 0 && self.runs[i - 1].last >= corr {
            let r = self.runs[i - 1];
            if r.scope == scope {
                return;
            }
            // Split `r` around `corr`: [first, corr-1] [corr] [corr+1, last].
            let mut pieces = Vec::with_capacity(3);
            if r.first < corr {
                pieces.push(Run { first: r.first, last: corr - 1, scope: r.scope });
            }
            pieces.push(Run { first: corr, last: corr, scope });
            if corr < r.last {
                pieces.push(Run { first: corr + 1, last: r.last, scope: r.scope });
            }
            self.runs.splice(i - 1..i, pieces);
            return;
        }
        // A gap: join the run before and / or after when they are adjacent and the same scope.
        let joins_before = i > 0 && self.runs[i - 1].last + 1 == corr && self.runs[i - 1].scope == scope;
        let joins_after = i < self.runs.len() && corr + 1 == self.runs[i].first && self.runs[i].scope == scope;
        match (joins_before, joins_after) {
            (true, true) => {
                self.runs[i - 1].last = self.runs[i].last;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].last = corr,
            (false, true) => self.runs[i].first = corr,
            (false, false) => self.runs.insert(i, Run { first: corr, last: corr, scope }),
        }
        self.ids += 1;
    }

    /// The index of the run holding `corr` (for [`Self::run_scope`]), looked for first at
    /// `*hint` and the run after it, then by binary search; `*hint` is set to the run found.
    /// Lookups in about increasing `corr` order (a join walking records in time order) cost
    /// one or two comparisons each instead of a binary search (issue 14, item 3). Any `*hint`
    /// is valid: one past the end is only a missed guess.
    pub fn find_run(&self, corr: u32, hint: &mut usize) -> Option<usize> {
        let h = *hint;
        for i in [h, h + 1] {
            match self.runs.get(i) {
                Some(r) if r.first <= corr && corr <= r.last => {
                    *hint = i;
                    return Some(i);
                }
                _ => {}
            }
        }
        let i = self.runs.partition_point(|r| r.first <= corr).checked_sub(1)?;
        (corr <= self.runs[i].last).then(|| {
            *hint = i;
            i
        })
    }

    /// The scope of run `i` ([`Self::find_run`]; `i` below [`Self::run_count`]).
    pub fn run_scope(&self, i: usize) -> ScopeId {
        self.runs[i].scope
    }

    /// The scope `corr` maps to.
    pub fn get(&self, corr: u32) -> Option<ScopeId> {
        // The usual lookup is of a recent id: the last run first.
        let last = self.runs.last()?;
        if corr >= last.first {
            return (corr <= last.last).then_some(last.scope);
        }
        let i = self.runs.partition_point(|r| r.first <= corr);
        let r = self.runs.get(i.checked_sub(1)?)?;
        (corr <= r.last).then_some(r.scope)
    }

    /// Keeps the ids whose scope `keep` accepts (called once per scope run, in id order).
    pub fn retain(&mut self, mut keep: impl FnMut(ScopeId) -> bool) {
        let mut ids = 0u64;
        self.runs.retain(|r| {
            let k = keep(r.scope);
            if k {
                ids += u64::from(r.last - r.first) + 1;
            }
            k
        });
        self.ids = ids;
        // A flood's runs went; give their memory back too.
        if self.runs.capacity() > 4 * self.runs.len().max(1024) {
            self.runs.shrink_to(2 * self.runs.len().max(1024));
        }
    }

    /// Forgets the ids below `corr` (a run across it keeps its part from `corr` on): what a
    /// capture segment took, or the flight recorder let go of (ids grow with each call).
    pub fn remove_below(&mut self, corr: u32) {
        let i = self.runs.partition_point(|r| r.last < corr);
        let mut gone: u64 = self.runs[..i].iter().map(|r| u64::from(r.last - r.first) + 1).sum();
        self.runs.drain(..i);
        if let Some(r) = self.runs.first_mut().filter(|r| r.first < corr) {
            gone += u64::from(corr - r.first);
            r.first = corr;
        }
        self.ids -= gone;
        if self.runs.capacity() > 4 * self.runs.len().max(1024) {
            self.runs.shrink_to(2 * self.runs.len().max(1024));
        }
    }

    /// Correlation ids mapped.
    pub fn len(&self) -> usize {
        self.ids as usize
    }

    /// No id mapped.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Runs held (each 16 bytes): what the map costs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn consecutive_ids_of_one_scope_are_one_run() {
        let mut m = CorrelationRuns::new();
        for corr in 100..400 {
            m.insert(corr, 7);
        }
        for corr in 400..500 {
            m.insert(corr, 8);
        }
        assert_eq!(m.run_count(), 2);
        assert_eq!(m.len(), 400);
        assert_eq!((m.get(99), m.get(100), m.get(399), m.get(400), m.get(499), m.get(500)), (None, Some(7), Some(7), Some(8), Some(8), None));
    }

    #[test]
    fn an_id_inside_a_run_of_another_scope_splits_it() {
        let mut m = CorrelationRuns::new();
        for corr in 10..=20 {
            m.insert(corr, 1);
        }
        m.insert(15, 2);
        assert_eq!(m.run_count(), 3);
        assert_eq!((m.get(14), m.get(15), m.get(16)), (Some(1), Some(2), Some(1)));
        assert_eq!(m.len(), 11);
        m.retain(|s| s == 1);
        assert_eq!((m.get(14), m.get(15), m.get(16), m.len()), (Some(1), None, Some(1), 10));
    }

    #[test]
    fn a_filled_gap_joins_its_neighbours() {
        let mut m = CorrelationRuns::new();
        m.insert(1, 5);
        m.insert(3, 5);
        m.insert(2, 5);
        assert_eq!((m.run_count(), m.len()), (1, 3));
    }

    proptest! {
        /// Any sequence of inserts and retains answers every lookup as a `HashMap` does.
        #[test]
        fn answers_as_a_hash_map(ops in proptest::collection::vec((0u32..64, 0u64..4, 0u8..20), 0..300)) {
            let mut m = CorrelationRuns::new();
            let mut model: HashMap<u32, ScopeId> = HashMap::new();
            for (corr, scope, op) in ops {
                if op == 0 {
                    // Drop one scope's ids.
                    m.retain(|s| s != scope);
                    model.retain(|_, s| *s != scope);
                } else if op == 1 {
                    // Drop the ids below one.
                    m.remove_below(corr);
                    model.retain(|&c, _| c >= corr);
                } else {
                    m.insert(corr, scope);
                    model.insert(corr, scope);
                }
                prop_assert_eq!(m.len(), model.len());
            }
            for corr in 0..70 {
                prop_assert_eq!(m.get(corr), model.get(&corr).copied());
            }
            // find_run answers the same from any hint: ids up, down, and hints past the end.
            let mut hint = 0;
            for (k, corr) in (0..70).chain((0..70).rev()).enumerate() {
                if k % 17 == 16 {
                    hint = m.run_count() + k % 3;
                }
                let found = m.find_run(corr, &mut hint).map(|i| m.run_scope(i));
                prop_assert_eq!(found, model.get(&corr).copied(), "corr {}", corr);
            }
            // Runs stay sorted and disjoint.
            for w in m.runs.windows(2) {
                prop_assert!(w[0].last < w[1].first);
            }
        }
    }
}

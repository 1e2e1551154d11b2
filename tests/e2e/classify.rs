//! Kernel-name rules good enough to stand alone (issue 12, item 4): a worker that announces
//! nothing is classified by kernel names only, so with every scope ignored, `other` must
//! stay under 5 % of kernel time on every fixture trace and on the presets.

use crate::util::*;
use gpuspan_core::classify::{StageRules, OTHER};
use std::collections::BTreeMap;

/// Kernel time per name class (by name alone), and the `other` share.
fn shares<'a>(kernels: impl Iterator<Item = (&'a str, f64)>) -> (BTreeMap<String, f64>, f64) {
    let rules = StageRules::builtin();
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    for (name, dur) in kernels {
        *by.entry(rules.class_of(name).to_string()).or_default() += dur;
    }
    let total: f64 = by.values().sum();
    assert!(total > 0.0, "no kernel time");
    let other = by.get(OTHER).copied().unwrap_or(0.0) / total;
    for v in by.values_mut() {
        *v /= total;
    }
    (by, other)
}

#[test]
fn other_is_under_five_percent_of_kernel_time_on_every_fixture() {
    for f in FIXTURE_TRACES {
        let t = gpuspan_export::read_trace(&fixture(f)).unwrap();
        let (by, other) = shares(t.kernels().map(|k| (k.name.as_str(), k.dur_us)));
        println!("{f}: other {:.3} %, {by:.3?}", other * 100.0);
        assert!(other < 0.05, "{f}: other is {:.1} % of kernel time: {by:?}", other * 100.0);
    }
}

#[test]
fn other_is_under_five_percent_of_kernel_time_on_the_presets() {
    for p in gpuspan_simgpu::workload::preset::PRESET_NAMES {
        let w = gpuspan_simgpu::workload::preset::preset(p, 2, 1).unwrap();
        let s = w.summary();
        let (by, other) = shares(s.per_kernel.iter().map(|(n, k)| (n.as_str(), k.total_ns as f64)));
        println!("{p}: other {:.3} %, {by:.3?}", other * 100.0);
        assert!(other < 0.05, "{p}: other is {:.1} % of kernel time: {by:?}", other * 100.0);
    }
}

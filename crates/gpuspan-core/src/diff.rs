//! Trace comparison: what got slower from trace A (the baseline) to trace B, per stage, per
//! kernel name and per step (`gpuspan diff A B [--json] [--fail-over PCT]`).
//!
//! Pure: two [`DiffInput`]s (each a compact summary of one [`Trace`], so the caller need not
//! hold both traces at once) in, a [`Diff`] out. All times µs, `f64`, never rounded. Stages,
//! steps and kernel attribution are those of [`crate::stats`] (stage: `gpuspan.stage` arg,
//! else the name rules; step: [`crate::stats::kernel_step_assignment`]).
//!
//! # Definitions
//!
//! *Steps* here are the steps of [`crate::stats::Stats::steps`] that hold at least one kernel
//! (a `ProfilerStep#N` that only wraps `dit.step` ranges holds none, as kernels go to the
//! innermost range), in start order; `n_A`, `n_B` their numbers.
//!
//! For one stage or kernel name (a *row*):
//! - `a_count` / `b_count`, `a_total_us` / `b_total_us`: kernels and their summed durations
//!   in the whole trace (0 when absent); `delta_us = b_total_us − a_total_us`;
//!   `ratio = b_total_us / a_total_us` (`null` when `a_total_us` is 0).
//! - `status`: `"changed"` when the row is in both traces (whether or not its time moved;
//!   see `noise`), `"new"` when only in B, `"vanished"` when only in A.
//! - `basis`: `"step_mean"` when both traces have steps and every kernel of the row, in
//!   both traces, lies inside a step; then `a_value_us` / `b_value_us` are the row's mean
//!   kernel time per step (its in-step total / `n`), so traces with different step counts
//!   compare. Otherwise `"total"`: the values are `a_total_us` / `b_total_us`.
//! - `value_delta_us = b_value_us − a_value_us`; `change_pct = 100 × value_delta_us /
//!   a_value_us` (`null` when `a_value_us` is 0).
//! - `noise_us`, the spread of A's steps: the range (max − min, not 2σ: with the handful of
//!   steps a capture holds, σ is poorly estimated and the range is the observed envelope)
//!   of the row's per-step kernel time over A's `n_A` steps, a step without the row
//!   counting 0. For basis `"total"` it is `n_A ×` that range (the total of n steps can move
//!   by n ranges), 0 when the row never occurs in A's steps or A has no steps.
//! - `noise`: `|value_delta_us| ≤ noise_us` (plus 10⁻⁹ of the larger value, for float
//!   summation order): the change is within A's own step-to-step variation. The same rule
//!   applies to new and vanished rows (a new row has A-spread 0, so it is never noise).
//!
//! Step rows pair the i-th step of A with the i-th step of B (names are reported, not
//! matched: `ProfilerStep#` numbers differ between runs); their values are the steps' kernel
//! time, `noise_us` is the range of A's per-step kernel times, and `noise` is
//! `|delta_us| ≤ noise_us` (+ the same 10⁻⁹ slack).
//!
//! Rows are sorted by `|delta_us|` descending (ties by name, steps by index).
//!
//! *Fail-over* ([`Diff::set_fail_over`], `--fail-over PCT`): a stage fails when it is not
//! noise and either `change_pct > PCT` (the per-step mean under basis `"step_mean"`, the
//! total under `"total"`) or it is new with kernel time (an increase from nothing). Kernel
//! and step rows never fail the check; they explain it.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::stats;
use crate::trace::Trace;

/// Relative slack of the noise test, for float summation order.
const REL_EPS: f64 = 1e-9;

/// Presence of a row in the two traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In both traces (`"changed"`, whatever the size of the change).
    Changed,
    /// Only in B (`"new"`).
    New,
    /// Only in A (`"vanished"`).
    Vanished,
}

/// What a row's `a_value_us` / `b_value_us` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Mean kernel time per step (`"step_mean"`).
    StepMean,
    /// Whole-trace kernel time (`"total"`).
    Total,
}

/// The comparison of one stage or kernel name (module documentation: definitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `"changed"`, `"new"` or `"vanished"`.
    pub status: Status,
    /// Kernels in A.
    pub a_count: usize,
    /// Kernels in B.
    pub b_count: usize,
    /// Their summed durations in A, µs.
    pub a_total_us: f64,
    /// Their summed durations in B, µs.
    pub b_total_us: f64,
    /// `b_total_us − a_total_us`, µs.
    pub delta_us: f64,
    /// `b_total_us / a_total_us`; `null` when `a_total_us` is 0.
    pub ratio: Option<f64>,
    /// `"step_mean"` or `"total"`: what the values below are.
    pub basis: Basis,
    /// A's compared value (per-step mean or total), µs.
    pub a_value_us: f64,
    /// B's compared value, µs.
    pub b_value_us: f64,
    /// `b_value_us − a_value_us`, µs.
    pub value_delta_us: f64,
    /// `100 × value_delta_us / a_value_us`; `null` when `a_value_us` is 0.
    pub change_pct: Option<f64>,
    /// The spread of A's steps the change is tested against, µs.
    pub noise_us: f64,
    /// True when `|value_delta_us| ≤ noise_us`: within A's step-to-step variation.
    pub noise: bool,
}

/// One stage's comparison (JSON: `stage` plus the [`Change`] keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageDiff {
    /// Stage name.
    pub stage: String,
    /// The comparison.
    #[serde(flatten)]
    pub change: Change,
}

/// One kernel name's comparison (JSON: `name`, `stage` plus the [`Change`] keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelDiff {
    /// Kernel name.
    pub name: String,
    /// Its stage (the one holding most of its time; B's when present in B, else A's).
    pub stage: String,
    /// The comparison.
    #[serde(flatten)]
    pub change: Change,
}

/// The i-th step of A against the i-th step of B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDiff {
    /// Position (0-based) among the steps with kernels, in start order.
    pub index: usize,
    /// A's step name; `null` for a new step.
    pub a_name: Option<String>,
    /// B's step name; `null` for a vanished step.
    pub b_name: Option<String>,
    /// `"changed"` (both have an i-th step), `"new"`, `"vanished"`.
    pub status: Status,
    /// Kernels in A's step.
    pub a_kernel_count: usize,
    /// Kernels in B's step.
    pub b_kernel_count: usize,
    /// Kernel time of A's step, µs.
    pub a_kernel_total_us: f64,
    /// Kernel time of B's step, µs.
    pub b_kernel_total_us: f64,
    /// Duration of A's step range, µs.
    pub a_dur_us: f64,
    /// Duration of B's step range, µs.
    pub b_dur_us: f64,
    /// `b_kernel_total_us − a_kernel_total_us`, µs.
    pub delta_us: f64,
    /// `b_dur_us − a_dur_us`, µs.
    pub dur_delta_us: f64,
    /// `b_kernel_total_us / a_kernel_total_us`; `null` when A's is 0.
    pub ratio: Option<f64>,
    /// `100 × delta_us / a_kernel_total_us`; `null` when A's is 0.
    pub change_pct: Option<f64>,
    /// Range (max − min) of A's per-step kernel times, µs.
    pub noise_us: f64,
    /// True when `|delta_us| ≤ noise_us`.
    pub noise: bool,
}

/// `gpuspan diff --json`: the whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// A's file name, as given.
    pub a_source: String,
    /// B's file name, as given.
    pub b_source: String,
    /// Steps with kernels in A.
    pub a_steps: usize,
    /// Steps with kernels in B.
    pub b_steps: usize,
    /// A's `kernel_total_us`.
    pub a_kernel_total_us: f64,
    /// B's `kernel_total_us`.
    pub b_kernel_total_us: f64,
    /// `b_kernel_total_us − a_kernel_total_us`, µs.
    pub delta_us: f64,
    /// Per stage, by `|delta_us|` descending.
    pub stages: Vec<StageDiff>,
    /// Per kernel name, by `|delta_us|` descending.
    pub kernels: Vec<KernelDiff>,
    /// Per step position, by `|delta_us|` descending.
    pub steps: Vec<StepDiff>,
    /// The `--fail-over` threshold, percent, when one was given.
    pub fail_over_pct: Option<f64>,
    /// Stages over that threshold (module documentation, "Fail-over"), in `stages` order.
    pub failing: Vec<String>,
    /// Two directories of a distributed job's per-rank captures: each rank and each step's
    /// straggler in A and B ([`stats::ranks::RankDiff`]). Absent otherwise. The rows above
    /// then cover all ranks' kernels together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<stats::ranks::RankDiff>,
}

impl Diff {
    /// Stages that fail a `pct` percent slow-down check: not noise, and `change_pct > pct`
    /// or new with kernel time. In `stages` order.
    pub fn stages_over(&self, pct: f64) -> Vec<&StageDiff> {
        self.stages
            .iter()
            .filter(|s| {
                let c = &s.change;
                !c.noise
                    && match c.change_pct {
                        Some(p) => p > pct,
                        None => c.status == Status::New && c.b_value_us > 0.0,
                    }
            })
            .collect()
    }

    /// Records a `--fail-over` threshold: sets [`Diff::fail_over_pct`] and
    /// [`Diff::failing`]; returns true when some stage fails.
    pub fn set_fail_over(&mut self, pct: f64) -> bool {
        let failing: Vec<String> = self.stages_over(pct).into_iter().map(|s| s.stage.clone()).collect();
        self.fail_over_pct = Some(pct);
        self.failing = failing;
        !self.failing.is_empty()
    }
}

/// One stage's or kernel name's kernels in one trace.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    stage: String,
    count: usize,
    total: f64,
    /// Every kernel lies inside a step.
    all_in_steps: bool,
    /// Kernel time inside steps.
    step_sum: f64,
    /// Smallest / largest per-step kernel time over all steps (0 for a step without it).
    step_min: f64,
    step_max: f64,
}

/// One step with kernels.
#[derive(Debug, Clone, PartialEq)]
struct StepSummary {
    name: String,
    dur: f64,
    kernel_count: usize,
    kernel_total: f64,
}

/// The summary of one trace that [`compare`] needs: per stage and per kernel name, the
/// count, total and per-step kernel times; the steps. O(kernels) memory; built in
/// O(n log n).
#[derive(Debug, Clone, PartialEq)]
pub struct DiffInput {
    source: String,
    kernel_total: f64,
    steps: Vec<StepSummary>,
    stages: HashMap<String, Group>,
    kernels: HashMap<String, Group>,
}

#[derive(Default)]
struct Acc {
    count: usize,
    total: f64,
    outside: usize,
    per_step: HashMap<usize, f64>,
    by_stage: Vec<(usize, f64)>,
}

impl Acc {
    fn add(&mut self, dur: f64, step: Option<usize>, stage: usize) {
        self.count += 1;
        self.total += dur;
        match step {
            Some(p) => *self.per_step.entry(p).or_insert(0.0) += dur,
            None => self.outside += 1,
        }
        match self.by_stage.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, t)) => *t += dur,
            None => self.by_stage.push((stage, dur)),
        }
    }

    fn finish(self, n_steps: usize, stage_names: &[String]) -> Group {
        let stage = self
            .by_stage
            .iter()
            .max_by(|x, y| x.1.total_cmp(&y.1).then_with(|| stage_names[y.0].cmp(&stage_names[x.0])))
            .map(|(s, _)| stage_names[*s].clone())
            .unwrap_or_default();
        let mut step_min = f64::INFINITY;
        let mut step_max = f64::NEG_INFINITY;
        for &v in self.per_step.values() {
            step_min = step_min.min(v);
            step_max = step_max.max(v);
        }
        if self.per_step.len() < n_steps {
            step_min = step_min.min(0.0);
            step_max = step_max.max(0.0);
        }
        if n_steps == 0 {
            (step_min, step_max) = (0.0, 0.0);
        }
        Group {
            stage,
            count: self.count,
            total: self.total,
            all_in_steps: self.outside == 0,
            step_sum: self.per_step.values().sum(),
            step_min,
            step_max,
        }
    }
}

impl DiffInput {
    /// Summarises `trace`; `source` names it in the [`Diff`].
    pub fn new(trace: &Trace, source: &str) -> DiffInput {
        let att = stats::attribute(trace);
        // Steps with kernels, in start order; `pos[range]` = position among them.
        let mut per_range: Vec<(usize, f64)> = vec![(0, 0.0); att.ranges.len()];
        for k in &att.kernels {
            if let Some(s) = k.step {
                per_range[s].0 += 1;
                per_range[s].1 += trace.events[k.event].dur_us;
            }
        }
        let mut used: Vec<usize> = (0..att.ranges.len()).filter(|&r| per_range[r].0 > 0).collect();
        used.sort_by(|&x, &y| {
            let (a, b) = (&att.ranges[x], &att.ranges[y]);
            a.start.total_cmp(&b.start).then_with(|| a.name.cmp(&b.name))
        });
        let mut pos: Vec<Option<usize>> = vec![None; att.ranges.len()];
        for (p, &r) in used.iter().enumerate() {
            pos[r] = Some(p);
        }
        let steps: Vec<StepSummary> = used
            .iter()
            .map(|&r| StepSummary {
                name: att.ranges[r].name.clone(),
                dur: att.ranges[r].dur,
                kernel_count: per_range[r].0,
                kernel_total: per_range[r].1,
            })
            .collect();

        let mut stage_acc: Vec<Acc> = (0..att.stages.len()).map(|_| Acc::default()).collect();
        let mut kernel_acc: HashMap<&str, Acc> = HashMap::new();
        let mut kernel_total = 0.0;
        for k in &att.kernels {
            let e = &trace.events[k.event];
            let p = k.step.and_then(|s| pos[s]);
            kernel_total += e.dur_us;
            stage_acc[k.stage].add(e.dur_us, p, k.stage);
            kernel_acc.entry(e.name.as_str()).or_default().add(e.dur_us, p, k.stage);
        }
        let n = steps.len();
        let stages = stage_acc
            .into_iter()
            .enumerate()
            .filter(|(_, a)| a.count > 0)
            .map(|(i, a)| (att.stages[i].clone(), a.finish(n, &att.stages)))
            .collect();
        let kernels = kernel_acc.into_iter().map(|(name, a)| (name.to_string(), a.finish(n, &att.stages))).collect();
        DiffInput { source: source.to_string(), kernel_total, steps, stages, kernels }
    }
}

/// Compares one row (module documentation: definitions).
fn change(a: Option<&Group>, b: Option<&Group>, na: usize, nb: usize) -> Change {
    let status = match (a, b) {
        (Some(_), Some(_)) => Status::Changed,
        (None, _) => Status::New,
        (Some(_), None) => Status::Vanished,
    };
    let a_total = a.map_or(0.0, |g| g.total);
    let b_total = b.map_or(0.0, |g| g.total);
    let in_steps = |g: Option<&Group>| g.is_none_or(|g| g.all_in_steps);
    let basis = if na > 0 && nb > 0 && in_steps(a) && in_steps(b) { Basis::StepMean } else { Basis::Total };
    let spread = a.map_or(0.0, |g| g.step_max - g.step_min);
    let (a_value, b_value, noise_us) = match basis {
        Basis::StepMean => (
            a.map_or(0.0, |g| g.step_sum / na as f64),
            b.map_or(0.0, |g| g.step_sum / nb as f64),
            spread,
        ),
        Basis::Total => (a_total, b_total, na as f64 * spread),
    };
    let value_delta = b_value - a_value;
    Change {
        status,
        a_count: a.map_or(0, |g| g.count),
        b_count: b.map_or(0, |g| g.count),
        a_total_us: a_total,
        b_total_us: b_total,
        delta_us: b_total - a_total,
        ratio: (a_total != 0.0).then(|| b_total / a_total),
        basis,
        a_value_us: a_value,
        b_value_us: b_value,
        value_delta_us: value_delta,
        change_pct: (a_value != 0.0).then(|| 100.0 * value_delta / a_value),
        noise_us,
        noise: within(value_delta, noise_us, a_value, b_value),
    }
}

/// `|delta| ≤ spread`, with a relative slack of [`REL_EPS`].
fn within(delta: f64, spread: f64, a: f64, b: f64) -> bool {
    delta.abs() <= spread + REL_EPS * a.abs().max(b.abs())
}

/// Sort key: |delta| descending, then name.
fn by_abs_delta(x: f64, y: f64) -> std::cmp::Ordering {
    y.abs().total_cmp(&x.abs())
}

/// Compares A (baseline) with B.
pub fn compare(a: &DiffInput, b: &DiffInput) -> Diff {
    let (na, nb) = (a.steps.len(), b.steps.len());

    let names: BTreeSet<&String> = a.stages.keys().chain(b.stages.keys()).collect();
    let mut stages: Vec<StageDiff> = names
        .into_iter()
        .map(|s| StageDiff { stage: s.clone(), change: change(a.stages.get(s), b.stages.get(s), na, nb) })
        .collect();
    stages.sort_by(|x, y| by_abs_delta(x.change.delta_us, y.change.delta_us).then_with(|| x.stage.cmp(&y.stage)));

    let names: BTreeSet<&String> = a.kernels.keys().chain(b.kernels.keys()).collect();
    let mut kernels: Vec<KernelDiff> = names
        .into_iter()
        .map(|n| {
            let (ga, gb) = (a.kernels.get(n), b.kernels.get(n));
            let stage = gb.or(ga).map(|g| g.stage.clone()).unwrap_or_default();
            KernelDiff { name: n.clone(), stage, change: change(ga, gb, na, nb) }
        })
        .collect();
    kernels.sort_by(|x, y| by_abs_delta(x.change.delta_us, y.change.delta_us).then_with(|| x.name.cmp(&y.name)));

    let (lo, hi) = a
        .steps
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s.kernel_total), hi.max(s.kernel_total)));
    let step_spread = if na > 0 { hi - lo } else { 0.0 };
    let mut steps: Vec<StepDiff> = (0..na.max(nb))
        .map(|i| {
            let (sa, sb) = (a.steps.get(i), b.steps.get(i));
            let status = match (sa, sb) {
                (Some(_), Some(_)) => Status::Changed,
                (None, _) => Status::New,
                (Some(_), None) => Status::Vanished,
            };
            let at = sa.map_or(0.0, |s| s.kernel_total);
            let bt = sb.map_or(0.0, |s| s.kernel_total);
            let delta = bt - at;
            StepDiff {
                index: i,
                a_name: sa.map(|s| s.name.clone()),
                b_name: sb.map(|s| s.name.clone()),
                status,
                a_kernel_count: sa.map_or(0, |s| s.kernel_count),
                b_kernel_count: sb.map_or(0, |s| s.kernel_count),
                a_kernel_total_us: at,
                b_kernel_total_us: bt,
                a_dur_us: sa.map_or(0.0, |s| s.dur),
                b_dur_us: sb.map_or(0.0, |s| s.dur),
                delta_us: delta,
                dur_delta_us: sb.map_or(0.0, |s| s.dur) - sa.map_or(0.0, |s| s.dur),
                ratio: (at != 0.0).then(|| bt / at),
                change_pct: (at != 0.0).then(|| 100.0 * delta / at),
                noise_us: step_spread,
                noise: within(delta, step_spread, at, bt),
            }
        })
        .collect();
    steps.sort_by(|x, y| by_abs_delta(x.delta_us, y.delta_us).then_with(|| x.index.cmp(&y.index)));

    Diff {
        a_source: a.source.clone(),
        b_source: b.source.clone(),
        a_steps: na,
        b_steps: nb,
        a_kernel_total_us: a.kernel_total,
        b_kernel_total_us: b.kernel_total,
        delta_us: b.kernel_total - a.kernel_total,
        stages,
        kernels,
        steps,
        fail_over_pct: None,
        failing: Vec::new(),
        ranks: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Category, TraceEvent};

    /// `steps` steps of 1000 µs; in step i: an `ffn` kernel of `ffn[i]` µs and an
    /// `attention.spatial` kernel of `attn[i]` µs, launched inside the step; then one
    /// `vae.decode` kernel of `vae` µs outside every step.
    fn trace(ffn: &[f64], attn: &[f64], vae: f64) -> Trace {
        let mut events = Vec::new();
        let mut corr = 0;
        let mut k = |events: &mut Vec<TraceEvent>, name: &str, stage: &str, launch: f64, dur: f64| {
            corr += 1;
            events.push(TraceEvent {
                cat: Some(Category::CudaRuntime),
                name: "cudaLaunchKernel".into(),
                ts_us: launch,
                dur_us: 1.0,
                correlation: Some(corr),
                ..Default::default()
            });
            events.push(TraceEvent {
                cat: Some(Category::Kernel),
                name: name.into(),
                ts_us: launch + 5.0,
                dur_us: dur,
                stage: Some(stage.into()),
                correlation: Some(corr),
                ..Default::default()
            });
        };
        for (i, (&f, &a)) in ffn.iter().zip(attn).enumerate() {
            let t0 = 1000.0 * i as f64;
            events.push(TraceEvent {
                cat: Some(Category::UserAnnotation),
                name: format!("dit.step {i}/{}", ffn.len()),
                ts_us: t0,
                dur_us: 1000.0,
                ..Default::default()
            });
            k(&mut events, "gemm_ffn", "ffn", t0 + 10.0, f);
            k(&mut events, "flash_fwd", "attention.spatial", t0 + 20.0, a);
        }
        k(&mut events, "conv3d", "vae.decode", 1e6, vae);
        Trace { events, ..Default::default() }
    }

    fn diff(a: &Trace, b: &Trace) -> Diff {
        compare(&DiffInput::new(a, "a"), &DiffInput::new(b, "b"))
    }

    fn stage<'d>(d: &'d Diff, s: &str) -> &'d Change {
        &d.stages.iter().find(|x| x.stage == s).unwrap().change
    }

    #[test]
    fn identical_traces_are_all_noise_and_zero() {
        let t = trace(&[100.0, 104.0, 98.0, 102.0], &[50.0, 51.0, 49.0, 50.0], 300.0);
        let mut d = diff(&t, &t);
        assert_eq!((d.a_steps, d.b_steps, d.delta_us), (4, 4, 0.0));
        for s in &d.stages {
            assert_eq!((s.change.status, s.change.delta_us, s.change.noise), (Status::Changed, 0.0, true), "{s:?}");
            assert_eq!(s.change.ratio, Some(1.0));
        }
        assert!(d.kernels.iter().all(|k| k.change.noise && k.change.delta_us == 0.0));
        assert!(d.steps.iter().all(|s| s.noise && s.delta_us == 0.0 && s.status == Status::Changed));
        assert!(!d.set_fail_over(0.0));
        assert!(d.failing.is_empty());
        assert_eq!(d.fail_over_pct, Some(0.0));
    }

    #[test]
    fn noise_is_the_range_of_a_steps() {
        // ffn per step in A: 100, 104, 98, 102 → mean 101, range 6.
        let a = trace(&[100.0, 104.0, 98.0, 102.0], &[50.0; 4], 300.0);
        // B: ffn mean 106 (Δ 5 ≤ 6: noise), attention mean 60 (Δ 10 > range 0: real),
        // vae 300 → 330 (outside steps: basis total, spread 0: real).
        let b = trace(&[106.0; 4], &[60.0; 4], 330.0);
        let mut d = diff(&a, &b);
        let f = stage(&d, "ffn");
        assert_eq!((f.basis, f.a_value_us, f.b_value_us, f.noise_us, f.noise), (Basis::StepMean, 101.0, 106.0, 6.0, true));
        assert_eq!((f.a_total_us, f.b_total_us, f.delta_us), (404.0, 424.0, 20.0));
        assert_eq!(f.change_pct, Some(100.0 * 5.0 / 101.0));
        let at = stage(&d, "attention.spatial");
        assert_eq!((at.basis, at.value_delta_us, at.noise_us, at.noise), (Basis::StepMean, 10.0, 0.0, false));
        assert_eq!(at.change_pct, Some(20.0));
        assert_eq!(at.ratio, Some(1.2));
        let v = stage(&d, "vae.decode");
        assert_eq!((v.basis, v.a_value_us, v.b_value_us, v.noise_us, v.noise), (Basis::Total, 300.0, 330.0, 0.0, false));
        assert_eq!(v.change_pct, Some(10.0));
        // Sorted by |delta_us|: attention 40, vae 30, ffn 20.
        let order: Vec<&str> = d.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(order, ["attention.spatial", "vae.decode", "ffn"]);
        // Steps: A's kernel totals 150, 154, 148, 152 (range 6); B's 166 each.
        let s0 = d.steps.iter().find(|s| s.index == 2).unwrap();
        assert_eq!((s0.a_kernel_total_us, s0.b_kernel_total_us, s0.delta_us, s0.noise_us, s0.noise), (148.0, 166.0, 18.0, 6.0, false));
        assert_eq!(d.steps[0].index, 2, "largest step change first");
        let s1 = d.steps.iter().find(|s| s.index == 1).unwrap();
        assert_eq!((s1.delta_us, s1.noise), (12.0, false));
        // Fail-over: attention +20 %, vae +10 % (not > 10), ffn is noise.
        assert!(d.set_fail_over(10.0));
        assert_eq!(d.failing, ["attention.spatial"]);
        assert!(d.set_fail_over(9.99));
        assert_eq!(d.failing, ["attention.spatial", "vae.decode"]);
        assert!(!d.set_fail_over(20.0));
    }

    #[test]
    fn different_step_counts_compare_per_step() {
        let a = trace(&[100.0; 4], &[50.0; 4], 300.0);
        let b = trace(&[100.0; 8], &[50.0; 8], 300.0);
        let d = diff(&a, &b);
        let f = stage(&d, "ffn");
        assert_eq!((f.delta_us, f.value_delta_us, f.noise), (400.0, 0.0, true));
        assert_eq!(d.steps.iter().filter(|s| s.status == Status::New).count(), 4);
        let new_step = d.steps.iter().find(|s| s.index == 7).unwrap();
        assert_eq!((new_step.a_name.as_deref(), new_step.b_name.as_deref()), (None, Some("dit.step 7/8")));
        assert!(!new_step.noise);
    }

    #[test]
    fn new_and_vanished_kernels() {
        let a = trace(&[100.0; 2], &[50.0; 2], 300.0);
        let mut b = trace(&[100.0; 2], &[50.0; 2], 300.0);
        for e in &mut b.events {
            if e.name == "flash_fwd" {
                e.name = "flash_fwd_v3".into();
            }
        }
        let mut d = diff(&a, &b);
        let old = d.kernels.iter().find(|k| k.name == "flash_fwd").unwrap();
        let new = d.kernels.iter().find(|k| k.name == "flash_fwd_v3").unwrap();
        assert_eq!((old.change.status, old.change.b_count, old.change.delta_us), (Status::Vanished, 0, -100.0));
        assert_eq!((new.change.status, new.change.a_count, new.change.delta_us), (Status::New, 0, 100.0));
        assert_eq!((new.change.ratio, new.change.change_pct, new.change.noise), (None, None, false));
        assert_eq!(new.stage, "attention.spatial");
        // The stage itself did not move.
        assert!(stage(&d, "attention.spatial").noise);
        assert!(!d.set_fail_over(1.0));
        // A new stage fails any threshold.
        for e in &mut b.events {
            if e.name == "flash_fwd_v3" {
                e.stage = Some("attention.temporal".into());
            }
        }
        let mut d = diff(&a, &b);
        assert_eq!(stage(&d, "attention.temporal").status, Status::New);
        assert_eq!(stage(&d, "attention.spatial").status, Status::Vanished);
        assert!(d.set_fail_over(1000.0));
        assert_eq!(d.failing, ["attention.temporal"]);
    }

    #[test]
    fn json_rows_have_the_documented_keys() {
        let t = trace(&[100.0; 2], &[50.0; 2], 300.0);
        let v = serde_json::to_value(diff(&t, &t)).unwrap();
        for k in ["a_source", "b_source", "a_steps", "b_steps", "stages", "kernels", "steps", "fail_over_pct", "failing"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        for row in [&v["stages"][0], &v["kernels"][0]] {
            for k in [
                "status", "a_count", "b_count", "a_total_us", "b_total_us", "delta_us", "ratio", "basis", "a_value_us",
                "b_value_us", "value_delta_us", "change_pct", "noise_us", "noise",
            ] {
                assert!(row.get(k).is_some(), "{k} in {row}");
            }
        }
        assert_eq!(v["stages"][0]["status"], "changed");
        assert!(v["kernels"][0]["name"].is_string() && v["kernels"][0]["stage"].is_string());
        for k in ["index", "a_name", "b_name", "status", "a_kernel_total_us", "b_kernel_total_us", "delta_us", "ratio", "noise"] {
            assert!(v["steps"][0].get(k).is_some(), "{k}");
        }
        let back: Diff = serde_json::from_value(v).unwrap();
        assert_eq!(back.stages.len(), 3);
    }
}

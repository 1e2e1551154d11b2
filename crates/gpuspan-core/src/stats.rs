//! Trace statistics: the kernel / stage / step breakdown and GPU busy / idle time that
//! `gpuspan stats` prints (DESIGN.md "Command line", `stats --json`).
//!
//! Pure: a [`Trace`] in, a [`Stats`] out; no I/O. Definitions (all times µs, `f64`, Kineto's
//! unit, never rounded):
//! - *GPU activity* is every kernel, memcpy and memset event ([`Category::is_gpu_activity`]),
//!   on all devices and streams together.
//! - `gpu_span_us`: first start to last end of GPU activity.
//! - `gpu_busy_us`: length of the union of the GPU activity intervals, so overlapping work
//!   on concurrent streams counts once. This is HTA's "GPU busy" notion
//!   (HolisticTraceAnalysis `TemporalBreakdown`: idle time is the time within the span
//!   where no kernel is running on any stream), with memcpy / memset counted as busy.
//! - `gpu_idle_us` = span − busy.
//! - `kernel_count` / `kernel_total_us`: kernels only (memcpy / memset excluded), durations
//!   summed (so concurrent kernels add up and `kernel_total_us` may exceed `gpu_busy_us`).
//! - Stage of a kernel: its `gpuspan.stage` arg when present, else the name rules of
//!   DESIGN.md "Stage classification".
//! - Steps: `ProfilerStep#N` ranges (torch.profiler's per-`step()` annotation; cat
//!   `user_annotation`, or `Operator` / `cpu_op` in the old schema) and gpuspan's own
//!   `dit.step i/n` `user_annotation` ranges; kernels are attributed as
//!   [`kernel_step_assignment`] documents.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::classify::StageRules;
use crate::trace::{Category, Trace, TraceEvent};

/// The `gpuspan stats --json` object. Field names and order are the interface
/// (DESIGN.md); all times in µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Where the trace came from (the file name as the user gave it).
    pub source: String,
    /// Number of kernel events.
    pub kernel_count: usize,
    /// Sum of kernel durations, µs (memcpy / memset excluded).
    pub kernel_total_us: f64,
    /// First start to last end of all GPU activity (kernels, memcpy, memset), µs.
    pub gpu_span_us: f64,
    /// Union of the GPU activity intervals over all devices and streams, µs.
    pub gpu_busy_us: f64,
    /// `gpu_span_us − gpu_busy_us`, µs.
    pub gpu_idle_us: f64,
    /// Per distinct kernel name, by `total_us` descending (ties by name).
    pub kernels: Vec<KernelStats>,
    /// Per stage, by `total_us` descending (ties by stage name). Kernels only, so the stage
    /// totals add up to `kernel_total_us`.
    pub stages: Vec<StageStats>,
    /// Per step, by `start_us` ascending.
    pub steps: Vec<StepStats>,
}

/// Statistics of all kernels sharing one name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelStats {
    /// Kernel name as in the trace (demangled, as Kineto writes it).
    pub name: String,
    /// Stage of this kernel name: when its launches fall into several stages, the stage
    /// that holds most of its time (ties by stage name).
    pub stage: String,
    /// Number of launches.
    pub count: usize,
    /// Sum of durations, µs.
    pub total_us: f64,
    /// `total_us / count`, µs.
    pub mean_us: f64,
    /// Shortest duration, µs.
    pub min_us: f64,
    /// Longest duration, µs.
    pub max_us: f64,
}

/// Kernel time of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Stage name (`attention.spatial`, `ffn`, `gemm`, `other`, ...).
    pub stage: String,
    /// Number of kernels attributed to it.
    pub count: usize,
    /// Sum of their durations, µs.
    pub total_us: f64,
}

/// One step range and the kernels attributed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Step name (`ProfilerStep#6`, `dit.step 3/50`).
    pub name: String,
    /// Start of the step's CPU range, µs (for a step known only from kernels' `gpuspan.step`
    /// args: the first such kernel's start).
    pub start_us: f64,
    /// Duration of that range, µs (for a step known only from kernels: first kernel start to
    /// last kernel end).
    pub dur_us: f64,
    /// Kernels attributed to the step.
    pub kernel_count: usize,
    /// Sum of their durations, µs.
    pub kernel_total_us: f64,
}

/// Computes the statistics of `trace`; `source` is copied into [`Stats::source`].
pub fn compute(trace: &Trace, source: &str) -> Stats {
    // Kernels and stages.
    struct Acc<'a> {
        count: usize,
        total: f64,
        min: f64,
        max: f64,
        by_stage: Vec<(&'a str, f64)>,
    }
    let mut by_name: HashMap<&str, Acc<'_>> = HashMap::new();
    let mut by_stage: HashMap<&str, (usize, f64)> = HashMap::new();
    let mut kernel_count = 0usize;
    let mut kernel_total_us = 0.0f64;
    let rules = StageRules::builtin();
    // Name rules once per distinct kernel name (classify.rs), never per event.
    let mut class_cache: HashMap<&str, &str> = HashMap::new();
    for e in trace.kernels() {
        kernel_count += 1;
        kernel_total_us += e.dur_us;
        let stage = match e.stage.as_deref() {
            Some(s) if !s.is_empty() => s,
            _ => *class_cache.entry(e.name.as_str()).or_insert_with(|| rules.class_of(&e.name)),
        };
        let acc = by_name.entry(e.name.as_str()).or_insert(Acc {
            count: 0,
            total: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            by_stage: Vec::new(),
        });
        acc.count += 1;
        acc.total += e.dur_us;
        acc.min = acc.min.min(e.dur_us);
        acc.max = acc.max.max(e.dur_us);
        match acc.by_stage.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, t)) => *t += e.dur_us,
            None => acc.by_stage.push((stage, e.dur_us)),
        }
        let s = by_stage.entry(stage).or_insert((0, 0.0));
        s.0 += 1;
        s.1 += e.dur_us;
    }
    let mut kernels: Vec<KernelStats> = by_name
        .into_iter()
        .map(|(name, a)| {
            let stage = a
                .by_stage
                .iter()
                .max_by(|x, y| x.1.total_cmp(&y.1).then_with(|| y.0.cmp(x.0)))
                .map(|(s, _)| s.to_string())
                .unwrap_or_default();
            KernelStats {
                name: name.to_string(),
                stage,
                count: a.count,
                total_us: a.total,
                mean_us: a.total / a.count as f64,
                min_us: a.min,
                max_us: a.max,
            }
        })
        .collect();
    kernels.sort_by(|a, b| {
        b.total_us
            .total_cmp(&a.total_us)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut stages: Vec<StageStats> = by_stage
        .into_iter()
        .map(|(stage, (count, total_us))| StageStats {
            stage: stage.to_string(),
            count,
            total_us,
        })
        .collect();
    stages.sort_by(|a, b| {
        b.total_us
            .total_cmp(&a.total_us)
            .then_with(|| a.stage.cmp(&b.stage))
    });

    // Span and busy union over kernels + memcpy + memset.
    let mut intervals: Vec<(f64, f64)> = trace
        .events
        .iter()
        .filter(|e| e.cat.as_ref().is_some_and(Category::is_gpu_activity))
        .map(|e| (e.ts_us, e.ts_us + e.dur_us.max(0.0)))
        .collect();
    let (gpu_span_us, gpu_busy_us) = span_and_busy(&mut intervals);

    // Steps.
    let (ranges, assignment) = assign(trace);
    let mut per_step: Vec<(usize, f64)> = vec![(0, 0.0); ranges.len()];
    for (i, step) in &assignment {
        if let Some(s) = step {
            per_step[*s].0 += 1;
            per_step[*s].1 += trace.events[*i].dur_us;
        }
    }
    let mut steps: Vec<StepStats> = ranges
        .iter()
        .zip(per_step)
        .map(|(r, (kernel_count, kernel_total_us))| StepStats {
            name: r.name.clone(),
            start_us: r.start,
            dur_us: r.dur,
            kernel_count,
            kernel_total_us,
        })
        .collect();
    steps.sort_by(|a, b| {
        a.start_us
            .total_cmp(&b.start_us)
            .then_with(|| a.name.cmp(&b.name))
    });

    Stats {
        source: source.to_string(),
        kernel_count,
        kernel_total_us,
        gpu_span_us,
        gpu_busy_us,
        gpu_idle_us: (gpu_span_us - gpu_busy_us).max(0.0),
        kernels,
        stages,
        steps,
    }
}

/// Sorts `intervals` and returns (span, length of their union); (0, 0) when empty.
fn span_and_busy(intervals: &mut [(f64, f64)]) -> (f64, f64) {
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.total_cmp(&b.1)));
    let Some(&(first, _)) = intervals.first() else {
        return (0.0, 0.0);
    };
    let last_end = intervals
        .iter()
        .map(|i| i.1)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut busy = 0.0;
    let (mut cs, mut ce) = intervals[0];
    for &(s, e) in &intervals[1..] {
        if s > ce {
            busy += ce - cs;
            cs = s;
            ce = e;
        } else if e > ce {
            ce = e;
        }
    }
    busy += ce - cs;
    (last_end - first, busy)
}

/// True for a step range name: `ProfilerStep#<n>` or `dit.step <i>/<n>`.
fn step_kind(name: &str) -> Option<StepKind> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(n) = name.strip_prefix("ProfilerStep#") {
        if digits(n) {
            return Some(StepKind::Profiler);
        }
    }
    if let Some(rest) = name.strip_prefix("dit.step ") {
        if let Some((i, n)) = rest.split_once('/') {
            if digits(i) && digits(n) {
                return Some(StepKind::Dit);
            }
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Profiler,
    Dit,
}

fn is_step_event(e: &TraceEvent) -> bool {
    matches!(
        (step_kind(&e.name), &e.cat),
        (
            Some(StepKind::Profiler),
            Some(Category::UserAnnotation | Category::CpuOp)
        ) | (Some(StepKind::Dit), Some(Category::UserAnnotation))
    )
}

/// A step's CPU range.
struct StepRange {
    name: String,
    start: f64,
    dur: f64,
}

/// Ranges sorted by start (inner ranges after outer ones on equal starts) with a prefix
/// maximum of ends, for "innermost range containing t" queries.
struct RangeIndex {
    /// (start, end, id)
    items: Vec<(f64, f64, usize)>,
    max_end: Vec<f64>,
}

impl RangeIndex {
    fn new(mut items: Vec<(f64, f64, usize)>) -> Self {
        items.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.total_cmp(&a.1)));
        let mut max_end = Vec::with_capacity(items.len());
        let mut m = f64::NEG_INFINITY;
        for it in &items {
            m = m.max(it.1);
            max_end.push(m);
        }
        RangeIndex { items, max_end }
    }

    /// The id of the latest-starting range with `start <= t < end` among the ids accepted
    /// by `keep`.
    fn innermost_where(&self, t: f64, keep: impl Fn(usize) -> bool) -> Option<usize> {
        let upto = self.items.partition_point(|r| r.0 <= t);
        for j in (0..upto).rev() {
            if self.max_end[j] <= t {
                break;
            }
            if t < self.items[j].1 && keep(self.items[j].2) {
                return Some(self.items[j].2);
            }
        }
        None
    }
}

/// Which step each kernel belongs to: `(index into trace.events, step name)` for every
/// kernel event, in event order.
///
/// Rules, first that applies:
/// 1. the kernel's `gpuspan.step` arg names the step (a step named only by such args, with
///    no range event, is still a step);
/// 2. the kernel's CPU launch — the `cuda_runtime` / `cuda_driver` event with the same
///    `correlation` (CUPTI's launch ↔ activity link, as Kineto and HTA use it) — starts
///    inside the step's CPU range `[ts, ts + dur)`; a launch outside every step gives
///    `None`;
/// 3. a kernel with no launch event in the trace (Kineto drops some, e.g. launches from
///    before the profiler window) belongs to the step whose `gpu_user_annotation` range of
///    the same name (Kineto's GPU-side projection of `ProfilerStep#N`) contains its start,
///    else to the step whose CPU range contains its start.
///
/// When ranges nest (a `dit.step` inside a `ProfilerStep`), the innermost (latest-starting)
/// containing range wins. When several steps share a name, rule 1 picks among them by the
/// time rules, else the first.
pub fn kernel_step_assignment(trace: &Trace) -> Vec<(usize, Option<String>)> {
    let (ranges, assignment) = assign(trace);
    assignment
        .into_iter()
        .map(|(i, s)| (i, s.map(|s| ranges[s].name.clone())))
        .collect()
}

/// Step ranges (CPU step events first, in event order, then steps known only from
/// `gpuspan.step` args) and, per kernel event, the index of its step in that list.
fn assign(trace: &Trace) -> (Vec<StepRange>, Vec<(usize, Option<usize>)>) {
    let mut ranges: Vec<StepRange> = trace
        .events
        .iter()
        .filter(|e| is_step_event(e))
        .map(|e| StepRange {
            name: e.name.clone(),
            start: e.ts_us,
            dur: e.dur_us,
        })
        .collect();
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in ranges.iter().enumerate() {
        by_name.entry(r.name.clone()).or_default().push(i);
    }
    let cpu_index = RangeIndex::new(
        ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (r.start, r.start + r.dur, i))
            .collect(),
    );
    // GPU-side projections of step ranges, id = index into trace.events.
    let gpu_index = RangeIndex::new(
        trace
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is(&Category::GpuUserAnnotation) && by_name.contains_key(&e.name))
            .map(|(i, e)| (e.ts_us, e.end_us(), i))
            .collect(),
    );
    let mut launch_ts: HashMap<i64, f64> = HashMap::new();
    for e in &trace.events {
        if let (Some(c), Some(cat)) = (e.correlation, &e.cat) {
            if cat.is_launch_api() {
                launch_ts.entry(c).or_insert(e.ts_us);
            }
        }
    }
    // The step a GPU annotation stands for: among steps of that name, the latest whose CPU
    // range starts no later than the annotation, else the first.
    let step_of_gpu_annotation = |ev: usize, ranges: &[StepRange]| -> Option<usize> {
        let a = &trace.events[ev];
        let cands = by_name.get(&a.name)?;
        cands
            .iter()
            .copied()
            .filter(|&s| ranges[s].start <= a.ts_us)
            .max_by(|&x, &y| ranges[x].start.total_cmp(&ranges[y].start))
            .or_else(|| cands.first().copied())
    };
    // Time rules (2 and 3), optionally restricted to some steps.
    let by_time = |k: &TraceEvent, ranges: &[StepRange], keep: &dyn Fn(usize) -> bool| {
        if let Some(lts) = k.correlation.and_then(|c| launch_ts.get(&c)) {
            return cpu_index.innermost_where(*lts, keep);
        }
        let via_gpu = gpu_index
            .innermost_where(k.ts_us, |ev| {
                step_of_gpu_annotation(ev, ranges).is_some_and(keep)
            })
            .and_then(|ev| step_of_gpu_annotation(ev, ranges));
        via_gpu.or_else(|| cpu_index.innermost_where(k.ts_us, keep))
    };

    let mut synthetic: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, k) in trace.events.iter().enumerate() {
        if !k.is(&Category::Kernel) {
            continue;
        }
        let step = match k.step.as_deref().filter(|s| !s.is_empty()) {
            Some(name) => match by_name.get(name) {
                Some(c) if c.len() == 1 => Some(c[0]),
                Some(c) => {
                    let c = c.clone();
                    by_time(k, &ranges, &|s| c.contains(&s)).or(Some(c[0]))
                }
                None => {
                    // A step known only from the kernels' args: its range is its kernels'.
                    let s = *synthetic.entry(name.to_string()).or_insert_with(|| {
                        ranges.push(StepRange {
                            name: name.to_string(),
                            start: k.ts_us,
                            dur: 0.0,
                        });
                        ranges.len() - 1
                    });
                    let r = &mut ranges[s];
                    let end = (r.start + r.dur).max(k.end_us());
                    r.start = r.start.min(k.ts_us);
                    r.dur = end - r.start;
                    Some(s)
                }
            },
            None => by_time(k, &ranges, &|_| true),
        };
        out.push((i, step));
    }
    (ranges, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cat: Category, name: &str, tid: i64, ts: f64, dur: f64) -> TraceEvent {
        TraceEvent {
            cat: Some(cat),
            name: name.into(),
            tid,
            ts_us: ts,
            dur_us: dur,
            ..Default::default()
        }
    }
    fn kernel(name: &str, stream: i64, ts: f64, dur: f64) -> TraceEvent {
        TraceEvent {
            stream: Some(stream),
            ..ev(Category::Kernel, name, stream, ts, dur)
        }
    }
    fn with_corr(mut e: TraceEvent, c: i64) -> TraceEvent {
        e.correlation = Some(c);
        e
    }

    #[test]
    fn busy_union_over_two_streams_and_memcpy_extends_span() {
        let trace = Trace {
            events: vec![
                kernel("a", 7, 0.0, 10.0),                                     // 0..10
                kernel("b", 8, 5.0, 10.0),                                     // 5..15, overlaps a
                kernel("a", 7, 20.0, 5.0),                                     // 20..25
                kernel("c", 8, 21.0, 2.5), // inside the previous one
                ev(Category::GpuMemcpy, "Memcpy HtoD", 7, 30.0, 10.0), // 30..40
                ev(Category::CudaRuntime, "cudaLaunchKernel", 1, -100.0, 5.0), // CPU: ignored
            ],
            ..Default::default()
        };
        let s = compute(&trace, "t.json");
        assert_eq!(s.source, "t.json");
        assert_eq!(s.kernel_count, 4);
        assert_eq!(s.kernel_total_us, 27.5);
        assert_eq!(s.gpu_span_us, 40.0);
        assert_eq!(s.gpu_busy_us, 15.0 + 5.0 + 10.0);
        assert_eq!(s.gpu_idle_us, 10.0);
    }

    #[test]
    fn empty_trace_is_all_zero() {
        let s = compute(&Trace::default(), "e");
        assert_eq!(
            (s.kernel_count, s.gpu_span_us, s.gpu_busy_us, s.gpu_idle_us),
            (0, 0.0, 0.0, 0.0)
        );
        assert!(s.kernels.is_empty() && s.stages.is_empty() && s.steps.is_empty());
    }

    #[test]
    fn kernels_and_stages_tables() {
        let mut gemm_ffn = kernel("sm90_xmma_gemm_bf16", 7, 100.0, 30.0);
        gemm_ffn.stage = Some("ffn".into());
        let trace = Trace {
            events: vec![
                kernel("flash_fwd_kernel", 7, 0.0, 10.0),
                kernel("flash_fwd_kernel", 7, 10.0, 14.0),
                kernel("sm90_xmma_gemm_bf16", 7, 30.0, 2.0),
                gemm_ffn,
                kernel("vectorized_layer_norm_kernel", 7, 200.0, 1.0),
                kernel("some_custom_kernel", 7, 300.0, 0.5),
            ],
            ..Default::default()
        };
        let s = compute(&trace, "x");
        let names: Vec<_> = s
            .kernels
            .iter()
            .map(|k| (k.name.as_str(), k.stage.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("sm90_xmma_gemm_bf16", "ffn"), // 32 µs, 30 of them under ffn
                ("flash_fwd_kernel", "attention"),
                ("vectorized_layer_norm_kernel", "norm"),
                ("some_custom_kernel", "other"),
            ]
        );
        let f = &s.kernels[1];
        assert_eq!(
            (f.count, f.total_us, f.mean_us, f.min_us, f.max_us),
            (2, 24.0, 12.0, 10.0, 14.0)
        );
        let st: Vec<_> = s
            .stages
            .iter()
            .map(|x| (x.stage.as_str(), x.count, x.total_us))
            .collect();
        assert_eq!(
            st,
            [
                ("ffn", 1, 30.0),
                ("attention", 2, 24.0),
                ("gemm", 1, 2.0),
                ("norm", 1, 1.0),
                ("other", 1, 0.5)
            ]
        );
        let stage_sum: f64 = s.stages.iter().map(|x| x.total_us).sum();
        assert_eq!(stage_sum, s.kernel_total_us);
    }

    #[test]
    fn name_rules() {
        assert_eq!(
            StageRules::builtin().class_of("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<cutlass::half_t>>"),
            "attention"
        );
        assert_eq!(
            StageRules::builtin().class_of("fmha_cutlassF_bf16_aligned_64x128_rf_sm80"),
            "attention"
        );
        assert_eq!(
            StageRules::builtin().class_of("void (anonymous namespace)::softmax_warp_forward<float>"),
            "attention"
        );
        assert_eq!(
            StageRules::builtin().class_of("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN"),
            "gemm"
        );
        assert_eq!(
            StageRules::builtin().class_of("void cutlass::Kernel<cutlass_80_tensorop_s1688gemm>"),
            "gemm"
        );
        assert_eq!(StageRules::builtin().class_of("ampere_sgemm_128x64_nn"), "gemm");
        assert_eq!(
            StageRules::builtin().class_of(
                "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>"
            ),
            "norm"
        );
        assert_eq!(
            StageRules::builtin().class_of("void at::native::unrolled_elementwise_kernel<...>"),
            "elementwise"
        );
        assert_eq!(
            StageRules::builtin().class_of("void at::native::vectorized_elementwise_kernel<4, ...>"),
            "elementwise"
        );
        assert_eq!(StageRules::builtin().class_of("cask_cudnn::computeOffsetsKernel"), "other");
        assert_eq!(StageRules::builtin().class_of(""), "other");
    }

    /// Two CPU steps [0,100) and [100,200); launches at 50, 150, 99.5, 300.
    fn step_trace() -> Trace {
        let mut tagged = kernel("k_tagged", 7, 500.0, 1.0);
        tagged.step = Some("ProfilerStep#1".into());
        Trace {
            events: vec![
                ev(Category::UserAnnotation, "ProfilerStep#1", 1, 0.0, 100.0),
                ev(Category::UserAnnotation, "ProfilerStep#2", 1, 100.0, 100.0),
                ev(
                    Category::GpuUserAnnotation,
                    "ProfilerStep#1",
                    7,
                    100.0,
                    50.0,
                ), // GPU [100,150)
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 50.0, 1.0),
                    1,
                ),
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 150.0, 1.0),
                    2,
                ),
                with_corr(ev(Category::CudaDriver, "cuLaunchKernel", 1, 99.5, 0.25), 3),
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 300.0, 1.0),
                    4,
                ),
                // 7: launched in step 1, runs during step 2's CPU range
                with_corr(kernel("k1", 7, 120.0, 2.0), 1),
                // 8: launched in step 2, runs after every step
                with_corr(kernel("k2", 7, 210.0, 4.0), 2),
                // 9: launched (driver API) at the very end of step 1
                with_corr(kernel("k3", 7, 130.0, 8.0), 3),
                // 10: no launch event, inside the GPU range of ProfilerStep#1
                with_corr(kernel("k4", 7, 110.0, 16.0), 90),
                // 11: no launch event, outside GPU ranges, inside step 2's CPU range
                with_corr(kernel("k5", 7, 160.0, 32.0), 91),
                // 12: launched outside every step
                with_corr(kernel("k6", 7, 301.0, 64.0), 4),
                // 13: explicit gpuspan.step wins over time
                tagged,
                // 14: no correlation at all, no range contains it
                kernel("k7", 7, 1000.0, 128.0),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn step_assignment_by_correlation_gpu_range_and_arg() {
        let a = kernel_step_assignment(&step_trace());
        let got: Vec<(usize, Option<&str>)> = a.iter().map(|(i, s)| (*i, s.as_deref())).collect();
        let s1 = Some("ProfilerStep#1");
        let s2 = Some("ProfilerStep#2");
        assert_eq!(
            got,
            [
                (7, s1),
                (8, s2),
                (9, s1),
                (10, s1),
                (11, s2),
                (12, None),
                (13, s1),
                (14, None)
            ]
        );
    }

    #[test]
    fn steps_table() {
        let s = compute(&step_trace(), "steps");
        let got: Vec<_> = s
            .steps
            .iter()
            .map(|x| {
                (
                    x.name.as_str(),
                    x.start_us,
                    x.dur_us,
                    x.kernel_count,
                    x.kernel_total_us,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ProfilerStep#1", 0.0, 100.0, 4, 2.0 + 8.0 + 16.0 + 1.0),
                ("ProfilerStep#2", 100.0, 100.0, 2, 4.0 + 32.0)
            ]
        );
    }

    #[test]
    fn dit_steps_nested_in_profiler_step_and_steps_from_args() {
        let mut tagged_a = kernel("x", 7, 1000.0, 2.0);
        tagged_a.step = Some("dit.step 9/10".into());
        let mut tagged_b = kernel("x", 7, 1010.0, 3.0);
        tagged_b.step = Some("dit.step 9/10".into());
        let trace = Trace {
            events: vec![
                ev(Category::UserAnnotation, "ProfilerStep#0", 1, 0.0, 100.0),
                ev(Category::UserAnnotation, "dit.step 0/10", 1, 10.0, 40.0),
                ev(Category::UserAnnotation, "dit.step 1/10", 1, 50.0, 40.0),
                ev(Category::UserAnnotation, "not a step", 1, 0.0, 100.0),
                ev(Category::CpuOp, "dit.step 2/10", 1, 0.0, 100.0), // wrong cat for dit.step
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 5.0, 1.0),
                    1,
                ),
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 20.0, 1.0),
                    2,
                ),
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 60.0, 1.0),
                    3,
                ),
                with_corr(kernel("a", 7, 6.0, 1.0), 1),
                with_corr(kernel("b", 7, 21.0, 1.0), 2),
                with_corr(kernel("c", 7, 61.0, 1.0), 3),
                tagged_a,
                tagged_b,
            ],
            ..Default::default()
        };
        let a = kernel_step_assignment(&trace);
        let got: Vec<_> = a
            .iter()
            .map(|(i, s)| (*i, s.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            [
                (8, "ProfilerStep#0".to_string()),
                (9, "dit.step 0/10".to_string()),
                (10, "dit.step 1/10".to_string()),
                (11, "dit.step 9/10".to_string()),
                (12, "dit.step 9/10".to_string()),
            ]
        );
        let s = compute(&trace, "d");
        let got: Vec<_> = s
            .steps
            .iter()
            .map(|x| (x.name.as_str(), x.start_us, x.dur_us, x.kernel_count))
            .collect();
        assert_eq!(
            got,
            [
                ("ProfilerStep#0", 0.0, 100.0, 1),
                ("dit.step 0/10", 10.0, 40.0, 1),
                ("dit.step 1/10", 50.0, 40.0, 1),
                ("dit.step 9/10", 1000.0, 13.0, 2),
            ]
        );
    }

    #[test]
    fn old_schema_operator_profiler_step() {
        let trace = Trace {
            events: vec![
                ev(Category::CpuOp, "ProfilerStep#5", 1, 0.0, 10.0),
                with_corr(
                    ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 1.0, 1.0),
                    1,
                ),
                with_corr(kernel("k", 7, 50.0, 1.0), 1),
            ],
            ..Default::default()
        };
        assert_eq!(
            kernel_step_assignment(&trace),
            [(2, Some("ProfilerStep#5".to_string()))]
        );
    }

    #[test]
    fn json_keys_in_design_order() {
        let s = compute(&step_trace(), "capture.json.gz");
        let j = serde_json::to_string(&s).unwrap();
        let keys = [
            "\"source\"",
            "\"kernel_count\"",
            "\"kernel_total_us\"",
            "\"gpu_span_us\"",
            "\"gpu_busy_us\"",
            "\"gpu_idle_us\"",
            "\"kernels\"",
            "\"stages\"",
            "\"steps\"",
        ];
        let pos: Vec<usize> = keys.iter().map(|k| j.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        for k in [
            "name", "stage", "count", "total_us", "mean_us", "min_us", "max_us",
        ] {
            assert!(v["kernels"][0].get(k).is_some(), "{k}");
        }
        for k in [
            "name",
            "start_us",
            "dur_us",
            "kernel_count",
            "kernel_total_us",
        ] {
            assert!(v["steps"][0].get(k).is_some(), "{k}");
        }
        assert_eq!(serde_json::from_str::<Stats>(&j).unwrap(), s);
    }
}

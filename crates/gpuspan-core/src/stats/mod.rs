//! Trace statistics: what `gpuspan stats` prints (DESIGN.md "Command line", `stats --json`),
//! the kernel / stage / step breakdown, GPU busy / idle time, and the analyses users of
//! HolisticTraceAnalysis (HTA) expect, in HTA's definitions.
//!
//! Pure: a [`Trace`] in, a [`Stats`] out; no I/O. Every analysis is O(n log n) in the number
//! of events and works on references into the trace (no copy of it). Definitions (all times
//! µs, `f64`, Kineto's unit, never rounded; HTA rounds every event to whole µs, start up and
//! end down, unless `HTA_DISABLE_NS_ROUNDING=1`, so compare with HTA run that way):
//! - *GPU activity* is every kernel, memcpy and memset event ([`crate::trace::Category::is_gpu_activity`]),
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
//! - Percentiles (`p50_us`, `p99_us`) are nearest-rank ([`nearest_rank`]).
//! - Device of a GPU event: `args.device`, else its `pid`; stream: `args.stream`, else its
//!   `tid`.
//!
//! Comparing with HTA: HTA's `TraceAnalysis` first trims traces holding two or more
//! `ProfilerStep` ranges (`Trace._filter_irrelevant_gpu_kernels`): it drops every CPU event
//! starting at or after the start of the last `ProfilerStep`, and every GPU event whose
//! correlation id is not among the CPU events left (so GPU work without a launch event
//! goes too). gpuspan analyses the whole trace. On a trace trimmed that way, and with
//! `HTA_DISABLE_NS_ROUNDING=1`, the temporal breakdown, the idle breakdown, the kernel-type
//! exclusive times and the launch statistics (restricted to HTA's launch call names) agree
//! with HTA 0.5.0 exactly on the fixture `a100-hta-control.json.gz`; the module
//! documentation of each analysis lists its remaining differences.
//!
//! Sub-modules, one analysis each: `breakdown` ([`KernelTypeStats`], HTA
//! `get_gpu_kernel_breakdown`), `temporal` ([`DeviceTemporal`], HTA
//! `get_temporal_breakdown`), `idle` ([`StreamIdle`], HTA `get_idle_time_breakdown`),
//! `launch` ([`LaunchStats`], HTA `get_cuda_kernel_launch_stats`), `memcpy`
//! ([`MemcpyStats`]), `percentiles`, `intervals` (interval unions), `steps` (step
//! attribution).

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use crate::classify::StageRules;
use crate::trace::{Trace, TraceEvent};

mod breakdown;
mod idle;
mod intervals;
mod launch;
mod memcpy;
mod percentiles;
pub mod ranks;
mod steps;
mod temporal;

pub use breakdown::{kernel_type, KernelType, KernelTypeStats};
pub use idle::{StreamIdle, CONSECUTIVE_KERNEL_DELAY_US};
pub use launch::{is_launch_call, LaunchStats, ShortKernels};
pub use memcpy::{memory_kind, MemcpyStats};
pub use percentiles::{nearest_rank, DurationSummary};
pub use steps::kernel_step_assignment;
pub use temporal::DeviceTemporal;

pub(crate) use steps::StepRange;

/// The `gpuspan stats --json` object. Field names and order are the interface
/// (DESIGN.md); all times in µs. The keys after `steps` were added by issue 4 and default
/// to empty when reading older JSON.
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
    /// GPU activity per HTA kernel type (always the three types), by `total_us` descending.
    #[serde(default)]
    pub kernel_types: Vec<KernelTypeStats>,
    /// HTA temporal breakdown, one row per device, ascending by device.
    #[serde(default)]
    pub temporal: Vec<DeviceTemporal>,
    /// HTA idle time breakdown, one row per (device, stream), ascending.
    #[serde(default)]
    pub idle_breakdown: Vec<StreamIdle>,
    /// HTA kernel launch statistics.
    #[serde(default)]
    pub launch: LaunchStats,
    /// Memcpy / memset per kind, by `total_us` descending.
    #[serde(default)]
    pub memcpy: Vec<MemcpyStats>,
    /// When the steps were detected from the kernel stream (`--steps auto`) rather than
    /// read from the trace's ranges: what was found ([`crate::step_detect::Detection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_detection: Option<crate::step_detect::Detection>,
    /// A directory of the per-rank captures of a distributed job: the ranks side by side
    /// ([`ranks::RankStats`], issue 16). Absent for one process's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<ranks::RankStats>,
}

/// Statistics of all kernels sharing one name (HTA `get_gpu_kernel_breakdown`'s per-name
/// `sum` / `max` / `min` / `mean`, without its grouping of small kernels into "others").
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
    /// Nearest-rank median duration, µs.
    #[serde(default)]
    pub p50_us: f64,
    /// Nearest-rank 99th-percentile duration, µs.
    #[serde(default)]
    pub p99_us: f64,
    /// `total_us / kernel_total_us` (0..1; 0 when there is no kernel time).
    #[serde(default)]
    pub share: f64,
}

/// Kernel time of one stage; the duration statistics are over its individual kernels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Stage name (`attention.spatial`, `ffn`, `gemm`, `other`, ...).
    pub stage: String,
    /// Number of kernels attributed to it.
    pub count: usize,
    /// Sum of their durations, µs.
    pub total_us: f64,
    /// `total_us / count`, µs.
    #[serde(default)]
    pub mean_us: f64,
    /// Shortest kernel, µs.
    #[serde(default)]
    pub min_us: f64,
    /// Longest kernel, µs.
    #[serde(default)]
    pub max_us: f64,
    /// Nearest-rank median kernel duration, µs.
    #[serde(default)]
    pub p50_us: f64,
    /// Nearest-rank 99th-percentile kernel duration, µs.
    #[serde(default)]
    pub p99_us: f64,
    /// `total_us / kernel_total_us` (0..1; 0 when there is no kernel time).
    #[serde(default)]
    pub share: f64,
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
    /// The step's kernel time per stage, by `total_us` descending (ties by stage name);
    /// adds up to `kernel_count` / `kernel_total_us`.
    #[serde(default)]
    pub stages: Vec<StepStageStats>,
}

/// Kernel time of one stage within one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStageStats {
    /// Stage name.
    pub stage: String,
    /// Kernels of the stage in the step.
    pub count: usize,
    /// Sum of their durations, µs.
    pub total_us: f64,
}

/// A GPU activity event (kernel, memcpy, memset) with its HTA kernel type.
pub(crate) struct GpuEvent<'t> {
    pub(crate) event: &'t TraceEvent,
    /// Index into `trace.events`.
    pub(crate) index: usize,
    pub(crate) kind: KernelType,
}

/// Device of a GPU event: `args.device`, else `pid` (Kineto GPU rows: pid = device).
pub(crate) fn device_of(e: &TraceEvent) -> i64 {
    e.device.unwrap_or(e.pid)
}

/// Stream of a GPU event: `args.stream`, else `tid` (Kineto GPU rows: tid = stream).
pub(crate) fn stream_of(e: &TraceEvent) -> i64 {
    e.stream.unwrap_or(e.tid)
}

/// Every kernel event with its step and stage: the attribution `compute` and
/// `crate::diff` share.
pub(crate) struct Attribution {
    /// Step ranges (indices are what [`KernelRow::step`] holds; not sorted).
    pub(crate) ranges: Vec<StepRange>,
    /// Distinct stage names (indices are what [`KernelRow::stage`] holds).
    pub(crate) stages: Vec<String>,
    /// One row per kernel event, in event order.
    pub(crate) kernels: Vec<KernelRow>,
}

/// One kernel event's attribution.
pub(crate) struct KernelRow {
    /// Index into `trace.events`.
    pub(crate) event: usize,
    /// Index into [`Attribution::ranges`].
    pub(crate) step: Option<usize>,
    /// Index into [`Attribution::stages`].
    pub(crate) stage: usize,
}

/// Attributes every kernel to its step ([`kernel_step_assignment`]) and stage (its
/// `gpuspan.stage` arg, else the built-in name rules, evaluated once per distinct name).
pub(crate) fn attribute(trace: &Trace) -> Attribution {
    let rules = StageRules::builtin();
    let mut stage_ids: HashMap<String, usize> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut intern = |s: &str, stages: &mut Vec<String>| -> usize {
        if let Some(&i) = stage_ids.get(s) {
            return i;
        }
        stages.push(s.to_string());
        stage_ids.insert(s.to_string(), stages.len() - 1);
        stages.len() - 1
    };
    let mut class_cache: HashMap<&str, usize> = HashMap::new();
    let (ranges, assignment) = steps::assign(trace);
    let mut kernels = Vec::with_capacity(assignment.len());
    for (i, step) in assignment {
        let e = &trace.events[i];
        let stage = match e.stage.as_deref() {
            // NCCL / RCCL kernels are communication whatever scope they ran in
            // (crate::classify), also in captures written before that rule.
            _ if crate::classify::is_collective_kernel(&e.name) => intern(crate::classify::COMMUNICATION, &mut stages),
            Some(s) if !s.is_empty() => intern(s, &mut stages),
            _ => match class_cache.get(e.name.as_str()) {
                Some(&id) => id,
                None => {
                    let id = intern(rules.class_of(&e.name), &mut stages);
                    class_cache.insert(e.name.as_str(), id);
                    id
                }
            },
        };
        kernels.push(KernelRow { event: i, step, stage });
    }
    Attribution { ranges, stages, kernels }
}

/// Computes the statistics of `trace`; `source` is copied into [`Stats::source`].
pub fn compute(trace: &Trace, source: &str) -> Stats {
    let att = attribute(trace);

    // Kernels and stages.
    struct NameAcc {
        durs: Vec<f64>,
        total: f64,
        by_stage: Vec<(usize, f64)>,
    }
    let mut by_name: HashMap<&str, NameAcc> = HashMap::new();
    let mut by_stage: Vec<(Vec<f64>, f64)> = vec![(Vec::new(), 0.0); att.stages.len()];
    /// Kernels, kernel time, and (count, time) per stage id, of one step.
    type StepAcc = (usize, f64, HashMap<usize, (usize, f64)>);
    let mut per_step: Vec<StepAcc> = (0..att.ranges.len()).map(|_| (0, 0.0, HashMap::new())).collect();
    let mut kernel_count = 0usize;
    let mut kernel_total_us = 0.0f64;
    for k in &att.kernels {
        let e = &trace.events[k.event];
        kernel_count += 1;
        kernel_total_us += e.dur_us;
        let acc = by_name.entry(e.name.as_str()).or_insert(NameAcc { durs: Vec::new(), total: 0.0, by_stage: Vec::new() });
        acc.durs.push(e.dur_us);
        acc.total += e.dur_us;
        match acc.by_stage.iter_mut().find(|(s, _)| *s == k.stage) {
            Some((_, t)) => *t += e.dur_us,
            None => acc.by_stage.push((k.stage, e.dur_us)),
        }
        by_stage[k.stage].0.push(e.dur_us);
        by_stage[k.stage].1 += e.dur_us;
        if let Some(s) = k.step {
            let st = &mut per_step[s];
            st.0 += 1;
            st.1 += e.dur_us;
            let x = st.2.entry(k.stage).or_insert((0, 0.0));
            x.0 += 1;
            x.1 += e.dur_us;
        }
    }
    let share = |t: f64| if kernel_total_us > 0.0 { t / kernel_total_us } else { 0.0 };
    let mut kernels: Vec<KernelStats> = by_name
        .into_iter()
        .map(|(name, mut a)| {
            let stage = a
                .by_stage
                .iter()
                .max_by(|x, y| x.1.total_cmp(&y.1).then_with(|| att.stages[y.0].cmp(&att.stages[x.0])))
                .map(|(s, _)| att.stages[*s].clone())
                .unwrap_or_default();
            a.durs.sort_by(f64::total_cmp);
            KernelStats {
                name: name.to_string(),
                stage,
                count: a.durs.len(),
                total_us: a.total,
                mean_us: a.total / a.durs.len() as f64,
                min_us: a.durs[0],
                max_us: a.durs[a.durs.len() - 1],
                p50_us: nearest_rank(&a.durs, 50),
                p99_us: nearest_rank(&a.durs, 99),
                share: share(a.total),
            }
        })
        .collect();
    kernels.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then_with(|| a.name.cmp(&b.name)));
    let mut stages: Vec<StageStats> = by_stage
        .into_iter()
        .enumerate()
        .filter(|(_, (d, _))| !d.is_empty())
        .map(|(i, (mut durs, total_us))| {
            durs.sort_by(f64::total_cmp);
            StageStats {
                stage: att.stages[i].clone(),
                count: durs.len(),
                total_us,
                mean_us: total_us / durs.len() as f64,
                min_us: durs[0],
                max_us: durs[durs.len() - 1],
                p50_us: nearest_rank(&durs, 50),
                p99_us: nearest_rank(&durs, 99),
                share: share(total_us),
            }
        })
        .collect();
    stages.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then_with(|| a.stage.cmp(&b.stage)));

    // Steps.
    let mut steps: Vec<StepStats> = att
        .ranges
        .iter()
        .zip(per_step)
        .map(|(r, (kernel_count, kernel_total_us, st))| {
            let mut stages: Vec<StepStageStats> = st
                .into_iter()
                .map(|(s, (count, total_us))| StepStageStats { stage: att.stages[s].clone(), count, total_us })
                .collect();
            stages.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then_with(|| a.stage.cmp(&b.stage)));
            StepStats { name: r.name.clone(), start_us: r.start, dur_us: r.dur, kernel_count, kernel_total_us, stages }
        })
        .collect();
    steps.sort_by(|a, b| a.start_us.total_cmp(&b.start_us).then_with(|| a.name.cmp(&b.name)));

    // GPU activity: span / busy union, and the HTA analyses.
    let gpu: Vec<GpuEvent<'_>> = trace
        .events
        .iter()
        .enumerate()
        .filter_map(|(index, event)| kernel_type(event).map(|kind| GpuEvent { event, index, kind }))
        .collect();
    let mut all: Vec<(f64, f64)> = gpu.iter().map(|g| (g.event.ts_us, g.event.ts_us + g.event.dur_us.max(0.0))).collect();
    let (gpu_span_us, gpu_busy_us) = intervals::span_and_busy(&mut all);
    drop(all);
    let timelines = intervals::device_timelines(&gpu);
    let launches = launch::LaunchIndex::new(trace);

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
        kernel_types: breakdown::kernel_types(&gpu, &timelines),
        temporal: temporal::temporal(&timelines),
        idle_breakdown: idle::idle_breakdown(trace, &gpu, &launches),
        launch: launch::launch_stats(trace, &gpu, &launches),
        memcpy: memcpy::memcpy_stats(&gpu),
        step_detection: None,
        ranks: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Category;

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
        assert_eq!(StageRules::builtin().class_of("cask_cudnn::computeOffsetsKernel"), "conv");
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

    /// Two devices, three streams; launches through the runtime, the driver, `ExC`, an async
    /// memcpy / memset and a graph launch; one kernel without a launch event. Expected values
    /// are worked out by hand in the tests below.
    fn hta_trace() -> Trace {
        fn gpu(cat: Category, name: &str, device: i64, stream: i64, ts: f64, dur: f64, corr: i64) -> TraceEvent {
            TraceEvent {
                cat: Some(cat),
                name: name.into(),
                pid: device,
                tid: stream,
                ts_us: ts,
                dur_us: dur,
                device: Some(device),
                stream: Some(stream),
                correlation: Some(corr),
                ..Default::default()
            }
        }
        fn api(name: &str, ts: f64, dur: f64, corr: i64) -> TraceEvent {
            let cat = if name.starts_with("cu") && !name.starts_with("cuda") { Category::CudaDriver } else { Category::CudaRuntime };
            with_corr(ev(cat, name, 1, ts, dur), corr)
        }
        let mut memcpy = gpu(Category::GpuMemcpy, "Memcpy HtoD (Pinned -> Device)", 0, 7, 110.0, 10.0, 5);
        memcpy.bytes = Some(1_000_000);
        let mut memset = gpu(Category::GpuMemset, "Memset (Device)", 0, 8, 200.0, 2.0, 7);
        memset.bytes = Some(4_000);
        Trace {
            events: vec![
                api("cudaLaunchKernel", -5.0, 3.0, 1),
                api("cudaLaunchKernel", 1.0, 4.0, 2),
                api("cuLaunchKernel", 15.0, 1.0, 3),
                api("cudaLaunchKernelExC", 10.0, 2.0, 4),
                api("cudaMemcpyAsync", 105.0, 20.0, 5),
                api("cudaLaunchKernel", 0.0, 1.0, 6),
                api("cudaMemsetAsync", 199.0, 0.5, 7),
                api("cudaLaunchKernel", -1.0, 0.5, 8),
                api("cudaGraphLaunch", 55.0, 2.0, 9),
                // device 0, stream 7
                gpu(Category::Kernel, "gemm_a", 0, 7, 0.0, 10.0, 1),
                gpu(Category::Kernel, "gemm_a", 0, 7, 12.0, 2.0, 2),
                gpu(Category::Kernel, "relu", 0, 7, 20.0, 5.0, 3),
                gpu(Category::Kernel, "relu", 0, 7, 100.0, 1.0, 4),
                memcpy,
                gpu(Category::Kernel, "k_nolaunch", 0, 7, 125.0, 5.0, 99),
                // device 0, stream 8
                gpu(Category::Kernel, "ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", 0, 8, 5.0, 20.0, 6),
                memset,
                // device 1, stream 7
                gpu(Category::Kernel, "gemm_b", 1, 7, 0.0, 50.0, 8),
                gpu(Category::Kernel, "graph_k", 1, 7, 60.0, 10.0, 9),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn idle_breakdown_host_kernel_and_other_wait() {
        let s = compute(&hta_trace(), "hta");
        let got: Vec<_> = s
            .idle_breakdown
            .iter()
            .map(|r| (r.device, r.stream, r.idle_us, r.host_wait_us, r.kernel_wait_us, r.other_us))
            .collect();
        assert_eq!(
            got,
            [
                // gaps 2 (kernel wait: launched before the previous end, < 30 µs), 6 (host:
                // launched at 15 > 14), 75 (other), 9 (host: cudaMemcpyAsync at 105 > 101),
                // 5 (no launch event: kernel wait)
                (0, 7, 97.0, 15.0, 7.0, 75.0),
                (0, 8, 175.0, 175.0, 0.0, 0.0),
                // graph launch at 55 > 50: host wait (any API call counts, as in HTA)
                (1, 7, 10.0, 10.0, 0.0, 0.0),
            ]
        );
        assert_eq!(CONSECUTIVE_KERNEL_DELAY_US, 30.0);
    }

    #[test]
    fn launch_delay_cpu_duration_and_short_kernels() {
        let l = compute(&hta_trace(), "hta").launch;
        // Joined: every GPU event except the one without a launch and the graph kernel.
        assert_eq!(l.kernels_with_launch, 8);
        let cpu = DurationSummary { count: 8, mean_us: 32.0 / 8.0, p50_us: 1.0, p99_us: 20.0, max_us: 20.0 };
        assert_eq!(l.cpu_launch_us, cpu);
        // HTA: GPU start − launch end, clipped at 0: 2, 7, 4, 88, 0 (memcpy starts before
        // its call returns), 4, 0.5, 0.5.
        let delay = DurationSummary { count: 8, mean_us: 106.0 / 8.0, p50_us: 2.0, p99_us: 88.0, max_us: 88.0 };
        assert_eq!(l.launch_delay_us, delay);
        // GPU start − launch start: 5, 11, 5, 90, 5, 5, 1, 1.
        let start = DurationSummary { count: 8, mean_us: 123.0 / 8.0, p50_us: 5.0, p99_us: 90.0, max_us: 90.0 };
        assert_eq!(l.start_delay_us, start);
        // 2 < 4, 1 < 2, memcpy 10 < 20.
        assert_eq!(l.short_kernels, ShortKernels { count: 3, total_us: 13.0 });
    }

    #[test]
    fn temporal_breakdown_per_device() {
        let s = compute(&hta_trace(), "hta");
        let t: Vec<_> = s
            .temporal
            .iter()
            .map(|r| (r.device, r.span_us, r.idle_us, r.compute_us, r.non_compute_us))
            .collect();
        // Device 0: busy [0,25) [100,101) [110,120) [125,130) [200,202) = 43 of 202;
        // compute [0,10) [12,14) [20,25) [100,101) [125,130) = 23; the rest is NCCL-only
        // (8), memcpy (10) and memset (2).
        assert_eq!(t, [(0, 202.0, 159.0, 23.0, 20.0), (1, 70.0, 10.0, 60.0, 0.0)]);
        let d0 = &s.temporal[0];
        assert_eq!(d0.idle_pct, 100.0 * 159.0 / 202.0);
        assert_eq!(d0.compute_pct, 100.0 * 23.0 / 202.0);
        assert_eq!(d0.non_compute_pct, 100.0 * 20.0 / 202.0);
        assert_eq!(s.temporal[1].compute_pct, 100.0 * 60.0 / 70.0);
    }

    #[test]
    fn kernel_types_as_hta() {
        let s = compute(&hta_trace(), "hta");
        let got: Vec<_> = s
            .kernel_types
            .iter()
            .map(|r| (r.kernel_type.as_str(), r.count, r.total_us, r.share, r.exclusive_us))
            .collect();
        assert_eq!(
            got,
            [
                ("COMPUTATION", 7, 83.0, 83.0 / 115.0, 71.0),
                ("COMMUNICATION", 1, 20.0, 20.0 / 115.0, 8.0),
                ("MEMORY", 2, 12.0, 12.0 / 115.0, 12.0),
            ]
        );
        let v = serde_json::to_value(&s.kernel_types[1]).unwrap();
        assert_eq!(v["type"], "COMMUNICATION");
    }

    #[test]
    fn memcpy_bandwidth_per_kind() {
        let m = compute(&hta_trace(), "hta").memcpy;
        let got: Vec<_> = m.iter().map(|r| (r.kind.as_str(), r.count, r.bytes, r.total_us, r.gb_per_s)).collect();
        // 10⁶ bytes in 10 µs = 10⁵ bytes/µs = 100 GB/s; 4000 bytes in 2 µs = 2 GB/s.
        assert_eq!(got, [("Memcpy HtoD", 1, 1_000_000, 10.0, 100.0), ("Memset", 1, 4_000, 2.0, 2.0)]);
    }

    #[test]
    fn percentiles_shares_and_step_stages() {
        let tagged = |name: &str, stage: &str, ts: f64, dur: f64, corr: i64| {
            let mut k = with_corr(kernel(name, 7, ts, dur), corr);
            k.stage = Some(stage.into());
            k
        };
        let mut events = vec![
            ev(Category::UserAnnotation, "dit.step 0/2", 1, 0.0, 100.0),
            ev(Category::UserAnnotation, "dit.step 1/2", 1, 100.0, 100.0),
        ];
        // Step 0: ffn 1..=10 µs (one kernel each), attention 100 µs; step 1: ffn 20 µs.
        for i in 1..=10 {
            events.push(with_corr(ev(Category::CudaRuntime, "cudaLaunchKernel", 1, i as f64, 0.5), i));
            events.push(tagged("ffn_gemm", "ffn", 1000.0 + 20.0 * i as f64, i as f64, i));
        }
        events.push(with_corr(ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 50.0, 0.5), 50));
        events.push(tagged("flash_fwd", "attention.spatial", 2000.0, 100.0, 50));
        events.push(with_corr(ev(Category::CudaRuntime, "cudaLaunchKernel", 1, 150.0, 0.5), 51));
        events.push(tagged("ffn_gemm", "ffn", 3000.0, 20.0, 51));
        let s = compute(&Trace { events, ..Default::default() }, "p");
        assert_eq!(s.kernel_total_us, 55.0 + 100.0 + 20.0);
        let g = s.kernels.iter().find(|k| k.name == "ffn_gemm").unwrap();
        // 11 samples 1..=10, 20: p50 = rank 6 = 6, p99 = rank 11 = 20.
        assert_eq!((g.count, g.total_us, g.p50_us, g.p99_us, g.share), (11, 75.0, 6.0, 20.0, 75.0 / 175.0));
        let f = s.stages.iter().find(|x| x.stage == "ffn").unwrap();
        assert_eq!(
            (f.count, f.mean_us, f.min_us, f.max_us, f.p50_us, f.p99_us, f.share),
            (11, 75.0 / 11.0, 1.0, 20.0, 6.0, 20.0, 75.0 / 175.0)
        );
        let a = s.stages.iter().find(|x| x.stage == "attention.spatial").unwrap();
        assert_eq!((a.p50_us, a.p99_us, a.min_us, a.max_us), (100.0, 100.0, 100.0, 100.0));
        let st: Vec<Vec<(&str, usize, f64)>> = s
            .steps
            .iter()
            .map(|x| x.stages.iter().map(|y| (y.stage.as_str(), y.count, y.total_us)).collect())
            .collect();
        assert_eq!(st, [vec![("attention.spatial", 1, 100.0), ("ffn", 10, 55.0)], vec![("ffn", 1, 20.0)]]);
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
            "\"kernel_types\"",
            "\"temporal\"",
            "\"idle_breakdown\"",
            "\"launch\"",
            "\"memcpy\"",
        ];
        let pos: Vec<usize> = keys.iter().map(|k| j.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        for k in [
            "name", "stage", "count", "total_us", "mean_us", "min_us", "max_us", "p50_us", "p99_us", "share",
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
        for k in ["stage", "count", "total_us", "mean_us", "min_us", "max_us", "p50_us", "p99_us", "share"] {
            assert!(v["stages"][0].get(k).is_some(), "{k}");
        }
        assert!(v["steps"][0]["stages"][0].get("stage").is_some());
        assert_eq!(serde_json::from_str::<Stats>(&j).unwrap(), s);
        // Every new key, on a trace that has all of them.
        let h = serde_json::to_value(compute(&hta_trace(), "hta")).unwrap();
        for k in ["type", "count", "total_us", "share"] {
            assert!(h["kernel_types"][0].get(k).is_some(), "{k}");
        }
        for k in ["device", "span_us", "idle_us", "compute_us", "non_compute_us", "idle_pct", "compute_pct", "non_compute_pct"] {
            assert!(h["temporal"][0].get(k).is_some(), "{k}");
        }
        for k in ["device", "stream", "idle_us", "host_wait_us", "kernel_wait_us", "other_us"] {
            assert!(h["idle_breakdown"][0].get(k).is_some(), "{k}");
        }
        assert!(h["launch"]["kernels_with_launch"].is_u64());
        for o in ["cpu_launch_us", "launch_delay_us"] {
            for k in ["count", "mean_us", "p50_us", "p99_us", "max_us"] {
                assert!(h["launch"][o].get(k).is_some(), "{o}.{k}");
            }
        }
        assert!(h["launch"]["short_kernels"]["count"].is_u64() && h["launch"]["short_kernels"]["total_us"].is_f64());
        for k in ["kind", "count", "bytes", "total_us", "gb_per_s"] {
            assert!(h["memcpy"][0].get(k).is_some(), "{k}");
        }
        // JSON written before issue 4 (no new keys) still reads.
        let old = r#"{"source":"s","kernel_count":0,"kernel_total_us":0.0,"gpu_span_us":0.0,"gpu_busy_us":0.0,
            "gpu_idle_us":0.0,"kernels":[{"name":"k","stage":"other","count":1,"total_us":1.0,"mean_us":1.0,
            "min_us":1.0,"max_us":1.0}],"stages":[{"stage":"other","count":1,"total_us":1.0}],"steps":[]}"#;
        assert_eq!(serde_json::from_str::<Stats>(old).unwrap().kernels[0].p50_us, 0.0);
    }
}

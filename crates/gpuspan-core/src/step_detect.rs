//! Step detection from the kernel stream (issue 12, item 3): for captures and Kineto traces
//! with no usable step ranges (a worker that announces nothing), find the repeating
//! denoiser forward passes (or training iterations) in the kernel sequence and call each
//! repetition a step.
//!
//! Method, on the device / stream row with the most kernels (the compute stream):
//! 1. Each kernel becomes a symbol: its name. (Grid / block are left out: data-dependent
//!    sizes, such as embedding lookups, change them between otherwise identical steps.)
//! 2. Candidate periods `P` are the distances between consecutive occurrences of the
//!    symbols that occur at most [`MAX_ANCHOR_COUNT`] times (a kernel that runs once per
//!    pass marks the pass length); the [`MAX_CANDIDATES`] most frequent distances are tried.
//! 3. For each `P`, the longest run of positions `i` with `S[i] = S[i + P]` is a region of
//!    `reps` identical blocks of `P` kernels; the period covering most kernels wins (ties:
//!    the shorter period).
//! 4. Identical blocks are also what a model's *layers* look like inside one forward pass,
//!    so the blocks count as steps only with evidence that each is a whole pass or
//!    iteration: either the block itself repeats inside (a forward pass holds its layers:
//!    an inner period covering at least [`MIN_INNER_COVERAGE`] of the block), or the GPU
//!    idles at the block boundaries ([`BIG_GAP_FACTOR`] × the median idle gap inside a
//!    block, at least [`MIN_BIG_GAP_US`]: the scheduler's or optimizer's host work between
//!    steps). Without evidence the whole trace is one step.
//! 5. Guidance passes: when only every k-th block boundary is such an idle gap (classifier-
//!    free guidance as k sequential passes with the scheduler's host work after them), k
//!    blocks make one step.
//!
//! Kernels of other rows belong to the step whose time range (first kernel start to last
//! kernel end of its blocks on the compute row) contains their start. What runs on the
//! compute row before the first step is reported as `text_encode`, after the last as
//! `vae.decode` (DiT pipelines: prompt encoding, then denoising, then decoding).
//!
//! Used by `gpuspan stats | waterfall | diff --steps auto` (`gpuspan-cli`), which apply the
//! result with [`apply`] so every analysis sees `dit.step i/n` steps.

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use crate::trace::{Category, Trace};

/// Symbols occurring more often than this are not used as period anchors (they repeat per
/// layer, not per pass).
pub const MAX_ANCHOR_COUNT: usize = 512;
/// Candidate periods tried, most frequent first.
pub const MAX_CANDIDATES: usize = 256;
/// Inner coverage (fraction of a block in an inner repeating region of period ≥ 2) that
/// makes a block a forward pass rather than a layer.
pub const MIN_INNER_COVERAGE: f64 = 0.5;
/// A block boundary is a step boundary by idle time when the GPU idles there at least this
/// many times the median idle gap inside a block…
pub const BIG_GAP_FACTOR: f64 = 10.0;
/// …and at least this long, µs.
pub const MIN_BIG_GAP_US: f64 = 50.0;

/// The region before the first step, as reported.
pub const BEFORE_STEPS: &str = "text_encode";
/// The region after the last step, as reported.
pub const AFTER_STEPS: &str = "vae.decode";

/// Why the blocks were taken for steps (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Each block repeats inside (a forward pass over its layers).
    InnerRepetition,
    /// The GPU idles at block boundaries.
    IdleGaps,
    /// No repeating blocks with evidence: the whole trace is one step.
    None,
    /// The trace's calls of a diffusers scheduler's `step` (torch.profiler's
    /// `python_function` events) end the steps ([`hints`]).
    SchedulerSteps,
    /// Each `## Call CompiledFxGraph … ##` range of torch.compile is one step ([`hints`]).
    CompiledGraphCalls,
}

/// One detected step: a time range and its kernels on the compute row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectedStep {
    /// `dit.step i/n`.
    pub name: String,
    /// First kernel start on the compute row, µs (trace time).
    pub start_us: f64,
    /// Last kernel end on the compute row, µs.
    pub end_us: f64,
    /// Kernels of the step on the compute row.
    pub kernels: usize,
}

/// A region of the compute row outside the steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// [`BEFORE_STEPS`] or [`AFTER_STEPS`].
    pub name: String,
    /// Kernels of the region on the compute row.
    pub kernels: usize,
    /// Start, µs.
    pub start_us: f64,
    /// End, µs.
    pub end_us: f64,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Steps in time order (one, covering every kernel, without evidence).
    pub steps: Vec<DetectedStep>,
    /// Kernels per repeated block on the compute row (0 when none was found).
    pub period_kernels: usize,
    /// Blocks (forward passes) per step.
    pub passes_per_step: usize,
    /// Why.
    pub evidence: Evidence,
    /// Fraction of the compute row's kernels inside the repeated blocks (0 … 1): how much
    /// of the run the steps explain.
    pub confidence: f64,
    /// The compute row, `(pid, tid)` (device, stream for GPU rows).
    pub row: (i64, i64),
    /// Before the first step and after the last, when not empty.
    pub regions: Vec<Region>,
}

/// The best periodic region of `s`: `(period, start, reps)` with `reps ≥ 2`, or `None`.
fn best_period(s: &[u32]) -> Option<(usize, usize, usize)> {
    let n = s.len();
    if n < 4 {
        return None;
    }
    let mut positions: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, &x) in s.iter().enumerate() {
        positions.entry(x).or_default().push(i);
    }
    let mut distances: HashMap<usize, usize> = HashMap::new();
    for p in positions.values().filter(|p| (2..=MAX_ANCHOR_COUNT).contains(&p.len())) {
        for w in p.windows(2) {
            *distances.entry(w[1] - w[0]).or_default() += 1;
        }
    }
    let mut cands: Vec<(usize, usize)> = distances.into_iter().filter(|&(d, _)| d >= 1 && d <= n / 2).collect();
    cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    cands.truncate(MAX_CANDIDATES);
    // (covered kernels, period, start, reps)
    let mut best: Option<(usize, usize, usize, usize)> = None;
    for (p, _) in cands {
        let (mut run, mut start, mut best_run, mut best_start) = (0usize, 0usize, 0usize, 0usize);
        for i in 0..n - p {
            if s[i] == s[i + p] {
                if run == 0 {
                    start = i;
                }
                run += 1;
                if run > best_run {
                    best_run = run;
                    best_start = start;
                }
            } else {
                run = 0;
            }
        }
        let reps = (best_run + p) / p;
        if reps < 2 {
            continue;
        }
        let covered = reps * p;
        // More kernels covered (by more than 1 %), or about as many (within 1 %) with a
        // shorter period (passes rather than pairs of passes).
        let better = match best {
            None => true,
            Some((c, _, _, _)) if covered * 100 > c * 101 => true,
            Some((c, bp, _, _)) => covered * 101 >= c * 100 && p < bp,
        };
        if better {
            best = Some((covered, p, best_start, reps));
        }
    }
    best.map(|(_, p, start, reps)| (p, start, reps))
}

/// One kernel as [`detect_kernels`] reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelAt<'a> {
    /// Its row, `(pid, tid)`: (device, stream).
    pub row: (i64, i64),
    /// Start, µs (any origin shared by all kernels).
    pub start_us: f64,
    /// End, µs.
    pub end_us: f64,
    /// Kernel name.
    pub name: &'a str,
}

/// Detects steps in `trace` (module docs): from its hints when it carries two or more
/// ([`hints`]), else from the kernel stream. A trace without kernels gives no step.
pub fn detect(trace: &Trace) -> Detection {
    if let Some(d) = hints::detect(trace) {
        return d;
    }
    detect_kernels(trace.kernels().map(|k| KernelAt { row: (k.pid, k.tid), start_us: k.ts_us, end_us: k.end_us(), name: k.name.as_str() }))
}

/// [`detect`] over kernels given one by one, in any order: what the agent runs over the
/// GPU records of a request that announced no step (`gpuspan_core::spans`).
pub fn detect_kernels<'a>(kernels: impl IntoIterator<Item = KernelAt<'a>>) -> Detection {
    let all: Vec<KernelAt<'a>> = kernels.into_iter().collect();
    let mut rows: HashMap<(i64, i64), usize> = HashMap::new();
    for k in &all {
        *rows.entry(k.row).or_default() += 1;
    }
    let row = rows.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(r, _)| *r).unwrap_or((0, 0));
    let mut ks: Vec<(f64, f64, &str)> = all.iter().filter(|k| k.row == row).map(|k| (k.start_us, k.end_us, k.name)).collect();
    ks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let s: Vec<u32> = ks
        .iter()
        .map(|k| {
            let next = ids.len() as u32;
            *ids.entry(k.2).or_insert(next)
        })
        .collect();
    let one_step = |evidence: Evidence| -> Detection {
        let steps = match (ks.first(), ks.last()) {
            (Some(f), Some(_)) => vec![DetectedStep {
                name: "dit.step 0/1".into(),
                start_us: f.0,
                end_us: ks.iter().map(|k| k.1).fold(f64::MIN, f64::max),
                kernels: ks.len(),
            }],
            _ => Vec::new(),
        };
        Detection { steps, period_kernels: 0, passes_per_step: 1, evidence, confidence: 0.0, row, regions: Vec::new() }
    };
    let Some((p, start, reps)) = best_period(&s) else { return one_step(Evidence::None) };
    let gap_before = |i: usize| -> f64 { if i == 0 { 0.0 } else { (ks[i].0 - ks[i - 1].1).max(0.0) } };
    // Evidence 1: a block holds an inner repeating region (layers).
    let inner = best_period(&s[start..start + p])
        .filter(|&(q, _, r)| q >= 2 && (q * r) as f64 >= MIN_INNER_COVERAGE * p as f64)
        .is_some();
    // Evidence 2: idle gaps at block boundaries.
    let mut inner_gaps: Vec<f64> = (start + 1..start + p).map(gap_before).collect();
    inner_gaps.sort_by(f64::total_cmp);
    let median = inner_gaps.get(inner_gaps.len() / 2).copied().unwrap_or(0.0);
    let threshold = (BIG_GAP_FACTOR * median).max(MIN_BIG_GAP_US);
    let big: Vec<bool> = (1..reps).map(|j| gap_before(start + j * p) >= threshold).collect();
    let n_big = big.iter().filter(|b| **b).count();
    let evidence = if n_big > 0 {
        Evidence::IdleGaps
    } else if inner {
        Evidence::InnerRepetition
    } else {
        return one_step(Evidence::None);
    };
    // Passes per step: the regular spacing of the big gaps, when not every boundary has one.
    let passes = if n_big > 0 && n_big < big.len() {
        let first = big.iter().position(|b| *b).unwrap_or(0) + 1;
        let regular = big.iter().enumerate().all(|(j, b)| *b == ((j + 1) % first == 0));
        if regular && reps % first == 0 { first } else { 1 }
    } else {
        1
    };
    let n_steps = reps / passes;
    let steps: Vec<DetectedStep> = (0..n_steps)
        .map(|i| {
            let (a, b) = (start + i * passes * p, start + (i + 1) * passes * p);
            DetectedStep {
                name: format!("dit.step {i}/{n_steps}"),
                start_us: ks[a].0,
                end_us: ks[a..b].iter().map(|k| k.1).fold(f64::MIN, f64::max),
                kernels: b - a,
            }
        })
        .collect();
    let end = start + n_steps * passes * p;
    let mut regions = Vec::new();
    if start > 0 {
        regions.push(Region {
            name: BEFORE_STEPS.into(),
            kernels: start,
            start_us: ks[0].0,
            end_us: ks[..start].iter().map(|k| k.1).fold(f64::MIN, f64::max),
        });
    }
    if end < ks.len() {
        regions.push(Region {
            name: AFTER_STEPS.into(),
            kernels: ks.len() - end,
            start_us: ks[end].0,
            end_us: ks[end..].iter().map(|k| k.1).fold(f64::MIN, f64::max),
        });
    }
    Detection {
        steps,
        period_kernels: p,
        passes_per_step: passes,
        evidence,
        confidence: (n_steps * passes * p) as f64 / ks.len() as f64,
        row,
        regions,
    }
}

/// Steps from what a trace says besides its kernels (issue 12, item 3): where the CPU side
/// marks step or pass boundaries, they are used as such, and the kernel-stream detection
/// only runs when there are none.
/// - A diffusers scheduler's `step` (a `python_function` or `cpu_op` event whose name has
///   `schedul` and ends in `: step`, `.step` or `::step`, as torch.profiler's Python tracer
///   names `…/schedulers/scheduling_….py(N): step`) ends a denoising step: step *i* holds the
///   kernels launched after call *i − 1* ended, up to the end of call *i*; the first step
///   starts the median step period before the first call ends (what comes before is the
///   prompt encoding). Classifier-free guidance passes fall in their step whatever their
///   count.
/// - Otherwise each `## Call CompiledFxGraph … ##` range (torch.compile's annotation of a
///   compiled graph's call) holds one step's kernels (a denoiser compiled whole, guidance as
///   a batch).
///
/// Kernels are placed by their launch's CPU time (the `cuda_runtime` / `cuda_driver` event
/// with the same correlation id), so the GPU's queueing does not move them; a step's GPU
/// range is its kernels' first start to last end. Fewer than two hints: `None`.
pub mod hints {
    use super::{Detection, DetectedStep, Evidence, Region, AFTER_STEPS, BEFORE_STEPS};
    use crate::trace::{Category, Trace};
    use foldhash::{HashMap, HashMapExt};

    /// Whether `name` is a scheduler's `step` call as torch.profiler names it.
    /// ASCII case-insensitive, allocating nothing: a lean read asks it of every host op
    /// ([`super::is_step_name`]).
    pub fn is_scheduler_step(name: &str) -> bool {
        let n = name.as_bytes();
        let ends = |suffix: &[u8]| n.len() >= suffix.len() && n[n.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
        (ends(b": step") || ends(b".step") || ends(b"::step")) && n.windows(7).any(|w| w.eq_ignore_ascii_case(b"schedul"))
    }

    /// Whether `name` is torch.compile's annotation of a compiled graph's call.
    pub fn is_compiled_graph_call(name: &str) -> bool {
        name.starts_with("## Call CompiledFxGraph")
    }

    /// CPU windows (µs) of the steps the hints mark, with the evidence; `None` under two.
    fn windows(trace: &Trace) -> Option<(Evidence, Vec<(f64, f64)>)> {
        let mut ends: Vec<f64> = trace
            .events
            .iter()
            .filter(|e| matches!(e.cat, Some(Category::PythonFunction | Category::CpuOp)) && is_scheduler_step(&e.name))
            .map(|e| e.end_us())
            .collect();
        if ends.len() >= 2 {
            ends.sort_by(f64::total_cmp);
            let mut gaps: Vec<f64> = ends.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.sort_by(f64::total_cmp);
            let period = gaps[gaps.len() / 2];
            let mut w = vec![(ends[0] - period, ends[0])];
            w.extend(ends.windows(2).map(|x| (x[0], x[1])));
            return Some((Evidence::SchedulerSteps, w));
        }
        let mut calls: Vec<(f64, f64)> = trace
            .events
            .iter()
            .filter(|e| matches!(e.cat, Some(Category::UserAnnotation | Category::CpuOp)) && is_compiled_graph_call(&e.name))
            .map(|e| (e.ts_us, e.end_us()))
            .collect();
        if calls.len() >= 2 {
            calls.sort_by(|a, b| a.0.total_cmp(&b.0));
            return Some((Evidence::CompiledGraphCalls, calls));
        }
        None
    }

    /// [`super::detect`] from the trace's hints, or `None` when it has fewer than two.
    pub fn detect(trace: &Trace) -> Option<Detection> {
        let (evidence, windows) = windows(trace)?;
        let launch: HashMap<i64, f64> = trace
            .events
            .iter()
            .filter(|e| e.cat.as_ref().is_some_and(Category::is_launch_api))
            .filter_map(|e| Some((e.correlation?, e.ts_us)))
            .collect();
        let kernels: Vec<_> = trace.kernels().collect();
        let mut rows: HashMap<(i64, i64), usize> = HashMap::new();
        for k in &kernels {
            *rows.entry((k.pid, k.tid)).or_default() += 1;
        }
        let row = rows.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(r, _)| *r).unwrap_or((0, 0));
        // Per window: (first start, last end, kernels); and the kernels outside every window.
        let mut acc: Vec<(f64, f64, usize)> = vec![(f64::MAX, f64::MIN, 0); windows.len()];
        let (mut before, mut after) = ((f64::MAX, f64::MIN, 0usize), (f64::MAX, f64::MIN, 0usize));
        let mut placed = 0usize;
        for k in &kernels {
            let Some(t) = k.correlation.and_then(|c| launch.get(&c)) else { continue };
            let i = windows.partition_point(|w| w.0 < *t);
            let slot = match i.checked_sub(1) {
                Some(i) if *t <= windows[i].1 => {
                    placed += 1;
                    &mut acc[i]
                }
                _ if *t <= windows[0].0 => &mut before,
                _ => &mut after,
            };
            slot.0 = slot.0.min(k.ts_us);
            slot.1 = slot.1.max(k.end_us());
            slot.2 += 1;
        }
        let filled: Vec<&(f64, f64, usize)> = acc.iter().filter(|a| a.2 > 0).collect();
        if filled.len() < 2 {
            return None;
        }
        let n = filled.len();
        let steps: Vec<DetectedStep> = filled
            .iter()
            .enumerate()
            .map(|(i, a)| DetectedStep { name: format!("dit.step {i}/{n}"), start_us: a.0, end_us: a.1, kernels: a.2 })
            .collect();
        let mut per: Vec<usize> = steps.iter().map(|s| s.kernels).collect();
        per.sort_unstable();
        let regions = [(BEFORE_STEPS, before), (AFTER_STEPS, after)]
            .into_iter()
            .filter(|(_, r)| r.2 > 0)
            .map(|(name, r)| Region { name: name.into(), kernels: r.2, start_us: r.0, end_us: r.1 })
            .collect();
        Some(Detection {
            steps,
            period_kernels: per[per.len() / 2],
            passes_per_step: 1,
            evidence,
            confidence: placed as f64 / kernels.len().max(1) as f64,
            row,
            regions,
        })
    }
}

/// Whether `trace` names its steps: a `ProfilerStep#N` or `dit.step i/n` range, or a kernel
/// carrying a `gpuspan.step`.
pub fn has_step_scopes(trace: &Trace) -> bool {
    trace.events.iter().any(|e| is_step_scope(&e.name, e.cat.as_ref())) || trace.kernels().any(|k| k.step.is_some())
}

/// Whether a host op (`cpu_op`, `python_function`) named `name` is one a step analysis reads:
/// a step range (`ProfilerStep#N`, `dit.step i/n`) or a step hint ([`hints`]: a scheduler's
/// `step`, a compiled graph's call). Every use of host ops by `gpuspan stats`, `diff` and
/// `waterfall` (step ranges, hints, `--steps` defaults) is of these, so their reads keep no
/// other host op (`gpuspan_export::kineto::ReadOptions::keep_host_op`).
pub fn is_step_name(name: &str) -> bool {
    is_step_range_name(name) || hints::is_scheduler_step(name) || hints::is_compiled_graph_call(name)
}

/// `ProfilerStep#N` or `dit.step i/n`.
fn is_step_range_name(name: &str) -> bool {
    name.starts_with("ProfilerStep#") || name.starts_with("dit.step ")
}

fn is_step_scope(name: &str, cat: Option<&Category>) -> bool {
    let named = is_step_range_name(name);
    named
        && matches!(
            cat,
            Some(Category::UserAnnotation | Category::GpuUserAnnotation | Category::CpuOp)
        )
}

/// Removes what names steps in `trace` (step range events and the kernels' `gpuspan.step`),
/// so [`detect`]'s result is all that decides them.
pub fn strip_step_scopes(trace: &mut Trace) {
    trace.events.retain(|e| !is_step_scope(&e.name, e.cat.as_ref()));
    for e in trace.events.iter_mut() {
        e.step = None;
    }
}

/// Applies `d` to `trace`: removes its own step names ([`strip_step_scopes`]) and sets the
/// `gpuspan.step` of each kernel to the detected step whose time range contains its start
/// (kernels outside every step get none), so the stats, waterfall and diff see the detected
/// steps. Returns how many kernels were placed in a step.
pub fn apply(trace: &mut Trace, d: &Detection) -> usize {
    strip_step_scopes(trace);
    let mut placed = 0;
    for e in trace.events.iter_mut().filter(|e| e.is(&Category::Kernel)) {
        // Steps are in time order and do not overlap: the last one starting at or before.
        let i = d.steps.partition_point(|s| s.start_us <= e.ts_us);
        if let Some(s) = i.checked_sub(1).map(|i| &d.steps[i]) {
            if e.ts_us < s.end_us {
                e.step = Some(s.name.clone());
                placed += 1;
            }
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceEvent;

    fn kernel(name: &str, ts: f64, dur: f64) -> TraceEvent {
        TraceEvent { cat: Some(Category::Kernel), name: name.into(), pid: 0, tid: 7, ts_us: ts, dur_us: dur, ..Default::default() }
    }

    /// `prefix`, then `steps` × (`passes` × a 3-layer pass, `gap` µs idle after each step),
    /// then `suffix`; 1 µs kernels back to back.
    fn synthetic(steps: usize, passes: usize, gap: f64, layers: usize) -> Trace {
        let mut t = Trace::default();
        let mut ts = 0.0;
        let push = |t: &mut Trace, name: &str, ts: &mut f64| {
            t.events.push(kernel(name, *ts, 1.0));
            *ts += 1.0;
        };
        for n in ["tok_embed", "text_gemm", "text_norm"] {
            push(&mut t, n, &mut ts);
        }
        for _ in 0..steps {
            for _ in 0..passes {
                push(&mut t, "time_embed", &mut ts);
                for _ in 0..layers {
                    for n in ["norm", "qkv_gemm", "flash_attn", "ffn_gemm"] {
                        push(&mut t, n, &mut ts);
                    }
                }
                push(&mut t, "proj_out", &mut ts);
            }
            ts += gap;
        }
        for n in ["vae_conv", "vae_conv", "vae_norm"] {
            push(&mut t, n, &mut ts);
        }
        t
    }

    #[test]
    fn passes_with_layers_are_steps_and_the_regions_are_named() {
        let d = detect(&synthetic(5, 1, 0.0, 3));
        assert_eq!(d.steps.len(), 5, "{d:?}");
        assert_eq!(d.evidence, Evidence::InnerRepetition);
        assert_eq!(d.period_kernels, 14);
        let names: Vec<&str> = d.regions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [BEFORE_STEPS, AFTER_STEPS]);
    }

    #[test]
    fn guidance_passes_group_by_the_idle_gap_after_each_step() {
        let d = detect(&synthetic(4, 2, 500.0, 3));
        assert_eq!((d.steps.len(), d.passes_per_step, d.evidence), (4, 2, Evidence::IdleGaps), "{d:?}");
        assert!(d.steps.iter().all(|s| s.kernels == 28));
    }

    #[test]
    fn step_names_are_the_step_ranges_and_the_hints() {
        let steps = [
            "ProfilerStep#3",
            "dit.step 0/30",
            "diffusers/schedulers/scheduling_flow_match_euler_discrete.py(357): step",
            "FlowMatchEulerDiscreteScheduler.step",
            "DDIMScheduler::step",
            "SCHEDULING_DDIM.PY(1): STEP",
            "## Call CompiledFxGraph fxabc ##",
        ];
        for n in steps {
            assert!(is_step_name(n), "{n}");
        }
        let others = ["aten::mm", "ProfilerStep", "dit.stepper", "scheduling_ddim.py(3): step_index", "optimizer.step", "schedul", "## Call Graph"];
        for n in others {
            assert!(!is_step_name(n), "{n}");
        }
    }

    #[test]
    fn layers_of_one_pass_are_not_steps() {
        // One pass of 6 identical layers, no gaps: one step.
        let d = detect(&synthetic(1, 1, 0.0, 6));
        assert_eq!((d.steps.len(), d.evidence), (1, Evidence::None), "{d:?}");
    }

    /// torch.compile-style: each step is one compiled-graph call of Triton kernels, launched
    /// back to back (no idle between steps), inside `## Call CompiledFxGraph … ##` ranges
    /// that are not step names: the passes' inner repetition (layers) decides.
    #[test]
    fn compiled_graph_calls_back_to_back_are_steps() {
        let mut t = Trace::default();
        let mut ts = 0.0;
        for _ in 0..6 {
            t.events.push(TraceEvent {
                cat: Some(Category::UserAnnotation),
                name: "## Call CompiledFxGraph fkq3v7zq ##".into(),
                pid: 1,
                tid: 1,
                ts_us: ts,
                dur_us: 100.0,
                ..Default::default()
            });
            let mut push = |name: &str| {
                t.events.push(kernel(name, ts, 1.0));
                ts += 1.0;
            };
            push("triton_poi_fused_embedding_0");
            for _ in 0..4 {
                for n in ["triton_red_fused_native_layer_norm_1", "triton_tem_fused_mm_2", "triton_per_fused__softmax_3", "triton_tem_fused_mm_4", "triton_poi_fused_gelu_5"] {
                    push(n);
                }
            }
            push("triton_poi_fused_add_6");
        }
        assert!(!has_step_scopes(&t));
        let d = detect(&t);
        assert_eq!((d.steps.len(), d.evidence, d.period_kernels), (6, Evidence::InnerRepetition, 22), "{d:?}");
    }

    #[test]
    fn apply_names_kernels_and_strips_the_old_steps() {
        let mut t = synthetic(3, 1, 0.0, 3);
        t.events.push(TraceEvent { cat: Some(Category::UserAnnotation), name: "ProfilerStep#1".into(), ts_us: 0.0, dur_us: 1e6, ..Default::default() });
        assert!(has_step_scopes(&t));
        let d = detect(&t);
        let placed = apply(&mut t, &d);
        assert_eq!(placed, 3 * 14);
        assert!(!t.events.iter().any(|e| e.name.starts_with("ProfilerStep")));
        assert_eq!(t.kernels().filter(|k| k.step.as_deref() == Some("dit.step 1/3")).count(), 14);
    }
}

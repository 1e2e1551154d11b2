//! Steps: which `ProfilerStep#N` / `dit.step i/n` range each kernel belongs to
//! ([`kernel_step_assignment`]), the attribution behind `steps[]` of `gpuspan stats` and
//! the per-step values of `gpuspan diff`.

use foldhash::{HashMap, HashMapExt};

use crate::trace::{Category, Trace, TraceEvent};

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
pub(crate) struct StepRange {
    pub(crate) name: String,
    pub(crate) start: f64,
    pub(crate) dur: f64,
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
pub(crate) fn assign(trace: &Trace) -> (Vec<StepRange>, Vec<(usize, Option<usize>)>) {
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

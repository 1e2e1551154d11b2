//! The step model of the waterfall: a [`Trace`] → steps → lanes (one per device and stream)
//! → bars (one per kernel, memcpy or memset). Pure: no I/O, no drawing.
//!
//! Definitions (times µs, `f64`, as in the trace):
//! - Steps are `gpuspan_core::stats::compute(..).steps`, in that order, so `--step N` and
//!   `gpuspan stats` agree on what step N is. A kernel belongs to the step
//!   [`gpuspan_core::stats::kernel_step_assignment`] names; when several steps share that
//!   name, to the latest of them starting no later than the kernel (else the first).
//! - A memcpy / memset belongs to the innermost step whose CPU range contains its launch
//!   (the `cuda_runtime` / `cuda_driver` event of the same `correlation`), else to the step
//!   whose kernels' GPU window contains its start.
//! - GPU activity outside every step (a DiT request's VAE decode, work before the first
//!   `ProfilerStep`) forms one extra step after the real ones, of kind
//!   [`StepKind::Outside`]; a trace without any step is one step of kind
//!   [`StepKind::Whole`] holding all its GPU activity.
//! - A step's window runs from its first bar's start to its last bar's end ([`Step::start_us`],
//!   [`Step::span_us`]); its busy time is the length of the union of its bars
//!   ([`Step::busy_us`]), on all lanes together, as `gpuspan stats` defines GPU busy.
//! - The stage of a bar is the event's `gpuspan.stage` arg, else the kernel-name rules of
//!   DESIGN.md "Stage classification" (`gpuspan_core::classify`), else `memcpy` / `memset`
//!   by kind.

use std::collections::HashMap;

use gpuspan_core::classify::StageRules;
use gpuspan_core::stats;
use gpuspan_core::trace::{Category, Trace, TraceEvent};

/// What a bar stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A kernel.
    Kernel,
    /// A memcpy.
    Memcpy,
    /// A memset.
    Memset,
}

/// One GPU activity drawn as a bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Start, µs, in the trace's time base.
    pub start_us: f64,
    /// Duration, µs.
    pub dur_us: f64,
    /// Index into [`Waterfall::names`].
    pub name: u32,
    /// Index into [`Waterfall::stages`].
    pub stage: u32,
    /// Kernel, memcpy or memset.
    pub kind: BarKind,
    /// Index of the event in [`Trace::events`] (of its rank's trace, in a waterfall of
    /// ranks).
    pub event: usize,
    /// CUPTI correlation id.
    pub correlation: Option<i64>,
    /// Grid dimensions (kernels).
    pub grid: Option<[i64; 3]>,
    /// Block dimensions (kernels).
    pub block: Option<[i64; 3]>,
    /// Registers per thread (kernels).
    pub registers_per_thread: Option<i64>,
    /// Shared memory, bytes (kernels).
    pub shared_memory_bytes: Option<i64>,
}

impl Bar {
    /// End, µs.
    pub fn end_us(&self) -> f64 {
        self.start_us + self.dur_us
    }
}

/// One (device, stream) row of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    /// Device id (`args.device`, else the event's `pid`).
    pub device: i64,
    /// Stream id (`args.stream`, else the event's `tid`).
    pub stream: i64,
    /// Row label: `GPU<device> ` and the trace's thread name for that row (`stream 7`), or
    /// `stream <id>` when the trace names none; `rank <r> · ` before it in a waterfall of
    /// ranks ([`Waterfall::from_ranks`]).
    pub label: String,
    /// The rank whose lane this is, in a waterfall of a distributed job's ranks (lanes of
    /// one rank form a lane group); `None` for one process's trace.
    pub rank: Option<u32>,
    /// Its bars, by start (ties: longer first).
    pub bars: Vec<Bar>,
}

/// Where a step comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A step range of the trace (`ProfilerStep#N`, `dit.step i/n`).
    Range,
    /// GPU activity outside every step range (after the real steps).
    Outside,
    /// The whole trace, which has no step ranges.
    Whole,
}

/// One step of the waterfall.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Step name (`ProfilerStep#6`, `dit.step 3/50`; `outside steps`, `whole trace`).
    pub name: String,
    /// Where it comes from.
    pub kind: StepKind,
    /// Start of the step's CPU range, µs (`StepStats::start_us`); the window start for
    /// [`StepKind::Outside`] / [`StepKind::Whole`].
    pub range_start_us: f64,
    /// Duration of the step's CPU range, µs; the span for `Outside` / `Whole`.
    pub range_dur_us: f64,
    /// First bar start, µs (the CPU range start when the step has no bars).
    pub start_us: f64,
    /// First bar start to last bar end, µs; 0 without bars.
    pub span_us: f64,
    /// Length of the union of the step's bars, µs.
    pub busy_us: f64,
    /// Number of kernels.
    pub kernel_count: usize,
    /// Sum of kernel durations, µs.
    pub kernel_total_us: f64,
    /// Sum of bar durations per stage (index into [`Waterfall::stages`]), µs; memcpy /
    /// memset included under their stage.
    pub stage_totals_us: Vec<f64>,
    /// Lanes with activity in this step, by (device, stream).
    pub lanes: Vec<Lane>,
}

impl Step {
    /// `span_us − busy_us`, µs.
    pub fn idle_us(&self) -> f64 {
        (self.span_us - self.busy_us).max(0.0)
    }

    /// Busy share of the span, percent (0 for an empty step).
    pub fn busy_percent(&self) -> f64 {
        if self.span_us > 0.0 {
            100.0 * self.busy_us / self.span_us
        } else {
            0.0
        }
    }

    /// End of the window, µs.
    pub fn end_us(&self) -> f64 {
        self.start_us + self.span_us
    }

    /// Every bar of the step, lane by lane.
    pub fn bars(&self) -> impl Iterator<Item = &Bar> {
        self.lanes.iter().flat_map(|l| l.bars.iter())
    }

    /// The `n` longest kernels (memcpy / memset excluded), longest first; ties by start.
    pub fn top_kernels(&self, n: usize) -> Vec<(&Lane, &Bar)> {
        let mut v: Vec<(&Lane, &Bar)> = self
            .lanes
            .iter()
            .flat_map(|l| l.bars.iter().map(move |b| (l, b)))
            .filter(|(_, b)| b.kind == BarKind::Kernel)
            .collect();
        v.sort_by(|a, b| {
            b.1.dur_us
                .total_cmp(&a.1.dur_us)
                .then_with(|| a.1.start_us.total_cmp(&b.1.start_us))
        });
        v.truncate(n);
        v
    }
}

/// The waterfall of a whole trace: every step with its lanes and bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Waterfall {
    /// Where the trace came from (as the user named it).
    pub source: String,
    /// Stage names, by total time over the whole trace, descending (ties by name).
    pub stages: Vec<String>,
    /// Distinct event names, interned.
    pub names: Vec<String>,
    /// The trace's steps in `stats::compute(..).steps` order, then, when some GPU activity
    /// lies outside them, one [`StepKind::Outside`] step; or one [`StepKind::Whole`] step.
    pub steps: Vec<Step>,
}

impl Waterfall {
    /// Builds the waterfall of `trace`; `source` is copied into [`Waterfall::source`].
    pub fn from_trace(trace: &Trace, source: &str) -> Waterfall {
        Builder::new(trace).build(source)
    }

    /// The waterfall of a distributed job: one trace per rank, on one time base (as
    /// `gpuspan_export::kineto::read_rank_traces` gives them). Step `k` holds step `k` of
    /// every rank that has it (the ranks run the same steps: NCCL would hang otherwise),
    /// each rank's lanes as one lane group (`Lane::rank`, labels `rank <r> · …`), in rank
    /// order; the ranks' steps line up on their own times, which collectives keep together.
    /// Steps are matched by position among each kind ([`StepKind::Range`] first, then
    /// `Outside` / `Whole`); the name is the lowest rank's. Stages are ordered by total time
    /// over all ranks.
    pub fn from_ranks(ranks: &[(u32, Trace)], source: &str) -> Waterfall {
        let mut per: Vec<(u32, Waterfall)> = ranks.iter().map(|(r, t)| (*r, Waterfall::from_trace(t, source))).collect();
        per.sort_by_key(|p| p.0);
        // Stages by total time over all ranks, descending (ties by name).
        let mut totals: HashMap<&str, f64> = HashMap::new();
        for (_, w) in &per {
            for s in &w.steps {
                for (i, t) in s.stage_totals_us.iter().enumerate() {
                    *totals.entry(w.stages[i].as_str()).or_default() += t;
                }
            }
        }
        let mut stages: Vec<String> = totals.keys().map(|s| s.to_string()).collect();
        stages.sort_by(|a, b| totals[b.as_str()].total_cmp(&totals[a.as_str()]).then_with(|| a.cmp(b)));
        let stage_id: HashMap<&str, u32> = stages.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
        let mut names = Interner::default();
        let mut steps: Vec<Step> = Vec::new();
        for kinds in [&[StepKind::Range][..], &[StepKind::Outside, StepKind::Whole][..]] {
            let of_kind = |w: &Waterfall| w.steps.iter().filter(|s| kinds.contains(&s.kind)).count();
            let n = per.iter().map(|(_, w)| of_kind(w)).max().unwrap_or(0);
            for k in 0..n {
                let mut step: Option<Step> = None;
                for (rank, w) in &per {
                    let Some(src) = w.steps.iter().filter(|s| kinds.contains(&s.kind)).nth(k) else { continue };
                    let out = step.get_or_insert_with(|| empty_step(&src.name, src.kind, src.range_start_us, src.range_dur_us, stages.len()));
                    let end = (out.range_start_us + out.range_dur_us).max(src.range_start_us + src.range_dur_us);
                    out.range_start_us = out.range_start_us.min(src.range_start_us);
                    out.range_dur_us = end - out.range_start_us;
                    out.kernel_count += src.kernel_count;
                    out.kernel_total_us += src.kernel_total_us;
                    for (i, t) in src.stage_totals_us.iter().enumerate() {
                        out.stage_totals_us[stage_id[w.stages[i].as_str()] as usize] += t;
                    }
                    for lane in &src.lanes {
                        let bars = lane
                            .bars
                            .iter()
                            .map(|b| Bar { name: names.id(&w.names[b.name as usize]), stage: stage_id[w.stages[b.stage as usize].as_str()], ..b.clone() })
                            .collect();
                        out.lanes.push(Lane { device: lane.device, stream: lane.stream, label: format!("rank {rank} \u{b7} {}", lane.label), rank: Some(*rank), bars });
                    }
                }
                if let Some(mut s) = step {
                    finish_step(&mut s);
                    steps.push(s);
                }
            }
        }
        Waterfall { source: source.to_string(), stages, names: names.names, steps }
    }

    /// Number of lane groups (ranks) of step `index`; 1 for one process's trace, 0 for an
    /// empty step.
    pub fn lane_groups(&self, index: usize) -> usize {
        let Some(s) = self.steps.get(index) else { return 0 };
        let mut ranks: Vec<Option<u32>> = s.lanes.iter().map(|l| l.rank).collect();
        ranks.dedup();
        ranks.len()
    }

    /// Number of real steps (kind [`StepKind::Range`]).
    pub fn range_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.kind == StepKind::Range)
            .count()
    }

    /// The default step to draw: the real step with the longest GPU span (ties: the first);
    /// without real steps, step 0. `None` only for an empty waterfall.
    pub fn slowest_step(&self) -> Option<usize> {
        let real = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == StepKind::Range)
            .fold(None::<(usize, f64)>, |best, (i, s)| match best {
                Some((_, b)) if b >= s.span_us => best,
                _ => Some((i, s.span_us)),
            });
        real.map(|(i, _)| i)
            .or(if self.steps.is_empty() { None } else { Some(0) })
    }
}

/// Interns strings into ids.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }
}

struct Builder<'a> {
    trace: &'a Trace,
    rules: StageRules,
    class_cache: HashMap<&'a str, u32>,
    names: Interner,
    stages: Interner,
}

/// A bar before it is put into its step's lane.
struct Placed {
    step: usize,
    device: i64,
    stream: i64,
    row: (i64, i64),
    bar: Bar,
}

impl<'a> Builder<'a> {
    fn new(trace: &'a Trace) -> Self {
        Builder {
            trace,
            rules: StageRules::builtin(),
            class_cache: HashMap::new(),
            names: Interner::default(),
            stages: Interner::default(),
        }
    }

    fn bar(&mut self, i: usize, e: &'a TraceEvent, kind: BarKind) -> Bar {
        let stage = match e.stage.as_deref() {
            Some(s) if !s.is_empty() => self.stages.id(s),
            _ => match kind {
                BarKind::Memcpy => self.stages.id("memcpy"),
                BarKind::Memset => self.stages.id("memset"),
                BarKind::Kernel => match self.class_cache.get(e.name.as_str()) {
                    Some(&id) => id,
                    None => {
                        let id = self.stages.id(self.rules.class_of(&e.name));
                        self.class_cache.insert(e.name.as_str(), id);
                        id
                    }
                },
            },
        };
        Bar {
            start_us: e.ts_us,
            dur_us: e.dur_us.max(0.0),
            name: self.names.id(&e.name),
            stage,
            kind,
            event: i,
            correlation: e.correlation,
            grid: e.grid,
            block: e.block,
            registers_per_thread: e.registers_per_thread,
            shared_memory_bytes: e.shared_memory_bytes,
        }
    }

    fn build(mut self, source: &str) -> Waterfall {
        let trace = self.trace;
        let st = stats::compute(trace, source);
        let n_real = st.steps.len();
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, s) in st.steps.iter().enumerate() {
            by_name.entry(s.name.as_str()).or_default().push(i);
        }
        // Step index `n_real` stands for "outside every step" (or the whole trace).
        let outside = n_real;
        let mut placed: Vec<Placed> = Vec::new();
        let row_of = |e: &TraceEvent| {
            (
                e.device.unwrap_or(e.pid),
                e.stream.unwrap_or(e.tid),
                (e.pid, e.tid),
            )
        };

        // Kernels: the core's assignment.
        for (i, step_name) in stats::kernel_step_assignment(trace) {
            let e = &trace.events[i];
            let step = match step_name.as_deref().and_then(|n| by_name.get(n)) {
                Some(c) if c.len() == 1 => c[0],
                Some(c) => c
                    .iter()
                    .copied()
                    .filter(|&s| st.steps[s].start_us <= e.ts_us)
                    .max_by(|&x, &y| st.steps[x].start_us.total_cmp(&st.steps[y].start_us))
                    .unwrap_or(c[0]),
                None => outside,
            };
            let bar = self.bar(i, e, BarKind::Kernel);
            let (device, stream, row) = row_of(e);
            placed.push(Placed {
                step,
                device,
                stream,
                row,
                bar,
            });
        }

        // Memcpy / memset: launch inside a step's CPU range, else the kernels' GPU window.
        let mut windows: Vec<(f64, f64)> = vec![(f64::INFINITY, f64::NEG_INFINITY); n_real];
        for p in placed.iter().filter(|p| p.step < n_real) {
            let w = &mut windows[p.step];
            w.0 = w.0.min(p.bar.start_us);
            w.1 = w.1.max(p.bar.end_us());
        }
        let mut launch_ts: HashMap<i64, f64> = HashMap::new();
        for e in &trace.events {
            if let (Some(c), Some(cat)) = (e.correlation, &e.cat) {
                if cat.is_launch_api() {
                    launch_ts.entry(c).or_insert(e.ts_us);
                }
            }
        }
        let innermost = |t: f64, range: &dyn Fn(usize) -> (f64, f64)| -> Option<usize> {
            (0..n_real)
                .filter(|&s| {
                    let (a, b) = range(s);
                    a <= t && t < b
                })
                .max_by(|&x, &y| range(x).0.total_cmp(&range(y).0))
        };
        for (i, e) in trace.events.iter().enumerate() {
            let kind = match e.cat {
                Some(Category::GpuMemcpy) => BarKind::Memcpy,
                Some(Category::GpuMemset) => BarKind::Memset,
                _ => continue,
            };
            let by_launch = e
                .correlation
                .and_then(|c| launch_ts.get(&c))
                .and_then(|&t| {
                    innermost(t, &|s| {
                        (
                            st.steps[s].start_us,
                            st.steps[s].start_us + st.steps[s].dur_us,
                        )
                    })
                });
            let step = by_launch
                .or_else(|| innermost(e.ts_us, &|s| windows[s]))
                .unwrap_or(outside);
            let bar = self.bar(i, e, kind);
            let (device, stream, row) = row_of(e);
            placed.push(Placed {
                step,
                device,
                stream,
                row,
                bar,
            });
        }

        // Stage ids by total time, descending.
        let mut totals = vec![0.0f64; self.stages.names.len()];
        for p in &placed {
            totals[p.bar.stage as usize] += p.bar.dur_us;
        }
        let mut order: Vec<u32> = (0..totals.len() as u32).collect();
        let stage_names = std::mem::take(&mut self.stages.names);
        order.sort_by(|&a, &b| {
            totals[b as usize]
                .total_cmp(&totals[a as usize])
                .then_with(|| stage_names[a as usize].cmp(&stage_names[b as usize]))
        });
        let mut remap = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old as usize] = new as u32;
        }
        let stages: Vec<String> = order
            .iter()
            .map(|&o| stage_names[o as usize].clone())
            .collect();

        // Steps and their lanes.
        let has_outside = placed.iter().any(|p| p.step == outside);
        let mut steps: Vec<Step> = st
            .steps
            .iter()
            .map(|s| empty_step(&s.name, StepKind::Range, s.start_us, s.dur_us, stages.len()))
            .collect();
        if has_outside || n_real == 0 {
            let (name, kind) = if n_real == 0 {
                ("whole trace", StepKind::Whole)
            } else {
                ("outside steps", StepKind::Outside)
            };
            steps.push(empty_step(name, kind, 0.0, 0.0, stages.len()));
        }
        let mut lane_of: Vec<HashMap<(i64, i64), usize>> = vec![HashMap::new(); steps.len()];
        for mut p in placed {
            p.bar.stage = remap[p.bar.stage as usize];
            let step = &mut steps[p.step];
            let li = *lane_of[p.step]
                .entry((p.device, p.stream))
                .or_insert_with(|| {
                    let label = match trace
                        .thread_names
                        .get(&p.row)
                        .map(|s| s.trim())
                        .filter(|s| !s.is_empty())
                    {
                        Some(n) => format!("GPU{} {n}", p.device),
                        None => format!("GPU{} stream {}", p.device, p.stream),
                    };
                    step.lanes.push(Lane {
                        device: p.device,
                        stream: p.stream,
                        label,
                        rank: None,
                        bars: Vec::new(),
                    });
                    step.lanes.len() - 1
                });
            step.stage_totals_us[p.bar.stage as usize] += p.bar.dur_us;
            if p.bar.kind == BarKind::Kernel {
                step.kernel_count += 1;
                step.kernel_total_us += p.bar.dur_us;
            }
            step.lanes[li].bars.push(p.bar);
        }
        for s in &mut steps {
            finish_step(s);
        }
        Waterfall {
            source: source.to_string(),
            stages,
            names: self.names.names,
            steps,
        }
    }
}

fn empty_step(name: &str, kind: StepKind, start: f64, dur: f64, n_stages: usize) -> Step {
    Step {
        name: name.to_string(),
        kind,
        range_start_us: start,
        range_dur_us: dur,
        start_us: start,
        span_us: 0.0,
        busy_us: 0.0,
        kernel_count: 0,
        kernel_total_us: 0.0,
        stage_totals_us: vec![0.0; n_stages],
        lanes: Vec::new(),
    }
}

/// Sorts lanes and bars, computes the window and the busy union.
fn finish_step(s: &mut Step) {
    s.lanes.sort_by_key(|l| (l.rank, l.device, l.stream));
    for l in &mut s.lanes {
        l.bars.sort_by(|a, b| {
            a.start_us
                .total_cmp(&b.start_us)
                .then_with(|| b.dur_us.total_cmp(&a.dur_us))
        });
    }
    let mut iv: Vec<(f64, f64)> = s.bars().map(|b| (b.start_us, b.end_us())).collect();
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(first, _)) = iv.first() else {
        return;
    };
    let last = iv.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let (mut busy, (mut cs, mut ce)) = (0.0, iv[0]);
    for &(a, b) in &iv[1..] {
        if a > ce {
            busy += ce - cs;
            (cs, ce) = (a, b);
        } else if b > ce {
            ce = b;
        }
    }
    busy += ce - cs;
    s.start_us = first;
    s.span_us = last - first;
    s.busy_us = busy;
    if s.kind != StepKind::Range {
        s.range_start_us = first;
        s.range_dur_us = s.span_us;
    }
}

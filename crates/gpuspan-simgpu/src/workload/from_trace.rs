//! A real Kineto trace turned into a [`Workload`], so the simulated H100 replays it.
//!
//! What is kept (DESIGN.md "The simulated H100"):
//! - every GPU activity of the trace — kernels (name as written, duration, stream, grid,
//!   block, shared memory), memcpys (direction from the name, `args.bytes`) and memsets —
//!   launched in the order of its CPU launch call (the `cuda_runtime` / `cuda_driver` event
//!   with the same `args.correlation`); GPU activity without a matching launch event (the
//!   launch fell outside the profiling window, e.g. 436 kernels of `h100-qwen-prefill`) is
//!   still replayed, placed by its GPU start among the others;
//! - the host gaps between launches: the time from the end of one launch call to the start
//!   of the next, capped at [`MAX_HOST_GAP_NS`]; an unlaunched activity's host time is
//!   derived from its GPU start (minus the preceding launch's launch-to-start delay);
//! - device synchronizations (`cudaDeviceSynchronize`, `cudaStreamSynchronize`,
//!   `cudaEventSynchronize`, `cuCtxSynchronize`, `cuStreamSynchronize`) as
//!   [`Op::Synchronize`];
//! - CPU ranges as NVTX ranges, as `torch.autograd.profiler.emit_nvtx` would: the
//!   `ProfilerStep#N` that contains a launch (in time, on any thread) is its outermost range,
//!   inside it the `user_annotation` and `cpu_op` (old schema `Operator`) events of the
//!   launching thread that enclose the launch, outermost first. Ranges that enclose no
//!   launch are not emitted. Launches of several CPU threads are flattened onto the replay
//!   thread: when consecutive launches come from different stacks, the ranges that differ
//!   are popped and pushed again, so nesting stays balanced;
//! - streams: `args.stream` (or the row's `tid`) per device; a trace with several devices is
//!   mapped onto device 0 with each device's streams offset by 1000 × its rank so they stay
//!   distinct.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gpuspan_core::trace::{Category, Trace, TraceEvent};

use super::{MemcpyKind, Op, Workload};

/// Longest host gap kept between two launches, ns (longer gaps are capped).
pub const MAX_HOST_GAP_NS: u64 = 100_000_000;
/// Size of a memcpy / memset whose trace event lacks `args.bytes`, bytes.
pub const DEFAULT_COPY_BYTES: u64 = 4096;
/// Launch-API names replayed as [`Op::Synchronize`].
pub const SYNC_API_NAMES: [&str; 6] = [
    "cudaDeviceSynchronize",
    "cudaStreamSynchronize",
    "cudaEventSynchronize",
    "cuCtxSynchronize",
    "cuStreamSynchronize",
    "cuEventSynchronize",
];

/// One replayed item before emission.
#[derive(Debug, Clone)]
struct Item {
    /// Index of the GPU event (or of the sync API event).
    event: usize,
    is_sync: bool,
    /// Host time of the launch call, µs.
    host_ts: f64,
    /// Host end of the launch call, µs.
    host_end: f64,
    /// GPU start, µs (NaN for syncs).
    gpu_ts: f64,
    /// Launching CPU thread and its index into the stack snapshots, when known.
    stack: Option<Vec<usize>>,
}

/// True for `ProfilerStep#N` ranges.
pub fn is_profiler_step(name: &str) -> bool {
    name.starts_with("ProfilerStep#")
}

fn is_range(e: &TraceEvent) -> bool {
    matches!(
        e.cat,
        Some(Category::UserAnnotation) | Some(Category::CpuOp)
    )
}

fn ns(us: f64) -> u64 {
    if us.is_finite() && us > 0.0 {
        (us * 1000.0).round() as u64
    } else {
        0
    }
}

fn dims(d: Option<[i64; 3]>) -> [u32; 3] {
    d.map(|d| d.map(|v| v.clamp(1, u32::MAX as i64) as u32))
        .unwrap_or([1, 1, 1])
}

fn memcpy_kind(name: &str) -> MemcpyKind {
    if name.contains("HtoD") {
        MemcpyKind::HtoD
    } else if name.contains("DtoH") {
        MemcpyKind::DtoH
    } else {
        MemcpyKind::DtoD
    }
}

/// Builds the replay workload of `trace` (see the module docs).
pub fn workload_from_trace(trace: &Trace) -> Workload {
    let ev = &trace.events;

    // Launch API events by correlation id: the earliest (outermost) call wins.
    let mut launch_of: HashMap<i64, usize> = HashMap::new();
    for (i, e) in ev.iter().enumerate() {
        if let (Some(c), true) = (
            e.correlation,
            e.cat.as_ref().is_some_and(Category::is_launch_api),
        ) {
            launch_of
                .entry(c)
                .and_modify(|j| {
                    if e.ts_us < ev[*j].ts_us {
                        *j = i
                    }
                })
                .or_insert(i);
        }
    }

    // Streams: (device, stream) → replay stream id.
    let gpu_idx: Vec<usize> = (0..ev.len())
        .filter(|&i| ev[i].cat.as_ref().is_some_and(Category::is_gpu_activity))
        .collect();
    let dev_of = |e: &TraceEvent| e.device.unwrap_or(e.pid);
    let stream_of = |e: &TraceEvent| e.stream.unwrap_or(e.tid);
    let devices: BTreeSet<i64> = gpu_idx.iter().map(|&i| dev_of(&ev[i])).collect();
    let dev_rank: BTreeMap<i64, u32> = devices
        .iter()
        .enumerate()
        .map(|(r, d)| (*d, r as u32))
        .collect();
    let stream_id = |e: &TraceEvent| -> u32 {
        let s = stream_of(e).clamp(0, 999_999) as u32;
        if devices.len() > 1 {
            s + 1000 * dev_rank[&dev_of(e)]
        } else {
            s
        }
    };

    // Matched (launched) items and syncs, and unmatched GPU items.
    let mut matched: Vec<Item> = Vec::new();
    let mut unmatched: Vec<Item> = Vec::new();
    for &i in &gpu_idx {
        let e = &ev[i];
        match e.correlation.and_then(|c| launch_of.get(&c)) {
            Some(&l) => matched.push(Item {
                event: i,
                is_sync: false,
                host_ts: ev[l].ts_us,
                host_end: ev[l].end_us(),
                gpu_ts: e.ts_us,
                stack: None,
            }),
            None => unmatched.push(Item {
                event: i,
                is_sync: false,
                host_ts: f64::NAN,
                host_end: f64::NAN,
                gpu_ts: e.ts_us,
                stack: None,
            }),
        }
    }
    for (i, e) in ev.iter().enumerate() {
        if e.cat.as_ref().is_some_and(Category::is_launch_api)
            && SYNC_API_NAMES.contains(&e.name.as_str())
        {
            matched.push(Item {
                event: i,
                is_sync: true,
                host_ts: e.ts_us,
                host_end: e.end_us(),
                gpu_ts: f64::NAN,
                stack: None,
            });
        }
    }
    let launch_event = |it: &Item| -> usize {
        if it.is_sync {
            it.event
        } else {
            launch_of[&ev[it.event].correlation.unwrap()]
        }
    };
    matched.sort_by(|a, b| {
        a.host_ts
            .total_cmp(&b.host_ts)
            .then(a.gpu_ts.total_cmp(&b.gpu_ts))
            .then(a.event.cmp(&b.event))
    });

    // Range stacks of the launching threads.
    assign_stacks(trace, &mut matched, &launch_event);

    // Merge unmatched GPU activity by GPU start among the matched ones.
    unmatched.sort_by(|a, b| a.gpu_ts.total_cmp(&b.gpu_ts).then(a.event.cmp(&b.event)));
    let mut running_max = Vec::with_capacity(matched.len());
    let mut m = f64::NEG_INFINITY;
    for it in &matched {
        if !it.is_sync {
            m = m.max(it.gpu_ts);
        }
        running_max.push(m);
    }
    let step_of: HashMap<usize, Option<String>> = if unmatched.is_empty() {
        HashMap::new()
    } else {
        gpuspan_core::stats::kernel_step_assignment(trace).into_iter().collect()
    };
    let step_range: HashMap<&str, usize> = (0..ev.len())
        .filter(|&i| is_range(&ev[i]) && is_profiler_step(&ev[i].name))
        .map(|i| (ev[i].name.as_str(), i))
        .collect();
    let mut items: Vec<Item> = Vec::with_capacity(matched.len() + unmatched.len());
    let mut mi = 0;
    for mut u in unmatched {
        let pos = running_max.partition_point(|&r| r <= u.gpu_ts);
        while mi < pos {
            items.push(matched[mi].clone());
            mi += 1;
        }
        // Host time: GPU start minus the previous launched item's launch-to-start delay,
        // never before the previous item; same ranges as the previous item.
        let prev_launched = matched[..pos].iter().rev().find(|it| !it.is_sync);
        let delay = prev_launched.map_or(0.0, |p| (p.gpu_ts - p.host_ts).max(0.0));
        let mut t = u.gpu_ts - delay;
        if let Some(p) = items.last() {
            t = t.max(p.host_ts);
            u.stack = p.stack.clone();
        }
        // An unlaunched kernel keeps the ProfilerStep that `gpuspan stats` gives it in the
        // original trace (by its GPU time): none → outside every step.
        if let Some(step) = step_of.get(&u.event) {
            let inherited = u.stack.as_ref().and_then(|st| st.first()).map(|&r| ev[r].name.as_str());
            match step {
                None => u.stack = None,
                Some(name) if inherited != Some(name.as_str()) => {
                    u.stack = step_range.get(name.as_str()).map(|&r| vec![r]);
                }
                Some(_) => {}
            }
        }
        if let Some(next) = matched.get(pos) {
            t = t.min(
                next.host_ts
                    .max(items.last().map_or(f64::NEG_INFINITY, |p| p.host_ts)),
            );
        }
        u.host_ts = t;
        u.host_end = t;
        items.push(u);
    }
    items.extend(matched[mi..].iter().cloned());

    // Emit.
    let mut w = Workload::new();
    let mut open: Vec<usize> = Vec::new();
    let mut prev_end: Option<f64> = None;
    for it in &items {
        if let Some(pe) = prev_end {
            let gap = ns(it.host_ts - pe).min(MAX_HOST_GAP_NS);
            if gap > 0 {
                w.ops.push(Op::HostGap { ns: gap });
            }
        }
        prev_end = Some(prev_end.map_or(it.host_end, |pe: f64| pe.max(it.host_end)));
        let want: &[usize] = it.stack.as_deref().unwrap_or(&[]);
        let common = open
            .iter()
            .zip(want.iter())
            .take_while(|(a, b)| a == b)
            .count();
        while open.len() > common {
            open.pop();
            w.ops.push(Op::RangePop);
        }
        for &r in &want[common..] {
            open.push(r);
            w.ops.push(Op::RangePush(ev[r].name.clone()));
        }
        let e = &ev[it.event];
        if it.is_sync {
            w.ops.push(Op::Synchronize);
            continue;
        }
        let stream = stream_id(e);
        let bytes = e.bytes.map_or(DEFAULT_COPY_BYTES, |b| b.max(1) as u64);
        match e.cat {
            Some(Category::Kernel) => w.ops.push(Op::Launch {
                name: e.name.clone(),
                dur_ns: ns(e.dur_us),
                stream,
                grid: dims(e.grid),
                block: dims(e.block),
                shared_mem_bytes: e.shared_memory_bytes.unwrap_or(0).clamp(0, u32::MAX as i64)
                    as u32,
            }),
            Some(Category::GpuMemcpy) => w.ops.push(Op::Memcpy {
                kind: memcpy_kind(&e.name),
                bytes,
                stream,
            }),
            _ => w.ops.push(Op::Memset { bytes, stream }),
        }
    }
    for _ in open {
        w.ops.push(Op::RangePop);
    }
    w
}

/// Fills `stack` of every matched item: `[ProfilerStep containing the launch (any thread)]`
/// followed by the launching thread's enclosing ranges (ProfilerSteps excluded), outermost
/// first, as event indices.
fn assign_stacks(trace: &Trace, items: &mut [Item], launch_event: &dyn Fn(&Item) -> usize) {
    let ev = &trace.events;
    // Profiler steps, by start.
    let mut steps: Vec<usize> = (0..ev.len())
        .filter(|&i| is_range(&ev[i]) && is_profiler_step(&ev[i].name))
        .collect();
    steps.sort_by(|a, b| ev[*a].ts_us.total_cmp(&ev[*b].ts_us));
    let step_at = |t: f64| -> Option<usize> {
        let p = steps.partition_point(|&s| ev[s].ts_us <= t);
        steps[..p]
            .iter()
            .rev()
            .find(|&&s| ev[s].end_us() >= t)
            .copied()
    };

    // Per thread: ranges sorted (ts asc, dur desc) and launches sorted by ts.
    let mut ranges: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (i, e) in ev.iter().enumerate() {
        if is_range(e) && !is_profiler_step(&e.name) {
            ranges.entry((e.pid, e.tid)).or_default().push(i);
        }
    }
    let mut launches: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (k, it) in items.iter().enumerate() {
        let l = &ev[launch_event(it)];
        launches.entry((l.pid, l.tid)).or_default().push(k);
    }
    for (thread, mut ks) in launches {
        ks.sort_by(|a, b| {
            ev[launch_event(&items[*a])]
                .ts_us
                .total_cmp(&ev[launch_event(&items[*b])].ts_us)
        });
        let mut rs = ranges.remove(&thread).unwrap_or_default();
        rs.sort_by(|a, b| {
            ev[*a]
                .ts_us
                .total_cmp(&ev[*b].ts_us)
                .then(ev[*b].dur_us.total_cmp(&ev[*a].dur_us))
        });
        let mut stack: Vec<usize> = Vec::new();
        let mut ri = 0;
        for k in ks {
            let t = ev[launch_event(&items[k])].ts_us;
            while ri < rs.len() && ev[rs[ri]].ts_us <= t {
                let r = rs[ri];
                while stack
                    .last()
                    .is_some_and(|&top| ev[top].end_us() < ev[r].ts_us)
                {
                    stack.pop();
                }
                stack.push(r);
                ri += 1;
            }
            while stack.last().is_some_and(|&top| ev[top].end_us() < t) {
                stack.pop();
            }
            let mut snap: Vec<usize> = Vec::with_capacity(stack.len() + 1);
            snap.extend(step_at(t));
            snap.extend(stack.iter().copied().filter(|&r| ev[r].end_us() >= t));
            items[k].stack = Some(snap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Trace {
        let p = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/traces"
        ))
        .join(name);
        gpuspan_export::read_trace(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Multiset of (name, dur_ns) of the trace's kernels.
    fn trace_kernels(t: &Trace) -> Vec<(String, u64)> {
        let mut v: Vec<_> = t
            .kernels()
            .map(|e| (e.name.clone(), ns(e.dur_us)))
            .collect();
        v.sort();
        v
    }

    /// Checks the fixture: same kernel multiset, balanced ranges, and per ProfilerStep the
    /// kernels launched inside its push/pop are exactly those whose launch it contains.
    fn check(name: &str, kernels: usize) {
        let t = fixture(name);
        let w = workload_from_trace(&t);
        let s = w.summary();
        assert_eq!(s.kernel_count as usize, kernels, "{name}");
        let mut got: Vec<(String, u64)> = w
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Launch { name, dur_ns, .. } => Some((name.clone(), *dur_ns)),
                _ => None,
            })
            .collect();
        got.sort();
        assert_eq!(got, trace_kernels(&t), "{name}: kernel multiset");
        assert!(w.ranges_balanced(), "{name}: ranges balanced");
        let gpu = t
            .events
            .iter()
            .filter(|e| e.cat.as_ref().is_some_and(Category::is_gpu_activity))
            .count() as u64;
        assert_eq!(
            s.kernel_count + s.memcpy_count + s.memset_count,
            gpu,
            "{name}: all GPU activity"
        );

        // Expected per step: kernels whose launch event lies in the step's time range.
        let launch: HashMap<i64, &TraceEvent> = t
            .events
            .iter()
            .filter(|e| {
                e.cat.as_ref().is_some_and(Category::is_launch_api) && e.correlation.is_some()
            })
            .map(|e| (e.correlation.unwrap(), e))
            .collect();
        let steps: Vec<&TraceEvent> = t
            .events
            .iter()
            .filter(|e| is_range(e) && is_profiler_step(&e.name))
            .collect();
        let mut expected: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for k in t.kernels() {
            if let Some(l) = k.correlation.and_then(|c| launch.get(&c)) {
                if let Some(s) = steps
                    .iter()
                    .find(|s| s.ts_us <= l.ts_us && l.ts_us <= s.end_us())
                {
                    expected
                        .entry(s.name.clone())
                        .or_default()
                        .push((k.name.clone(), ns(k.dur_us)));
                }
            }
        }
        let mut in_step: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        let mut stack: Vec<&str> = Vec::new();
        for o in &w.ops {
            match o {
                Op::RangePush(n) => stack.push(n),
                Op::RangePop => {
                    stack.pop();
                }
                Op::Launch { name, dur_ns, .. } => {
                    let steps_open: Vec<&&str> =
                        stack.iter().filter(|n| is_profiler_step(n)).collect();
                    assert!(steps_open.len() <= 1, "{name}: nested steps");
                    if let Some(s) = steps_open.first() {
                        in_step
                            .entry(s.to_string())
                            .or_default()
                            .push((name.clone(), *dur_ns));
                    }
                }
                _ => {}
            }
        }
        // Launched kernels are exactly where expected; unlaunched kernels may inherit a step.
        let unlaunched = t
            .kernels()
            .filter(|k| k.correlation.and_then(|c| launch.get(&c)).is_none())
            .count();
        for (step, mut exp) in expected.clone() {
            exp.sort();
            let mut got = in_step.remove(&step).unwrap_or_default();
            got.sort();
            if unlaunched == 0 {
                assert_eq!(got, exp, "{name}: kernels of {step}");
            } else {
                assert!(
                    exp.iter().all(|k| got.binary_search(k).is_ok()),
                    "{name}: kernels of {step}"
                );
            }
        }
        assert!(
            in_step.is_empty() || unlaunched > 0,
            "{name}: unexpected steps {:?}",
            in_step.keys()
        );
        if !steps.is_empty() {
            assert!(!expected.is_empty(), "{name}: kernels inside steps");
        }
    }

    #[test]
    fn falconsai() {
        check("h100-vit-falconsai.json.gz", 154);
    }

    #[test]
    fn bert() {
        check("h100-bert-small.json.gz", 60);
    }

    #[test]
    fn qwen_with_unlaunched_kernels() {
        check("h100-qwen-prefill.json.gz", 1465);
    }

    #[test]
    fn a100_three_streams_two_threads() {
        check("a100-hta-control.json.gz", 8568);
        let w = workload_from_trace(&fixture("a100-hta-control.json.gz"));
        let streams: BTreeSet<u32> = w
            .ops
            .iter()
            .filter_map(|o| {
                if let Op::Launch { stream, .. } = o {
                    Some(*stream)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(streams.len(), 3);
        let pushes = w.summary().range_push_count;
        assert!(pushes > 100, "{pushes}");
    }

    #[test]
    fn v100_old_schema() {
        check("v100-resnet50-oldschema.json.gz", 8772);
    }

    #[test]
    fn host_gaps_capped_and_order_by_launch() {
        let mk = |cat, name: &str, ts, dur, corr| TraceEvent {
            cat: Some(cat),
            name: name.into(),
            pid: 1,
            tid: 1,
            ts_us: ts,
            dur_us: dur,
            correlation: corr,
            stream: Some(7),
            ..Default::default()
        };
        let t = Trace {
            events: vec![
                mk(Category::Kernel, "b", 1_000_010.0, 5.0, Some(2)),
                mk(Category::Kernel, "a", 20.0, 5.0, Some(1)),
                mk(Category::CudaRuntime, "cudaLaunchKernel", 0.0, 4.0, Some(1)),
                mk(
                    Category::CudaRuntime,
                    "cudaLaunchKernel",
                    1_000_000.0,
                    4.0,
                    Some(2),
                ),
                mk(
                    Category::UserAnnotation,
                    "ProfilerStep#3",
                    0.0,
                    2_000_000.0,
                    None,
                ),
            ],
            ..Default::default()
        };
        let w = workload_from_trace(&t);
        let names: Vec<String> = w
            .ops
            .iter()
            .map(|o| match o {
                Op::Launch { name, .. } => name.clone(),
                Op::HostGap { ns } => format!("gap{ns}"),
                Op::RangePush(n) => format!("push {n}"),
                Op::RangePop => "pop".into(),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(
            names,
            ["push ProfilerStep#3", "a", "gap100000000", "b", "pop"]
        );
    }
}

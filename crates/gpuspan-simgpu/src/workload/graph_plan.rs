//! `gpuspan-replay --cuda-graph`: which ops of a [`Workload`] a worker that wraps each
//! forward pass in a CUDA graph (torch.compile's "reduce-overhead" mode) would capture, and
//! which captures it can reuse.
//!
//! A *step* is a range whose name is a step scope (`dit.step i/n`, `ProfilerStep#N`:
//! [`gpuspan_core::scope::ScopeKind::Step`]); only outermost ones count. Its *region* is its
//! forward pass: the ops from its first to its last device op (kernel launch, memset,
//! device-to-device copy), widened until every range pushed in it is popped in it and vice
//! versa. The ops of the step before the region (host gaps, [`Op::AllocProbe`], the input's
//! host-to-device copy) and after it (the output's copy back, the scheduler's synchronize
//! and host gap) stay outside the capture and run on every step, as a compiled model's
//! input copy and `.item()` do around its CUDA graph.
//!
//! A region can be captured only when it holds no [`Op::Synchronize`] or [`Op::AllocProbe`]
//! (a synchronisation or allocation inside a capture is illegal: 900 and an invalidated
//! capture, cuda.h `cuThreadExchangeStreamCaptureMode`) and no host↔device copy (the replay
//! worker copies from pageable host memory, which cannot be captured). Work on several
//! streams is captured by forking them into the capture from the stream of the region's
//! first device op (the origin) with an event and joining them back before the end
//! ([`GraphRegion::forked`]). Any step that breaks these rules makes the whole plan fail
//! with a message naming the step, so `--cuda-graph` refuses the workload.
//!
//! Regions whose GPU ops match (kind, kernel name, grid, block, shared memory, stream,
//! bytes; not durations) share one graph: the first is captured, later ones launch it, as a
//! cached CUDA graph is replayed for every call of the same shapes. A replayed graph runs
//! the kernels captured the first time, with their captured durations (the sim reads a
//! kernel's duration from its parameter, which the graph froze).

use std::collections::HashMap;

use gpuspan_core::scope::ScopeKind;

use super::{MemcpyKind, Op, Workload};

/// One captured forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRegion {
    /// Index of the step's [`Op::RangePush`].
    pub step_push: usize,
    /// Index of the region's first op.
    pub start: usize,
    /// One past the region's last op.
    pub end: usize,
    /// Which graph of the plan the region runs (regions with equal GPU ops share one).
    pub graph: usize,
    /// True for the first region of its graph: the one that is captured.
    pub capture: bool,
    /// Workload stream of the region's first GPU op: where the capture begins and the graph
    /// is launched.
    pub origin: u32,
    /// The region's other streams (sorted), forked into the capture and joined back.
    pub forked: Vec<u32>,
    /// Kernel launches in the region.
    pub kernels: u64,
    /// Memcpys in the region (device to device only).
    pub memcpys: u64,
    /// Memsets in the region.
    pub memsets: u64,
}

/// The captured regions of a workload, in op order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphPlan {
    /// One per step with GPU work.
    pub regions: Vec<GraphRegion>,
    /// Number of distinct graphs (captures).
    pub graphs: usize,
}

impl GraphPlan {
    /// The region starting at op `i`, if any.
    pub fn region_at(&self, i: usize) -> Option<&GraphRegion> {
        self.regions
            .binary_search_by_key(&i, |r| r.start)
            .ok()
            .map(|k| &self.regions[k])
    }
}

/// What identifies a GPU op for graph reuse (everything but its duration).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Sig {
    Kernel(String, [u32; 3], [u32; 3], u32, u32),
    Memcpy(MemcpyKind, u64, u32),
    Memset(u64, u32),
}

fn is_step(name: &str) -> bool {
    matches!(ScopeKind::parse(name), ScopeKind::Step { .. })
}

fn gpu_stream(op: &Op) -> Option<u32> {
    match op {
        Op::Launch { stream, .. } | Op::Memcpy { stream, .. } | Op::Memset { stream, .. } | Op::Collective { stream, .. } => {
            Some(*stream)
        }
        _ => None,
    }
}

/// The `(push, pop)` op indices of every outermost step range.
fn steps(w: &Workload) -> Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut open: Option<(usize, usize)> = None;
    for (i, op) in w.ops.iter().enumerate() {
        match op {
            Op::RangePush(n) => {
                if open.is_none() && is_step(n) {
                    open = Some((i, depth));
                }
                depth += 1;
            }
            Op::RangePop => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("op {i}: range pop without a push"))?;
                if let Some((p, d)) = open {
                    if d == depth {
                        out.push((p, i));
                        open = None;
                    }
                }
            }
            _ => {}
        }
    }
    match open {
        Some((p, _)) => Err(format!("op {p}: step range never popped")),
        None => Ok(out),
    }
}

/// Grows `[start, end)` inside the balanced body `[lo, hi)` until every range pushed in it
/// is popped in it and vice versa.
fn balance(ops: &[Op], lo: usize, hi: usize, mut start: usize, mut end: usize) -> (usize, usize) {
    let mut partner = vec![usize::MAX; hi - lo];
    let mut stack = Vec::new();
    for i in lo..hi {
        match ops[i] {
            Op::RangePush(_) => stack.push(i),
            Op::RangePop => {
                let j = stack.pop().expect("a step body is balanced");
                partner[i - lo] = j;
                partner[j - lo] = i;
            }
            _ => {}
        }
    }
    loop {
        let partners = partner[start - lo..end - lo]
            .iter()
            .filter(|&&j| j != usize::MAX);
        let (s1, e1) = partners.fold((start, end), |(s, e), &j| (s.min(j), e.max(j + 1)));
        if (s1, e1) == (start, end) {
            return (start, end);
        }
        (start, end) = (s1, e1);
    }
}

/// The graphs a run has seen so far, by their GPU ops: kept across the requests of a
/// streamed replay ([`plan_with`]), so a request's steps launch the graph an earlier request
/// captured.
#[derive(Debug, Default)]
pub struct GraphKeys(HashMap<Vec<Sig>, usize>);

impl GraphKeys {
    /// Distinct graphs seen.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True before any graph.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The graph plan of `w`, or why `--cuda-graph` cannot replay it (one line).
pub fn plan(w: &Workload) -> Result<GraphPlan, String> {
    plan_with(w, &mut GraphKeys::default())
}

/// [`plan`] of one part of a run (a request) given the graphs of the parts before it:
/// a region whose GPU ops match an earlier part's graph reuses it (`capture` false), and
/// [`GraphPlan::graphs`] counts every graph of the run so far.
pub fn plan_with(w: &Workload, keys: &mut GraphKeys) -> Result<GraphPlan, String> {
    let mut plan = GraphPlan::default();
    let keys = &mut keys.0;
    for (p, q) in steps(w)? {
        let Op::RangePush(step) = &w.ops[p] else {
            unreachable!("steps() returns pushes")
        };
        let body = p + 1..q;
        let device = |i: usize| match &w.ops[i] {
            Op::Launch { .. } | Op::Memset { .. } => true,
            Op::Memcpy { kind, .. } => *kind == MemcpyKind::DtoD,
            _ => false,
        };
        let Some(first) = body.clone().find(|&i| device(i)) else {
            continue; // a step without device work: nothing to capture
        };
        let last = body
            .clone()
            .rev()
            .find(|&i| device(i))
            .expect("first exists");
        let (start, end) = balance(&w.ops, p + 1, q, first, last + 1);
        let mut sig = Vec::new();
        let mut streams: Vec<u32> = Vec::new();
        let (mut kernels, mut memcpys, mut memsets) = (0, 0, 0);
        for (i, op) in w.ops[start..end]
            .iter()
            .enumerate()
            .map(|(k, o)| (start + k, o))
        {
            match op {
                Op::Synchronize => {
                    return Err(format!(
                        "step {step:?} synchronises inside its forward pass (op {i}); a CUDA graph capture cannot contain a synchronisation"
                    ))
                }
                Op::AllocProbe { .. } => {
                    return Err(format!(
                        "step {step:?} allocates device memory inside its forward pass (op {i}); an allocation would invalidate the capture"
                    ))
                }
                Op::Memcpy { kind: kind @ (MemcpyKind::HtoD | MemcpyKind::DtoH), .. } => {
                    return Err(format!(
                        "step {step:?} copies {kind:?} inside its forward pass (op {i}); the replay worker's pageable host buffer cannot be captured"
                    ))
                }
                Op::Launch { name, stream, grid, block, shared_mem_bytes, .. } => {
                    kernels += 1;
                    sig.push(Sig::Kernel(name.clone(), *grid, *block, *shared_mem_bytes, *stream));
                }
                Op::Memcpy { kind, bytes, stream } => {
                    memcpys += 1;
                    sig.push(Sig::Memcpy(*kind, *bytes, *stream));
                }
                Op::Memset { bytes, stream } => {
                    memsets += 1;
                    sig.push(Sig::Memset(*bytes, *stream));
                }
                Op::RangePush(_) | Op::RangePop | Op::HostGap { .. } => {}
                Op::StreamWait { .. } | Op::Collective { .. } => {
                    return Err(format!(
                        "step {step:?} runs a collective or a cross-stream wait inside its forward pass (op {i}); the replay worker captures single-rank forward passes only"
                    ))
                }
            }
            if let Some(s) = gpu_stream(op) {
                if !streams.contains(&s) {
                    streams.push(s);
                }
            }
        }
        let origin = streams[0];
        let mut forked = streams[1..].to_vec();
        forked.sort_unstable();
        let next = keys.len();
        let graph = *keys.entry(sig).or_insert(next);
        plan.regions.push(GraphRegion {
            step_push: p,
            start,
            end,
            graph,
            capture: graph == next,
            origin,
            forked,
            kernels,
            memcpys,
            memsets,
        });
    }
    if plan.regions.is_empty() {
        return Err("the workload has no step range (`dit.step i/n` or `ProfilerStep#N`) with GPU work to capture".into());
    }
    plan.graphs = keys.len();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::preset::{preset, PRESET_STREAM};

    fn k(name: &str, stream: u32, dur_ns: u64) -> Op {
        Op::Launch {
            name: name.into(),
            dur_ns,
            stream,
            grid: [1, 1, 1],
            block: [32, 1, 1],
            shared_mem_bytes: 0,
        }
    }

    #[test]
    fn presets_capture_one_graph_for_all_steps() {
        for name in ["stdit", "wan2.1"] {
            let w = preset(name, 3, 2).unwrap();
            let p = plan(&w).unwrap();
            assert_eq!(p.regions.len(), 6, "{name}: 3 steps × 2 requests");
            assert_eq!(p.graphs, 1, "{name}: every step has the same kernels");
            assert_eq!(p.regions.iter().filter(|r| r.capture).count(), 1);
            let s = w.summary();
            for r in &p.regions {
                assert_eq!((r.origin, r.forked.len()), (PRESET_STREAM, 0));
                // The region holds the step's kernels; the synchronize and gap follow it.
                assert!(matches!(w.ops[r.end], Op::Synchronize), "{name}");
                assert!(
                    matches!(&w.ops[r.step_push], Op::RangePush(n) if n.starts_with("dit.step "))
                );
                assert!(w.ops[r.start..r.end]
                    .iter()
                    .all(|o| !matches!(o, Op::HostGap { .. })));
            }
            let in_steps: u64 = p.regions.iter().map(|r| r.kernels).sum();
            assert!(
                in_steps < s.kernel_count,
                "{name}: text encoder and VAE stay outside"
            );
        }
    }

    #[test]
    fn forks_other_streams_and_keys_on_shapes_not_durations() {
        let step = |i: u32, second: &str, dur: u64| {
            vec![
                Op::RangePush(format!("ProfilerStep#{i}")),
                Op::HostGap { ns: 10 },
                Op::RangePush("aten::mm".into()),
                k("a", 7, dur),
                Op::RangePop,
                Op::HostGap { ns: 10 },
                k(second, 9, 5),
                Op::Memset {
                    bytes: 64,
                    stream: 7,
                },
                Op::Synchronize,
                Op::RangePop,
            ]
        };
        let mut w = Workload::new();
        w.ops.extend(step(0, "b", 100));
        w.ops.extend(step(1, "b", 200));
        w.ops.extend(step(2, "c", 100));
        let p = plan(&w).unwrap();
        assert_eq!(p.graphs, 2);
        let r = &p.regions[0];
        assert_eq!(
            (r.start, r.end, r.origin, r.forked.clone()),
            (2, 8, 7, vec![9])
        );
        assert_eq!((r.kernels, r.memcpys, r.memsets), (2, 0, 1));
        assert_eq!(
            p.regions
                .iter()
                .map(|r| (r.graph, r.capture))
                .collect::<Vec<_>>(),
            vec![(0, true), (0, false), (1, true)]
        );
        assert_eq!(p.region_at(12).map(|r| r.graph), Some(0));
        assert!(p.region_at(3).is_none());
    }

    /// The Kineto fixtures: a step that copies results back to the host between kernels
    /// is refused; single-stream steps without host copies inside are captured.
    #[test]
    fn fixture_traces() {
        let load = |f: &str| {
            let p = std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures/traces"
            ))
            .join(f);
            crate::workload::from_trace::workload_from_trace(
                &gpuspan_export::read_trace(&p).unwrap(),
            )
        };
        let e = plan(&load("h100-bert-small.json.gz")).unwrap_err();
        assert!(e.contains("ProfilerStep#") && e.contains("DtoH"), "{e}");
        let vit = plan(&load("h100-vit-falconsai.json.gz")).unwrap();
        assert_eq!(
            (vit.regions.len(), vit.graphs, vit.regions[0].kernels),
            (1, 1, 154)
        );
        let resnet = plan(&load("v100-resnet50-oldschema.json.gz")).unwrap();
        assert_eq!(
            (resnet.regions.len(), resnet.graphs),
            (6, 1),
            "six identical training steps"
        );
        assert!(resnet
            .regions
            .iter()
            .all(|r| r.forked.is_empty()
                && r.capture == (r.step_push == resnet.regions[0].step_push)));
    }

    #[test]
    fn refuses_what_cannot_be_captured() {
        let wrap = |mut body: Vec<Op>| {
            let mut ops = vec![Op::RangePush("dit.step 0/1".into())];
            ops.append(&mut body);
            ops.push(Op::RangePop);
            Workload { ops }
        };
        let sync = wrap(vec![k("a", 7, 1), Op::Synchronize, k("a", 7, 1)]);
        assert!(plan(&sync).unwrap_err().contains("synchronises"));
        let alloc = wrap(vec![
            k("a", 7, 1),
            Op::AllocProbe { bytes: 1 },
            k("a", 7, 1),
        ]);
        assert!(plan(&alloc).unwrap_err().contains("allocates"));
        let htod = wrap(vec![
            k("a", 7, 1),
            Op::Memcpy {
                kind: MemcpyKind::HtoD,
                bytes: 8,
                stream: 7,
            },
            k("a", 7, 1),
        ]);
        assert!(plan(&htod).unwrap_err().contains("HtoD"));
        // The input copy before the forward pass and the output copy after it stay outside.
        let io = wrap(vec![
            Op::Memcpy {
                kind: MemcpyKind::HtoD,
                bytes: 8,
                stream: 7,
            },
            k("a", 7, 1),
            Op::Memcpy {
                kind: MemcpyKind::DtoD,
                bytes: 8,
                stream: 7,
            },
            Op::Memcpy {
                kind: MemcpyKind::DtoH,
                bytes: 8,
                stream: 7,
            },
        ]);
        let r = plan(&io).unwrap().regions[0].clone();
        assert_eq!((r.start, r.end, r.kernels, r.memcpys), (2, 4, 1, 1));
        let open = wrap(vec![
            Op::RangePush("ffn".into()),
            k("a", 7, 1),
            Op::Synchronize,
            Op::RangePop,
        ]);
        let r = plan(&open).unwrap().regions[0].clone();
        assert_eq!(
            (r.start, r.end),
            (2, 3),
            "a range around the whole forward pass stays outside"
        );
        let straddle = wrap(vec![
            k("a", 7, 1),
            Op::RangePush("ffn".into()),
            Op::Synchronize,
            k("a", 7, 1),
            Op::RangePop,
        ]);
        assert!(plan(&straddle).unwrap_err().contains("synchronises"));
        let none = Workload {
            ops: vec![k("a", 7, 1)],
        };
        assert!(plan(&none).unwrap_err().contains("no step range"));
        // Allocation before the forward pass and sync after it are fine.
        let ok = wrap(vec![
            Op::AllocProbe { bytes: 1 },
            k("a", 7, 1),
            Op::Synchronize,
            Op::HostGap { ns: 5 },
        ]);
        let p = plan(&ok).unwrap();
        assert_eq!((p.regions[0].start, p.regions[0].end), (2, 3));
    }
}

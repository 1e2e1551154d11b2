//! The incremental span assembler: the agent's collector feeds it scope events and decoded
//! records as they arrive and polls it; it hands back each step's and request's spans once
//! that unit of work is complete.
//!
//! Units of work: a step scope (its GPU work, whatever stage scopes it contains), and a
//! request's *direct* work (launched inside the request but outside any step, like the VAE
//! decode). A unit is complete when its scope has ended and it has as many GPU records as
//! it made launches. The launch count comes, exactly, with the scope's end event when the
//! agent counts launches in its CUPTI API callbacks (`launches` of [`ScopeEvent::End`]; the
//! request's direct work is its count minus its steps'). Without that count the assembler
//! falls back to counting the launch / copy / set API records that have arrived
//! ([`gpu_work_expected`]), after waiting `settle_ms` from the end so a periodic flush can
//! deliver them; this can finish a step early when its API records sit in a buffer CUPTI
//! has not delivered yet (records of a still-running kernel hold the whole buffer back),
//! which the late-record counter then shows. CUDA graph launches come apart
//! (`graph_launches`): each makes one kernel record per graph node, all with the launch's
//! correlation id and the graph's `graphId`. A unit with graph launches whose graphs have
//! been seen settle once (the first falls back to `settle_ms`) is complete when each
//! launch has as many kernels as its graph made then ([`SpanAssembler`]'s learned counts)
//! and the rest number its ordinary launches. Either way a unit is finalized `grace_ms`
//! after its end with what arrived (a launch that failed, an unknown call), counted in
//! [`AssemblerStats::units_timed_out`]. A request is complete when
//! it has ended and all its units are. Records that arrive for a finalized unit are
//! counted as late (they remain in the capture file, which is built separately).
//!
//! A request that announced no step scope (fine mode) has its steps detected from its own
//! kernels when its direct work is finalized (`detect_steps`, [`crate::step_detect`]): the
//! detected `dit.step` spans carry `gpuspan.step_source=detected`, and their timings feed the
//! step histogram like announced ones.
//!
//! Coarse mode ([`SpanOptions::coarse`]): no activity records at all. The agent times
//! scopes with CUDA events and feeds each scope's GPU interval ([`ScopeGpuTime`], via
//! [`SpanAssembler::observe_scope_time`]); a stage scope's interval stands in for its
//! kernels, and a step or request is complete once its own interval is in (the agent
//! resolves intervals in scope-end order, so children come first). Spans keep their fine
//! names; they carry `gpuspan.timing` (how they were measured) and `gpuspan.scope_count`
//! instead of kernel counts, and there are no `cuda.kernel` spans.
//!
//! Time: records and scopes are in CUPTI ns (CLOCK_REALTIME on Linux, CUPTI-NOTES §2);
//! spans are in Unix ns = CUPTI ns + [`SpanOptions::clock_offset_ns`], which the agent
//! measures once (≈ 0 with real CUPTI; the simulated H100's virtual clock needs it).

use super::context::{ContextProblem, TraceContext};
use super::ids;
use super::model::{AttrValue, Finalized, RequestTiming, ScopeGpuTime, SpanRecord, StepTiming, TimingSource};
use crate::activity::{ActivityRecord, ApiDomain, GPUSPAN_EXTERNAL_KIND};
use crate::classify::Classifier;
use crate::join::ScopeTable;
use crate::scope::{ScopeEvent, ScopeId, ScopeKind};
use std::borrow::Cow;
use crate::id_hash::{IdHashMap, IdHashSet};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

/// Does an API call with this callback id make GPU activity records: exactly one (a kernel
/// launch, a memcpy, a memset) or, for a graph launch, at least one? Driver ids from
/// `cupti_driver_cbid.h`, runtime ids from `cupti_runtime_cbid.h` (12.0 … 13.5 agree).
pub fn gpu_work_expected(domain: ApiDomain, cbid: u32) -> bool {
    match domain {
        ApiDomain::Driver => DRIVER_GPU_WORK_CBIDS.contains(&cbid) || DRIVER_GRAPH_LAUNCH_CBIDS.contains(&cbid),
        ApiDomain::Runtime => {
            RUNTIME_GPU_WORK_CBIDS.contains(&cbid)
                || RUNTIME_GPU_WORK_CBIDS_13.contains(&cbid)
                || RUNTIME_GRAPH_LAUNCH_CBIDS.contains(&cbid)
        }
    }
}

/// Driver API callback ids of calls that make one GPU activity record
/// (`cupti_driver_cbid.h`, the same in every CUPTI 12.0 … 13.5 header):
/// cuMemsetD8Async, cuMemsetD32Async, cuMemsetD8_v2, cuMemsetD32_v2, cuMemcpyHtoD_v2 …
/// cuMemcpyDtoDAsync_v2, cuMemcpy, cuMemcpyAsync, cuLaunchKernel, cuLaunchKernel_ptsz,
/// cuLaunchCooperativeKernel(_ptsz), cuLaunchKernelEx(_ptsz). Graph launches make one record
/// per node and are not here.
pub const DRIVER_GPU_WORK_CBIDS: [u32; 18] =
    [216, 220, 249, 251, 276, 277, 278, 279, 280, 281, 305, 306, 307, 442, 477, 478, 652, 653];

/// Runtime API callback ids of calls that make one GPU activity record
/// (`cupti_runtime_cbid.h`, the same in every CUPTI 12.0 … 13.5 header): cudaMemcpy,
/// cudaMemcpyAsync, cudaMemset, cudaMemsetAsync, cudaLaunchKernel(_ptsz),
/// cudaMemcpyAsync_ptsz, cudaLaunchCooperativeKernel(_ptsz), cudaLaunchKernelExC(_ptsz).
pub const RUNTIME_GPU_WORK_CBIDS: [u32; 11] = [31, 41, 49, 51, 211, 214, 225, 269, 270, 430, 431];

/// Graph-launch callback ids (`cupti_driver_cbid.h` / `cupti_runtime_cbid.h`, the same in
/// 12.0 … 13.5): cuGraphLaunch(_ptsz) 514 / 515 in the DRIVER domain, cudaGraphLaunch(_ptsz)
/// 311 / 312 in the RUNTIME domain. One call runs every node of the graph: its kernel,
/// memcpy and memset records all carry the call's correlation id, so the number of records
/// is the graph's, not one (CUPTI-NOTES §2 "Graphs").
pub const DRIVER_GRAPH_LAUNCH_CBIDS: [u32; 2] = [514, 515];
/// See [`DRIVER_GRAPH_LAUNCH_CBIDS`].
pub const RUNTIME_GRAPH_LAUNCH_CBIDS: [u32; 2] = [311, 312];

/// Runtime callback ids that exist from CUPTI 13.0 on: `__cudaLaunchKernel(_ptsz)_v13000`,
/// what nvcc 13's `<<<>>>` launch stub calls (`crt/host_runtime.h`) instead of
/// cudaLaunchKernel. Enabled only on CUPTI 13 (an unknown cbid is an error on 12.x).
pub const RUNTIME_GPU_WORK_CBIDS_13: [u32; 2] = [505, 506];

/// Settings of a [`SpanAssembler`].
#[derive(Debug, Clone)]
pub struct SpanOptions {
    /// Most `cuda.kernel` spans per trace (`GPUSPAN_KERNEL_SPAN_BUDGET`, default 20 000);
    /// beyond it stage spans stay exact and `gpuspan.kernel_spans_omitted` says how many
    /// kernels have no span.
    pub kernel_span_budget: u64,
    /// Make `cuda.kernel` spans at all (fine mode).
    pub kernel_spans: bool,
    /// Unix ns − CUPTI ns.
    pub clock_offset_ns: i64,
    /// Seed of trace ids made for requests without a usable traceparent (pid and start time).
    pub seed: u64,
    /// Minimum wait after a unit's end is seen before it may complete, caller's ms.
    pub settle_ms: u64,
    /// Longest wait for a unit's missing GPU records after its end, caller's ms.
    pub grace_ms: u64,
    /// Most GPU records held for unfinished units; more are dropped and counted.
    pub max_pending_gpu: usize,
    /// Coarse mode: spans come from scope intervals ([`SpanAssembler::observe_scope_time`]),
    /// not from activity records.
    pub coarse: bool,
    /// `(rank, world_size)` of a process of a distributed job (the launcher's `RANK` /
    /// `WORLD_SIZE`): `gpu.request` spans carry `gpuspan.rank` and `gpuspan.world_size`.
    pub rank: Option<(u32, u32)>,
    /// The process's `TRACEPARENT` environment variable (OpenTelemetry's environment
    /// variables as context carriers, `specification/context/env-carriers.md`): the parent
    /// of every request scope that names no traceparent itself, so a launcher can put all
    /// the ranks of one job under one trace without touching their code.
    pub env_traceparent: Option<String>,
    /// NVML UUID (`GPU-…`) of each CUDA device the process sees, by CUDA ordinal (a
    /// record's `deviceId`); empty when unknown. `gpu.request` spans carry
    /// `gpu.device.uuid` of their device, and, in a process that sees more than one device
    /// (where the resource's one UUID cannot say which), so do kernel spans.
    pub device_uuids: Vec<Arc<str>>,
}

impl Default for SpanOptions {
    fn default() -> Self {
        SpanOptions {
            kernel_span_budget: 20_000,
            kernel_spans: true,
            clock_offset_ns: 0,
            seed: 0,
            settle_ms: 600,
            grace_ms: 10_000,
            rank: None,
            env_traceparent: None,
            device_uuids: Vec::new(),
            max_pending_gpu: 4 << 20,
            coarse: false,
        }
    }
}

/// Counters of an assembler.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Spans produced.
    pub spans: u64,
    /// Requests finalized.
    pub requests: u64,
    /// Steps finalized.
    pub steps: u64,
    /// GPU records outside any request (no spans for them).
    pub gpu_outside_request: u64,
    /// GPU records that arrived after their unit was finalized.
    pub gpu_late: u64,
    /// GPU records dropped because `max_pending_gpu` were held.
    pub gpu_dropped: u64,
    /// Units finalized by `grace_ms` with fewer GPU records than launches.
    pub units_timed_out: u64,
    /// Kernels without a `cuda.kernel` span because of the budget.
    pub kernel_spans_omitted: u64,
    /// Requests that named no traceparent.
    pub context_missing: u64,
    /// Requests whose traceparent did not parse.
    pub context_malformed: u64,
    /// Records and API calls that were never tied to a scope (no external correlation), and
    /// coarse intervals of scopes the table does not know.
    pub unattributed: u64,
    /// Scopes (stages, steps, requests) that ran inside a CUDA-graph capture: coarse mode's
    /// [`TimingSource::Captured`] intervals and fine mode's [`ScopeEvent::InCapture`];
    /// counted, no span.
    pub captured_scopes: u64,
    /// Steps detected from the kernels of requests that announced none (fine mode), among
    /// [`AssemblerStats::steps`].
    pub steps_detected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpuKind {
    Kernel,
    Memcpy,
    Memset,
    /// A stage scope's coarse interval, standing in for its kernels.
    Scope(TimingSource),
}

#[derive(Debug, Clone)]
struct Gpu {
    kind: GpuKind,
    /// Its name, in the assembler's [`GpuNames`].
    name: GpuName,
    /// Its stage, in the assembler's [`StageNames`].
    stage: StageIx,
    start_ns: u64,
    end_ns: u64,
    device: u32,
    stream: u32,
    corr: u32,
    grid: [i32; 3],
    block: [i32; 3],
    registers: u16,
    shared_bytes: i64,
    bytes: u64,
    /// CUPTI `graphId` of a graph-launched kernel, 0 otherwise.
    graph_id: u32,
}

impl Gpu {
    /// A memcpy / memset: `(start_ns, end_ns, device, stream, correlation id, bytes)`; its
    /// stage is `memcpy` / `memset`, interned in `stages`.
    fn copy(kind: GpuKind, name: GpuName, stages: &mut StageNames, (start_ns, end_ns, device, stream, corr, bytes): (u64, u64, u32, u32, u32, u64)) -> Gpu {
        Gpu {
            kind,
            name,
            stage: stages.of_static(if kind == GpuKind::Memset { "memset" } else { "memcpy" }),
            start_ns,
            end_ns: end_ns.max(start_ns),
            device,
            stream,
            corr,
            grid: [0; 3],
            block: [0; 3],
            registers: 0,
            shared_bytes: 0,
            bytes,
            graph_id: 0,
        }
    }
}

#[derive(Debug)]
enum Pending {
    Gpu(Gpu),
    Api { domain: ApiDomain, corr: u32 },
}

#[derive(Debug, Default)]
struct Unit {
    request: ScopeId,
    /// Exact launches of the unit, once its end (and, for a request's own work, its
    /// steps' ends) reported them.
    launches: Option<u32>,
    /// Exact CUDA graph launches of the unit, reported with `launches` (0 until then).
    graph_launches: u32,
    /// Kernels received per graph launch of the unit, at most [`MAX_GRAPH_LAUNCHES_TRACKED`].
    graph_work: Vec<GraphWork>,
    expected_driver: u32,
    expected_runtime: u32,
    received: u32,
    gpu: Vec<Gpu>,
    end_seen_ms: Option<u64>,
    /// Coarse mode: the unit's own scope interval, once measured.
    scope_time: Option<(u64, u64, TimingSource)>,
}

/// The kernels of one graph launch that a unit has received: CUPTI gives every kernel of a
/// graph launch the launch call's correlation id and the graph's `graphId` (CUPTI-NOTES §1
/// "Graphs").
#[derive(Debug, Clone, Copy)]
struct GraphWork {
    corr: u32,
    graph_id: u32,
    kernels: u32,
}

/// Graph launches per unit whose kernels are counted apart; a unit with more waits
/// `settle_ms` as one whose graphs are not known yet.
const MAX_GRAPH_LAUNCHES_TRACKED: usize = 256;

/// Graphs whose kernels per launch the assembler remembers (a worker instantiates a few per
/// shape); later ones are not learned, and their units wait `settle_ms`.
const MAX_GRAPHS_LEARNED: usize = 4096;

impl Unit {
    /// Counts a kernel of graph launch `corr` (graph `graph_id`) among the unit's graph work,
    /// newest launch first (a launch's kernels mostly arrive together); at most
    /// [`MAX_GRAPH_LAUNCHES_TRACKED`] launches.
    fn note_graph_kernel(&mut self, corr: u32, graph_id: u32) {
        if let Some(w) = self.graph_work.iter_mut().rev().find(|w| w.corr == corr) {
            w.kernels += 1;
        } else if self.graph_work.len() < MAX_GRAPH_LAUNCHES_TRACKED {
            self.graph_work.push(GraphWork { corr, graph_id, kernels: 1 });
        }
    }

    fn expected(&self) -> u32 {
        if self.expected_runtime > 0 {
            self.expected_runtime
        } else {
            self.expected_driver
        }
    }
}

/// A step unit as [`SpanAssembler::emit_unit`] needs it: an announced step scope's, or one
/// detected in a request's kernels.
#[derive(Debug)]
struct StepOf {
    span_id: [u8; 8],
    index: u64,
    count: Option<u64>,
    /// Fallback interval (CUPTI ns) when the step has no GPU work.
    begin_ns: u64,
    end_ns: u64,
    /// The scope's name (`dit.step i/n`), for `gpuspan.scope`.
    name: Arc<str>,
    /// Detected, not announced: `gpuspan.step_source=detected`.
    detected: bool,
}

/// A request's GPU work split by [`detect_steps`]: each detected step with its work, and the
/// rest.
type DetectedSplit = (Vec<(StepOf, Vec<Gpu>)>, Vec<Gpu>);

/// Fewest kernels of a request worth running step detection on.
const MIN_KERNELS_TO_DETECT: usize = 8;

/// Splits the GPU work of a request that announced no step into steps found in its kernel
/// sequence ([`crate::step_detect::detect_kernels`]: repeating forward passes with evidence
/// that each is one), numbered `dit.step i/n`. A record belongs to the step whose time
/// range (its compute-stream kernels, first start to last end) holds its start; the rest
/// stays the request's direct work (`Ok((steps, rest))`). `Err(gpu)` gives the work back
/// untouched when there is no evidence of two or more steps.
fn detect_steps(gpu: Vec<Gpu>, request_span: &[u8; 8], names: &GpuNames) -> Result<DetectedSplit, Vec<Gpu>> {
    let kernels = gpu.iter().filter(|g| g.kind == GpuKind::Kernel);
    if kernels.clone().count() < MIN_KERNELS_TO_DETECT {
        return Err(gpu);
    }
    let base = kernels.clone().map(|g| g.start_ns).min().unwrap_or(0);
    let us = |ns: u64| ns.saturating_sub(base) as f64 / 1e3;
    let d = crate::step_detect::detect_kernels(kernels.map(|g| crate::step_detect::KernelAt {
        row: (g.device as i64, g.stream as i64),
        start_us: us(g.start_ns),
        end_us: us(g.end_ns),
        name: names.str(&g.name),
    }));
    if d.evidence == crate::step_detect::Evidence::None || d.steps.len() < 2 {
        return Err(gpu);
    }
    let n = d.steps.len() as u64;
    let ns = |u: f64| base + (u * 1e3).round().max(0.0) as u64;
    let mut steps: Vec<(StepOf, Vec<Gpu>)> = d
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let step = StepOf {
                span_id: ids::span_id(request_span, &[b"dit.step.detected", &(i as u64).to_be_bytes()]),
                index: i as u64,
                count: Some(n),
                begin_ns: ns(st.start_us),
                end_ns: ns(st.end_us),
                name: Arc::from(st.name.as_str()),
                detected: true,
            };
            (step, Vec::new())
        })
        .collect();
    let mut rest = Vec::new();
    for g in gpu {
        let at = us(g.start_ns);
        match d.steps.iter().position(|st| st.start_us <= at && at <= st.end_us) {
            Some(i) => steps[i].1.push(g),
            None => rest.push(g),
        }
    }
    Ok((steps, rest))
}

#[derive(Debug)]
struct Request {
    ctx: TraceContext,
    span_id: [u8; 8],
    trace_state: Arc<str>,
    model: Arc<str>,
    frames: Option<u64>,
    attrs: Vec<(String, String)>,
    context_problem: Option<ContextProblem>,
    open_units: u32,
    ended: bool,
    kernel_count: u64,
    activity_count: u64,
    busy_ns: u64,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
    steps: u64,
    vae: Option<(u64, u64)>,
    kernel_spans: u64,
    omitted: u64,
    /// Launches of its steps, summed from their end events; `None` once a step's count was
    /// unknown.
    step_launches: Option<u64>,
    /// Graph launches of its steps, summed from their end events.
    step_graph_launches: u64,
    /// Coarse mode: the least faithful timing of its units.
    timing: Option<TimingSource>,
    /// Step scopes begun under it (0: steps are detected from its kernels, fine mode).
    step_scopes: u64,
    /// Its steps were detected, not announced.
    steps_detected: bool,
    /// Bit `d` set when its kernels, copies or memsets ran on CUDA device `d` (< 64), or,
    /// in coarse mode, when its scope began with device `d` current.
    devices: u64,
}

/// A stage name's index in a [`StageNames`].
type StageIx = u32;

/// The stage names of the assembler's GPU records, each held once (one `Arc<str>`), a record
/// holding its stage as an index: a record's stage is copied, compared and dropped as an
/// integer. As a shared `Arc<str>` per record, every copy and drop was a locked add on the
/// name's count, which waits for the store buffer to drain (issue 14, item 1). A scope's
/// stage is looked up by its `&'static str`'s address and length (stage names come from scope
/// kinds and the classifier's rules, a fixed set), so a lookup hashes two integers
/// ([`crate::id_hash`]); std's SipHash of the names' bytes was 12–15 % of the collector
/// thread's samples in fine mode. A name met first as a kernel's class is found by content,
/// once per kernel name ([`GpuNames::class_stage`]). Equal names share one index.
#[derive(Debug, Default)]
struct StageNames {
    by_static: IdHashMap<(usize, usize), StageIx>,
    by_name: HashMap<Arc<str>, StageIx>,
    names: Vec<Arc<str>>,
}

impl StageNames {
    /// The index of `stage`, a name with a fixed address.
    fn of_static(&mut self, stage: &'static str) -> StageIx {
        let key = (stage.as_ptr() as usize, stage.len());
        if let Some(&ix) = self.by_static.get(&key) {
            return ix;
        }
        let ix = self.of_name(stage);
        self.by_static.insert(key, ix);
        ix
    }

    /// The index of the stage named `name`, added when new.
    fn of_name(&mut self, name: &str) -> StageIx {
        if let Some(&ix) = self.by_name.get(name) {
            return ix;
        }
        let ix = self.names.len() as StageIx;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.by_name.insert(name, ix);
        ix
    }

    /// The name of stage `ix` (an index this table gave; `other` for any other).
    fn name(&self, ix: StageIx) -> Arc<str> {
        self.names.get(ix as usize).cloned().unwrap_or_else(|| Arc::from(crate::classify::OTHER))
    }
}

/// A GPU record's name: an index in the assembler's [`GpuNames`], or, once that table is
/// full, the name itself.
#[derive(Debug, Clone)]
enum GpuName {
    Ix(u32),
    Own(Arc<str>),
}

/// The names of the assembler's GPU records, each held once: a record holds an index, so
/// taking and dropping a kernel's name costs no locked add on its `Arc` count (which waits
/// for the store buffer to drain: 4 % of the collector thread for the name alone; issue 14,
/// item 1). A kernel name is looked up by the address of the decoder's interned `Arc`
/// (`gpuspan_cupti::decode::NameCache`; the table holds the `Arc`, so the address is not
/// reused while it is here), a fixed name (memcpy kinds, stage scopes) by its `&'static
/// str`'s address and length. At most [`GPU_NAMES_MAX`] names, never let go of while the
/// assembler lives (records may hold their indices); past that, a record holds its own
/// `Arc`. Each name also keeps its class stage once asked for ([`GpuNames::class_stage`]).
#[derive(Debug, Default)]
struct GpuNames {
    by_arc: IdHashMap<usize, u32>,
    by_static: IdHashMap<(usize, usize), u32>,
    /// Each name, with the stage of its class by the caller's rules once known, and whether
    /// it is an NCCL / RCCL kernel's ([`crate::classify::is_collective_kernel`], asked once
    /// per name instead of reading the name's bytes for every record).
    names: Vec<(Arc<str>, Option<StageIx>, bool)>,
}

/// Most names a [`GpuNames`] holds (the classifier's by-address cache's bound).
pub(crate) const GPU_NAMES_MAX: usize = crate::classify::INTERNED_CACHE_MAX;

impl GpuNames {
    /// The name of a kernel, `name` as the decoder interned it, and whether it is a
    /// collective kernel's.
    fn of_arc(&mut self, name: &Arc<str>) -> (GpuName, bool) {
        let addr = Arc::as_ptr(name) as *const u8 as usize;
        let ix = match self.by_arc.get(&addr) {
            Some(&ix) => ix,
            None => match self.add(name.clone()) {
                Some(ix) => {
                    self.by_arc.insert(addr, ix);
                    ix
                }
                None => return (GpuName::Own(name.clone()), crate::classify::is_collective_kernel(name)),
            },
        };
        (GpuName::Ix(ix), self.names.get(ix as usize).is_some_and(|n| n.2))
    }

    /// Whether `n` is an NCCL / RCCL kernel's name.
    fn is_collective(&self, n: &GpuName) -> bool {
        match n {
            GpuName::Ix(ix) => self.names.get(*ix as usize).is_some_and(|n| n.2),
            GpuName::Own(a) => crate::classify::is_collective_kernel(a),
        }
    }

    /// A name with a fixed address.
    fn of_static(&mut self, name: &'static str) -> GpuName {
        let key = (name.as_ptr() as usize, name.len());
        if let Some(&ix) = self.by_static.get(&key) {
            return GpuName::Ix(ix);
        }
        match self.add(Arc::from(name)) {
            Some(ix) => {
                self.by_static.insert(key, ix);
                GpuName::Ix(ix)
            }
            None => GpuName::Own(Arc::from(name)),
        }
    }

    fn add(&mut self, name: Arc<str>) -> Option<u32> {
        if self.names.len() >= GPU_NAMES_MAX {
            return None;
        }
        let collective = crate::classify::is_collective_kernel(&name);
        self.names.push((name, None, collective));
        Some(self.names.len() as u32 - 1)
    }

    /// The stage of a kernel that no stage scope decides: the class of its name (`n`,
    /// `text` its text as the decoder interned it) by `classifier`'s rules, interned in
    /// `stages`; looked up once per name held (a name past the table's bound is classified
    /// each time, the classifier caching its class). Assumes one classifier (the caller's
    /// rules) for the assembler's life.
    fn class_stage(&mut self, n: &GpuName, text: &Arc<str>, classifier: &mut Classifier, stages: &mut StageNames) -> StageIx {
        let held = match n {
            GpuName::Ix(ix) => self.names.get_mut(*ix as usize),
            GpuName::Own(_) => None,
        };
        match held {
            Some((_, Some(stage), _)) => *stage,
            Some((_, class, _)) => *class.insert(stages.of_name(&classifier.class_of(text))),
            None => stages.of_name(&classifier.class_of(text)),
        }
    }

    /// The text of `n`.
    fn str<'a>(&'a self, n: &'a GpuName) -> &'a str {
        match n {
            GpuName::Ix(ix) => self.names.get(*ix as usize).map_or("", |(a, _, _)| &**a),
            GpuName::Own(a) => a,
        }
    }

    /// `n` as a shared string.
    fn arc(&self, n: &GpuName) -> Arc<str> {
        match n {
            GpuName::Ix(ix) => self.names.get(*ix as usize).map_or_else(|| Arc::from(""), |(a, _, _)| a.clone()),
            GpuName::Own(a) => a.clone(),
        }
    }
}

/// Where records launched in one scope go: its unit (its step's while that step's unit is
/// open, else its request's) and its stage scope's name, interned. Consecutive records
/// nearly always share a scope (a stage's launches), and finding these cost two hash
/// lookups per record (issue 14, item 1).
///
/// Found once per run of records from one scope: while the scope and the scope table's
/// [`ScopeTable::version`] stay, the scope's attribution cannot change, so a hit needs no
/// lookup in the scope table either.
#[derive(Debug, Clone)]
struct PlaceCache {
    scope: ScopeId,
    /// The [`ScopeTable::version`] the scope was read from.
    table: u64,
    /// The scope's request (`None`: launched outside any request).
    request: Option<ScopeId>,
    /// Its unit (`None` exactly when `request` is).
    unit: Option<ScopeId>,
    stage: Option<StageIx>,
}

/// Builds spans incrementally. Not thread-safe by design: the collector thread owns it.
#[derive(Debug)]
pub struct SpanAssembler {
    opts: SpanOptions,
    corr_scope: super::corr_runs::CorrelationRuns,
    /// The run of `corr_scope` the last lookup found ([`super::corr_runs::CorrelationRuns::find_run`]).
    corr_hint: usize,
    /// Where the last placed record's scope put its records ([`PlaceCache`]); cleared when
    /// `units` gains or loses a unit.
    place_cache: Option<PlaceCache>,
    /// Scopes with mapped correlation ids that the scope table did not know at the last
    /// release ([`SpanAssembler::release_correlations`]).
    unseen_scopes: IdHashSet<ScopeId>,
    /// Finalized requests whose correlation ids are still mapped (for late records), with
    /// the generation they were finalized in, oldest first.
    finalized: std::collections::VecDeque<(u64, ScopeId)>,
    waiting: Vec<(u64, Pending)>,
    units: IdHashMap<ScopeId, Unit>,
    requests: IdHashMap<ScopeId, Request>,
    held_gpu: usize,
    /// Kernels one launch of each CUDA graph made (`graphId` → the most seen in a settled
    /// unit), at most [`MAX_GRAPHS_LEARNED`] graphs.
    graph_kernels: IdHashMap<u32, u32>,
    generation: u64,
    problems: Vec<ContextProblem>,
    stage_names: StageNames,
    /// The names of the GPU records held ([`GpuNames`]).
    gpu_names: GpuNames,
    /// Counters.
    pub stats: AssemblerStats,
}

/// Polls a record waits for its external correlation record before it counts as
/// unattributed (the agent polls every 100 ms and flushes every 500 ms: 2 s covers several
/// flushes, since API and GPU records may come in different buffers).
pub(crate) const WAIT_GENERATIONS: u64 = 20;

/// How long after its end a unit that is not complete waits before its record vector is
/// shrunk to fit ([`SpanAssembler::finalize_ready`]): its records are in by then (a launch's
/// records come in the next buffers), and it may wait `settle_ms` more. In the flood of
/// `scripts/bench-flood.sh` the first request's graph-launched steps (1,132 kernels each,
/// in vectors of 2,048) all wait, until their graph is learned: 45 % of what they held was
/// spare capacity.
pub const SHRINK_AFTER_MS: u64 = 50;

/// Whether all of a unit's GPU records are in when it made `launches` ordinary launches and
/// `u.graph_launches` graph launches: every graph launch has kernels in, from a graph whose
/// kernels per launch are known (`graph_kernels`), as many as that, and the rest of its
/// records number its ordinary launches. A graph that made fewer kernels this time (a
/// conditional node) leaves the unit to the `settle_ms` rule; one that made more finishes it
/// early, and its last kernels count as late.
fn graph_work_complete(u: &Unit, launches: u32, graph_kernels: &IdHashMap<u32, u32>) -> bool {
    if u.graph_work.len() != u.graph_launches as usize {
        return false;
    }
    let mut in_graphs = 0u32;
    for w in &u.graph_work {
        match graph_kernels.get(&w.graph_id) {
            Some(&k) if w.kernels >= k => in_graphs += w.kernels,
            _ => return false,
        }
    }
    u.received.saturating_sub(in_graphs) >= launches
}

/// CUPTI ns + `offset_ns` = Unix ns (clamped at 0).
fn to_unix(cupti_ns: u64, offset_ns: i64) -> u64 {
    (cupti_ns as i128 + offset_ns as i128).max(0) as u64
}

/// `(communication, exposed communication)` of a unit's kernels, ns: the union of its
/// collective kernels' intervals (stage `communication`), and the part of it no other kernel
/// overlaps (on any stream of the device: a step runs on one).
/// `communication` is that stage's index. Most units have none: the caller, which has
/// already read every record, calls this only for a unit with one.
fn comm_times(gpu: &[Gpu], communication: StageIx) -> (u64, u64) {
    use crate::interval::{length, overlap, union};
    let kernels = gpu.iter().filter(|g| g.kind == GpuKind::Kernel && g.end_ns > g.start_ns);
    let is_comm = |g: &&Gpu| g.stage == communication;
    let (comm, compute): (Vec<&Gpu>, Vec<&Gpu>) = kernels.partition(is_comm);
    let comm = union(comm.iter().map(|g| (g.start_ns, g.end_ns)).collect());
    let compute = union(compute.iter().map(|g| (g.start_ns, g.end_ns)).collect());
    let total = length(&comm);
    (total, total - overlap(&comm, &compute))
}

/// The unit a GPU record of the scope `cache` describes goes to; `None` when it goes
/// nowhere, counted: launched outside any request (`gpu_outside_request`), or after its
/// unit was finalized (`gpu_late`; `gpu_outside_request` when its request is gone too).
fn unit_of_gpu<'u>(
    cache: &PlaceCache,
    units: &'u mut IdHashMap<ScopeId, Unit>,
    requests: &IdHashMap<ScopeId, Request>,
    stats: &mut AssemblerStats,
    scopes: &ScopeTable,
) -> Option<&'u mut Unit> {
    let (Some(request), Some(key)) = (cache.request, cache.unit) else {
        stats.gpu_outside_request += 1;
        return None;
    };
    let unit = units.get_mut(&key);
    if unit.is_none() {
        if requests.contains_key(&request) || scopes.get(request).is_some() {
            stats.gpu_late += 1;
        } else {
            stats.gpu_outside_request += 1;
        }
    }
    unit
}

/// The stage of a kernel launched in a stage scope of stage `scope_stage`: that stage, or
/// `communication` for an NCCL / RCCL kernel (`collective`), as
/// [`crate::classify::scoped_stage`] says.
fn scoped_kernel_stage(stages: &mut StageNames, scope_stage: StageIx, collective: bool) -> StageIx {
    if collective {
        stages.of_static(crate::classify::COMMUNICATION)
    } else {
        scope_stage
    }
}

/// Counts a GPU record of graph launch `(corr, graph_id)` (`graph_id` 0: none) as received
/// by `unit` and holds it there, built by `make` where it is kept (built on the stack and
/// moved in, it was copied with 16-byte loads over the narrower stores that had just built
/// it; issue 14, item 1); past `max` records held (`held`) it is dropped, counted in
/// `gpu_dropped`.
#[inline(always)]
fn hold_gpu(unit: &mut Unit, held: &mut usize, max: usize, stats: &mut AssemblerStats, (corr, graph_id): (u32, u32), make: impl FnOnce() -> Gpu) {
    unit.received += 1;
    if graph_id != 0 {
        unit.note_graph_kernel(corr, graph_id);
    }
    if *held >= max {
        stats.gpu_dropped += 1;
    } else {
        *held += 1;
        unit.gpu.push(make());
    }
}

fn attr_str(k: &'static str, v: impl Into<Arc<str>>) -> (Cow<'static, str>, AttrValue) {
    (Cow::Borrowed(k), AttrValue::Str(v.into()))
}

fn attr_int(k: &'static str, v: i64) -> (Cow<'static, str>, AttrValue) {
    (Cow::Borrowed(k), AttrValue::Int(v))
}

impl SpanAssembler {
    /// An empty assembler.
    pub fn new(opts: SpanOptions) -> SpanAssembler {
        SpanAssembler {
            opts,
            corr_scope: Default::default(),
            corr_hint: 0,
            place_cache: None,
            unseen_scopes: Default::default(),
            finalized: std::collections::VecDeque::new(),
            waiting: Vec::new(),
            units: IdHashMap::default(),
            requests: IdHashMap::default(),
            held_gpu: 0,
            graph_kernels: IdHashMap::default(),
            generation: 0,
            problems: Vec::new(),
            stage_names: StageNames::default(),
            gpu_names: GpuNames::default(),
            stats: AssemblerStats::default(),
        }
    }

    /// Options in use.
    pub fn options(&self) -> &SpanOptions {
        &self.opts
    }

    /// Trace-context problems seen since the last call (for a rate-limited warning).
    pub fn take_context_problems(&mut self) -> Vec<ContextProblem> {
        std::mem::take(&mut self.problems)
    }

    /// Requests and units not finalized yet.
    pub fn open_counts(&self) -> (usize, usize) {
        (self.requests.len(), self.units.len())
    }

    /// Whether request scope `id` is still being assembled (begun and not finalized).
    pub fn is_open_request(&self, id: ScopeId) -> bool {
        self.requests.contains_key(&id)
    }

    /// Whether unit `id` (a step, or a request's own unit) is still collecting: its scope is
    /// open, or its GPU records may still be arriving. A finished step's records are all in.
    pub fn is_open_unit(&self, id: ScopeId) -> bool {
        self.units.contains_key(&id)
    }

    /// Observes a scope event, after it was applied to `scopes`.
    pub fn observe_scope(&mut self, ev: &ScopeEvent, scopes: &ScopeTable) {
        match ev {
            ScopeEvent::Begin { id, .. } => {
                let Some(s) = scopes.get(*id) else { return };
                match &s.kind {
                    ScopeKind::Request { traceparent, attrs } => {
                        let (ctx, problem) =
                            TraceContext::for_request(traceparent.as_deref().or(self.opts.env_traceparent.as_deref()), attrs, self.opts.seed, *id);
                        match &problem {
                            Some(ContextProblem::Missing) => self.stats.context_missing += 1,
                            Some(ContextProblem::Malformed(_)) => self.stats.context_malformed += 1,
                            None => {}
                        }
                        if let Some(p) = &problem {
                            if self.problems.len() < 16 {
                                self.problems.push(p.clone());
                            }
                        }
                        // The ranks of a distributed job share the request's trace (and,
                        // on identical clocks, scope ids and begin times): the rank keeps
                        // their span ids, and so every descendant's, apart.
                        let rank = self.opts.rank.map(|(r, _)| r.to_be_bytes());
                        let span_id = match &rank {
                            None => ids::span_id(&ctx.trace_id, &[b"gpu.request", &id.to_be_bytes(), &s.begin_ns.to_be_bytes()]),
                            Some(r) => ids::span_id(&ctx.trace_id, &[b"gpu.request", &id.to_be_bytes(), &s.begin_ns.to_be_bytes(), b"rank", r]),
                        };
                        // Ordinary attribute values arrive percent-encoded (the APIs escape
                        // spaces and `%`); tracestate and baggage are headers, kept as is.
                        let attrs: Vec<(String, String)> = attrs
                            .iter()
                            .filter(|(k, _)| k != "tracestate" && k != "baggage")
                            .map(|(k, v)| (super::context::percent_decode(k), super::context::percent_decode(v)))
                            .collect();
                        let get = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
                        self.requests.insert(
                            *id,
                            Request {
                                span_id,
                                trace_state: Arc::from(ctx.trace_state.as_str()),
                                ctx,
                                model: Arc::from(get("model").unwrap_or_else(|| "unknown".into()).as_str()),
                                frames: get("frames").and_then(|f| f.parse().ok()),
                                attrs: attrs.clone(),
                                context_problem: problem,
                                open_units: 1,
                                ended: false,
                                kernel_count: 0,
                                activity_count: 0,
                                busy_ns: 0,
                                first_ns: None,
                                last_ns: None,
                                steps: 0,
                                vae: None,
                                kernel_spans: 0,
                                omitted: 0,
                                step_launches: Some(0),
                                step_graph_launches: 0,
                                timing: None,
                                step_scopes: 0,
                                steps_detected: false,
                                devices: 0,
                            },
                        );
                        self.units.insert(*id, Unit { request: *id, ..Default::default() });
                        self.place_cache = None;
                    }
                    ScopeKind::Step { .. } => {
                        let Some(rid) = s.attribution.request else { return };
                        if let Some(r) = self.requests.get_mut(&rid) {
                            r.open_units += 1;
                            r.step_scopes += 1;
                            self.units.insert(*id, Unit { request: rid, ..Default::default() });
                            self.place_cache = None;
                        }
                    }
                    _ => {}
                }
            }
            ScopeEvent::InCapture { id } => {
                // Recorded into a graph: finalized without span or timing (finalize_unit).
                self.stats.captured_scopes += 1;
                if let Some(u) = self.units.get_mut(id) {
                    u.scope_time = Some((0, 0, TimingSource::Captured));
                }
            }
            ScopeEvent::End { id, launches, graph_launches, .. } => {
                if let Some(r) = self.requests.get_mut(id) {
                    r.ended = true;
                    let direct = match (launches, r.step_launches) {
                        (Some(total), Some(steps)) => Some((*total as u64).saturating_sub(steps) as u32),
                        _ => None,
                    };
                    let direct_graphs = (*graph_launches as u64).saturating_sub(r.step_graph_launches) as u32;
                    if let Some(u) = self.units.get_mut(id) {
                        u.launches = direct;
                        u.graph_launches = direct_graphs;
                    }
                } else if let Some(u) = self.units.get_mut(id) {
                    u.launches = *launches;
                    u.graph_launches = *graph_launches;
                    let rid = u.request;
                    if let Some(r) = self.requests.get_mut(&rid) {
                        r.step_launches = match (r.step_launches, launches) {
                            (Some(a), Some(b)) => Some(a + *b as u64),
                            _ => None,
                        };
                        r.step_graph_launches += *graph_launches as u64;
                    }
                }
            }
        }
    }

    /// Coarse mode: observes one scope's measured GPU interval. A step's or request's own
    /// interval completes its unit; a stage scope's becomes one entry of its step's (or,
    /// outside steps, its request's) stage aggregates. Other scopes are ignored. An
    /// interval for a unit already finalized is counted in [`AssemblerStats::gpu_late`].
    pub fn observe_scope_time(&mut self, t: &ScopeGpuTime, scopes: &ScopeTable) {
        let Some(s) = scopes.get(t.id) else {
            self.stats.unattributed += 1;
            return;
        };
        let end_ns = t.end_ns.max(t.start_ns);
        if t.source == TimingSource::Captured {
            self.stats.captured_scopes += 1;
        }
        if let (Some(d), Some(r)) = (t.device.filter(|d| *d < 64), self.requests.get_mut(&t.id)) {
            r.devices |= 1 << d;
        }
        if let Some(u) = self.units.get_mut(&t.id) {
            u.scope_time = Some((t.start_ns, end_ns, t.source));
            return;
        }
        if t.source == TimingSource::Captured {
            return;
        }
        let ScopeKind::Stage(stage) = s.kind else { return };
        let Some(request) = s.attribution.request else {
            self.stats.gpu_outside_request += 1;
            return;
        };
        let key = s.attribution.step.filter(|x| self.units.contains_key(x)).unwrap_or(request);
        let name = self.gpu_names.of_static(stage);
        let stage = self.stage_names.of_static(stage);
        let Some(unit) = self.units.get_mut(&key) else {
            self.stats.gpu_late += 1;
            return;
        };
        unit.received += 1;
        self.held_gpu += 1;
        unit.gpu.push(Gpu {
            kind: GpuKind::Scope(t.source),
            name,
            stage,
            start_ns: t.start_ns,
            end_ns,
            device: 0,
            stream: 0,
            corr: 0,
            grid: [0; 3],
            block: [0; 3],
            registers: 0,
            shared_bytes: 0,
            bytes: 0,
            graph_id: 0,
        });
    }

    /// gpuspan's external correlation (kind `GPUSPAN_EXTERNAL_KIND`): the API call of
    /// `correlation_id` ran in scope `scope` (its id, as pushed). What [`Self::observe_record`]
    /// does with such a record, for a caller that keeps no record of it.
    pub fn observe_external_correlation(&mut self, correlation_id: u32, scope: ScopeId) {
        self.corr_scope.insert(correlation_id, scope);
    }

    /// The scope the API call of `correlation_id` ran in, as gpuspan's external correlations
    /// told it; `None` when none did (or it was let go of).
    pub fn correlation_scope(&self, correlation_id: u32) -> Option<ScopeId> {
        self.corr_scope.get(correlation_id)
    }

    /// Observes one decoded record. Kernels are classified here (scope stage first, then
    /// the cached name rules).
    pub fn observe_record(&mut self, rec: &ActivityRecord, scopes: &ScopeTable, classifier: &mut Classifier) {
        let pending = match rec {
            ActivityRecord::ExternalCorrelation(e) => {
                if e.external_kind == GPUSPAN_EXTERNAL_KIND {
                    self.observe_external_correlation(e.correlation_id, e.external_id);
                }
                return;
            }
            ActivityRecord::Api(a) => {
                if !gpu_work_expected(a.domain, a.cbid) {
                    return;
                }
                Pending::Api { domain: a.domain, corr: a.correlation_id }
            }
            ActivityRecord::Kernel(k) => {
                if k.end_ns == 0 || k.end_ns < k.start_ns {
                    return;
                }
                // The stage scope's stage when the kernel's scope is known now (and it has
                // one), else the name's class, which a stage scope overrides once the kernel
                // is placed (its external correlation record may not have arrived yet). The
                // class is not looked up for a kernel that a stage scope decides: the lookup
                // and the class's `Arc` count, a locked add that waits for the decoder's
                // stores to drain, were 6 % of the collector thread (issue 14, item 1).
                let known = self.find_place(k.correlation_id, scopes);
                let scope_stage = if known { self.place_cache.as_ref().and_then(|c| c.stage) } else { None };
                let (name, collective) = self.gpu_names.of_arc(&k.name);
                let stage = match scope_stage {
                    Some(stage) => scoped_kernel_stage(&mut self.stage_names, stage, collective),
                    None => self.gpu_names.class_stage(&name, &k.name, classifier, &mut self.stage_names),
                };
                let gpu = move || Gpu {
                    kind: GpuKind::Kernel,
                    stage,
                    name,
                    start_ns: k.start_ns,
                    end_ns: k.end_ns,
                    device: k.device_id,
                    stream: k.stream_id,
                    corr: k.correlation_id,
                    grid: k.grid,
                    block: k.block,
                    registers: k.registers_per_thread,
                    shared_bytes: k.static_shared_memory_bytes as i64 + k.dynamic_shared_memory_bytes as i64,
                    bytes: 0,
                    graph_id: k.graph_id,
                };
                if !known {
                    self.waiting.push((self.generation, Pending::Gpu(gpu())));
                    return;
                }
                // Its scope is known: straight into its unit, as `place` would put it, the
                // record built where it is kept. Built on the stack and moved through
                // `Pending`, it was copied with 16-byte loads over the narrower stores that
                // had just built it, which the store buffer cannot forward (a third of
                // `place`'s samples; issue 14, item 1).
                let Some(cache) = self.place_cache.as_ref() else { return };
                let Some(unit) = unit_of_gpu(cache, &mut self.units, &self.requests, &mut self.stats, scopes) else { return };
                hold_gpu(unit, &mut self.held_gpu, self.opts.max_pending_gpu, &mut self.stats, (k.correlation_id, k.graph_id), gpu);
                return;
            }
            ActivityRecord::Memcpy(m) => Pending::Gpu(Gpu::copy(
                GpuKind::Memcpy,
                self.gpu_names.of_static(m.kind.kineto_name()),
                &mut self.stage_names,
                (m.start_ns, m.end_ns, m.device_id, m.stream_id, m.correlation_id, m.bytes),
            )),
            ActivityRecord::Memset(m) => Pending::Gpu(Gpu::copy(
                GpuKind::Memset,
                self.gpu_names.of_static("Memset"),
                &mut self.stage_names,
                (m.start_ns, m.end_ns, m.device_id, m.stream_id, m.correlation_id, m.bytes),
            )),
            _ => return,
        };
        if let Err(p) = self.place(pending, scopes) {
            self.waiting.push((self.generation, p));
        }
    }

    /// Makes [`Self::place_cache`] describe the scope the API call of `corr` ran in; `false`
    /// when that scope is not known yet (no external correlation for `corr`, or its scope
    /// not in `scopes`), the cache then left as it was.
    fn find_place(&mut self, corr: u32, scopes: &ScopeTable) -> bool {
        let Some(scope_id) = self.corr_scope.find_run(corr, &mut self.corr_hint).map(|i| self.corr_scope.run_scope(i)) else {
            return false;
        };
        let table = scopes.version();
        if !self.place_cache.as_ref().is_some_and(|c| c.scope == scope_id && c.table == table) {
            let Some(scope) = scopes.get(scope_id) else {
                return false;
            };
            let request = scope.attribution.request;
            self.place_cache = Some(PlaceCache {
                scope: scope_id,
                table,
                request,
                unit: request.map(|r| scope.attribution.step.filter(|s| self.units.contains_key(s)).unwrap_or(r)),
                stage: scope.attribution.stage.map(|s| self.stage_names.of_static(s)),
            });
        }
        true
    }

    /// Puts a record into its unit; gives it back when its external correlation is unknown.
    fn place(&mut self, p: Pending, scopes: &ScopeTable) -> Result<(), Pending> {
        let corr = match &p {
            Pending::Gpu(g) => g.corr,
            Pending::Api { corr, .. } => *corr,
        };
        if !self.find_place(corr, scopes) {
            return Err(p);
        }
        let Some(cache) = self.place_cache.as_ref() else { return Err(p) };
        let unit = match &p {
            Pending::Gpu(_) => unit_of_gpu(cache, &mut self.units, &self.requests, &mut self.stats, scopes),
            Pending::Api { .. } => cache.unit.and_then(|key| self.units.get_mut(&key)),
        };
        let Some(unit) = unit else { return Ok(()) };
        match p {
            Pending::Api { domain: ApiDomain::Driver, .. } => unit.expected_driver += 1,
            Pending::Api { domain: ApiDomain::Runtime, .. } => unit.expected_runtime += 1,
            Pending::Gpu(mut g) => {
                // A stage scope decides. (A kernel whose scope was known when it arrived
                // never comes here: `observe_record` put it in its unit.)
                if let (GpuKind::Kernel, Some(stage)) = (g.kind, cache.stage) {
                    g.stage = scoped_kernel_stage(&mut self.stage_names, stage, self.gpu_names.is_collective(&g.name));
                }
                hold_gpu(unit, &mut self.held_gpu, self.opts.max_pending_gpu, &mut self.stats, (g.corr, g.graph_id), || g);
            }
        }
        Ok(())
    }

    /// One generation of the assembler: retries the records waiting for their external
    /// correlation (for `WAIT_GENERATIONS` polls), finalizes what is complete
    /// ([`Self::finalize_ready`]) and lets go of the correlation ids of requests finalized
    /// `WAIT_GENERATIONS` (20) polls ago. The agent polls every 100 ms. `now_ms` is the caller's
    /// monotonic clock; `force` finalizes everything (exit, after the last forced flush).
    pub fn poll(&mut self, scopes: &ScopeTable, now_ms: u64, force: bool) -> Finalized {
        self.generation += 1;
        let waiting = std::mem::take(&mut self.waiting);
        for (gen, p) in waiting {
            if let Err(p) = self.place(p, scopes) {
                if force || self.generation.saturating_sub(gen) > WAIT_GENERATIONS {
                    self.stats.unattributed += 1;
                } else {
                    self.waiting.push((gen, p));
                }
            }
        }

        let out = self.finalize_ready(scopes, now_ms, force);
        self.release_correlations(scopes);
        out
    }

    /// GPU records held in units not finalized yet (at most
    /// [`SpanOptions::max_pending_gpu`]).
    pub fn held_gpu(&self) -> usize {
        self.held_gpu
    }

    /// Room for GPU records the units' vectors have (what they hold, in records).
    #[cfg(test)]
    pub(crate) fn held_gpu_capacity(&self) -> usize {
        self.units.values().map(|u| u.gpu.capacity()).sum()
    }

    /// Finalizes the units that are complete by `now_ms` (the same rules as [`Self::poll`]:
    /// exact counts, learned graphs, `settle_ms`, `grace_ms`) and the requests whose units
    /// all are, without starting a generation: the waits counted in polls
    /// (`WAIT_GENERATIONS`) do not move. The agent calls it between its 100 ms polls while
    /// many records are held: at 1 M kernels a second, 100 ms is 100,000 records (11 MB)
    /// waiting for a poll that would finalize them at once. A unit that has waited
    /// [`SHRINK_AFTER_MS`] after its end without completing (a `settle_ms` wait) has its
    /// record vector's spare capacity (up to half of it, from doubling) given back.
    pub fn finalize_ready(&mut self, scopes: &ScopeTable, now_ms: u64, force: bool) -> Finalized {
        let mut ready: Vec<ScopeId> = Vec::new();
        for (id, u) in self.units.iter_mut() {
            let ended = scopes.get(*id).and_then(|s| s.end_ns).is_some();
            if !(ended || force) {
                continue;
            }
            let seen = *u.end_seen_ms.get_or_insert(now_ms);
            let waited = now_ms.saturating_sub(seen);
            let complete = match u.launches {
                _ if self.opts.coarse => u.scope_time.is_some(),
                Some(n) if u.graph_launches == 0 => u.received >= n,
                // Graph launches inside: exact once each launch's kernels number what earlier
                // launches of its graph made (learned, below), or else as an unknown count.
                Some(n) => {
                    graph_work_complete(u, n, &self.graph_kernels)
                        || (waited >= self.opts.settle_ms && u.received >= u.expected())
                }
                // Unknown count (no launch callbacks): settle_ms after the end, once every
                // launch API record seen has a GPU record (a graph launch's counts as one).
                None => waited >= self.opts.settle_ms && u.received >= u.expected(),
            };
            if complete && !force {
                // A graph launch's kernels, once its unit settled: what its graph makes.
                for w in &u.graph_work {
                    let learned = self.graph_kernels.len();
                    match self.graph_kernels.entry(w.graph_id) {
                        Entry::Occupied(mut k) => *k.get_mut() = (*k.get()).max(w.kernels),
                        Entry::Vacant(k) if learned < MAX_GRAPHS_LEARNED => {
                            k.insert(w.kernels);
                        }
                        Entry::Vacant(_) => {}
                    }
                }
            }
            if force || complete {
                ready.push(*id);
            } else if waited >= self.opts.grace_ms {
                self.stats.units_timed_out += 1;
                ready.push(*id);
            } else if waited >= SHRINK_AFTER_MS && u.gpu.capacity() - u.gpu.len() > u.gpu.len() / 4 {
                u.gpu.shrink_to_fit();
            }
        }
        // Steps in scope order so spans and timings come out in step order.
        ready.sort_unstable();
        let mut out = Finalized::default();
        for id in ready {
            if let Some(u) = self.units.remove(&id) {
                self.place_cache = None;
                self.finalize_unit(id, u, scopes, &mut out);
            }
        }
        let done: Vec<ScopeId> = self
            .requests
            .iter()
            .filter(|(_, r)| (r.ended || force) && r.open_units == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(r) = self.requests.remove(&id) {
                self.finalize_request(id, r, scopes, &mut out);
                self.finalized.push_back((self.generation, id));
            }
        }
        self.stats.spans += out.spans.len() as u64;
        out
    }

    /// Forgets the correlation ids of requests finalized more than [`WAIT_GENERATIONS`] polls
    /// ago (until then a late record is still recognised and counted as late), and of scopes
    /// that left the scope table. The map held one entry per launch for the whole run
    /// before (issue 13), and CUPTI's correlation ids are 32-bit: after 2³² launches (≈ 12 h
    /// at 100 000 a second) an id comes back, and a stale entry would claim the new launch's
    /// records for a request long gone. Entries of scopes outside any request stay while
    /// the scope is in the table (their records are counted as outside a request).
    fn release_correlations(&mut self, scopes: &ScopeTable) {
        let mut expired = std::collections::HashSet::new();
        while let Some(&(generation, id)) = self.finalized.front() {
            if self.generation.saturating_sub(generation) <= WAIT_GENERATIONS {
                break;
            }
            expired.insert(id);
            self.finalized.pop_front();
        }
        if expired.is_empty() && self.unseen_scopes.is_empty() {
            return;
        }
        let unseen_before = std::mem::take(&mut self.unseen_scopes);
        let unseen = &mut self.unseen_scopes;
        self.corr_scope.retain(|id| match scopes.get(id) {
            Some(s) => s.attribution.request.is_none_or(|r| !expired.contains(&r)),
            // Not in the table: the scope left it (a written segment, a pruned request), or
            // its begin is still on its way: the collector drains the scope queue before
            // CUPTI's buffers, so a launch's external correlation can be decoded in the
            // round before its scope's begin is applied. Let go only when still unknown at
            // the next poll.
            None if unseen_before.contains(&id) => false,
            None => {
                unseen.insert(id);
                true
            }
        });
    }

    /// Correlation ids currently mapped to a scope (bounded by the launches of the requests
    /// in flight).
    pub fn correlation_entries(&self) -> usize {
        self.corr_scope.len()
    }

    fn unix(&self, cupti_ns: u64) -> u64 {
        to_unix(cupti_ns, self.opts.clock_offset_ns)
    }

    fn finalize_unit(&mut self, id: ScopeId, unit: Unit, scopes: &ScopeTable, out: &mut Finalized) {
        self.held_gpu -= unit.gpu.len();
        let rid = unit.request;
        let Some(scope) = scopes.get(id) else { return };
        let coarse = self.opts.coarse;
        let Some(req) = self.requests.get_mut(&rid) else { return };
        req.open_units = req.open_units.saturating_sub(1);
        if matches!(unit.scope_time, Some((_, _, TimingSource::Captured))) {
            // Recorded into a CUDA graph, not executed: no span, no timing.
            return;
        }
        if id != rid {
            let (index, count) = match &scope.kind {
                ScopeKind::Step { index, count } => (*index, *count),
                _ => (0, None),
            };
            let step = StepOf {
                span_id: ids::span_id(&req.span_id, &[b"dit.step", &id.to_be_bytes()]),
                index,
                count,
                begin_ns: scope.begin_ns,
                end_ns: scope.end_ns.unwrap_or(scope.begin_ns),
                name: Arc::from(scope.name.as_str()),
                detected: false,
            };
            return self.emit_unit(rid, Some(step), unit.gpu, unit.scope_time, out);
        }
        // A request that announced no step (fine mode): its steps come from its kernels.
        let gpu = if !coarse && req.step_scopes == 0 {
            match detect_steps(unit.gpu, &req.span_id, &self.gpu_names) {
                Ok((steps, rest)) => {
                    req.steps_detected = true;
                    self.stats.steps_detected += steps.len() as u64;
                    for (step, gpu) in steps {
                        self.emit_unit(rid, Some(step), gpu, None, out);
                    }
                    rest
                }
                Err(gpu) => gpu,
            }
        } else {
            unit.gpu
        };
        self.emit_unit(rid, None, gpu, unit.scope_time, out)
    }

    /// Spans and timings of one unit of request `rid`: a step (`step`; announced or
    /// detected) or the request's direct work (`None`), from its GPU work `gpu` (and, in
    /// coarse mode, its own interval `scope_time`).
    fn emit_unit(&mut self, rid: ScopeId, step: Option<StepOf>, gpu: Vec<Gpu>, scope_time: Option<(u64, u64, TimingSource)>, out: &mut Finalized) {
        let opts = self.opts.clone();
        let communication = self.stage_names.of_static(crate::classify::COMMUNICATION);
        let names = &self.stage_names;
        let gpu_names = &self.gpu_names;
        let Some(req) = self.requests.get_mut(&rid) else { return };
        let is_step = step.is_some();
        let emit = req.ctx.sampled;

        // One pass over the unit's records gives the per-stage aggregates and the unit's
        // own (issue 14, item 1): the records were written when they arrived, long enough
        // ago to have left the cache, and six passes (with a vector of references per stage,
        // grown record by record) read them from memory six times. Kernel spans, when they
        // are made, read them once more per stage.
        #[derive(Default)]
        struct Agg {
            first: u64,
            last: u64,
            busy: u64,
            kernels: u64,
            records: u64,
            bytes: u64,
            /// Coarse mode: the least faithful timing of its scope records.
            timing: Option<TimingSource>,
        }
        // A stage is found by its index ([`StageNames`]: one per name), the last one first;
        // the few stages of a unit are then put in name order. A `BTreeMap` keyed by the
        // name compared names for every record (issue 14, item 1).
        let mut stages: Vec<(Arc<str>, StageIx, Agg)> = Vec::new();
        let mut at = 0usize;
        let (mut first_start, mut last_end) = (u64::MAX, 0u64);
        // The least faithful way any part of this unit was measured (coarse mode).
        let mut unit_timing = scope_time.map(|(_, _, t)| t);
        let (mut busy, mut kernels, mut devices) = (0u64, 0u64, 0u64);
        let mut any_comm = false;
        for g in &gpu {
            if stages.get(at).is_none_or(|(_, s, _)| *s != g.stage) {
                at = match stages.iter().position(|(_, s, _)| *s == g.stage) {
                    Some(i) => i,
                    None => {
                        stages.push((names.name(g.stage), g.stage, Agg { first: u64::MAX, ..Agg::default() }));
                        stages.len() - 1
                    }
                };
            }
            let dur = g.end_ns - g.start_ns;
            let kernel = g.kind == GpuKind::Kernel;
            let a = &mut stages[at].2;
            a.first = a.first.min(g.start_ns);
            a.last = a.last.max(g.end_ns);
            a.busy += dur;
            a.kernels += kernel as u64;
            a.records += 1;
            a.bytes += g.bytes;
            match g.kind {
                GpuKind::Scope(t) => {
                    a.timing = a.timing.max(Some(t));
                    unit_timing = unit_timing.max(Some(t));
                }
                _ if g.device < 64 => devices |= 1 << g.device,
                _ => {}
            }
            first_start = first_start.min(g.start_ns);
            last_end = last_end.max(g.end_ns);
            busy += dur;
            kernels += kernel as u64;
            any_comm |= kernel && dur > 0 && g.stage == communication;
        }
        stages.sort_by(|a, b| a.0.cmp(&b.0));
        let (first, last) = match scope_time {
            Some((s, e, _)) => (Some(s), Some(e)),
            None if gpu.is_empty() => (None, None),
            None => (Some(first_start), Some(last_end)),
        };
        let coarse = opts.coarse;
        req.kernel_count += kernels;
        req.devices |= devices;
        req.timing = req.timing.max(unit_timing);
        req.activity_count += gpu.len() as u64;
        req.busy_ns += busy;
        if let (Some(f), Some(l)) = (first, last) {
            req.first_ns = Some(req.first_ns.map_or(f, |x| x.min(f)));
            req.last_ns = Some(req.last_ns.map_or(l, |x| x.max(l)));
        }
        if let Some((_, _, v)) = stages.iter().find(|(s, _, _)| &**s == "vae.decode") {
            req.vae = Some(match req.vae {
                Some((f, l)) => (f.min(v.first), l.max(v.last)),
                None => (v.first, v.last),
            });
        }

        let trace_id = req.ctx.trace_id;
        let (parent_id, parent_start, parent_end) = match &step {
            Some(st) => (st.span_id, first.unwrap_or(st.begin_ns), last.unwrap_or(st.end_ns)),
            None => (req.span_id, 0, 0),
        };
        let mk = |span_id, parent, name: Arc<str>, start: u64, end: u64, attributes| SpanRecord {
            trace_id,
            span_id,
            parent_span_id: Some(parent),
            parent_is_remote: false,
            name,
            start_unix_ns: to_unix(start, opts.clock_offset_ns),
            end_unix_ns: to_unix(end.max(start), opts.clock_offset_ns),
            attributes,
            trace_state: req.trace_state.clone(),
            sampled: true,
        };

        let mut stage_busy = Vec::new();
        let mut omitted_total = 0u64;
        for (stage, ix, agg) in &stages {
            stage_busy.push((stage.clone(), agg.busy));
            let stage_id = ids::span_id(&parent_id, &[b"stage", stage.as_bytes()]);
            let mut omitted = 0u64;
            if emit && opts.kernel_spans {
                for g in gpu.iter().filter(|g| g.stage == *ix && g.kind == GpuKind::Kernel) {
                    if req.kernel_spans >= opts.kernel_span_budget {
                        omitted += 1;
                        continue;
                    }
                    req.kernel_spans += 1;
                    let kid = ids::span_id(&stage_id, &[b"cuda.kernel", &g.corr.to_be_bytes(), &g.start_ns.to_be_bytes()]);
                    let mut attributes = vec![
                        attr_str("cuda.kernel.name", gpu_names.arc(&g.name)),
                        (Cow::Borrowed("cuda.kernel.grid"), AttrValue::IntArray(g.grid.iter().map(|&v| v as i64).collect())),
                        (Cow::Borrowed("cuda.kernel.block"), AttrValue::IntArray(g.block.iter().map(|&v| v as i64).collect())),
                        attr_int("cuda.kernel.registers", g.registers as i64),
                        attr_int("cuda.kernel.shared_memory_bytes", g.shared_bytes),
                        attr_int("gpu.stream.id", g.stream as i64),
                        attr_int("gpu.device.id", g.device as i64),
                        attr_int("cuda.correlation_id", g.corr as i64),
                        attr_str("gpuspan.stage", stage.clone()),
                    ];
                    if opts.device_uuids.len() > 1 {
                        if let Some(u) = opts.device_uuids.get(g.device as usize).filter(|u| !u.is_empty()) {
                            attributes.push(attr_str("gpu.device.uuid", u.clone()));
                        }
                    }
                    out.spans.push(mk(kid, stage_id, Arc::from("cuda.kernel"), g.start_ns, g.end_ns, attributes));
                }
            }
            req.omitted += omitted;
            omitted_total += omitted;
            if emit && coarse {
                let attributes = vec![
                    attr_int("gpuspan.scope_count", agg.records as i64),
                    attr_int("gpuspan.gpu_busy_ns", agg.busy as i64),
                    attr_str("gpuspan.stage", stage.clone()),
                    attr_str("gpuspan.timing", agg.timing.unwrap_or(TimingSource::CpuFallback).as_str()),
                ];
                out.spans.push(mk(stage_id, parent_id, stage.clone(), agg.first, agg.last, attributes));
            } else if emit {
                let mut attributes = vec![
                    attr_int("gpuspan.kernel_count", agg.records as i64),
                    attr_int("gpuspan.gpu_busy_ns", agg.busy as i64),
                    attr_str("gpuspan.stage", stage.clone()),
                ];
                if agg.kernels != agg.records {
                    attributes.push(attr_int("gpuspan.bytes", agg.bytes as i64));
                }
                if omitted > 0 {
                    attributes.push(attr_int("gpuspan.kernel_spans_omitted", omitted as i64));
                }
                out.spans.push(mk(stage_id, parent_id, stage.clone(), agg.first, agg.last, attributes));
            }
        }

        let steps_done = is_step as u64;
        let (comm_ns, exposed_comm_ns) = if any_comm { comm_times(&gpu, communication) } else { (0, 0) };
        if let Some(st) = &step {
            req.steps += 1;
            let (index, count) = (st.index, st.count);
            let dur = parent_end.saturating_sub(parent_start);
            let request_id = req
                .attrs
                .iter()
                .find(|(k, _)| k == "request_id")
                .map_or_else(|| Arc::from(rid.to_string().as_str()), |(_, v)| Arc::from(v.as_str()));
            out.steps.push(StepTiming {
                model: req.model.clone(),
                trace_id,
                span_id: parent_id,
                request_id,
                index,
                total: count,
                dur_ns: dur,
                stage_busy_ns: stage_busy,
                comm_ns,
                exposed_comm_ns,
            });
            if emit {
                let mut attributes = vec![
                    attr_int("gpuspan.step.index", index as i64),
                    attr_int("gpuspan.gpu_busy_ns", busy as i64),
                    attr_str("gpuspan.scope", st.name.clone()),
                ];
                if comm_ns > 0 {
                    attributes.push(attr_int("gpuspan.comm_ns", comm_ns as i64));
                    attributes.push(attr_int("gpuspan.exposed_comm_ns", exposed_comm_ns as i64));
                }
                if st.detected {
                    attributes.push(attr_str("gpuspan.step_source", "detected"));
                }
                if !coarse {
                    attributes.push(attr_int("gpuspan.kernel_count", kernels as i64));
                }
                if let Some(n) = count {
                    attributes.push(attr_int("gpuspan.step.count", n as i64));
                }
                if coarse {
                    let t = unit_timing.unwrap_or(TimingSource::CpuFallback);
                    attributes.push(attr_str("gpuspan.timing", t.as_str()));
                } else if first.is_none() {
                    attributes.push(attr_str("gpuspan.timing", "cpu_scope"));
                }
                let req_span = req.span_id;
                let mut s = mk(parent_id, req_span, Arc::from("dit.step"), parent_start, parent_end, attributes);
                s.parent_span_id = Some(req_span);
                out.spans.push(s);
            }
        }
        self.stats.steps += steps_done;
        self.stats.kernel_spans_omitted += omitted_total;
    }

    fn finalize_request(&mut self, id: ScopeId, r: Request, scopes: &ScopeTable, out: &mut Finalized) {
        self.stats.requests += 1;
        let scope = scopes.get(id);
        let begin = scope.map(|s| s.begin_ns).unwrap_or(0);
        let end = scope.and_then(|s| s.end_ns).unwrap_or(begin);
        let (start, stop) = match (r.first_ns, r.last_ns) {
            (Some(f), Some(l)) => (f, l),
            _ => (begin, end),
        };
        out.requests.push(RequestTiming {
            model: r.model.clone(),
            trace_id: r.ctx.trace_id,
            dur_ns: stop.saturating_sub(start),
            vae_decode_ns: r.vae.map(|(f, l)| l.saturating_sub(f)),
            frames: r.frames,
            kernel_count: r.kernel_count,
        });
        if !r.ctx.sampled {
            return;
        }
        let mut attributes = vec![
            attr_int("gpuspan.gpu_busy_ns", r.busy_ns as i64),
            attr_int("gpuspan.step_count", r.steps as i64),
            attr_str("gpuspan.model", r.model.clone()),
            attr_str(
                "gpuspan.trace_context",
                match &r.context_problem {
                    None => "traceparent",
                    Some(ContextProblem::Missing) => "missing",
                    Some(ContextProblem::Malformed(_)) => "malformed",
                },
            ),
        ];
        if r.steps_detected {
            attributes.push(attr_str("gpuspan.step_source", "detected"));
        }
        // The device its GPU work ran on (a process may drive several): `gpu.device.id` as
        // on kernel spans; a request spread over devices names them all in `gpuspan.devices`.
        match r.devices.count_ones() {
            0 => {}
            1 => {
                let d = r.devices.trailing_zeros() as usize;
                attributes.push(attr_int("gpu.device.id", d as i64));
                if let Some(u) = self.opts.device_uuids.get(d).filter(|u| !u.is_empty()) {
                    attributes.push(attr_str("gpu.device.uuid", u.clone()));
                }
            }
            _ => attributes.push((
                Cow::Borrowed("gpuspan.devices"),
                AttrValue::IntArray((0..64).filter(|d| r.devices & (1u64 << d) != 0).collect()),
            )),
        }
        if let Some((rank, world)) = self.opts.rank {
            attributes.push(attr_int("gpuspan.rank", rank as i64));
            attributes.push(attr_int("gpuspan.world_size", world as i64));
        }
        if self.opts.coarse {
            attributes.push(attr_str("gpuspan.timing", r.timing.unwrap_or(TimingSource::CpuFallback).as_str()));
        } else {
            attributes.push(attr_int("gpuspan.kernel_count", r.kernel_count as i64));
            attributes.push(attr_int("gpuspan.activity_count", r.activity_count as i64));
            if r.first_ns.is_none() {
                attributes.push(attr_str("gpuspan.timing", "cpu_scope"));
            }
        }
        if r.omitted > 0 {
            attributes.push(attr_int("gpuspan.kernel_spans_omitted", r.omitted as i64));
        }
        for (k, v) in &r.attrs {
            attributes.push((Cow::Owned(format!("gpuspan.request.{k}")), AttrValue::Str(Arc::from(v.as_str()))));
        }
        for (k, v) in &r.ctx.baggage {
            attributes.push((Cow::Owned(format!("gpuspan.baggage.{k}")), AttrValue::Str(Arc::from(v.as_str()))));
        }
        out.spans.push(SpanRecord {
            trace_id: r.ctx.trace_id,
            span_id: r.span_id,
            parent_span_id: r.ctx.parent_span_id,
            parent_is_remote: r.ctx.parent_span_id.is_some(),
            name: Arc::from("gpu.request"),
            start_unix_ns: self.unix(start),
            end_unix_ns: self.unix(stop.max(start)),
            attributes,
            trace_state: r.trace_state.clone(),
            sampled: true,
        });
    }
}

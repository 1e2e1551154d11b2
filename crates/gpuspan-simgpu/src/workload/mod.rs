//! Workloads the replay worker (`gpuspan-replay`) runs on the simulated H100.
//!
//! A [`Workload`] is a flat, ordered list of host-side operations ([`Op`]): NVTX range
//! pushes / pops, kernel launches with their GPU duration, async memcpy / memset, host gaps
//! and device synchronizations. It is pure data: [`from_trace`] builds one from a real
//! Kineto trace, [`preset`] builds the built-in DiT video workloads (`wan2.1`, `stdit`), and
//! [`exec`] plays one through the CUDA driver API ([`graph_plan`]: which parts its
//! `--cuda-graph` mode captures into CUDA graphs).
//!
//! [`Workload::estimate_timeline`] is a small, deterministic model of how the simulated H100
//! executes a workload (host cost per API call, launch latency, per-stream in-order GPU
//! queues) used by tests and calibration; the real timing comes from the simulator.

use std::collections::BTreeMap;

pub mod activity_client;
pub mod exec;
pub mod from_trace;
pub mod graph_plan;
pub mod parallel;
pub mod preset;

/// Direction of a [`Op::Memcpy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemcpyKind {
    /// Host to device (`cuMemcpyHtoDAsync_v2`).
    HtoD,
    /// Device to host (`cuMemcpyDtoHAsync_v2`).
    DtoH,
    /// Device to device (`cuMemcpyDtoDAsync_v2`).
    DtoD,
}

/// One host-side operation of a workload, in program order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `nvtxRangePushA(name)` on the worker thread.
    RangePush(String),
    /// `nvtxRangePop()` on the worker thread.
    RangePop,
    /// `cuLaunchKernel` of a kernel named `name` (demangled, as in Kineto traces) that runs
    /// for `dur_ns` on the simulated GPU (the sim reads the duration from the kernel's first
    /// parameter).
    Launch {
        /// Kernel name, as the trace / calibration table spells it.
        name: String,
        /// GPU execution time, ns.
        dur_ns: u64,
        /// Workload stream id (one `CU_STREAM_NON_BLOCKING` stream per distinct id).
        stream: u32,
        /// Grid dimensions.
        grid: [u32; 3],
        /// Block dimensions.
        block: [u32; 3],
        /// Dynamic shared memory, bytes.
        shared_mem_bytes: u32,
    },
    /// An async memcpy of `bytes` on `stream`.
    Memcpy {
        /// Direction.
        kind: MemcpyKind,
        /// Size, bytes.
        bytes: u64,
        /// Workload stream id.
        stream: u32,
    },
    /// An async memset of `bytes` on `stream`.
    Memset {
        /// Size, bytes.
        bytes: u64,
        /// Workload stream id.
        stream: u32,
    },
    /// Host-side work between two API calls (the virtual clock advances, or the thread
    /// sleeps on a real clock), ns.
    HostGap {
        /// Gap length, ns.
        ns: u64,
    },
    /// `cuCtxSynchronize()`: the host waits until all GPU work has finished.
    Synchronize,
    /// `cuEventRecord(e, on)` then `cuStreamWaitEvent(stream, e)`: later work on `stream`
    /// waits for everything enqueued on `on` so far (how PyTorch orders a collective on
    /// NCCL's stream with the compute stream).
    StreamWait {
        /// The stream that waits.
        stream: u32,
        /// The stream it waits for.
        on: u32,
    },
    /// An NCCL collective of the world communicator: one `ncclDevKernel_*` launch on
    /// `stream` whose kernel parameter is the message size (the simulator times it, see
    /// `sim::node`).
    Collective {
        /// Which collective.
        kind: parallel::Collective,
        /// Message size, bytes, as nccl-tests reports it.
        bytes: u64,
        /// Workload stream id.
        stream: u32,
    },
    /// `cuMemAlloc_v2(bytes)`, freed at once when it succeeds; a failure (e.g.
    /// `CUDA_ERROR_OUT_OF_MEMORY` for more than the device holds) is ignored, as a worker
    /// that catches an OOM and goes on.
    AllocProbe {
        /// Bytes asked for.
        bytes: u64,
    },
}

/// Per-kernel-name totals of a workload (see [`Workload::summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelTotal {
    /// Number of launches.
    pub count: u64,
    /// Sum of the launches' GPU durations, ns.
    pub total_ns: u64,
    /// Shortest launch, ns.
    pub min_ns: u64,
    /// Longest launch, ns.
    pub max_ns: u64,
}

/// Counts and totals of a workload, for tests and logs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadSummary {
    /// Kernel launches.
    pub kernel_count: u64,
    /// Sum of all kernel durations, ns.
    pub kernel_total_ns: u64,
    /// Memcpy operations.
    pub memcpy_count: u64,
    /// Memset operations.
    pub memset_count: u64,
    /// Range pushes.
    pub range_push_count: u64,
    /// Range pops.
    pub range_pop_count: u64,
    /// Sum of all host gaps, ns.
    pub host_gap_total_ns: u64,
    /// Synchronize operations.
    pub sync_count: u64,
    /// NCCL collectives ([`Op::Collective`]).
    pub collective_count: u64,
    /// Per kernel name.
    pub per_kernel: BTreeMap<String, KernelTotal>,
}

/// Parameters of [`Workload::estimate_timeline`]: the simulated H100's launch model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelineModel {
    /// Host time one launch / memcpy / memset API call costs, ns.
    pub host_ns_per_call: u64,
    /// Host time one NVTX push / pop costs, ns.
    pub host_ns_per_range: u64,
    /// Delay from the launch call's entry to the earliest GPU start, ns (sim `costs.rs`).
    pub launch_latency_ns: u64,
    /// Copy bandwidth assumed for memcpy / memset, bytes per µs (= MB/s).
    pub copy_bytes_per_us: u64,
}

impl Default for TimelineModel {
    /// The simulator's agreed defaults: ~3 µs host cost and ~2 µs latency per launch.
    fn default() -> Self {
        TimelineModel {
            host_ns_per_call: 3_000,
            host_ns_per_range: 0,
            launch_latency_ns: 2_000,
            copy_bytes_per_us: 25_000,
        }
    }
}

/// Result of [`Workload::estimate_timeline`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimelineEstimate {
    /// First GPU start to last GPU end, ns.
    pub gpu_span_ns: u64,
    /// Union of GPU busy intervals (all streams), ns.
    pub gpu_busy_ns: u64,
    /// Host time at the end of the workload, ns.
    pub host_end_ns: u64,
}

impl TimelineEstimate {
    /// Busy share of the span, percent.
    pub fn busy_percent(&self) -> f64 {
        if self.gpu_span_ns == 0 {
            return 0.0;
        }
        100.0 * self.gpu_busy_ns as f64 / self.gpu_span_ns as f64
    }
}

/// An ordered list of host operations (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// The operations, in program order.
    pub ops: Vec<Op>,
}

impl Workload {
    /// An empty workload.
    pub fn new() -> Workload {
        Workload { ops: Vec::new() }
    }

    /// Appends `other`'s operations.
    pub fn extend(&mut self, other: &Workload) {
        self.ops.extend(other.ops.iter().cloned());
    }

    /// Counts and per-kernel totals.
    pub fn summary(&self) -> WorkloadSummary {
        let mut s = WorkloadSummary::default();
        for op in &self.ops {
            match op {
                Op::RangePush(_) => s.range_push_count += 1,
                Op::RangePop => s.range_pop_count += 1,
                Op::Launch { name, dur_ns, .. } => {
                    s.kernel_count += 1;
                    s.kernel_total_ns += dur_ns;
                    let t = s.per_kernel.entry(name.clone()).or_insert(KernelTotal {
                        count: 0,
                        total_ns: 0,
                        min_ns: u64::MAX,
                        max_ns: 0,
                    });
                    t.count += 1;
                    t.total_ns += dur_ns;
                    t.min_ns = t.min_ns.min(*dur_ns);
                    t.max_ns = t.max_ns.max(*dur_ns);
                }
                Op::Memcpy { .. } => s.memcpy_count += 1,
                Op::Memset { .. } => s.memset_count += 1,
                Op::HostGap { ns } => s.host_gap_total_ns += ns,
                Op::Synchronize => s.sync_count += 1,
                Op::AllocProbe { .. } | Op::StreamWait { .. } => {}
                Op::Collective { .. } => s.collective_count += 1,
            }
        }
        s
    }

    /// True when every `RangePop` closes an open `RangePush` and none is left open.
    pub fn ranges_balanced(&self) -> bool {
        let mut depth: i64 = 0;
        for op in &self.ops {
            match op {
                Op::RangePush(_) => depth += 1,
                Op::RangePop => {
                    depth -= 1;
                    if depth < 0 {
                        return false;
                    }
                }
                _ => {}
            }
        }
        depth == 0
    }

    /// Deterministic estimate of the GPU span and busy time of this workload on a GPU that
    /// runs each stream's work in order, with `model`'s host cost and launch latency.
    /// Streams overlap freely (no cross-stream dependencies), like non-blocking streams.
    pub fn estimate_timeline(&self, model: &TimelineModel) -> TimelineEstimate {
        let mut host: u64 = 0;
        let mut stream_free: BTreeMap<u32, u64> = BTreeMap::new();
        let mut intervals: Vec<(u64, u64)> = Vec::new();
        let run = |host: &mut u64,
                   stream_free: &mut BTreeMap<u32, u64>,
                   intervals: &mut Vec<(u64, u64)>,
                   stream: u32,
                   dur: u64| {
            let entry = *host;
            *host += model.host_ns_per_call;
            let free = stream_free.entry(stream).or_insert(0);
            let start = (*free).max(entry + model.launch_latency_ns);
            let end = start + dur;
            *free = end;
            intervals.push((start, end));
        };
        let copy_ns = |bytes: u64| bytes * 1000 / model.copy_bytes_per_us.max(1) + 1_000;
        for op in &self.ops {
            match op {
                Op::RangePush(_) | Op::RangePop => host += model.host_ns_per_range,
                Op::Launch { dur_ns, stream, .. } => run(
                    &mut host,
                    &mut stream_free,
                    &mut intervals,
                    *stream,
                    *dur_ns,
                ),
                Op::Memcpy { bytes, stream, .. } => run(
                    &mut host,
                    &mut stream_free,
                    &mut intervals,
                    *stream,
                    copy_ns(*bytes),
                ),
                Op::Memset { bytes, stream } => run(
                    &mut host,
                    &mut stream_free,
                    &mut intervals,
                    *stream,
                    copy_ns(*bytes),
                ),
                Op::HostGap { ns } => host += ns,
                Op::Synchronize => {
                    let last = stream_free.values().copied().max().unwrap_or(0);
                    host = host.max(last);
                }
                Op::AllocProbe { .. } | Op::StreamWait { .. } => host += model.host_ns_per_call,
                // Without peers: its latency alone (sim::node).
                Op::Collective { stream, .. } => run(
                    &mut host,
                    &mut stream_free,
                    &mut intervals,
                    *stream,
                    crate::sim::node::NCCL_LATENCY_NS,
                ),
            }
        }
        intervals.sort_unstable();
        let mut busy = 0u64;
        let mut cur: Option<(u64, u64)> = None;
        for (s, e) in intervals.iter().copied() {
            match cur {
                Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    busy += ce - cs;
                    cur = Some((s, e));
                }
                None => cur = Some((s, e)),
            }
        }
        if let Some((cs, ce)) = cur {
            busy += ce - cs;
        }
        let span = match (intervals.first(), intervals.iter().map(|i| i.1).max()) {
            (Some(f), Some(l)) => l - f.0,
            _ => 0,
        };
        TimelineEstimate {
            gpu_span_ns: span,
            gpu_busy_ns: busy,
            host_end_ns: host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(name: &str, dur_ns: u64) -> Op {
        Op::Launch {
            name: name.into(),
            dur_ns,
            stream: 7,
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_mem_bytes: 0,
        }
    }

    #[test]
    fn summary_counts_and_totals() {
        let w = Workload {
            ops: vec![
                Op::RangePush("a".into()),
                launch("k", 10),
                launch("k", 30),
                launch("j", 5),
                Op::HostGap { ns: 100 },
                Op::RangePop,
            ],
        };
        let s = w.summary();
        assert_eq!(s.kernel_count, 3);
        assert_eq!(s.kernel_total_ns, 45);
        assert_eq!(
            s.per_kernel["k"],
            KernelTotal {
                count: 2,
                total_ns: 40,
                min_ns: 10,
                max_ns: 30
            }
        );
        assert!(w.ranges_balanced());
        assert!(!Workload {
            ops: vec![Op::RangePop, Op::RangePush("x".into())]
        }
        .ranges_balanced());
    }

    #[test]
    fn timeline_sync_gap_is_idle() {
        let w = Workload {
            ops: vec![
                launch("k", 1_000_000),
                Op::Synchronize,
                Op::HostGap { ns: 100_000 },
                launch("k", 1_000_000),
            ],
        };
        let t = w.estimate_timeline(&TimelineModel::default());
        assert_eq!(t.gpu_busy_ns, 2_000_000);
        // idle = gap + latency of the second launch (counted from the call's entry)
        assert_eq!(t.gpu_span_ns, 2_000_000 + 100_000 + 2_000);
    }
}

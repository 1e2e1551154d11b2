//! Launch statistics (`launch` of `gpuspan stats --json`): HTA
//! `TraceAnalysis.get_cuda_kernel_launch_stats` (`CudaKernelAnalysis.cuda_kernel_launch_stats`,
//! defaults `include_memory_events=True`).
//!
//! A GPU activity event (kernel, memcpy, memset) is joined to its CPU launch by the CUPTI
//! correlation id (`args.correlation`) when a `cuda_runtime` / `cuda_driver` event with
//! that id is a launch call ([`is_launch_call`]). When several launch events share the id
//! (a runtime call and the driver call inside it), the earliest-starting one, the outermost,
//! is the launch. For each joined GPU event:
//! - CPU launch duration = the launch event's `dur` (HTA `cpu_duration`);
//! - launch delay = GPU start − launch *end*, negative values clipped to 0 (HTA
//!   `launch_delay` = `ts_gpu − ts_cpu − dur_cpu`, `clip(lower=0)`: the time the work
//!   waited after the launch call returned);
//! - start delay = GPU start − launch *start*, not clipped (gpuspan's addition: the whole
//!   launch-to-start latency, the launch call included);
//! - short kernel: GPU duration < CPU launch duration (HTA's "GPU events with a shorter
//!   duration than the corresponding CPU events"; HTA's histogram of them additionally
//!   drops launches longer than `runtime_cutoff` = 50 µs, which it plots as outliers).
//!
//! Launch calls: HTA matches `cudaLaunchKernel`, `cudaLaunchKernelExC`, `cudaMemcpyAsync`
//! and `cudaMemsetAsync` by exact name. gpuspan also takes the driver API
//! (`cuLaunchKernel`, `cuLaunchKernelEx`, as Triton and gpuspan's own captures launch),
//! cooperative launches and the driver's async copies / sets, and ignores the `_v2` /
//! `_ptsz` / `_ptds` suffixes. Graph launches are not launch calls here (one call, many
//! kernels: a per-kernel delay means nothing), nor are synchronous copies (their CPU
//! duration includes the wait), as in HTA.

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use super::percentiles::DurationSummary;
use super::GpuEvent;
use crate::trace::{Trace, TraceEvent};

/// True for a CPU API name that launches exactly one GPU activity: kernel launches and the
/// async memcpy / memset calls, runtime and driver API (see the module documentation).
pub fn is_launch_call(name: &str) -> bool {
    let mut base = name;
    loop {
        let stripped = ["_v2", "_ptsz", "_ptds"].iter().find_map(|s| base.strip_suffix(s));
        match stripped {
            Some(b) => base = b,
            None => break,
        }
    }
    matches!(
        base,
        "cudaLaunchKernel"
            | "cudaLaunchKernelExC"
            | "cudaLaunchCooperativeKernel"
            | "cudaMemcpyAsync"
            | "cudaMemsetAsync"
            | "cuLaunchKernel"
            | "cuLaunchKernelEx"
            | "cuLaunchCooperativeKernel"
            | "cuMemcpyAsync"
            | "cuMemcpyHtoDAsync"
            | "cuMemcpyDtoHAsync"
            | "cuMemcpyDtoDAsync"
            | "cuMemsetD8Async"
            | "cuMemsetD16Async"
            | "cuMemsetD32Async"
    )
}

/// Kernels whose GPU duration is shorter than their CPU launch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ShortKernels {
    /// Number of such GPU events.
    pub count: usize,
    /// Sum of their GPU durations, µs.
    pub total_us: f64,
}

/// The `launch` object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LaunchStats {
    /// GPU activity events joined to a launch call (kernels, and memcpy / memset from the
    /// async calls, as HTA's `include_memory_events=True`).
    pub kernels_with_launch: usize,
    /// CPU launch durations (the launch event's `dur`), µs.
    pub cpu_launch_us: DurationSummary,
    /// HTA launch delay: GPU start − launch end, clipped at 0, µs.
    pub launch_delay_us: DurationSummary,
    /// GPU start − launch start (not clipped), µs; gpuspan's addition.
    pub start_delay_us: DurationSummary,
    /// GPU duration < CPU launch duration.
    pub short_kernels: ShortKernels,
}

/// CPU API events by correlation id: the earliest-starting one of any API (for the idle
/// breakdown's host-wait test) and of launch calls only (for [`LaunchStats`]).
pub(crate) struct LaunchIndex {
    any: HashMap<i64, usize>,
    launch: HashMap<i64, usize>,
}

impl LaunchIndex {
    pub(crate) fn new(trace: &Trace) -> LaunchIndex {
        let mut any: HashMap<i64, usize> = HashMap::new();
        let mut launch: HashMap<i64, usize> = HashMap::new();
        let earlier = |map: &mut HashMap<i64, usize>, c: i64, i: usize| {
            map.entry(c)
                .and_modify(|j| {
                    let (a, b) = (&trace.events[i], &trace.events[*j]);
                    if a.ts_us < b.ts_us || (a.ts_us == b.ts_us && a.dur_us > b.dur_us) {
                        *j = i;
                    }
                })
                .or_insert(i);
        };
        for (i, e) in trace.events.iter().enumerate() {
            let (Some(c), Some(cat)) = (e.correlation, &e.cat) else { continue };
            if !cat.is_launch_api() {
                continue;
            }
            earlier(&mut any, c, i);
            if is_launch_call(&e.name) {
                earlier(&mut launch, c, i);
            }
        }
        LaunchIndex { any, launch }
    }

    /// Start of the earliest CPU API event with `e`'s correlation id, µs.
    pub(crate) fn api_start(&self, trace: &Trace, e: &TraceEvent) -> Option<f64> {
        e.correlation.and_then(|c| self.any.get(&c)).map(|&i| trace.events[i].ts_us)
    }

    fn launch_of<'t>(&self, trace: &'t Trace, e: &TraceEvent) -> Option<&'t TraceEvent> {
        e.correlation.and_then(|c| self.launch.get(&c)).map(|&i| &trace.events[i])
    }
}

pub(crate) fn launch_stats(trace: &Trace, gpu: &[GpuEvent<'_>], index: &LaunchIndex) -> LaunchStats {
    let mut cpu = Vec::new();
    let mut delay = Vec::new();
    let mut start = Vec::new();
    let mut short = ShortKernels::default();
    for g in gpu {
        let Some(l) = index.launch_of(trace, g.event) else { continue };
        cpu.push(l.dur_us);
        delay.push((g.event.ts_us - l.ts_us - l.dur_us).max(0.0));
        start.push(g.event.ts_us - l.ts_us);
        if g.event.dur_us < l.dur_us {
            short.count += 1;
            short.total_us += g.event.dur_us;
        }
    }
    LaunchStats {
        kernels_with_launch: cpu.len(),
        cpu_launch_us: DurationSummary::of(&mut cpu),
        launch_delay_us: DurationSummary::of(&mut delay),
        start_delay_us: DurationSummary::of(&mut start),
        short_kernels: short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_call_names() {
        for n in [
            "cudaLaunchKernel",
            "cudaLaunchKernel_ptsz",
            "cudaLaunchKernelExC",
            "cuLaunchKernel",
            "cuLaunchKernelEx",
            "cudaMemcpyAsync",
            "cudaMemsetAsync",
            "cuMemcpyHtoDAsync_v2",
            "cuMemsetD32Async",
        ] {
            assert!(is_launch_call(n), "{n}");
        }
        for n in ["cudaGraphLaunch", "cudaMemcpy", "cuMemcpyHtoD_v2", "cudaFuncSetAttribute", "cudaLaunchKernelX", ""] {
            assert!(!is_launch_call(n), "{n}");
        }
    }
}

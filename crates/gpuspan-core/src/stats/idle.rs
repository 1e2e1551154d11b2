//! Idle time breakdown per stream (`idle_breakdown` of `gpuspan stats --json`): HTA
//! `TraceAnalysis.get_idle_time_breakdown` (`BreakdownAnalysis._analyze_idle_time_for_stream`)
//! with its default `consecutive_kernel_delay`.
//!
//! On one stream (`(device, stream)`; HTA: one rank, by stream id), the GPU activity events
//! (kernels, memcpy, memset; HTA's `kernel_cats`) sorted by start; each event after the
//! first contributes the gap `start − end of the previous event` (HTA `idle_interval`),
//! attributed to:
//! - **host wait** when the event's CPU call (the earliest `cuda_runtime` / `cuda_driver`
//!   event with its correlation id; HTA `ts_runtime`) started after the previous event
//!   ended: the CPU was not enqueueing work fast enough;
//! - else **kernel wait** when the gap is shorter than [`CONSECUTIVE_KERNEL_DELAY_US`]:
//!   the normal delay between back-to-back kernels;
//! - else **other** (e.g. waiting for an event from another stream). An event without a CPU
//!   call in the trace is never host wait. (HTA means the same, `index_correlation` 0 =
//!   "the linked event is not in the trace", but its join then reads row 0 of the trace,
//!   so such gaps become host wait whenever the trace's first event starts after the
//!   previous GPU event ended: 9.1 µs of h100-qwen-prefill's idle time move from kernel
//!   wait to host wait in HTA 0.5.0 that way.)
//!
//! So `idle_us` is the sum of the gaps between consecutive events of the stream, from its
//! first start to its last end; it is per stream, not the device's idle time (that is
//! [`super::DeviceTemporal::idle_us`]). A negative gap (events overlapping on one stream,
//! which HTA's whole-µs rounding produces and CUPTI does not) counts as 0 here; HTA would
//! subtract it.

use serde::{Deserialize, Serialize};

use super::launch::LaunchIndex;
use super::{device_of, stream_of, GpuEvent};
use crate::trace::Trace;

/// HTA's default `consecutive_kernel_delay`: 30, compared with gaps in the trace's unit, so
/// 30 µs. (HTA's docstring says "30 nanoseconds", but its event times are Kineto µs and
/// the comparison is `idle_interval < consecutive_kernel_delay` on those µs values.)
pub const CONSECUTIVE_KERNEL_DELAY_US: f64 = 30.0;

/// One stream's idle time, split by cause. `idle_us = host_wait_us + kernel_wait_us +
/// other_us`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamIdle {
    /// Device: `args.device`, else the event's `pid`.
    pub device: i64,
    /// Stream: `args.stream`, else the event's `tid`.
    pub stream: i64,
    /// Sum of the gaps between consecutive GPU events on the stream, µs.
    pub idle_us: f64,
    /// Gaps after which the next event's CPU call started only after the previous event
    /// ended, µs.
    pub host_wait_us: f64,
    /// Other gaps shorter than [`CONSECUTIVE_KERNEL_DELAY_US`], µs.
    pub kernel_wait_us: f64,
    /// The remaining gaps, µs.
    pub other_us: f64,
}

/// One row per stream, ascending by (device, stream).
pub(crate) fn idle_breakdown(trace: &Trace, gpu: &[GpuEvent<'_>], index: &LaunchIndex) -> Vec<StreamIdle> {
    let mut order: Vec<usize> = (0..gpu.len()).collect();
    let key = |i: usize| (device_of(gpu[i].event), stream_of(gpu[i].event));
    order.sort_by(|&a, &b| {
        let (ea, eb) = (gpu[a].event, gpu[b].event);
        key(a)
            .cmp(&key(b))
            .then_with(|| ea.ts_us.total_cmp(&eb.ts_us))
            .then_with(|| ea.end_us().total_cmp(&eb.end_us()))
            .then_with(|| gpu[a].index.cmp(&gpu[b].index))
    });
    let mut out: Vec<StreamIdle> = Vec::new();
    let mut prev: Option<usize> = None;
    for i in order {
        let (device, stream) = key(i);
        let e = gpu[i].event;
        let same_stream = prev.is_some_and(|p| key(p) == (device, stream));
        if !same_stream {
            out.push(StreamIdle { device, stream, idle_us: 0.0, host_wait_us: 0.0, kernel_wait_us: 0.0, other_us: 0.0 });
        } else if let (Some(p), Some(row)) = (prev, out.last_mut()) {
            let prev_end = gpu[p].event.end_us();
            let gap = (e.ts_us - prev_end).max(0.0);
            row.idle_us += gap;
            if index.api_start(trace, e).is_some_and(|t| t > prev_end) {
                row.host_wait_us += gap;
            } else if gap < CONSECUTIVE_KERNEL_DELAY_US {
                row.kernel_wait_us += gap;
            } else {
                row.other_us += gap;
            }
        }
        prev = Some(i);
    }
    out
}

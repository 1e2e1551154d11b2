//! Temporal breakdown (`temporal` of `gpuspan stats --json`): HTA
//! `TraceAnalysis.get_temporal_breakdown` (`BreakdownAnalysis.get_temporal_breakdown`),
//! per device instead of per rank.
//!
//! For one device, over its GPU activity (kernels, memcpy, memset on every stream):
//! - `span_us`: first start to last end (HTA's `kernel_time(us)`);
//! - `idle_us`: span − length of the union of all activity (HTA
//!   `_get_idle_time_for_kernels`: no event runs on any stream);
//! - `compute_us`: length of the union of COMPUTATION events ([`super::KernelType`]);
//! - `non_compute_us`: span − compute − idle, i.e. time when only memory / communication
//!   work runs;
//! - `*_pct`: 100 × value / span (HTA's `*_pctg`, which HTA rounds to 2 decimals; not
//!   rounded here).
//!
//! Deviations: HTA takes every row that has a stream, so `cuda_sync` rows count as busy
//! non-compute time there; they are not GPU activity here. HTA rounds event times to whole
//! µs (ceil start, floor end) unless `HTA_DISABLE_NS_ROUNDING=1`; gpuspan never rounds.

use serde::{Deserialize, Serialize};

use super::intervals::{length, DeviceTimeline};

/// One device's temporal breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTemporal {
    /// Device: `args.device`, else the event's `pid` (Kineto's GPU rows use pid = device).
    pub device: i64,
    /// First start to last end of the device's GPU activity, µs.
    pub span_us: f64,
    /// Time within the span with no GPU activity on any stream, µs.
    pub idle_us: f64,
    /// Union of the COMPUTATION kernels' intervals, µs.
    pub compute_us: f64,
    /// `span_us − compute_us − idle_us` (memory / communication only), µs.
    pub non_compute_us: f64,
    /// `100 × idle_us / span_us` (0 when the span is 0).
    pub idle_pct: f64,
    /// `100 × compute_us / span_us`.
    pub compute_pct: f64,
    /// `100 × non_compute_us / span_us`.
    pub non_compute_pct: f64,
}

/// One row per device, ascending by device.
pub(crate) fn temporal(timelines: &[DeviceTimeline]) -> Vec<DeviceTemporal> {
    timelines
        .iter()
        .map(|t| {
            let all = t.all();
            let (span, busy) = match (all.first(), all.last()) {
                (Some(f), Some(l)) => (l.1 - f.0, length(&all)),
                _ => (0.0, 0.0),
            };
            let idle = (span - busy).max(0.0);
            let compute = length(&t.by_type[super::KernelType::Computation as usize]);
            let non_compute = (span - compute - idle).max(0.0);
            let pct = |x: f64| if span > 0.0 { 100.0 * x / span } else { 0.0 };
            DeviceTemporal {
                device: t.device,
                span_us: span,
                idle_us: idle,
                compute_us: compute,
                non_compute_us: non_compute,
                idle_pct: pct(idle),
                compute_pct: pct(compute),
                non_compute_pct: pct(non_compute),
            }
        })
        .collect()
}

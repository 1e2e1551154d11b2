//! Interval arithmetic on `[start, end)` µs intervals: merging into a disjoint union
//! (HTA `merge_kernel_intervals`), span, and the per-device, per-kernel-type merged
//! timelines that the temporal breakdown and the kernel-type breakdown share.

use super::{device_of, GpuEvent};

/// Sorts `iv` by start and merges overlapping or touching intervals, HTA
/// `merge_kernel_intervals` (a new group starts only when a start is strictly after the
/// running maximum end). Returns the disjoint union, ascending.
pub(crate) fn merge(iv: &mut [(f64, f64)]) -> Vec<(f64, f64)> {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.total_cmp(&b.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for &(s, e) in iv.iter() {
        match out.last_mut() {
            Some(last) if s <= last.1 => {
                if e > last.1 {
                    last.1 = e;
                }
            }
            _ => out.push((s, e)),
        }
    }
    out
}

/// Total length of disjoint intervals.
pub(crate) fn length(merged: &[(f64, f64)]) -> f64 {
    merged.iter().map(|(s, e)| e - s).sum()
}

/// Sorts `iv` and returns (span, length of their union); (0, 0) when empty. Span = last end
/// − first start.
pub(crate) fn span_and_busy(iv: &mut [(f64, f64)]) -> (f64, f64) {
    let merged = merge(iv);
    match (merged.first(), merged.last()) {
        (Some(f), Some(l)) => (l.1 - f.0, length(&merged)),
        _ => (0.0, 0.0),
    }
}

/// One device's GPU activity, merged per kernel type (index = `KernelType as usize`:
/// computation, communication, memory).
pub(crate) struct DeviceTimeline {
    /// `args.device`, else the event's `pid`.
    pub(crate) device: i64,
    /// Disjoint, ascending intervals during which at least one event of that type runs.
    pub(crate) by_type: [Vec<(f64, f64)>; 3],
}

impl DeviceTimeline {
    /// Disjoint union of all three types.
    pub(crate) fn all(&self) -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = self.by_type.iter().flatten().copied().collect();
        merge(&mut v)
    }

    /// Time (µs) during which exactly one type runs, per type: HTA
    /// `BreakdownAnalysis._get_gpu_kernel_type_time`'s rows named by a single type (a sweep
    /// over the per-type merged intervals; the "A overlapping B" rows are the rest).
    pub(crate) fn exclusive(&self) -> [f64; 3] {
        let mut points: Vec<(f64, i32)> = Vec::new();
        for (t, iv) in self.by_type.iter().enumerate() {
            for &(s, e) in iv {
                points.push((s, 1 << t));
                points.push((e, -(1 << t)));
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out = [0.0; 3];
        let mut running = 0i32;
        for w in 0..points.len() {
            running += points[w].1;
            if let Some(next) = points.get(w + 1) {
                let len = next.0 - points[w].0;
                if len > 0.0 {
                    for (t, o) in out.iter_mut().enumerate() {
                        if running == 1 << t {
                            *o += len;
                        }
                    }
                }
            }
        }
        out
    }
}

/// Per-device timelines of `gpu` (GPU activity events), ascending by device.
pub(crate) fn device_timelines(gpu: &[GpuEvent<'_>]) -> Vec<DeviceTimeline> {
    let mut order: Vec<usize> = (0..gpu.len()).collect();
    order.sort_by_key(|&i| device_of(gpu[i].event));
    let mut out: Vec<DeviceTimeline> = Vec::new();
    let mut raw: [Vec<(f64, f64)>; 3] = Default::default();
    let mut current: Option<i64> = None;
    let flush = |device: Option<i64>, raw: &mut [Vec<(f64, f64)>; 3], out: &mut Vec<DeviceTimeline>| {
        if let Some(device) = device {
            let by_type = [merge(&mut raw[0]), merge(&mut raw[1]), merge(&mut raw[2])];
            raw.iter_mut().for_each(Vec::clear);
            out.push(DeviceTimeline { device, by_type });
        }
    };
    for i in order {
        let g = &gpu[i];
        let d = device_of(g.event);
        if current != Some(d) {
            flush(current, &mut raw, &mut out);
            current = Some(d);
        }
        raw[g.kind as usize].push((g.event.ts_us, g.event.ts_us + g.event.dur_us.max(0.0)));
    }
    flush(current, &mut raw, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_touching_and_nested() {
        let mut v = vec![(5.0, 6.0), (0.0, 2.0), (2.0, 3.0), (1.0, 1.5), (10.0, 12.0)];
        assert_eq!(merge(&mut v), [(0.0, 3.0), (5.0, 6.0), (10.0, 12.0)]);
        assert_eq!(span_and_busy(&mut [(0.0, 2.0), (4.0, 5.0)]), (5.0, 3.0));
        assert_eq!(span_and_busy(&mut []), (0.0, 0.0));
    }

    #[test]
    fn exclusive_time_per_type() {
        // compute [0,10), comm [5,15), memory [20,22) and [8,9) (inside both others).
        let t = DeviceTimeline {
            device: 0,
            by_type: [vec![(0.0, 10.0)], vec![(5.0, 15.0)], vec![(8.0, 9.0), (20.0, 22.0)]],
        };
        assert_eq!(t.exclusive(), [5.0, 5.0, 2.0]);
        assert_eq!(t.all(), [(0.0, 15.0), (20.0, 22.0)]);
    }
}

//! Per-stream GPU timeline of the simulated device.
//!
//! Work on one stream runs in order. The legacy default stream (handle 0 or
//! `CU_STREAM_LEGACY` = 0x1; the per-thread stream 0x2 is treated as the same stream)
//! waits for every blocking stream before each operation, and blocking streams wait for
//! it; streams created with `CU_STREAM_NON_BLOCKING` (0x1 flag) are exempt
//! (CUPTI-NOTES §6, driver API "stream synchronization behavior"). Kernels on different
//! streams may overlap; the sim models no contention between them.

// Integer-keyed maps of the simulator's own handles: one multiply per key, the same
// iteration order in every run (gpuspan_core::id_hash).
use gpuspan_core::id_hash::IdHashMap as HashMap;
use std::collections::VecDeque;

/// CUPTI `streamId` reported for the legacy default stream (what real CUPTI 12 reports
/// for the primary context's NULL stream).
pub const LEGACY_STREAM_ID: u32 = 7;
/// `streamId` of the first created stream; later ones count up.
pub const FIRST_STREAM_ID: u32 = 13;
/// `CU_STREAM_NON_BLOCKING` (cuda.h `CUstream_flags`).
pub const STREAM_NON_BLOCKING: u32 = 0x1;
/// Base of the opaque handle values given out for created streams.
const STREAM_HANDLE_BASE: u64 = 0x5157_0000_0000;
/// Created streams of device `d` have handles from `STREAM_HANDLE_BASE + (d << 28)`.
const DEVICE_HANDLE_SHIFT: u32 = 28;
/// Intervals older than this (relative to now) are forgotten.
const UTIL_WINDOW_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
struct Stream {
    id: u32,
    non_blocking: bool,
    tail_ns: u64,
}

/// Where a piece of work landed on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start_ns: u64,
    pub end_ns: u64,
    /// CUPTI `streamId`.
    pub stream_id: u32,
}

/// What ran: kernels count for NVML GPU utilization, copies/memsets for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    Kernel,
    Memory,
}

/// Busy intervals of one [`WorkKind`] for NVML utilization, `(start_ns, end_ns)` in
/// placement order.
///
/// An interval that starts inside or at the end of the last one is merged into it (the
/// union is all utilization reads), so a saturated GPU's back-to-back kernels are one entry.
/// Intervals that ended more than [`UTIL_WINDOW_NS`] before the newest start are pruned
/// once the list has doubled since the last prune (at least [`PRUNE_FLOOR`] entries):
/// amortized O(1) per push even with more than that many kernels a simulated second, where
/// a prune on every push past a fixed length made the flood (`--kernel-ns`) quadratic.
#[derive(Debug, Default)]
struct BusyIntervals {
    list: VecDeque<(u64, u64)>,
    /// Prune when `list` reaches this length (0: [`PRUNE_FLOOR`]).
    prune_at: usize,
}

/// The shortest list [`BusyIntervals`] prunes.
const PRUNE_FLOOR: usize = 100_000;

impl BusyIntervals {
    fn push(&mut self, start_ns: u64, end_ns: u64) {
        if let Some(back) = self.list.back_mut() {
            if back.0 <= start_ns && start_ns <= back.1 {
                back.1 = back.1.max(end_ns);
                return;
            }
        }
        self.list.push_back((start_ns, end_ns));
        if self.list.len() >= self.prune_at.max(PRUNE_FLOOR) {
            self.forget_before(start_ns.saturating_sub(UTIL_WINDOW_NS));
            self.prune_at = self.list.len() * 2;
        }
    }

    /// Drops the intervals that ended before `horizon_ns`.
    fn forget_before(&mut self, horizon_ns: u64) {
        self.list.retain(|&(_, e)| e >= horizon_ns);
    }
}

/// The device timeline: stream tails plus recent busy intervals for NVML.
#[derive(Debug, Default)]
pub struct Timeline {
    streams: HashMap<u64, Stream>,
    legacy_tail_ns: u64,
    next_id: u32,
    next_handle: u64,
    kernels: BusyIntervals,
    memory: BusyIntervals,
}

/// True for the handles that name the legacy default stream.
pub fn is_legacy(handle: u64) -> bool {
    handle <= 2
}

impl Timeline {
    /// Device 0's timeline.
    pub fn new() -> Self {
        Self::for_device(0)
    }

    /// The timeline of device `device`: its created streams' handles are distinct from every
    /// other device's, while their CUPTI `streamId`s count up from [`FIRST_STREAM_ID`] in
    /// each context, as real CUPTI numbers them (so `streamId` alone does not name a
    /// stream in a process with several devices: `(deviceId, streamId)` does).
    pub fn for_device(device: u32) -> Self {
        Timeline {
            next_id: FIRST_STREAM_ID,
            next_handle: STREAM_HANDLE_BASE + (u64::from(device) << DEVICE_HANDLE_SHIFT),
            ..Default::default()
        }
    }

    /// Creates a stream; returns its opaque handle.
    pub fn create_stream(&mut self, flags: u32) -> u64 {
        self.next_handle += 0x10;
        let h = self.next_handle;
        let id = self.next_id;
        self.next_id += 1;
        self.streams.insert(
            h,
            Stream {
                id,
                non_blocking: flags & STREAM_NON_BLOCKING != 0,
                tail_ns: 0,
            },
        );
        h
    }

    /// Destroys a stream; false if the handle is unknown.
    pub fn destroy_stream(&mut self, handle: u64) -> bool {
        self.streams.remove(&handle).is_some()
    }

    /// True if `handle` is the legacy stream or a live created stream.
    pub fn knows(&self, handle: u64) -> bool {
        is_legacy(handle) || self.streams.contains_key(&handle)
    }

    /// CUPTI `streamId` of a stream handle.
    pub fn stream_id(&self, handle: u64) -> Option<u32> {
        if is_legacy(handle) {
            Some(LEGACY_STREAM_ID)
        } else {
            self.streams.get(&handle).map(|s| s.id)
        }
    }

    fn blocking_tail_ns(&self) -> u64 {
        self.streams
            .values()
            .filter(|s| !s.non_blocking)
            .map(|s| s.tail_ns)
            .max()
            .unwrap_or(0)
    }

    /// Time at which everything enqueued so far on `handle` (including the implicit
    /// legacy-stream dependencies) has finished. `None` for an unknown handle.
    pub fn tail_ns(&self, handle: u64) -> Option<u64> {
        if is_legacy(handle) {
            return Some(self.legacy_tail_ns.max(self.blocking_tail_ns()));
        }
        let s = self.streams.get(&handle)?;
        Some(if s.non_blocking {
            s.tail_ns
        } else {
            s.tail_ns.max(self.legacy_tail_ns)
        })
    }

    /// End of all work on the device.
    pub fn device_tail_ns(&self) -> u64 {
        self.streams
            .values()
            .map(|s| s.tail_ns)
            .max()
            .unwrap_or(0)
            .max(self.legacy_tail_ns)
    }

    /// Enqueues `dur_ns` of work on `handle`, ready no earlier than `ready_ns`.
    pub fn place(
        &mut self,
        handle: u64,
        ready_ns: u64,
        dur_ns: u64,
        kind: WorkKind,
    ) -> Option<Placed> {
        let start_ns = ready_ns.max(self.tail_ns(handle)?);
        let end_ns = start_ns + dur_ns;
        let stream_id = if is_legacy(handle) {
            self.legacy_tail_ns = end_ns;
            LEGACY_STREAM_ID
        } else {
            let s = self.streams.get_mut(&handle)?;
            s.tail_ns = end_ns;
            s.id
        };
        self.add_busy(kind, start_ns, end_ns);
        Some(Placed {
            start_ns,
            end_ns,
            stream_id,
        })
    }

    /// Records `[start_ns, end_ns)` of `kind` work for NVML utilization without touching
    /// any stream's tail (graph nodes, which their dependencies place).
    pub fn add_busy(&mut self, kind: WorkKind, start_ns: u64, end_ns: u64) {
        let list = match kind {
            WorkKind::Kernel => &mut self.kernels,
            WorkKind::Memory => &mut self.memory,
        };
        list.push(start_ns, end_ns);
    }

    /// Makes later work on `handle` wait until `end_ns` (a graph launched on it ends
    /// there). Returns the stream's CUPTI `streamId`; `None` for an unknown handle.
    pub fn extend_tail(&mut self, handle: u64, end_ns: u64) -> Option<u32> {
        if is_legacy(handle) {
            self.legacy_tail_ns = self.legacy_tail_ns.max(end_ns);
            return Some(LEGACY_STREAM_ID);
        }
        let s = self.streams.get_mut(&handle)?;
        s.tail_ns = s.tail_ns.max(end_ns);
        Some(s.id)
    }

    /// Whether created stream `handle` is blocking (made without `CU_STREAM_NON_BLOCKING`,
    /// so the legacy stream orders with it); `None` for the legacy / per-thread streams and
    /// unknown handles.
    pub fn is_blocking(&self, handle: u64) -> Option<bool> {
        if is_legacy(handle) {
            return None;
        }
        self.streams.get(&handle).map(|s| !s.non_blocking)
    }

    /// Percentage (0–100) of `[now - period, now]` with at least one piece of `kind` work
    /// running (NVML `nvmlUtilization_t` semantics, CUPTI-NOTES §7).
    pub fn utilization_pct(&mut self, kind: WorkKind, now_ns: u64, period_ns: u64) -> u32 {
        let from = now_ns.saturating_sub(period_ns);
        let list = match kind {
            WorkKind::Kernel => &mut self.kernels,
            WorkKind::Memory => &mut self.memory,
        };
        list.forget_before(from.saturating_sub(UTIL_WINDOW_NS));
        let mut clipped: Vec<(u64, u64)> = list
            .list
            .iter()
            .map(|&(s, e)| (s.max(from), e.min(now_ns)))
            .filter(|(s, e)| s < e)
            .collect();
        clipped.sort_unstable();
        let (mut busy, mut cur): (u64, Option<(u64, u64)>) = (0, None);
        for (s, e) in clipped {
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    busy += ce - cs;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            busy += ce - cs;
        }
        if period_ns == 0 {
            return 0;
        }
        ((busy as u128 * 100) / period_ns as u128).min(100) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stream_serializes_and_respects_ready_time() {
        let mut t = Timeline::new();
        let s = t.create_stream(0);
        let a = t.place(s, 100, 50, WorkKind::Kernel).unwrap();
        let b = t.place(s, 110, 50, WorkKind::Kernel).unwrap();
        assert_eq!((a.start_ns, a.end_ns), (100, 150));
        assert_eq!(
            (b.start_ns, b.end_ns),
            (150, 200),
            "second starts at first's end"
        );
        let c = t.place(s, 1_000, 5, WorkKind::Kernel).unwrap();
        assert_eq!(c.start_ns, 1_000, "idle stream starts at ready time");
        assert_eq!(a.stream_id, FIRST_STREAM_ID);
    }

    #[test]
    fn legacy_stream_orders_with_blocking_but_not_non_blocking_streams() {
        let mut t = Timeline::new();
        let blocking = t.create_stream(0);
        let nb = t.create_stream(STREAM_NON_BLOCKING);
        t.place(blocking, 0, 1_000, WorkKind::Kernel).unwrap();
        t.place(nb, 0, 5_000, WorkKind::Kernel).unwrap();
        let l = t.place(0, 10, 100, WorkKind::Kernel).unwrap();
        assert_eq!(
            l.start_ns, 1_000,
            "legacy waits for the blocking stream only"
        );
        assert_eq!(l.stream_id, LEGACY_STREAM_ID);
        let b2 = t.place(blocking, 0, 10, WorkKind::Kernel).unwrap();
        assert_eq!(b2.start_ns, 1_100, "blocking stream waits for legacy");
        let n2 = t.place(nb, 0, 10, WorkKind::Kernel).unwrap();
        assert_eq!(n2.start_ns, 5_000, "non-blocking ignores legacy");
        assert_eq!(t.device_tail_ns(), 5_010);
        assert!(t.place(0xdead, 0, 1, WorkKind::Kernel).is_none());
    }

    #[test]
    fn utilization_is_union_of_busy_time_in_period() {
        let mut t = Timeline::new();
        let a = t.create_stream(STREAM_NON_BLOCKING);
        let b = t.create_stream(STREAM_NON_BLOCKING);
        t.place(a, 0, 400, WorkKind::Kernel);
        t.place(b, 200, 400, WorkKind::Kernel); // overlaps: union 0..600
        assert_eq!(t.utilization_pct(WorkKind::Kernel, 1_000, 1_000), 60);
        assert_eq!(t.utilization_pct(WorkKind::Memory, 1_000, 1_000), 0);
        assert_eq!(t.utilization_pct(WorkKind::Kernel, 2_000, 1_000), 0);
    }

    #[test]
    fn back_to_back_kernels_are_one_interval_and_gaps_are_kept() {
        let mut t = Timeline::new();
        let a = t.create_stream(STREAM_NON_BLOCKING);
        // 1 M kernels of 500 ns back to back: a saturated GPU, one merged interval.
        for _ in 0..1_000_000 {
            t.place(a, 0, 500, WorkKind::Kernel);
        }
        assert_eq!(t.kernels.list.len(), 1);
        assert_eq!(t.utilization_pct(WorkKind::Kernel, 500_000_000, 100_000_000), 100);
        // 300,000 kernels of 500 ns, each 1 µs after the last started: none merge, none
        // are older than the window, so all are kept through the prunes, and the GPU was
        // busy half of the time.
        let mut b = Timeline::new();
        let s = b.create_stream(STREAM_NON_BLOCKING);
        for i in 0..300_000u64 {
            b.place(s, i * 1_000, 500, WorkKind::Kernel);
        }
        assert_eq!(b.kernels.list.len(), 300_000);
        assert_eq!(b.utilization_pct(WorkKind::Kernel, 300_000_000, 300_000_000), 50);
    }
}

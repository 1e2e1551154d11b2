//! Memory copies and sets per kind (`memcpy` of `gpuspan stats --json`).
//!
//! Kind: HTA `hta.utils.utils.get_memory_kernel_type` on the event name: `Memset` for
//! `gpu_memset` events, else the first 11 characters of a `Memcpy…` name (`Memcpy HtoD`,
//! `Memcpy DtoH`, `Memcpy DtoD`, `Memcpy HtoH`, `Memcpy PtoP`; gpuspan's own captures write
//! exactly these, or `Memcpy` for other directions), `Memcpy Unknown` otherwise.
//!
//! Bandwidth is the aggregate over the kind, `bytes / total_us / 1000` in GB/s with
//! GB = 10⁹ bytes (Kineto's `memory bandwidth (GB/s)` arg is bytes / ns per event, the
//! same unit). HTA's `get_memory_bw_summary` instead describes a time series of the summed
//! per-event bandwidth of concurrently running copies; the aggregate here weights every
//! byte once. Events without `args.bytes` count 0 bytes.

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use super::GpuEvent;
use crate::trace::{Category, TraceEvent};

/// One kind of memory operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemcpyStats {
    /// `Memcpy HtoD`, `Memcpy DtoH`, `Memcpy DtoD`, …, or `Memset`.
    pub kind: String,
    /// Number of events.
    pub count: usize,
    /// Sum of `args.bytes`.
    pub bytes: u64,
    /// Sum of durations, µs.
    pub total_us: f64,
    /// `bytes / total_us / 1000`: GB/s (10⁹ bytes per second); 0 when `total_us` is 0.
    pub gb_per_s: f64,
}

/// HTA `get_memory_kernel_type` for a memcpy / memset event; `None` for other events.
pub fn memory_kind(e: &TraceEvent) -> Option<&str> {
    match e.cat.as_ref()? {
        Category::GpuMemset => Some("Memset"),
        Category::GpuMemcpy => {
            let n = e.name.as_str();
            if n.starts_with("Memset") {
                Some("Memset")
            } else if !n.starts_with("Memcpy") {
                Some("Memcpy Unknown")
            } else {
                let cut = n.char_indices().nth(11).map_or(n.len(), |(i, _)| i);
                Some(&n[..cut])
            }
        }
        _ => None,
    }
}

/// One row per kind, by `total_us` descending (ties by kind).
pub(crate) fn memcpy_stats(gpu: &[GpuEvent<'_>]) -> Vec<MemcpyStats> {
    let mut by_kind: HashMap<&str, (usize, u64, f64)> = HashMap::new();
    for g in gpu {
        let Some(kind) = memory_kind(g.event) else { continue };
        let row = by_kind.entry(kind).or_insert((0, 0, 0.0));
        row.0 += 1;
        row.1 += g.event.bytes.unwrap_or(0).max(0) as u64;
        row.2 += g.event.dur_us;
    }
    let mut rows: Vec<MemcpyStats> = by_kind
        .into_iter()
        .map(|(kind, (count, bytes, total_us))| MemcpyStats {
            kind: kind.to_string(),
            count,
            bytes,
            total_us,
            gb_per_s: if total_us > 0.0 { bytes as f64 / total_us / 1000.0 } else { 0.0 },
        })
        .collect();
    rows.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then_with(|| a.kind.cmp(&b.kind)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cat: Category, name: &str) -> TraceEvent {
        TraceEvent { cat: Some(cat), name: name.into(), ..Default::default() }
    }

    #[test]
    fn kinds_as_hta() {
        assert_eq!(memory_kind(&ev(Category::GpuMemcpy, "Memcpy HtoD (Pageable -> Device)")), Some("Memcpy HtoD"));
        assert_eq!(memory_kind(&ev(Category::GpuMemcpy, "Memcpy DtoD")), Some("Memcpy DtoD"));
        assert_eq!(memory_kind(&ev(Category::GpuMemcpy, "Memcpy")), Some("Memcpy"));
        assert_eq!(memory_kind(&ev(Category::GpuMemcpy, "copy")), Some("Memcpy Unknown"));
        assert_eq!(memory_kind(&ev(Category::GpuMemset, "Memset (Device)")), Some("Memset"));
        assert_eq!(memory_kind(&ev(Category::Kernel, "Memcpy HtoD")), None);
    }
}

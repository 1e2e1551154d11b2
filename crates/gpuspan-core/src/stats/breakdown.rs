//! Kernel-type breakdown (`kernel_types` of `gpuspan stats --json`): HTA
//! `TraceAnalysis.get_gpu_kernel_breakdown` (`BreakdownAnalysis.get_gpu_kernel_breakdown`)
//! with `include_memory_kernels=True`.
//!
//! Classification, HTA `hta.utils.utils.get_kernel_type`, applied to every GPU activity
//! event (kernel, memcpy, memset):
//! - COMMUNICATION: name matches `^nccl.*Kernel` (HTA `is_comm_kernel`);
//! - MEMORY: a `gpu_memcpy` / `gpu_memset` event, or a name matching
//!   `^Memcpy|^Memset|^dma` (HTA `is_memory_kernel`; Kineto names its memcpy / memset rows
//!   `Memcpy …` / `Memset …`, so category and name agree on Kineto files);
//! - COMPUTATION: every other kernel.
//!
//! Deviation: HTA has a fourth type, OTHER, for names matching `.*Sync` or containing
//! `Memcpy` later in the name (`is_compute_kernel` is false for them); it exists for
//! `cuda_sync` rows (`Stream Sync`, `Event Sync`), which HTA reads as GPU rows because they
//! carry a stream. gpuspan never counts `cuda_sync` rows as GPU activity, and a *kernel*
//! whose name happens to contain `Sync` is computation here (HTA leaves it out of this
//! breakdown and counts it as non-compute in the temporal breakdown).

use serde::{Deserialize, Serialize};

use super::intervals::DeviceTimeline;
use super::GpuEvent;
use crate::trace::{Category, TraceEvent};

/// HTA `KernelType` (without OTHER, see the module documentation). Serialized in HTA's
/// spelling: `"COMPUTATION"`, `"COMMUNICATION"`, `"MEMORY"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KernelType {
    /// Compute kernels (everything that is neither communication nor memory).
    Computation = 0,
    /// NCCL kernels (`^nccl.*Kernel`).
    Communication = 1,
    /// Memcpy / memset (`gpu_memcpy`, `gpu_memset`, or `^Memcpy|^Memset|^dma` names).
    Memory = 2,
}

impl KernelType {
    /// All three, in index order.
    pub const ALL: [KernelType; 3] = [KernelType::Computation, KernelType::Communication, KernelType::Memory];

    /// HTA's spelling (`COMPUTATION`, `COMMUNICATION`, `MEMORY`).
    pub fn as_str(self) -> &'static str {
        match self {
            KernelType::Computation => "COMPUTATION",
            KernelType::Communication => "COMMUNICATION",
            KernelType::Memory => "MEMORY",
        }
    }
}

/// The kernel type of a GPU activity event (kernel, memcpy, memset); `None` for anything
/// else. Rules in the module documentation (HTA `get_kernel_type`).
pub fn kernel_type(e: &TraceEvent) -> Option<KernelType> {
    match e.cat.as_ref()? {
        Category::GpuMemcpy | Category::GpuMemset => Some(KernelType::Memory),
        Category::Kernel => Some(kernel_type_of_name(&e.name)),
        _ => None,
    }
}

/// HTA `get_kernel_type` on a kernel name, OTHER folded into COMPUTATION.
fn kernel_type_of_name(name: &str) -> KernelType {
    // `^nccl.*Kernel` (re.match: anchored at the start).
    if name.strip_prefix("nccl").is_some_and(|rest| rest.contains("Kernel")) {
        return KernelType::Communication;
    }
    if name.starts_with("Memcpy") || name.starts_with("Memset") || name.starts_with("dma") {
        return KernelType::Memory;
    }
    KernelType::Computation
}

/// One row of `kernel_types`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelTypeStats {
    /// The type (`"COMPUTATION"`, `"COMMUNICATION"`, `"MEMORY"`), JSON key `type`.
    #[serde(rename = "type")]
    pub kernel_type: KernelType,
    /// GPU activity events of this type.
    pub count: usize,
    /// Sum of their durations, µs (so COMPUTATION + COMMUNICATION = `kernel_total_us`
    /// unless a kernel is named like a memory operation).
    pub total_us: f64,
    /// `total_us` / (sum of `total_us` over the three types), 0..1; 0 when there is no GPU
    /// activity. HTA's `percentage` / 100 when no two events overlap in time (one stream).
    pub share: f64,
    /// Time during which this type and no other runs, µs, summed over devices: HTA's
    /// `kernel_type_df` row of this exact name (`BreakdownAnalysis._get_gpu_kernel_type_time`,
    /// per rank there). With overlap across streams HTA's `percentage` for the row is
    /// `exclusive_us` / Σ over devices of the union of all GPU activity (its rows
    /// "A overlapping B" take the rest), which is Σ `temporal[].span_us − idle_us`. HTA
    /// truncates every sweep segment to whole µs (`astype(int)`), even with
    /// `HTA_DISABLE_NS_ROUNDING=1`, so its sums run low on traces with fractional µs.
    pub exclusive_us: f64,
}

/// The three rows, by `total_us` descending (ties in [`KernelType::ALL`] order).
pub(crate) fn kernel_types(gpu: &[GpuEvent<'_>], timelines: &[DeviceTimeline]) -> Vec<KernelTypeStats> {
    let mut count = [0usize; 3];
    let mut total = [0.0f64; 3];
    for g in gpu {
        count[g.kind as usize] += 1;
        total[g.kind as usize] += g.event.dur_us;
    }
    let mut exclusive = [0.0f64; 3];
    for t in timelines {
        for (x, e) in exclusive.iter_mut().zip(t.exclusive()) {
            *x += e;
        }
    }
    let sum: f64 = total.iter().sum();
    let mut rows: Vec<KernelTypeStats> = KernelType::ALL
        .iter()
        .map(|&k| {
            let i = k as usize;
            KernelTypeStats {
                kernel_type: k,
                count: count[i],
                total_us: total[i],
                share: if sum > 0.0 { total[i] / sum } else { 0.0 },
                exclusive_us: exclusive[i],
            }
        })
        .collect();
    rows.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then_with(|| a.kernel_type.cmp(&b.kernel_type)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hta_classification() {
        assert_eq!(kernel_type_of_name("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)"), KernelType::Communication);
        assert_eq!(kernel_type_of_name("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"), KernelType::Communication);
        assert_eq!(kernel_type_of_name("nccl_something_else"), KernelType::Computation, "needs Kernel after nccl");
        assert_eq!(kernel_type_of_name("void ncclKernel"), KernelType::Computation, "anchored at the start");
        assert_eq!(kernel_type_of_name("Memcpy DtoD (Device -> Device)"), KernelType::Memory);
        assert_eq!(kernel_type_of_name("dma_copy"), KernelType::Memory);
        assert_eq!(kernel_type_of_name("sm90_xmma_gemm"), KernelType::Computation);
        let memset = TraceEvent { cat: Some(Category::GpuMemset), name: "anything".into(), ..Default::default() };
        assert_eq!(kernel_type(&memset), Some(KernelType::Memory));
        let api = TraceEvent { cat: Some(Category::CudaRuntime), name: "cudaLaunchKernel".into(), ..Default::default() };
        assert_eq!(kernel_type(&api), None);
        assert_eq!(serde_json::to_string(&KernelType::Communication).unwrap(), "\"COMMUNICATION\"");
    }
}

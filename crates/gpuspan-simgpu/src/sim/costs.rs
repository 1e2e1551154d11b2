//! Host-side costs charged to the virtual clock per driver call, and GPU-side latencies.
//!
//! Orders of magnitude from public measurements of H100 / CUDA 12 driver overheads
//! (launch ≈ 2–5 µs host, event record ≈ 1 µs; CUPTI-NOTES §6 "Cost"). They only shape
//! the simulated timeline; nothing depends on their exact values.

/// Host cost of `cuLaunchKernel`.
pub const LAUNCH_HOST_NS: u64 = 3_000;
/// From the launch call's entry to the earliest GPU start of the kernel.
pub const LAUNCH_LATENCY_NS: u64 = 2_000;
/// Host cost of `cuEventRecord`.
pub const EVENT_RECORD_HOST_NS: u64 = 1_000;
/// Host cost of an async memcpy / memset enqueue.
pub const ASYNC_COPY_HOST_NS: u64 = 2_500;
/// Host cost of a synchronizing call after the awaited work has ended.
pub const SYNC_RETURN_NS: u64 = 1_000;
/// Host cost of any other driver call (queries, create/destroy, ...).
pub const DEFAULT_CALL_NS: u64 = 500;
/// Kernel duration when `kernelParams` is NULL (crate docs, "kernel durations").
pub const DEFAULT_KERNEL_NS: u64 = 1_000;
/// Host cost of `cuGraphLaunch`, whatever the number of nodes: one submission of a whole
/// graph (the point of CUDA graphs; same order as one launch).
pub const GRAPH_LAUNCH_HOST_NS: u64 = 4_000;
/// Host cost of `cuGraphInstantiate*` per node of the graph (plus [`DEFAULT_CALL_NS`]).
pub const GRAPH_INSTANTIATE_NS_PER_NODE: u64 = 200;

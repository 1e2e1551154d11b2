//! Issue 14, item 3: the join and classification allocate nothing per record in steady
//! state. A counting global allocator (this test binary's own, counting only the calling
//! thread's allocations) watches [`JoinedEvents::gpu_attribution`] over 30 000 kernels whose
//! names the classifier has seen, and [`JoinedEvents::new`] (the join's plan: correlation
//! map and write order) over 3 000 and 30 000 records: its allocations grow with the
//! containers' doublings, not with the records.

use gpuspan_core::activity::{ActivityRecord, ExternalCorrelationRecord, KernelRecord, GPUSPAN_EXTERNAL_KIND};
use gpuspan_core::classify::Classifier;
use gpuspan_core::join::{JoinOptions, JoinedEvents, ScopeTable};
use gpuspan_core::scope::{InlineName, ScopeEvent};
use gpuspan_core::trace::EventSource;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const NAMES: [&str; 4] = [
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4> >",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_execute_segment_k_off_kernel",
    "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
];

/// `n` kernels with their external correlations, names interned as the decoder does (one
/// `Arc<str>` per distinct name); kernel i, named `names[(i + 1) % 4]`, launched in scope
/// `2 + i % 4`.
fn records(n: usize, names: &[Arc<str>]) -> Vec<ActivityRecord> {
    let mut v = Vec::with_capacity(2 * n);
    for i in 0..n {
        let corr = i as u32 + 1;
        v.push(ActivityRecord::ExternalCorrelation(ExternalCorrelationRecord {
            external_kind: GPUSPAN_EXTERNAL_KIND,
            external_id: 2 + (i % 4) as u64,
            correlation_id: corr,
        }));
        v.push(ActivityRecord::Kernel(KernelRecord {
            name: names[(i + 1) % names.len()].clone(),
            start_ns: 5_000 + 1_000 * i as u64,
            end_ns: 5_900 + 1_000 * i as u64,
            device_id: 0,
            context_id: 1,
            stream_id: 7,
            correlation_id: corr,
            grid: [132, 1, 1],
            block: [256, 1, 1],
            registers_per_thread: 32,
            static_shared_memory_bytes: 0,
            dynamic_shared_memory_bytes: 0,
            graph_id: 0,
        }));
    }
    v
}

fn scopes() -> ScopeTable {
    let mut t = ScopeTable::new();
    let ev = |id, parent, name: &str| ScopeEvent::Begin { id, parent, thread_id: 1, ts_ns: 1, name: InlineName::new(name) };
    t.apply(&ev(1, 0, "dit.step 0/50"));
    // Scope 5 is not a stage: its kernels take their name's class.
    for (id, n) in [(2, "attention.spatial"), (3, "attention.cross"), (4, "ffn"), (5, "block 3")] {
        t.apply(&ev(id, 1, n));
    }
    t
}

/// Allocations of `JoinedEvents::new` and of attributing every event, on `recs`.
fn join(recs: &[ActivityRecord], table: &ScopeTable, cl: &mut Classifier) -> (u64, u64, usize) {
    let opts = JoinOptions { base_time_ns: 0, process_id: 1, include_api: true, trace_seed: None, env_traceparent: None };
    let a0 = allocations();
    let mut j = JoinedEvents::new(recs, table, cl, &opts, false);
    let a1 = allocations();
    let mut attributed = 0;
    for i in 0..j.len() {
        if let Some(a) = j.gpu_attribution(i) {
            attributed += usize::from(a.scope.is_some() && a.step.is_some() && !a.stage.is_empty());
        }
    }
    let a2 = allocations();
    (a1 - a0, a2 - a1, attributed)
}

#[test]
fn join_and_classify_allocate_nothing_per_record() {
    let names: Vec<Arc<str>> = NAMES.iter().map(|n| Arc::from(*n)).collect();
    let table = scopes();
    let mut cl = Classifier::default();
    let (small, large) = (records(3_000, &names), records(30_000, &names));
    // Warm-up: the classifier meets each name once.
    let (_, _, n) = join(&small, &table, &mut cl);
    assert_eq!(n, 3_000);

    let (plan_small, attr_small, n) = join(&small, &table, &mut cl);
    assert_eq!(n, 3_000);
    let (plan_large, attr_large, n) = join(&large, &table, &mut cl);
    assert_eq!(n, 30_000, "every kernel is attributed to its scope and step");
    assert!(plan_small > 0, "the counting allocator sees this thread's allocations");
    assert_eq!((attr_small, attr_large), (0, 0), "allocations while attributing 3 000 / 30 000 kernels");
    // 10x the records: a few more doublings of the plan's containers, nothing per record.
    assert!(plan_large <= plan_small + 16, "the join's plan allocated {plan_small} times for 3 000 kernels, {plan_large} for 30 000");

    // And the attribution is the right one: the stage scope's stage, NCCL's communication
    // whatever the scope, and the name's class under a scope that is not a stage.
    let opts = JoinOptions { base_time_ns: 0, process_id: 1, include_api: true, trace_seed: None, env_traceparent: None };
    let mut j = JoinedEvents::new(&small[..16], &table, &mut cl, &opts, false);
    let stages: Vec<String> = (0..j.len()).filter_map(|i| j.gpu_attribution(i).map(|a| a.stage.to_string())).collect();
    assert_eq!(stages[..4], ["attention.spatial", "attention.cross", "communication", "attention"]);
    assert_eq!(stages[4..8], stages[..4]);
}

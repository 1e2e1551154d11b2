//! Record and scope-event builders shared by the unit tests of [`crate::join`] and
//! [`crate::spans`] (test builds only).

use crate::activity::*;
use crate::scope::{InlineName, ScopeEvent};
use std::sync::Arc;

/// A begin event on thread 11.
pub fn begin(id: u64, parent: u64, ts: u64, name: &str) -> ScopeEvent {
    ScopeEvent::Begin { id, parent, thread_id: 11, ts_ns: ts, name: InlineName::new(name) }
}

/// A kernel on device 0, stream 7: grid 4×2×1, block 128, 32 registers, 1 KiB dynamic
/// shared memory.
pub fn kernel(name: &str, corr: u32, start: u64, end: u64) -> ActivityRecord {
    ActivityRecord::Kernel(KernelRecord {
        name: Arc::from(name),
        start_ns: start,
        end_ns: end,
        device_id: 0,
        context_id: 1,
        stream_id: 7,
        correlation_id: corr,
        grid: [4, 2, 1],
        block: [128, 1, 1],
        registers_per_thread: 32,
        static_shared_memory_bytes: 0,
        dynamic_shared_memory_bytes: 1024,
        graph_id: 0,
    })
}

/// gpuspan's external correlation (kind CUSTOM2) of `corr` to scope `id`.
pub fn ext(corr: u32, id: u64) -> ActivityRecord {
    ActivityRecord::ExternalCorrelation(ExternalCorrelationRecord {
        external_kind: GPUSPAN_EXTERNAL_KIND,
        external_id: id,
        correlation_id: corr,
    })
}

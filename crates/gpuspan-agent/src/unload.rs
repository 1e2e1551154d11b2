//! Kernel names are read before the code they belong to is unloaded (issue 11, item 3).
//!
//! A CUPTI kernel record carries its name as a pointer (`CUpti_ActivityKernel*.name`); the
//! agent reads the string when it decodes the record, which may be long after the kernel
//! ran. The application may unload the kernel's module in between: Triton and torch.compile
//! unload code they replace, and at process exit the CUDA runtime unregisters every
//! fatbinary (`__cudaUnregisterFatBinary` → `cuLibraryUnload` / `cuModuleUnload`) while
//! records may still sit in CUPTI's buffers. Who owns the name's memory is not documented,
//! so the agent assumes the worst: it goes with the module.
//!
//! So while CUPTI collects, the subscriber callback is enabled for the driver's unload calls
//! (`gpuspan_cupti::activity::DRIVER_UNLOAD_CBIDS`) and at their ENTER site, before the
//! driver lets go of anything, [`before_unload`] flushes CUPTI (`cuptiActivityFlushAll(0)`,
//! allowed from a driver API callback, CUPTI-NOTES §1; not from a resource callback, which
//! is why MODULE_UNLOAD_STARTING is not used) and waits until the collector thread has
//! decoded every buffer that flush completed: the names are then interned copies. The wait
//! is bounded by [`UNLOAD_WAIT`]; on a timeout the unload goes ahead (counted, one warning).
//! When the collector no longer runs (the exit handler has finished collecting) nothing is
//! waited for: there is nothing left to decode.
//!
//! Cost: one flush and one short wait per unload, on the thread that unloads. Unloads are
//! rare while serving; at exit the runtime may unload many fatbinaries, and each finds the
//! buffers already decoded after the first.

use crate::shared::shared;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest an unload waits for the collector to decode the flushed buffers.
pub const UNLOAD_WAIT: Duration = Duration::from_millis(500);

/// Set while the collector thread decodes buffers (it sets and clears it).
static COLLECTOR_RUNNING: AtomicBool = AtomicBool::new(false);

/// Called by the collector thread when it starts (`true`) and when it stops collecting.
pub fn set_collector_running(on: bool) {
    COLLECTOR_RUNNING.store(on, Ordering::Release);
}

/// The ENTER callback of a driver unload call: flush CUPTI and wait (at most
/// [`UNLOAD_WAIT`]) until every buffer completed so far is decoded. Never panics; does
/// nothing while CUPTI does not collect or no collector runs.
pub fn before_unload() {
    let Some(a) = shared() else { return };
    if !a.fine_on.load(Ordering::Acquire) || !COLLECTOR_RUNNING.load(Ordering::Acquire) {
        return;
    }
    let Some(api) = &a.api else { return };
    // Completes (and hands to our completion callback) every buffer whose records are done.
    let _ = api.flush_all(0);
    let target = a.counters.buffers_queued.load(Ordering::Acquire);
    a.counters.unload_drains.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    while a.counters.buffers_decoded.load(Ordering::Acquire) < target {
        if !COLLECTOR_RUNNING.load(Ordering::Acquire) {
            return;
        }
        if t0.elapsed() >= UNLOAD_WAIT {
            if a.counters.unload_drain_timeouts.fetch_add(1, Ordering::Relaxed) == 0 {
                crate::log::warn(&format!(
                    "the application unloads GPU code while {} CUPTI buffers wait to be decoded; went ahead after {} ms (kernel names of that code may be wrong)",
                    target.saturating_sub(a.counters.buffers_decoded.load(Ordering::Relaxed)),
                    UNLOAD_WAIT.as_millis()
                ));
            }
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

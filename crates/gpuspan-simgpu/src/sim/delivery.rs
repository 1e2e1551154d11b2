//! The sim-owned worker thread that hands buffers back through the completion callback,
//! as CUPTI's worker does (CUPTI-NOTES §1 "Threads"): never on the application thread,
//! never under the sim lock.

use super::buffers::Delivery;
use super::{sim, State};
use cudarc::cupti::sys::CUpti_BuffersCallbackCompleteFunc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

/// How often the worker looks for full buffers that became complete.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Signalled when a flush job's callbacks have all returned.
#[derive(Debug, Default)]
pub struct Done {
    finished: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    fn signal(&self) {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        while !*f {
            f = self.cv.wait(f).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Buffers to hand back, in order.
#[derive(Debug)]
pub struct Job {
    pub deliveries: Vec<Delivery>,
    pub complete: CUpti_BuffersCallbackCompleteFunc,
    pub done: Option<Arc<Done>>,
}

fn worker_id() -> &'static OnceLock<ThreadId> {
    static ID: OnceLock<ThreadId> = OnceLock::new();
    &ID
}

/// True on the delivery thread (FlushAll from a buffer callback is refused).
pub fn on_delivery_thread() -> bool {
    worker_id().get() == Some(&std::thread::current().id())
}

/// Starts the worker once per process.
pub fn ensure_started() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let h = std::thread::Builder::new()
            .name("gpuspan-sim-cupti".into())
            .spawn(run)
            .expect("spawn delivery thread");
        let _ = worker_id().set(h.thread().id());
    });
}

fn next_job() -> Job {
    let s = sim();
    let mut st = s.lock();
    loop {
        if let Some(job) = st.jobs.pop_front() {
            return job;
        }
        let now = st.clock.now_ns();
        if st.cupti.complete.is_some() && st.pool.has_deliverable(now) {
            let deliveries = st.pool.take_full_complete(now);
            return Job {
                deliveries,
                complete: st.cupti.complete,
                done: None,
            };
        }
        st = s
            .wake
            .wait_timeout(st, POLL_INTERVAL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn run() {
    loop {
        let job = next_job();
        if let Some(cb) = job.complete {
            for d in &job.deliveries {
                // Panics must not cross into C nor kill the worker.
                let _ = std::panic::catch_unwind(|| {
                    // SAFETY: `cb` is the client's registered completion callback with the
                    // CUPTI signature; ctx is NULL and streamId 0 as in CUPTI ≥ 6.0
                    // (CUPTI-NOTES §1); the buffer is the client's own, handed back once.
                    unsafe { cb(std::ptr::null_mut(), 0, d.ptr, d.size, d.valid_size) }
                });
            }
        }
        if let Some(done) = job.done {
            done.signal();
        }
    }
}

/// Queues `deliveries` and blocks (with the lock released) until their completion
/// callbacks have returned — `cuptiActivityFlushAll` semantics.
pub fn deliver_and_wait(mut st: MutexGuard<'_, State>, deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    ensure_started();
    let done = Arc::new(Done::default());
    let complete = st.cupti.complete;
    st.jobs.push_back(Job {
        deliveries,
        complete,
        done: Some(done.clone()),
    });
    drop(st);
    sim().wake.notify_all();
    done.wait();
}

//! The sim-owned worker thread that hands buffers back through the completion callback,
//! as CUPTI's worker does (CUPTI-NOTES §1 "Threads"): never on the application thread,
//! never under the sim lock.

use super::buffers::Delivery;
use super::cupti::Complete;
use super::{sim, State};
use gpuspan_cupti::multi_subscriber::BufferCompleteInfo;
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

/// Buffers to hand back, in order, each with the completion callback of the client that
/// lent it.
#[derive(Debug)]
pub struct Job {
    pub deliveries: Vec<(Delivery, Complete)>,
    pub done: Option<Arc<Done>>,
}

/// Pairs each of `deliveries` with `complete`; buffers of a client without callbacks are
/// forgotten (CUPTI cannot hand them back either).
pub fn with_callback(deliveries: Vec<Delivery>, complete: Option<Complete>) -> Vec<(Delivery, Complete)> {
    match complete {
        Some(c) => deliveries.into_iter().map(|d| (d, c)).collect(),
        None => Vec::new(),
    }
}

/// The buffers of every client that `take` picks (full + complete, flush, forced).
pub fn take_all(st: &mut State, mut take: impl FnMut(&mut super::buffers::Pool) -> Vec<Delivery>) -> Vec<(Delivery, Complete)> {
    let mut out = Vec::new();
    for (_, c) in st.cupti.clients_mut() {
        let d = take(&mut c.pool);
        out.extend(with_callback(d, c.buffers.complete()));
    }
    out
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
        if st.cupti.clients().any(|(_, c)| c.pool.has_deliverable(now)) {
            let deliveries = take_all(&mut st, |p| p.take_full_complete(now));
            if !deliveries.is_empty() {
                return Job { deliveries, done: None };
            }
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
        for (d, cb) in &job.deliveries {
            // Panics must not cross into C nor kill the worker.
            let _ = std::panic::catch_unwind(|| match *cb {
                // SAFETY: `cb` is the client's registered completion callback with the
                // CUPTI signature; ctx is NULL and streamId 0 as in CUPTI ≥ 6.0
                // (CUPTI-NOTES §1); the buffer is the client's own, handed back once.
                Complete::V1(f) => unsafe { f(std::ptr::null_mut(), 0, d.ptr, d.size, d.valid_size) },
                Complete::V2(f) => {
                    let mut info = BufferCompleteInfo {
                        struct_size: std::mem::size_of::<BufferCompleteInfo>(),
                        thread_id: super::os_tid() as u64,
                        record_layouts: std::ptr::null_mut(),
                        num_record_layouts: 0,
                    };
                    // SAFETY: as above with the V2 signature; `info` outlives the call.
                    unsafe { f(d.ptr, d.size, d.valid_size, &mut info) }
                }
            });
        }
        if let Some(done) = job.done {
            done.signal();
        }
    }
}

/// Queues `deliveries` and blocks (with the lock released) until their completion
/// callbacks have returned — `cuptiActivityFlushAll` semantics.
pub fn deliver_and_wait(mut st: MutexGuard<'_, State>, deliveries: Vec<(Delivery, Complete)>) {
    if deliveries.is_empty() {
        return;
    }
    ensure_started();
    let done = Arc::new(Done::default());
    st.jobs.push_back(Job {
        deliveries,
        done: Some(done.clone()),
    });
    drop(st);
    sim().wake.notify_all();
    done.wait();
}

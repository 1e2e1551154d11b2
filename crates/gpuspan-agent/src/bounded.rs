//! Waiting with a deadline: the agent's finishing work (exit budget) must never wait
//! forever on a thread, a lock or a CUPTI call, since the thread that called `exit` may be
//! the one holding what it waits for. Used by the collector thread's finish and by windows.

use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Waits until `h` has finished or `until` passed (polling every ms): joins it if it
/// finished, else leaves it running (it ends with the process). Returns whether it ended.
pub fn join_until(h: std::thread::JoinHandle<()>, until: Instant) -> bool {
    while !h.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    if h.is_finished() {
        let _ = h.join();
        true
    } else {
        false
    }
}

/// Runs `f` on a thread of its own named `name` and waits for it at most until `until`:
/// `Some(result)`, or `None` when it did not finish in time (it goes on, detached, and ends
/// with the process) or no thread could be made (then `f` runs here, unbounded).
pub fn run_bounded<R: Send + 'static>(name: &str, until: Instant, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let f = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let g = f.clone();
    let spawned = crate::signals::with_async_signals_blocked(|| {
        std::thread::Builder::new().name(name.into()).spawn(move || {
            if let Some(f) = g.lock().ok().and_then(|mut x| x.take()) {
                let _ = tx.send(f());
            }
        })
    });
    match spawned {
        Ok(_) => rx.recv_timeout(until.saturating_duration_since(Instant::now())).ok(),
        Err(_) => f.lock().ok().and_then(|mut x| x.take()).map(|f| f()),
    }
}

/// Locks `m`, waiting at most until `until` (another thread may hold it, or be stuck
/// holding it); a poisoned lock is an error too. `what` names it in the error.
pub fn lock_until<'a, T>(m: &'a Mutex<T>, until: Instant, what: &str) -> Result<MutexGuard<'a, T>, String> {
    loop {
        match m.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(_)) => return Err(format!("{what} poisoned")),
            Err(TryLockError::WouldBlock) if Instant::now() >= until => {
                return Err(format!("{what} was still held by another thread when the exit budget ran out"))
            }
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The exit budget (`GPUSPAN_EXIT_BUDGET`) of one finish (`collector_thread::finish`), in phases: the agent's threads
/// stop within the first quarter, CUPTI hands over its last buffers by three eighths,
/// decoding, coarse events and spans are done by half ([`ExitBudget::collect_deadline`]),
/// and the capture write stops at [`ExitBudget::deadline`]. A phase that overruns (a thread
/// or CUPTI stuck on a lock of the thread that called `exit`) costs only its own share.
#[derive(Debug, Clone, Copy)]
pub struct ExitBudget {
    start: Instant,
    total: Duration,
}

impl ExitBudget {
    /// A budget of `total` starting now.
    pub fn start(total: Duration) -> ExitBudget {
        ExitBudget { start: Instant::now(), total }
    }
    /// When the agent's threads must have stopped: a quarter of the budget (a thread stuck
    /// in a CUDA / CUPTI call is left behind then).
    pub fn threads_deadline(&self) -> Instant {
        self.start + self.total / 4
    }
    /// When CUPTI must have handed over its last buffers: three eighths of the budget.
    pub fn cupti_deadline(&self) -> Instant {
        self.start + self.total * 3 / 8
    }
    /// When collecting (threads, CUPTI, decoding, spans) must be done: half the budget.
    pub fn collect_deadline(&self) -> Instant {
        self.start + self.total / 2
    }
    /// When everything must be done.
    pub fn deadline(&self) -> Instant {
        self.start + self.total
    }
    /// Time left until `until`, zero when past.
    pub fn left(until: Instant) -> Duration {
        until.saturating_duration_since(Instant::now())
    }
    /// Milliseconds since the start.
    pub fn elapsed_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }
}


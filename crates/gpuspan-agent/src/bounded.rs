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
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        if let Some(f) = g.lock().ok().and_then(|mut x| x.take()) {
            let _ = tx.send(f());
        }
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

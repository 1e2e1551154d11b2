//! The exit handler (`atexit`) and the thread that does its work.
//!
//! `exit()` may run on any thread in any state: a worker's SIGTERM handler calls it from
//! signal context, possibly on a thread interrupted inside `malloc` (holding its arena lock),
//! inside a CUDA / CUPTI call or holding one of the agent's locks. Anything the handler
//! itself did that allocates or locks could then wait forever on the very thread it runs on:
//! the worker would hang at exit instead of exiting. So the handler does nothing of the
//! kind. The finishing work ([`lifecycle::flush_capture`]) runs on a thread started at
//! activation (`gpuspan-exit`, parked until then, with asynchronous signals blocked so a
//! process-directed signal never lands on it); the handler only wakes it
//! ([`std::thread::Thread::unpark`]: an atomic and a futex wake) and waits for it with
//! `clock_gettime` and `nanosleep`, at most the exit budget plus [`EXIT_GRACE`]. If the
//! finishing thread does not report in time (it may need a lock the interrupted thread
//! holds), one line written with `write(2)` says so and the process goes on exiting; the
//! capture is lost, the worker is not.

use crate::lifecycle;
use crate::shared::{generation, GENERATIONS};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Beyond the exit budget, how long `at_exit` waits for the finishing thread (joins, the
/// last OTLP request's grace) before it lets the process go on exiting.
pub const EXIT_GRACE: Duration = Duration::from_millis(500);

/// What `at_exit` prints (with `write(2)`, no allocation, no lock) when the finishing
/// thread did not report within the exit budget plus [`EXIT_GRACE`].
pub const NOT_FINISHED_LINE: &str = "gpuspan: warning: finishing did not complete within the exit budget (GPUSPAN_EXIT_BUDGET; a lock held by the thread that called exit?): the process exits without the capture\n";

/// The finishing thread's state: not asked yet, asked, done.
const IDLE: u8 = 0;
const ASKED: u8 = 1;
const DONE: u8 = 2;

/// One generation's finishing thread (a forked child that activates itself has its own).
struct ExitWorker {
    /// Set once its thread was spawned (so two activating threads spawn one).
    spawned: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
    state: AtomicU8,
}

static WORKERS: [ExitWorker; GENERATIONS] =
    [const { ExitWorker { spawned: AtomicBool::new(false), thread: OnceLock::new(), state: AtomicU8::new(IDLE) } }; GENERATIONS];

fn worker() -> Option<&'static ExitWorker> {
    WORKERS.get(generation())
}

/// Starts this generation's finishing thread (once) and registers `at_exit` (once per
/// process). Called when activation succeeded. Without a thread (none can be made), the
/// exit handler does the work itself.
pub fn arm() {
    if let Some(w) = worker() {
        if !w.spawned.swap(true, Ordering::AcqRel) {
            let spawned = crate::signals::with_async_signals_blocked(|| {
                std::thread::Builder::new().name("gpuspan-exit".into()).spawn(move || {
                    while w.state.load(Ordering::Acquire) != ASKED {
                        std::thread::park();
                    }
                    let outcome = std::panic::catch_unwind(lifecycle::flush_capture).unwrap_or_else(|_| Err("finishing panicked".into()));
                    report(outcome);
                    w.state.store(DONE, Ordering::Release);
                })
            });
            match spawned {
                Ok(h) => {
                    let _ = w.thread.set(h.thread().clone());
                }
                Err(e) => crate::log::warn(&format!("no exit thread ({e}): the exit handler finishes on the exiting thread")),
            }
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `at_exit` is an `extern "C" fn()` living as long as the (pinned) library.
        unsafe { libc::atexit(at_exit) };
    });
}

/// Says how finishing ended (on the finishing thread, which may allocate and lock).
fn report(outcome: Result<std::path::PathBuf, String>) {
    match outcome {
        Err(e) if e == crate::collector_thread::NO_COARSE_CAPTURE => crate::log::info(&e),
        Err(e) => crate::log::warn(&format!("capture not written: {e}")),
        Ok(_) => {}
    }
}

/// The exit handler: wakes the finishing thread and waits for it (see the module docs);
/// without one, finishes here.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // A forked child inherits the agent's state but none of its threads, and the
        // CUPTI session and the capture belong to the parent: the child leaves both alone.
        if !lifecycle::in_activating_process() {
            return;
        }
        let Some(w) = worker() else { return };
        let Some(thread) = w.thread.get() else {
            report(lifecycle::flush_capture());
            return;
        };
        if w.state.compare_exchange(IDLE, ASKED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            thread.unpark();
        }
        let budget = lifecycle::agent().map_or(crate::config::DEFAULT_EXIT_BUDGET, |a| a.config.exit_budget);
        let until = Instant::now() + budget + EXIT_GRACE;
        while w.state.load(Ordering::Acquire) != DONE {
            if Instant::now() >= until {
                if crate::log::warnings_on() {
                    // SAFETY: write(2) of a 'static buffer to stderr: async-signal-safe, no
                    // allocation, no lock (Rust's stderr lock may be held by this very thread).
                    unsafe { libc::write(2, NOT_FINISHED_LINE.as_ptr().cast(), NOT_FINISHED_LINE.len()) };
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

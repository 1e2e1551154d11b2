//! Signals in someone else's process (hence `unsafe` here):
//! - SIGTERM while CUPTI collects: a handler that only sets a flag (async-signal-safe, the
//!   agent's one signal-handler entry point), its installation when the application left
//!   SIGTERM at its default disposition, and the re-raise once the collector thread has
//!   written what was collected ([`crate::collector_thread`]);
//! - the agent's threads block asynchronous signals ([`with_async_signals_blocked`]), so a
//!   process-directed signal (SIGTERM, SIGINT, SIGUSR1, SIGPROF, …) is delivered to one of
//!   the application's threads, as it would be without gpuspan: the application's handler
//!   (one that calls `exit`, say) never runs on an agent thread in the middle of the agent's
//!   work. A write to a closed socket on an agent thread then fails with `EPIPE` instead of
//!   raising SIGPIPE.

static SIGTERM_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The SIGTERM handler: sets a flag, nothing else (async-signal-safe). The collector
/// thread sees it, writes what was collected and re-raises ([`reraise_sigterm`]).
extern "C" fn on_sigterm(_sig: libc::c_int) {
    SIGTERM_SEEN.store(true, std::sync::atomic::Ordering::Release);
}

/// While CUPTI collects (fine mode, fine windows), SIGTERM would end the process without
/// exit handlers and lose everything collected. When the application left SIGTERM at its
/// default disposition, this installs `on_sigterm` (once); an application's own handler
/// (or SIG_IGN) is left alone. Process-wide, as signal dispositions are.
pub fn install_sigterm_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a NULL new action only reads the current one into a zeroed
        // `sigaction`; the installed handler is a 'static extern "C" fn that only stores to
        // an atomic, with an empty mask and SA_RESTART so interrupted calls resume.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
                return;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART;
            libc::sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
        }
    });
}

/// Whether SIGTERM arrived through `on_sigterm`. One atomic load.
pub fn sigterm_seen() -> bool {
    SIGTERM_SEEN.load(std::sync::atomic::Ordering::Acquire)
}

/// Restores SIGTERM's default disposition and raises it again, so the process ends as the
/// signal would have ended it (exit status "killed by SIGTERM"). Called on an agent thread,
/// which blocks SIGTERM ([`with_async_signals_blocked`]): it unblocks it first, or `raise`
/// would leave the signal pending on this thread.
pub fn reraise_sigterm() {
    // SAFETY: plain libc calls with a zeroed, valid `sigaction` holding SIG_DFL and a
    // zeroed, valid `sigset_t` holding SIGTERM.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
        let mut term: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut term);
        libc::sigaddset(&mut term, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &term, std::ptr::null_mut());
        libc::raise(libc::SIGTERM);
    }
}


/// The `pthread_atfork` child handler's part: a forked child inherits the parent's signal
/// dispositions but none of its threads, so `on_sigterm` would only set a flag nobody
/// reads and SIGTERM would no longer end the child. Restores the default disposition when
/// ours is installed. `sigaction` only: async-signal-safe.
pub fn reset_in_forked_child() {
    // SAFETY: sigaction reads the current action into a zeroed `sigaction`, and sets
    // SIG_DFL with an empty mask only when that action is our handler.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == on_sigterm as extern "C" fn(libc::c_int) as usize
        {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
        }
    }
}

/// Synchronous signals, raised by the faulting thread itself: blocking them would turn a
/// fault into an immediate kill (POSIX `pthread_sigmask`), so they stay deliverable.
const SYNCHRONOUS: [libc::c_int; 6] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP, libc::SIGSYS];

/// Runs `f` with every asynchronous signal blocked on the calling thread, then restores the
/// thread's mask. A thread created inside `f` inherits the blocked mask (POSIX
/// `pthread_create`), and so do the threads it creates: wrap every spawn of an agent thread
/// (activation wraps all of its work, so the collector, control, OTLP and NVML threads
/// start blocked). glibc keeps its internal signals (SIGCANCEL, SIGSETXID) unblockable.
pub fn with_async_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigfillset / sigdelset on a zeroed local `sigset_t`; pthread_sigmask with
    // valid pointers to it and to a zeroed local for the old mask.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in SYNCHRONOUS {
            libc::sigdelset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        (libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0).then_some(old)
    };
    let r = f();
    if let Some(old) = old {
        // SAFETY: restores the mask read above, with a valid pointer to it.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    r
}

/// Whether `sig` is blocked on the calling thread (what the tests of the agent's threads
/// check).
pub fn blocked_on_this_thread(sig: libc::c_int) -> bool {
    // SAFETY: pthread_sigmask with a NULL new set only reads the mask into a zeroed local.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) == 0 && libc::sigismember(&cur, sig) == 1
    }
}

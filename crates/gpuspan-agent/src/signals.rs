//! SIGTERM while CUPTI collects: a handler that only sets a flag (async-signal-safe, the
//! agent's one signal-handler entry point, hence `unsafe` here), its installation when the
//! application left SIGTERM at its default disposition, and the re-raise once the collector
//! thread has written what was collected ([`crate::collector_thread`]).

static SIGTERM_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The SIGTERM handler: sets a flag, nothing else (async-signal-safe). The collector
/// thread sees it, writes what was collected and re-raises ([`reraise_sigterm`]).
extern "C" fn on_sigterm(_sig: libc::c_int) {
    SIGTERM_SEEN.store(true, std::sync::atomic::Ordering::Release);
}

/// While CUPTI collects (fine mode, fine windows), SIGTERM would end the process without
/// exit handlers and lose everything collected. When the application left SIGTERM at its
/// default disposition, this installs [`on_sigterm`] (once); an application's own handler
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

/// Whether SIGTERM arrived through [`on_sigterm`]. One atomic load.
pub fn sigterm_seen() -> bool {
    SIGTERM_SEEN.load(std::sync::atomic::Ordering::Acquire)
}

/// Restores SIGTERM's default disposition and raises it again, so the process ends as the
/// signal would have ended it (exit status "killed by SIGTERM").
pub fn reraise_sigterm() {
    // SAFETY: plain libc calls with a zeroed, valid `sigaction` holding SIG_DFL.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
        libc::raise(libc::SIGTERM);
    }
}


/// The `pthread_atfork` child handler's part: a forked child inherits the parent's signal
/// dispositions but none of its threads, so [`on_sigterm`] would only set a flag nobody
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

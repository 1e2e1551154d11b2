//! The agent's control socket: a Unix domain socket through which `gpuspan status PID` and
//! `gpuspan capture PID` talk to a running worker.
//!
//! # Protocol (v1)
//!
//! The message types, limits and path rules are in [`gpuspan_core::control`], shared with
//! the CLI; `docs/control-protocol.md` is the full description. In short:
//! - socket `<dir>/<pid>.sock`, `<dir>` = `$XDG_RUNTIME_DIR/gpuspan` when `XDG_RUNTIME_DIR`
//!   is an absolute path to a directory owned by us, else `/tmp/gpuspan-<uid>`. The agent
//!   creates `<dir>` with mode 0700 and refuses (one warning, no socket) a `<dir>` that is
//!   not a directory, not owned by its effective uid, or group / world accessible. The
//!   socket gets mode 0600; a leftover socket of the same name nobody listens on (a dead
//!   process that had our pid) is replaced; the socket is removed at exit.
//! - `GPUSPAN_CONTROL=off` (or `0`, `false`) turns the socket off.
//! - one request per connection: one JSON line of at most 4096 bytes,
//!   `{"v":1,"op":"status"}` or `{"v":1,"op":"capture","steps":N,…}`; one JSON reply line, `{"v":1,"ok":true,…}` or
//!   `{"v":1,"ok":false,"error":"…"}`; then the agent closes the connection.
//! - the peer's uid comes from `SO_PEERCRED` (`unix(7)`: the credentials of the process
//!   that called `connect`); only the agent's effective uid and root are served, others get
//!   `ok:false` and are logged once per uid.
//!
//! # Inside the host process
//!
//! One thread, `gpuspan-control`, accepts connections and answers each on a thread of its
//! own ([`CONNECTION_THREAD_NAME`], at most [`MAX_CONCURRENT_CLIENTS`] at once, more get a
//! "busy" reply), so a silent or slow client never delays another. Each reads at most
//! `MAX_REQUEST_BYTES + 1` bytes per connection, within [`IO_TIMEOUT`] in all, so a silent
//! or slow client holds its thread for at most that long; replies are sent with `MSG_NOSIGNAL` (a
//! client that went away never raises `SIGPIPE` in the worker). Each connection runs
//! under `catch_unwind`. A request only reads the agent's state (atomic counters, the
//! collector's counters under its lock, waited for at most [`COLLECTOR_WAIT`]); `capture`
//! arms a fine window ([`crate::window`]: subscribes CUPTI on this thread, never on an
//! application thread) and answers at once; the CLI then polls `status`.
//!
//! Removal at exit: a destructor of this library (`ctor::dtor`, registered with
//! `__cxa_atexit` when the library loads) removes the socket file if this process created
//! it and the file is still the one it bound (same device and inode); a `fork`ed child,
//! which inherits the state but not the thread, leaves it alone. A process killed by a
//! signal leaves its socket behind: the CLI then reports "connection refused", and a later
//! process with the same pid replaces it.

use crate::agent::Agent;
use gpuspan_core::control::{
    capture_reply, control_dir, control_disabled, error_reply, frame, parse_request, socket_path, status_reply,
    CaptureRequest, CoarseCounts, Drops, Framing, Request, RequestError, SpanCounts, Status, WindowStatus, CONTROL_ENV,
    IO_TIMEOUT, MAX_REQUEST_BYTES,
};
use nix::sys::socket::{getsockopt, send, sockopt, MsgFlags};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest time a `status` request waits for the collector's lock (the collector holds it
/// while decoding buffers, and for seconds while writing the capture at exit); past it the
/// reply's `spans` is `null`.
pub const COLLECTOR_WAIT: Duration = Duration::from_millis(500);

/// Most distinct refused uids remembered for "logged once per uid"; refusals beyond are
/// not logged.
pub const MAX_LOGGED_UIDS: usize = 32;

/// Name of the server thread.
pub const THREAD_NAME: &str = "gpuspan-control";

/// The socket this process serves, for removal at exit.
#[derive(Debug)]
struct Bound {
    path: PathBuf,
    pid: u32,
    dev: u64,
    ino: u64,
}

static BOUND: Mutex<Option<Bound>> = Mutex::new(None);
/// The agent the control server answers for (set by [`start`]; a forked child that
/// activates replaces it with its own).
static SERVED: Mutex<Option<&'static Agent>> = Mutex::new(None);

fn served() -> Option<&'static Agent> {
    SERVED.lock().ok().and_then(|g| *g)
}

/// The agent's server thread and the process that started it, for [`stop`].
static RUNNING: Mutex<Option<(u32, Running)>> = Mutex::new(None);
/// The listening socket's descriptor while it is served, for the fork child handler.
static LISTENER_FD: AtomicI32 = AtomicI32::new(-1);

/// Takes the listening socket's descriptor (the `pthread_atfork` child handler closes it: a
/// forked child must not hold the parent's control socket). Async-signal-safe: one atomic.
pub fn take_listener_fd() -> Option<i32> {
    let fd = LISTENER_FD.swap(-1, Ordering::AcqRel);
    (fd >= 0).then_some(fd)
}
static STARTED_AT: OnceLock<Instant> = OnceLock::new();

/// Starts the control server of the active agent `a` (once per process): called by
/// [`crate::lifecycle`] once the collector runs. Problems (socket turned off, an insecure
/// directory, a socket name in use by a live process, no thread) are one warning each and
/// leave the agent running without a socket. Never panics.
pub fn start(a: &'static Agent) {
    if let Ok(mut g) = SERVED.lock() {
        *g = Some(a);
    }
    let _ = std::panic::catch_unwind(|| {
        STARTED_AT.get_or_init(Instant::now);
        match control_disabled(std::env::var(CONTROL_ENV).ok().as_deref()) {
            Ok(true) => return,
            Ok(false) => {}
            Err(w) => crate::log::warn(&w),
        }
        // Bound already by this process (a forked child that activated binds its own; a
        // lock held across the fork is skipped rather than waited for).
        let pid = std::process::id();
        if BOUND.try_lock().map(|g| g.as_ref().is_some_and(|b| b.pid == pid)).unwrap_or(true) {
            return;
        }
        let euid = nix::unistd::geteuid().as_raw();
        let dir = socket_dir(euid);
        let server = match prepare_dir(&dir, euid).and_then(|()| {
            sweep_stale(&dir, pid);
            Server::bind(&socket_path(&dir, pid))
        }) {
            Ok(s) => s,
            Err(e) => {
                crate::log::warn(&format!("no control socket ({e}); `gpuspan status` cannot reach this process"));
                return;
            }
        };
        let path = server.path.clone();
        let bound = server.bound();
        let fd = server.listener.as_raw_fd();
        match server.spawn(Handlers { status: agent_status, capture: agent_capture }) {
            Ok(running) => {
                LISTENER_FD.store(fd, Ordering::Release);
                if let Ok(mut g) = RUNNING.lock() {
                    *g = Some((pid, running));
                }
                if let Ok(mut g) = BOUND.lock() {
                    *g = Some(bound);
                }
                crate::log::info(&format!("control socket {}", path.display()));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                crate::log::warn(&format!("cannot start the {THREAD_NAME} thread: {e}; no control socket"));
            }
        }
    });
}

/// Removes the sockets in `dir` left by processes that died without cleaning up (SIGKILL,
/// a crash): `<pid>.sock` and `.<pid>.sock.<binder>.binding` whose process no longer exists
/// (kill(2) with signal 0 answers ESRCH) and which refuse connections. Without this the
/// directory grows by one file per killed worker, and since pids are reused (32,768 by
/// default) a new worker's `gpuspan status` could find a dead namesake's socket before its
/// own is bound. `own_pid`'s entries are left to [`Server::bind`]. Errors are ignored: this is
/// hygiene, run once at activation on the agent's thread.
fn sweep_stale(dir: &Path, own_pid: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten().take(4096) {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let owner = match name.strip_prefix('.').and_then(|n| n.strip_suffix(".binding")) {
            Some(tmp) => tmp.rsplit_once('.').and_then(|(_, binder)| binder.parse::<u32>().ok()),
            None => name.strip_suffix(".sock").and_then(|p| p.parse::<u32>().ok()),
        };
        let Some(owner) = owner else { continue };
        if owner == own_pid || owner == 0 || owner > i32::MAX as u32 {
            continue;
        }
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner as i32), None) != Err(nix::errno::Errno::ESRCH);
        let path = e.path();
        if alive || !e.file_type().is_ok_and(|t| t.is_socket()) || UnixStream::connect(&path).is_ok() {
            continue;
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// The control directory for effective uid `euid` in this process's environment
/// ([`gpuspan_core::control::control_dir`] with the "existing directory owned by `euid`"
/// check of `XDG_RUNTIME_DIR`).
pub fn socket_dir(euid: u32) -> PathBuf {
    let ns = gpuspan_core::control::pid_namespace(None);
    control_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), euid, ns, |p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == euid)
    })
}

/// Creates `dir` with mode 0700 if missing; then checks it is a directory (not a symlink)
/// owned by `euid` and not accessible to group or others. Errors name the directory.
pub fn prepare_dir(dir: &Path, euid: u32) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Ours and new: make it 0700 whatever the umask.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !m.file_type().is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if m.uid() != euid {
        return Err(format!("{} is owned by uid {}, not by this process's uid {euid}", dir.display(), m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:04o}: group or others can reach it (0700 expected)",
            dir.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Most clients answered at once, each on its own thread; more get a "busy" reply.
pub const MAX_CONCURRENT_CLIENTS: usize = 16;
/// Name of the threads answering one client each (15 bytes, Linux's limit).
pub const CONNECTION_THREAD_NAME: &str = "gpuspan-ctl-cli";

/// What the server answers each op with.
#[derive(Debug, Clone, Copy)]
pub struct Handlers {
    /// `status`.
    pub status: fn() -> Status,
    /// `capture`: the armed window, or why not.
    pub capture: fn(&CaptureRequest) -> Result<WindowStatus, String>,
}

/// A bound control socket, not yet served.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A running server thread (the agent's stops when it finishes, [`stop`]).
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (its directory must exist) and gives it mode 0600. A socket file already
    /// there that refuses connections (left by a dead process) is replaced; one that accepts
    /// them (a live process), or a file that is not a socket, is an error.
    ///
    /// The socket is bound and listening under a temporary name in the same directory and
    /// then renamed onto `path` (rename(2) is atomic), so `path` never exists without a
    /// listener behind it: a client that sees the file and connects at once is never
    /// refused (binding in place left a window between bind(2) and listen(2) in which
    /// connect(2) got ECONNREFUSED).
    pub fn bind(path: &Path) -> Result<Server, String> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => return Err(format!("{} exists and is not a socket", path.display())),
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(format!("{} is in use by a live process", path.display())),
                // Stale: the rename below replaces it.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.binding", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(|e| format!("cannot bind {}: {e}", tmp.display()))?;
        // The directory is 0700, so nobody else could connect before this chmod.
        let meta = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set the mode of {}: {e}", tmp.display()))
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display())))
            .and_then(|()| std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display())));
        match meta {
            Ok(m) => Ok(Server { listener, path: path.to_path_buf(), dev: m.dev(), ino: m.ino() }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bound(&self) -> Bound {
        Bound { path: self.path.clone(), pid: std::process::id(), dev: self.dev, ino: self.ino }
    }

    /// Serves connections on a thread named [`THREAD_NAME`], answering with `handlers`.
    /// Peers of another uid than this process's effective uid, except root, are refused.
    pub fn spawn(self, handlers: Handlers) -> std::io::Result<Running> {
        let stop = Arc::new(AtomicBool::new(false));
        let path = self.path.clone();
        let flag = stop.clone();
        let euid = nix::unistd::geteuid().as_raw();
        let thread = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(euid, handlers, &flag)));
        })?;
        Ok(Running { stop, path, thread: Some(thread) })
    }

    /// Accepts connections and answers each on a thread of its own (at most
    /// [`MAX_CONCURRENT_CLIENTS`] at once; beyond that a client gets a "busy" reply at once),
    /// so one slow or silent client never delays another's `status`.
    fn serve(self, euid: u32, handlers: Handlers, stop: &AtomicBool) {
        let busy = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            if stop.load(Ordering::Acquire) {
                break;
            }
            match conn {
                Ok(stream) => {
                    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_CLIENTS {
                        busy.fetch_sub(1, Ordering::AcqRel);
                        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                        reply(&stream, &error_reply(&format!("busy: {MAX_CONCURRENT_CLIENTS} clients are being answered; try again")));
                        continue;
                    }
                    let count = busy.clone();
                    let answer = move || {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(stream, euid, handlers)));
                        count.fetch_sub(1, Ordering::AcqRel);
                    };
                    if let Err(e) = std::thread::Builder::new().name(CONNECTION_THREAD_NAME.into()).spawn(answer) {
                        // No thread: the connection was moved into the closure and dropped
                        // with it (the client sees it closed); say why once.
                        busy.fetch_sub(1, Ordering::AcqRel);
                        static WARNED: AtomicBool = AtomicBool::new(false);
                        if !WARNED.swap(true, Ordering::Relaxed) {
                            crate::log::warn(&format!("control socket: cannot start a thread for a client ({e})"));
                        }
                    }
                }
                // Out of descriptors and the like: do not spin.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Running {
    /// Stops the thread (wakes it with a connection) and removes the socket file.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// [`Running::stop`], waiting for the thread at most until `until` (a connection being
    /// answered holds it at most [`IO_TIMEOUT`]); returns whether it stopped. A thread still
    /// answering is left to end with the process.
    pub fn stop_until(mut self, until: Instant) -> bool {
        self.stop.store(true, Ordering::Release);
        // The connection wakes `accept`; then the name can go.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        let Some(t) = self.thread.take() else { return true };
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stopped = t.is_finished();
        if stopped {
            let _ = t.join();
        }
        stopped
    }
}

/// Stops the agent's control server (the agent is finishing): its thread ends, waited for
/// at most until `until`, and the socket file is removed. Nothing when none runs, or when
/// the one recorded belongs to the parent of this forked process (its socket is not ours).
pub fn stop(until: Instant) {
    let running = RUNNING.try_lock().ok().and_then(|mut g| g.take_if(|(pid, _)| *pid == std::process::id()));
    if let Some((_, r)) = running {
        LISTENER_FD.store(-1, Ordering::Release);
        if !r.stop_until(until) {
            crate::log::info("the control thread had not stopped by the exit budget's collection deadline; it ends with the process");
        }
    }
}

/// Whether a peer of `peer_uid` may talk to an agent running as `euid`.
pub fn peer_allowed(peer_uid: u32, euid: u32) -> bool {
    peer_uid == euid || peer_uid == 0
}

/// One connection: check the peer, read one request line, answer, close.
fn handle(stream: UnixStream, euid: u32, handlers: Handlers) {
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = getsockopt(&stream, sockopt::PeerCredentials).map(|c| c.uid());
    match peer {
        Ok(uid) if peer_allowed(uid, euid) => {}
        Ok(uid) => {
            log_refusal(uid, euid);
            reply(&stream, &error_reply(&format!("permission denied: uid {uid} may not control this agent (uid {euid})")));
            return;
        }
        Err(e) => {
            reply(&stream, &error_reply(&format!("cannot read the peer's credentials: {e}")));
            return;
        }
    }
    let answer = match read_request(&stream) {
        Ok(Request::Status) => status_reply(&(handlers.status)()),
        Ok(Request::Capture(req)) => match (handlers.capture)(&req) {
            Ok(w) => capture_reply(&w),
            Err(e) => error_reply(&format!("capture refused: {e}")),
        },
        Err(e) => error_reply(&e.to_string()),
    };
    reply(&stream, &answer);
}

/// Reads one request: at most `MAX_REQUEST_BYTES + 1` bytes, all within [`IO_TIMEOUT`].
fn read_request(mut stream: &UnixStream) -> Result<Request, RequestError> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; MAX_REQUEST_BYTES + 1];
    let mut len = 0;
    loop {
        // Scan what is there before reading more (a newline may already be in).
        match frame(&buf[..len], false) {
            Framing::Line(l) => return parse_request(l),
            Framing::Error(e) => return Err(e),
            Framing::NeedMore => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(RequestError::TimedOut);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => {
                return match frame(&buf[..len], true) {
                    Framing::Line(l) => parse_request(l),
                    Framing::Error(e) => Err(e),
                    Framing::NeedMore => Err(RequestError::Empty),
                }
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(RequestError::TimedOut),
        }
    }
}

/// Sends `line` with `MSG_NOSIGNAL`; errors (the client left) are ignored.
fn reply(stream: &UnixStream, line: &str) {
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        match send(stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Logs a refused peer once per uid (at most [`MAX_LOGGED_UIDS`] uids).
fn log_refusal(uid: u32, euid: u32) {
    static SEEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let Ok(mut seen) = SEEN.lock() else { return };
    if seen.contains(&uid) || seen.len() >= MAX_LOGGED_UIDS {
        return;
    }
    seen.push(uid);
    let who = if euid == 0 { "root".to_string() } else { format!("uid {euid} and root") };
    crate::log::warn(&format!(
        "control socket: refused a client of uid {uid} (only {who} may connect); further refusals of uid {uid} are not logged"
    ));
}

/// The served agent's status: counters are relaxed atomic loads,
/// span counters are read under the collector's lock (waited for at most
/// [`COLLECTOR_WAIT`]).
pub fn agent_status() -> Status {
    let a = served();
    let load = |f: fn(&crate::shared::Counters) -> &std::sync::atomic::AtomicU64| {
        a.map(|a| f(&a.counters).load(Ordering::Relaxed)).unwrap_or(0)
    };
    let pipeline = a.and_then(|a| a.telemetry.spans.as_ref());
    Status {
        pid: std::process::id(),
        mode: match a.map(|a| a.config.mode) {
            Some(crate::config::Mode::Coarse) => "coarse".into(),
            Some(_) => "fine".into(),
            None => "inactive".into(),
        },
        inactive_reason: if a.is_some() { None } else { Some("not activated".into()) },
        collecting: a.is_some_and(|a| a.collecting.load(Ordering::Relaxed)),
        cupti_version: a.map_or(0, |a| a.cupti_version()),
        cupti_multi_subscriber: a.and_then(|a| a.api.as_ref()).is_some_and(|api| api.in_multi_subscriber_mode()),
        records_decoded: load(|c| &c.records_decoded),
        drops: Drops {
            cupti: load(|c| &c.cupti_records_dropped),
            record_limit: load(|c| &c.records_over_limit),
            scope_queue: load(|c| &c.scope_events_dropped),
            buffer_queue: load(|c| &c.buffers_dropped),
            otlp_spans: pipeline.map(|p| p.counters().dropped()).unwrap_or(0),
        },
        spans: a.and_then(|a| span_counts(&a.collector)),
        capture_window: a.and_then(|a| a.windows.status()),
        coarse: a.and_then(|a| a.coarse.as_ref()).map(|c| {
            let k = &c.counters;
            CoarseCounts {
                scopes_timed: k.scopes_timed.load(Ordering::Relaxed),
                scopes_cpu_timed: k.scopes_cpu_timed.load(Ordering::Relaxed),
                pool_exhausted: k.pool_exhausted.load(Ordering::Relaxed),
                event_errors: k.event_errors.load(Ordering::Relaxed),
                marks_dropped: k.marks_dropped.load(Ordering::Relaxed),
                events_made: c.pool.created() as u64,
                scopes_in_capture: k.scopes_in_capture.load(Ordering::Relaxed),
                roots_timed_out: k.roots_timed_out.load(Ordering::Relaxed),
                events_free: c.pool.free_len() as u64,
                roots_reanchored: k.roots_reanchored.load(Ordering::Relaxed),
            }
        }),
        metrics_addr: a.and_then(|a| a.telemetry.metrics_addr()).map(|s| s.to_string()),
        otlp_endpoint: pipeline.map(|p| p.settings().endpoint.clone()),
        uptime_s: STARTED_AT.get().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
    }
}

/// Arms a fine window on the active agent ([`crate::window::Windows::open`]).
pub fn agent_capture(req: &CaptureRequest) -> Result<WindowStatus, String> {
    match served() {
        Some(a) => a.windows.open(a, req, "control", &a.recorder_past(), None),
        None => Err("the agent is not active".into()),
    }
}

fn span_counts(collector: &Mutex<crate::collector::Collector>) -> Option<SpanCounts> {
    let deadline = Instant::now() + COLLECTOR_WAIT;
    loop {
        let guard = match collector.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let s = &guard.assembler.stats;
        return Some(SpanCounts { spans: s.spans, requests: s.requests, steps: s.steps });
    }
}

/// Removes the socket at process exit (see the module docs): only in the process that bound
/// it, and only if the file is still the one it bound.
pub fn remove_socket() {
    let Ok(mut g) = BOUND.try_lock() else { return };
    let Some(b) = g.as_ref() else { return };
    if b.pid != std::process::id() {
        return;
    }
    let same = std::fs::symlink_metadata(&b.path).is_ok_and(|m| m.dev() == b.dev && m.ino() == b.ino);
    if same {
        let _ = std::fs::remove_file(&b.path);
    }
    *g = None;
}

#[ctor::dtor]
fn gpuspan_control_at_exit() {
    let _ = std::panic::catch_unwind(remove_socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::control::{parse_reply, parse_status, Reply};
    use std::io::Write;

    fn fake_status() -> Status {
        Status {
            pid: std::process::id(),
            mode: "fine".into(),
            inactive_reason: None,
            collecting: true,
            cupti_version: 27,
            cupti_multi_subscriber: false,
            records_decoded: 99,
            drops: Drops::default(),
            spans: Some(SpanCounts::default()),
            capture_window: None,
            coarse: None,
            metrics_addr: None,
            otlp_endpoint: None,
            uptime_s: 0.5,
        }
    }

    fn fake_capture(req: &CaptureRequest) -> Result<WindowStatus, String> {
        match req.size {
            gpuspan_core::control::WindowSize::Steps(n) if n < 10 => Ok(WindowStatus {
                id: 1,
                state: "armed".into(),
                trigger: "control".into(),
                kind: "steps".into(),
                target: n,
                done: 0,
                out_dir: req.out.clone().unwrap_or_default(),
                capture: None,
                kernels: None,
                steps: None,
                error: None,
            }),
            _ => Err("no".into()),
        }
    }

    const FAKE: Handlers = Handlers { status: fake_status, capture: fake_capture };

    fn serve(dir: &Path) -> Running {
        let s = Server::bind(&dir.join("1.sock")).unwrap();
        s.spawn(FAKE).unwrap()
    }

    /// Sends `bytes`, then reads the reply line.
    fn ask(path: &Path, bytes: &[u8], shutdown: bool) -> String {
        let mut c = UnixStream::connect(path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(bytes);
        if shutdown {
            let _ = c.shutdown(std::net::Shutdown::Write);
        }
        let mut out = Vec::new();
        let mut b = [0u8; 1024];
        while !out.contains(&b'\n') {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn error_of(line: &str) -> String {
        match parse_reply(line.as_bytes()).unwrap() {
            Reply::Error(e) => e,
            Reply::Ok(o) => panic!("expected an error, got {o:?}"),
        }
    }

    #[test]
    fn control_server_status_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let r = serve(dir.path());
        let path = dir.path().join("1.sock");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        let ok = ask(&path, b"{\"v\":1,\"op\":\"status\"}\n", false);
        let Reply::Ok(obj) = parse_reply(ok.as_bytes()).unwrap() else { panic!("{ok}") };
        assert_eq!(parse_status(&obj).unwrap(), fake_status_without_time(&obj));

        assert!(error_of(&ask(&path, b"garbage\n", false)).starts_with("malformed request"));
        assert!(error_of(&ask(&path, b"{\"v\":1,\"op\":\"nope\"}\n", false)).contains("unknown op"));
        assert!(error_of(&ask(&path, b"{\"v\":2,\"op\":\"status\"}\n", false)).contains("version"));
        assert!(error_of(&ask(&path, &[b'{'; 10_000], false)).contains("too long"));
        assert_eq!(error_of(&ask(&path, b"", true)), "empty request");
        // End of stream ends a request without a newline.
        assert!(ask(&path, b"{\"v\":1,\"op\":\"status\"}", true).contains("\"ok\":true"));
        // capture: the handler's window, or its refusal.
        let cap = |n: u64| {
            Request::Capture(CaptureRequest { size: gpuspan_core::control::WindowSize::Steps(n), out: Some("/tmp/w".into()) })
                .encode()
        };
        let ok = ask(&path, cap(3).as_bytes(), false);
        let Reply::Ok(obj) = parse_reply(ok.as_bytes()).unwrap() else { panic!("{ok}") };
        assert_eq!(gpuspan_core::control::parse_capture_reply(&obj).unwrap().target, 3);
        assert_eq!(error_of(&ask(&path, cap(50).as_bytes(), false)), "capture refused: no");
        assert!(error_of(&ask(&path, b"{\"v\":1,\"op\":\"capture\",\"steps\":0}\n", false)).starts_with("bad request"));
        // Still serving after all that.
        assert!(ask(&path, Request::Status.encode().as_bytes(), false).contains("\"ok\":true"));
        r.stop();
        assert!(!path.exists());
    }

    fn fake_status_without_time(obj: &serde_json::Map<String, serde_json::Value>) -> Status {
        let mut s = fake_status();
        s.uptime_s = obj["uptime_s"].as_f64().unwrap();
        s
    }

    #[test]
    fn control_server_silent_client_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let r = serve(dir.path());
        let path = dir.path().join("1.sock");
        let t0 = Instant::now();
        // A client that connects and says nothing (a partial line): answered after IO_TIMEOUT.
        let line = ask(&path, b"{\"v\":1,", false);
        let waited = t0.elapsed();
        assert!(error_of(&line).contains("timed out"), "{line}");
        assert!(waited >= IO_TIMEOUT && waited < IO_TIMEOUT + Duration::from_secs(3), "{waited:?}");
        // A client that leaves without reading its reply does not hurt the server.
        drop(UnixStream::connect(&path).unwrap());
        assert!(ask(&path, Request::Status.encode().as_bytes(), false).contains("\"ok\":true"));
        r.stop();
    }

    #[test]
    fn control_stale_socket_replaced_live_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("7.sock");
        // A stale socket: bound, then its listener dropped without removing the file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let r = Server::bind(&path).unwrap().spawn(FAKE).unwrap();
        assert!(ask(&path, Request::Status.encode().as_bytes(), false).contains("\"ok\":true"));
        // A live one is left alone.
        let e = Server::bind(&path).unwrap_err();
        assert!(e.contains("live process"), "{e}");
        r.stop();
        // Not a socket: refused, file untouched.
        std::fs::write(&path, b"x").unwrap();
        assert!(Server::bind(&path).unwrap_err().contains("not a socket"));
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["7.sock"], "no temporary socket left behind");
    }

    /// A client that connects the moment the socket file appears is never refused: the file
    /// appears already listening (no bind → listen gap).
    #[test]
    fn control_socket_appears_listening() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..100 {
            let path = dir.path().join(format!("{i}.sock"));
            let watcher = {
                let path = path.clone();
                std::thread::spawn(move || {
                    while std::fs::symlink_metadata(&path).is_err() {
                        std::hint::spin_loop();
                    }
                    UnixStream::connect(&path).map(drop)
                })
            };
            let server = Server::bind(&path).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
            watcher.join().unwrap().unwrap_or_else(|e| panic!("iteration {i}: {e}"));
            drop(server);
        }
    }

    /// Sockets of dead processes are swept; a live process's, our own, and files that are
    /// not ours are left.
    #[test]
    fn control_stale_sockets_of_dead_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let me = std::process::id();
        let stale = [format!("{dead_pid}.sock"), format!(".{dead_pid}.sock.{dead_pid}.binding")];
        for n in &stale {
            drop(UnixListener::bind(dir.path().join(n)).unwrap());
        }
        // Our parent is alive (its socket stays even if it refuses), ours is bind's business.
        let parent = std::os::unix::process::parent_id();
        for n in [format!("{parent}.sock"), format!("{me}.sock")] {
            drop(UnixListener::bind(dir.path().join(n)).unwrap());
        }
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join(format!("{}.sock", dead_pid + 1_000_000)), b"not a socket").unwrap();
        sweep_stale(dir.path(), me);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want = vec![format!("{parent}.sock"), format!("{me}.sock"), "notes.txt".to_string(), format!("{}.sock", dead_pid + 1_000_000)];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn control_dir_rules() {
        let euid = nix::unistd::geteuid().as_raw();
        let base = tempfile::tempdir().unwrap();
        let d = base.path().join("gpuspan");
        prepare_dir(&d, euid).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o700);
        prepare_dir(&d, euid).unwrap(); // existing and fine
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare_dir(&d, euid).unwrap_err().contains("0755"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(prepare_dir(&d, euid + 1).unwrap_err().contains("owned by uid"));
        let f = base.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert!(prepare_dir(&f, euid).unwrap_err().contains("not a directory"));
        let l = base.path().join("link");
        std::os::unix::fs::symlink(&d, &l).unwrap();
        assert!(prepare_dir(&l, euid).unwrap_err().contains("not a directory"), "a symlink is refused");
    }

    #[test]
    fn control_peer_rule() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn control_status_without_agent() {
        // No agent in this test process: a well-formed "inactive" status.
        let s = agent_status();
        assert_eq!(s.mode, "inactive");
        assert_eq!(s.inactive_reason.as_deref(), Some("not activated"));
        assert!(!s.collecting && s.spans.is_none() && s.capture_window.is_none());
        assert_eq!(s.pid, std::process::id());
    }
}

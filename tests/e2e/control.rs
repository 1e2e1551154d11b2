//! The agent's control socket and `gpuspan status PID` (issue 5, first slice), against a
//! long-running worker on the simulated H100 (real clock): status fields, socket and
//! directory modes, error replies to bad requests, a client of another uid refused
//! (`SO_PEERCRED`), the socket removed at exit, and the CLI's error for a pid without one.

use crate::util::*;
use gpuspan_core::control::{control_dir, socket_path, MAX_REQUEST_BYTES};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `gpuspan run` process and the worker it started: both killed if still running (a
/// killed worker cannot remove its socket, so this does).
pub(crate) struct Worker {
    pub(crate) run: Child,
    pub(crate) pid: Option<u32>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let _ = self.run.wait();
            let _ = std::fs::remove_file(expected_socket(pid));
        }
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

/// Parent pid of `pid`, from `/proc/<pid>/stat` (the field after the `(comm)`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A child of `parent` (scanning `/proc`), waiting up to `within`.
pub(crate) fn child_of(parent: u32, within: Duration) -> Option<u32> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if parent_of(pid) == Some(parent) {
                    return Some(pid);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub(crate) fn euid() -> u32 {
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

/// Where the worker's socket is: the agent's rule in this (inherited) environment.
pub(crate) fn expected_socket(pid: u32) -> PathBuf {
    let uid = euid();
    let ns = gpuspan_core::control::pid_namespace(Some(pid));
    let dir = control_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), uid, ns, |p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid)
    });
    socket_path(&dir, pid)
}

/// Waits (at most 30 s) for `pid`'s control socket to accept a connection, and returns its path.
pub(crate) fn wait_for_socket(pid: u32) -> PathBuf {
    let sock = expected_socket(pid);
    let t0 = Instant::now();
    // Connect, not just look: pids are reused, and a socket file of a killed namesake may
    // sit there until this worker's agent activates and sweeps it.
    while UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{} never accepted a connection", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    sock
}

/// `gpuspan status PID --json`, parsed.
pub(crate) fn status_json(pid: u32) -> serde_json::Value {
    let o = output(gpuspan().args(["status", &pid.to_string(), "--json"]));
    assert!(o.status.success(), "status failed: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Sends `bytes` on a fresh connection and returns the reply line, parsed.
pub(crate) fn raw(path: &Path, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    while !out.contains(&b'\n') {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
        }
    }
    let line = String::from_utf8(out).unwrap();
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "one reply line: {line:?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn assert_error(reply: &serde_json::Value, needle: &str) {
    assert_eq!(reply["v"], 1, "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    let msg = reply["error"].as_str().unwrap_or_else(|| panic!("no message: {reply}"));
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

/// A request (argv[2]) from a Python client run as uid/gid 65534 (`setpriv`); what it
/// printed: the reply line, or `connect-error: …`. The agent answers a refused peer
/// without reading its request, so the send may fail after the reply arrived.
const PY_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-error:", e); sys.exit(0)
try:
    s.sendall(sys.argv[2].encode() + b'\n')
except OSError:
    pass  # refused before reading: the reply is already queued
buf = b""
while b"\n" not in buf:
    d = s.recv(4096)
    if not d:
        break
    buf += d
print(buf.decode().strip())
"#;

fn as_nobody(path: &Path, request: &str) -> Option<String> {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"].into_iter().map(PathBuf::from).find(|p| p.exists())?;
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(python)
        .args(["-c", PY_CLIENT])
        .arg(path)
        .arg(request)
        .current_dir("/")
        .output()
        .ok()?;
    assert!(o.status.success(), "python client failed: {}", String::from_utf8_lossy(&o.stderr));
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn control_socket_status_errors_peer_check_and_cleanup() {
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    // 30 steps on the real clock (≈ 18 s): time for every check while it runs. Small
    // activity buffers, so records reach the collector (and the status) step by step.
    c.args(["run", "--mode", "fine", "--sim", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--steps", "30"])
        .env("GPUSPAN_SIM_CLOCK", "real")
        .env("GPUSPAN_BUFFER_BYTES", "262144")
        .env_remove("GPUSPAN_CONTROL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let run = c.spawn().unwrap();
    let run_pid = run.id();
    let mut w = Worker { run, pid: None };
    let stderr = w.run.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = stderr;
        let _ = r.read_to_string(&mut s);
        s
    });
    let pid = child_of(run_pid, Duration::from_secs(30)).expect("the worker process");
    w.pid = Some(pid);

    // The socket appears once the agent is active.
    let sock = expected_socket(pid);
    let t0 = Instant::now();
    // Connect, not just look: pids are reused, and a socket file of a killed namesake may
    // sit there until this worker's agent activates and sweeps it.
    while UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{} never accepted a connection", sock.display());
        assert!(w.run.try_wait().unwrap().is_none(), "the worker exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = sock.parent().unwrap();
    assert_eq!(std::fs::symlink_metadata(dir).unwrap().mode() & 0o7777, 0o700, "{}", dir.display());
    let sm = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(sm.mode() & 0o7777, 0o600, "{}", sock.display());
    assert_eq!(sm.uid(), euid());
    // The socket is bound (and accepts into its backlog) before the thread serving it starts:
    // the thread may take a moment to appear under its name. A connection thread it spawns
    // (for the probe above) starts under its creator's name (Linux copies `comm` to a new
    // thread) until it names itself `gpuspan-ctl-cli`: wait for exactly one, not for any.
    let control_threads = || {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        (threads.iter().filter(|n| *n == "gpuspan-control").count(), threads)
    };
    let t0 = Instant::now();
    let (mut n, mut threads) = control_threads();
    while n != 1 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        (n, threads) = control_threads();
    }
    assert_eq!(n, 1, "{threads:?}");

    // Status: fine, collecting, records decoded and growing.
    let mut first = status_json(pid);
    let t0 = Instant::now();
    while first["records_decoded"].as_u64().unwrap() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(15), "no records decoded: {first}");
        std::thread::sleep(Duration::from_millis(200));
        first = status_json(pid);
    }
    assert_eq!(first["v"], 1);
    assert_eq!(first["ok"], true);
    assert_eq!(first["pid"], pid);
    assert_eq!(first["mode"], "fine");
    assert!(first["inactive_reason"].is_null());
    assert_eq!(first["collecting"], true);
    assert!(first["cupti_version"].as_u64().unwrap() > 0);
    for k in ["cupti", "record_limit", "scope_queue", "buffer_queue", "otlp_spans"] {
        assert_eq!(first["drops"][k], 0, "drops.{k}: {first}");
    }
    for k in ["spans", "requests", "steps"] {
        assert!(first["spans"][k].is_u64(), "spans.{k}: {first}");
    }
    assert!(first["capture_window"].is_null());
    assert!(first["metrics_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{first}");
    assert!(first["otlp_endpoint"].is_null());
    assert!(first["uptime_s"].as_f64().unwrap() > 0.0);
    let n0 = first["records_decoded"].as_u64().unwrap();
    let t0 = Instant::now();
    let grown = loop {
        std::thread::sleep(Duration::from_millis(300));
        let s = status_json(pid);
        if s["records_decoded"].as_u64().unwrap() > n0 {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "records_decoded stuck at {n0}");
    };
    assert!(grown["uptime_s"].as_f64().unwrap() > first["uptime_s"].as_f64().unwrap());

    // The table for people.
    let o = output(gpuspan().args(["status", &pid.to_string()]));
    assert!(o.status.success());
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(table.contains("fine, collecting") && table.contains(&sock.display().to_string()), "{table}");

    // Bad requests: an error reply each, and the agent keeps serving.
    assert_error(&raw(&sock, b"garbage\n"), "malformed request");
    assert_error(&raw(&sock, b"{\"v\":1,\"op\":\"reboot\"}\n"), "unknown op");
    assert_error(&raw(&sock, b"{\"v\":2,\"op\":\"status\"}\n"), "version");
    let mut big = vec![b'x'; 10_000];
    big.push(b'\n');
    assert_error(&raw(&sock, &big), &MAX_REQUEST_BYTES.to_string());
    assert_eq!(raw(&sock, b"{\"v\":1,\"op\":\"status\"}\n")["ok"], true);
    assert_eq!(status_json(pid)["mode"], "fine");

    let mut peer_checked = false;
    // Another uid: the 0700 directory keeps it out; reaching the socket anyway (a hard link
    // in a world-readable directory, the socket's mode opened), SO_PEERCRED refuses it.
    if euid() != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("note: not root or no setpriv: the other-uid check is skipped");
    } else if let Some(blocked) = as_nobody(&sock, r#"{"v":1,"op":"status"}"#) {
        assert!(blocked.starts_with("connect-error:") && blocked.contains("ermission"), "{blocked}");
        let link_dir = tempfile::Builder::new().prefix("gpuspan-ctl-test-").tempdir_in(dir.parent().unwrap()).unwrap();
        std::fs::set_permissions(link_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = link_dir.path().join("peer.sock");
        match std::fs::hard_link(&sock, &link) {
            Err(e) => eprintln!("note: cannot hard-link {} ({e}): the SO_PEERCRED check is skipped", sock.display()),
            Ok(()) => {
                std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
                // A status and a capture request: both refused before being read.
                let replies = [
                    as_nobody(&link, r#"{"v":1,"op":"status"}"#).unwrap(),
                    as_nobody(&link, r#"{"v":1,"op":"capture","steps":3}"#).unwrap(),
                ];
                std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
                std::fs::remove_file(&link).unwrap();
                for r in &replies {
                    let v: serde_json::Value = serde_json::from_str(r).unwrap_or_else(|e| panic!("{e}: {r}"));
                    assert_error(&v, "permission denied: uid 65534");
                }
                let st = status_json(pid);
                assert_eq!(st["ok"], true, "root is still served");
                assert!(st["capture_window"].is_null(), "the refused capture opened nothing");
                peer_checked = true;
            }
        }
    }

    // The worker exits: its socket goes with it.
    let status = w.run.wait().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(status.success(), "worker failed: {stderr}");
    assert!(!sock.exists(), "{} left behind", sock.display());
    assert!(!stderr.contains("no control socket"), "{stderr}");
    let refusals = stderr.lines().filter(|l| l.contains("refused a client of uid 65534")).count();
    assert_eq!(refusals, usize::from(peer_checked), "two refusals, logged once: {stderr}");

    // No socket: one line naming the path, exit 2.
    for p in [pid, 999_999] {
        let o = output(gpuspan().args(["status", &p.to_string()]));
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&expected_socket(p).display().to_string()), "{err}");
        assert!(o.stdout.is_empty());
    }
}

/// Issue 13, item 6: 20 concurrent `gpuspan status` clients plus one that connects and
/// sends nothing are all answered within 1 s (each connection has its own thread; the silent one
/// holds only its own for `IO_TIMEOUT`).
#[test]
fn concurrent_status_clients_are_not_held_up_by_a_silent_one() {
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.args(["run", "--sim", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--steps", "30"])
        .env("GPUSPAN_SIM_CLOCK", "real")
        .env_remove("GPUSPAN_CONTROL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let run = c.spawn().unwrap();
    let run_pid = run.id();
    let mut w = Worker { run, pid: None };
    let pid = child_of(run_pid, Duration::from_secs(30)).expect("the worker process");
    w.pid = Some(pid);
    let sock = wait_for_socket(pid);
    // The silent client first: connected, nothing sent, kept open.
    let silent = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Twenty `gpuspan status` processes at once, each timed from its start to its exit.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let mut c = gpuspan();
            c.args(["status", &pid.to_string(), "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped());
            (Instant::now(), c.spawn().unwrap())
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for (t, child) in clients {
        let o = child.wait_with_output().unwrap();
        slowest = slowest.max(t.elapsed());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(reply["pid"].as_u64(), Some(pid as u64), "{reply}");
    }
    println!("20 concurrent `gpuspan status` beside a silent client: slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "slowest reply took {slowest:?}");
    drop(silent);
}

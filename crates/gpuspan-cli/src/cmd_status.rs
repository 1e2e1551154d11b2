//! `gpuspan status PID [--json]`: asks a running worker's agent for its state over the
//! agent's control socket (protocol v1, [`gpuspan_core::control`];
//! `docs/control-protocol.md`).
//!
//! The socket is `<dir>/<PID>.sock` with `<dir>` chosen by the agent's rule
//! ([`gpuspan_core::control::control_dir`]: `$XDG_RUNTIME_DIR/gpuspan` when usable, else
//! `/tmp/gpuspan-<uid>`). The worker may have been started with another environment than
//! this shell's, so when the socket is not in that directory the other one is tried too.
//!
//! Output: a short table for people, or with `--json` the agent's reply line exactly as
//! received (one JSON object: `v`, `ok`, then the `status` fields). Exit status: 0 on
//! success; 2 after one line `gpuspan: …` on stderr when there is no socket for PID, the
//! connection is refused (the process is gone, or its agent stopped listening), the agent
//! refuses the request (another uid), or the reply is not a valid one.

use gpuspan_core::control::{
    control_dir, fallback_dir, parse_reply, parse_status, socket_path, Reply, Request, Status, IO_TIMEOUT,
    MAX_REPLY_BYTES,
};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long to wait for the reply: the agent's own read timeout, the time it may wait for
/// its collector (500 ms), and a margin.
const REPLY_TIMEOUT: Duration = Duration::from_secs(IO_TIMEOUT.as_secs() + 3);

/// The socket paths where `pid`'s agent may listen, most likely first: the directory this
/// environment selects (with `pid`'s PID namespace), then the `/tmp` fallback of that
/// namespace if that is another one.
pub fn candidate_paths(pid: u32) -> Vec<PathBuf> {
    let euid = nix::unistd::geteuid().as_raw();
    let ns = gpuspan_core::control::pid_namespace(Some(pid));
    let dir = control_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), euid, ns, |p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == euid)
    });
    let mut v = vec![socket_path(&dir, pid)];
    let fallback = socket_path(&fallback_dir(euid, ns), pid);
    if fallback != v[0] {
        v.push(fallback);
    }
    v
}

/// Sends one request and returns the reply line (without its newline).
pub fn ask(path: &std::path::Path, request: &Request) -> Result<String, String> {
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::ConnectionRefused => {
            format!("cannot connect to {}: {e} (the process is gone or its agent is not listening)", path.display())
        }
        _ => format!("cannot connect to {}: {e}", path.display()),
    })?;
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    // A refused peer is answered before its request is read: the write may fail after the
    // reply arrived, so read whatever came back before reporting the write error.
    let sent = s.write_all(request.encode().as_bytes());
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.contains(&b'\n') || reply.len() >= MAX_REPLY_BYTES {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("{}: no reply within {} s", path.display(), REPLY_TIMEOUT.as_secs()))
            }
            Err(e) => return Err(io(e)),
        }
    }
    let end = reply.iter().position(|&b| b == b'\n');
    let Some(end) = end else {
        sent.map_err(io)?;
        return Err(format!("{}: the agent closed the connection without a complete reply", path.display()));
    };
    reply.truncate(end);
    String::from_utf8(reply).map_err(|_| format!("{}: the reply is not UTF-8", path.display()))
}

/// Runs `gpuspan status PID`.
pub fn run(pid: u32, json: bool) -> ExitCode {
    match status(pid, json) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gpuspan: cannot write to stdout: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Err(msg) => {
            eprintln!("gpuspan: {msg}");
            ExitCode::from(2)
        }
    }
}

/// The control socket of `pid`'s agent, or why there is none.
pub fn find_socket(pid: u32) -> Result<PathBuf, String> {
    let candidates = candidate_paths(pid);
    match candidates.iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
        Some(p) => Ok(p.clone()),
        None => Err(format!(
            "no control socket for process {pid} at {} (is it running with the agent loaded, under this uid, with GPUSPAN_CONTROL not off?)",
            candidates[0].display()
        )),
    }
}

/// One request to `pid`'s agent at `path`: the reply object, or a one-line error (the
/// agent's refusal included).
pub fn request(pid: u32, path: &std::path::Path, req: &Request) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let line = ask(path, req)?;
    match parse_reply(line.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))? {
        Reply::Ok(obj) => Ok(obj),
        Reply::Error(e) => Err(format!("process {pid} refused the request: {e}")),
    }
}

/// `pid`'s agent status.
pub fn fetch_status(pid: u32, path: &std::path::Path) -> Result<Status, String> {
    let obj = request(pid, path, &Request::Status)?;
    parse_status(&obj).map_err(|e| format!("{}: {e}", path.display()))
}

fn status(pid: u32, json: bool) -> Result<String, String> {
    let path = &find_socket(pid)?;
    let line = ask(path, &Request::Status)?;
    let obj = match parse_reply(line.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))? {
        Reply::Ok(obj) => obj,
        Reply::Error(e) => return Err(format!("process {pid} refused the request: {e}")),
    };
    if json {
        return Ok(line);
    }
    let st = parse_status(&obj).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(render(&st, path))
}

/// The table for people.
fn render(s: &Status, path: &std::path::Path) -> String {
    let mut rows: Vec<(&str, String)> = Vec::new();
    rows.push(("process", s.pid.to_string()));
    let mode = match (&s.inactive_reason, s.collecting) {
        (Some(r), _) => format!("{} ({r})", s.mode),
        (None, true) => format!("{}, collecting", s.mode),
        (None, false) => format!("{}, stopped", s.mode),
    };
    rows.push(("mode", mode));
    rows.push(("CUPTI API", if s.cupti_version > 0 { s.cupti_version.to_string() } else { "-".into() }));
    rows.push(("uptime", format!("{:.1} s", s.uptime_s)));
    rows.push(("records", format!("{} decoded", s.records_decoded)));
    let d = &s.drops;
    let drops = [
        ("cupti", d.cupti),
        ("record_limit", d.record_limit),
        ("scope_queue", d.scope_queue),
        ("buffer_queue", d.buffer_queue),
        ("otlp_spans", d.otlp_spans),
    ];
    let lost: Vec<String> = drops.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    rows.push(("drops", if lost.is_empty() { "none".into() } else { lost.join(", ") }));
    rows.push((
        "spans",
        match &s.spans {
            Some(c) => format!("{} spans, {} requests, {} steps", c.spans, c.requests, c.steps),
            None => "(collector busy)".into(),
        },
    ));
    rows.push((
        "window",
        s.capture_window
            .as_ref()
            .map(|w| {
                let mut t = format!("{} #{} ({}): {}/{} {}, {}", w.state, w.id, w.trigger, w.done, w.target, w.kind, w.out_dir);
                if let Some(e) = &w.error {
                    t.push_str(&format!("; {e}"));
                }
                t
            })
            .unwrap_or_else(|| "none".into()),
    ));
    if let Some(c) = &s.coarse {
        rows.push((
            "coarse",
            format!(
                "{} scopes timed with CUDA events, {} on the CPU side; {} events",
                c.scopes_timed, c.scopes_cpu_timed, c.events_made
            ),
        ));
    }
    rows.push((
        "metrics",
        s.metrics_addr.as_ref().map(|a| format!("http://{a}/metrics")).unwrap_or_else(|| "off".into()),
    ));
    rows.push(("OTLP", s.otlp_endpoint.clone().unwrap_or_else(|| "off".into())));
    rows.push(("socket", path.display().to_string()));
    rows.iter().map(|(k, v)| format!("{k:<10} {v}")).collect::<Vec<_>>().join("\n")
}

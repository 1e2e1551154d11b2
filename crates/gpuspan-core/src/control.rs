//! The control protocol between a running agent and the `gpuspan` CLI (`gpuspan status PID`,
//! `gpuspan capture PID`): message types, limits, framing and the socket path rules.
//!
//! This module is pure (no I/O): the agent's server (`gpuspan_agent::control`) and the CLI's
//! client (`gpuspan-cli`, `cmd_status.rs`) do the socket work and share everything else
//! from here, so the two cannot disagree. The full description, with examples, is
//! `docs/control-protocol.md`.
//!
//! # Where the socket is
//!
//! One Unix domain stream socket per agent, `<dir>/<pid>.sock` ([`socket_path`]), where
//! `<dir>` ([`control_dir`]) is `$XDG_RUNTIME_DIR/gpuspan` when `XDG_RUNTIME_DIR` is set to
//! an absolute path naming an existing directory owned by the caller's uid, else
//! `/tmp/gpuspan-<uid>`. The agent creates `<dir>` with mode 0700, refuses a `<dir>` that
//! is not a directory owned by it or that is group / world accessible, gives the socket
//! mode 0600 and removes it at exit. The agent also checks each peer's uid
//! (`SO_PEERCRED`, `unix(7)`) and serves only its own uid and root.
//!
//! # Messages
//!
//! One request per connection. The client writes one line: a JSON object of at most
//! [`MAX_REQUEST_BYTES`] bytes (UTF-8, not counting the terminating `\n`; end of stream
//! also ends the line): `{"v":1,"op":"status"}`, or `{"v":1,"op":"capture","steps":N}` /
//! `"duration_ms":D` / `"requests":N` (exactly one of them, positive, at most
//! [`MAX_WINDOW_STEPS`] / [`MAX_WINDOW_DURATION_MS`] / [`MAX_WINDOW_REQUESTS`]), with an
//! optional absolute `"out"` directory ([`CaptureRequest`]). Unknown fields are ignored.
//! The server reads at most `MAX_REQUEST_BYTES + 1` bytes, answers with one JSON line of at
//! most [`MAX_REPLY_BYTES`] bytes and closes the connection:
//! - success: `{"v":1,"ok":true, <fields of the op>}`; for `status` the fields of
//!   [`Status`]; for `capture`, `"window"`: the [`WindowStatus`] of the window it opened;
//! - failure: `{"v":1,"ok":false,"error":"<one-line message>"}` ([`error_reply`]): for a
//!   malformed line, a wrong or missing version, an unknown op, an oversize line
//!   ([`RequestError`]), a peer of another uid, or a client that sends nothing within
//!   [`IO_TIMEOUT`], a capture the agent refuses (a window already open, CUPTI held by
//!   another client, fine mode). A failed request changes nothing in the agent.

use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Protocol version spoken by this build: the `v` of every request and reply.
pub const PROTOCOL_VERSION: u64 = 1;

/// Largest request line, bytes, not counting its terminating `\n`. The server reads at most
/// `MAX_REQUEST_BYTES + 1` bytes from a connection.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// Largest reply line, bytes, including its terminating `\n`. The client reads no more.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Read and write timeout of both ends: a peer that stays silent this long gets an error
/// reply (server) or an error message (client), and the connection is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Name of the per-user socket directory under `XDG_RUNTIME_DIR`.
pub const DIR_NAME: &str = "gpuspan";

/// Environment variable that turns the control socket off (`off`, `0`, `false`).
pub const CONTROL_ENV: &str = "GPUSPAN_CONTROL";

/// The directory that holds the control sockets of `uid`'s agents: `<xdg>/gpuspan` when
/// `xdg_runtime_dir` (the value of `XDG_RUNTIME_DIR`) is an absolute path and
/// `is_usable_dir(<xdg>)` holds, else [`fallback_dir`]`(uid, pid_ns)`.
///
/// `is_usable_dir` is the caller's I/O check (this module does none); both ends use "an
/// existing directory owned by `uid`", the `XDG_RUNTIME_DIR` contract of the XDG Base
/// Directory Specification. `pid_ns` is the inode of the agent's PID namespace
/// ([`pid_namespace`]).
pub fn control_dir(xdg_runtime_dir: Option<&OsStr>, uid: u32, pid_ns: Option<u64>, is_usable_dir: impl Fn(&Path) -> bool) -> PathBuf {
    match xdg_runtime_dir.map(Path::new) {
        Some(x) if x.is_absolute() && is_usable_dir(x) => x.join(DIR_NAME),
        _ => fallback_dir(uid, pid_ns),
    }
}

/// The directory used when `XDG_RUNTIME_DIR` is unset or unusable:
/// `/tmp/gpuspan-<uid>-<pid namespace inode>`, so containers that share `/tmp` but not their
/// PID namespace (where pid 7 of one is not pid 7 of another) never share a socket name;
/// `/tmp/gpuspan-<uid>` when the namespace is unknown.
pub fn fallback_dir(uid: u32, pid_ns: Option<u64>) -> PathBuf {
    match pid_ns {
        Some(ns) => PathBuf::from(format!("/tmp/gpuspan-{uid}-{ns}")),
        None => PathBuf::from(format!("/tmp/gpuspan-{uid}")),
    }
}

/// The PID-namespace inode of process `pid` (`None`: this process), from the link
/// `/proc/<pid>/ns/pid` (`pid:[4026531836]`, `namespaces(7)`); `None` when it cannot be read.
pub fn pid_namespace(pid: Option<u32>) -> Option<u64> {
    let link = match pid {
        Some(p) => format!("/proc/{p}/ns/pid"),
        None => "/proc/self/ns/pid".to_string(),
    };
    parse_namespace_link(&std::fs::read_link(link).ok()?.to_string_lossy())
}

/// The inode of a namespace link's text `pid:[4026531836]`.
pub fn parse_namespace_link(text: &str) -> Option<u64> {
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The socket of process `pid` in `dir`: `<dir>/<pid>.sock`.
pub fn socket_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// Whether the value of [`CONTROL_ENV`] turns the socket off: `Ok(true)` for `off`, `0`,
/// `false`; `Ok(false)` for unset, empty, `on`, `1`, `true`; `Err(message)` for anything
/// else (the caller warns once and keeps the socket on).
pub fn control_disabled(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("") | Some("on") | Some("1") | Some("true") => Ok(false),
        Some("off") | Some("0") | Some("false") => Ok(true),
        Some(other) => Err(format!("{CONTROL_ENV}={other:?} is not one of on, off; the control socket stays on")),
    }
}

/// Most steps one capture window may span.
pub const MAX_WINDOW_STEPS: u64 = 100_000;
/// Longest capture window, ms (one day).
pub const MAX_WINDOW_DURATION_MS: u64 = 86_400_000;
/// Most requests one capture window may span.
pub const MAX_WINDOW_REQUESTS: u64 = 10_000;
/// Longest `out` directory, bytes.
pub const MAX_OUT_BYTES: usize = 1024;

/// How long a fine-capture window lasts. Windows open and close at step boundaries (request
/// boundaries for [`WindowSize::Requests`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowSize {
    /// The next N steps that begin after the window is armed.
    Steps(u64),
    /// Whole steps: those that begin within this many ms (CPU time) of the begin of the
    /// first step after arming; the window closes when the last of them has ended.
    DurationMs(u64),
    /// The next N requests that begin after arming, whole (their steps and the work
    /// outside steps, like the VAE decode).
    Requests(u64),
}

impl WindowSize {
    /// `steps`, `duration` or `requests`.
    pub fn kind(self) -> &'static str {
        match self {
            WindowSize::Steps(_) => "steps",
            WindowSize::DurationMs(_) => "duration",
            WindowSize::Requests(_) => "requests",
        }
    }

    /// N steps, ms, or N requests.
    pub fn target(self) -> u64 {
        match self {
            WindowSize::Steps(n) | WindowSize::DurationMs(n) | WindowSize::Requests(n) => n,
        }
    }
}

/// `{"v":1,"op":"capture", "steps"|"duration_ms"|"requests": N, "out": DIR?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    /// The window's length.
    pub size: WindowSize,
    /// Absolute directory for the window's `capture-<pid>.json.gz`; `None`: the agent's
    /// `GPUSPAN_OUT/window-<pid>-<id>/`.
    pub out: Option<String>,
}

/// A request the agent understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `{"v":1,"op":"status"}`: the agent's state ([`Status`]).
    Status,
    /// `{"v":1,"op":"capture",…}`: open a fine-capture window ([`CaptureRequest`]).
    Capture(CaptureRequest),
}

impl Request {
    /// The op name on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Capture(_) => "capture",
        }
    }

    /// The request as its line, `\n` included.
    pub fn encode(&self) -> String {
        let mut rest = String::new();
        if let Request::Capture(c) = self {
            let key = match c.size {
                WindowSize::Steps(_) => "steps",
                WindowSize::DurationMs(_) => "duration_ms",
                WindowSize::Requests(_) => "requests",
            };
            rest.push_str(&format!(",\"{key}\":{}", c.size.target()));
            if let Some(o) = &c.out {
                rest.push_str(&format!(",\"out\":{}", serde_json::Value::from(o.as_str())));
            }
        }
        format!("{{\"v\":{PROTOCOL_VERSION},\"op\":\"{}\"{rest}}}\n", self.op())
    }
}

/// Why a request line was refused; its `Display` is the `error` of the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// More than [`MAX_REQUEST_BYTES`] before the newline.
    #[error("request too long: more than {MAX_REQUEST_BYTES} bytes before the newline")]
    TooLong,
    /// Nothing arrived before the end of the stream.
    #[error("empty request")]
    Empty,
    /// The peer sent nothing complete within [`IO_TIMEOUT`].
    #[error("timed out waiting for a complete request line")]
    TimedOut,
    /// The line is not UTF-8.
    #[error("malformed request: not UTF-8")]
    NotUtf8,
    /// The line is not a JSON object.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// `v` is missing or not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0} (this agent speaks v{PROTOCOL_VERSION})")]
    Version(String),
    /// `op` is missing or not a string.
    #[error("malformed request: \"op\" must be a string")]
    MissingOp,
    /// `op` names nothing this agent does.
    #[error("unknown op {0:?} (known: status, capture)")]
    UnknownOp(String),
    /// A field of the op is missing, of the wrong type or out of range.
    #[error("bad request: {0}")]
    BadField(String),
}

/// What the bytes read so far from a connection amount to (`buf` holds at most
/// `MAX_REQUEST_BYTES + 1` bytes; `eof`: the peer closed its side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing<'a> {
    /// Read more (at most `MAX_REQUEST_BYTES + 1 - buf.len()` bytes).
    NeedMore,
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Line(&'a [u8]),
    /// Refused: too long, or empty.
    Error(RequestError),
}

/// Frames the request: the bytes before the first `\n`, or everything at end of stream.
pub fn frame(buf: &[u8], eof: bool) -> Framing<'_> {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(i) => &buf[..i],
        None if buf.len() > MAX_REQUEST_BYTES => return Framing::Error(RequestError::TooLong),
        None if eof => buf,
        None => return Framing::NeedMore,
    };
    if line.len() > MAX_REQUEST_BYTES {
        return Framing::Error(RequestError::TooLong);
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Framing::Error(RequestError::Empty);
    }
    Framing::Line(line)
}

/// Parses one request line (without its `\n`). Checks, in order: size, UTF-8, a JSON
/// object, `v` = [`PROTOCOL_VERSION`], `op` a known string.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| RequestError::Malformed("expected a JSON object".into()))?;
    match obj.get("v") {
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => return Err(RequestError::Version(v.to_string())),
        None => return Err(RequestError::Version("(missing \"v\")".into())),
    }
    match obj.get("op").and_then(|o| o.as_str()) {
        Some("status") => Ok(Request::Status),
        Some("capture") => parse_capture(obj).map(Request::Capture),
        Some(other) => Err(RequestError::UnknownOp(truncate(other, 64).into_owned())),
        None => Err(RequestError::MissingOp),
    }
}

fn parse_capture(obj: &serde_json::Map<String, serde_json::Value>) -> Result<CaptureRequest, RequestError> {
    let bad = |m: String| RequestError::BadField(m);
    let mut sizes = Vec::new();
    for (key, max) in [("steps", MAX_WINDOW_STEPS), ("duration_ms", MAX_WINDOW_DURATION_MS), ("requests", MAX_WINDOW_REQUESTS)] {
        let Some(v) = obj.get(key) else { continue };
        let n = v.as_u64().ok_or_else(|| bad(format!("\"{key}\" must be a positive integer")))?;
        if n == 0 || n > max {
            return Err(bad(format!("\"{key}\" must be between 1 and {max}, not {n}")));
        }
        sizes.push(match key {
            "steps" => WindowSize::Steps(n),
            "duration_ms" => WindowSize::DurationMs(n),
            _ => WindowSize::Requests(n),
        });
    }
    let size = match sizes.as_slice() {
        [one] => *one,
        [] => return Err(bad("capture needs one of \"steps\", \"duration_ms\", \"requests\"".into())),
        _ => return Err(bad("capture takes only one of \"steps\", \"duration_ms\", \"requests\"".into())),
    };
    let out = match obj.get("out") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(o)) => {
            if o.len() > MAX_OUT_BYTES || !o.starts_with('/') || o.contains('\0') {
                return Err(bad(format!("\"out\" must be an absolute path of at most {MAX_OUT_BYTES} bytes")));
            }
            Some(o.clone())
        }
        Some(_) => return Err(bad("\"out\" must be a string".into())),
    };
    Ok(CaptureRequest { size, out })
}

fn truncate(s: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

/// Records lost so far, by reason (the `reason` label of `gpuspan_records_dropped_total`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Activity records CUPTI reported dropped (`cuptiActivityGetNumDroppedRecords`).
    pub cupti: u64,
    /// Records dropped because the capture held `GPUSPAN_MAX_RECORDS`.
    pub record_limit: u64,
    /// Scope events dropped because the scope queue was full.
    pub scope_queue: u64,
    /// Completed CUPTI buffers dropped because the completed-buffer queue was full.
    pub buffer_queue: u64,
    /// Spans the OTLP exporter dropped (spans, not records).
    pub otlp_spans: u64,
}

/// Span-assembler counters (`gpuspan_core::spans::AssemblerStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanCounts {
    /// Spans produced.
    pub spans: u64,
    /// Requests finalized.
    pub requests: u64,
    /// Steps finalized.
    pub steps: u64,
}

/// The `status` reply's fields (besides `v` and `ok`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's process id.
    pub pid: u32,
    /// `"coarse"` (CUDA events, the default), `"fine"` (CUPTI Activity API) or
    /// `"inactive"` (see `inactive_reason`).
    pub mode: String,
    /// Why the agent is inactive; `null` when active.
    pub inactive_reason: Option<String>,
    /// Whether the hot path records scopes now (false once the agent has stopped, at exit).
    pub collecting: bool,
    /// CUPTI API version in use (`cuptiGetVersion`; 0 when inactive).
    pub cupti_version: u32,
    /// Whether gpuspan is subscribed to CUPTI in CUPTI 13.3+'s multiple-subscriber mode now
    /// (another V2 tool may subscribe alongside); false when not subscribed or single mode.
    #[serde(default)]
    pub cupti_multi_subscriber: bool,
    /// Activity records decoded since activation.
    pub records_decoded: u64,
    /// Losses since activation.
    pub drops: Drops,
    /// Span-assembler counters; `null` when the collector stayed busy for longer than the
    /// agent waits for it (writing the capture at exit).
    pub spans: Option<SpanCounts>,
    /// The fine-capture window in progress, else the last one; `null` when there was none.
    pub capture_window: Option<WindowStatus>,
    /// Coarse timing counters; `null` outside coarse mode.
    #[serde(default)]
    pub coarse: Option<CoarseCounts>,
    /// Address the Prometheus endpoint listens on (`host:port`), or `null`.
    pub metrics_addr: Option<String>,
    /// The OTLP endpoint spans go to, as configured, or `null`.
    pub otlp_endpoint: Option<String>,
    /// Seconds since the agent activated.
    pub uptime_s: f64,
}

/// Where a fine-capture window is ([`WindowStatus::state`]).
pub mod window_state {
    /// CUPTI subscribed, waiting for the first step (request) to begin.
    pub const ARMED: &str = "armed";
    /// Collecting the window's steps (requests).
    pub const OPEN: &str = "open";
    /// The last step ended; waiting for its GPU work, then flushing.
    pub const CLOSING: &str = "closing";
    /// The capture is written and CUPTI released.
    pub const WRITTEN: &str = "written";
    /// Not opened (see `error`): CUPTI held by another client, …
    pub const REFUSED: &str = "refused";
    /// Opened but no capture came out (see `error`).
    pub const FAILED: &str = "failed";
}

/// One fine-capture window, as `status` and the `capture` reply show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStatus {
    /// Window number in this process, from 1.
    pub id: u64,
    /// One of [`window_state`].
    pub state: String,
    /// What opened it: `control` (`gpuspan capture`), `rule`, `anomaly`.
    pub trigger: String,
    /// `steps`, `duration` or `requests` ([`WindowSize::kind`]).
    pub kind: String,
    /// N steps, ms, or N requests.
    pub target: u64,
    /// Steps (requests) completed so far, or ms elapsed for `duration`.
    pub done: u64,
    /// Directory the capture goes to.
    pub out_dir: String,
    /// The capture file once written.
    pub capture: Option<String>,
    /// Kernels in the capture once written.
    pub kernels: Option<u64>,
    /// Steps in the capture once written.
    pub steps: Option<u64>,
    /// Why it was refused or failed.
    pub error: Option<String>,
}

/// Coarse-mode counters in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoarseCounts {
    /// Scope intervals measured with CUDA events.
    pub scopes_timed: u64,
    /// Scope intervals that fell back to CPU times.
    pub scopes_cpu_timed: u64,
    /// Boundaries CPU-timed because the event pool was exhausted.
    pub pool_exhausted: u64,
    /// Boundaries CPU-timed because the driver refused an event call.
    pub event_errors: u64,
    /// Marks dropped on a full queue.
    pub marks_dropped: u64,
    /// CUDA events made so far (at most `GPUSPAN_EVENT_POOL`).
    pub events_made: u64,
    /// Boundaries that ran inside a CUDA-graph capture (nothing recorded, no span).
    #[serde(default)]
    pub scopes_in_capture: u64,
    /// Root scopes (requests) given up after `GPUSPAN_SCOPE_TIMEOUT` without an end.
    #[serde(default)]
    pub roots_timed_out: u64,
    /// Events free in the pool now (of `events_made`).
    #[serde(default)]
    pub events_free: u64,
    /// Root scopes (requests) that began on an idle GPU and re-anchored the GPU-to-CPU clock
    /// chain at their CPU begin.
    #[serde(default)]
    pub roots_reanchored: u64,
}

/// A successful `capture` reply line: `{"v":1,"ok":true,"window":{…}}\n`.
pub fn capture_reply(w: &WindowStatus) -> String {
    ok_reply(&serde_json::json!({ "window": w }).to_string())
}

/// The [`WindowStatus`] of a successful `capture` reply.
pub fn parse_capture_reply(reply: &serde_json::Map<String, serde_json::Value>) -> Result<WindowStatus, String> {
    let w = reply.get("window").ok_or("malformed capture reply: no \"window\"")?;
    serde_json::from_value(w.clone()).map_err(|e| format!("malformed capture reply: {e}"))
}

/// A successful `status` reply line, `\n` included: `v` and `ok` first, then the fields
/// of [`Status`] in their declared order.
pub fn status_reply(status: &Status) -> String {
    ok_reply(&serde_json::to_string(status).unwrap_or_else(|_| "{}".into()))
}

/// `{"v":1,"ok":true,` followed by the members of `object` (a serialized JSON object).
fn ok_reply(object: &str) -> String {
    let members = object.strip_prefix('{').and_then(|o| o.strip_suffix('}')).unwrap_or("");
    let sep = if members.is_empty() { "" } else { "," };
    format!("{{\"v\":{PROTOCOL_VERSION},\"ok\":true{sep}{members}}}\n")
}

/// An error reply line, `\n` included: `{"v":1,"ok":false,"error":message}`, the message
/// cut to 1024 characters so the line stays well under [`MAX_REPLY_BYTES`].
pub fn error_reply(message: &str) -> String {
    let mut s = serde_json::json!({ "v": PROTOCOL_VERSION, "ok": false, "error": truncate(message, 1024) }).to_string();
    s.push('\n');
    s
}

/// A reply, as the client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `ok: true`: the whole object (op fields with `v` and `ok`).
    Ok(serde_json::Map<String, serde_json::Value>),
    /// `ok: false`: the agent's message.
    Error(String),
}

/// Parses a reply line (with or without its `\n`). Errors say what is wrong with it.
pub fn parse_reply(line: &[u8]) -> Result<Reply, String> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("malformed reply: {e}"))?;
    let serde_json::Value::Object(obj) = v else { return Err("malformed reply: not a JSON object".into()) };
    if obj.get("v").and_then(|v| v.as_u64()) != Some(PROTOCOL_VERSION) {
        return Err(format!("reply of protocol version {} (this client speaks v{PROTOCOL_VERSION})", obj.get("v").map(|v| v.to_string()).unwrap_or_else(|| "(missing)".into())));
    }
    match obj.get("ok").and_then(|o| o.as_bool()) {
        Some(true) => Ok(Reply::Ok(obj)),
        Some(false) => Ok(Reply::Error(obj.get("error").and_then(|e| e.as_str()).unwrap_or("(no message)").to_string())),
        None => Err("malformed reply: no boolean \"ok\"".into()),
    }
}

/// The [`Status`] inside a successful `status` reply.
pub fn parse_status(reply: &serde_json::Map<String, serde_json::Value>) -> Result<Status, String> {
    serde_json::from_value(serde_json::Value::Object(reply.clone())).map_err(|e| format!("malformed status reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            pid: 42,
            mode: "fine".into(),
            inactive_reason: None,
            collecting: true,
            cupti_version: 27,
            cupti_multi_subscriber: false,
            records_decoded: 1234,
            drops: Drops { cupti: 1, record_limit: 2, scope_queue: 3, buffer_queue: 4, otlp_spans: 5 },
            spans: Some(SpanCounts { spans: 10, requests: 1, steps: 3 }),
            capture_window: None,
            coarse: None,
            metrics_addr: Some("127.0.0.1:9464".into()),
            otlp_endpoint: None,
            uptime_s: 1.5,
        }
    }

    #[test]
    fn control_paths() {
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        assert_eq!(control_dir(Some(OsStr::new("/run/user/7")), 7, Some(9), yes), PathBuf::from("/run/user/7/gpuspan"));
        assert_eq!(control_dir(Some(OsStr::new("/run/user/7")), 7, Some(9), no), PathBuf::from("/tmp/gpuspan-7-9"));
        assert_eq!(control_dir(Some(OsStr::new("relative")), 7, None, yes), PathBuf::from("/tmp/gpuspan-7"));
        assert_eq!(control_dir(Some(OsStr::new("")), 0, None, yes), PathBuf::from("/tmp/gpuspan-0"));
        assert_eq!(control_dir(None, 1000, Some(4026531836), yes), PathBuf::from("/tmp/gpuspan-1000-4026531836"));
        assert_eq!(parse_namespace_link("pid:[4026531836]"), Some(4026531836));
        assert_eq!(parse_namespace_link("net:[4026531840]"), None);
        assert!(pid_namespace(None).is_some(), "this process's PID namespace");
        assert_eq!(pid_namespace(None), pid_namespace(Some(std::process::id())));
        assert_eq!(socket_path(Path::new("/tmp/gpuspan-0"), 123), PathBuf::from("/tmp/gpuspan-0/123.sock"));
    }

    #[test]
    fn control_env_values() {
        assert_eq!(control_disabled(None), Ok(false));
        assert_eq!(control_disabled(Some("")), Ok(false));
        assert_eq!(control_disabled(Some("on")), Ok(false));
        assert_eq!(control_disabled(Some(" off ")), Ok(true));
        assert_eq!(control_disabled(Some("0")), Ok(true));
        assert!(control_disabled(Some("maybe")).unwrap_err().contains("GPUSPAN_CONTROL"));
    }

    #[test]
    fn control_capture_roundtrip() {
        for size in [WindowSize::Steps(3), WindowSize::DurationMs(2000), WindowSize::Requests(1)] {
            for out in [None, Some("/tmp/x y".to_string())] {
                let r = Request::Capture(CaptureRequest { size, out: out.clone() });
                let line = r.encode();
                assert!(line.ends_with('\n') && line.len() < MAX_REQUEST_BYTES);
                assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(r));
            }
        }
        assert_eq!(
            parse_request(br#"{"v":1,"op":"capture","duration_ms":2000}"#),
            Ok(Request::Capture(CaptureRequest { size: WindowSize::DurationMs(2000), out: None }))
        );
        let w = WindowStatus {
            id: 1,
            state: window_state::ARMED.into(),
            trigger: "control".into(),
            kind: "steps".into(),
            target: 3,
            done: 0,
            out_dir: "/tmp/w".into(),
            capture: None,
            kernels: None,
            steps: None,
            error: None,
        };
        let line = capture_reply(&w);
        let Reply::Ok(obj) = parse_reply(line.as_bytes()).unwrap() else { panic!("{line}") };
        assert_eq!(parse_capture_reply(&obj).unwrap(), w);
    }

    #[test]
    fn control_request_roundtrip() {
        let line = Request::Status.encode();
        assert_eq!(line, "{\"v\":1,\"op\":\"status\"}\n");
        let Framing::Line(l) = frame(line.as_bytes(), false) else { panic!() };
        assert_eq!(parse_request(l), Ok(Request::Status));
        // Extra fields are ignored; CRLF and end of stream end a line too.
        assert_eq!(parse_request(br#"{"v":1,"op":"status","x":[1]}"#), Ok(Request::Status));
        assert_eq!(frame(b"{\"v\":1,\"op\":\"status\"}\r\n", false), Framing::Line(br#"{"v":1,"op":"status"}"#));
        assert_eq!(frame(br#"{"v":1,"op":"status"}"#, true), Framing::Line(br#"{"v":1,"op":"status"}"#));
    }

    #[test]
    fn control_framing_limits() {
        assert_eq!(frame(b"", false), Framing::NeedMore);
        assert_eq!(frame(b"{\"v\"", false), Framing::NeedMore);
        assert_eq!(frame(b"", true), Framing::Error(RequestError::Empty));
        assert_eq!(frame(b"  \n", false), Framing::Error(RequestError::Empty));
        // Exactly MAX bytes then a newline: accepted as a line (it then fails to parse).
        let mut max = vec![b'x'; MAX_REQUEST_BYTES];
        max.push(b'\n');
        assert_eq!(frame(&max, false), Framing::Line(&max[..MAX_REQUEST_BYTES]));
        // MAX + 1 bytes without a newline: too long, whatever follows.
        let over = vec![b'x'; MAX_REQUEST_BYTES + 1];
        assert_eq!(frame(&over, false), Framing::Error(RequestError::TooLong));
        assert_eq!(frame(&over, true), Framing::Error(RequestError::TooLong));
        assert_eq!(parse_request(&over), Err(RequestError::TooLong));
        // MAX bytes without a newline: more may still come.
        assert_eq!(frame(&max[..MAX_REQUEST_BYTES], false), Framing::NeedMore);
    }

    #[test]
    fn control_request_errors() {
        let err = |s: &[u8]| parse_request(s).unwrap_err();
        assert!(matches!(err(b"garbage"), RequestError::Malformed(_)));
        assert!(matches!(err(b"[1,2]"), RequestError::Malformed(_)));
        assert!(matches!(err(b"{\"v\":1,\"op\":\"status\""), RequestError::Malformed(_)));
        assert_eq!(err(&[0xff, 0xfe]), RequestError::NotUtf8);
        assert_eq!(err(br#"{"v":2,"op":"status"}"#), RequestError::Version("2".into()));
        assert_eq!(err(br#"{"v":"1","op":"status"}"#), RequestError::Version("\"1\"".into()));
        assert!(matches!(err(br#"{"op":"status"}"#), RequestError::Version(_)));
        assert_eq!(err(br#"{"v":1}"#), RequestError::MissingOp);
        assert_eq!(err(br#"{"v":1,"op":7}"#), RequestError::MissingOp);
        assert_eq!(err(br#"{"v":1,"op":"reboot"}"#), RequestError::UnknownOp("reboot".into()));
        // The version is checked before the op.
        assert!(matches!(err(br#"{"v":9,"op":"reboot"}"#), RequestError::Version(_)));
        // Capture fields: one size, positive, bounded; an absolute out.
        for bad in [
            &br#"{"v":1,"op":"capture"}"#[..],
            br#"{"v":1,"op":"capture","steps":0}"#,
            br#"{"v":1,"op":"capture","steps":-3}"#,
            br#"{"v":1,"op":"capture","steps":"3"}"#,
            br#"{"v":1,"op":"capture","steps":1000000}"#,
            br#"{"v":1,"op":"capture","steps":3,"requests":1}"#,
            br#"{"v":1,"op":"capture","steps":3,"out":"relative/dir"}"#,
            br#"{"v":1,"op":"capture","steps":3,"out":7}"#,
        ] {
            assert!(matches!(err(bad), RequestError::BadField(_)), "{}", String::from_utf8_lossy(bad));
        }
        // Messages are one line and name the problem.
        for e in [err(b"garbage"), err(br#"{"v":2,"op":"status"}"#), err(br#"{"v":1,"op":"reboot"}"#), RequestError::TooLong] {
            let m = e.to_string();
            assert!(!m.contains('\n') && !m.is_empty(), "{m}");
        }
        assert!(RequestError::TooLong.to_string().contains("4096"));
        // A huge op name is cut in the message.
        let long = format!(r#"{{"v":1,"op":"{}"}}"#, "z".repeat(1000));
        assert!(err(long.as_bytes()).to_string().len() < 200);
    }

    #[test]
    fn control_replies() {
        let s = status();
        let line = status_reply(&s);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert!(line.starts_with("{\"v\":1,\"ok\":true,\"pid\":42,\"mode\":\"fine\","), "{line}");
        assert_eq!(ok_reply("{}"), "{\"v\":1,\"ok\":true}\n");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["ok"], true);
        assert_eq!(v["mode"], "fine");
        assert!(v["capture_window"].is_null() && v["inactive_reason"].is_null());
        assert_eq!(v["drops"]["otlp_spans"], 5);
        assert_eq!(v["spans"]["steps"], 3);
        let Reply::Ok(obj) = parse_reply(line.as_bytes()).unwrap() else { panic!() };
        assert_eq!(parse_status(&obj).unwrap(), s);

        let e = error_reply("unknown op \"x\"\nsecond line");
        assert_eq!(e.matches('\n').count(), 1, "newlines inside the message are escaped");
        assert_eq!(parse_reply(e.as_bytes()).unwrap(), Reply::Error("unknown op \"x\"\nsecond line".into()));
        assert!(error_reply(&"y".repeat(100_000)).len() < MAX_REPLY_BYTES);

        assert!(parse_reply(b"nope").is_err());
        assert!(parse_reply(br#"{"v":2,"ok":true}"#).unwrap_err().contains("version"));
        assert!(parse_reply(br#"{"v":1}"#).is_err());
    }
}

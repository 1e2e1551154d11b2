//! Agent diagnostics on stderr: text lines (the default) or the platform's structured JSON
//! log format (`GPUSPAN_LOG_FORMAT=json`).
//!
//! The agent never uses stdout (the worker's stdout is the worker's). `GPUSPAN_LOG=off`
//! silences everything, `warn` (the default) prints warnings and errors, `info` adds
//! informational lines, `debug` adds per-step events (`generation.step.completed`).
//!
//! Text: `gpuspan: warning: <msg>` / `gpuspan: <msg>`, one `eprintln!` each.
//!
//! JSON: one object per line with `timestamp` (RFC 3339, ms, UTC), `level` (`ERROR`,
//! `WARN`, `INFO`, `DEBUG`), `service` (`OTEL_SERVICE_NAME`, else the process name),
//! `component` (`gpuspan-agent`), `worker_id`, `event`, `message`, and where they apply
//! `request_id`, `trace_id`, `span_id` and a `context` object (for steps: `model`, `step`,
//! `total_steps`, `step_duration_ms`, `gpu_memory_used_gb`); the schema is
//! `docs/log-schema.json`. Plain warnings and info lines become events `agent.warning` /
//! `agent.info`. Events go through a `tracing` [`Dispatch`] of the agent's own (never the
//! host's global subscriber) to a `tracing-subscriber` layer (`PlatformJson`) that writes
//! through `tracing-appender`'s non-blocking writer: a bounded queue
//! ([`JSON_QUEUE_LINES`]) to a `gpuspan-log` thread, lossy when full, so no application
//! thread ever waits for stderr; lines dropped that way are counted
//! ([`json_lines_dropped`]). Before that thread starts (early in activation) lines are
//! written directly. Prompt text is never logged: no event carries request attributes
//! other than `model` and `request_id`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use tracing::{Dispatch, Level};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Log level: 0 off, 1 warn (default), 2 info, 3 debug.
static LEVEL: AtomicU8 = AtomicU8::new(1);
/// `GPUSPAN_LOG_FORMAT=json`.
static JSON: AtomicBool = AtomicBool::new(false);

/// Lines the JSON writer queue holds before it drops (and counts) new ones.
pub const JSON_QUEUE_LINES: usize = 16_384;

/// Where JSON lines go: the non-blocking writer once started, and its guard (dropping it
/// flushes the queue, waiting at most about a second: tracing-appender's bound).
struct JsonSink {
    dispatch: Dispatch,
    dropped: tracing_appender::non_blocking::ErrorCounter,
    guard: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>>,
}

static SINK: OnceLock<JsonSink> = OnceLock::new();
/// Set by [`finish`]: the writer thread is gone, lines go out directly again.
static FINISHED: AtomicBool = AtomicBool::new(false);
/// The direct (synchronous) dispatch used before the writer thread runs.
static DIRECT: OnceLock<Dispatch> = OnceLock::new();
static IDENTITY: OnceLock<(String, String)> = OnceLock::new();

/// Sets the level from `GPUSPAN_LOG` (`off`, `warn`, `info`, `debug`; anything else: warn)
/// and the format from `GPUSPAN_LOG_FORMAT` (`json`; anything else: text).
pub fn init_from_env() {
    let l = match std::env::var("GPUSPAN_LOG").as_deref() {
        Ok("off") | Ok("0") => 0,
        Ok("info") => 2,
        Ok("debug") => 3,
        _ => 1,
    };
    LEVEL.store(l, Ordering::Relaxed);
    JSON.store(std::env::var("GPUSPAN_LOG_FORMAT").is_ok_and(|f| f.trim().eq_ignore_ascii_case("json")), Ordering::Relaxed);
}

/// Names the process in JSON lines: `service` and `worker_id` (set once, at activation).
pub fn set_identity(service: &str, worker_id: &str) {
    let _ = IDENTITY.set((service.to_string(), worker_id.to_string()));
}

/// Starts the JSON writer thread (`gpuspan-log`) when the format is JSON; a no-op
/// otherwise or when started already. Called on the agent's activation path.
pub fn start_json_writer() {
    start_json_writer_to(std::io::stderr());
}

/// [`start_json_writer`] writing to `out` instead of stderr (tests: a writer that blocks).
fn start_json_writer_to<W: Write + Send + 'static>(out: W) {
    if !JSON.load(Ordering::Relaxed) || SINK.get().is_some() {
        return;
    }
    // tracing-appender panics when it cannot spawn its thread: then lines keep going out
    // directly.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(JSON_QUEUE_LINES)
            .thread_name("gpuspan-log")
            .finish(out)
    }));
    let Ok((writer, guard)) = started else { return };
    let dropped = writer.error_counter();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(PlatformJson { out: Out::Queue(writer) }));
    let _ = SINK.set(JsonSink { dispatch, dropped, guard: Mutex::new(Some(guard)) });
}

/// Flushes and stops the JSON writer thread (the agent finishing; waits about a second at
/// most). Later lines are written directly.
pub fn finish() {
    if let Some(s) = SINK.get() {
        if let Some(g) = s.guard.lock().ok().and_then(|mut g| g.take()) {
            FINISHED.store(true, Ordering::Release);
            drop(g);
        }
    }
}

/// JSON lines dropped because the writer queue was full.
pub fn json_lines_dropped() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.dropped_lines() as u64)
}

/// Whether warnings are printed (`GPUSPAN_LOG` is not `off`). One atomic load.
pub fn warnings_on() -> bool {
    LEVEL.load(Ordering::Relaxed) >= 1
}

/// Whether events of `level` are written (one atomic load): callers skip building an
/// event's fields when not.
pub fn enabled(level: Level) -> bool {
    let need = match level {
        Level::ERROR | Level::WARN => 1,
        Level::INFO => 2,
        _ => 3,
    };
    LEVEL.load(Ordering::Relaxed) >= need
}

/// Whether the format is JSON.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Prints `gpuspan: warning: <msg>` on stderr unless logging is off (JSON: an
/// `agent.warning` event).
pub fn warn(msg: &str) {
    event(Level::WARN, "agent.warning", msg, &Fields::default());
}

/// Prints `gpuspan: <msg>` on stderr at level info (JSON: an `agent.info` event).
pub fn info(msg: &str) {
    event(Level::INFO, "agent.info", msg, &Fields::default());
}

/// Another destination for every event written (the OTLP log pipeline, set by
/// `telemetry` when an endpoint is configured): `(level, event name, message, fields)`. It
/// must not block.
pub type EventSink = Box<dyn Fn(Level, &'static str, &str, &Fields) + Send + Sync>;

static EVENT_SINK: OnceLock<EventSink> = OnceLock::new();

/// Sets the [`EventSink`] (once; later calls are ignored).
pub fn set_event_sink(sink: EventSink) {
    let _ = EVENT_SINK.set(sink);
}

/// What an event says beyond its name and message.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    /// The request's id (`request_id` attribute, else its scope id).
    pub request_id: Option<String>,
    /// W3C trace id (written as 32 lowercase hex digits).
    pub trace_id: Option<[u8; 16]>,
    /// Span id (written as 16 lowercase hex digits).
    pub span_id: Option<[u8; 8]>,
    /// The `context` object's members (for steps: `model`, `step`, `total_steps`,
    /// `step_duration_ms`, `gpu_memory_used_gb`).
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Other top-level members (`reason`, `path`, `kernels`, `dropped`, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    /// Everything but the name and message, as the one JSON string field a `tracing` event
    /// carries to [`PlatformJson`] (event fields are static names): `[request_id, trace_id
    /// hex, span_id hex, context, extra]`.
    fn rest_json(&self) -> String {
        let hex = |b: Option<&[u8]>| b.map(gpuspan_core::spans::ids::hex);
        serde_json::to_string(&(
            &self.request_id,
            hex(self.trace_id.as_ref().map(|t| &t[..])),
            hex(self.span_id.as_ref().map(|s| &s[..])),
            &self.context,
            &self.extra,
        ))
        .unwrap_or_default()
    }
}

/// Writes event `name` at `level` with `message` and `fields`. JSON format: one line as the
/// module docs say; text format: `gpuspan: [warning: ]<message>` for WARN / ERROR / INFO
/// (DEBUG events are JSON only). Also hands it to the [`EventSink`] when one is set. Nothing
/// when the level is off. Never blocks on stderr in JSON mode once the writer runs.
pub fn event(level: Level, name: &'static str, message: &str, fields: &Fields) {
    if !enabled(level) {
        return;
    }
    if let Some(sink) = EVENT_SINK.get() {
        sink(level, name, message, fields);
    }
    if !json() {
        match level {
            Level::ERROR => eprintln!("gpuspan: error: {message}"),
            Level::WARN => eprintln!("gpuspan: warning: {message}"),
            Level::INFO => eprintln!("gpuspan: {message}"),
            _ => {}
        }
        return;
    }
    let rest = fields.rest_json();
    let dispatch = match SINK.get().filter(|_| !FINISHED.load(Ordering::Acquire)) {
        Some(s) => &s.dispatch,
        None => DIRECT.get_or_init(|| Dispatch::new(tracing_subscriber::registry().with(PlatformJson { out: Out::Direct }))),
    };
    tracing::dispatcher::with_default(dispatch, || match level {
        Level::ERROR => tracing::error!(target: "gpuspan", event = name, message = message, gpuspan_fields = rest.as_str()),
        Level::WARN => tracing::warn!(target: "gpuspan", event = name, message = message, gpuspan_fields = rest.as_str()),
        Level::INFO => tracing::info!(target: "gpuspan", event = name, message = message, gpuspan_fields = rest.as_str()),
        _ => tracing::debug!(target: "gpuspan", event = name, message = message, gpuspan_fields = rest.as_str()),
    });
}

enum Out {
    /// tracing-appender's non-blocking writer.
    Queue(tracing_appender::non_blocking::NonBlocking),
    /// stderr, synchronously (before the writer thread runs).
    Direct,
}

/// The `tracing-subscriber` layer that writes each event in the platform's JSON log format
/// (module docs), one line per event.
struct PlatformJson {
    out: Out,
}

#[derive(Default)]
struct Visit {
    event: String,
    message: String,
    rest: String,
}

impl tracing::field::Visit for Visit {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "event" => self.event = value.to_string(),
            "message" => self.message = value.to_string(),
            "gpuspan_fields" => self.rest = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// One JSON line for `event` at `level` (module docs), without the trailing newline.
fn platform_line(level: &Level, v: &Visit, now: std::time::SystemTime) -> String {
    type Rest = (
        Option<String>,
        Option<String>,
        Option<String>,
        serde_json::Map<String, serde_json::Value>,
        serde_json::Map<String, serde_json::Value>,
    );
    let (request_id, trace_id, span_id, context, extra): Rest = serde_json::from_str(&v.rest).unwrap_or_default();
    let (service, worker_id) = IDENTITY.get().cloned().unwrap_or_else(|| (process_name(), format!("pid-{}", std::process::id())));
    let mut o = serde_json::Map::new();
    o.insert("timestamp".into(), humantime::format_rfc3339_millis(now).to_string().into());
    o.insert("level".into(), level.as_str().into());
    o.insert("service".into(), service.into());
    o.insert("component".into(), "gpuspan-agent".into());
    o.insert("worker_id".into(), worker_id.into());
    o.insert("event".into(), v.event.clone().into());
    o.insert("message".into(), v.message.clone().into());
    if let Some(r) = request_id {
        o.insert("request_id".into(), r.into());
    }
    if !context.is_empty() {
        o.insert("context".into(), context.into());
    }
    if let Some(t) = trace_id {
        o.insert("trace_id".into(), t.into());
    }
    if let Some(s) = span_id {
        o.insert("span_id".into(), s.into());
    }
    for (k, val) in extra {
        o.entry(k).or_insert(val);
    }
    serde_json::Value::Object(o).to_string()
}

impl<S: tracing::Subscriber> Layer<S> for PlatformJson {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut v = Visit::default();
        event.record(&mut v);
        let mut line = platform_line(event.metadata().level(), &v, std::time::SystemTime::now());
        line.push('\n');
        match &self.out {
            // One write call is one queued line (lossy: dropped and counted when full).
            Out::Queue(w) => {
                let _ = w.clone().write_all(line.as_bytes());
            }
            Out::Direct => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

/// This process's name (`/proc/self/comm`), the default `service`.
fn process_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/self/comm").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The default `service` of JSON lines: `OTEL_SERVICE_NAME`, else the process name.
pub fn default_service() -> String {
    process_name()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stderr that stops taking lines until released (a log pipe nobody reads), then
    /// counts what it gets.
    struct StuckPipe {
        released: std::sync::Arc<(Mutex<bool>, std::sync::Condvar)>,
        lines: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Write for StuckPipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.released;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.lines.fetch_add(buf.iter().filter(|&&b| b == b'\n').count() as u64, Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A flood of JSON log lines while stderr takes none (issue 15, item 3): the threads that
    /// log never wait (all 40 000 events return while the pipe is still stuck), the queue
    /// holds [`JSON_QUEUE_LINES`], and every line is either written once the pipe drains or
    /// counted in [`json_lines_dropped`]: written + dropped = emitted, exactly.
    #[test]
    fn a_log_flood_never_blocks_and_every_dropped_line_is_counted() {
        const EVENTS: u64 = 40_000;
        LEVEL.store(3, Ordering::Relaxed);
        JSON.store(true, Ordering::Relaxed);
        let released = std::sync::Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        start_json_writer_to(StuckPipe { released: released.clone(), lines: lines.clone() });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..4 {
            let done = done_tx.clone();
            std::thread::spawn(move || {
                for i in 0..EVENTS / 4 {
                    let mut f = Fields::default();
                    f.context.insert("step".into(), (t * EVENTS + i).into());
                    event(Level::DEBUG, "generation.step.completed", "flood", &f);
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            // A bound, not a timing: a logging thread that waited on the stuck pipe would
            // never finish.
            done_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a logging thread blocked on the stuck stderr");
        }
        assert_eq!(lines.load(Ordering::Relaxed), 0, "nothing reached the stuck pipe");
        let dropped = json_lines_dropped();
        assert!(dropped > 0 && dropped <= EVENTS - JSON_QUEUE_LINES as u64, "dropped {dropped}");
        *released.0.lock().unwrap() = true;
        released.1.notify_all();
        finish();
        assert_eq!(lines.load(Ordering::Relaxed) + json_lines_dropped(), EVENTS, "written + dropped = emitted");
    }

    #[test]
    fn a_step_event_line_has_the_platform_fields() {
        let trace_id = [0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c];
        let span_id = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];
        let mut f = Fields { request_id: Some("r-9".into()), trace_id: Some(trace_id), span_id: Some(span_id), ..Default::default() };
        f.context.insert("model".into(), "wan2.1".into());
        f.context.insert("step".into(), 3.into());
        let rest = f.rest_json();
        let v = Visit { event: "generation.step.completed".into(), message: "step 3".into(), rest };
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_700_000_123);
        let line: serde_json::Value = serde_json::from_str(&platform_line(&Level::DEBUG, &v, t)).unwrap();
        assert_eq!(line["timestamp"], "2025-12-02T18:26:40.123Z");
        assert_eq!(line["level"], "DEBUG");
        assert_eq!(line["component"], "gpuspan-agent");
        assert_eq!(line["event"], "generation.step.completed");
        assert_eq!(line["request_id"], "r-9");
        assert_eq!(line["context"]["model"], "wan2.1");
        assert_eq!(line["context"]["step"], 3);
        assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(line["span_id"], "b7ad6b7169203331");
    }
}

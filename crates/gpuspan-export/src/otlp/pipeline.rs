//! The span exporter thread.
//!
//! Producer side (the agent's collector): [`SpanPipeline::submit`] is a `try_send` on a
//! bounded channel: it never blocks; a full channel drops the spans and counts them
//! (tokio-console's `try_reserve` / `dropped.fetch_add` pattern). Exporter side: one thread
//! ("gpuspan-otlp") owns the `opentelemetry-otlp` exporter and calls it from one place only
//! (the SDK's contract: `export` is never called concurrently), driving it on a one-worker
//! tokio runtime that the tonic channel's background task also lives on.
//!
//! Outages: spans wait in a backlog bounded by bytes ([`SpanRecord::approx_bytes`]); beyond
//! the bound the oldest are dropped and counted, with one warning for the whole process.
//! A failed export is retried after a backoff (250 ms doubling to `max_backoff`); spans
//! keep arriving meanwhile, and once the endpoint answers the backlog drains oldest first.
//! At exit [`SpanPipeline::shutdown`] exports what it can within a bounded time.

use super::config::{OtlpProtocol, OtlpSettings};
use super::convert::{instrumentation_scope, to_span_data};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use gpuspan_core::spans::SpanRecord;
use opentelemetry_sdk::trace::SpanExporter as _;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages (batches of spans) the channel from the collector holds.
pub const CHANNEL_CAP: usize = 1024;

/// A warning sink (the agent's once-per-message logger).
pub type WarnFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Counters of the pipeline (all spans, except `backlog_bytes`).
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Spans handed to [`SpanPipeline::submit`].
    pub submitted: AtomicU64,
    /// Spans the endpoint accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the channel from the collector was full.
    pub dropped_queue: AtomicU64,
    /// Oldest spans dropped because the backlog exceeded its byte bound.
    pub dropped_backlog: AtomicU64,
    /// Spans still unexported when the exit flush ran out of time.
    pub dropped_at_exit: AtomicU64,
    /// Export calls that failed (each is retried).
    pub export_failures: AtomicU64,
    /// Bytes of spans waiting now.
    pub backlog_bytes: AtomicU64,
    /// Largest backlog seen, bytes.
    pub backlog_peak_bytes: AtomicU64,
}

impl ExportCounters {
    /// All spans lost so far, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue.load(Ordering::Relaxed)
            + self.dropped_backlog.load(Ordering::Relaxed)
            + self.dropped_at_exit.load(Ordering::Relaxed)
    }
}

enum Msg {
    Spans(Vec<SpanRecord>),
    Shutdown(Instant, Sender<()>),
}

/// A running span exporter.
pub struct SpanPipeline {
    tx: Sender<Msg>,
    counters: Arc<ExportCounters>,
    warn: WarnFn,
    queue_warned: AtomicBool,
    settings: OtlpSettings,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SpanPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanPipeline").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn build_exporter(settings: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::WithExportConfig;
    let r = match settings.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_timeout(settings.export_timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(settings.export_timeout)
            .build(),
    };
    r.map_err(|e| format!("OTLP exporter for {}: {e}", settings.endpoint))
}

impl SpanPipeline {
    /// Starts the exporter thread. Errors: the runtime or the exporter could not be built
    /// (a bad endpoint URL, say), with the reason.
    pub fn start(settings: OtlpSettings, warn: WarnFn) -> Result<SpanPipeline, String> {
        let rt = super::exporter_runtime("gpuspan-otlp-rt", "OTLP exporter")?;
        let mut exporter = rt.block_on(async { build_exporter(&settings) })?;
        exporter.set_resource(&super::resource(&settings));
        let (tx, rx) = bounded(CHANNEL_CAP);
        let counters = Arc::new(ExportCounters::default());
        let worker = Worker {
            rt,
            exporter,
            rx,
            counters: counters.clone(),
            warn: warn.clone(),
            settings: settings.clone(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            warned_backlog: false,
            warned_failure: false,
            deferred: None,
        };
        let thread = std::thread::Builder::new()
            .name("gpuspan-otlp".into())
            .spawn(move || {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || worker.run()));
            })
            .map_err(|e| format!("cannot start the OTLP exporter thread: {e}"))?;
        Ok(SpanPipeline {
            tx,
            counters,
            warn,
            queue_warned: AtomicBool::new(false),
            settings,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands spans to the exporter thread without blocking; a full channel drops them
    /// (counted; one warning).
    pub fn submit(&self, spans: Vec<SpanRecord>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        self.counters.submitted.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Msg::Spans(spans)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped_queue.fetch_add(n, Ordering::Relaxed);
                if !self.queue_warned.swap(true, Ordering::Relaxed) {
                    (self.warn)(&format!(
                        "OTLP exporter queue full ({CHANNEL_CAP} batches): dropping spans (counted in gpuspan_records_dropped_total{{reason=\"otlp_spans\"}})"
                    ));
                }
            }
        }
    }

    /// Counters.
    pub fn counters(&self) -> &Arc<ExportCounters> {
        &self.counters
    }

    /// Settings in use.
    pub fn settings(&self) -> &OtlpSettings {
        &self.settings
    }

    /// Exports what is queued, waiting at most `timeout`, and stops the thread. Spans left
    /// unexported are counted in `dropped_at_exit`. Idempotent.
    pub fn shutdown(&self, timeout: Duration) {
        let Some(handle) = self.thread.lock().ok().and_then(|mut g| g.take()) else { return };
        let deadline = Instant::now() + timeout;
        let (done_tx, done_rx) = bounded(1);
        if self.tx.send_timeout(Msg::Shutdown(deadline, done_tx), timeout).is_err() {
            return;
        }
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
        if done_rx.recv_timeout(wait).is_ok() {
            let _ = handle.join();
        }
    }
}

struct Worker {
    rt: tokio::runtime::Runtime,
    exporter: opentelemetry_otlp::SpanExporter,
    rx: Receiver<Msg>,
    counters: Arc<ExportCounters>,
    warn: WarnFn,
    settings: OtlpSettings,
    backlog: VecDeque<(SpanRecord, usize)>,
    backlog_bytes: usize,
    warned_backlog: bool,
    warned_failure: bool,
    deferred: Option<Msg>,
}

impl Worker {
    fn push(&mut self, spans: Vec<SpanRecord>) {
        for s in spans {
            let b = s.approx_bytes();
            self.backlog_bytes += b;
            self.backlog.push_back((s, b));
        }
        let mut dropped = 0u64;
        while self.backlog_bytes > self.settings.backlog_bytes {
            let Some((_, b)) = self.backlog.pop_front() else { break };
            self.backlog_bytes -= b;
            dropped += 1;
        }
        if dropped > 0 {
            self.counters.dropped_backlog.fetch_add(dropped, Ordering::Relaxed);
            if !self.warned_backlog {
                self.warned_backlog = true;
                (self.warn)(&format!(
                    "OTLP endpoint {} unreachable and the span backlog is full ({} bytes): dropping the oldest spans (counted in gpuspan_records_dropped_total{{reason=\"otlp_spans\"}})",
                    self.settings.endpoint, self.settings.backlog_bytes
                ));
            }
        }
        self.counters.backlog_bytes.store(self.backlog_bytes as u64, Ordering::Relaxed);
        self.counters.backlog_peak_bytes.fetch_max(self.backlog_bytes as u64, Ordering::Relaxed);
    }

    /// One export attempt of the oldest batch. `true` on success.
    fn export_one(&mut self) -> bool {
        let n = self.backlog.len().min(self.settings.batch_spans);
        if n == 0 {
            return true;
        }
        let scope = instrumentation_scope();
        let batch: Vec<_> = self.backlog.iter().take(n).map(|(s, _)| to_span_data(s, &scope)).collect();
        let timeout = self.settings.export_timeout + Duration::from_millis(500);
        let exporter = &self.exporter;
        let r = self.rt.block_on(async { tokio::time::timeout(timeout, exporter.export(batch)).await });
        match r {
            Ok(Ok(())) => {
                for _ in 0..n {
                    if let Some((_, b)) = self.backlog.pop_front() {
                        self.backlog_bytes -= b;
                    }
                }
                self.counters.exported.fetch_add(n as u64, Ordering::Relaxed);
                self.counters.backlog_bytes.store(self.backlog_bytes as u64, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => self.failed(&format!("{e}")),
            Err(_) => self.failed("timed out"),
        }
    }

    fn failed(&mut self, why: &str) -> bool {
        self.counters.export_failures.fetch_add(1, Ordering::Relaxed);
        if !self.warned_failure {
            self.warned_failure = true;
            (self.warn)(&format!(
                "OTLP export to {} failed ({why}); keeping up to {} bytes of spans and retrying",
                self.settings.endpoint, self.settings.backlog_bytes
            ));
        }
        false
    }

    fn run(mut self) {
        let mut backoff = Duration::from_millis(250);
        let mut retry_at = Instant::now();
        loop {
            // Wait for spans, or for the retry time when a backlog waits.
            let msg = if let Some(m) = self.deferred.take() {
                Ok(m)
            } else if self.backlog.is_empty() {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.recv_timeout(retry_at.saturating_duration_since(Instant::now()))
            };
            let mut shutdown = None;
            match msg {
                Ok(Msg::Spans(s)) => self.push(s),
                Ok(Msg::Shutdown(d, done)) => shutdown = Some((d, done)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => shutdown = Some((Instant::now(), bounded(1).0)),
            }
            while shutdown.is_none() {
                match self.rx.try_recv() {
                    Ok(Msg::Spans(s)) => self.push(s),
                    Ok(Msg::Shutdown(d, done)) => shutdown = Some((d, done)),
                    Err(_) => break,
                }
            }
            if let Some((deadline, done)) = shutdown {
                while !self.backlog.is_empty() && Instant::now() < deadline {
                    if !self.export_one() {
                        std::thread::sleep(Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())));
                    }
                }
                self.counters.dropped_at_exit.fetch_add(self.backlog.len() as u64, Ordering::Relaxed);
                let _ = self.exporter.shutdown();
                let _ = done.send(());
                return;
            }
            while !self.backlog.is_empty() && Instant::now() >= retry_at {
                if self.export_one() {
                    backoff = Duration::from_millis(250);
                } else {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
                // Let newly queued spans join the backlog between batches; a shutdown
                // request ends this round and is handled at the top of the loop.
                match self.rx.try_recv() {
                    Ok(Msg::Spans(s)) => self.push(s),
                    Ok(m @ Msg::Shutdown(..)) => {
                        self.deferred = Some(m);
                        break;
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

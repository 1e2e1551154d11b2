//! The agent's log events as OTLP logs (issue 15, item 3): when an OTLP endpoint is set,
//! every event the agent writes on stderr (text or JSON) also goes out as a log record
//! with the same event name, severity and message, the same `trace_id` / `span_id` (so a
//! backend links a step's log line to its `dit.step` span), and the event's other fields as
//! attributes (`context.*` flattened, e.g. `context.step`).
//!
//! OpenTelemetry SDK logger provider with the async-runtime batch processor on a one-worker
//! tokio runtime of its own (as [`super::metrics`]), so both tonic and the async HTTP client
//! have their reactor; `emit` only hands the record to the processor's bounded queue
//! (dropped and counted by the SDK when full), so it never blocks the calling thread.
//! Protocol and endpoint as for spans (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, read by `opentelemetry-otlp`).

use super::config::{OtlpProtocol, OtlpSettings};
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};

/// One log event to send ([`OtlpLogs::emit`]).
#[derive(Debug, Clone, Copy)]
pub struct LogEvent<'a> {
    /// Severity: `ERROR`, `WARN`, `INFO` or `DEBUG` (others are sent as INFO).
    pub level: &'a str,
    /// Event name (`generation.step.completed`, …): the record's `event_name`.
    pub event: &'static str,
    /// Human-readable message: the record's body.
    pub message: &'a str,
    /// W3C trace id (16 bytes) of the span the event belongs to.
    pub trace_id: Option<[u8; 16]>,
    /// Its span id (8 bytes).
    pub span_id: Option<[u8; 8]>,
    /// Other fields (`request_id`, `context.step`, …): strings, integers, floats, booleans.
    pub attributes: &'a [(String, serde_json::Value)],
}

/// The running OTLP log pipeline.
pub struct OtlpLogs {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
    _rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for OtlpLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpLogs").finish_non_exhaustive()
    }
}

impl OtlpLogs {
    /// Starts the logger provider with `settings`' protocol, timeout and resource
    /// attributes. Errors: runtime or exporter construction, with the reason.
    pub fn start(settings: &OtlpSettings) -> Result<OtlpLogs, String> {
        use opentelemetry_otlp::WithExportConfig;
        let rt = super::exporter_runtime("gpuspan-otlp-logs", "OTLP logs")?;
        let enter = rt.enter();
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::LogExporter::builder().with_tonic().with_timeout(settings.export_timeout).build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(settings.export_timeout)
                .build(),
        }
        .map_err(|e| format!("OTLP log exporter for {}: {e}", settings.endpoint))?;
        let processor = opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let provider = SdkLoggerProvider::builder().with_resource(super::resource(settings)).with_log_processor(processor).build();
        let logger = provider.logger("gpuspan");
        drop(enter);
        Ok(OtlpLogs { provider, logger, _rt: rt })
    }

    /// Queues one record (never blocks; the SDK drops and counts when its queue is full).
    pub fn emit(&self, e: &LogEvent<'_>) {
        let mut r = self.logger.create_log_record();
        let (number, text) = match e.level {
            "ERROR" => (Severity::Error, "ERROR"),
            "WARN" => (Severity::Warn, "WARN"),
            "DEBUG" => (Severity::Debug, "DEBUG"),
            _ => (Severity::Info, "INFO"),
        };
        r.set_severity_number(number);
        r.set_severity_text(text);
        r.set_event_name(e.event);
        r.set_timestamp(std::time::SystemTime::now());
        r.set_body(AnyValue::from(e.message.to_string()));
        if let (Some(t), Some(s)) = (e.trace_id, e.span_id) {
            r.set_trace_context(TraceId::from_bytes(t), SpanId::from_bytes(s), Some(TraceFlags::SAMPLED));
        }
        for (k, v) in e.attributes {
            let value = match v {
                serde_json::Value::String(s) => AnyValue::from(s.clone()),
                serde_json::Value::Bool(b) => AnyValue::from(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => AnyValue::from(i),
                    None => AnyValue::from(n.as_f64().unwrap_or(0.0)),
                },
                serde_json::Value::Null => continue,
                other => AnyValue::from(other.to_string()),
            };
            r.add_attribute(k.clone(), value);
        }
        self.logger.emit(r);
    }

    /// Flushes and shuts the provider down, waiting at most `timeout` (on a thread of its
    /// own, so a stuck endpoint cannot hold the caller). Returns whether it finished.
    pub fn shutdown_within(&self, timeout: std::time::Duration) -> bool {
        let provider = self.provider.clone();
        super::shutdown_within("gpuspan-otlp-logs-stop", timeout, move || {
            let _ = provider.shutdown();
        })
    }
}

//! OTLP exporter settings from the environment.
//!
//! Standard variables (OpenTelemetry specification, "OTLP Exporter Configuration"): the
//! exporter is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! is set; `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` pick
//! `grpc` or `http/protobuf` (the specification's default); endpoint, headers, timeout and
//! compression are read by `opentelemetry-otlp` itself; `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` by the SDK's resource detectors. gpuspan's own:
//! `GPUSPAN_OTLP_BACKLOG_BYTES` (default 64 MiB), the most span data kept while the
//! endpoint is unreachable.

use std::time::Duration;

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (tonic).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`/v1/traces`).
    HttpProtobuf,
}

/// Default backlog bound, bytes (64 MiB).
pub const DEFAULT_BACKLOG_BYTES: usize = 64 << 20;

/// Settings of the span pipeline.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// Protocol.
    pub protocol: OtlpProtocol,
    /// The endpoint as configured (for messages; `opentelemetry-otlp` resolves it).
    pub endpoint: String,
    /// Most bytes of spans kept for an unreachable endpoint; oldest dropped beyond.
    pub backlog_bytes: usize,
    /// Spans per export call.
    pub batch_spans: usize,
    /// Longest single export attempt.
    pub export_timeout: Duration,
    /// Longest wait before a failed export is retried (backoff doubles from 250 ms).
    pub max_backoff: Duration,
    /// Extra resource attributes (`service.instance.id`, `host.name`, `process.pid`,
    /// `k8s.*`, `gpu.device.*`), typed as the semantic conventions say (`process.pid` an int).
    pub resource_attributes: Vec<opentelemetry::KeyValue>,
}

impl OtlpSettings {
    /// Settings from the environment: `Ok(None)` when no OTLP endpoint is configured.
    /// Bad values of gpuspan's own variables are returned as warnings (default used).
    pub fn from_env() -> (Option<OtlpSettings>, Vec<String>) {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> (Option<OtlpSettings>, Vec<String>) {
        let mut warnings = Vec::new();
        let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.trim().is_empty());
        let Some(endpoint) = endpoint else { return (None, warnings) };
        let proto_var = if get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        } else {
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        };
        let protocol = match get(proto_var).as_deref().map(str::trim) {
            None | Some("") | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                warnings.push(format!(
                    "{proto_var}={other:?}: gpuspan supports grpc and http/protobuf; using http/protobuf"
                ));
                OtlpProtocol::HttpProtobuf
            }
        };
        let backlog_bytes = match get("GPUSPAN_OTLP_BACKLOG_BYTES") {
            None => DEFAULT_BACKLOG_BYTES,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 4096 => n,
                _ => {
                    warnings.push(format!(
                        "GPUSPAN_OTLP_BACKLOG_BYTES={v:?}: expected a byte count ≥ 4096; using {DEFAULT_BACKLOG_BYTES}"
                    ));
                    DEFAULT_BACKLOG_BYTES
                }
            },
        };
        (
            Some(OtlpSettings {
                protocol,
                endpoint,
                backlog_bytes,
                batch_spans: 512,
                export_timeout: Duration::from_secs(5),
                max_backoff: Duration::from_secs(2),
                resource_attributes: Vec::new(),
            }),
            warnings,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> (Option<OtlpSettings>, Vec<String>) {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtlpSettings::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn off_without_endpoint_and_http_protobuf_by_default() {
        assert!(settings(&[]).0.is_none());
        let (s, w) = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]);
        let s = s.unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.backlog_bytes, DEFAULT_BACKLOG_BYTES);
        assert!(w.is_empty());
    }

    #[test]
    fn protocol_and_backlog_from_env_with_warnings_for_bad_values() {
        let (s, _) = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(s.unwrap().protocol, OtlpProtocol::Grpc);
        let (s, w) = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("GPUSPAN_OTLP_BACKLOG_BYTES", "lots"),
        ]);
        let s = s.unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.backlog_bytes, DEFAULT_BACKLOG_BYTES);
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("OTEL_EXPORTER_OTLP_PROTOCOL") && w[1].contains("GPUSPAN_OTLP_BACKLOG_BYTES"));
    }
}

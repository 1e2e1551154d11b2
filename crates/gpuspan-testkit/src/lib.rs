//! `gpuspan-testkit`: what gpuspan's tests start to check its output against real
//! protocol peers. Test-only (`publish = false`); dev-dependency of the root package's
//! e2e tests and of `gpuspan-export`.
//!
//! [`OtlpReceiver`] is an OTLP collector stand-in built on the official schema (the
//! `opentelemetry-proto` crate's generated messages and tonic `TraceService` /
//! `MetricsService` / `LogsService` servers): over gRPC, or over HTTP/protobuf (`POST
//! /v1/traces`, `/v1/metrics`, `/v1/logs`, optionally gzip-encoded). It keeps every span,
//! metric and log record it receives.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as PValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback TCP port held bound but not listening: connections to it are refused
/// (RST, `ECONNREFUSED`) and nothing else can bind it until [`ReservedPort::release`].
#[derive(Debug)]
pub struct ReservedPort {
    fd: std::os::fd::OwnedFd,
    port: u16,
}

impl ReservedPort {
    /// Reserves a free port on 127.0.0.1. Panics when the socket calls fail (tests only).
    pub fn new() -> ReservedPort {
        use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::os::fd::AsRawFd;
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind 127.0.0.1:0");
        let port = getsockname::<SockaddrIn>(fd.as_raw_fd()).expect("getsockname").port();
        ReservedPort { fd, port }
    }

    /// Reserves `port` on 127.0.0.1 (bound, not listening), e.g. again after a receiver on
    /// it stopped. Errors: the bind's (the port is in use).
    pub fn on(port: u16) -> Result<ReservedPort, nix::Error> {
        use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::os::fd::AsRawFd;
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        // A stopped receiver's accepted connections may sit in TIME_WAIT on this port.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port))?;
        Ok(ReservedPort { fd, port })
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Frees the port (to start a receiver on it right away) and returns it.
    pub fn release(self) -> u16 {
        drop(self.fd);
        self.port
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// An attribute value as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// string_value
    Str(String),
    /// int_value
    Int(i64),
    /// double_value
    Float(f64),
    /// bool_value
    Bool(bool),
    /// array_value of ints
    IntArray(Vec<i64>),
    /// anything else
    Other,
}

fn val(v: &Option<AnyValue>) -> Val {
    match v.as_ref().and_then(|a| a.value.as_ref()) {
        Some(PValue::StringValue(s)) => Val::Str(s.clone()),
        Some(PValue::IntValue(i)) => Val::Int(*i),
        Some(PValue::DoubleValue(f)) => Val::Float(*f),
        Some(PValue::BoolValue(b)) => Val::Bool(*b),
        Some(PValue::ArrayValue(a)) => Val::IntArray(
            a.values
                .iter()
                .filter_map(|x| match x.value {
                    Some(PValue::IntValue(i)) => Some(i),
                    _ => None,
                })
                .collect(),
        ),
        _ => Val::Other,
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Val> {
    kvs.iter().map(|kv| (kv.key.clone(), val(&kv.value))).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One received span, flattened with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Trace id, 32 lower-case hex.
    pub trace_id: String,
    /// Span id, 16 hex.
    pub span_id: String,
    /// Parent span id, 16 hex; empty for a root.
    pub parent_span_id: String,
    /// Name.
    pub name: String,
    /// Start, Unix ns.
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Span attributes.
    pub attributes: HashMap<String, Val>,
    /// Resource attributes of the batch it came in.
    pub resource: HashMap<String, Val>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// W3C tracestate.
    pub trace_state: String,
}

impl ReceivedSpan {
    /// Integer attribute `k`.
    pub fn int(&self, k: &str) -> Option<i64> {
        match self.attributes.get(k) {
            Some(Val::Int(i)) => Some(*i),
            _ => None,
        }
    }
    /// String attribute `k`.
    pub fn str(&self, k: &str) -> Option<&str> {
        match self.attributes.get(k) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// The data kind of a received metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// `Gauge`.
    Gauge,
    /// `Sum`, with its `is_monotonic` and whether its temporality is cumulative.
    Sum {
        /// `is_monotonic` (a counter) or not (an up-down counter).
        monotonic: bool,
        /// `aggregation_temporality` is CUMULATIVE (else DELTA or unspecified).
        cumulative: bool,
    },
}

/// One received number data point of a gauge or sum, flattened with its metric, scope and
/// resource (histograms are not listed: read [`OtlpReceiver::metrics`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPoint {
    /// Metric name.
    pub name: String,
    /// Metric unit (UCUM).
    pub unit: String,
    /// Metric description.
    pub description: String,
    /// Gauge or sum.
    pub kind: MetricKind,
    /// `as_double` as [`Val::Float`], `as_int` as [`Val::Int`], neither as [`Val::Other`].
    pub value: Val,
    /// Data point time, Unix ns.
    pub time_unix_ns: u64,
    /// Data point attributes.
    pub attributes: HashMap<String, Val>,
    /// Resource attributes of the batch it came in.
    pub resource: HashMap<String, Val>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Schema URL of its scope's `ScopeMetrics`.
    pub scope_schema_url: String,
}

impl ReceivedPoint {
    /// String attribute `k`.
    pub fn str(&self, k: &str) -> Option<&str> {
        match self.attributes.get(k) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// One log record as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedLog {
    /// `event_name`.
    pub event_name: String,
    /// `severity_text`.
    pub severity_text: String,
    /// `severity_number` (the OTel logs data model's 1 … 24).
    pub severity_number: i32,
    /// The body, when a string.
    pub body: String,
    /// Trace id, 32 lower-case hex (empty when none).
    pub trace_id: String,
    /// Span id, 16 hex (empty when none).
    pub span_id: String,
    /// Record attributes.
    pub attributes: HashMap<String, Val>,
    /// Resource attributes of the batch it came in.
    pub resource: HashMap<String, Val>,
}

#[derive(Default)]
struct Store {
    logs: Mutex<Vec<ReceivedLog>>,
    spans: Mutex<Vec<ReceivedSpan>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    trace_requests: Mutex<u64>,
}

impl Store {
    fn add_logs(&self, req: ExportLogsServiceRequest) {
        let mut out = Vec::new();
        for rl in req.resource_logs {
            let resource = rl.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                        Some(PValue::StringValue(s)) => s.clone(),
                        _ => String::new(),
                    };
                    out.push(ReceivedLog {
                        event_name: r.event_name.clone(),
                        severity_text: r.severity_text.clone(),
                        severity_number: r.severity_number,
                        body,
                        trace_id: hex(&r.trace_id),
                        span_id: hex(&r.span_id),
                        attributes: attrs(&r.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.logs.lock().unwrap().extend(out);
    }

    fn add_traces(&self, req: ExportTraceServiceRequest) {
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope_name = ss.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        start_unix_ns: s.start_time_unix_nano,
                        end_unix_ns: s.end_time_unix_nano,
                        attributes: attrs(&s.attributes),
                        resource: resource.clone(),
                        scope_name: scope_name.clone(),
                        trace_state: s.trace_state.clone(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(out);
        *self.trace_requests.lock().unwrap() += 1;
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.add_logs(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// Which transport a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP, protobuf bodies.
    HttpProtobuf,
}

impl Transport {
    /// The `OTEL_EXPORTER_OTLP_PROTOCOL` value for it.
    pub fn protocol_env(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http/protobuf",
        }
    }
}

/// A running OTLP receiver; stops when dropped.
pub struct OtlpReceiver {
    store: Arc<Store>,
    addr: SocketAddr,
    transport: Transport,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl OtlpReceiver {
    /// Starts a receiver on `addr` (`127.0.0.1:0` picks a free port). Panics when it
    /// cannot bind (tests only).
    pub fn start(transport: Transport, addr: &str) -> OtlpReceiver {
        match transport {
            Transport::Grpc => Self::start_grpc(addr),
            Transport::HttpProtobuf => Self::start_http(addr),
        }
    }

    fn start_grpc(addr: &str) -> OtlpReceiver {
        let store = Arc::new(Store::default());
        let std_listener = std::net::TcpListener::bind(addr).expect("bind the gRPC receiver");
        std_listener.set_nonblocking(true).unwrap();
        let local = std_listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = store.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(Grpc(s.clone())).max_decoding_message_size(64 << 20))
                    .add_service(MetricsServiceServer::new(Grpc(s.clone())).max_decoding_message_size(64 << 20))
                    .add_service(LogsServiceServer::new(Grpc(s)).max_decoding_message_size(64 << 20))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        OtlpReceiver {
            store,
            addr: local,
            transport: Transport::Grpc,
            stop: Some(Box::new(move || {
                let _ = tx.send(());
                let _ = thread.join();
            })),
        }
    }

    fn start_http(addr: &str) -> OtlpReceiver {
        let store = Arc::new(Store::default());
        let server = Arc::new(tiny_http::Server::http(addr).expect("bind the HTTP receiver"));
        let local = server.server_addr().to_ip().unwrap();
        let (srv, s) = (server.clone(), store.clone());
        let thread = std::thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let gz = req.headers().iter().any(|h| {
                    h.field.equiv("Content-Encoding") && h.value.as_str().eq_ignore_ascii_case("gzip")
                });
                if gz {
                    let mut d = Vec::new();
                    let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut d);
                    body = d;
                }
                let url = req.url().to_string();
                let (status, resp) = if url.ends_with("/v1/traces") {
                    match ExportTraceServiceRequest::decode(&body[..]) {
                        Ok(r) => {
                            s.add_traces(r);
                            (200, ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
                        }
                        Err(e) => (400, e.to_string().into_bytes()),
                    }
                } else if url.ends_with("/v1/logs") {
                    match ExportLogsServiceRequest::decode(&body[..]) {
                        Ok(r) => {
                            s.add_logs(r);
                            (200, ExportLogsServiceResponse { partial_success: None }.encode_to_vec())
                        }
                        Err(e) => (400, e.to_string().into_bytes()),
                    }
                } else if url.ends_with("/v1/metrics") {
                    match ExportMetricsServiceRequest::decode(&body[..]) {
                        Ok(r) => {
                            s.metrics.lock().unwrap().push(r);
                            (200, ExportMetricsServiceResponse { partial_success: None }.encode_to_vec())
                        }
                        Err(e) => (400, e.to_string().into_bytes()),
                    }
                } else {
                    (404, Vec::new())
                };
                let ct = tiny_http::Header::from_bytes("Content-Type", "application/x-protobuf").unwrap();
                let _ = req.respond(tiny_http::Response::from_data(resp).with_status_code(status).with_header(ct));
            }
        });
        OtlpReceiver {
            store,
            addr: local,
            transport: Transport::HttpProtobuf,
            stop: Some(Box::new(move || {
                server.unblock();
                let _ = thread.join();
            })),
        }
    }

    /// Base endpoint URL, for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.store.logs.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Export requests received for traces.
    pub fn trace_requests(&self) -> u64 {
        *self.store.trace_requests.lock().unwrap()
    }

    /// Every metrics export request received so far.
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.store.metrics.lock().unwrap().clone()
    }

    /// Every gauge and sum data point received so far, in arrival order.
    pub fn metric_points(&self) -> Vec<ReceivedPoint> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NValue;
        use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
        let mut out = Vec::new();
        for r in self.metrics() {
            for rm in &r.resource_metrics {
                let resource = rm.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
                for sm in &rm.scope_metrics {
                    let scope_name = sm.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    for m in &sm.metrics {
                        let (kind, points) = match &m.data {
                            Some(Data::Gauge(g)) => (MetricKind::Gauge, &g.data_points),
                            Some(Data::Sum(s)) => (
                                MetricKind::Sum {
                                    monotonic: s.is_monotonic,
                                    cumulative: s.aggregation_temporality == AggregationTemporality::Cumulative as i32,
                                },
                                &s.data_points,
                            ),
                            _ => continue,
                        };
                        for dp in points {
                            out.push(ReceivedPoint {
                                name: m.name.clone(),
                                unit: m.unit.clone(),
                                description: m.description.clone(),
                                kind,
                                value: match dp.value {
                                    Some(NValue::AsDouble(f)) => Val::Float(f),
                                    Some(NValue::AsInt(i)) => Val::Int(i),
                                    None => Val::Other,
                                },
                                time_unix_ns: dp.time_unix_nano,
                                attributes: attrs(&dp.attributes),
                                resource: resource.clone(),
                                scope_name: scope_name.clone(),
                                scope_schema_url: sm.schema_url.clone(),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Names of the metrics received so far.
    pub fn metric_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .metrics()
            .iter()
            .flat_map(|r| r.resource_metrics.iter())
            .flat_map(|rm| rm.scope_metrics.iter())
            .flat_map(|sm| sm.metrics.iter())
            .map(|m| m.name.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Waits until `pred` holds on the spans received, at most `timeout`. Returns whether
    /// it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[ReceivedSpan]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(&self.store.spans.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl OtlpReceiver {
    /// Stops the receiver (waiting for its server thread, so a request in progress is either
    /// stored or refused) and returns every span it received.
    pub fn stop(mut self) -> Vec<ReceivedSpan> {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        self.spans()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

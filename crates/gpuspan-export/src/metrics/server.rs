//! The `/metrics` HTTP endpoint: `tiny_http` on one thread named `gpuspan-metrics`.
//!
//! `GET /metrics` (query string ignored) answers OpenMetrics when the `Accept` header names
//! `application/openmetrics-text`, else Prometheus text 0.0.4 (what Prometheus itself asks
//! for when OpenMetrics is off). Other paths: 404; other methods on `/metrics`: 405.
//! Request handling runs under `catch_unwind`: a panic drops that one connection (the client
//! sees it close) and the server goes on.

use super::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `Content-Type` of the OpenMetrics answer (OpenMetrics 1.0 "Protocol Negotiation").
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text answer (Prometheus "Exposition formats").
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running `/metrics` endpoint (see [`serve`]). [`MetricsServer::stop`], or dropping
/// it, stops the thread and closes the socket.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// The bound address (the actual port when `serve` was given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: wakes the server thread, waits for it (at most the request in
    /// progress) and closes the listening socket.
    pub fn stop(self) {
        drop(self)
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `addr` (`host:port`, e.g. `0.0.0.0:9464`; port 0 picks a free one) and serves
/// `metrics` on `/metrics` from a new thread named `gpuspan-metrics`. Returns as soon as the
/// socket is bound; a bind error (address in use, bad address) is returned, never a panic.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<MetricsServer> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server.server_addr().to_ip().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP address")
    })?;
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = {
        let server = server.clone();
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("gpuspan-metrics".into())
            .spawn(move || {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&server, &metrics, &stopping)
                }));
            })?
    };
    Ok(MetricsServer {
        server,
        addr: bound,
        stopping,
        thread: Some(thread),
    })
}

fn run(server: &tiny_http::Server, metrics: &Metrics, stopping: &AtomicBool) {
    while !stopping.load(Ordering::SeqCst) {
        match server.recv() {
            Ok(req) => {
                // A panic drops `req` (closing that connection); the loop goes on.
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(req, metrics)));
            }
            // `unblock()` (stop) or an accept error: re-check the flag; do not spin on a
            // persistent accept error (e.g. out of file descriptors).
            Err(_) => {
                if !stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// What to answer: status, content type, body.
pub(crate) fn route(
    method: &str,
    url: &str,
    accept: Option<&str>,
    metrics: &Metrics,
) -> (u16, &'static str, String) {
    let path = url.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return (
            404,
            "text/plain; charset=utf-8",
            "not found; try /metrics\n".into(),
        );
    }
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain; charset=utf-8", "only GET\n".into());
    }
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (200, OPENMETRICS_CONTENT_TYPE, metrics.encode_openmetrics())
    } else {
        (
            200,
            PROMETHEUS_CONTENT_TYPE,
            metrics.encode_prometheus_text(),
        )
    }
}

fn handle(req: tiny_http::Request, metrics: &Metrics) {
    let accept = req
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Accept"))
        .map(|h| h.value.as_str().to_string())
        .reduce(|a, b| a + "," + &b);
    let method = req.method().as_str().to_string();
    let (status, content_type, body) = route(&method, req.url(), accept.as_deref(), metrics);
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", content_type) {
        resp = resp.with_header(h);
    }
    if status == 405 {
        if let Ok(h) = tiny_http::Header::from_bytes("Allow", "GET, HEAD") {
            resp = resp.with_header(h);
        }
    }
    let _ = req.respond(resp);
}

//! The Rust API: request / step / stage scopes as RAII guards.
//!
//! ```no_run
//! let _req = gpuspan::request(
//!     Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
//!     &[("model", "wan2.1"), ("tenant", "gold")],
//! );
//! for i in 0..50 {
//!     let _step = gpuspan::step(i, 50);
//!     {
//!         let _s = gpuspan::stage("attention.spatial");
//!         // launch the spatial-attention kernels
//!     }
//!     let _f = gpuspan::stage("ffn");
//!     // launch the FFN kernels
//! }
//! let _vae = gpuspan::stage("vae.decode");
//! ```
//!
//! Each constructor opens a scope on the calling thread through the same allocation-free
//! hot path as NVTX push ([`gpuspan_agent::hooks::scope_begin`]); the guard closes it when
//! dropped. Scope names follow the built-in convention parsed by
//! [`gpuspan_core::scope::ScopeKind::parse`]: `gpuspan.request <traceparent> k=v ...`,
//! `dit.step <i>/<n>`, and stage names. Names longer than
//! [`INLINE_NAME_CAP`] bytes are truncated (the traceparent comes first, so it survives).
//!
//! When the agent is not collecting (not loaded, or inactive: no CUPTI, CUPTI held by another
//! tool, ...) every call is a no-op costing one atomic load, and the guards do nothing on
//! drop. Scopes belong to their thread: [`ScopeGuard`] is `!Send`, and requests running on
//! several threads each keep their own scope stack, so their kernels keep their own trace ids.

use gpuspan_agent::hooks::{scope_begin, scope_end, NO_PUSH_POP_TRACKING};
use gpuspan_core::scope::INLINE_NAME_CAP;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;

/// A scope opened by [`request`], [`step`] or [`stage`]; closes it when dropped.
///
/// Guards must be dropped in the reverse order of their creation (as Rust scoping does by
/// itself): dropping closes the innermost open scope of the thread.
///
/// `ScopeGuard` is neither `Send` nor `Sync`: a scope belongs to the thread that opened it.
///
/// ```compile_fail,E0277
/// fn need_send<T: Send>(_: T) {}
/// need_send(gpuspan::stage("ffn"));
/// ```
#[must_use = "the scope closes as soon as the guard is dropped; bind it with `let _g = ...`"]
#[derive(Debug)]
pub struct ScopeGuard {
    level: i32,
    _not_send: PhantomData<*const ()>,
}

impl ScopeGuard {
    fn new(level: i32) -> Self {
        Self { level, _not_send: PhantomData }
    }

    /// The 0-based nesting level of this scope on its thread, or `None` when the agent was
    /// not collecting when the guard was made (nothing was opened, nothing will be closed).
    pub fn level(&self) -> Option<u32> {
        u32::try_from(self.level).ok()
    }

    /// Did this guard open a scope?
    pub fn is_recording(&self) -> bool {
        self.level >= 0
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if self.level >= 0 {
            scope_end();
        }
    }
}

/// Is the agent loaded in this process and collecting? When `false`, [`request`], [`step`]
/// and [`stage`] are no-ops. The first call of the process (of this or of those three)
/// activates the agent if nothing did before (`gpuspan_agent::entry::on_api_call`).
pub fn is_active() -> bool {
    gpuspan_agent::entry::on_api_call();
    gpuspan_agent::shared::shared().is_some_and(|a| a.collecting.load(Ordering::Relaxed))
}

/// Names the CUDA streams (`CUstream` / `cudaStream_t` handles as addresses, e.g. cudarc's
/// `CudaStream::cu_stream() as usize`) on which scopes this thread opens from now on are
/// timed in coarse mode; at most 4 are kept, an empty slice goes back to the legacy default
/// stream (which never sees work on non-blocking streams: spans then carry
/// `gpuspan.timing=legacy_stream`). Returns how many were kept. No allocation, no lock.
pub fn use_streams(streams: &[usize]) -> usize {
    gpuspan_agent::hooks::use_streams(streams)
}

/// The version of this library (`CARGO_PKG_VERSION`).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Opens a request scope, `gpuspan.request <traceparent> k=v ...`.
///
/// `traceparent` is the W3C traceparent of the caller's span (`00-<trace id>-<span id>-<flags>`);
/// with `None` (or an empty string) the agent starts a new trace for the request. `attrs`
/// become span attributes; the reserved keys `tracestate` and `baggage` carry the W3C
/// `tracestate` and `baggage` header values of the caller's context.
///
/// Encoding (the name is a whitespace-separated list): in keys and ordinary values, `%`, `=`
/// (keys only), whitespace and control characters are percent-encoded as their UTF-8 bytes
/// (`%20`, `%25`, ...). The
/// `tracestate` / `baggage` values are header values passed through, except that optional
/// whitespace around `,` / `;` and at the ends is dropped and any other whitespace is
/// percent-encoded. Only the first whitespace-separated token of `traceparent` is used.
pub fn request(traceparent: Option<&str>, attrs: &[(&str, &str)]) -> ScopeGuard {
    if !is_active() {
        return ScopeGuard::new(NO_PUSH_POP_TRACKING);
    }
    let mut name = NameBuf::new();
    write_request_head(&mut name, traceparent.unwrap_or("").as_bytes());
    for (k, v) in attrs {
        name.push(b" ");
        write_attr(&mut name, k, v);
    }
    ScopeGuard::new(scope_begin(name.as_bytes()))
}

/// Opens a denoising-step scope, `dit.step <index>/<count>`.
pub fn step(index: u32, count: u32) -> ScopeGuard {
    if !is_active() {
        return ScopeGuard::new(NO_PUSH_POP_TRACKING);
    }
    let mut name = NameBuf::new();
    write_step(&mut name, index, count);
    ScopeGuard::new(scope_begin(name.as_bytes()))
}

/// Opens a stage scope named `name`. The names `attention.spatial`, `attention.temporal`,
/// `attention.cross`, `ffn`, `norm` and `vae.decode` decide the stage of the kernels launched
/// inside; any other name is recorded as a plain scope (the kernels' stage then comes from
/// the name rules).
pub fn stage(name: &str) -> ScopeGuard {
    gpuspan_agent::entry::on_api_call();
    ScopeGuard::new(scope_begin(name.as_bytes()))
}

/// A scope name being built on the stack: at most [`INLINE_NAME_CAP`] bytes, the rest is
/// silently cut (the agent cuts again at a UTF-8 boundary).
pub(crate) struct NameBuf {
    buf: [u8; INLINE_NAME_CAP],
    len: usize,
}

impl NameBuf {
    pub(crate) const fn new() -> Self {
        Self { buf: [0; INLINE_NAME_CAP], len: 0 }
    }

    /// Appends as much of `b` as fits.
    pub(crate) fn push(&mut self, b: &[u8]) {
        let n = b.len().min(INLINE_NAME_CAP - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push_escaped(&mut self, byte: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.push(&[b'%', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]]);
    }
}

impl std::fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// `gpuspan.request` and, when `traceparent` has a non-blank first token, ` <token>`.
pub(crate) fn write_request_head(name: &mut NameBuf, traceparent: &[u8]) {
    name.push(b"gpuspan.request");
    if let Some(tp) = traceparent.split(u8::is_ascii_whitespace).find(|t| !t.is_empty()) {
        name.push(b" ");
        name.push(tp);
    }
}

/// `dit.step <index>/<count>`.
pub(crate) fn write_step(name: &mut NameBuf, index: u32, count: u32) {
    // NameBuf's write_str never fails.
    let _ = write!(name, "dit.step {index}/{count}");
}

/// Must `c` be percent-encoded in an attribute key or value? Whitespace as
/// [`ScopeKind::parse`](gpuspan_core::scope::ScopeKind::parse) splits on (Unicode), control
/// characters, and `%` itself.
fn needs_escape(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c == '%'
}

fn push_char(name: &mut NameBuf, c: char, escape: bool) {
    let mut utf8 = [0u8; 4];
    let bytes = c.encode_utf8(&mut utf8).as_bytes();
    if escape {
        for &b in bytes {
            name.push_escaped(b);
        }
    } else {
        name.push(bytes);
    }
}

/// `key=value`, encoded as [`request`] documents.
fn write_attr(name: &mut NameBuf, key: &str, value: &str) {
    for c in key.chars() {
        push_char(name, c, needs_escape(c) || c == '=');
    }
    name.push(b"=");
    if key == "tracestate" || key == "baggage" {
        write_header_value(name, value);
    } else {
        for c in value.chars() {
            push_char(name, c, needs_escape(c));
        }
    }
}

/// A W3C list header value (tracestate, baggage): optional whitespace around `,` / `;` and at
/// the ends dropped, other whitespace and control characters percent-encoded, the rest
/// unchanged.
fn write_header_value(name: &mut NameBuf, value: &str) {
    let delim = |c: Option<char>| matches!(c, None | Some(',') | Some(';'));
    let mut rest = value;
    let mut before: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            let run_len = rest.find(|c: char| !c.is_whitespace()).unwrap_or(rest.len());
            let (run, after) = rest.split_at(run_len);
            if !(delim(before) || delim(after.chars().next())) {
                for w in run.chars() {
                    push_char(name, w, true);
                }
            }
            rest = after;
            continue;
        }
        push_char(name, c, c.is_control());
        before = Some(c);
        rest = &rest[c.len_utf8()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::scope::ScopeKind;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request_name(tp: Option<&str>, attrs: &[(&str, &str)]) -> String {
        let mut n = NameBuf::new();
        write_request_head(&mut n, tp.unwrap_or("").as_bytes());
        for (k, v) in attrs {
            n.push(b" ");
            write_attr(&mut n, k, v);
        }
        String::from_utf8(n.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn guards_are_no_ops_when_the_agent_is_inactive() {
        // The test binary links the rlib and has no CUPTI on its library path: in fine mode
        // the first API call tries to activate and the agent stays inactive (coarse mode,
        // the default, would activate with CPU timing).
        std::env::set_var("GPUSPAN_MODE", "fine");
        assert!(!is_active());
        let r = request(Some(TP), &[("model", "wan")]);
        assert!(!r.is_recording());
        assert_eq!(r.level(), None);
        {
            let s = step(0, 2);
            let g = stage("attention.spatial");
            assert!(!s.is_recording() && !g.is_recording());
        }
        drop(r);
        // Nothing was opened, so nothing is left to close.
        assert_eq!(scope_end(), NO_PUSH_POP_TRACKING);
        assert_eq!(ScopeGuard::new(NO_PUSH_POP_TRACKING).level(), None);
        let opened = ScopeGuard::new(3);
        assert_eq!(opened.level(), Some(3));
        std::mem::forget(opened);
    }

    #[test]
    fn request_names_parse_back() {
        let name = request_name(Some(TP), &[("model", "wan2.1"), ("tenant", "gold")]);
        assert_eq!(name, format!("gpuspan.request {TP} model=wan2.1 tenant=gold"));
        assert_eq!(
            ScopeKind::parse(&name),
            ScopeKind::Request {
                traceparent: Some(TP.into()),
                attrs: vec![("model".into(), "wan2.1".into()), ("tenant".into(), "gold".into())],
            }
        );
        // No traceparent: the first token is an attribute, the agent starts a new trace.
        let name = request_name(None, &[("model", "x")]);
        assert_eq!(name, "gpuspan.request model=x");
        assert_eq!(
            ScopeKind::parse(&name),
            ScopeKind::Request { traceparent: None, attrs: vec![("model".into(), "x".into())] }
        );
        assert_eq!(request_name(Some("  "), &[]), "gpuspan.request");
        assert_eq!(request_name(Some(&format!(" {TP} junk")), &[]), format!("gpuspan.request {TP}"));
    }

    #[test]
    fn attribute_values_are_percent_encoded() {
        let name = request_name(None, &[("prompt", "a cat\tin 100% snow\u{a0}é"), ("a b=c", "v")]);
        assert_eq!(name, "gpuspan.request prompt=a%20cat%09in%20100%25%20snow%C2%A0é a%20b%3Dc=v");
        let ScopeKind::Request { attrs, .. } = ScopeKind::parse(&name) else { panic!() };
        assert_eq!(attrs.len(), 2);
    }

    #[test]
    fn header_values_keep_their_encoding_and_lose_optional_whitespace() {
        let name = request_name(
            Some(TP),
            &[("baggage", " user.id=a%20b , tier=gold;ttl=3 "), ("tracestate", "ro=1,congo=t 61rcWkgMzE")],
        );
        assert_eq!(
            name,
            format!("gpuspan.request {TP} baggage=user.id=a%20b,tier=gold;ttl=3 tracestate=ro=1,congo=t%2061rcWkgMzE")
        );
        let ScopeKind::Request { attrs, .. } = ScopeKind::parse(&name) else { panic!() };
        assert_eq!(attrs[0], ("baggage".into(), "user.id=a%20b,tier=gold;ttl=3".into()));
    }

    #[test]
    fn long_names_are_cut_at_capacity() {
        let long = "x".repeat(2 * INLINE_NAME_CAP);
        let name = request_name(Some(TP), &[("k", &long)]);
        assert_eq!(name.len(), INLINE_NAME_CAP);
        assert!(name.starts_with(&format!("gpuspan.request {TP} k=xxx")));
    }

    #[test]
    fn step_names() {
        let mut n = NameBuf::new();
        write_step(&mut n, 3, 50);
        assert_eq!(n.as_bytes(), b"dit.step 3/50");
        assert_eq!(ScopeKind::parse("dit.step 3/50"), ScopeKind::Step { index: 3, count: Some(50) });
        let mut n = NameBuf::new();
        write_step(&mut n, u32::MAX, u32::MAX);
        assert_eq!(n.as_bytes(), format!("dit.step {0}/{0}", u32::MAX).as_bytes());
    }
}

//! W3C Trace Context of a request scope.
//!
//! Sources: W3C Trace Context Level 1 §3.2 (`traceparent` = `version "-" trace-id "-"
//! parent-id "-" trace-flags`, lower-case hex, all-zero ids invalid, version `ff` invalid,
//! a higher version may append fields), §3.3 (`tracestate`, opaque here), and W3C Baggage
//! §3.2 (`key=value` list members separated by `,`, optional `;property` parts, values
//! percent-encoded).

use super::ids;

/// The trace context a request's GPU spans are created under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id (from the traceparent, or newly made when it was missing / bad).
    pub trace_id: [u8; 16],
    /// The worker's span (traceparent `parent-id`): parent of `gpu.request`. `None` when
    /// the trace was started here.
    pub parent_span_id: Option<[u8; 8]>,
    /// traceparent `sampled` flag (bit 0 of trace-flags); `true` for a new trace.
    pub sampled: bool,
    /// `tracestate` header value as given (empty when none).
    pub trace_state: String,
    /// Decoded baggage entries `(key, value)` in header order.
    pub baggage: Vec<(String, String)>,
}

/// Why a request scope's trace context could not be used as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextProblem {
    /// The request named no traceparent.
    Missing,
    /// The traceparent did not parse; the message says what was wrong.
    Malformed(String),
}

impl std::fmt::Display for ContextProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextProblem::Missing => write!(f, "request has no traceparent"),
            ContextProblem::Malformed(m) => write!(f, "malformed traceparent: {m}"),
        }
    }
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent` into `(trace_id, parent_span_id, trace_flags)`.
///
/// Errors: a message naming the part that is wrong (W3C Trace Context §3.2).
pub fn parse_traceparent(tp: &str) -> Result<([u8; 16], [u8; 8], u8), String> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    if parts.len() < 4 {
        return Err(format!("{tp:?}: expected version-traceid-parentid-flags"));
    }
    let version = hex_bytes::<1>(parts[0]).ok_or_else(|| format!("{tp:?}: bad version"))?[0];
    if version == 0xff {
        return Err(format!("{tp:?}: version ff is invalid"));
    }
    if version == 0 && parts.len() != 4 {
        return Err(format!("{tp:?}: version 00 has exactly 4 fields"));
    }
    let trace_id = hex_bytes::<16>(parts[1]).ok_or_else(|| format!("{tp:?}: trace-id is not 32 lower-case hex"))?;
    let span_id = hex_bytes::<8>(parts[2]).ok_or_else(|| format!("{tp:?}: parent-id is not 16 lower-case hex"))?;
    let flags = hex_bytes::<1>(parts[3]).ok_or_else(|| format!("{tp:?}: trace-flags is not 2 lower-case hex"))?[0];
    if trace_id == [0; 16] {
        return Err(format!("{tp:?}: all-zero trace-id"));
    }
    if span_id == [0; 8] {
        return Err(format!("{tp:?}: all-zero parent-id"));
    }
    Ok((trace_id, span_id, flags))
}

/// Formats a traceparent (version 00).
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!("00-{}-{}-{:02x}", ids::hex(trace_id), ids::hex(span_id), sampled as u8)
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); anything else is kept as is. The C / Rust /
/// Python APIs percent-encode spaces and `%` in request attribute values.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // On bytes, not `&s[..]`: a `%` followed by a multi-byte character is no escape, and
        // slicing the `str` there panicked (found by the `trace_context` fuzz target; a
        // baggage header or request attribute of the application's could stop the
        // collector thread).
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a W3C `baggage` header value into `(key, value)` pairs (properties dropped,
/// values percent-decoded, malformed members skipped).
pub fn parse_baggage(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|member| {
            let kv = member.split(';').next()?.trim();
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

impl TraceContext {
    /// The context of a request scope from its traceparent and `k=v` attributes (the
    /// reserved keys `tracestate` and `baggage` carry those headers).
    ///
    /// A missing or malformed traceparent never loses the request: a new trace is started
    /// with an id derived from `seed` and `scope_id` (deterministic for the same process
    /// seed), and the problem is returned for the caller to report.
    pub fn for_request(
        traceparent: Option<&str>,
        attrs: &[(String, String)],
        seed: u64,
        scope_id: u64,
    ) -> (TraceContext, Option<ContextProblem>) {
        let trace_state = attrs.iter().find(|(k, _)| k == "tracestate").map(|(_, v)| v.clone()).unwrap_or_default();
        let baggage = attrs.iter().find(|(k, _)| k == "baggage").map(|(_, v)| parse_baggage(v)).unwrap_or_default();
        let parsed = match traceparent {
            None => Err(ContextProblem::Missing),
            Some(tp) => parse_traceparent(tp).map_err(ContextProblem::Malformed),
        };
        match parsed {
            Ok((trace_id, parent, flags)) => (
                TraceContext { trace_id, parent_span_id: Some(parent), sampled: flags & 1 == 1, trace_state, baggage },
                None,
            ),
            Err(p) => (
                TraceContext {
                    trace_id: ids::new_trace_id(seed, scope_id),
                    parent_span_id: None,
                    sampled: true,
                    trace_state: String::new(),
                    baggage,
                },
                Some(p),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn percent_decoding_never_splits_a_character() {
        assert_eq!(percent_decode("a%20b%25"), "a b%");
        assert_eq!(percent_decode("%é1"), "%é1", "a `%` before a two-byte character is kept");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("x%e2%82%ac"), "x€");
    }

    #[test]
    fn parses_the_spec_example() {
        let (t, s, f) = parse_traceparent(TP).unwrap();
        assert_eq!(ids::hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids::hex(&s), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        assert_eq!(format_traceparent(&t, &s, true), TP);
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_err(), "{bad:?} accepted");
        }
        // A future version may append fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_ok());
    }

    #[test]
    fn baggage_members_properties_and_percent_encoding() {
        let b = parse_baggage("gpuspan.capture=fine, tenant = gold;ttl=30,bad,note=a%20b%2Cc");
        assert_eq!(
            b,
            vec![
                ("gpuspan.capture".to_string(), "fine".to_string()),
                ("tenant".to_string(), "gold".to_string()),
                ("note".to_string(), "a b,c".to_string()),
            ]
        );
    }

    #[test]
    fn missing_or_malformed_starts_a_new_deterministic_trace() {
        let (a, p) = TraceContext::for_request(None, &[], 7, 1);
        assert_eq!(p, Some(ContextProblem::Missing));
        assert!(a.parent_span_id.is_none() && a.sampled && a.trace_id != [0; 16]);
        let (b, p) = TraceContext::for_request(Some("zz"), &[], 7, 1);
        assert!(matches!(p, Some(ContextProblem::Malformed(_))));
        assert_eq!(a.trace_id, b.trace_id);
        let (c, _) = TraceContext::for_request(None, &[], 7, 2);
        assert_ne!(a.trace_id, c.trace_id);
        let attrs = vec![("tracestate".to_string(), "v=1".to_string()), ("baggage".to_string(), "k=v".to_string())];
        let (d, p) = TraceContext::for_request(Some(TP), &attrs, 7, 1);
        assert!(p.is_none());
        assert_eq!(d.trace_state, "v=1");
        assert_eq!(d.baggage, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(ids::hex(&d.parent_span_id.unwrap()), "00f067aa0ba902b7");
    }
}

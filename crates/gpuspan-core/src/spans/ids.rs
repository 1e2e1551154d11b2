//! Deterministic span and trace ids.
//!
//! A span id is the 64-bit FNV-1a hash (a fixed, documented function, unlike std's
//! `DefaultHasher`) of its parent's id and what identifies it among its siblings (scope id,
//! stage name, correlation id). Exporting the same scopes twice therefore yields the same
//! ids, and a trace backend deduplicates instead of showing two copies. Ids are never all
//! zero (invalid in W3C Trace Context §3.2.2.3/4).

use std::hash::Hasher;

/// Span id of a child of `parent` (a span id, or a trace id for the root) identified by
/// `parts`; each part is length-prefixed so `("ab","c")` and `("a","bc")` differ.
pub fn span_id(parent: &[u8], parts: &[&[u8]]) -> [u8; 8] {
    let mut h = fnv::FnvHasher::default();
    h.write(parent);
    for p in parts {
        h.write_u64(p.len() as u64);
        h.write(p);
    }
    let v = h.finish();
    (if v == 0 { 1 } else { v }).to_be_bytes()
}

/// A trace id for a request that came without a usable traceparent: two FNV-1a hashes of
/// the process `seed` (pid and start time) and the request's scope id.
pub fn new_trace_id(seed: u64, scope_id: u64) -> [u8; 16] {
    let hi = span_id(&seed.to_be_bytes(), &[b"trace.hi", &scope_id.to_be_bytes()]);
    let lo = span_id(&seed.to_be_bytes(), &[b"trace.lo", &scope_id.to_be_bytes()]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi);
    out[8..].copy_from_slice(&lo);
    out
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_value() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (draft-eastlake-fnv, test vectors).
        let mut h = fnv::FnvHasher::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn ids_are_deterministic_and_distinguish_parts() {
        assert_eq!(span_id(b"p", &[b"ab", b"c"]), span_id(b"p", &[b"ab", b"c"]));
        assert_ne!(span_id(b"p", &[b"ab", b"c"]), span_id(b"p", &[b"a", b"bc"]));
        assert_ne!(span_id(b"p", &[b"x"]), span_id(b"q", &[b"x"]));
        assert_ne!(new_trace_id(1, 2), new_trace_id(1, 3));
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}

//! The JSON text of capture events, written by hand into a buffer (issue 14, item 2: the
//! capture writer was serialisation-bound). The bytes are the ones serde_json's compact
//! serializer writes for the same values: numbers through serde_json's own formatter
//! (`itoa` for integers, the shortest round-tripping decimal for `f64`), strings escaped as
//! serde_json escapes them (`\"`, `\\`, `\b \f \n \r \t`, other control characters as
//! `\u00xx`), untyped `args` values through serde_json itself. The kineto tests check the
//! identity on every fixture against a serde reference.

use std::io::{self, Write};

use gpuspan_core::trace::TraceEvent;
use serde_json::ser::{CompactFormatter, Formatter};

use super::keys;

/// Bytes buffered before they go to the inner writer.
const FLUSH_AT: usize = 1 << 16;

/// A buffered JSON writer over `W`.
pub(crate) struct JsonOut<W: Write> {
    buf: Vec<u8>,
    inner: W,
}

impl<W: Write> JsonOut<W> {
    pub(crate) fn new(inner: W) -> Self {
        JsonOut { buf: Vec::with_capacity(FLUSH_AT + 4096), inner }
    }

    /// Hands the buffer to the inner writer once it holds [`FLUSH_AT`] bytes.
    #[inline]
    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes what is buffered and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buf)?;
        Ok(self.inner)
    }

    #[inline]
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    #[inline]
    pub(crate) fn i64(&mut self, v: i64) {
        // Writing into a Vec cannot fail.
        let _ = CompactFormatter.write_i64(&mut self.buf, v);
    }

    /// A finite `f64` as serde_json writes it (callers check finiteness: JSON has no NaN).
    /// A value that is a whole number of thousandths (a trace's `ts` / `dur` in µs, from ns:
    /// nearly all of them) is written as its integer and fraction digits, which is the
    /// shortest round-tripping decimal serde_json's formatter would find ([`thousandths`]);
    /// any other goes through that formatter.
    #[inline]
    pub(crate) fn f64(&mut self, v: f64) {
        match thousandths(v) {
            Some(n) => write_thousandths(&mut self.buf, v.is_sign_negative(), n),
            // Writing into a Vec cannot fail.
            None => {
                let _ = CompactFormatter.write_f64(&mut self.buf, v);
            }
        }
    }

    /// `s` as a JSON string.
    #[inline]
    pub(crate) fn str(&mut self, s: &str) {
        escape_into(&mut self.buf, s);
    }

    /// Any serializable value, through serde_json.
    pub(crate) fn serde<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.buf, v).map_err(io::Error::from)?;
        self.maybe_flush()
    }

    /// One complete (`ph: "X"`) event with `dur_us` as its duration: `ph`, `cat`, `name`,
    /// `pid`, `tid`, `ts`, `dur`, then `args` when it has any (the typed keys first, then
    /// the extra args not shadowed by them), as the format's writer documents
    /// ([`super::write_trace`]).
    pub(crate) fn event(&mut self, e: &TraceEvent, dur_us: f64) -> io::Result<()> {
        self.raw(b"{\"ph\":\"X\"");
        if let Some(c) = &e.cat {
            self.raw(b",\"cat\":");
            self.str(c.as_kineto());
        }
        self.raw(b",\"name\":");
        self.str(&e.name);
        self.raw(b",\"pid\":");
        self.i64(e.pid);
        self.raw(b",\"tid\":");
        self.i64(e.tid);
        self.raw(b",\"ts\":");
        self.f64(e.ts_us);
        self.raw(b",\"dur\":");
        self.f64(dur_us);
        self.args(e)?;
        self.raw(b"}");
        self.maybe_flush()
    }

    fn args(&mut self, e: &TraceEvent) -> io::Result<()> {
        // The typed keys written (at most 13): a set on the stack.
        let mut written: [&'static str; 13] = [""; 13];
        let mut n = 0;
        let mut first = true;
        let mut key = |out: &mut Self, k: &'static str| {
            out.raw(if first { b",\"args\":{\"" } else { b",\"" });
            first = false;
            // The typed keys ([`keys`]) need no escape: copied as they are.
            out.raw(k.as_bytes());
            out.raw(b"\":");
            written[n] = k;
            n += 1;
        };
        macro_rules! int {
            ($k:expr, $v:expr) => {
                if let Some(v) = $v {
                    key(self, $k);
                    self.i64(v);
                }
            };
        }
        macro_rules! dim3 {
            ($k:expr, $v:expr) => {
                if let Some([x, y, z]) = $v {
                    key(self, $k);
                    self.raw(b"[");
                    self.i64(x);
                    self.raw(b",");
                    self.i64(y);
                    self.raw(b",");
                    self.i64(z);
                    self.raw(b"]");
                }
            };
        }
        macro_rules! string {
            ($k:expr, $v:expr) => {
                if let Some(v) = &$v {
                    key(self, $k);
                    self.str(v);
                }
            };
        }
        int!(keys::DEVICE, e.device);
        int!(keys::STREAM, e.stream);
        int!(keys::CORRELATION, e.correlation);
        int!(keys::EXTERNAL_ID, e.external_id);
        dim3!(keys::GRID, e.grid);
        dim3!(keys::BLOCK, e.block);
        int!(keys::REGISTERS, e.registers_per_thread);
        int!(keys::SHARED_MEMORY, e.shared_memory_bytes);
        int!(keys::BYTES, e.bytes);
        string!(keys::STAGE, e.stage);
        string!(keys::STEP, e.step);
        string!(keys::TRACE_ID, e.trace_id);
        string!(keys::SCOPE, e.scope);
        let typed = n;
        for (k, v) in &e.extra_args {
            if written[..typed].contains(&k.as_str()) {
                continue;
            }
            self.raw(if first { b",\"args\":{" } else { b"," });
            first = false;
            self.str(k);
            self.raw(b":");
            match v {
                serde_json::Value::String(s) => self.str(s),
                serde_json::Value::Number(x) => {
                    if let Some(i) = x.as_i64() {
                        self.i64(i);
                    } else {
                        serde_json::to_writer(&mut self.buf, x).map_err(io::Error::from)?;
                    }
                }
                v => serde_json::to_writer(&mut self.buf, v).map_err(io::Error::from)?,
            }
        }
        if !first {
            self.raw(b"}");
        }
        Ok(())
    }
}

/// `|v| * 1000` when `v` is the `f64` nearest to a decimal of at most three fraction digits
/// with `0.001 <= |v| < 2^43` (about 8.8 * 10^12: µs since 1970 are 1.8 * 10^15, µs since a
/// trace's base time far less); `None` otherwise (zero, other values, non-finite).
///
/// Why its digits are the shortest round-tripping decimal, which is what serde_json's
/// formatter writes: below 2^43 a unit in the last place of an `f64` is at most 2^-10, less
/// than 0.001, so the only decimals within half of one of `v` that have at most three
/// fraction digits are `n / 1000` itself (trailing zeros aside), and every shorter decimal
/// has at most three. `n as f64 / 1000.0` is IEEE division of an exact integer (`n < 2^53`),
/// correctly rounded: the `f64` nearest to the decimal, which is what parsing its digits
/// gives back. (serde_json writes such values without an exponent: checked by
/// `thousandths_are_written_as_serde_json_writes_them`.)
#[inline]
fn thousandths(v: f64) -> Option<u64> {
    const LIMIT: f64 = (1u64 << 43) as f64;
    let a = v.abs();
    if !(0.001..LIMIT).contains(&a) {
        return None;
    }
    let n = (a * 1000.0).round();
    (n / 1000.0 == a).then_some(n as u64)
}

/// `n / 1000` (`n` from [`thousandths`]) as serde_json writes that `f64`: the integer part,
/// a point, the fraction's digits without trailing zeros, `.0` for a whole number.
#[inline]
fn write_thousandths(buf: &mut Vec<u8>, negative: bool, n: u64) {
    if negative {
        buf.push(b'-');
    }
    let (int, frac) = (n / 1000, (n % 1000) as u16);
    // Writing into a Vec cannot fail.
    let _ = CompactFormatter.write_u64(buf, int);
    let digits = [b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let len = match frac {
        f if f % 100 == 0 => 2,
        f if f % 10 == 0 => 3,
        _ => 4,
    };
    buf.extend_from_slice(&digits[..len]);
}

/// Which bytes serde_json escapes, and how: 0 none, `u` as `\u00xx`, else `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Whether any of the 8 bytes of `w` needs an escape: a control character (below 0x20),
/// `"` or `\\`. Exact as a yes / no (the "has a byte less than n" and "has a zero byte"
/// word tests of Sean Anderson's *Bit Twiddling Hacks*, for n <= 128), though not for which
/// byte.
#[inline]
const fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q & HIGH;
    let b = w ^ (ONES * b'\\' as u64);
    let backslash = b.wrapping_sub(ONES) & !b & HIGH;
    (control | quote | backslash) != 0
}

/// Whether any of the `N` bytes of `chunk` needs an escape (as [`word_needs_escape`]):
/// written as a plain reduction into a byte, which LLVM compiles to vector compares (16
/// bytes at a time with x86-64's baseline SSE2) and one test at the end.
#[inline]
fn chunk_needs_escape<const N: usize>(chunk: &[u8; N]) -> bool {
    let mut any = 0u8;
    for &b in chunk {
        any |= u8::from((b < 0x20) | (b == b'"') | (b == b'\\'));
    }
    any != 0
}

/// Whether the last bytes of `bytes` need no escape: its last 8 bytes as one word, or in a
/// string of 4 to 7 bytes its two overlapping 4-byte halves (every byte either way); `false`
/// for a shorter string (it is looked at byte by byte). The end of a string, shorter than a
/// word past the word steps, was looked at byte by byte: a table lookup per byte, for every
/// key and every name (issue 14, item 2).
#[inline]
fn tail_is_clean(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let word = if n >= 8 {
        u64::from_le_bytes(bytes[n - 8..].try_into().expect("8 bytes"))
    } else if n >= 4 {
        let half = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")));
        half(0) | half(n - 4) << 32
    } else {
        return false;
    };
    !word_needs_escape(word)
}

/// `s` quoted and escaped as serde_json does, appended to `buf`. Runs of bytes that need no
/// escape (nearly all of a kernel name) are skipped 64, 16 or 8 bytes at a time and copied
/// whole: a byte at a time with a table lookup was 5.5 % of a fine-mode capture's CPU, its
/// kernel names being 100–400 bytes of C++ signature. (64-byte steps, then 16, scan the
/// names of a fine-mode capture 1.3 times as fast as 32-byte steps did.)
fn escape_into(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 64) {
            if !chunk_needs_escape::<64>(chunk.try_into().expect("a 64-byte slice")) {
                i += 64;
                continue;
            }
        }
        if let Some(chunk) = bytes.get(i..i + 16) {
            if !chunk_needs_escape::<16>(chunk.try_into().expect("a 16-byte slice")) {
                i += 16;
                continue;
            }
        }
        if let Some(word) = bytes.get(i..i + 8) {
            let word: [u8; 8] = word.try_into().expect("an 8-byte slice");
            if !word_needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        } else if tail_is_clean(bytes) {
            // Fewer than 8 bytes left, all within the clean tail.
            break;
        }
        let b = bytes[i];
        let esc = ESCAPE[b as usize];
        if esc != 0 {
            buf.extend_from_slice(&bytes[start..i]);
            if esc == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
            } else {
                buf.extend_from_slice(&[b'\\', esc]);
            }
            start = i + 1;
        }
        i += 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut all = String::new();
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0x1f600]) {
            all.push(char::from_u32(c).unwrap());
        }
        for s in ["", "plain", "a\"b\\c", "tab\tnl\ncr\r\u{8}\u{c}\u{1}\u{1f}\u{7f}", "void k<1, 2>(float*)", &all] {
            let mut ours = Vec::new();
            escape_into(&mut ours, s);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn typed_keys_need_no_escape() {
        // `JsonOut::args` copies them without escaping.
        for k in [
            keys::DEVICE,
            keys::STREAM,
            keys::CORRELATION,
            keys::EXTERNAL_ID,
            keys::GRID,
            keys::BLOCK,
            keys::REGISTERS,
            keys::SHARED_MEMORY,
            keys::BYTES,
            keys::STAGE,
            keys::STEP,
            keys::TRACE_ID,
            keys::SCOPE,
        ] {
            assert_eq!(serde_json::to_string(k).unwrap(), format!("\"{k}\""));
        }
    }

    #[test]
    fn an_escape_at_any_offset_of_a_word_is_found() {
        // Every byte that needs an escape, and its neighbours that do not (0x1f / 0x20,
        // 0x21 / 0x22 / 0x23, 0x5b / 0x5c / 0x5d, 0x7f, 0x80+ as UTF-8), at every position of
        // strings of every length up to several 8-byte words (the short ones and the tails
        // shorter than a word are settled by one overlapping word) and of lengths around
        // the 16- and 64-byte steps, alone and two at a time.
        let specials = ['\u{0}', '\u{8}', '\n', '\u{1f}', ' ', '!', '"', '#', '[', '\\', ']', '\u{7f}', 'é', '😀'];
        for len in (1usize..=40).chain([63, 64, 65, 79, 80, 81, 127, 128, 129, 150]) {
            for pos in 0..len {
                for &c in &specials {
                    for &d in &['a', '"', '\u{1}'] {
                        for tail in ["", "tail of eight+"] {
                            let mut s: String = "x".repeat(len);
                            s.replace_range(pos..pos + 1, &c.to_string());
                            s.push(d);
                            s.push_str(tail);
                            let mut ours = Vec::new();
                            escape_into(&mut ours, &s);
                            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
                        }
                    }
                }
            }
        }
    }

    fn ours_and_serde_jsons(v: f64) -> (String, String) {
        let mut out = JsonOut::new(Vec::new());
        out.f64(v);
        (String::from_utf8(out.finish().unwrap()).unwrap(), serde_json::to_string(&v).unwrap())
    }

    #[test]
    fn thousandths_are_written_as_serde_json_writes_them() {
        let limit = (1u64 << 43) as f64;
        let edges = [
            0.001, 0.0005, 0.0011, 0.999, 1.5, 10.0, 1000.25, 3503873.529, 1428625731622.25, 1e12 - 0.001, limit - 0.001,
            limit - 0.0005, limit, limit + 0.5, 9e15, 1.7e15 + 0.125, 0.1 + 0.2, -0.001, -2.5, -0.0, 0.0,
        ];
        for v in edges.into_iter().chain(edges.map(|v| -v)) {
            let (ours, want) = ours_and_serde_jsons(v);
            assert_eq!(ours, want, "{v:e}");
        }
    }

    proptest::proptest! {
        /// Any string, escapes anywhere (a tail shorter than a word, or all of a string
        /// shorter than 8 bytes, is settled by one overlapping word when it is clean).
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(s in "(\\PC|[\"\\\\\u{0}-\u{1f}]){0,80}") {
            let mut ours = Vec::new();
            escape_into(&mut ours, &s);
            proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&s).unwrap());
        }

        /// Every whole number of ns written as µs, across the fast path's range and past it.
        #[test]
        fn any_ns_as_us_is_written_as_serde_json_writes_it(ns in 0u64..(1u64 << 54), negative: bool) {
            let v = ns as f64 / 1000.0;
            let v = if negative { -v } else { v };
            let (ours, want) = ours_and_serde_jsons(v);
            proptest::prop_assert_eq!(ours, want);
        }

        /// Any finite `f64` at all (nearly none on the fast path).
        #[test]
        fn any_finite_f64_is_written_as_serde_json_writes_it(bits: u64) {
            let v = f64::from_bits(bits);
            proptest::prop_assume!(v.is_finite());
            let (ours, want) = ours_and_serde_jsons(v);
            proptest::prop_assert_eq!(ours, want);
        }

        /// Small and round values: thousandths near the bottom of the range, hundredths,
        /// whole numbers.
        #[test]
        fn short_decimals_are_written_as_serde_json_writes_them(n in 0u64..10_000_000, scale in 0u32..4) {
            let v = n as f64 / 10f64.powi(scale as i32);
            let (ours, want) = ours_and_serde_jsons(v);
            proptest::prop_assert_eq!(ours, want);
        }
    }

    #[test]
    fn number_args_are_written_as_serde_json_writes_them() {
        // Extra args take i64, u64 past i64::MAX and f64 (whole thousandths or not) apart.
        let numbers: Vec<serde_json::Number> = [
            serde_json::json!(0),
            serde_json::json!(-7),
            serde_json::json!(i64::MIN),
            serde_json::json!(u64::MAX),
            serde_json::json!(1u64 << 63),
            serde_json::json!(0.5),
            serde_json::json!(-0.0),
            serde_json::json!(22.875),
            serde_json::json!(0.007575757575757576),
            serde_json::json!(1e21),
            serde_json::json!(1e-7),
            serde_json::json!(f64::MAX),
        ]
        .into_iter()
        .map(|v| match v {
            serde_json::Value::Number(n) => n,
            other => panic!("{other}"),
        })
        .collect();
        for x in numbers {
            let mut e = TraceEvent { name: "k".into(), ..Default::default() };
            e.extra_args.insert("blocks per SM".into(), serde_json::Value::Number(x.clone()));
            let mut out = JsonOut::new(Vec::new());
            out.event(&e, 1.0).unwrap();
            let ours = String::from_utf8(out.finish().unwrap()).unwrap();
            let want = format!("\"args\":{{\"blocks per SM\":{}}}}}", serde_json::to_string(&x).unwrap());
            assert!(ours.ends_with(&want), "{ours} does not end with {want}");
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        let mut out = JsonOut::new(Vec::new());
        let floats = [0.0, -0.0, 1.0, 0.1, 1342.962, 62.66, 1e21, 1e-7, 123456789.123, f64::MAX, f64::MIN_POSITIVE];
        let ints = [0, -1, i64::MIN, i64::MAX, 42];
        for f in floats {
            out.f64(f);
            out.raw(b" ");
        }
        for i in ints {
            out.i64(i);
            out.raw(b" ");
        }
        let ours = String::from_utf8(out.finish().unwrap()).unwrap();
        let want: String = floats
            .iter()
            .map(|f| serde_json::to_string(f).unwrap() + " ")
            .chain(ints.iter().map(|i| serde_json::to_string(i).unwrap() + " "))
            .collect();
        assert_eq!(ours, want);
    }
}

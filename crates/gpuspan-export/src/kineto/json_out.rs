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
    #[inline]
    pub(crate) fn f64(&mut self, v: f64) {
        // Writing into a Vec cannot fail.
        let _ = CompactFormatter.write_f64(&mut self.buf, v);
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

/// `s` quoted and escaped as serde_json does, appended to `buf`. Runs of bytes that need no
/// escape (nearly all of a kernel name) are skipped 8 bytes at a time and copied whole: a
/// byte at a time with a table lookup was 5.5 % of a fine-mode capture's CPU, its kernel
/// names being 100–400 bytes of C++ signature.
fn escape_into(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let word: [u8; 8] = word.try_into().expect("an 8-byte slice");
            if !word_needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
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
        // strings long enough to span several 8-byte words, alone and two at a time.
        let specials = ['\u{0}', '\u{8}', '\n', '\u{1f}', ' ', '!', '"', '#', '[', '\\', ']', '\u{7f}', 'é', '😀'];
        for len in [1usize, 7, 8, 9, 15, 16, 17, 31, 40] {
            for pos in 0..len {
                for &c in &specials {
                    for &d in &['a', '"', '\u{1}'] {
                        let mut s: String = "x".repeat(len);
                        s.replace_range(pos..pos + 1, &c.to_string());
                        s.push(d);
                        s.push_str("tail of eight+");
                        let mut ours = Vec::new();
                        escape_into(&mut ours, &s);
                        assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
                    }
                }
            }
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

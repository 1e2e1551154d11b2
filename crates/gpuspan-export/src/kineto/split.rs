//! Large traces read event by event from memory (issue 14, item 4).
//!
//! serde_json reads a slice far faster than a `Read` (its `IoRead::parse_str` copies every
//! string byte by byte through a scratch buffer: a quarter of `gpuspan stats` on a 35 MB
//! trace), but reading a whole large trace into memory first would take 73 MB where the
//! goal is 64. So a trace past [`super::read::SLICE_PARSE_MAX_BYTES`] is split here:
//!
//! - [`Window`] holds the decompressed JSON read so far, from the first byte not yet used,
//!   and reads on in [`CHUNK`]s as a value needs them (the window is at most about one
//!   chunk plus the largest event beyond the first 8 MiB).
//! - [`Window::value_len`] finds where the JSON value at the front ends: brackets counted
//!   outside strings, string bytes skipped eight at a time. It validates nothing else.
//! - The `traceEvents` entries are copied out in batches of about [`BATCH_BYTES`] and
//!   handed to a helper thread, which parses each entry from its bytes by serde_json
//!   (`read::slot_from_slice`) and adds it as the streaming parse adds it
//!   (`read::take_slot`), batch after batch in file order. This thread reads, decompresses
//!   and cuts batches meanwhile; when [`QUEUED_MAX`] batches already wait for the helper,
//!   it parses the next one itself and queues it parsed. On two cores that is two thirds
//!   of the time of one (issue 14, item 4). Any other top-level key is parsed by the same
//!   code as in the streaming parse (`read::top_level_entry`).
//!
//! Anything this does not expect (a document that is not an object, a syntax error, a
//! second `traceEvents`, an I/O or gzip error, a value nested past [`MAX_DEPTH`], an event
//! that is an error in a strict read, a helper thread that cannot be started or panics)
//! makes [`parse`] give up (`false`): the caller then
//! reads the file again from the start with the streaming parse, which gives the same trace
//! or the same error, with the same line and column, as it always did. So the split changes
//! how fast a well-formed large trace is read, never what any trace reads as.

use std::io::Read;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};

use super::read::{self, EventRead, Slot, State};

/// Bytes read from the decompressed stream at a time.
const CHUNK: usize = 256 << 10;

/// Bytes of `traceEvents` entries parsed together, by this thread or the helper
/// ([`parse_events`]).
const BATCH_BYTES: usize = 512 << 10;

/// Batches queued for the helper, at most (with the one it works on and the one being cut
/// here, about 2 MiB of entries); past that this thread parses a batch itself before it
/// queues it.
const QUEUED_MAX: usize = 2;

/// Deepest bracket nesting inside one value that the split follows: below serde_json's
/// recursion limit (128) less the two levels above an event, so serde_json never refuses
/// in a slice what it accepted in the stream.
const MAX_DEPTH: u32 = 100;

/// The decompressed JSON read so far: `buf[pos..]` is not used yet.
struct Window<R> {
    buf: Vec<u8>,
    pos: usize,
    rest: R,
    /// The stream has ended (or failed: `failed`).
    eof: bool,
    failed: bool,
}

impl<R: Read> Window<R> {
    /// Reads one more chunk after what is held, first dropping what was used when that is at
    /// least half the buffer. `false` at the end of the stream or on an error.
    fn more(&mut self) -> bool {
        if self.eof {
            return false;
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        loop {
            match self.rest.read(&mut self.buf[old..]) {
                Ok(n) => {
                    self.buf.truncate(old + n);
                    self.eof = n == 0;
                    return n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.buf.truncate(old);
                    self.eof = true;
                    self.failed = true;
                    return false;
                }
            }
        }
    }

    /// The byte `i` past `pos`, reading on as needed; `None` past the end of the stream.
    fn byte(&mut self, i: usize) -> Option<u8> {
        while self.pos + i >= self.buf.len() {
            if !self.more() {
                return None;
            }
        }
        Some(self.buf[self.pos + i])
    }

    /// Skips whitespace and returns the next byte, not consumed; `None` at the end.
    fn peek(&mut self) -> Option<u8> {
        loop {
            let b = self.byte(0)?;
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.pos += 1;
        }
    }

    /// The length of the JSON value at `pos` (no whitespace before it): to its closing
    /// bracket or quote, or for a number or literal to the first byte that cannot be in
    /// one. `None` at the end of the stream or nested past [`MAX_DEPTH`]. One pass over the
    /// bytes held, reading on where they end, eight bytes at a time to the next byte that
    /// matters ([`structural`], [`string_stop`]).
    fn value_len(&mut self) -> Option<usize> {
        if !matches!(self.byte(0)?, b'{' | b'[' | b'"') {
            let mut i = 0;
            loop {
                match self.byte(i) {
                    None | Some(b',' | b' ' | b'\n' | b'\r' | b'\t' | b':' | b'}' | b']') => return Some(i),
                    Some(_) => i += 1,
                }
            }
        }
        let (mut i, mut depth, mut in_string) = (0usize, 0u32, false);
        loop {
            let buf = &self.buf[self.pos..];
            while i < buf.len() {
                if let Some(word) = buf.get(i..i + 8) {
                    let v = u64::from_le_bytes(word.try_into().unwrap_or_default());
                    let stops = if in_string { string_stop(v) } else { structural(v) };
                    if stops == 0 {
                        i += 8;
                        continue;
                    }
                    i += (stops.trailing_zeros() / 8) as usize;
                }
                let b = buf[i];
                if in_string {
                    match b {
                        b'"' => {
                            in_string = false;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        // An escape: the byte after it is part of the string, whatever it is
                        // (it may not be held yet: `i` then passes the end).
                        b'\\' => i += 1,
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    // A byte the word test flags that is none of these (`0x02`), or one looked
                    // at by itself near the end of what is held.
                    _ => {}
                }
                i += 1;
            }
            if !self.more() {
                return None;
            }
        }
    }

    /// The next `n` bytes, consumed.
    fn take(&mut self, n: usize) -> &[u8] {
        let at = self.pos;
        self.pos += n;
        &self.buf[at..at + n]
    }
}

/// Reads the trace whose decompressed JSON is `head` followed by `rest` into `state`.
/// `false`: something here was not as expected (module docs) and `state` is to be thrown
/// away; the caller reads the trace again with the streaming parse.
pub(super) fn parse<R: Read>(head: Vec<u8>, rest: R, state: &mut State) -> bool {
    parse_in_batches(head, rest, state, BATCH_BYTES)
}

/// [`parse`], the events parsed in batches of about `batch_bytes` bytes of JSON.
fn parse_in_batches<R: Read>(head: Vec<u8>, rest: R, state: &mut State, batch_bytes: usize) -> bool {
    let mut w = Window { buf: head, pos: 0, rest, eof: false, failed: false };
    parse_object(&mut w, state, batch_bytes).is_some() && state.saw_trace_events && w.peek().is_none() && !w.failed
}

fn parse_object<R: Read>(w: &mut Window<R>, state: &mut State, batch_bytes: usize) -> Option<()> {
    expect(w, b'{')?;
    if w.peek()? == b'}' {
        return None; // no "traceEvents": the streaming parse says so
    }
    loop {
        if w.peek()? != b'"' {
            return None;
        }
        let n = w.value_len()?;
        let key = w.take(n).to_vec();
        expect(w, b':')?;
        w.peek()?;
        if key == b"\"traceEvents\"" {
            if state.saw_trace_events {
                return None;
            }
            state.saw_trace_events = true;
            parse_events(w, state, batch_bytes)?;
        } else {
            let n = w.value_len()?;
            let value = w.take(n);
            if !read::top_level_entry(state, &key, value) {
                return None;
            }
        }
        if !more_or_close(w, b'}')? {
            return Some(());
        }
    }
}

fn parse_events<R: Read>(w: &mut Window<R>, state: &mut State, batch_bytes: usize) -> Option<()> {
    expect(w, b'[')?;
    state.next_index = 0;
    if w.peek()? == b']' {
        w.pos += 1;
        return Some(());
    }
    let how = state.event_read();
    std::thread::scope(|scope| {
        let (to_helper, work) = mpsc::sync_channel::<Work>(QUEUED_MAX);
        let (spare_tx, spare) = mpsc::channel::<Batch>();
        // A thread that cannot be started (a process at its limit) gives up the split: the
        // streaming parse needs none.
        let helper = std::thread::Builder::new()
            .name("gpuspan-parse".into())
            .spawn_scoped(scope, move || add_batches(&work, state, how, &spare_tx))
            .ok()?;
        let fed = feed(w, &to_helper, &spare, how, batch_bytes);
        drop(to_helper);
        // A panic in the helper gives up like any other surprise.
        let added = helper.join().unwrap_or(false);
        (fed.is_some() && added).then_some(())
    })
}

/// A batch for the helper: to parse, or parsed here already (the helper was behind).
enum Work {
    Parse(Batch),
    Parsed(Batch, Vec<Option<Slot>>),
}

/// This thread's side of [`parse_events`]: cuts the entries into batches and hands each to
/// the helper, or, when [`QUEUED_MAX`] wait for it already, parses it first. `None` where the
/// entries end unexpectedly or the helper gave up.
fn feed<R: Read>(w: &mut Window<R>, to_helper: &SyncSender<Work>, spare: &Receiver<Batch>, how: EventRead, batch_bytes: usize) -> Option<()> {
    let mut open = true;
    while open {
        let mut batch = spare.try_recv().unwrap_or_default();
        while open && batch.bytes.len() < batch_bytes {
            w.peek()?;
            let n = w.value_len()?;
            batch.bytes.extend_from_slice(w.take(n));
            batch.ends.push(batch.bytes.len());
            open = more_or_close(w, b']')?;
        }
        match to_helper.try_send(Work::Parse(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Work::Parse(batch))) => {
                let slots = batch.parse(how);
                to_helper.send(Work::Parsed(batch, slots)).ok()?;
            }
            Err(_) => return None,
        }
    }
    Some(())
}

/// The helper's side of [`parse_events`]: parses the batches it is given to parse and adds
/// every batch's events to `state` in the order the batches come (`read::take_slot`), then
/// hands the emptied batch back to be filled again (a fresh buffer of this size is mapped
/// and faulted in page by page). `false` at the first entry serde_json refused or that
/// `take_slot` would not add.
fn add_batches(work: &Receiver<Work>, state: &mut State, how: EventRead, spare: &Sender<Batch>) -> bool {
    for w in work {
        let (mut batch, slots) = match w {
            Work::Parse(batch) => {
                let slots = batch.parse(how);
                (batch, slots)
            }
            Work::Parsed(batch, slots) => (batch, slots),
        };
        for slot in slots {
            let index = state.next_index;
            if !slot.is_some_and(|slot| read::take_slot(state, slot, index)) {
                return false;
            }
        }
        batch.bytes.clear();
        batch.ends.clear();
        let _ = spare.send(batch);
    }
    true
}

/// `traceEvents` entries copied out of the window to be parsed together: the `i`-th is
/// `bytes[ends[i - 1]..ends[i]]` (from 0 for the first).
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Each entry parsed (`read::slot_from_slice`), `None` where serde_json refuses it.
    fn parse(&self, how: EventRead) -> Vec<Option<Slot>> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let slot = read::slot_from_slice(&self.bytes[start..end], how);
                start = end;
                slot
            })
            .collect()
    }
}

const LOW: u64 = 0x0101_0101_0101_0101;

/// The high bit of each byte of `x` that is zero, and maybe of bytes above the first such:
/// the lowest bit set marks the first zero byte exactly ("has zero byte", Hacker's Delight
/// 6-1; the borrow only runs upward).
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LOW) & !x & (LOW << 7)
}

/// Bytes of `v` (eight, little-endian) that matter outside strings: `"`, `{`, `}`, `[`, `]`
/// (a bracket with bit 5 set is a brace), and maybe `0x02` (`"` less bit 5 is not tested
/// apart); the lowest bit set is the first of them.
fn structural(v: u64) -> u64 {
    let braces = v | (LOW * 0x20);
    zero_bytes(braces ^ (LOW * u64::from(b'{'))) | zero_bytes(braces ^ (LOW * u64::from(b'}'))) | zero_bytes(v ^ (LOW * u64::from(b'"')))
}

/// Bytes of `v` that end a run of string bytes: `"` and `\`; the lowest bit set is the
/// first of them.
fn string_stop(v: u64) -> u64 {
    zero_bytes(v ^ (LOW * u64::from(b'"'))) | zero_bytes(v ^ (LOW * u64::from(b'\\')))
}

/// After a member of an object or array, consumes its `,` (`Some(true)`: another follows)
/// or its `close` (`Some(false)`); `None` at anything else.
fn more_or_close<R: Read>(w: &mut Window<R>, close: u8) -> Option<bool> {
    let more = match w.peek()? {
        b',' => true,
        b if b == close => false,
        _ => return None,
    };
    w.pos += 1;
    Some(more)
}

/// Consumes `b` after whitespace, or `None`.
fn expect<R: Read>(w: &mut Window<R>, b: u8) -> Option<()> {
    (w.peek()? == b).then(|| w.pos += 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kineto::read::parse_slice;
    use crate::kineto::ReadOptions;

    /// Hands out the bytes a few at a time (1 to 7, in turn), so values, strings and escapes
    /// cross the ends of what the window holds.
    struct Trickle<'a> {
        bytes: &'a [u8],
        turn: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.turn += 1;
            let n = (1 + self.turn % 7).min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// The split read of `json` (the first `head` bytes held, the rest trickled in), or
    /// `None` when it gives up. Read three ways, which must agree: every entry a batch of
    /// its own (parsed by the helper or here when the helper is behind, added in order), a
    /// few entries per batch, and all of them in one.
    fn split(json: &[u8], head: usize, opts: ReadOptions) -> Option<(gpuspan_core::trace::Trace, crate::kineto::Skipped)> {
        let head = head.min(json.len());
        let reads: Vec<_> = [1, 200, BATCH_BYTES]
            .into_iter()
            .map(|batch_bytes| {
                let mut state = State::new(opts);
                parse_in_batches(json[..head].to_vec(), Trickle { bytes: &json[head..], turn: 0 }, &mut state, batch_bytes).then(|| state.into_result())
            })
            .collect();
        assert!(reads.windows(2).all(|w| w[0] == w[1]), "batch sizes disagree: {reads:?}");
        reads.into_iter().next().flatten()
    }

    const TRACE: &str = r#" {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "H100 \"SXM\""}],
      "traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
        {"ph": "X", "cat": "kernel", "name": "void k<{1}, [2]>(\"x\\\\\", \u00e9)", "pid": 0, "tid": 7,
         "ts": 10.5, "dur": 2, "args": {"device": 0, "stream": 7, "grid": [1, 2, 3], "Input Dims": [[1, [2]], {"a": "]}"}]}},
        {"ph": "C", "name": "mem", "pid": 0, "ts": 11, "args": {"used": 5}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 9, "dur": 1.25,
         "args": {"correlation": 4, "External id": 3}}, {"ph": "i", "name": "mark", "ts": 1, "pid": 0, "tid": 0, "s": "t"}
      ],
      "baseTimeNanoseconds": 1700000000000000000, "traceName": "x", "distributedInfo": {"rank": 3}}
    "#;

    #[test]
    fn a_split_read_is_the_slice_read_wherever_the_chunks_end() {
        for lean in [false, true] {
            let opts = ReadOptions { strict: true, drop_extra_args: lean, ..Default::default() };
            let want = parse_slice(TRACE.as_bytes(), opts).unwrap();
            assert_eq!(want.0.events.len(), 2, "the reference read has the complete events");
            assert_eq!(want.0.base_time_ns, Some(1_700_000_000_000_000_000));
            for head in [0, 1, 5, 40, 100, 333, TRACE.len()] {
                assert_eq!(split(TRACE.as_bytes(), head, opts), Some(want.clone()), "head {head}, lean {lean}");
            }
        }
    }

    #[test]
    fn the_split_gives_up_where_the_streaming_parse_decides() {
        let opts = ReadOptions { strict: true, drop_extra_args: true, ..Default::default() };
        let ok = r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1}]}"#;
        assert!(split(ok.as_bytes(), 3, opts).is_some(), "the well-formed case reads");
        for bad in [
            r#"[{"ph": "X", "name": "a", "ts": 1, "dur": 1}]"#,                 // JSON Array Format
            r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1},]}"#, // trailing comma
            r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1}]"#,   // truncated
            r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1}]} x"#, // trailing bytes
            r#"{"traceEvents": [{"ph": "X", "name": "a", "dur": 1}]}"#,            // strict: no ts
            r#"{"traceEvents": [], "traceEvents": []}"#,                           // twice
            r#"{"schemaVersion": 1}"#,                                             // no events
            r#"{"traceEvents": {"a": 1}}"#,                                        // not an array
            r#"{"traceEvents": [{"ph": "X", "ph": "X", "name": "a", "ts": 1}]}"#,   // duplicate field
            r#"{"traceEvents": [{"ph": "X", "name": "a\"#,                         // in an escape
        ] {
            assert_eq!(split(bad.as_bytes(), 2, opts), None, "{bad}");
        }
        let deep = format!(r#"{{"traceEvents": [{{"ph": "X", "ts": 1, "args": {}1{}}}]}}"#, "[".repeat(101), "]".repeat(101));
        assert_eq!(split(deep.as_bytes(), 2, opts), None, "nested past MAX_DEPTH");
        // Lenient: a malformed event is skipped and counted, as in the streaming parse.
        let lenient = ReadOptions { strict: false, drop_extra_args: true, ..Default::default() };
        let skip = r#"{"traceEvents": [{"ph": "X", "name": "a", "dur": 1}, 7, {"ph": "X", "name": "b", "ts": 2, "dur": 1}]}"#;
        let got = split(skip.as_bytes(), 4, lenient).expect("lenient reads");
        assert_eq!(got, parse_slice(skip.as_bytes(), lenient).unwrap());
        assert_eq!((got.0.events.len(), got.1.count), (1, 2));
    }

    #[test]
    fn many_small_batches_add_their_events_in_order() {
        // 3,000 events, one batch each: the helper and this thread both parse, and every event
        // keeps its place.
        let events: Vec<String> = (0..3000)
            .map(|i| if i == 1234 { "7".to_string() } else { format!(r#"{{"ph": "X", "cat": "kernel", "name": "k{i}", "pid": 0, "tid": 1, "ts": {i}, "dur": 1}}"#) })
            .collect();
        let json = format!(r#"{{"traceEvents": [{}]}}"#, events.join(","));
        for strict in [false, true] {
            let opts = ReadOptions { strict, drop_extra_args: true, ..Default::default() };
            let want = parse_slice(json.as_bytes(), opts).ok();
            let got = split(json.as_bytes(), 100, opts);
            if strict {
                assert_eq!(got, None, "a strict read gives up at the bad entry");
            } else {
                let got = got.expect("lenient reads");
                assert_eq!(Some(&got), want.as_ref());
                let names: Vec<&str> = got.0.events.iter().map(|e| e.name.as_ref()).collect();
                assert_eq!(names.len(), 2999);
                assert_eq!((names[0], names[1233], names[1234], names[2998]), ("k0", "k1233", "k1235", "k2999"));
            }
        }
    }

    #[test]
    fn the_word_tests_find_the_first_byte_that_matters() {
        let first = |m: u64| (m != 0).then(|| m.trailing_zeros() as usize / 8);
        assert_eq!(first(structural(u64::from_le_bytes(*b"abc:1, 2"))), None);
        assert_eq!(first(string_stop(u64::from_le_bytes(*b"abc{}[] "))), None);
        for at in 0..8 {
            for stop in [b'"', b'{', b'}', b'[', b']', b'\\'] {
                let mut bytes = *b"abcdefgh";
                bytes[at] = stop;
                let v = u64::from_le_bytes(bytes);
                let (is_structural, ends_string) = (stop != b'\\', stop == b'"' || stop == b'\\');
                assert_eq!(first(structural(v)), is_structural.then_some(at), "{} at {at}", stop as char);
                assert_eq!(first(string_stop(v)), ends_string.then_some(at), "{} at {at}", stop as char);
                // With another stop byte further up, the first one is still the one found.
                if at < 7 {
                    bytes[7] = b'"';
                    let v = u64::from_le_bytes(bytes);
                    assert_eq!(first(structural(v)), Some(if is_structural { at } else { 7 }), "{} at {at}", stop as char);
                    assert_eq!(first(string_stop(v)), Some(if ends_string { at } else { 7 }), "{} at {at}", stop as char);
                }
            }
        }
    }

    /// The JSON value at the start of `bytes` measured byte by byte, as plainly as it can be
    /// written: its length, or `None` when it does not end or nests past [`MAX_DEPTH`].
    fn plain_value_len(bytes: &[u8]) -> Option<usize> {
        let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
        for (i, &b) in bytes.iter().enumerate() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                }
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// `value_len` (eight bytes at a time to the next byte that matters) measures what
        /// the plain scan measures, on values made of brackets, quotes, escapes and filler,
        /// nested up to past `MAX_DEPTH`, held whole or trickled in 1 to 7 bytes at a time.
        #[test]
        fn value_len_is_the_plain_scan(
            body in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\a:, ".to_vec()), 0..600),
            open in proptest::sample::select(b"{[".to_vec()),
            deep in 0usize..120,
        ) {
            let mut bytes = vec![open];
            bytes.extend(std::iter::repeat_n(b'[', deep));
            bytes.extend(body);
            bytes.extend(std::iter::repeat_n(b']', 130));
            let want = plain_value_len(&bytes);
            let whole = Window { buf: bytes.clone(), pos: 0, rest: std::io::empty(), eof: false, failed: false }.value_len();
            proptest::prop_assert_eq!(whole, want);
            let trickled = Window { buf: Vec::new(), pos: 0, rest: Trickle { bytes: &bytes, turn: 0 }, eof: false, failed: false }.value_len();
            proptest::prop_assert_eq!(trickled, want);
        }
    }
}

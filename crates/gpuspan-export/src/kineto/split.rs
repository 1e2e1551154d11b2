//! Large traces read event by event from memory (issue 14, item 4).
//!
//! serde_json reads a slice far faster than a `Read` (its `IoRead::parse_str` copies every
//! string byte by byte through a scratch buffer: a quarter of `gpuspan stats` on a 35 MB
//! trace), but reading a whole large trace into memory first would take 73 MB where the
//! goal is 64. So a trace from [`super::read::SPLIT_MIN_BYTES`] is split here as it is
//! decompressed, and its entries parsed on two threads:
//!
//! - [`Window`] holds the decompressed JSON read so far, from the first byte not yet used,
//!   and reads on in [`CHUNK`]s as it needs them.
//! - The top-level keys and values other than `traceEvents` are measured by
//!   [`Window::value_len`] (brackets counted outside strings, string bytes skipped eight at
//!   a time; it validates nothing else) and parsed by the streaming parse's own code
//!   (`read::top_level_entry`).
//! - The `traceEvents` entries are cut into batches of about [`BATCH_BYTES`] at a *guessed*
//!   entry boundary ([`find_cut`]: a `{` after `},` and before `"`, looked for only past
//!   the batch's size, so this thread reads each byte about once, where measuring every entry
//!   read it twice: the bracket scan was 40 % of this thread's time on a100-hta-control).
//!   The stream is read straight into each batch ([`Window::fill_batch`]), which is handed
//!   to a helper thread that parses its entries one after another (`read::slot_at`) and
//!   adds them as the streaming parse adds them
//!   (`read::take_slot`), batch after batch in file order. When [`QUEUED_MAX`] batches
//!   already wait for the helper, this thread parses the next one itself and queues it
//!   parsed. On two cores that is two thirds of the time of one.
//! - A guess is checked by the parse itself ([`parse_entries`]): a batch is parsed alone only
//!   when the one before it ended after an entry's `,`, so every parse starts at an entry.
//!   A guess that fell inside an entry (the same bytes in a string or a nested object)
//!   leaves that entry cut short, which serde_json reports as the end of its input; the
//!   helper then reads that entry again with the next batch's bytes after it (up to
//!   [`CARRY_MAX`]), and that batch's own parse is thrown away.
//! - The batch that holds the array's `]` tells this thread to stop cutting, and the bytes
//!   after the `]` (still in the window, or in batches cut past it) go back to the top-level
//!   parse.
//!
//! Anything this does not expect (a document that is not an object, a syntax error, a
//! second `traceEvents`, an I/O or gzip error, an entry that may nest past [`MAX_DEPTH`] or
//! is longer than [`CARRY_MAX`], an event that is an error in a strict read, a helper thread
//! that cannot be started or panics) makes [`parse`] give up (`false`): the caller then
//! reads the file again from the start with the streaming parse, which gives the same trace
//! or the same error, with the same line and column, as it always did. So the split changes
//! how fast a well-formed large trace is read, never what any trace reads as.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};

use super::read::{self, EventRead, Slot, State};

/// Bytes read from the decompressed stream at a time, outside `traceEvents`.
const CHUNK: usize = 256 << 10;

/// Bytes read from the decompressed stream at a time into a batch ([`Window::fill_batch`]):
/// small, since what a batch reads past its cut is copied back.
const BATCH_READ: usize = 32 << 10;

/// Bytes of `traceEvents` entries parsed together, by this thread or the helper
/// ([`parse_events`]). 256 KiB: `gpuspan stats` on h100-qwen-prefill (5.4 MB) 15.5–15.9 ms
/// against 16.4–18.0 with 512 KiB (two alternated `perf stat -r 10`), the large fixtures
/// the same within noise.
const BATCH_BYTES: usize = 256 << 10;

/// Batches queued for the helper, at most (with the one it works on and the one being cut
/// here, about 1 MiB of entries); past that this thread parses a batch itself before it
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
    /// Offset of `buf[0]` in the decompressed stream (bytes dropped before it).
    base: usize,
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
            self.base += self.pos;
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

    /// Fills `batch` (empty) with the next `traceEvents` entries: at least `batch_bytes`
    /// where the stream holds that many, up to the first `{` past them that
    /// [`looks_like_entry_start`] (a guess, which the helper checks); everything left once
    /// the stream ends first (`true`: the last batch). The stream is read straight into the
    /// batch, [`BATCH_READ`] bytes at a time, and only what lies past the cut is copied back
    /// into the window (which hands it to the next batch without a copy): the window's own
    /// reads and a copy of each batch out of it moved every byte about one and a half times
    /// (16 % of the reading thread's samples on a100-hta-control).
    fn fill_batch(&mut self, batch: &mut Batch, batch_bytes: usize) -> bool {
        batch.at = self.base + self.pos;
        if self.pos == 0 {
            std::mem::swap(&mut batch.bytes, &mut self.buf);
        } else {
            batch.bytes.extend_from_slice(&self.buf[self.pos..]);
        }
        self.base += self.buf.len();
        self.buf.clear();
        self.pos = 0;
        let mut from = batch_bytes;
        loop {
            if let Some(at) = find_cut(&batch.bytes, &mut from) {
                self.buf.extend_from_slice(&batch.bytes[at..]);
                self.base = batch.at + at;
                batch.bytes.truncate(at);
                return false;
            }
            if self.eof {
                return true;
            }
            // `read_to_end` of a `take`: no zeroing of the bytes read into, and
            // `Interrupted` retried; fewer than asked for means the stream ended.
            let before = batch.bytes.len();
            match (&mut self.rest).take(BATCH_READ as u64).read_to_end(&mut batch.bytes) {
                Ok(n) => self.eof = n < BATCH_READ,
                Err(_) => {
                    batch.bytes.truncate(before);
                    self.eof = true;
                    self.failed = true;
                }
            }
            self.base = batch.at + batch.bytes.len();
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
    let mut w = Window { buf: head, pos: 0, base: 0, rest, eof: false, failed: false };
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

/// The `traceEvents` array, from its `[` to past its `]`: cut into batches at guessed entry
/// boundaries by this thread ([`feed`]), parsed here or by a helper thread, and added to
/// `state` by the helper in file order ([`add_batches`], which also checks every guess).
fn parse_events<R: Read>(w: &mut Window<R>, state: &mut State, batch_bytes: usize) -> Option<()> {
    expect(w, b'[')?;
    state.next_index = 0;
    if w.peek()? == b']' {
        w.pos += 1;
        return Some(());
    }
    let how = state.event_read();
    let close = run_batches(state, how, |batch| w.fill_batch(batch, batch_bytes))?;
    // Past the `]`: still held, or only in the bytes the helper kept after it.
    if close.at >= w.base && close.at < w.base + w.buf.len() {
        w.pos = close.at - w.base + 1;
    } else {
        let mut buf = close.after;
        buf.extend_from_slice(&w.buf[w.pos..]);
        w.base = close.at + 1;
        w.buf = buf;
        w.pos = 0;
    }
    Some(())
}

/// The batches of a `traceEvents` array, each filled by `next` (which says whether it was
/// the last), parsed here or by a helper thread and added to `state` by the helper
/// ([`feed`], [`add_batches`]). `None` where the split gives up.
fn run_batches(state: &mut State, how: EventRead, next: impl FnMut(&mut Batch) -> bool) -> Option<Close> {
    let closed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (to_helper, work) = mpsc::sync_channel::<Work>(QUEUED_MAX);
        let (spare_tx, spare) = mpsc::channel::<Batch>();
        // A thread that cannot be started (a process at its limit) gives up the split: the
        // streaming parse needs none.
        let closed = &closed;
        let helper = std::thread::Builder::new()
            .name("gpuspan-parse".into())
            .spawn_scoped(scope, move || add_batches(&work, state, how, &spare_tx, closed))
            .ok()?;
        let fed = feed(next, &to_helper, &spare, how, closed);
        drop(to_helper);
        // A panic in the helper gives up like any other surprise.
        let close = helper.join().ok().flatten();
        fed.and(close)
    })
}

/// A batch for the helper: to parse, or parsed here already (the helper was behind).
enum Work {
    Parse(Batch),
    Parsed(Batch, Parsed),
}

/// This thread's side of [`run_batches`]: has `next` fill each batch (cut at a guessed
/// entry boundary: [`Window::fill_batch`], [`find_cut`]) and hands it to the helper, or, when
/// [`QUEUED_MAX`] wait for it already, parses it first. Stops once the helper has found the
/// array's `]` (`closed`) or after the last batch. `None` where the helper gave up.
fn feed(
    mut next: impl FnMut(&mut Batch) -> bool,
    to_helper: &SyncSender<Work>,
    spare: &Receiver<Batch>,
    how: EventRead,
    closed: &AtomicBool,
) -> Option<()> {
    loop {
        if closed.load(Ordering::Acquire) {
            return Some(());
        }
        let mut batch = spare.try_recv().unwrap_or_default();
        let last = next(&mut batch);
        match to_helper.try_send(Work::Parse(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Work::Parse(batch))) => {
                let parsed = parse_entries(&batch.bytes, how);
                to_helper.send(Work::Parsed(batch, parsed)).ok()?;
            }
            Err(_) => return None,
        }
        if last {
            return Some(());
        }
    }
}

/// Where the `traceEvents` array ended, as the helper found it.
struct Close {
    /// The `]`'s offset in the decompressed stream.
    at: usize,
    /// The bytes after it that were cut into batches (the window may hold them no more).
    after: Vec<u8>,
}

/// The helper's side of [`parse_events`]: takes the batches in file order, parses those it
/// is given to parse, adds their entries to `state` (`read::take_slot`) and hands each
/// emptied batch back to be filled again. It is also where the cuts are checked: a batch
/// whose last entry runs past its end ([`BatchEnd::Short`]: the guess fell inside an entry)
/// is parsed again from that entry with the next batch's bytes after it, the next batch's
/// own parse thrown away. Once the `]` is found it tells [`feed`] (`closed`) and keeps the
/// bytes after it. `None` at the first entry serde_json refused or that `take_slot` would
/// not add, an entry longer than [`CARRY_MAX`], or a stream that ended inside the array.
fn add_batches(work: &Receiver<Work>, state: &mut State, how: EventRead, spare: &Sender<Batch>, closed: &AtomicBool) -> Option<Close> {
    // An entry cut short, with its offset in the stream, to be parsed with the next batch.
    let mut carry: Option<(usize, Vec<u8>)> = None;
    let mut close: Option<Close> = None;
    for w in work {
        let (mut batch, parsed) = match w {
            Work::Parse(batch) => (batch, None),
            Work::Parsed(batch, parsed) => (batch, Some(parsed)),
        };
        if let Some(c) = &mut close {
            c.after.extend_from_slice(&batch.bytes);
        } else {
            let joined = carry.take().map(|(at, mut bytes)| {
                bytes.extend_from_slice(&batch.bytes);
                (at, bytes)
            });
            let (at, bytes) = match &joined {
                Some((at, bytes)) => (*at, bytes.as_slice()),
                None => (batch.at, batch.bytes.as_slice()),
            };
            let mut add = |slot| {
                let index = state.next_index;
                read::take_slot(state, slot, index)
            };
            let end = match parsed {
                Some((slots, end)) if joined.is_none() => {
                    if !slots.into_iter().all(&mut add) {
                        return None;
                    }
                    end
                }
                _ => read_entries(bytes, how, add),
            };
            match end {
                BatchEnd::More => {}
                BatchEnd::Short(from) => {
                    if bytes.len() - from > CARRY_MAX {
                        return None;
                    }
                    carry = Some((at + from, bytes[from..].to_vec()));
                }
                BatchEnd::Closed(o) => {
                    close = Some(Close { at: at + o, after: bytes[o + 1..].to_vec() });
                    closed.store(true, Ordering::Release);
                }
                BatchEnd::Bad => return None,
            }
        }
        batch.bytes.clear();
        let _ = spare.send(batch);
    }
    close
}

/// Longest entry the helper carries over from one batch to the next (each time parsed
/// again from its start with the next batch's bytes after it): past it the split gives up
/// and the streaming parse reads the trace. So one huge entry is parsed again at most
/// `CARRY_MAX / BATCH_BYTES` (16) times, about 32 MiB in all, before that one more read.
const CARRY_MAX: usize = 4 << 20;

/// `traceEvents` entries copied out of the window to be parsed together, from a guessed
/// entry start to just past a `,`.
#[derive(Default)]
struct Batch {
    /// Offset of `bytes[0]` in the decompressed stream.
    at: usize,
    bytes: Vec<u8>,
}

/// A batch's entries, parsed, and where the parse stopped.
type Parsed = (Vec<Slot>, BatchEnd);

/// Where [`parse_entries`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchEnd {
    /// After a `,` and whitespace at the end of the bytes: more entries follow.
    More,
    /// At the array's closing `]`, at this offset.
    Closed(usize),
    /// The entry at this offset runs past the end of the bytes (serde_json found the end of
    /// its input inside it), or ends there with no `,` or `]` after it: it is to be read
    /// with more bytes.
    Short(usize),
    /// Anything else: serde_json refused an entry, an entry nests too deep, or something
    /// other than `,` or `]` follows one.
    Bad,
}

/// The `traceEvents` entries at the start of `bytes`, one after another, each parsed by
/// serde_json from where the last ended (`read::slot_at`), up to where the bytes end or
/// the array does.
///
/// Why a guessed cut needs no other check: the first batch starts where the array's
/// entries do, and a batch is parsed alone only when the one before ended
/// [`BatchEnd::More`], so every parse starts at the start of an entry. From there serde_json
/// reads the JSON as it is; a cut that fell inside an entry leaves that entry's bytes a
/// proper prefix of a JSON value, and parsing a prefix of valid JSON fails only at its
/// end: [`BatchEnd::Short`], and the helper reads the entry again with the next batch.
fn parse_entries(bytes: &[u8], how: EventRead) -> Parsed {
    let mut slots = Vec::new();
    let end = read_entries(bytes, how, |slot| {
        slots.push(slot);
        true
    });
    (slots, end)
}

/// [`parse_entries`], each entry handed to `add` as it is read (`false` from `add`: stop,
/// [`BatchEnd::Bad`]).
fn read_entries(bytes: &[u8], how: EventRead, mut add: impl FnMut(Slot) -> bool) -> BatchEnd {
    let mut pos = skip_whitespace(bytes, 0);
    loop {
        let start = pos;
        match read::slot_at(&bytes[start..], how) {
            Ok((slot, n)) => {
                pos += n;
                if nests_too_deep(&bytes[start..pos]) || !add(slot) {
                    return BatchEnd::Bad;
                }
            }
            Err(e) if e.is_eof() => return BatchEnd::Short(start),
            Err(_) => return BatchEnd::Bad,
        }
        pos = skip_whitespace(bytes, pos);
        match bytes.get(pos) {
            None => return BatchEnd::Short(start),
            Some(b',') => {
                pos = skip_whitespace(bytes, pos + 1);
                if pos == bytes.len() {
                    return BatchEnd::More;
                }
            }
            Some(b']') => return BatchEnd::Closed(pos),
            Some(_) => return BatchEnd::Bad,
        }
    }
}

/// Whether an entry may nest past [`MAX_DEPTH`]: it holds more opening brackets than that,
/// strings included (an entry parsed from its own bytes sits two levels higher than in the
/// whole document, where serde_json's recursion limit would refuse it; the streaming parse
/// decides such a trace). Only an entry of more than twice as many bytes can; the count is a
/// plain loop that compiles to vector compares.
fn nests_too_deep(entry: &[u8]) -> bool {
    // Counted in `u8`s, 255 bytes at a time, so the compares and sums are 16 bytes a vector.
    let opening = |bytes: &[u8]| bytes.iter().fold(0u8, |n, &b| n + u8::from(b == b'{' || b == b'['));
    entry.len() > 2 * MAX_DEPTH as usize && entry.chunks(255).map(|c| usize::from(opening(c))).sum::<usize>() > MAX_DEPTH as usize
}

/// The first offset at or after `from` that is not JSON whitespace (`bytes.len()` if none).
fn skip_whitespace(bytes: &[u8], from: usize) -> usize {
    bytes[from..].iter().position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t')).map_or(bytes.len(), |i| from + i)
}

/// The first `{` at or past `*from` in `held` that [`looks_like_entry_start`] (a guessed
/// cut between two entries); `None` where there is none, with `*from` where to look again
/// once more bytes are held (a `{` whose following bytes are not held yet is looked at
/// again).
fn find_cut(held: &[u8], from: &mut usize) -> Option<usize> {
    while let Some(at) = held.get(*from..).and_then(|rest| rest.iter().position(|&b| b == b'{')).map(|i| *from + i) {
        if skip_whitespace(held, at + 1) == held.len() {
            *from = at;
            return None;
        }
        if looks_like_entry_start(held, at) {
            return Some(at);
        }
        *from = at + 1;
    }
    *from = (*from).max(held.len());
    None
}

/// Whether a `{` at `at` looks like the start of an entry: a `}` then a `,` before it and a
/// `"` or `}` after it, whitespace allowed between. A guess: inside a string or a nested
/// value the same bytes may occur, and [`parse_entries`] finds out.
fn looks_like_entry_start(held: &[u8], at: usize) -> bool {
    let before = |mut i: usize| {
        while i > 0 && matches!(held[i - 1], b' ' | b'\n' | b'\r' | b'\t') {
            i -= 1;
        }
        i.checked_sub(1).map(|j| (j, held[j]))
    };
    let after = skip_whitespace(held, at + 1);
    matches!(held.get(after), Some(b'"' | b'}')) && matches!(before(at), Some((comma, b',')) if matches!(before(comma), Some((_, b'}'))))
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
            r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1} {"ph": "X", "name": "b", "ts": 2, "dur": 1}]}"#, // no comma
            r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1} x, {"ph": "X", "name": "b", "ts": 2, "dur": 1}]}"#, // not a comma
            r#"{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1},, {"ph": "X", "name": "b", "ts": 2, "dur": 1}]}"#, // two
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

    /// An entry whose args hold the bytes a guessed cut looks for (`}, {"` and `},{"`), in
    /// a nested array of objects and inside strings.
    const LOOKALIKE: &str = r#"{"ph": "X", "cat": "kernel", "name": "k}, {\"x\": 1}", "pid": 0, "tid": 7, "ts": 3, "dur": 1,
         "args": {"stream": 7, "nested": [{"a": 1}, {"b": "},{\"c"}, {"d": [{}, {}]}], "s": "},{\"ph\": \"X\"}"}}"#;

    #[test]
    fn a_cut_inside_an_entry_is_found_and_read_again_with_the_next_batch() {
        let how = EventRead::Lean { keep_host_op: None };
        let json = format!("{LOOKALIKE},\n {LOOKALIKE}, ");
        // Where a guess would cut: the `{` of each lookalike and of the second entry.
        let mut cuts = Vec::new();
        let mut from = 1;
        while let Some(at) = find_cut(json.as_bytes(), &mut from) {
            cuts.push(at);
            from = at + 1;
        }
        let second = LOOKALIKE.len() + 3;
        assert!(cuts.len() >= 3 && cuts.contains(&second), "{cuts:?}");
        for &at in &cuts {
            let (slots, end) = parse_entries(&json.as_bytes()[..at], how);
            if at == second {
                assert_eq!((slots.len(), end), (1, BatchEnd::More), "the true cut");
            } else {
                assert_eq!((slots.len(), end), (usize::from(at > second), BatchEnd::Short(if at > second { second } else { 0 })), "cut at {at}");
            }
        }
        let (slots, end) = parse_entries(json.as_bytes(), how);
        assert_eq!((slots.len(), end), (2, BatchEnd::More));
        let closed = format!("{LOOKALIKE} ] , \"x\": 1}}");
        assert_eq!(parse_entries(closed.as_bytes(), how).1, BatchEnd::Closed(LOOKALIKE.len() + 1));
        for bad in ["{\"ph\": \"X\"},, {}", "{\"ph\": \"X\"} {}", "{\"ph\": \"X\"}, ]", "{\"a\": tru}, "] {
            assert_eq!(parse_entries(bad.as_bytes(), how).1, BatchEnd::Bad, "{bad}");
        }
        assert_eq!(parse_entries(b"{\"ph\": \"X\"}", how).1, BatchEnd::Short(0), "no separator yet");
        assert_eq!(parse_entries(b"  ", how).1, BatchEnd::Short(2), "nothing yet");
    }

    #[test]
    fn lookalike_cuts_and_a_long_tail_read_as_the_slice_read() {
        // Every batch size from one byte up: guesses fall inside entries (read again with the
        // next batch), and the batches cut past the `]` (a tail of top-level keys whose
        // objects hold the same bytes) go back to the top-level parse.
        let events: Vec<String> = (0..40).map(|i| LOOKALIKE.replace("\"ts\": 3", &format!("\"ts\": {i}"))).collect();
        let tail: Vec<String> = (0..30).map(|i| format!(r#"{{"id": {i}, "name": "}},{{\"gpu\"}}"}}"#)).collect();
        let json = format!(r#"{{"traceEvents": [{}], "deviceProperties": [{}], "baseTimeNanoseconds": 7}}"#, events.join(", "), tail.join(","));
        for lean in [false, true] {
            let opts = ReadOptions { strict: true, drop_extra_args: lean, ..Default::default() };
            let want = parse_slice(json.as_bytes(), opts).unwrap();
            assert_eq!((want.0.events.len(), want.0.base_time_ns), (40, Some(7)));
            for batch_bytes in [1, 7, 300, 1000, 5000, json.len()] {
                for head in [0, 9, 2000] {
                    let mut state = State::new(opts);
                    let read = parse_in_batches(json.as_bytes()[..head].to_vec(), Trickle { bytes: &json.as_bytes()[head..], turn: 0 }, &mut state, batch_bytes);
                    assert!(read, "batch {batch_bytes}, head {head}, lean {lean}");
                    assert_eq!(state.into_result(), want, "batch {batch_bytes}, head {head}, lean {lean}");
                }
            }
        }
    }

    #[test]
    fn an_entry_longer_than_the_carry_limit_gives_the_read_to_the_streaming_parse() {
        let long = "x".repeat(CARRY_MAX + 10);
        let json = format!(r#"{{"traceEvents": [{{"ph": "X", "name": "a", "ts": 1, "dur": 1}}, {{"ph": "X", "name": "b", "ts": 2, "dur": 1, "args": {{"s": "{long}", "t": [{{"a": 1}}, {{"b": 2}}]}}}}, {{"ph": "X", "name": "c", "ts": 3, "dur": 1}}]}}"#);
        let opts = ReadOptions { strict: true, drop_extra_args: true, ..Default::default() };
        let mut state = State::new(opts);
        assert!(!parse_in_batches(Vec::new(), json.as_bytes(), &mut state, 1 << 16), "gives up");
        let (trace, _) = crate::kineto::read_trace_bytes(json.as_bytes(), std::path::Path::new("long.json"), opts).unwrap();
        assert_eq!(trace.events.len(), 3, "the streaming parse reads it");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Traces of entries whose names and args hold the bytes a guessed cut looks for, in
        /// strings and in nested objects, some entries not objects (lenient) or malformed:
        /// the split read (any batch size, the stream trickled) is the slice read, or gives
        /// up where that fails.
        #[test]
        fn guessed_cuts_never_change_what_a_trace_reads_as(
            entries in proptest::collection::vec((0usize..6, "[a-z{}\\[\\],\" ]{0,12}"), 1..40),
            batch_bytes in 1usize..400,
            strict in proptest::bool::ANY,
        ) {
            let quoted = |s: &str| serde_json::to_string(s).unwrap();
            let body: Vec<String> = entries.iter().enumerate().map(|(i, (kind, text))| match kind {
                0 => format!(r#"{{"ph": "X", "cat": "kernel", "name": {}, "pid": 0, "tid": 1, "ts": {i}, "dur": 1}}"#, quoted(text)),
                1 => format!(r#"{{"ph": "X", "name": "n", "ts": {i}, "dur": 2, "args": {{"k": [{{"a": {}}}, {{"b": [{{}}, {{"c": 1}}]}}], "stream": 3}}}}"#, quoted(text)),
                2 => format!(r#"{{"ph": "M", "name": "process_name", "pid": {i}, "args": {{"name": {}}}}}"#, quoted(text)),
                3 => format!(r#"{{"ph": "f", "id": {i}, "name": {}, "ts": 1}}"#, quoted(text)),
                4 => i.to_string(),
                _ => format!(r#"{{"ph": "X", "name": {}, "dur": 1}}"#, quoted(text)),
            }).collect();
            let json = format!(r#"{{"traceEvents": [{}], "tail": [{{"a": 1}}, {{"b": {}}}]}}"#, body.join(", "), quoted("},{\""));
            for lean in [false, true] {
                let opts = ReadOptions { strict, drop_extra_args: lean, ..Default::default() };
                let want = parse_slice(json.as_bytes(), opts).ok();
                let mut state = State::new(opts);
                let read = parse_in_batches(Vec::new(), Trickle { bytes: json.as_bytes(), turn: 0 }, &mut state, batch_bytes);
                if read {
                    proptest::prop_assert_eq!(Some(state.into_result()), want);
                } else {
                    // Giving up is only allowed where the streaming parse decides otherwise.
                    proptest::prop_assert!(want.is_none() || (strict && entries.iter().any(|(k, _)| *k >= 4)), "gave up on a trace that reads");
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// A trace with bytes overwritten (brackets, quotes, commas, backslashes, a byte that
        /// is not UTF-8) or cut off: the split never panics, and what it reads is what the
        /// slice read reads; anything else it gives to the streaming parse.
        #[test]
        fn garbled_traces_read_as_the_slice_read_or_are_given_up(
            edits in proptest::collection::vec((0usize..4000, proptest::sample::select(b"{}[]\",:\\ x7\xff".to_vec())), 1..6),
            separator in proptest::option::of((0usize..11, proptest::sample::select(b"{}[]\": x".to_vec()))),
            cut in proptest::option::of(0usize..4000),
            batch_bytes in 1usize..300,
        ) {
            let events: Vec<String> = (0..12).map(|i| LOOKALIKE.replace("\"ts\": 3", &format!("\"ts\": {i}"))).collect();
            let mut json = format!(r#"{{"traceEvents": [{}], "baseTimeNanoseconds": 7}}"#, events.join(", ")).into_bytes();
            // The comma after entry `i`, overwritten (the separators are few among the bytes).
            if let Some((i, b)) = separator {
                let at = "{\"traceEvents\": [".len() + (i + 1) * LOOKALIKE.len() + i * 2 + usize::from(i >= 10);
                proptest::prop_assert_eq!(json[at], b',');
                json[at] = b;
            }
            for (at, b) in edits {
                let at = at % json.len();
                json[at] = b;
            }
            if let Some(c) = cut {
                json.truncate(c % json.len());
            }
            for (strict, lean) in [(true, true), (false, false)] {
                let opts = ReadOptions { strict, drop_extra_args: lean, ..Default::default() };
                let mut state = State::new(opts);
                if parse_in_batches(Vec::new(), Trickle { bytes: &json, turn: 0 }, &mut state, batch_bytes) {
                    proptest::prop_assert_eq!(Some(state.into_result()), parse_slice(&json, opts).ok());
                }
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
            let whole = Window { buf: bytes.clone(), pos: 0, base: 0, rest: std::io::empty(), eof: false, failed: false }.value_len();
            proptest::prop_assert_eq!(whole, want);
            let trickled = Window { buf: Vec::new(), pos: 0, base: 0, rest: Trickle { bytes: &bytes, turn: 0 }, eof: false, failed: false }.value_len();
            proptest::prop_assert_eq!(trickled, want);
        }
    }
}

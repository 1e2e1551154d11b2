//! Reading Kineto / torch.profiler Chrome-trace JSON (`.json` or `.json.gz`) into a
//! [`Trace`]: the file is decompressed and deserialized event by event into typed structs,
//! from memory below [`SPLIT_MIN_BYTES`] of JSON (by the size the file or its gzip trailer
//! states; up to [`SLICE_PARSE_MAX_BYTES`] where none is known) and split into events
//! beyond ([`super::split`]; streamed where the split gives up); only each
//! event's `args` object is held as a `serde_json::Value` map, and only until its typed
//! fields are pulled out. With [`ReadOptions::drop_extra_args`] that map holds only what the
//! typed fields, metadata names and counters use (`LeanArgs`).

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use gpuspan_core::trace::{Category, Trace, TraceEvent};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ReadError, ReadErrorKind};
use super::keys;

/// Reads a Kineto / torch.profiler trace file into a [`Trace`].
///
/// - Compression is detected by content (gzip magic bytes `1f 8b`), not by file name, so a
///   `.json` that is really gzipped and a `.json.gz` that is plain both read.
/// - Both Kineto category schemas are accepted: current (`kernel`, `cuda_runtime`,
///   `gpu_memcpy`, `gpu_memset`, `cuda_driver`, `user_annotation`, `gpu_user_annotation`,
///   `cpu_op`, `python_function`) and old (`Kernel`, `Runtime`, `Memcpy`, `Memset`,
///   `Operator`, with `tid` strings such as `"stream 7"`, reduced to their number).
/// - Only complete events (`ph: "X"`) become [`Trace::events`], in file order, `ts` / `dur`
///   kept exactly as written (µs); `args` fill the typed [`TraceEvent`] fields (`device`,
///   `stream`, `correlation`, `External id` / old `external id`, `grid`, `block`,
///   `registers per thread`, `shared memory`, `bytes`, `gpuspan.stage|step|trace_id|scope`)
///   and every other arg, or a typed one of an unexpected type, goes to `extra_args`.
/// - `M` events `process_name` / `thread_name` fill [`Trace::process_names`] /
///   [`Trace::thread_names`]; `baseTimeNanoseconds`, `schemaVersion` and `deviceProperties`
///   are kept; `C` events (counters) with a name and a numeric `ts` become
///   [`Trace::counters`] with their numeric `args` (others are skipped, never an error);
///   other top-level keys and other event phases (flows, instants) are skipped.
/// - Lenient where harmless: numbers may be ints, floats or numeric strings (`ts` too);
///   a `pid` / `tid` string that is not a number (Kineto's `"Spans"` row) becomes -1; a
///   missing `dur` is 0. Strict where it matters: an `X` event without a numeric `ts`, a
///   non-numeric `dur`, or a `traceEvents` entry that is not an object is an error naming
///   the event's index. A bare JSON array of events (Chrome's "JSON Array Format") is
///   accepted as well.
///
/// Never panics; every failure is a [`ReadError`] whose `Display` is one line naming the
/// file. This is the strict reader; [`read_trace_with`] can skip malformed events instead.
pub fn read_trace(path: &Path) -> Result<Trace, ReadError> {
    read_trace_with(path, ReadOptions { strict: true, ..ReadOptions::default() }).map(|(t, _)| t)
}

/// How [`read_trace_with`] treats malformed events.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// `true`: [`read_trace`]'s rules (a bad `X` event is an error; a missing `dur` is 0;
    /// events of an unknown phase are ignored). `false` (lenient): every malformed event is
    /// skipped and counted in [`Skipped`]: a `traceEvents` entry that is not an object, an
    /// `X` event without a numeric `ts` or `dur` (a missing `dur` too), an event whose `ph`
    /// is missing or not one of Chrome's phases. Only a file that is not a trace at all
    /// (not JSON, no `traceEvents`) is refused.
    pub strict: bool,
    /// `true`: each event's args that have no typed field are dropped instead of kept in
    /// [`TraceEvent::extra_args`](gpuspan_core::trace::TraceEvent::extra_args). For readers
    /// that never look at them (`gpuspan stats`, `diff`, `waterfall`): on a 35 MB trace with
    /// Kineto's per-kernel occupancy args they are most of what a read holds. `false` (the
    /// default): nothing is lost, as a round trip needs.
    pub drop_extra_args: bool,
    /// With `drop_extra_args` (a lean read): which host-side op events (`cpu_op`,
    /// `python_function`: half or more of a torch.profiler trace's bytes) are kept, by name;
    /// the others are still checked as any complete event is (a malformed one is an error,
    /// or skipped and counted, alike), but their args are skipped unread and the event is not
    /// kept. `None` (the default): all are kept. `gpuspan stats`, `diff` and `waterfall` keep
    /// only the step ranges and step hints they read
    /// ([`gpuspan_core::step_detect::is_step_name`]).
    pub keep_host_op: Option<fn(&str) -> bool>,
}

/// The events a lenient read skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// How many.
    pub count: usize,
    /// The first one: its file (for a directory read), 0-based index in `traceEvents`, and
    /// why.
    pub first: Option<(std::path::PathBuf, usize, String)>,
}

impl Skipped {
    /// Adds `other` (a later file's skips).
    pub fn add(&mut self, other: Skipped) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    /// The one warning line for people, or `None` when nothing was skipped:
    /// `<file>: skipped N malformed event(s) (first: event I: why); --strict refuses them`.
    pub fn warning(&self) -> Option<String> {
        let (file, index, why) = self.first.as_ref()?;
        Some(format!(
            "{}: skipped {} malformed event{} (first: event {index}: {why}); --strict refuses them",
            file.display(),
            self.count,
            if self.count == 1 { "" } else { "s" }
        ))
    }
}

/// Chrome trace-event phases ("Trace Event Format": duration B / E, complete X, instant
/// i / I, counter C, async b / n / e and legacy S / T / p / F, flow s / t / f, sample P,
/// object N / O / D, metadata M, memory dump V / v, mark R, clock sync c, context ( / ),
/// linked id =). Anything else is an unknown phase.
pub(super) const CHROME_PHASES: &[&str] = &[
    "B", "E", "X", "i", "I", "C", "b", "n", "e", "S", "T", "p", "F", "s", "t", "f", "P", "N", "O", "D", "M", "V", "v",
    "R", "c", "(", ")", "=",
];

/// [`read_trace`] with [`ReadOptions`]: the trace, and what a lenient read skipped.
///
/// # Errors
/// As [`read_trace`]; in lenient mode a malformed event is never one.
pub fn read_trace_with(path: &Path, opts: ReadOptions) -> Result<(Trace, Skipped), ReadError> {
    let open = || -> std::io::Result<Box<dyn BufRead>> { Ok(Box::new(BufReader::with_capacity(1 << 16, File::open(path)?))) };
    let size_hint = |gzip: bool| -> Option<u64> {
        let mut f = File::open(path).ok()?;
        if !gzip {
            return f.metadata().ok().map(|m| m.len());
        }
        f.seek(SeekFrom::End(-4)).ok()?;
        let mut isize = [0u8; 4];
        f.read_exact(&mut isize).ok()?;
        Some(u64::from(u32::from_le_bytes(isize)))
    };
    read_source(&open, &size_hint, path, opts)
}

/// [`read_trace_with`] over bytes already in memory (plain JSON or gzip), for the fuzzer
/// (`crates/gpuspan-fuzz`) and callers that hold a trace themselves. Errors name `path`.
pub fn read_trace_bytes(bytes: &[u8], path: &Path, opts: ReadOptions) -> Result<(Trace, Skipped), ReadError> {
    let open = || -> std::io::Result<Box<dyn BufRead + '_>> { Ok(Box::new(bytes)) };
    let size_hint = |gzip: bool| -> Option<u64> {
        if !gzip {
            return Some(bytes.len() as u64);
        }
        let isize: [u8; 4] = bytes.get(bytes.len().checked_sub(4)?..)?.try_into().ok()?;
        Some(u64::from(u32::from_le_bytes(isize)))
    };
    read_source(&open, &size_hint, path, opts)
}

/// Opens a trace's bytes from the start (a file, or bytes in memory): once, or twice when a
/// large trace is read again by the streaming parse ([`super::split`]).
type Open<'a> = dyn Fn() -> std::io::Result<Box<dyn BufRead + 'a>> + 'a;

/// A trace's decompressed size as its container states it, given whether it is gzip: a
/// plain file's length, or a gzip stream's `ISIZE` trailer (RFC 1952 §2.3.1: the last
/// member's input size modulo 2^32, so a multi-member stream is at least that large, and a
/// size past 4 GiB may read as less). Only a choice of read path rests on it
/// ([`parse`]), never what the trace reads as; `None` where it cannot be had.
type SizeHint<'a> = dyn Fn(bool) -> Option<u64> + 'a;

/// The read behind both: gzip or plain by the first two bytes, errors and the first
/// skipped event naming `path`.
fn read_source<'a>(open: &Open<'a>, size_hint: &SizeHint<'_>, path: &Path, opts: ReadOptions) -> Result<(Trace, Skipped), ReadError> {
    let err = |kind| ReadError::new(path, kind);
    let mut buf = open().map_err(|e| err(ReadErrorKind::Io(e)))?;
    let head = buf.fill_buf().map_err(|e| err(ReadErrorKind::Io(e)))?;
    if head.is_empty() {
        return Err(err(ReadErrorKind::Empty));
    }
    let gzip = head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    // The decompressed JSON, from the start: `buf` the first time, reopened after that.
    let decoded = |buf: Box<dyn BufRead + 'a>| -> Box<dyn Read + 'a> {
        if gzip {
            Box::new(BufReader::with_capacity(1 << 16, flate2::bufread::MultiGzDecoder::new(buf)))
        } else {
            Box::new(buf)
        }
    };
    let again = || open().map(decoded);
    let (trace, mut skipped) = parse(decoded(buf), &again, size_hint(gzip), gzip, opts).map_err(err)?;
    if let Some(first) = skipped.first.as_mut() {
        first.0 = path.to_path_buf();
    }
    Ok((trace, skipped))
}

/// Parse state shared by the visitors: the trace being built and the first semantic error
/// (reported instead of serde's generic one).
#[derive(Default)]
pub(super) struct State {
    trace: Trace,
    /// Skip malformed events instead of failing ([`ReadOptions::strict`] false).
    lenient: bool,
    /// [`ReadOptions::drop_extra_args`].
    pub(super) drop_extra_args: bool,
    /// [`ReadOptions::keep_host_op`].
    keep_host_op: Option<fn(&str) -> bool>,
    skipped: Skipped,
    pub(super) saw_trace_events: bool,
    error: Option<ReadErrorKind>,
    /// Index of the event being deserialized when serde itself failed.
    failed_index: Option<usize>,
    /// Index of the next `traceEvents` entry.
    pub(super) next_index: usize,
}

impl State {
    pub(super) fn new(opts: ReadOptions) -> State {
        State { lenient: !opts.strict, drop_extra_args: opts.drop_extra_args, keep_host_op: opts.keep_host_op, ..State::default() }
    }

    /// How this read reads each `traceEvents` entry.
    pub(super) fn event_read(&self) -> EventRead {
        if self.drop_extra_args {
            EventRead::Lean { keep_host_op: self.keep_host_op }
        } else {
            EventRead::Full
        }
    }

    /// What was read.
    pub(super) fn into_result(self) -> (Trace, Skipped) {
        (self.trace, self.skipped)
    }
}

/// [`read_trace_bytes`] of plain JSON, parsed whole from the slice (the reference the split
/// read is checked against).
#[cfg(test)]
pub(super) fn parse_slice(json: &[u8], opts: ReadOptions) -> Result<(Trace, Skipped), ReadErrorKind> {
    parse_from(serde_json::Deserializer::from_slice(json), false, opts)
}

/// Largest (decompressed) trace parsed from memory whole: 8 MiB. serde_json scans strings
/// of a slice with `memchr` where its reader path goes byte by byte through `Read` (its
/// `IoRead::parse_str` was 18 % of `gpuspan stats` on a 0.7 MB trace), so a trace up to
/// this size is read whole first; a larger one is split into events, each parsed from
/// memory ([`super::split`]), so memory stays bounded, and streamed only when the split
/// gives up.
pub const SLICE_PARSE_MAX_BYTES: usize = 8 << 20;

/// Smallest trace (decompressed JSON, by its [`SizeHint`]) split into events as it is
/// decompressed ([`super::split`]) instead of parsed whole from memory: 3 MiB. The split
/// parses on two threads while the stream is still being inflated; below this size the
/// thread's start and the per-batch work cost more than it saves (`gpuspan stats`, on
/// this project's 2-core VM: h100-qwen-prefill, 5.4 MB, 19-21 -> 15 ms; h100-vit-falconsai,
/// 1.4 MB, 6.2 -> 7.8 ms).
pub const SPLIT_MIN_BYTES: usize = 3 << 20;

/// Parses the decompressed JSON `reader`: from memory up to [`SLICE_PARSE_MAX_BYTES`]; past
/// that split into events ([`super::split`]), or, when the split gives up, streamed from
/// the start of `again()` (the same JSON read anew). `size_hint` ([`SizeHint`]): from
/// [`SPLIT_MIN_BYTES`], the split starts at once, its helper parsing while the rest is still
/// being decompressed (on a100-hta-control its first 8 MiB, read whole, took a tenth of the
/// read, alone); below it, the buffer is sized once.
fn parse<'a>(
    mut reader: Box<dyn Read + 'a>,
    again: &dyn Fn() -> std::io::Result<Box<dyn Read + 'a>>,
    size_hint: Option<u64>,
    gzip: bool,
    opts: ReadOptions,
) -> Result<(Trace, Skipped), ReadErrorKind> {
    let mut state = State::new(opts);
    if size_hint.is_some_and(|n| n >= SPLIT_MIN_BYTES as u64) {
        if super::split::parse(Vec::new(), reader, &mut state) {
            return Ok(state.into_result());
        }
        return parse_again(again, gzip, opts);
    }
    let mut head = Vec::with_capacity(size_hint.map_or(0, |n| n as usize + 1));
    (&mut reader)
        .take(SLICE_PARSE_MAX_BYTES as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| map_json_error(serde_json::Error::io(e), gzip, None))?;
    if head.len() <= SLICE_PARSE_MAX_BYTES {
        return parse_from(serde_json::Deserializer::from_slice(&head), gzip, opts);
    }
    if super::split::parse(head, reader, &mut state) {
        return Ok(state.into_result());
    }
    drop(state);
    parse_again(again, gzip, opts)
}

/// The streaming parse of the JSON read anew, where the split gave up.
fn parse_again<'a>(again: &dyn Fn() -> std::io::Result<Box<dyn Read + 'a>>, gzip: bool, opts: ReadOptions) -> Result<(Trace, Skipped), ReadErrorKind> {
    // serde_json's reader path reads byte by byte: through a buffer (without it the 35 MB
    // fixtures took 1.6x as long).
    let rest = BufReader::with_capacity(1 << 16, again().map_err(|e| map_json_error(serde_json::Error::io(e), gzip, None))?);
    parse_from(serde_json::Deserializer::from_reader(rest), gzip, opts)
}

/// One top-level entry other than `traceEvents` of a split read ([`super::split`]): `key`
/// as written (with its quotes) and its value's bytes, read by the streaming parse's own
/// code. `false` when that fails (the split gives up).
pub(super) fn top_level_entry(state: &mut State, key: &[u8], value: &[u8]) -> bool {
    let mut doc = Vec::with_capacity(key.len() + value.len() + 3);
    doc.push(b'{');
    doc.extend_from_slice(key);
    doc.push(b':');
    doc.extend_from_slice(value);
    doc.push(b'}');
    let mut de = serde_json::Deserializer::from_slice(&doc);
    TopSeed { state }.deserialize(&mut de).and_then(|()| de.end()).is_ok()
}

/// The `traceEvents` entry at the start of `bytes` (a split read), parsed as the streaming
/// parse parses one, and the number of bytes it takes; serde_json's error where it refuses
/// them (`is_eof` where they end inside the entry).
///
/// The entry is read by serde_json's `StreamDeserializer`, the one place it tells how many
/// bytes a value took; that takes a `Deserialize` type, not a seed, so `how` reaches the
/// [`SlotSeed`] through a thread-local ([`EntrySlot`]).
pub(super) fn slot_at(bytes: &[u8], how: EventRead) -> Result<(Slot, usize), serde_json::Error> {
    ENTRY_READ.with(|r| r.set(how));
    let mut entries = serde_json::Deserializer::from_slice(bytes).into_iter::<EntrySlot>();
    match entries.next() {
        Some(Ok(EntrySlot(slot))) => Ok((slot, entries.byte_offset())),
        Some(Err(e)) => Err(e),
        // Nothing but whitespace: the entry is still to come (serde_json's EOF error for
        // an empty input; it cannot be `Ok`).
        None => serde_json::from_slice::<IgnoredAny>(b"").map(|_| (Slot::NotObject, 0)),
    }
}

thread_local! {
    /// How [`EntrySlot`] reads an entry on this thread ([`slot_at`]).
    static ENTRY_READ: std::cell::Cell<EventRead> = const { std::cell::Cell::new(EventRead::Full) };
}

/// A [`Slot`] read as this thread's [`ENTRY_READ`] says.
struct EntrySlot(Slot);

impl<'de> Deserialize<'de> for EntrySlot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EntrySlot, D::Error> {
        SlotSeed { how: ENTRY_READ.with(|r| r.get()) }.deserialize(d).map(EntrySlot)
    }
}

fn parse_from<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    gzip: bool,
    opts: ReadOptions,
) -> Result<(Trace, Skipped), ReadErrorKind> {
    let mut state = State::new(opts);
    let res = TopSeed { state: &mut state }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match res {
        Ok(()) if !state.saw_trace_events => {
            Err(ReadErrorKind::NotKineto("no \"traceEvents\" array".into()))
        }
        Ok(()) => Ok((state.trace, state.skipped)),
        Err(e) => Err(match state.error.take() {
            Some(kind) => kind,
            None => map_json_error(e, gzip, state.failed_index),
        }),
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match s.strip_suffix(&suffix) {
        Some(m) => m.to_string(),
        None => s,
    }
}

fn map_json_error(e: serde_json::Error, gzip: bool, failed_index: Option<usize>) -> ReadErrorKind {
    use serde_json::error::Category as C;
    match e.classify() {
        C::Io => {
            let io: std::io::Error = e.into();
            let corrupt = matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::UnexpectedEof
            );
            if gzip && corrupt {
                if io.kind() == std::io::ErrorKind::UnexpectedEof {
                    ReadErrorKind::Gzip(format!("truncated ({io})"))
                } else {
                    ReadErrorKind::Gzip(io.to_string())
                }
            } else {
                ReadErrorKind::Io(io)
            }
        }
        C::Syntax | C::Eof => ReadErrorKind::Json {
            line: e.line(),
            column: e.column(),
            msg: strip_position(&e),
        },
        C::Data => {
            let msg = format!(
                "{} (line {} column {})",
                strip_position(&e),
                e.line(),
                e.column()
            );
            match failed_index {
                Some(index) => ReadErrorKind::BadEvent { index, msg },
                None => ReadErrorKind::NotKineto(msg),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lenient scalar
// ---------------------------------------------------------------------------------------

/// Any JSON value, reduced to what the reader needs from a scalar field; arrays and objects
/// are skipped without being built.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) enum Scalar {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// One of [`CHROME_PHASES`], as a lean read holds an event's `ph` (no `String` an
    /// event); otherwise what [`Scalar::Str`] of it would be.
    Phase(&'static str),
    Compound,
}

impl Scalar {
    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::UInt(u) => Some(*u as f64),
            Scalar::Float(f) if f.is_finite() => Some(*f),
            Scalar::Str(_) | Scalar::Phase(_) => self.as_str()?.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(*i),
            Scalar::UInt(u) => i64::try_from(*u).ok(),
            Scalar::Float(f) => f64_to_i64(*f),
            Scalar::Str(_) | Scalar::Phase(_) => {
                let t = self.as_str()?.trim();
                t.parse::<i64>()
                    .ok()
                    .or_else(|| t.parse::<f64>().ok().and_then(f64_to_i64))
            }
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            Scalar::Phase(p) => Some(p),
            _ => None,
        }
    }

    /// `pid` / `tid`: a number, a numeric string, or a string ending in a number
    /// (`"stream 7"`); anything else is -1.
    fn as_id(&self) -> i64 {
        if let Some(n) = self.as_i64() {
            return n;
        }
        if let Some(s) = self.as_str() {
            if let Some(n) = s
                .split_whitespace()
                .last()
                .and_then(|t| t.parse::<i64>().ok())
            {
                return n;
            }
        }
        -1
    }

    fn into_text(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Phase(p) => p.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::UInt(u) => u.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null | Scalar::Compound => String::new(),
        }
    }
}

pub(super) fn f64_to_i64(f: f64) -> Option<i64> {
    // -2^63 and 2^63 are exact f64s; i64 holds [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) {
        Some(f as i64)
    } else {
        None
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

pub(super) struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::UInt(v),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        Scalar::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Compound)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Compound)
    }
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

/// One `traceEvents` entry as written, its `args` a `serde_json::Value` (a lean read builds
/// only part of them: [`super::lean`]); unknown keys (`id`, `bp`, `s`, ...) are skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawEvent {
    pub(super) ph: Scalar,
    pub(super) cat: Cat,
    pub(super) name: Scalar,
    pub(super) pid: Scalar,
    pub(super) tid: Scalar,
    pub(super) ts: Scalar,
    pub(super) dur: Scalar,
    pub(super) args: Option<Value>,
}

/// An event's `cat` as the event will hold it: a string is read straight into its
/// [`Category`] (no `String` for the categories Kineto writes), any other scalar becomes
/// [`Category::Other`] with its text, and null, an array or an object is no category.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Cat(pub(super) Option<Category>);

impl Cat {
    fn from_scalar(s: Scalar) -> Cat {
        Cat(match s {
            Scalar::Null | Scalar::Compound => None,
            Scalar::Str(s) => Some(Category::from_kineto(&s)),
            Scalar::Phase(p) => Some(Category::from_kineto(p)),
            other => Some(Category::Other(other.into_text())),
        })
    }
}

impl<'de> Deserialize<'de> for Cat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CatVisitor)
    }
}

struct CatVisitor;

impl<'de> Visitor<'de> for CatVisitor {
    type Value = Cat;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Cat, E> {
        Ok(Cat(Some(Category::from_kineto(v))))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cat, E> {
        ScalarVisitor.visit_bool(v).map(Cat::from_scalar)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cat, E> {
        ScalarVisitor.visit_i64(v).map(Cat::from_scalar)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cat, E> {
        ScalarVisitor.visit_u64(v).map(Cat::from_scalar)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cat, E> {
        ScalarVisitor.visit_f64(v).map(Cat::from_scalar)
    }
    fn visit_none<E>(self) -> Result<Cat, E> {
        Ok(Cat(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Cat, D::Error> {
        Cat::deserialize(d)
    }
    visit_others_as!('de, Cat(None); unit seq map);
}

/// A `traceEvents` entry. The events are boxed (one allocation per event kept or checked):
/// a split read moves each slot four or five times (`StreamDeserializer`, a batch parsed
/// ahead, `take_slot`), and an unboxed slot was the size of its largest variant, about 440
/// bytes, for every entry, the declined ones too. Boxed, `callgrind` of `gpuspan stats`
/// counted 1,179 -> 1,105 M instructions on a100-hta-control (split) and 23.7 -> 22.9 M on
/// h100-bert-small (whole slice); unboxed had been faster when the entries were read in
/// place by the streaming parse (issue 14, item 4).
pub(super) enum Slot {
    /// Not a JSON object.
    NotObject,
    /// An event with its args as a `Value` (every event of a full read).
    Raw(Box<RawEvent>),
    /// A complete event read lean, its typed args only ([`super::lean`]).
    LeanX(Box<super::lean::LeanX>),
    /// An entry a lean read found nothing to add from and nothing to count skipped: a host
    /// op the read's filter declined ([`ReadOptions::keep_host_op`]) whose `ts` and `dur` are
    /// numbers (a valid complete event, strict or lenient), or an entry of one of Chrome's
    /// phases the trace does not hold (a flow, an instant).
    Unkept,
}

/// How a `traceEvents` entry is read ([`State::event_read`]).
#[derive(Clone, Copy)]
pub(super) enum EventRead {
    /// Every field and arg ([`RawEvent`]).
    Full,
    /// Lean ([`super::lean`]), with the read's host-op filter.
    Lean { keep_host_op: Option<fn(&str) -> bool> },
}

/// Reads a [`Slot`] as `how` says.
struct SlotSeed {
    how: EventRead,
}

impl<'de> DeserializeSeed<'de> for SlotSeed {
    type Value = Slot;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Slot, D::Error> {
        d.deserialize_any(SlotVisitor { how: self.how })
    }
}

struct SlotVisitor {
    how: EventRead,
}

impl<'de> Visitor<'de> for SlotVisitor {
    type Value = Slot;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a trace event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Slot, A::Error> {
        match self.how {
            EventRead::Lean { keep_host_op } => super::lean::read_event(map, keep_host_op),
            EventRead::Full => RawEvent::deserialize(de::value::MapAccessDeserializer::new(map)).map(|r| Slot::Raw(Box::new(r))),
        }
    }
    visit_others_as!('de, Slot::NotObject; seq bool i64 u64 f64 str unit);
}

fn short(name: &str) -> Cow<'_, str> {
    const MAX: usize = 60;
    if name.chars().count() <= MAX {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{}…", name.chars().take(MAX).collect::<String>()))
    }
}

fn arg_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().and_then(|u| i64::try_from(u).ok()))
            .or_else(|| n.as_f64().and_then(f64_to_i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn arg_dim3(v: &Value) -> Option<[i64; 3]> {
    match v {
        Value::Array(a) if a.len() == 3 => {
            Some([arg_int(&a[0])?, arg_int(&a[1])?, arg_int(&a[2])?])
        }
        _ => None,
    }
}

fn arg_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Moves the typed args into `ev`'s fields; the rest (and typed keys whose value has an
/// unexpected type) into `ev.extra_args`, so nothing is lost, unless `drop_extra_args`.
/// Every key matched here is also in `lean::lean_keeps` and [`super::lean::XArgs`].
fn take_args(ev: &mut TraceEvent, args: Map<String, Value>, drop_extra_args: bool) {
    for (k, v) in args {
        let used = match k.as_str() {
            keys::DEVICE => set(&mut ev.device, arg_int(&v)),
            keys::STREAM => set(&mut ev.stream, arg_int(&v)),
            keys::CORRELATION => set(&mut ev.correlation, arg_int(&v)),
            keys::EXTERNAL_ID | keys::EXTERNAL_ID_OLD => set(&mut ev.external_id, arg_int(&v)),
            keys::GRID => set(&mut ev.grid, arg_dim3(&v)),
            keys::BLOCK => set(&mut ev.block, arg_dim3(&v)),
            keys::REGISTERS => set(&mut ev.registers_per_thread, arg_int(&v)),
            keys::SHARED_MEMORY => set(&mut ev.shared_memory_bytes, arg_int(&v)),
            keys::BYTES => set(&mut ev.bytes, arg_int(&v)),
            keys::STAGE => set(&mut ev.stage, arg_string(&v)),
            keys::STEP => set(&mut ev.step, arg_string(&v)),
            keys::TRACE_ID => set(&mut ev.trace_id, arg_string(&v)),
            keys::SCOPE => set(&mut ev.scope, arg_string(&v)),
            _ => false,
        };
        if !used && !drop_extra_args {
            ev.extra_args.insert(k, v);
        }
    }
}

/// Sets `slot` to `value` when the slot is empty and the value parsed; says whether it did.
fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    if slot.is_none() && value.is_some() {
        *slot = value;
        true
    } else {
        false
    }
}

fn complete_event(raw: RawEvent, lenient: bool, drop_extra_args: bool) -> Result<TraceEvent, String> {
    let mut ev = complete_fields(raw.cat, raw.name, raw.pid, raw.tid, raw.ts, raw.dur, lenient)?;
    if let Some(Value::Object(args)) = raw.args {
        take_args(&mut ev, args, drop_extra_args);
    }
    Ok(ev)
}

/// A complete event read lean ([`super::lean`]): its typed args set straight.
fn complete_lean(x: super::lean::LeanX, lenient: bool) -> Result<TraceEvent, String> {
    let mut ev = complete_fields(x.cat, x.name, x.pid, x.tid, x.ts, x.dur, lenient)?;
    x.args.apply(&mut ev);
    Ok(ev)
}

/// A complete event's fields other than its args; the error says which is missing or not
/// a number.
fn complete_fields(cat: Cat, name: Scalar, pid: Scalar, tid: Scalar, ts: Scalar, dur: Scalar, lenient: bool) -> Result<TraceEvent, String> {
    let name = name.into_text();
    let ts_us = ts.as_f64().ok_or_else(|| {
        format!(
            "complete (X) event {:?} has no numeric \"ts\"",
            short(&name)
        )
    })?;
    let dur_us = match dur {
        Scalar::Null if lenient => {
            return Err(format!("complete (X) event {:?} has no \"dur\"", short(&name)));
        }
        Scalar::Null => 0.0,
        d => d.as_f64().ok_or_else(|| {
            format!(
                "complete (X) event {:?} has a non-numeric \"dur\"",
                short(&name)
            )
        })?,
    };
    Ok(TraceEvent {
        cat: cat.0,
        name,
        pid: pid.as_id(),
        tid: tid.as_id(),
        ts_us,
        dur_us,
        ..TraceEvent::default()
    })
}

fn metadata_event(trace: &mut Trace, raw: RawEvent) {
    let label = match &raw.args {
        Some(Value::Object(a)) => match a.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => return,
        },
        _ => return,
    };
    match raw.name.as_str() {
        Some("process_name") => {
            trace.process_names.insert(raw.pid.as_id(), label);
        }
        Some("thread_name") => {
            trace
                .thread_names
                .insert((raw.pid.as_id(), raw.tid.as_id()), label);
        }
        _ => {}
    }
}

/// A `C` event into [`Trace::counters`]: needs a string `name` and a finite numeric `ts`;
/// only the numeric `args` are kept (Chrome's viewer draws only those).
fn counter_event(trace: &mut Trace, raw: RawEvent) {
    let (Some(name), Some(ts_us)) = (raw.name.as_str(), raw.ts.as_f64().filter(|t| t.is_finite())) else { return };
    let values = match &raw.args {
        Some(Value::Object(a)) => a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64().filter(|v| v.is_finite())?))).collect(),
        _ => Vec::new(),
    };
    trace.counters.push(gpuspan_core::trace::CounterEvent { name: name.to_string(), pid: raw.pid.as_id(), ts_us, values });
}

// ---------------------------------------------------------------------------------------
// Top level and the traceEvents array
// ---------------------------------------------------------------------------------------

struct TopSeed<'a> {
    state: &'a mut State,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with a \"traceEvents\" array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_ref() {
                "traceEvents" => {
                    self.state.saw_trace_events = true;
                    map.next_value_seed(EventsSeed {
                        state: &mut *self.state,
                    })?;
                }
                "baseTimeNanoseconds" => {
                    let v: Scalar = map.next_value()?;
                    match v.as_i64() {
                        Some(n) => self.state.trace.base_time_ns = Some(n),
                        None if v == Scalar::Null => {}
                        None => {
                            self.state.error = Some(ReadErrorKind::NotKineto(
                                "\"baseTimeNanoseconds\" is not an integer".into(),
                            ));
                            return Err(de::Error::custom("baseTimeNanoseconds"));
                        }
                    }
                }
                "schemaVersion" => {
                    let v: Scalar = map.next_value()?;
                    self.state.trace.schema_version = v.as_i64();
                }
                "deviceProperties" => {
                    let v: Value = map.next_value()?;
                    if !v.is_null() {
                        self.state.trace.device_properties = Some(v);
                    }
                }
                "distributedInfo" => {
                    let v: Value = map.next_value()?;
                    if !v.is_null() {
                        self.state.trace.distributed_info = Some(v);
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    /// Chrome's "JSON Array Format": the file is the event array itself.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.state.saw_trace_events = true;
        EventsSeed { state: self.state }.visit_seq(seq)
    }
}

struct EventsSeed<'a> {
    state: &'a mut State,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the \"traceEvents\" array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.state.next_index = 0;
        loop {
            let index = self.state.next_index;
            self.state.failed_index = Some(index);
            let slot = match seq.next_element_seed(SlotSeed { how: self.state.event_read() })? {
                None => break,
                Some(slot) => slot,
            };
            if !take_slot(self.state, slot, index) {
                return Err(de::Error::custom("bad event"));
            }
        }
        self.state.failed_index = None;
        Ok(())
    }
}

/// Adds `traceEvents` entry `index` to the trace being built (or counts it skipped, or, in
/// a strict read, records why it is an error: `false`).
pub(super) fn take_slot(state: &mut State, slot: Slot, index: usize) -> bool {
    state.next_index = index + 1;
    let lenient = state.lenient;
    let bad = match slot {
        Slot::NotObject => Some("not a JSON object".to_string()),
        Slot::Unkept => None,
        Slot::LeanX(x) => match (x.keep, complete_lean(*x, lenient)) {
            (true, Ok(ev)) => {
                state.trace.events.push(ev);
                None
            }
            (false, Ok(_)) => None,
            (_, Err(msg)) => Some(msg),
        },
        Slot::Raw(raw) => match raw.ph.as_str() {
            Some("X") => match complete_event(*raw, lenient, state.drop_extra_args) {
                Ok(ev) => {
                    state.trace.events.push(ev);
                    None
                }
                Err(msg) => Some(msg),
            },
            Some("M") => {
                metadata_event(&mut state.trace, *raw);
                None
            }
            Some("C") => {
                counter_event(&mut state.trace, *raw);
                None
            }
            Some(ph) if CHROME_PHASES.contains(&ph) => None,
            // Ignored when strict (as always); skipped and counted when lenient.
            Some(ph) if lenient => Some(format!("unknown phase {:?}", short(ph))),
            None if lenient => Some("no \"ph\" (phase)".to_string()),
            _ => None,
        },
    };
    if let Some(msg) = bad {
        if !lenient {
            state.error = Some(ReadErrorKind::BadEvent { index, msg });
            return false;
        }
        state.skipped.count += 1;
        if state.skipped.first.is_none() {
            state.skipped.first = Some((std::path::PathBuf::new(), index, msg));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse` of `json` with `size_hint`, as `Debug` text (errors have no `PartialEq`).
    fn parsed(json: &[u8], size_hint: Option<u64>, opts: ReadOptions) -> String {
        let again = || -> std::io::Result<Box<dyn Read + '_>> { Ok(Box::new(json)) };
        format!("{:?}", parse(Box::new(json), &again, size_hint, false, opts))
    }

    /// The size hint picks a read path, never what a trace reads as: a trace read whole
    /// (no hint, a small one) and split from the start (a hint of 3 MiB or more, right or wrong)
    /// give the same events, or the same error with the same line and column.
    #[test]
    fn the_size_hint_changes_no_read() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/traces/h100-bert-small.json.gz");
        let mut bert = Vec::new();
        flate2::read::MultiGzDecoder::new(File::open(fixture).unwrap()).read_to_end(&mut bert).unwrap();
        let good = br#"{"schemaVersion": 1, "traceEvents": [
          {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1.5, "dur": 2, "args": {"stream": 7}},
          {"ph": "f", "id": 1, "ts": 1.0}, {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "gpu"}}
        ]}"#;
        let syntax = b"{\"traceEvents\": [\n  {\"ph\": \"X\", \"ts\": 1,, \"dur\": 2}\n]}";
        let bad_event = br#"{"traceEvents": [{"ph": "X", "name": "no ts", "dur": 2}]}"#;
        let no_events = br#"{"displayTimeUnit": "ns"}"#;
        for (what, json) in [("bert-small", &bert[..]), ("good", good), ("syntax", syntax), ("bad event", bad_event), ("no events", no_events)] {
            for strict in [false, true] {
                for drop_extra_args in [false, true] {
                    let opts = ReadOptions { strict, drop_extra_args, ..ReadOptions::default() };
                    let whole = parsed(json, None, opts);
                    assert!(whole.starts_with(if what == "syntax" || what == "no events" || (what == "bad event" && strict) { "Err" } else { "Ok" }), "{what}: {whole}");
                    for hint in [Some(0), Some(json.len() as u64), Some(u64::from(u32::MAX))] {
                        assert_eq!(parsed(json, hint, opts), whole, "{what}, strict {strict}, lean {drop_extra_args}, hint {hint:?}");
                    }
                }
            }
        }
    }
}

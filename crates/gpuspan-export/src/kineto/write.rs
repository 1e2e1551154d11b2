//! Writing a [`Trace`] as a current-schema Kineto Chrome-trace JSON file, streamed with
//! serde (no intermediate `serde_json::Value` of the whole file).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use gpuspan_core::trace::{EventShape, EventSource, Trace, TraceEvent};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::json_out::JsonOut;

/// Kineto's JSON schema version written when the trace does not carry one.
const DEFAULT_SCHEMA_VERSION: i64 = 1;

/// `cat` of the `M` metadata events: Chrome's own, so every written event has a name and a
/// category (Kineto writes none; readers ignore it).
const META_CAT: &str = "__metadata";

/// Writes `trace` to `path` as a current-schema Kineto trace (what torch.profiler ≥ 2.x
/// writes), gzip-compressed when `path` ends in `.gz`.
///
/// The write is atomic: the file is written to `<path>.tmp`, flushed and synced, then
/// renamed over `path`, so a reader never sees a half-written capture; on error the
/// temporary file is removed.
///
/// Content: top-level `schemaVersion` (the trace's, else 1), `baseTimeNanoseconds` and
/// `deviceProperties` when set, and `traceEvents` holding
/// - `M` metadata (`cat: "__metadata"`, as Chrome writes them): `process_name` for every
///   named process and `thread_name` for every named thread of the trace, plus names for
///   rows that have events but no name: `"stream N"` for the (device, stream) rows of kernels
///   / memcpy / memset / gpu_user_annotation and `"GPU N"` for their process, as Kineto names
///   them, `"thread N"` / `"process N"` for any other row; so every row a viewer draws is
///   named (Chrome's trace engine, Perfetto and HTA all read these);
/// - one `ph: "X"` event per [`Trace::events`] entry, in order: `cat` (current schema, from
///   [`gpuspan_core::trace::Category::as_kineto`]), `name`, `pid`, `tid`, `ts`, `dur` and
///   `args` (`device`, `stream`, `correlation`, `External id`, `grid`, `block`,
///   `registers per thread`, `shared memory`, `bytes`, `gpuspan.stage` / `.step` /
///   `.trace_id` / `.scope`, then `extra_args` verbatim);
/// - one `ph: "C"` event per [`Trace::counters`] entry (`cat: "gpuspan"`, `name`, `pid`,
///   `ts`, the values as `args`), after the complete events; a counter's process is named
///   `"GPU N"` when the trace names it nothing else.
///
/// `ts` / `dur` are written as given (µs, never rounded or shifted) with the shortest
/// decimal that reads back to the same `f64`, so a value that came from whole ns
/// (`ns as f64 / 1000.0`) is written with at most 3 decimals and ns survive a round trip.
/// One exception, for viewers that nest events by their `f64` ends: on a GPU row (same
/// `pid` / `tid`), when a kernel / memcpy / memset ends exactly where the next one starts
/// (back to back, as kernels on a busy stream do) but `ts + dur` in `f64` lands a rounding
/// error past the next `ts`, its `dur` is written as the largest `f64` that does not
/// overlap (a change of about 1e-10 µs, far below CUPTI's 1 ns; see `touching_dur_fixes`).
/// Chrome DevTools' trace engine otherwise drops the later event from its tree and never
/// draws it. A non-finite `ts` or `dur` is refused (`InvalidData`) rather than written as
/// `null`.
pub fn write_trace(trace: &Trace, path: &Path) -> io::Result<()> {
    write_trace_with(trace, path, &WriteOptions::default()).map(|_| ())
}

/// How [`write_trace_with`] writes, beyond [`write_trace`]'s defaults.
#[derive(Default)]
pub struct WriteOptions<'a> {
    /// Stop writing [`Trace::events`] once this instant has passed (checked every
    /// [`DEADLINE_CHECK_EVERY`] events): the file is still closed as a valid trace, holding
    /// the events before the cut (an exit budget: the agent must leave the host process in
    /// bounded time). `None`: write everything.
    pub deadline: Option<Instant>,
    /// gzip level, 0 (none) to 9 (smallest); `None`: flate2's default, 6.
    pub gzip_level: Option<u32>,
    /// Threads that deflate a `.gz` file while the writing thread serialises
    /// ([`super::gzip::ParallelGzWriter`]: one gzip member whatever the count); 0: deflate on
    /// the writing thread, in one stream; `None`: [`super::gzip::default_threads`].
    pub gzip_threads: Option<usize>,
    /// One event written after all others, completed once the writer knows what it wrote
    /// (a summary that can say the deadline cut the file). Its row (`pid`, `tid`) is named
    /// like every other row.
    pub trailer: Option<Trailer<'a>>,
}

/// The last event of a written trace ([`WriteOptions::trailer`]): `event` as given, after
/// `fill` has seen what was written.
pub struct Trailer<'a> {
    /// The event; its `ts_us` / `dur_us` must be finite.
    pub event: TraceEvent,
    /// Completes `event` (typically its `extra_args`) from the writer's progress.
    pub fill: &'a dyn Fn(&mut TraceEvent, &WriteProgress),
}

/// What [`write_trace_with`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteProgress {
    /// Events of [`Trace::events`] written (metadata and trailer not counted).
    pub events_written: usize,
    /// Events of [`Trace::events`] left out because [`WriteOptions::deadline`] passed.
    pub events_cut: usize,
}

/// How often (in events) the writer looks at [`WriteOptions::deadline`].
pub const DEADLINE_CHECK_EVERY: usize = 512;

/// [`write_trace`] with a deadline, a gzip level and a trailer event ([`WriteOptions`]).
/// Returns how many events were written and cut.
///
/// # Errors
/// As [`write_trace`]: a non-finite `ts` / `dur` (`InvalidData`, nothing written) or the
/// file system's error (the temporary file is removed).
pub fn write_trace_with(trace: &Trace, path: &Path, opts: &WriteOptions<'_>) -> io::Result<WriteProgress> {
    let mut events = trace;
    write_events_with(trace, &mut events, path, opts)
}

/// [`write_trace_with`] for events handed over one at a time ([`EventSource`]): `header`'s
/// schema version, base time, device properties and row names (its `events` are not read)
/// with the events of `events`, each asked for once, in order, and dropped once written. The
/// agent writes its captures this way from its join
/// ([`gpuspan_core::join::JoinedEvents`]), so no second copy of a capture's events is held.
///
/// # Errors
/// As [`write_trace_with`].
pub fn write_events_with(
    header: &Trace,
    events: &mut dyn EventSource,
    path: &Path,
    opts: &WriteOptions<'_>,
) -> io::Result<WriteProgress> {
    let survey = Survey::of(&*events);
    check_finite(&mut *events, &survey, opts)?;
    let gzip = path.as_os_str().to_string_lossy().ends_with(".gz");
    let tmp = tmp_path(path);
    let res = write_to(header, events, survey, &tmp, gzip, opts).and_then(|p| fs::rename(&tmp, path).map(|()| p));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// The JSON text [`write_trace_with`] writes for `trace` (a `.json` file's bytes, before any
/// compression), into `out`, which is returned with how many events were written and cut:
/// for callers that send it elsewhere than a file, and for measuring the serialisation
/// alone (`benches/capture_write.rs` writes it into `io::sink()`).
///
/// # Errors
/// A non-finite `ts` / `dur` (`InvalidData`, nothing written), or `out`'s error.
pub fn write_trace_json_to<W: Write>(trace: &Trace, out: W, opts: &WriteOptions<'_>) -> io::Result<(W, WriteProgress)> {
    let mut events = trace;
    let survey = Survey::of(&events);
    check_finite(&mut events, &survey, opts)?;
    write_json(JsonOut::new(out), trace, &mut events, &survey, opts)
}

/// JSON has no NaN or infinity: an event (or the trailer) with a non-finite `ts` / `dur` is
/// refused before anything is written (`InvalidData`, naming the event).
fn check_finite(events: &mut dyn EventSource, survey: &Survey, opts: &WriteOptions<'_>) -> io::Result<()> {
    let bad = survey
        .non_finite
        .map(|i| (i, events.event(i).name.clone()))
        .or_else(|| {
            let t = &opts.trailer.as_ref()?.event;
            (!t.ts_us.is_finite() || !t.dur_us.is_finite()).then(|| (events.len(), t.name.clone()))
        });
    match bad {
        Some((i, name)) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("event {i} ({name:?}) has a non-finite ts or dur"))),
        None => Ok(()),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

/// What the writer needs to know of every event before writing the first, gathered in one
/// pass over the events' shapes (for a source that builds events on demand, a shape costs a
/// few loads; the pass never builds an event).
struct Survey {
    /// First event whose `ts` or `dur` is not finite.
    non_finite: Option<usize>,
    /// Earliest `ts`, µs (the metadata events' `ts`).
    min_ts_us: Option<f64>,
    /// Rows (`pid`, `tid`) of GPU activity and GPU user annotations.
    gpu_rows: BTreeSet<(i64, i64)>,
    /// Rows of every event.
    rows: BTreeSet<(i64, i64)>,
    /// [`touching_dur_fixes`].
    fixes: DurFixes,
}

/// The durations [`touching_dur_fixes`] replaces, by event index: sorted by index, looked
/// up by binary search once per written event (a `HashMap<usize, f64>` hashed every
/// event's index with SipHash: with the rows' map, a tenth of the capture writer's
/// instructions outside the JSON itself; issue 14, item 1).
#[derive(Debug, Default)]
pub(crate) struct DurFixes(Vec<(usize, f64)>);

impl DurFixes {
    /// The duration to write for event `i`, if it is replaced (the writer walks them with
    /// [`Self::cursor`]; the serde reference writer of the tests looks each up).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn get(&self, i: usize) -> Option<f64> {
        Self::lookup(&self.0, i)
    }

    fn lookup(fixes: &[(usize, f64)], i: usize) -> Option<f64> {
        fixes.binary_search_by_key(&i, |&(j, _)| j).ok().map(|k| fixes[k].1)
    }

    /// A walk over the replaced durations for events asked for in increasing index order
    /// ([`DurFixCursor`]).
    pub(crate) fn cursor(&self) -> DurFixCursor<'_> {
        DurFixCursor { fixes: &self.0, at: 0 }
    }

    /// How many durations are replaced.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// [`DurFixes::get`] for events written in index order: each lookup moves a position past
/// the fixes of earlier events, one comparison an event, where a binary search per event
/// (its probes missing the cache) was four fifths of `write_events_with`'s own samples, a
/// tenth of the agent's exit thread in fine mode, whose kernels run back to back (issue 14,
/// item 1).
pub(crate) struct DurFixCursor<'a> {
    fixes: &'a [(usize, f64)],
    /// The first fix not of an event before the last one asked for.
    at: usize,
}

impl DurFixCursor<'_> {
    /// The duration to write for event `i`, if it is replaced. Indices are asked for in
    /// increasing order; an index below the last one asked for is looked up by binary
    /// search (the answer is the same either way).
    pub(crate) fn get(&mut self, i: usize) -> Option<f64> {
        if self.at > 0 && self.fixes[self.at - 1].0 >= i {
            return DurFixes::lookup(self.fixes, i);
        }
        while self.fixes.get(self.at).is_some_and(|&(j, _)| j < i) {
            self.at += 1;
        }
        match self.fixes.get(self.at) {
            Some(&(j, d)) if j == i => {
                self.at += 1;
                Some(d)
            }
            _ => None,
        }
    }
}

impl Survey {
    fn of(events: &dyn EventSource) -> Survey {
        let mut sv = Survey {
            non_finite: None,
            min_ts_us: None,
            gpu_rows: BTreeSet::new(),
            rows: BTreeSet::new(),
            fixes: DurFixes::default(),
        };
        let mut timed = TimedRows::default();
        let mut last_row = None;
        // The row of the last GPU activity and its place in `timed.rows`.
        let mut last_timed: Option<((i64, i64), usize)> = None;
        for i in 0..events.len() {
            let e = events.shape(i);
            if sv.non_finite.is_none() && (!e.ts_us.is_finite() || !e.dur_us.is_finite()) {
                sv.non_finite = Some(i);
            }
            sv.min_ts_us = Some(sv.min_ts_us.map_or(e.ts_us, |m: f64| m.min(e.ts_us)));
            // Consecutive events mostly share a row: skip the set lookups then.
            if last_row != Some((e.pid, e.tid)) {
                last_row = Some((e.pid, e.tid));
                sv.rows.insert((e.pid, e.tid));
                if is_gpu_row(&e) {
                    sv.gpu_rows.insert((e.pid, e.tid));
                }
            }
            if e.cat.as_ref().is_some_and(|c| c.is_gpu_activity()) {
                let row = (e.pid, e.tid);
                let k = match last_timed {
                    Some((r, k)) if r == row => k,
                    _ => {
                        let k = timed.index_of(row);
                        last_timed = Some((row, k));
                        k
                    }
                };
                timed.rows[k].push((e.ts_us, e.dur_us, i));
            }
        }
        sv.fixes = fixes_of(timed);
        sv
    }
}

fn write_to(
    trace: &Trace,
    events: &mut dyn EventSource,
    survey: Survey,
    tmp: &Path,
    gzip: bool,
    opts: &WriteOptions<'_>,
) -> io::Result<WriteProgress> {
    let file = File::create(tmp)?;
    let level = opts.gzip_level.unwrap_or(flate2::Compression::default().level()).min(9);
    let threads = opts.gzip_threads.unwrap_or_else(super::gzip::default_threads);
    let (file, progress) = if gzip && threads > 0 {
        let enc = super::gzip::ParallelGzWriter::new(file, level, threads)?;
        let (enc, progress) = write_json(JsonOut::new(enc), trace, events, &survey, opts)?;
        (enc.finish()?, progress)
    } else if gzip {
        let enc = flate2::write::GzEncoder::new(file, flate2::Compression::new(level));
        let (enc, progress) = write_json(JsonOut::new(enc), trace, events, &survey, opts)?;
        (enc.finish()?, progress)
    } else {
        write_json(JsonOut::new(file), trace, events, &survey, opts)?
    };
    file.sync_all()?;
    Ok(progress)
}

/// The file's JSON (see [`write_trace`] for what it holds), into `out`.
fn write_json<W: Write>(
    mut out: JsonOut<W>,
    t: &Trace,
    events: &mut dyn EventSource,
    survey: &Survey,
    opts: &WriteOptions<'_>,
) -> io::Result<(W, WriteProgress)> {
    out.raw(b"{\"schemaVersion\":");
    out.i64(t.schema_version.unwrap_or(DEFAULT_SCHEMA_VERSION));
    if let Some(b) = t.base_time_ns {
        out.raw(b",\"baseTimeNanoseconds\":");
        out.i64(b);
    }
    if let Some(p) = &t.device_properties {
        out.raw(b",\"deviceProperties\":");
        out.serde(p)?;
    }
    if let Some(d) = &t.distributed_info {
        out.raw(b",\"distributedInfo\":");
        out.serde(d)?;
    }
    out.raw(b",\"traceEvents\":[");
    let mut first = true;
    let mut sep = |out: &mut JsonOut<W>| {
        if !std::mem::take(&mut first) {
            out.raw(b",");
        }
    };
    let (processes, threads) = row_names(t, survey, opts);
    let meta_ts = survey.min_ts_us.unwrap_or(0.0);
    for (pid, name) in &processes {
        sep(&mut out);
        out.serde(&MetaOut { name: "process_name", ph: "M", cat: META_CAT, ts: meta_ts, pid: *pid, tid: 0, args: MetaArgs { name } })?;
    }
    for ((pid, tid), name) in &threads {
        sep(&mut out);
        out.serde(&MetaOut { name: "thread_name", ph: "M", cat: META_CAT, ts: meta_ts, pid: *pid, tid: *tid, args: MetaArgs { name } })?;
    }
    let n = events.len();
    let mut written = n;
    let mut fixes = survey.fixes.cursor();
    for i in 0..n {
        if i % DEADLINE_CHECK_EVERY == 0 && opts.deadline.is_some_and(|d| Instant::now() >= d) {
            written = i;
            break;
        }
        let fix = fixes.get(i);
        let e = events.event(i);
        sep(&mut out);
        out.event(&e, fix.unwrap_or(e.dur_us))?;
    }
    let progress = WriteProgress { events_written: written, events_cut: n - written };
    for c in t.counters.iter().filter(|c| c.ts_us.is_finite()) {
        sep(&mut out);
        out.serde(&CounterOut(c))?;
    }
    if let Some(tr) = &opts.trailer {
        let mut ev = tr.event.clone();
        (tr.fill)(&mut ev, &progress);
        sep(&mut out);
        out.event(&ev, ev.dur_us)?;
    }
    out.raw(b"]}");
    Ok((out.finish()?, progress))
}

/// Names by process id.
type ProcessNames<'t> = BTreeMap<i64, Cow<'t, str>>;
/// Names by (process id, thread id).
type ThreadNames<'t> = BTreeMap<(i64, i64), Cow<'t, str>>;

/// The name of every process and thread row the file has (`M` metadata): the trace's own,
/// then `GPU N` / `stream N` for GPU rows, `GPU N` for counter tracks, `process N` /
/// `thread N` for any other row (the trailer's included).
fn row_names<'t>(t: &'t Trace, survey: &Survey, opts: &WriteOptions<'_>) -> (ProcessNames<'t>, ThreadNames<'t>) {
    let mut processes: BTreeMap<i64, Cow<'_, str>> =
        t.process_names.iter().map(|(p, n)| (*p, Cow::Borrowed(n.as_str()))).collect();
    let mut threads: BTreeMap<(i64, i64), Cow<'_, str>> =
        t.thread_names.iter().map(|(k, n)| (*k, Cow::Borrowed(n.as_str()))).collect();
    for &(pid, tid) in &survey.gpu_rows {
        processes.entry(pid).or_insert_with(|| Cow::Owned(format!("GPU {pid}")));
        threads.entry((pid, tid)).or_insert_with(|| Cow::Owned(format!("stream {tid}")));
    }
    // Counter tracks belong to a process only (no thread row).
    for c in &t.counters {
        processes.entry(c.pid).or_insert_with(|| Cow::Owned(format!("GPU {}", c.pid)));
    }
    let trailer = opts.trailer.as_ref().map(|t| (t.event.pid, t.event.tid));
    for &(pid, tid) in survey.rows.iter().chain(trailer.as_ref()) {
        processes.entry(pid).or_insert_with(|| Cow::Owned(format!("process {pid}")));
        threads.entry((pid, tid)).or_insert_with(|| Cow::Owned(format!("thread {tid}")));
    }
    (processes, threads)
}

/// Largest overlap, µs, that [`touching_dur_fixes`] treats as `f64` rounding rather than
/// real overlap: half a nanosecond (CUPTI times are whole ns, so a real overlap is ≥ 1 ns).
const MAX_ROUNDING_OVERLAP_US: f64 = 0.0005;

/// Durations to write instead of the trace's, by event index: for GPU activity (kernel,
/// memcpy, memset) that ends exactly where the next activity on its row (`pid`, `tid`)
/// starts, but whose `ts + dur` in `f64` overshoots that start by rounding (at most two
/// ulps of the timestamps and under [`MAX_ROUNDING_OVERLAP_US`]), the largest
/// `dur' <= dur` with `ts + dur' <= next.ts` in `f64`. Real overlaps (≥ 1 ns), nested
/// events and other rows are left alone. (The writer gathers these in its one pass over the
/// events, [`Survey`]; this is that pass's share, for tests.)
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn touching_dur_fixes(events: &dyn EventSource) -> DurFixes {
    Survey::of(events).fixes
}

/// (`ts`, `dur`, index) of the GPU activity events, by row (`pid`, `tid`): the rows in the
/// order first seen, and where each is.
#[derive(Default)]
struct TimedRows {
    rows: Vec<Vec<(f64, f64, usize)>>,
    index: HashMap<(i64, i64), usize>,
}

impl TimedRows {
    /// Where row `row` is in `rows`, added empty if new.
    fn index_of(&mut self, row: (i64, i64)) -> usize {
        let n = self.rows.len();
        let k = *self.index.entry(row).or_insert(n);
        if k == n {
            self.rows.push(Vec::new());
        }
        k
    }
}

/// [`touching_dur_fixes`] of the GPU activity gathered by row.
fn fixes_of(mut rows: TimedRows) -> DurFixes {
    let mut fixes = Vec::new();
    for row in rows.rows.iter_mut() {
        row.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
        for w in row.windows(2) {
            let ((a_ts, a_dur, a_i), (b_ts, _, _)) = (w[0], w[1]);
            let end = a_ts + a_dur;
            let over = end - b_ts;
            if over <= 0.0 || b_ts < a_ts || a_dur <= 0.0 {
                continue;
            }
            let ulp = ulp(a_ts.abs().max(b_ts.abs()).max(end.abs()));
            if over > 2.0 * ulp || over >= MAX_ROUNDING_OVERLAP_US {
                continue;
            }
            if let Some(d) = fit_dur(a_ts, a_dur, b_ts) {
                fixes.push((a_i, d));
            }
        }
    }
    fixes.sort_unstable_by_key(|&(i, _)| i);
    DurFixes(fixes)
}

/// The largest `d <= dur`, `d >= 0`, with `ts + d <= limit` in `f64`, if found within a few
/// steps (the subtraction is exact when `ts` and `limit` are within a factor 2).
fn fit_dur(ts: f64, dur: f64, limit: f64) -> Option<f64> {
    let mut d = (limit - ts).min(dur);
    for _ in 0..64 {
        if d < 0.0 || !d.is_finite() {
            return None;
        }
        if ts + d <= limit {
            return Some(d);
        }
        d = next_down(d);
    }
    None
}

/// The unit in the last place of a finite `x >= 0`.
fn ulp(x: f64) -> f64 {
    next_up(x) - x
}

fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

fn next_down(x: f64) -> f64 {
    -next_up(-x)
}

/// An `M` metadata event (`process_name` / `thread_name`).
#[derive(Serialize)]
struct MetaOut<'a> {
    name: &'static str,
    ph: &'static str,
    cat: &'static str,
    ts: f64,
    pid: i64,
    tid: i64,
    args: MetaArgs<'a>,
}

#[derive(Serialize)]
struct MetaArgs<'a> {
    name: &'a str,
}

/// A counter sample as a `ph: "C"` event: `cat` `gpuspan`, `name`, `pid`, `ts`, and the
/// values as `args` (non-finite values left out: JSON has no NaN).
struct CounterOut<'a>(&'a gpuspan_core::trace::CounterEvent);

impl Serialize for CounterOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Values<'a>(&'a [(String, f64)]);
        impl Serialize for Values<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                for (k, v) in self.0.iter().filter(|(_, v)| v.is_finite()) {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let c = self.0;
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("ph", "C")?;
        m.serialize_entry("cat", COUNTER_CAT)?;
        m.serialize_entry("name", &c.name)?;
        m.serialize_entry("pid", &c.pid)?;
        m.serialize_entry("ts", &c.ts_us)?;
        m.serialize_entry("args", &Values(&c.values))?;
        m.end()
    }
}

/// `cat` of the counter events the writer emits (Kineto writes no counters, so no
/// category of its own applies; readers that sort by category leave it alone).
const COUNTER_CAT: &str = "gpuspan";

fn is_gpu_row(e: &EventShape) -> bool {
    use gpuspan_core::trace::Category;
    match &e.cat {
        Some(c) => c.is_gpu_activity() || *c == Category::GpuUserAnnotation,
        None => false,
    }
}

/// The writer as it was before [`JsonOut`]: serde_json driven by `Serialize` impls. The
/// tests hold the hand-written writer to its bytes on every fixture.
#[cfg(test)]
pub(crate) mod serde_reference {
    use super::super::keys;
    use super::*;
    use serde::ser::SerializeSeq;

    /// The JSON [`write_trace`] writes for `trace` (no deadline, no trailer), as serde_json
    /// writes it.
    pub(crate) fn json(trace: &Trace) -> Vec<u8> {
        let mut events = trace;
        let survey = Survey::of(&events);
        let opts = WriteOptions::default();
        let progress = std::cell::Cell::new(WriteProgress::default());
        let out = TraceOut {
            trace,
            events: std::cell::RefCell::new(&mut events),
            survey: &survey,
            opts: &opts,
            progress: &progress,
        };
        serde_json::to_vec(&out).unwrap()
    }

    struct TraceOut<'a> {
        trace: &'a Trace,
        events: std::cell::RefCell<&'a mut dyn EventSource>,
        survey: &'a Survey,
        opts: &'a WriteOptions<'a>,
        progress: &'a std::cell::Cell<WriteProgress>,
    }

    impl Serialize for TraceOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let t = self.trace;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry(
                "schemaVersion",
                &t.schema_version.unwrap_or(DEFAULT_SCHEMA_VERSION),
            )?;
            if let Some(b) = t.base_time_ns {
                m.serialize_entry("baseTimeNanoseconds", &b)?;
            }
            if let Some(p) = &t.device_properties {
                m.serialize_entry("deviceProperties", p)?;
            }
            if let Some(d) = &t.distributed_info {
                m.serialize_entry("distributedInfo", d)?;
            }
            m.serialize_entry(
                "traceEvents",
                &EventsOut {
                    trace: t,
                    events: &self.events,
                    survey: self.survey,
                    opts: self.opts,
                    progress: self.progress,
                },
            )?;
            m.end()
        }
    }

    struct EventsOut<'a, 'e> {
        trace: &'a Trace,
        events: &'a std::cell::RefCell<&'e mut dyn EventSource>,
        survey: &'a Survey,
        opts: &'a WriteOptions<'a>,
        progress: &'a std::cell::Cell<WriteProgress>,
    }

    impl Serialize for EventsOut<'_, '_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let t = self.trace;
            let mut events = self.events.borrow_mut();
            let n = events.len();
            let meta_ts = self.survey.min_ts_us.unwrap_or(0.0);

            let mut processes: BTreeMap<i64, Cow<'_, str>> = t
                .process_names
                .iter()
                .map(|(p, n)| (*p, Cow::Borrowed(n.as_str())))
                .collect();
            let mut threads: BTreeMap<(i64, i64), Cow<'_, str>> = t
                .thread_names
                .iter()
                .map(|(k, n)| (*k, Cow::Borrowed(n.as_str())))
                .collect();
            for &(pid, tid) in &self.survey.gpu_rows {
                processes.entry(pid).or_insert_with(|| Cow::Owned(format!("GPU {pid}")));
                threads.entry((pid, tid)).or_insert_with(|| Cow::Owned(format!("stream {tid}")));
            }
            // Counter tracks belong to a process only (no thread row).
            for c in &t.counters {
                processes.entry(c.pid).or_insert_with(|| Cow::Owned(format!("GPU {}", c.pid)));
            }
            let trailer = self.opts.trailer.as_ref().map(|t| (t.event.pid, t.event.tid));
            for &(pid, tid) in self.survey.rows.iter().chain(trailer.as_ref()) {
                processes.entry(pid).or_insert_with(|| Cow::Owned(format!("process {pid}")));
                threads.entry((pid, tid)).or_insert_with(|| Cow::Owned(format!("thread {tid}")));
            }

            let mut seq = s.serialize_seq(None)?;
            for (pid, name) in &processes {
                seq.serialize_element(&MetaOut {
                    name: "process_name",
                    ph: "M",
                    cat: META_CAT,
                    ts: meta_ts,
                    pid: *pid,
                    tid: 0,
                    args: MetaArgs { name },
                })?;
            }
            for ((pid, tid), name) in &threads {
                seq.serialize_element(&MetaOut {
                    name: "thread_name",
                    ph: "M",
                    cat: META_CAT,
                    ts: meta_ts,
                    pid: *pid,
                    tid: *tid,
                    args: MetaArgs { name },
                })?;
            }
            let mut written = n;
            for i in 0..n {
                if i % DEADLINE_CHECK_EVERY == 0 && self.opts.deadline.is_some_and(|d| Instant::now() >= d) {
                    written = i;
                    break;
                }
                let fix = self.survey.fixes.get(i);
                let e = events.event(i);
                seq.serialize_element(&EventOut { dur_us: fix.unwrap_or(e.dur_us), event: &e })?;
            }
            let progress = WriteProgress {
                events_written: written,
                events_cut: n - written,
            };
            self.progress.set(progress);
            for c in t.counters.iter().filter(|c| c.ts_us.is_finite()) {
                seq.serialize_element(&CounterOut(c))?;
            }
            if let Some(tr) = &self.opts.trailer {
                let mut ev = tr.event.clone();
                (tr.fill)(&mut ev, &progress);
                seq.serialize_element(&EventOut { dur_us: ev.dur_us, event: &ev })?;
            }
            seq.end()
        }
    }

    struct EventOut<'a> {
        event: &'a TraceEvent,
        /// `event.dur_us`, or its [`touching_dur_fixes`] replacement.
        dur_us: f64,
    }

    impl Serialize for EventOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let e = self.event;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("ph", "X")?;
            if let Some(c) = &e.cat {
                m.serialize_entry("cat", c.as_kineto())?;
            }
            m.serialize_entry("name", &e.name)?;
            m.serialize_entry("pid", &e.pid)?;
            m.serialize_entry("tid", &e.tid)?;
            m.serialize_entry("ts", &e.ts_us)?;
            m.serialize_entry("dur", &self.dur_us)?;
            let args = ArgsOut(e);
            if !args.is_empty() {
                m.serialize_entry("args", &args)?;
            }
            m.end()
        }
    }

    struct ArgsOut<'a>(&'a TraceEvent);

    impl ArgsOut<'_> {
        fn is_empty(&self) -> bool {
            let e = self.0;
            e.device.is_none()
                && e.stream.is_none()
                && e.correlation.is_none()
                && e.external_id.is_none()
                && e.grid.is_none()
                && e.block.is_none()
                && e.registers_per_thread.is_none()
                && e.shared_memory_bytes.is_none()
                && e.bytes.is_none()
                && e.stage.is_none()
                && e.step.is_none()
                && e.trace_id.is_none()
                && e.scope.is_none()
                && e.extra_args.is_empty()
        }
    }

    impl Serialize for ArgsOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let e = self.0;
            let mut m = s.serialize_map(None)?;
            // The typed keys written (at most 13): a set on the stack, not a BTreeSet per event.
            let mut written: [&'static str; 13] = [""; 13];
            let mut n_written = 0;
            macro_rules! typed {
                ($key:expr, $field:expr) => {
                    if let Some(v) = &$field {
                        m.serialize_entry($key, v)?;
                        written[n_written] = $key;
                        n_written += 1;
                    }
                };
            }
            typed!(keys::DEVICE, e.device);
            typed!(keys::STREAM, e.stream);
            typed!(keys::CORRELATION, e.correlation);
            typed!(keys::EXTERNAL_ID, e.external_id);
            typed!(keys::GRID, e.grid);
            typed!(keys::BLOCK, e.block);
            typed!(keys::REGISTERS, e.registers_per_thread);
            typed!(keys::SHARED_MEMORY, e.shared_memory_bytes);
            typed!(keys::BYTES, e.bytes);
            typed!(keys::STAGE, e.stage);
            typed!(keys::STEP, e.step);
            typed!(keys::TRACE_ID, e.trace_id);
            typed!(keys::SCOPE, e.scope);
            for (k, v) in &e.extra_args {
                if !written[..n_written].contains(&k.as_str()) {
                    m.serialize_entry(k, v)?;
                }
            }
            m.end()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DurFixes;

    proptest::proptest! {
        /// The cursor answers what the binary search answers, for indices asked in
        /// increasing order (the writer's walk, every event or some skipped) and out of order.
        #[test]
        fn the_fix_cursor_answers_as_the_binary_search(
            fixed in proptest::collection::btree_set(0usize..400, 0..60),
            asks in proptest::collection::vec(0usize..420, 0..200),
        ) {
            let fixes = DurFixes(fixed.iter().map(|&i| (i, i as f64 + 0.5)).collect());
            let mut walk = fixes.cursor();
            for i in 0..420 {
                proptest::prop_assert_eq!(walk.get(i), fixes.get(i), "in order, {}", i);
            }
            let mut sorted = asks.clone();
            sorted.sort_unstable();
            let mut skipping = fixes.cursor();
            for &i in &sorted {
                proptest::prop_assert_eq!(skipping.get(i), fixes.get(i), "increasing, {}", i);
            }
            let mut any = fixes.cursor();
            for &i in &asks {
                proptest::prop_assert_eq!(any.get(i), fixes.get(i), "any order, {}", i);
            }
        }
    }
}

//! The join: decoded activity records + scopes → a Kineto-schema [`Trace`].
//!
//! Kernels (and memcpy / memset) are tied to the scope that was innermost on the launching
//! thread through CUPTI external correlation: the agent pushes the scope id (kind CUSTOM2)
//! at each scope begin, CUPTI emits an `ExternalCorrelation` record `{externalId = scope id,
//! correlationId}` for every API call made while it is pushed, and the GPU record carries the
//! same correlation id (CUPTI-NOTES §2, §3). Records arrive unordered and across buffers, so
//! the join runs after collection, over everything collected.
//!
//! Each scope's attribution (innermost stage scope, enclosing step, enclosing request) is
//! computed once when the scope begins, from its parent's, so the per-kernel work is two
//! hash lookups plus a cached classification.

use crate::activity::{ActivityRecord, ApiDomain, GPUSPAN_EXTERNAL_KIND};
use crate::classify::Classifier;
use crate::scope::{ScopeEvent, ScopeId, ScopeKind};
use crate::spans::corr_runs::CorrelationRuns;
use crate::trace::{Category, Trace, TraceEvent};
// The keys are integers this process made (correlation and scope ids), no untrusted input
// to guard against: SipHash was a tenth of the capture write's CPU, and FNV's byte-wise
// multiply chain a tenth of the collector's (crate::id_hash).
use crate::id_hash::IdHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};

/// What a scope contributes to the events launched under it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribution {
    /// Innermost enclosing stage scope name (`ffn`, `attention.cross`, …), if any.
    pub stage: Option<&'static str>,
    /// Enclosing step scope, if any.
    pub step: Option<ScopeId>,
    /// Enclosing request scope, if any.
    pub request: Option<ScopeId>,
}

/// One scope, paired from its begin and end events.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeInfo {
    /// Scope id (the external correlation id pushed for it).
    pub id: ScopeId,
    /// Enclosing scope on the same thread, 0 when none.
    pub parent: ScopeId,
    /// Range name as given.
    pub name: String,
    /// Parsed meaning of the name.
    pub kind: ScopeKind,
    /// OS thread id that opened it.
    pub thread_id: u32,
    /// Begin, CUPTI ns.
    pub begin_ns: u64,
    /// End, CUPTI ns; `None` while open.
    pub end_ns: Option<u64>,
    /// Attribution for events launched directly under this scope.
    pub attribution: Attribution,
}

impl ScopeInfo {
    /// W3C trace id (32 lower-case hex) of a request scope's traceparent, when well-formed
    /// (`00-<32 hex>-<16 hex>-<2 hex>`, W3C Trace Context §3.2) and not all zeros.
    pub fn trace_id(&self) -> Option<String> {
        match &self.kind {
            ScopeKind::Request { traceparent: Some(tp), .. } => parse_traceparent_trace_id(tp),
            _ => None,
        }
    }

    /// The trace id a request scope's spans use: its traceparent's, else `env_traceparent`'s
    /// (the process's `TRACEPARENT`, [`crate::spans::SpanOptions::env_traceparent`]), when
    /// well-formed; else the new one [`crate::spans::TraceContext::for_request`] derives
    /// from `seed` (the same seed as the span assembler's, so capture and spans agree).
    /// `None` for other scopes.
    pub fn trace_id_with_seed(&self, seed: u64, env_traceparent: Option<&str>) -> Option<String> {
        match &self.kind {
            ScopeKind::Request { traceparent, attrs } => {
                let tp = traceparent.as_deref().or(env_traceparent);
                let (ctx, _) = crate::spans::TraceContext::for_request(tp, attrs, seed, self.id);
                Some(crate::spans::ids::hex(&ctx.trace_id))
            }
            _ => None,
        }
    }

    fn trace_id_for(&self, seed: Option<u64>, env_traceparent: Option<&str>) -> Option<String> {
        match seed {
            Some(seed) => self.trace_id_with_seed(seed, env_traceparent),
            None => self.trace_id(),
        }
    }
}

/// Trace id (32 lower-case hex) of a W3C traceparent, if well-formed by the rules of
/// [`crate::spans::context::parse_traceparent`].
pub fn parse_traceparent_trace_id(tp: &str) -> Option<String> {
    crate::spans::context::parse_traceparent(tp).ok().map(|(trace_id, _, _)| crate::spans::ids::hex(&trace_id))
}

/// All scopes seen, by id.
#[derive(Debug)]
pub struct ScopeTable {
    scopes: HashMap<ScopeId, ScopeInfo>,
    /// End events whose begin was not seen (dropped on a full queue): counted, ignored.
    pub orphan_ends: u64,
    /// [`ScopeTable::version`].
    version: u64,
}

/// Source of [`ScopeTable::version`] values: one process-wide counter, so no two tables
/// (nor two states of one table) share a version.
static NEXT_TABLE_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_table_version() -> u64 {
    NEXT_TABLE_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for ScopeTable {
    fn default() -> ScopeTable {
        ScopeTable { scopes: HashMap::default(), orphan_ends: 0, version: next_table_version() }
    }
}

impl Clone for ScopeTable {
    /// A copy with a version of its own (the copy and the original change apart).
    fn clone(&self) -> ScopeTable {
        ScopeTable { scopes: self.scopes.clone(), orphan_ends: self.orphan_ends, version: next_table_version() }
    }
}

impl ScopeTable {
    /// An empty table.
    pub fn new() -> ScopeTable {
        ScopeTable::default()
    }

    /// Which table, in which state of its existing scopes, this is: a value no other table
    /// has, that changes whenever a scope this table knew is removed ([`ScopeTable::retain`])
    /// or replaced (a begin with an id already present). Adding a scope or setting its end
    /// leaves it: what [`ScopeTable::get`] says of a scope's attribution holds as long as
    /// the version does. The span assembler keys its cache of the last record's scope by it.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies one scope event (begins must be applied before their children's, which holds
    /// for events drained in queue order).
    pub fn apply(&mut self, ev: &ScopeEvent) {
        match ev {
            ScopeEvent::Begin { id, parent, thread_id, ts_ns, name } => {
                let name = name.as_str().to_string();
                let kind = ScopeKind::parse(&name);
                let mut attribution =
                    self.scopes.get(parent).map(|p| p.attribution.clone()).unwrap_or_default();
                match &kind {
                    ScopeKind::Request { .. } => attribution.request = Some(*id),
                    ScopeKind::Step { .. } => attribution.step = Some(*id),
                    ScopeKind::Stage(s) => attribution.stage = Some(s),
                    ScopeKind::Other => {}
                }
                let replaced = self.scopes.insert(
                    *id,
                    ScopeInfo {
                        id: *id,
                        parent: *parent,
                        name,
                        kind,
                        thread_id: *thread_id,
                        begin_ns: *ts_ns,
                        end_ns: None,
                        attribution,
                    },
                );
                if replaced.is_some() {
                    self.version = next_table_version();
                }
            }
            ScopeEvent::End { id, ts_ns, .. } => match self.scopes.get_mut(id) {
                Some(s) => s.end_ns = Some(*ts_ns),
                None => self.orphan_ends += 1,
            },
            // Nothing to keep: the scope stays a CPU range in the capture.
            ScopeEvent::InCapture { .. } => {}
        }
    }

    /// Keeps only the scopes for which `keep` holds (coarse mode drops finished requests'
    /// scopes so the table stays bounded by the scopes in flight).
    pub fn retain(&mut self, mut keep: impl FnMut(&ScopeInfo) -> bool) {
        let before = self.scopes.len();
        self.scopes.retain(|_, s| keep(s));
        if self.scopes.len() != before {
            self.version = next_table_version();
        }
    }

    /// A copy holding only the scopes for which `keep` holds (a fine window's capture).
    pub fn subset(&self, keep: impl Fn(&ScopeInfo) -> bool) -> ScopeTable {
        ScopeTable {
            scopes: self.scopes.iter().filter(|(_, s)| keep(s)).map(|(k, v)| (*k, v.clone())).collect(),
            orphan_ends: 0,
            version: next_table_version(),
        }
    }

    /// The scope with this id.
    pub fn get(&self, id: ScopeId) -> Option<&ScopeInfo> {
        self.scopes.get(&id)
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// All scopes, in id order.
    pub fn iter_sorted(&self) -> Vec<&ScopeInfo> {
        let mut v: Vec<&ScopeInfo> = self.scopes.values().collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

/// Counts from one join.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JoinStats {
    /// GPU events (kernel / memcpy / memset) written.
    pub gpu_events: u64,
    /// GPU events tied to a scope through external correlation.
    pub attributed: u64,
    /// Kernels skipped because timing was incomplete (end = 0 after a forced flush).
    pub incomplete: u64,
}

/// Driver API names for the callback ids gpuspan writes as `cuda_driver` events
/// (`cupti_driver_cbid.h`, identical in 12.9 and 13.5).
pub fn driver_api_name(cbid: u32) -> &'static str {
    match cbid {
        1 => "cuInit",
        17 => "cuCtxSynchronize",
        19 => "cuModuleLoadData",
        23 => "cuModuleGetFunction",
        119 => "cuEventRecord",
        120 => "cuEventQuery",
        121 => "cuEventSynchronize",
        123 => "cuEventElapsedTime",
        124 => "cuStreamCreate",
        126 => "cuStreamSynchronize",
        216 => "cuMemsetD8Async",
        220 => "cuMemsetD32Async",
        243 => "cuMemAlloc_v2",
        245 => "cuMemFree_v2",
        249 => "cuMemsetD8_v2",
        276 => "cuMemcpyHtoD_v2",
        277 => "cuMemcpyHtoDAsync_v2",
        278 => "cuMemcpyDtoH_v2",
        279 => "cuMemcpyDtoHAsync_v2",
        281 => "cuMemcpyDtoDAsync_v2",
        307 => "cuLaunchKernel",
        652 | 653 => "cuLaunchKernelEx",
        _ => "cuda_driver_call",
    }
}

/// Options of [`build_trace`] and [`JoinedEvents`].
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// CUPTI ns that `ts = 0` stands for (written as `baseTimeNanoseconds`).
    pub base_time_ns: u64,
    /// OS process id, the `pid` of CPU rows.
    pub process_id: u32,
    /// Write API records as `cuda_driver` / `cuda_runtime` events.
    pub include_api: bool,
    /// Seed of the trace ids made for requests without a usable traceparent (the span
    /// assembler's [`crate::spans::SpanOptions::seed`]); `None`: such requests get no
    /// `gpuspan.trace_id`.
    pub trace_seed: Option<u64>,
    /// The process's `TRACEPARENT` (the span assembler's
    /// [`crate::spans::SpanOptions::env_traceparent`]): with `trace_seed`, requests that name
    /// no traceparent take its trace id, as their spans do.
    pub env_traceparent: Option<String>,
}

/// Merges lists each sorted by (`ts`, index) into one sorted the same way.
fn merge_by_ts_then_index(parts: [Vec<(u64, usize)>; 3]) -> Vec<(u64, usize)> {
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    let mut at = [0usize; 3];
    loop {
        let mut best: Option<(usize, (u64, usize))> = None;
        for (p, part) in parts.iter().enumerate() {
            if let Some(&x) = part.get(at[p]) {
                let better = best.is_none_or(|(_, b)| x < b);
                if better {
                    best = Some((p, x));
                }
            }
        }
        let Some((p, x)) = best else { return out };
        out.push(x);
        at[p] += 1;
    }
}

/// Per run of `ext`, its scope and that scope's step ([`JoinedEvents::run_scopes`]).
fn run_scopes_of<'a>(ext: &CorrelationRuns, scopes: &'a ScopeTable) -> Vec<(Option<&'a ScopeInfo>, Option<&'a ScopeInfo>)> {
    (0..ext.run_count())
        .map(|i| {
            let scope = scopes.get(ext.run_scope(i));
            (scope, scope.and_then(|s| s.attribution.step).and_then(|id| scopes.get(id)))
        })
        .collect()
}

/// `ns - base` in µs. Both below 2⁶³ (every CUPTI timestamp until the year 2262), the
/// difference is exact in `i64` and converts as the `i128` does; `i128` to `f64` was a
/// call into compiler-builtins and 5 % of the join (issue 14, item 3).
fn rel_us(ns: u64, base: u64) -> f64 {
    match (i64::try_from(ns), i64::try_from(base)) {
        (Ok(n), Ok(b)) => (n - b) as f64 / 1000.0,
        _ => (ns as i128 - base as i128) as f64 / 1000.0,
    }
}

/// The fields a memcpy / memset row shares: GPU row (pid = device, tid = stream), times, bytes.
fn gpu_event(device: u32, stream: u32, corr: u32, start_ns: u64, end_ns: u64, bytes: u64, base: u64) -> TraceEvent {
    TraceEvent {
        pid: device as i64,
        tid: stream as i64,
        ts_us: rel_us(start_ns, base),
        dur_us: end_ns.saturating_sub(start_ns) as f64 / 1000.0,
        device: Some(device as i64),
        stream: Some(stream as i64),
        correlation: Some(corr as i64),
        bytes: Some(bytes as i64),
        ..Default::default()
    }
}

/// Joins records and scopes into a Kineto-schema trace: [`JoinedEvents`], every event built.
///
/// GPU rows: `pid` = device id, `tid` = stream id (Kineto's convention); CPU rows (scopes as
/// `user_annotation`, API calls as `cuda_driver` / `cuda_runtime`): `pid` = process id,
/// `tid` = thread id. Every GPU event carries `gpuspan.stage`, and `gpuspan.step`,
/// `gpuspan.scope`, `gpuspan.trace_id` when its launch was inside such a scope. Events are in
/// `ts` order.
pub fn build_trace(
    records: &[ActivityRecord],
    scopes: &ScopeTable,
    classifier: &mut Classifier,
    opts: &JoinOptions,
) -> (Trace, JoinStats) {
    let mut joined = JoinedEvents::new(records, scopes, classifier, opts, false);
    let mut trace = joined.header();
    trace.events = (0..joined.order.len()).map(|i| joined.build(i)).collect();
    (trace, joined.stats)
}

/// A join planned but not built: which record or scope each event comes from, in write
/// order, with the counts and row names known up front; each event is built only when asked
/// for ([`crate::trace::EventSource::event`]). Writing a capture through it holds 16 bytes
/// per event besides the records, where [`build_trace`]'s [`Trace`] holds every event's
/// strings (about 500 bytes a kernel).
pub struct JoinedEvents<'a> {
    records: &'a [ActivityRecord],
    scope_list: Vec<&'a ScopeInfo>,
    scopes: &'a ScopeTable,
    classifier: &'a mut Classifier,
    opts: JoinOptions,
    /// correlation id → scope id, from gpuspan's external-correlation records, as runs of
    /// consecutive ids (a scope's launches are consecutive calls): 16 bytes a run where a
    /// hash map held about 20 bytes per launch (tens of MB at exit for an 8 M-record
    /// capture). Same speed: a fine-mode wan2.1 run without the capture write took
    /// 0.229–0.246 s of process-tree CPU with it against 0.233–0.259 s with the map (7
    /// runs each, interleaved); `hot_path`'s two join rows moved −7 % and +6 %. Borrowed
    /// from the caller's when the records carry no such record of their own
    /// ([`JoinedEvents::with_correlations`]).
    ext: std::borrow::Cow<'a, CorrelationRuns>,
    /// Per run of `ext`, its scope and that scope's step, looked up in the scope table once
    /// per run rather than twice per GPU record (issue 14, item 3).
    run_scopes: Vec<(Option<&'a ScopeInfo>, Option<&'a ScopeInfo>)>,
    /// The run of `ext` the last lookup found ([`CorrelationRuns::find_run`]).
    ext_hint: usize,
    /// (start, CUPTI ns; source) in write order; a source below `records.len()` is that
    /// record, else scope `source - records.len()` of `scope_list`. Kept in ns, not µs
    /// relative to the base time, so that the base can be set after planning
    /// ([`JoinedEvents::rebase`]): ordered by ns or by µs since a base, the order is the
    /// same (`rel_us` is increasing, and one-to-one within 2⁵³ ns, 104 days, of the base).
    order: Vec<(u64, usize)>,
    /// The earliest start of any record that has one (a kernel still running included) and
    /// of any scope ([`JoinedEvents::first_ns`]).
    first_ns: Option<u64>,
    trace_ids: HashMap<ScopeId, Option<String>>,
    /// End of the last record or scope, CUPTI ns (where a scope still open is drawn to);
    /// `None`: neither has one (the base time is used, [`JoinedEvents::open_scope_end`]).
    last_ns: Option<u64>,
    stats: JoinStats,
    gpu_rows: BTreeSet<(i64, i64)>,
    cpu_threads: BTreeSet<i64>,
    /// The event [`crate::trace::EventSource::event`] builds into and lends, boxed so that
    /// taking it out of `self` to build into moves a pointer, not the event.
    scratch: Option<Box<TraceEvent>>,
}

impl<'a> JoinedEvents<'a> {
    /// Plans the join of `records` with `scopes` (see [`build_trace`] for what each event
    /// holds). Events are ordered by `ts` (ties: records in arrival order, then scopes by
    /// id); with `cpu_first`, the scopes come first, then the GPU activity, then the API
    /// calls, each part in `ts` order, so a writer cut short by a deadline loses the API calls
    /// and then the tail of the GPU activity, and keeps every scope.
    pub fn new(
        records: &'a [ActivityRecord],
        scopes: &'a ScopeTable,
        classifier: &'a mut Classifier,
        opts: &JoinOptions,
        cpu_first: bool,
    ) -> JoinedEvents<'a> {
        Self::plan(records, std::borrow::Cow::Owned(CorrelationRuns::new()), scopes, classifier, opts, cpu_first)
    }

    /// [`JoinedEvents::new`] with gpuspan's external correlations given apart from the
    /// records as well (`correlations`: correlation id → scope id): the agent keeps them as
    /// runs rather than as one record per launch. An external-correlation record among
    /// `records` overrides what `correlations` says of its id (the runs are then copied; else
    /// they are read where they are).
    pub fn with_correlations(
        records: &'a [ActivityRecord],
        correlations: &'a CorrelationRuns,
        scopes: &'a ScopeTable,
        classifier: &'a mut Classifier,
        opts: &JoinOptions,
        cpu_first: bool,
    ) -> JoinedEvents<'a> {
        Self::plan(records, std::borrow::Cow::Borrowed(correlations), scopes, classifier, opts, cpu_first)
    }

    fn plan(
        records: &'a [ActivityRecord],
        ext: std::borrow::Cow<'a, CorrelationRuns>,
        scopes: &'a ScopeTable,
        classifier: &'a mut Classifier,
        opts: &JoinOptions,
        cpu_first: bool,
    ) -> JoinedEvents<'a> {
        let scope_list = scopes.iter_sorted();
        let run_scopes = run_scopes_of(&ext, scopes);
        let mut j = JoinedEvents {
            records,
            scope_list,
            scopes,
            classifier,
            opts: opts.clone(),
            ext,
            run_scopes,
            ext_hint: 0,
            order: Vec::new(),
            first_ns: None,
            trace_ids: HashMap::default(),
            last_ns: None,
            stats: JoinStats::default(),
            gpu_rows: BTreeSet::new(),
            cpu_threads: BTreeSet::new(),
            scratch: None,
        };
        // The write order's three parts, each in arrival order and so nearly sorted by `ts`
        // already (API calls per thread, GPU activity per stream, scopes by id): sorted
        // apart, each is a few runs for the stable sort to merge, where one mixed vector
        // sorted whole costs a full sort (issue 14, item 1).
        let mut scopes_part: Vec<(u64, usize)> = Vec::with_capacity(j.scope_list.len());
        let mut gpu_part: Vec<(u64, usize)> = Vec::with_capacity(records.len());
        let mut api_part: Vec<(u64, usize)> = Vec::new();
        // The earliest start (`first_ns`), found in this pass: the agent's capture sets its
        // base time from it, where a pass of its own over every record was 3.6 % of the
        // exit thread (issue 14, item 1).
        let mut first_ns: Option<u64> = None;
        let mut saw = |ns: u64| first_ns = Some(first_ns.map_or(ns, |f: u64| f.min(ns)));
        // The last row and thread added to the sets: records come in runs of one stream or
        // thread, and a set insert per record was 10 % of this loop (issue 14, item 3).
        let (mut last_row, mut last_thread) = (None, None);
        // The end of the last record (kernel or API call) or scope.
        let mut last_ns: Option<u64> = scopes.scopes.values().filter_map(|s| s.end_ns).max();
        // Whether gpuspan's own external correlations were among the records (the agent keeps
        // them apart, so its captures have none): they are taken in this same pass, which
        // then counts the attributed GPU records again once it has them all (a record may
        // come before its external correlation). A pass of their own over every record
        // first was 2.6 % of the exit thread in fine mode (issue 14, item 1).
        let mut own_correlations = false;
        for (i, r) in records.iter().enumerate() {
            let (corr, start_ns, row) = match r {
                ActivityRecord::Kernel(k) => {
                    last_ns = last_ns.max(Some(k.end_ns));
                    if k.start_ns > 0 {
                        saw(k.start_ns);
                    }
                    if k.end_ns == 0 || k.end_ns < k.start_ns {
                        j.stats.incomplete += 1;
                        continue;
                    }
                    (k.correlation_id, k.start_ns, (k.device_id, k.stream_id))
                }
                ActivityRecord::Memcpy(m) => {
                    saw(m.start_ns);
                    (m.correlation_id, m.start_ns, (m.device_id, m.stream_id))
                }
                ActivityRecord::Memset(m) => {
                    saw(m.start_ns);
                    (m.correlation_id, m.start_ns, (m.device_id, m.stream_id))
                }
                ActivityRecord::Api(a) => {
                    last_ns = last_ns.max(Some(a.end_ns));
                    saw(a.start_ns);
                    if opts.include_api {
                        if last_thread != Some(a.thread_id) {
                            j.cpu_threads.insert(a.thread_id as i64);
                            last_thread = Some(a.thread_id);
                        }
                        api_part.push((a.start_ns, i));
                    }
                    continue;
                }
                ActivityRecord::ExternalCorrelation(e) => {
                    if e.external_kind == GPUSPAN_EXTERNAL_KIND {
                        j.ext.to_mut().insert(e.correlation_id, e.external_id);
                        own_correlations = true;
                    }
                    continue;
                }
                _ => continue,
            };
            j.stats.gpu_events += 1;
            // Once the runs have changed, `run_scopes` no longer matches them: counted after.
            if !own_correlations && j.scope_of(corr).0.is_some() {
                j.stats.attributed += 1;
            }
            if last_row != Some(row) {
                j.gpu_rows.insert((row.0 as i64, row.1 as i64));
                last_row = Some(row);
            }
            gpu_part.push((start_ns, i));
        }
        j.last_ns = last_ns;
        if own_correlations {
            j.run_scopes = run_scopes_of(&j.ext, scopes);
            j.ext_hint = 0;
            j.stats.attributed = 0;
            for &(_, i) in &gpu_part {
                if j.scope_of(records[i].correlation_id()).0.is_some() {
                    j.stats.attributed += 1;
                }
            }
        }
        for (i, s) in j.scope_list.iter().enumerate() {
            j.cpu_threads.insert(s.thread_id as i64);
            saw(s.begin_ns);
            scopes_part.push((s.begin_ns, records.len() + i));
        }
        j.first_ns = first_ns;
        for part in [&mut scopes_part, &mut gpu_part, &mut api_part] {
            part.sort_by_key(|a| a.0);
        }
        let order = if cpu_first {
            // Scopes, then GPU activity, then API calls, each in `ts` order.
            let mut order = scopes_part;
            order.append(&mut gpu_part);
            order.append(&mut api_part);
            order
        } else {
            // By `ts`, ties in push order (records by index, then scopes by id): what one
            // stable sort of everything gave.
            merge_by_ts_then_index([gpu_part, api_part, scopes_part])
        };
        j.order = order;
        j
    }

    /// The counts of this join (known before any event is built).
    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// The earliest start, CUPTI ns, of the records that have one (every kernel with a start,
    /// still running or not; every memcpy, memset and API call, included or not) and of the
    /// scopes; `None` when there is none. Found while planning: the agent's capture sets its
    /// base time from it ([`JoinedEvents::rebase`]).
    pub fn first_ns(&self) -> Option<u64> {
        self.first_ns
    }

    /// Sets the base time, CUPTI ns, that every event's `ts` is relative to (and the
    /// header's `baseTimeNanoseconds`), in place of [`JoinOptions::base_time_ns`]. The
    /// write order does not depend on it; call it before building any event.
    pub fn rebase(&mut self, base_time_ns: u64) {
        self.opts.base_time_ns = base_time_ns;
    }

    /// Where a scope that began at `begin_ns` and never ended is drawn to: the end of the
    /// last record or scope, else the base time, and never before its begin.
    fn open_scope_end(&self, begin_ns: u64) -> u64 {
        self.last_ns.unwrap_or(self.opts.base_time_ns).max(begin_ns)
    }

    /// The trace's header: `baseTimeNanoseconds`, schema version 1, and a name for every
    /// row (`python3 / worker <pid>`, `thread <tid>`, `GPU <device>`, `stream <id>`), with
    /// no events.
    pub fn header(&self) -> Trace {
        let pid = self.opts.process_id as i64;
        let mut process_names = BTreeMap::new();
        let mut thread_names = BTreeMap::new();
        process_names.insert(pid, format!("python3 / worker {}", self.opts.process_id));
        for t in &self.cpu_threads {
            thread_names.insert((pid, *t), format!("thread {t}"));
        }
        for &(dev, stream) in &self.gpu_rows {
            process_names.entry(dev).or_insert_with(|| format!("GPU {dev}"));
            thread_names.insert((dev, stream), format!("stream {stream}"));
        }
        Trace {
            events: Vec::new(),
            base_time_ns: Some(self.opts.base_time_ns as i64),
            schema_version: Some(1),
            device_properties: None,
            distributed_info: None,
            process_names,
            thread_names,
            counters: Vec::new(),
        }
    }

    /// The scope a launch with correlation id `corr` ran in (its external correlation), and
    /// that scope's step.
    fn scope_of(&mut self, corr: u32) -> (Option<&'a ScopeInfo>, Option<&'a ScopeInfo>) {
        match self.ext.find_run(corr, &mut self.ext_hint) {
            Some(i) => self.run_scopes[i],
            None => (None, None),
        }
    }

    fn trace_id_of(&mut self, request: ScopeId) -> Option<&str> {
        let (scopes, seed, env_tp) = (self.scopes, self.opts.trace_seed, self.opts.env_traceparent.as_deref());
        self.trace_ids
            .entry(request)
            .or_insert_with(|| scopes.get(request).and_then(|r| r.trace_id_for(seed, env_tp)))
            .as_deref()
    }

    /// `stage`, and the scope, step and trace id of a GPU event launched inside `scope` (the
    /// scope its correlation id names, if any): what [`Self::gpu_attribution`] found, as the
    /// event's strings.
    fn attribute(&mut self, ev: &mut TraceEvent, a: &GpuAttribution<'a>, spare: &mut Spare) {
        ev.stage = Some(spare.stage(&a.stage));
        if let Some(s) = a.scope {
            ev.scope = Some(spare.scope(&s.name));
            if let Some(step) = a.step {
                ev.step = Some(spare.step(&step.name));
            }
            if let Some(rid) = s.attribution.request {
                ev.trace_id = self.trace_id_of(rid).map(|t| spare.trace_id(t));
            }
        }
    }

    /// The join and classification of event `i` of the write order, when it is GPU activity
    /// (kernel, memcpy, memset; `None` for API calls and scopes): the scope its launch ran
    /// in (its correlation id's external correlation), that scope's step, and its stage (the
    /// scope's stage, NCCL's `communication`, else the kernel name's class, cached per
    /// interned name). Allocates nothing once every distinct kernel name has been
    /// classified: this is the join the capture writer and [`build_trace`] turn into event
    /// strings.
    pub fn gpu_attribution(&mut self, i: usize) -> Option<GpuAttribution<'a>> {
        let (_, src) = self.order[i];
        let records: &'a [ActivityRecord] = self.records;
        let (corr, stage) = match records.get(src)? {
            ActivityRecord::Kernel(k) => {
                let (scope, step) = self.scope_of(k.correlation_id);
                let stage = match crate::classify::scoped_stage(&k.name, scope.and_then(|s| s.attribution.stage)) {
                    Some(stage) => Stage::Static(stage),
                    None => Stage::Class(self.classifier.class_of(&k.name)),
                };
                return Some(GpuAttribution { scope, step, stage });
            }
            ActivityRecord::Memcpy(m) => (m.correlation_id, Stage::Static("memcpy")),
            ActivityRecord::Memset(m) => (m.correlation_id, Stage::Static("memset")),
            _ => return None,
        };
        let (scope, step) = self.scope_of(corr);
        Some(GpuAttribution { scope, step, stage })
    }

    fn shape_of(&self, i: usize) -> crate::trace::EventShape {
        let (ts_ns, src) = self.order[i];
        let ts_us = rel_us(ts_ns, self.opts.base_time_ns);
        let (pid, tid, dur_ns, cat) = match self.records.get(src) {
            Some(ActivityRecord::Kernel(k)) => (k.device_id as i64, k.stream_id as i64, k.end_ns - k.start_ns, Category::Kernel),
            Some(ActivityRecord::Memcpy(m)) => {
                (m.device_id as i64, m.stream_id as i64, m.end_ns.saturating_sub(m.start_ns), Category::GpuMemcpy)
            }
            Some(ActivityRecord::Memset(m)) => {
                (m.device_id as i64, m.stream_id as i64, m.end_ns.saturating_sub(m.start_ns), Category::GpuMemset)
            }
            Some(ActivityRecord::Api(a)) => (
                self.opts.process_id as i64,
                a.thread_id as i64,
                a.end_ns.saturating_sub(a.start_ns),
                api_category(a.domain),
            ),
            Some(_) => unreachable!("only kernel, memcpy, memset and API records are planned"),
            None => {
                let s = self.scope_list[src - self.records.len()];
                let end = s.end_ns.unwrap_or(self.open_scope_end(s.begin_ns));
                (self.opts.process_id as i64, s.thread_id as i64, end.saturating_sub(s.begin_ns), Category::UserAnnotation)
            }
        };
        crate::trace::EventShape { pid, tid, ts_us, dur_us: dur_ns as f64 / 1000.0, cat: Some(cat) }
    }

    /// Builds event `i` of the write order.
    fn build(&mut self, i: usize) -> TraceEvent {
        let mut ev = TraceEvent::default();
        self.build_into(i, &mut ev);
        ev
    }

    /// Builds event `i` of the write order into `ev`, whatever `ev` held, reusing its
    /// strings' buffers: the capture writer builds every event into one (issue 14, item 1:
    /// a fresh event per record cost a `String` for its name and one for each `gpuspan.*`
    /// arg, and freeing them, about 2,000 instructions a kernel).
    fn build_into(&mut self, i: usize, ev: &mut TraceEvent) {
        let mut spare = Spare::take(ev);
        let (_, src) = self.order[i];
        let base = self.opts.base_time_ns;
        let records: &'a [ActivityRecord] = self.records;
        match records.get(src) {
            Some(ActivityRecord::Kernel(k)) => {
                *ev = TraceEvent {
                    cat: Some(Category::Kernel),
                    name: spare.name(&k.name),
                    pid: k.device_id as i64,
                    tid: k.stream_id as i64,
                    ts_us: rel_us(k.start_ns, base),
                    dur_us: (k.end_ns - k.start_ns) as f64 / 1000.0,
                    device: Some(k.device_id as i64),
                    stream: Some(k.stream_id as i64),
                    correlation: Some(k.correlation_id as i64),
                    grid: Some(k.grid.map(|v| v as i64)),
                    block: Some(k.block.map(|v| v as i64)),
                    registers_per_thread: Some(k.registers_per_thread as i64),
                    shared_memory_bytes: Some(
                        k.static_shared_memory_bytes as i64 + k.dynamic_shared_memory_bytes as i64,
                    ),
                    ..Default::default()
                };
                if let Some(a) = self.gpu_attribution(i) {
                    self.attribute(ev, &a, &mut spare);
                }
            }
            Some(ActivityRecord::Memcpy(m)) => {
                *ev = TraceEvent {
                    cat: Some(Category::GpuMemcpy),
                    name: spare.name(m.kind.kineto_name()),
                    ..gpu_event(m.device_id, m.stream_id, m.correlation_id, m.start_ns, m.end_ns, m.bytes, base)
                };
                if let Some(a) = self.gpu_attribution(i) {
                    self.attribute(ev, &a, &mut spare);
                }
            }
            Some(ActivityRecord::Memset(m)) => {
                *ev = TraceEvent {
                    cat: Some(Category::GpuMemset),
                    name: spare.name("Memset"),
                    ..gpu_event(m.device_id, m.stream_id, m.correlation_id, m.start_ns, m.end_ns, m.bytes, base)
                };
                if let Some(a) = self.gpu_attribution(i) {
                    self.attribute(ev, &a, &mut spare);
                }
            }
            Some(ActivityRecord::Api(a)) => {
                let name = match a.domain {
                    ApiDomain::Driver => driver_api_name(a.cbid),
                    ApiDomain::Runtime => "cuda_runtime_call",
                };
                *ev = TraceEvent {
                    cat: Some(api_category(a.domain)),
                    name: spare.name(name),
                    pid: self.opts.process_id as i64,
                    tid: a.thread_id as i64,
                    ts_us: rel_us(a.start_ns, base),
                    dur_us: a.end_ns.saturating_sub(a.start_ns) as f64 / 1000.0,
                    correlation: Some(a.correlation_id as i64),
                    ..Default::default()
                };
            }
            Some(_) => unreachable!("only kernel, memcpy, memset and API records are planned"),
            None => {
                let s = self.scope_list[src - records.len()];
                let end = s.end_ns.unwrap_or(self.open_scope_end(s.begin_ns));
                *ev = TraceEvent {
                    cat: Some(Category::UserAnnotation),
                    name: spare.name(&s.name),
                    pid: self.opts.process_id as i64,
                    tid: s.thread_id as i64,
                    ts_us: rel_us(s.begin_ns, base),
                    dur_us: end.saturating_sub(s.begin_ns) as f64 / 1000.0,
                    ..Default::default()
                };
                if let Some(rid) = s.attribution.request {
                    if self.scopes.get(rid).is_some() {
                        ev.trace_id = self.trace_id_of(rid).map(|t| spare.trace_id(t));
                    }
                }
            }
        }
    }
}

/// The string buffers of an event being built over ([`JoinedEvents::build_into`]), each
/// handed back filled with a new value: the old event's `name` and `gpuspan.*` args.
struct Spare {
    name: String,
    stage: Option<String>,
    step: Option<String>,
    trace_id: Option<String>,
    scope: Option<String>,
}

impl Spare {
    fn take(ev: &mut TraceEvent) -> Spare {
        Spare {
            name: std::mem::take(&mut ev.name),
            stage: ev.stage.take(),
            step: ev.step.take(),
            trace_id: ev.trace_id.take(),
            scope: ev.scope.take(),
        }
    }

    fn fill(buf: Option<String>, s: &str) -> String {
        let mut b = buf.unwrap_or_default();
        b.clear();
        b.push_str(s);
        b
    }

    fn name(&mut self, s: &str) -> String {
        Self::fill(Some(std::mem::take(&mut self.name)), s)
    }

    fn stage(&mut self, s: &str) -> String {
        Self::fill(self.stage.take(), s)
    }

    fn step(&mut self, s: &str) -> String {
        Self::fill(self.step.take(), s)
    }

    fn trace_id(&mut self, s: &str) -> String {
        Self::fill(self.trace_id.take(), s)
    }

    fn scope(&mut self, s: &str) -> String {
        Self::fill(self.scope.take(), s)
    }
}

/// A GPU event's place in the scopes and its stage ([`JoinedEvents::gpu_attribution`]):
/// references into the scope table and the classifier's interned class, no copies.
#[derive(Debug, Clone)]
pub struct GpuAttribution<'a> {
    /// The scope the launch ran in, when its external correlation named one.
    pub scope: Option<&'a ScopeInfo>,
    /// That scope's step (`dit.step …`), when it is inside one.
    pub step: Option<&'a ScopeInfo>,
    /// The event's stage.
    pub stage: Stage,
}

/// A stage name: a fixed one (`memcpy`, `communication`, a stage scope's) or a kernel
/// name's class, shared with the classifier's cache.
#[derive(Debug, Clone)]
pub enum Stage {
    /// A stage known at compile time.
    Static(&'static str),
    /// A class from the [`Classifier`]'s cache.
    Class(std::sync::Arc<str>),
}

impl std::ops::Deref for Stage {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Stage::Static(s) => s,
            Stage::Class(s) => s,
        }
    }
}

fn api_category(d: ApiDomain) -> Category {
    match d {
        ApiDomain::Driver => Category::CudaDriver,
        ApiDomain::Runtime => Category::CudaRuntime,
    }
}

impl crate::trace::EventSource for JoinedEvents<'_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn shape(&self, i: usize) -> crate::trace::EventShape {
        self.shape_of(i)
    }

    /// Built into one event kept for the purpose, whose strings' buffers each build reuses
    /// (`JoinedEvents::build_into`), and lent.
    fn event(&mut self, i: usize) -> std::borrow::Cow<'_, TraceEvent> {
        let mut ev = self.scratch.take().unwrap_or_default();
        self.build_into(i, &mut ev);
        std::borrow::Cow::Borrowed(self.scratch.insert(ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ScopeTable::version`]: unique per table and copy, moved by removing or replacing a
    /// scope, kept by adding one or ending one (what the span assembler's cache relies on).
    #[test]
    fn version_moves_when_a_known_scope_goes_or_changes() {
        use crate::test_records::begin;
        let mut t = ScopeTable::new();
        let v0 = t.version();
        t.apply(&begin(1, 0, 10, "gpuspan.request model=m"));
        t.apply(&begin(2, 1, 20, "ffn"));
        t.apply(&ScopeEvent::End { id: 2, ts_ns: 30, launches: None, graph_launches: 0 });
        assert_eq!(t.version(), v0, "adding and ending scopes keep the version");
        let copy = t.clone();
        let part = t.subset(|s| s.id == 1);
        assert!(copy.version() != v0 && part.version() != v0 && copy.version() != part.version());
        assert_ne!(ScopeTable::new().version(), ScopeTable::new().version());
        t.retain(|_| true);
        assert_eq!(t.version(), v0, "a retain that keeps everything keeps the version");
        t.apply(&begin(2, 1, 40, "attention.spatial"));
        let v1 = t.version();
        assert_ne!(v1, v0, "a begin that replaces scope 2 changes the version");
        assert_eq!(t.get(2).and_then(|s| s.attribution.stage), Some("attention.spatial"));
        t.retain(|s| s.id != 2);
        assert!(t.version() != v1 && t.get(2).is_none());
    }

    use crate::test_records::{begin, ext, kernel};

    #[test]
    fn relative_times_match_the_wide_arithmetic_everywhere() {
        let edges = [0u64, 1, 999, 1_000, 1 << 53, (1 << 53) + 1, 1_733_000_000_123_456_789, (1 << 63) - 1, 1 << 63, u64::MAX];
        for &ns in &edges {
            for &base in &edges {
                let wide = (ns as i128 - base as i128) as f64 / 1000.0;
                assert_eq!(rel_us(ns, base).to_bits(), wide.to_bits(), "ns {ns} base {base}");
            }
        }
    }

    #[test]
    fn kernels_land_in_their_scopes() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut t = ScopeTable::new();
        for e in [
            begin(1, 0, 1_000, &format!("gpuspan.request {tp}")),
            begin(2, 1, 2_000, "dit.step 0/2"),
            begin(3, 2, 3_000, "ffn"),
            ScopeEvent::End { id: 3, ts_ns: 9_000, launches: None, graph_launches: 0 },
            ScopeEvent::End { id: 2, ts_ns: 9_500, launches: None, graph_launches: 0 },
            ScopeEvent::End { id: 1, ts_ns: 10_000, launches: None, graph_launches: 0 },
            ScopeEvent::End { id: 99, ts_ns: 10_000, launches: None, graph_launches: 0 },
        ] {
            t.apply(&e);
        }
        assert_eq!(t.orphan_ends, 1);
        // Records out of order: kernel before its external correlation, as CUPTI may deliver.
        let recs = vec![
            kernel("sm90_xmma_gemm_bf16", 5, 4_000, 6_000),
            ext(5, 3),
            kernel("flash_fwd_kernel", 6, 6_000, 7_500),
            ext(6, 2),
            kernel("unscoped_thing", 7, 8_000, 8_500),
            kernel("still_running", 8, 8_600, 0),
        ];
        let mut c = Classifier::default();
        let opts = JoinOptions { base_time_ns: 1_000, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        let (trace, st) = build_trace(&recs, &t, &mut c, &opts);
        assert_eq!(st, JoinStats { gpu_events: 3, attributed: 2, incomplete: 1 });
        let ks: Vec<_> = trace.kernels().collect();
        assert_eq!(ks.len(), 3);
        assert_eq!(ks[0].name, "sm90_xmma_gemm_bf16");
        assert_eq!(ks[0].stage.as_deref(), Some("ffn"), "scope decides over the name rule");
        assert_eq!(ks[0].step.as_deref(), Some("dit.step 0/2"));
        assert_eq!(ks[0].trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(ks[0].ts_us, 3.0);
        assert_eq!(ks[0].dur_us, 2.0);
        assert_eq!(ks[0].shared_memory_bytes, Some(1024));
        assert_eq!(ks[1].stage.as_deref(), Some("attention"), "name rule when no stage scope");
        assert_eq!(ks[1].scope.as_deref(), Some("dit.step 0/2"));
        assert_eq!(ks[2].stage.as_deref(), Some("other"));
        assert_eq!(ks[2].step, None);
        let ann: Vec<_> = trace.events.iter().filter(|e| e.is(&Category::UserAnnotation)).collect();
        assert_eq!(ann.len(), 3);
        assert_eq!(trace.thread_names.get(&(0, 7)).map(String::as_str), Some("stream 7"));
    }

    #[test]
    fn planned_events_are_built_on_demand_in_order() {
        use crate::trace::EventSource;
        let mut t = ScopeTable::new();
        for e in [
            begin(1, 0, 1_000, "dit.step 0/1"),
            begin(2, 1, 2_000, "ffn"),
            ScopeEvent::End { id: 2, ts_ns: 9_000, launches: None, graph_launches: 0 },
            begin(3, 0, 8_000, "dit.step 1/2"),
        ] {
            t.apply(&e);
        }
        let recs = vec![
            kernel("late_kernel", 6, 7_000, 7_500),
            ext(6, 2),
            kernel("early_kernel", 5, 4_000, 6_000),
            ext(5, 2),
            kernel("still_running", 8, 8_600, 0),
        ];
        let opts = JoinOptions { base_time_ns: 1_000, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        let (built, st) = build_trace(&recs, &t, &mut Classifier::default(), &opts);
        let mut c = Classifier::default();
        let mut j = JoinedEvents::new(&recs, &t, &mut c, &opts, false);
        assert_eq!(j.stats(), st, "the counts are known before any event is built");
        assert_eq!(j.len(), built.events.len());
        let header = j.header();
        assert_eq!((header.process_names.clone(), header.thread_names.clone()), (built.process_names.clone(), built.thread_names.clone()));
        for (i, e) in built.events.iter().enumerate() {
            assert_eq!(j.shape(i), crate::trace::EventShape::of(e), "shape {i}");
            assert_eq!(&*j.event(i), e, "event {i}");
        }
        let names: Vec<&str> = built.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dit.step 0/1", "ffn", "early_kernel", "late_kernel", "dit.step 1/2"], "ts order");
        // Scopes first (an exit budget cuts the GPU tail, never a step range).
        let mut c = Classifier::default();
        let mut j = JoinedEvents::new(&recs, &t, &mut c, &opts, true);
        let names: Vec<String> = (0..j.len()).map(|i| j.event(i).name.clone()).collect();
        assert_eq!(names, ["dit.step 0/1", "ffn", "dit.step 1/2", "early_kernel", "late_kernel"]);
        assert_eq!(j.event(2).dur_us, 1.0, "a scope still open is drawn to the last end seen (ffn's, 9 000 ns)");
    }

    /// The writer's events are built one over the other into one event
    /// (`JoinedEvents::build_into`, reusing its strings): whatever came before, each is the
    /// event `build_trace` builds alone, with none of the previous one's args left over. Every
    /// kind follows every kind: a kernel with a request's trace id, step and scope, a
    /// memcpy, a memset, driver API calls (no args but the correlation), scopes, a kernel
    /// outside any scope, in both write orders.
    #[test]
    fn events_built_over_each_other_keep_nothing_of_the_last() {
        use crate::activity::{MemcpyKind, MemcpyRecord, MemsetRecord};
        use crate::trace::EventSource;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut t = ScopeTable::new();
        for e in [
            begin(1, 0, 1_000, &format!("gpuspan.request {tp} model=m")),
            begin(2, 1, 1_100, "dit.step 0/2"),
            begin(3, 2, 1_200, "attention.spatial"),
            ScopeEvent::End { id: 3, ts_ns: 30_000, launches: None, graph_launches: 0 },
            ScopeEvent::End { id: 2, ts_ns: 31_000, launches: None, graph_launches: 0 },
            ScopeEvent::End { id: 1, ts_ns: 40_000, launches: None, graph_launches: 0 },
        ] {
            t.apply(&e);
        }
        let api = |corr: u32, start_ns: u64| {
            ActivityRecord::Api(crate::activity::ApiRecord {
                domain: ApiDomain::Driver,
                cbid: 307,
                start_ns,
                end_ns: start_ns + 300,
                process_id: 42,
                thread_id: 7,
                correlation_id: corr,
                return_value: 0,
            })
        };
        let mut recs = Vec::new();
        for k in 0..4u32 {
            let corr = 10 + 3 * k;
            let at = 2_000 + 6_000 * k as u64;
            recs.push(api(corr, at));
            recs.push(ext(corr, 3));
            recs.push(kernel("flash_fwd_kernel_with_a_long_name_that_needs_its_own_buffer", corr, at + 500, at + 1_500));
            recs.push(api(corr + 1, at + 1_600));
            recs.push(ext(corr + 1, 2));
            recs.push(ActivityRecord::Memcpy(MemcpyRecord {
                kind: MemcpyKind::HtoD,
                bytes: 4096,
                start_ns: at + 1_700,
                end_ns: at + 1_800,
                device_id: 0,
                context_id: 1,
                stream_id: 7,
                correlation_id: corr + 1,
            }));
            recs.push(api(corr + 2, at + 2_000));
            recs.push(ActivityRecord::Memset(MemsetRecord {
                value: 0,
                bytes: 64,
                start_ns: at + 2_100,
                end_ns: at + 2_150,
                device_id: 0,
                context_id: 1,
                stream_id: 7,
                correlation_id: corr + 2,
            }));
        }
        recs.push(kernel("x", 99, 50_000, 50_100));
        let opts = JoinOptions { base_time_ns: 1_000, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        let (built, _) = build_trace(&recs, &t, &mut Classifier::default(), &opts);
        assert!(built.events.iter().any(|e| e.trace_id.is_some() && e.step.is_some() && e.scope.is_some()));
        assert!(built.events.iter().any(|e| e.is(&Category::CudaDriver)) && built.events.iter().any(|e| e.is(&Category::GpuMemset)));
        for cpu_first in [false, true] {
            let (mut c, mut c2) = (Classifier::default(), Classifier::default());
            let mut alone = JoinedEvents::new(&recs, &t, &mut c, &opts, cpu_first);
            let mut over = JoinedEvents::new(&recs, &t, &mut c2, &opts, cpu_first);
            for i in 0..over.len() {
                assert_eq!(*over.event(i), alone.build(i), "event {i}, cpu_first {cpu_first}");
            }
        }
    }

    /// gpuspan's external correlations given apart as runs (`JoinedEvents::with_correlations`,
    /// as the agent keeps them) join as the same records inline do.
    #[test]
    fn correlations_given_apart_join_as_records_inline() {
        use crate::trace::EventSource;
        let mut t = ScopeTable::new();
        for e in [begin(1, 0, 1_000, "dit.step 0/1"), begin(2, 1, 2_000, "ffn"), begin(3, 1, 5_000, "attention.spatial")] {
            t.apply(&e);
        }
        let inline = vec![
            ext(5, 2),
            kernel("a", 5, 4_000, 4_500),
            ext(6, 2),
            kernel("b", 6, 4_600, 4_700),
            ext(7, 3),
            kernel("c", 7, 6_000, 6_100),
            kernel("no_scope", 9, 7_000, 7_100),
        ];
        let mut apart = CorrelationRuns::new();
        let records: Vec<ActivityRecord> = inline
            .iter()
            .filter(|r| match r {
                ActivityRecord::ExternalCorrelation(e) => {
                    apart.insert(e.correlation_id, e.external_id);
                    false
                }
                _ => true,
            })
            .cloned()
            .collect();
        assert_eq!(apart.run_count(), 2);
        let opts = JoinOptions { base_time_ns: 0, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        let (mut c1, mut c2) = (Classifier::default(), Classifier::default());
        let mut a = JoinedEvents::new(&inline, &t, &mut c1, &opts, false);
        let mut b = JoinedEvents::with_correlations(&records, &apart, &t, &mut c2, &opts, false);
        assert_eq!((a.len(), a.stats()), (b.len(), b.stats()));
        for i in 0..a.len() {
            assert_eq!(*a.event(i), *b.event(i), "event {i}");
        }
        assert!((0..b.len()).any(|i| b.event(i).scope.as_deref() == Some("attention.spatial")));
    }

    /// The first start the plan finds is every record's and scope's earliest (a kernel still
    /// running included), and a join rebased to a base time after planning writes the events
    /// and header that one planned with it writes.
    #[test]
    fn a_join_rebased_after_planning_is_the_join_planned_with_that_base() {
        use crate::trace::EventSource;
        let mut t = ScopeTable::new();
        for e in [begin(1, 0, 3_000_123, "dit.step 0/1"), begin(2, 1, 3_100_000, "ffn"), begin(3, 0, 9_000_000, "dit.step 1/2")] {
            t.apply(&e);
        }
        t.apply(&ScopeEvent::End { id: 2, ts_ns: 3_900_000, launches: None, graph_launches: 0 });
        let records = vec![
            kernel("a", 5, 3_200_000, 3_250_000),
            ext(5, 2),
            kernel("still_running", 6, 2_500_007, 0),
            kernel("b", 7, 3_300_000, 3_450_001),
        ];
        let opts_at = |base| JoinOptions { base_time_ns: base, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        let (mut c1, mut c2) = (Classifier::default(), Classifier::default());
        let mut late = JoinedEvents::new(&records, &t, &mut c1, &opts_at(0), false);
        assert_eq!(late.first_ns(), Some(2_500_007), "the running kernel's start is the earliest");
        late.rebase(2_000_000);
        let mut planned = JoinedEvents::new(&records, &t, &mut c2, &opts_at(2_000_000), false);
        assert_eq!(late.header(), planned.header());
        assert_eq!(late.len(), planned.len());
        for i in 0..late.len() {
            assert_eq!(late.shape(i), planned.shape(i), "shape {i}");
            assert_eq!(*late.event(i), *planned.event(i), "event {i}");
        }
        // Open steps are drawn to the last end of a record or scope, in µs since the new base.
        let open = (0..late.len()).map(|i| late.event(i).into_owned()).find(|e| e.name == "dit.step 1/2").expect("the open step");
        assert_eq!((open.ts_us, open.dur_us), (7_000.0, 0.0), "begun after every record ended");
        let step0 = (0..late.len()).map(|i| late.event(i).into_owned()).find(|e| e.name == "dit.step 0/1").expect("step 0");
        assert_eq!((step0.ts_us, step0.dur_us), (1_000.123, 899.877), "open step 0 ends at the last end of a record or scope (ffn's)");
        let empty = ScopeTable::new();
        let mut c3 = Classifier::default();
        assert_eq!(JoinedEvents::new(&[], &empty, &mut c3, &opts_at(0), false).first_ns(), None);
    }

    /// An external-correlation record among the records overrides what the runs given apart
    /// say of its id, even when it comes after its kernel, and the attributed count is that
    /// of the final join (the records' own correlations are taken in the planning pass
    /// itself, and the count made again once they are all in).
    #[test]
    fn an_inline_correlation_after_its_kernel_overrides_the_runs_given_apart() {
        use crate::trace::EventSource;
        let mut t = ScopeTable::new();
        for e in [begin(1, 0, 1_000, "dit.step 0/1"), begin(2, 1, 2_000, "ffn"), begin(3, 1, 5_000, "attention.spatial")] {
            t.apply(&e);
        }
        let mut apart = CorrelationRuns::new();
        apart.insert(5, 2);
        apart.insert(6, 2);
        let records = vec![
            kernel("a", 5, 4_000, 4_500),
            kernel("b", 6, 4_600, 4_700),
            kernel("c", 7, 6_000, 6_100),
            ext(5, 3),
            ext(7, 3),
            kernel("no_scope", 9, 7_000, 7_100),
        ];
        let opts = JoinOptions { base_time_ns: 0, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        let mut c = Classifier::default();
        let mut j = JoinedEvents::with_correlations(&records, &apart, &t, &mut c, &opts, false);
        assert_eq!(j.stats(), JoinStats { gpu_events: 4, attributed: 3, incomplete: 0 });
        let scope_of = |j: &mut JoinedEvents<'_>, name: &str| {
            (0..j.len()).map(|i| j.event(i).into_owned()).find(|e| e.name == name).and_then(|e| e.scope)
        };
        assert_eq!(scope_of(&mut j, "a").as_deref(), Some("attention.spatial"), "the inline record wins");
        assert_eq!(scope_of(&mut j, "b").as_deref(), Some("ffn"), "the runs given apart hold");
        assert_eq!(scope_of(&mut j, "c").as_deref(), Some("attention.spatial"));
        assert_eq!(scope_of(&mut j, "no_scope"), None);
        assert_eq!(apart.run_count(), 1, "the caller's runs are not changed");
    }

    /// The write order (parts sorted apart, then merged or concatenated) is what one stable
    /// sort of everything gave: by `ts`, ties in push order (records by index, then scopes
    /// by id); with `cpu_first`, scopes, GPU activity, API calls, each by `ts`.
    #[test]
    fn write_order_is_the_stable_sort_of_everything() {
        let mut t = ScopeTable::new();
        let mut recs = Vec::new();
        let mut x = 12345u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % 40 * 500 // few distinct times: many ties
        };
        for id in 1..=30u64 {
            t.apply(&begin(id, 0, 1_000 + next(), "ffn"));
        }
        for corr in 1..=200u32 {
            let start = 1_000 + next();
            recs.push(kernel("k", corr, start, start + 100));
            if corr % 3 == 0 {
                let a = ActivityRecord::Api(crate::activity::ApiRecord {
                    domain: crate::activity::ApiDomain::Driver,
                    cbid: 307,
                    start_ns: start,
                    end_ns: start + 50,
                    process_id: 42,
                    thread_id: 7,
                    correlation_id: corr,
                    return_value: 0,
                });
                recs.push(a);
            }
        }
        let opts = JoinOptions { base_time_ns: 1_000, process_id: 42, include_api: true, trace_seed: None, env_traceparent: None };
        for cpu_first in [false, true] {
            let mut c = Classifier::default();
            let j = JoinedEvents::new(&recs, &t, &mut c, &opts, cpu_first);
            let mut want: Vec<(f64, usize)> = Vec::new();
            for (i, r) in recs.iter().enumerate() {
                match r {
                    ActivityRecord::Kernel(k) => want.push((rel_us(k.start_ns, 1_000), i)),
                    ActivityRecord::Api(a) => want.push((rel_us(a.start_ns, 1_000), i)),
                    _ => {}
                }
            }
            for (i, s) in t.iter_sorted().iter().enumerate() {
                want.push((rel_us(s.begin_ns, 1_000), recs.len() + i));
            }
            // The write order is kept in ns: compared in µs since the base, as written.
            let got: Vec<(f64, usize)> = j.order.iter().map(|&(ns, src)| (rel_us(ns, 1_000), src)).collect();
            let part = |src: usize| match recs.get(src) {
                None => 0u8,
                Some(ActivityRecord::Api(_)) => 2,
                Some(_) => 1,
            };
            if cpu_first {
                want.sort_by(|a, b| part(a.1).cmp(&part(b.1)).then(a.0.total_cmp(&b.0)));
            } else {
                want.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            assert_eq!(got, want, "cpu_first {cpu_first}");
        }
    }

    #[test]
    fn traceparent_validation() {
        assert!(parse_traceparent_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        assert!(parse_traceparent_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent_trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent_trace_id("garbage").is_none());
    }
}

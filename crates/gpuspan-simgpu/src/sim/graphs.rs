//! Stream capture and CUDA graphs on the simulated device (cuda.h 12.9 "Stream Management"
//! `cuStreamBeginCapture_v2` … `cuStreamGetCaptureInfo_v2`, `cuThreadExchangeStreamCaptureMode`,
//! "Graph Management" `cuGraphInstantiateWithFlags` … `cuGraphLaunch`; CUPTI-NOTES §6b).
//!
//! A capture sequence starts on one created stream (its *origin*) and records the
//! stream-ordered work issued to it as graph [`Node`]s instead of running it. Other streams
//! join the sequence by waiting on an event recorded inside it (`cuStreamWaitEvent`, a
//! *fork*) and must be joined back into the origin before `cuStreamEndCapture` (the origin
//! waits on an event recorded on them), else the end fails with
//! `CUDA_ERROR_STREAM_CAPTURE_UNJOINED`. Each capturing stream carries the set of nodes its
//! next node depends on; an event recorded in a capture holds such a set (no timestamp).
//!
//! Error codes (cuda.h `CUresult`): 900 `STREAM_CAPTURE_UNSUPPORTED`, 901 `_INVALIDATED`,
//! 902 `_MERGE`, 903 `_UNMATCHED`, 904 `_UNJOINED`, 905 `_ISOLATION`, 906 `_IMPLICIT`,
//! 907 `CUDA_ERROR_CAPTURED_EVENT`, 908 `STREAM_CAPTURE_WRONG_THREAD`, 401
//! `CUDA_ERROR_ILLEGAL_STATE`. A capture that hit an error is *invalidated*: it stays in
//! place (status `INVALIDATED`, work on its streams fails with 901) until its origin's
//! `cuStreamEndCapture`, which returns 901 and no graph.
//!
//! The per-thread capture interaction mode (`cuThreadExchangeStreamCaptureMode`, default
//! GLOBAL) is a thread-local of this library ([`thread_mode`]; `gpuspanSimReset` does not
//! touch it). The "potentially unsafe call" rule of cuda.h is [`Graphs::check_unsafe`].

use cudarc::driver::sys::CUresult::{self, *};
use std::cell::Cell;
// Integer-keyed maps of the simulator's own handles: one multiply per key, the same
// iteration order in every run (gpuspan_core::id_hash).
use gpuspan_core::id_hash::{IdHashMap as HashMap, IdHashSet as HashSet};

/// `CUstreamCaptureMode` (cuda.h; cudarc `CUstreamCaptureMode_enum`: GLOBAL 0,
/// THREAD_LOCAL 1, RELAXED 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// `CU_STREAM_CAPTURE_MODE_GLOBAL` (0), the default of every thread.
    Global,
    /// `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL` (1).
    ThreadLocal,
    /// `CU_STREAM_CAPTURE_MODE_RELAXED` (2).
    Relaxed,
}

impl CaptureMode {
    /// The mode of a raw `CUstreamCaptureMode` value; `None` for values cuda.h does not define.
    pub fn from_raw(v: u32) -> Option<CaptureMode> {
        use cudarc::driver::sys::CUstreamCaptureMode_enum as M;
        Some(match v {
            x if x == M::CU_STREAM_CAPTURE_MODE_GLOBAL as u32 => CaptureMode::Global,
            x if x == M::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL as u32 => CaptureMode::ThreadLocal,
            x if x == M::CU_STREAM_CAPTURE_MODE_RELAXED as u32 => CaptureMode::Relaxed,
            _ => return None,
        })
    }

    /// The raw `CUstreamCaptureMode` value.
    pub fn raw(self) -> u32 {
        use cudarc::driver::sys::CUstreamCaptureMode_enum as M;
        match self {
            CaptureMode::Global => M::CU_STREAM_CAPTURE_MODE_GLOBAL as u32,
            CaptureMode::ThreadLocal => M::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL as u32,
            CaptureMode::Relaxed => M::CU_STREAM_CAPTURE_MODE_RELAXED as u32,
        }
    }
}

/// `CUstreamCaptureStatus` (cuda.h; cudarc `CUstreamCaptureStatus_enum`: NONE 0, ACTIVE 1,
/// INVALIDATED 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureStatus {
    /// `CU_STREAM_CAPTURE_STATUS_NONE`: not capturing.
    None,
    /// `CU_STREAM_CAPTURE_STATUS_ACTIVE`.
    Active,
    /// `CU_STREAM_CAPTURE_STATUS_INVALIDATED`: capturing, but an error invalidated the
    /// sequence; only `cuStreamEndCapture` on its origin ends it.
    Invalidated,
}

impl CaptureStatus {
    /// The raw `CUstreamCaptureStatus` value.
    pub fn raw(self) -> u32 {
        use cudarc::driver::sys::CUstreamCaptureStatus_enum as S;
        match self {
            CaptureStatus::None => S::CU_STREAM_CAPTURE_STATUS_NONE as u32,
            CaptureStatus::Active => S::CU_STREAM_CAPTURE_STATUS_ACTIVE as u32,
            CaptureStatus::Invalidated => S::CU_STREAM_CAPTURE_STATUS_INVALIDATED as u32,
        }
    }
}

thread_local! {
    static THREAD_MODE: Cell<CaptureMode> = const { Cell::new(CaptureMode::Global) };
}

/// The calling thread's capture interaction mode (GLOBAL until the thread exchanges it).
pub fn thread_mode() -> CaptureMode {
    THREAD_MODE.with(Cell::get)
}

/// `cuThreadExchangeStreamCaptureMode`: sets the calling thread's mode, returns the old one.
pub fn exchange_thread_mode(mode: CaptureMode) -> CaptureMode {
    THREAD_MODE.with(|m| m.replace(mode))
}

/// What a graph node does when its graph is launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOp {
    /// A kernel (captured `cuLaunchKernel`); its duration is the node's `dur_ns`.
    Kernel {
        /// The kernel's name, owned by its module (`sim::names`).
        name: super::names::KernelName,
        /// Grid dimensions.
        grid: [u32; 3],
        /// Block dimensions.
        block: [u32; 3],
        /// Dynamic shared memory, bytes.
        shared_bytes: u32,
    },
    /// A copy (captured `cuMemcpy*Async`): CUPTI `copyKind`, `srcKind`, `dstKind`, bytes.
    Memcpy {
        /// `CUpti_ActivityMemcpyKind`.
        copy_kind: u8,
        /// Source `CUpti_ActivityMemoryKind`.
        src_kind: u8,
        /// Destination `CUpti_ActivityMemoryKind`.
        dst_kind: u8,
        /// Size, bytes.
        bytes: u64,
    },
    /// A memset (captured `cuMemsetD*Async`).
    Memset {
        /// Size, bytes.
        bytes: u64,
        /// The value written.
        value: u32,
    },
    /// An external event-record node (`cuEventRecordWithFlags(CU_EVENT_RECORD_EXTERNAL)` in
    /// a capture): records the event, as a timestamp, each time the graph runs.
    EventRecord {
        /// The event handle.
        event: u64,
    },
    /// An external event-wait node (`cuStreamWaitEvent(CU_EVENT_WAIT_EXTERNAL)` on an event
    /// from outside the capture): each run waits for the event's recorded time.
    EventWait {
        /// The event handle.
        event: u64,
    },
}

/// One node of a captured graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// CUPTI `graphNodeId` (unique in the process; an instantiated exec gets new ids, as
    /// CUPTI's node-cloned resource callback reports).
    pub id: u64,
    /// What it does.
    pub op: NodeOp,
    /// GPU duration, ns (0 for event records).
    pub dur_ns: u64,
    /// Indices (into the same node list) of the nodes it depends on; always earlier ones.
    pub deps: Vec<usize>,
}

/// One capture sequence.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Capture sequence id (`cuStreamGetCaptureInfo` `id_out`), unique in the process.
    pub id: u64,
    /// The stream it began on (the only one `cuStreamEndCapture` accepts).
    pub origin: u64,
    /// The mode passed to `cuStreamBeginCapture_v2`.
    pub mode: CaptureMode,
    /// OS thread id (gettid) of the thread that began it.
    pub tid: u32,
    /// An error invalidated the sequence.
    pub invalidated: bool,
    /// Handle of the graph being captured into (`graph_out`), valid after a successful end.
    pub graph: u64,
    /// CUPTI `graphId` of that graph.
    pub graph_id: u32,
    /// Nodes so far, in capture order (a topological order).
    pub nodes: Vec<Node>,
}

/// A stream taking part in a capture.
#[derive(Debug, Clone)]
struct Member {
    capture: u64,
    /// Created without `CU_STREAM_NON_BLOCKING`: the legacy stream implicitly depends on it.
    blocking: bool,
    /// Nodes the stream's next node depends on.
    deps: Vec<usize>,
    /// `deps` as `CUgraphNode` handles (the array `cuStreamGetCaptureInfo_v2` lends out).
    dep_handles: Vec<u64>,
    /// One zeroed `CUgraphEdgeData` (8 bytes: default edges) per dependency, for
    /// `cuStreamGetCaptureInfo_v3`'s `edgeData_out`.
    dep_edges: Vec<[u8; 8]>,
}

/// An event last recorded in a capture: it holds a dependency set, not a timestamp.
#[derive(Debug, Clone)]
struct CapturedEvent {
    capture: u64,
    deps: Vec<usize>,
}

/// A graph (`CUgraph`) made by `cuStreamEndCapture`.
#[derive(Debug, Clone)]
pub struct Graph {
    /// CUPTI `graphId`.
    pub id: u32,
    /// Its nodes, dependencies by index.
    pub nodes: Vec<Node>,
}

/// An executable graph (`CUgraphExec`) made by `cuGraphInstantiate*`.
#[derive(Debug, Clone)]
pub struct Exec {
    /// CUPTI `graphId` of the graph it was instantiated from (the kernel records' `graphId`).
    pub graph_id: u32,
    /// Clones of the graph's nodes with their own `graphNodeId`s.
    pub nodes: Vec<Node>,
    /// GPU time at which its last launch ends (cuda.h `cuGraphLaunch`: each launch is
    /// ordered behind previous launches of the same exec).
    pub tail_ns: u64,
}

/// What `cuStreamGetCaptureInfo*` reports about a capturing stream.
#[derive(Debug, Clone, Copy)]
pub struct CaptureInfo {
    /// ACTIVE or INVALIDATED.
    pub status: CaptureStatus,
    /// Capture sequence id.
    pub id: u64,
    /// Graph handle being captured into.
    pub graph: u64,
    /// Driver-owned array of the stream's current dependency node handles (valid until the
    /// next call that operates on the stream, as cuda.h says).
    pub deps: *const u64,
    /// A parallel array of zeroed `CUgraphEdgeData` (stream capture makes default edges).
    pub edges: *const [u8; 8],
    /// Its length.
    pub num_deps: usize,
}

/// What `cuStreamWaitEvent` does under capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The event and the stream are outside any capture: an ordinary wait.
    Ordinary,
    /// Captured: the stream's dependency set grew, or the stream joined the event's capture.
    Captured,
}

const GRAPH_HANDLE_BASE: u64 = 0x6a9f_0000_0000;
const EXEC_HANDLE_BASE: u64 = 0x6e8e_0000_0000;
const NODE_HANDLE_BASE: u64 = 0x6d0d_0000_0000;

/// `CUgraphNode` handle of the node with `graphNodeId` `id`.
pub fn node_handle(id: u64) -> u64 {
    NODE_HANDLE_BASE + id * 0x10
}

/// All capture sequences, graphs and executable graphs of the process.
#[derive(Debug, Default)]
pub struct Graphs {
    captures: HashMap<u64, Capture>,
    members: HashMap<u64, Member>,
    events: HashMap<u64, CapturedEvent>,
    graphs: HashMap<u64, Graph>,
    execs: HashMap<u64, Exec>,
    last_capture_id: u64,
    last_graph_id: u32,
    last_node_id: u64,
    last_handle: u64,
}

impl Graphs {
    fn next_node_id(&mut self) -> u64 {
        self.last_node_id += 1;
        self.last_node_id
    }

    fn next_handle(&mut self, base: u64) -> u64 {
        self.last_handle += 1;
        base + self.last_handle * 0x10
    }

    /// `cuStreamBeginCapture_v2` on created stream `stream` (the caller rejects the legacy
    /// and per-thread streams): 401 if it already takes part in a capture.
    pub fn begin(
        &mut self,
        stream: u64,
        blocking: bool,
        mode: CaptureMode,
        tid: u32,
    ) -> Result<u64, CUresult> {
        if self.members.contains_key(&stream) {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        }
        self.last_capture_id += 1;
        self.last_graph_id += 1;
        let id = self.last_capture_id;
        let graph = self.next_handle(GRAPH_HANDLE_BASE);
        self.captures.insert(
            id,
            Capture {
                id,
                origin: stream,
                mode,
                tid,
                invalidated: false,
                graph,
                graph_id: self.last_graph_id,
                nodes: Vec::new(),
            },
        );
        self.members.insert(
            stream,
            Member {
                capture: id,
                blocking,
                deps: Vec::new(),
                dep_handles: Vec::new(),
                dep_edges: Vec::new(),
            },
        );
        Ok(id)
    }

    /// The capture `stream` takes part in.
    pub fn capture_of(&self, stream: u64) -> Option<&Capture> {
        self.members
            .get(&stream)
            .and_then(|m| self.captures.get(&m.capture))
    }

    /// `cuStreamIsCapturing` of a created stream.
    pub fn status(&self, stream: u64) -> CaptureStatus {
        match self.capture_of(stream) {
            None => CaptureStatus::None,
            Some(c) if c.invalidated => CaptureStatus::Invalidated,
            Some(_) => CaptureStatus::Active,
        }
    }

    /// `cuStreamGetCaptureInfo*` of a created stream; `None` when it is not capturing.
    pub fn info(&mut self, stream: u64) -> Option<CaptureInfo> {
        let status = self.status(stream);
        let m = self.members.get_mut(&stream)?;
        let c = self.captures.get(&m.capture)?;
        m.dep_handles = m.deps.iter().map(|&i| node_handle(c.nodes[i].id)).collect();
        m.dep_edges = vec![[0u8; 8]; m.deps.len()];
        Some(CaptureInfo {
            status,
            id: c.id,
            graph: c.graph,
            deps: m.dep_handles.as_ptr(),
            edges: m.dep_edges.as_ptr(),
            num_deps: m.dep_handles.len(),
        })
    }

    /// True while a blocking stream (one the legacy stream implicitly depends on) captures.
    pub fn blocking_capture(&self) -> bool {
        self.members.values().any(|m| m.blocking)
    }

    /// Invalidates every capture that has a blocking stream in it (legacy-stream work
    /// would depend on them: `CUDA_ERROR_STREAM_CAPTURE_IMPLICIT`).
    pub fn invalidate_blocking(&mut self) {
        let ids: HashSet<u64> = self
            .members
            .values()
            .filter(|m| m.blocking)
            .map(|m| m.capture)
            .collect();
        for id in ids {
            self.invalidate(id);
        }
    }

    /// Marks capture `id` invalidated.
    pub fn invalidate(&mut self, id: u64) {
        if let Some(c) = self.captures.get_mut(&id) {
            c.invalidated = true;
        }
    }

    /// The member entry of a stream that can take new work: 901 if its capture is invalidated.
    fn live_member(&self, stream: u64) -> Result<Option<(u64, Vec<usize>)>, CUresult> {
        let Some(m) = self.members.get(&stream) else {
            return Ok(None);
        };
        match self.captures.get(&m.capture) {
            Some(c) if c.invalidated => Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED),
            Some(_) => Ok(Some((m.capture, m.deps.clone()))),
            None => Ok(None),
        }
    }

    /// True when stream-ordered work on `stream` is captured rather than run; 901 when the
    /// stream's capture is invalidated.
    pub fn captures_work(&self, stream: u64) -> Result<bool, CUresult> {
        Ok(self.live_member(stream)?.is_some())
    }

    /// Appends a node to `stream`'s capture (after [`Graphs::captures_work`] said so);
    /// returns its `graphNodeId`.
    pub fn add_node(&mut self, stream: u64, op: NodeOp, dur_ns: u64) -> Result<u64, CUresult> {
        let (cap, deps) = self.live_member(stream)?.ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        let id = self.next_node_id();
        let c = self
            .captures
            .get_mut(&cap)
            .expect("member's capture exists");
        c.nodes.push(Node {
            id,
            op,
            dur_ns,
            deps,
        });
        let idx = c.nodes.len() - 1;
        let m = self.members.get_mut(&stream).expect("member exists");
        m.deps = vec![idx];
        Ok(id)
    }

    /// Inlines the nodes of exec `exec` into `stream`'s capture (a graph launched into a
    /// capturing stream becomes part of the graph being captured).
    pub fn capture_exec(&mut self, stream: u64, exec: u64) -> Result<(), CUresult> {
        let nodes = self
            .execs
            .get(&exec)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?
            .nodes
            .clone();
        let (cap, deps) = self.live_member(stream)?.ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        let ids: Vec<u64> = nodes.iter().map(|_| self.next_node_id()).collect();
        let c = self
            .captures
            .get_mut(&cap)
            .expect("member's capture exists");
        let base = c.nodes.len();
        let mut has_dependent = vec![false; nodes.len()];
        for (n, id) in nodes.iter().zip(ids) {
            n.deps.iter().for_each(|&d| has_dependent[d] = true);
            let d = if n.deps.is_empty() {
                deps.clone()
            } else {
                n.deps.iter().map(|d| d + base).collect()
            };
            c.nodes.push(Node {
                id,
                op: n.op.clone(),
                dur_ns: n.dur_ns,
                deps: d,
            });
        }
        let sinks: Vec<usize> = (0..nodes.len())
            .filter(|&i| !has_dependent[i])
            .map(|i| i + base)
            .collect();
        if !sinks.is_empty() {
            self.members.get_mut(&stream).expect("member exists").deps = sinks;
        }
        Ok(())
    }

    /// `cuEventRecord(event, stream)` on a capturing stream: the event now holds the
    /// stream's dependency set (no timestamp) until it is recorded again outside capture.
    pub fn record_event(&mut self, stream: u64, event: u64) -> Result<(), CUresult> {
        let (capture, deps) = self.live_member(stream)?.ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        self.events.insert(event, CapturedEvent { capture, deps });
        Ok(())
    }

    /// The event was recorded outside capture or destroyed: it no longer holds a capture's
    /// dependency set.
    pub fn forget_event(&mut self, event: u64) {
        self.events.remove(&event);
    }

    /// The live capture whose dependency set `event` holds, if any.
    pub fn event_capture(&self, event: u64) -> Option<u64> {
        self.events
            .get(&event)
            .map(|e| e.capture)
            .filter(|c| self.captures.contains_key(c))
    }

    /// True when `event` was last recorded in a capturing stream (queries, synchronize and
    /// elapsed time on it fail with `CUDA_ERROR_CAPTURED_EVENT`).
    pub fn is_captured_event(&self, event: u64) -> bool {
        self.events.contains_key(&event)
    }

    /// `cuStreamWaitEvent(stream, event)` under capture. `recorded`: the event holds
    /// completed or pending work from outside capture (recorded at least once); `external`:
    /// the `CU_EVENT_WAIT_EXTERNAL` flag.
    ///
    /// - event of live capture C, stream outside any capture: the stream joins C (fork);
    /// - event of C, stream in C: the stream's dependency set grows (join);
    /// - event of C, stream in another capture D: 902 MERGE, D invalidated;
    /// - event of a capture that has ended: 907 CAPTURED_EVENT;
    /// - event from outside capture, stream capturing: 905 ISOLATION (a dependency across
    ///   the capture boundary), the capture invalidated, unless `external` (an event-wait
    ///   node); a never-recorded event is empty work and adds nothing;
    /// - neither captured: an ordinary wait.
    pub fn wait_event(
        &mut self,
        stream: u64,
        blocking: bool,
        event: u64,
        recorded: bool,
        external: bool,
    ) -> Result<Wait, CUresult> {
        let member = self.members.get(&stream).map(|m| m.capture);
        match (self.events.get(&event).cloned(), member) {
            (Some(ev), _) if !self.captures.contains_key(&ev.capture) => {
                Err(CUDA_ERROR_CAPTURED_EVENT)
            }
            (Some(ev), None) => {
                if self.captures[&ev.capture].invalidated {
                    return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
                }
                self.members.insert(
                    stream,
                    Member {
                        capture: ev.capture,
                        blocking,
                        deps: ev.deps,
                        dep_handles: Vec::new(),
                        dep_edges: Vec::new(),
                    },
                );
                Ok(Wait::Captured)
            }
            (Some(ev), Some(cap)) if cap == ev.capture => {
                self.live_member(stream)?;
                let m = self.members.get_mut(&stream).expect("member exists");
                for d in ev.deps {
                    if !m.deps.contains(&d) {
                        m.deps.push(d);
                    }
                }
                Ok(Wait::Captured)
            }
            (Some(_), Some(cap)) => {
                self.invalidate(cap);
                Err(CUDA_ERROR_STREAM_CAPTURE_MERGE)
            }
            (None, Some(cap)) => {
                self.live_member(stream)?;
                if external {
                    self.add_node(stream, NodeOp::EventWait { event }, 0)?;
                    return Ok(Wait::Captured);
                }
                if recorded {
                    self.invalidate(cap);
                    Err(CUDA_ERROR_STREAM_CAPTURE_ISOLATION)
                } else {
                    Ok(Wait::Captured)
                }
            }
            (None, None) => Ok(Wait::Ordinary),
        }
    }

    /// `cuStreamEndCapture(stream)` from thread `tid`: the graph handle, or 401 (not
    /// capturing), 903 (not the origin), 908 (a non-RELAXED capture ended from another
    /// thread; the capture goes on), 901 (invalidated) or 904 (a forked stream was not
    /// joined back). Every outcome but 401 / 903 / 908 ends the sequence and releases its
    /// streams.
    pub fn end(&mut self, stream: u64, tid: u32) -> Result<u64, CUresult> {
        let cap = self
            .members
            .get(&stream)
            .ok_or(CUDA_ERROR_ILLEGAL_STATE)?
            .capture;
        let c = self.captures.get(&cap).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        if c.origin != stream {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
        }
        if c.mode != CaptureMode::Relaxed && c.tid != tid {
            return Err(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
        }
        let c = self.captures.remove(&cap).expect("checked above");
        let streams: Vec<(u64, Vec<usize>)> = self
            .members
            .iter()
            .filter(|(_, m)| m.capture == cap)
            .map(|(s, m)| (*s, m.deps.clone()))
            .collect();
        for (s, _) in &streams {
            self.members.remove(s);
        }
        if c.invalidated {
            return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
        let origin_deps = streams
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        let reach = ancestors(&c.nodes, &origin_deps);
        if streams
            .iter()
            .any(|(_, deps)| deps.iter().any(|d| !reach.contains(d)))
        {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNJOINED);
        }
        self.graphs.insert(
            c.graph,
            Graph {
                id: c.graph_id,
                nodes: c.nodes,
            },
        );
        Ok(c.graph)
    }

    /// Captures that forbid a potentially unsafe call from thread `tid` in mode `mode`
    /// (cuda.h `cuThreadExchangeStreamCaptureMode`): unless the thread is RELAXED, its own
    /// captures not begun in RELAXED mode, and in GLOBAL mode also other threads' captures
    /// begun in GLOBAL mode.
    pub fn prohibiting(&self, tid: u32, mode: CaptureMode) -> Vec<u64> {
        if mode == CaptureMode::Relaxed {
            return Vec::new();
        }
        let mut ids: Vec<u64> = self
            .captures
            .values()
            .filter(|c| {
                (c.tid == tid && c.mode != CaptureMode::Relaxed)
                    || (mode == CaptureMode::Global
                        && c.tid != tid
                        && c.mode == CaptureMode::Global)
            })
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The rule for potentially unsafe calls (`cuEventQuery`, `cuEventSynchronize`,
    /// `cuStreamQuery`, `cuStreamSynchronize`, `cuCtxSynchronize`, allocation and free,
    /// synchronous copies): if any capture prohibits the call ([`Graphs::prohibiting`]), it
    /// fails with `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` and invalidates those captures.
    pub fn check_unsafe(&mut self, tid: u32, mode: CaptureMode) -> Result<(), CUresult> {
        let ids = self.prohibiting(tid, mode);
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            self.invalidate(id);
        }
        Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
    }

    /// Synchronizing with or querying a capturing stream conflicts with its capture in any
    /// mode: 900 and the capture invalidated. Ok for a stream outside capture.
    pub fn check_stream_wait(&mut self, stream: u64) -> Result<(), CUresult> {
        match self.members.get(&stream).map(|m| m.capture) {
            Some(cap) => {
                self.invalidate(cap);
                Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
            }
            None => Ok(()),
        }
    }

    /// A destroyed stream leaves its capture, which is invalidated (and dropped when it was
    /// the origin, since nothing can end it any more).
    pub fn stream_destroyed(&mut self, stream: u64) {
        let Some(m) = self.members.remove(&stream) else {
            return;
        };
        self.invalidate(m.capture);
        if self
            .captures
            .get(&m.capture)
            .is_some_and(|c| c.origin == stream)
        {
            self.captures.remove(&m.capture);
            self.members.retain(|_, x| x.capture != m.capture);
        }
    }

    /// The graph behind handle `h`.
    pub fn graph(&self, h: u64) -> Option<&Graph> {
        self.graphs.get(&h)
    }

    /// `cuGraphDestroy`; false for an unknown handle.
    pub fn destroy_graph(&mut self, h: u64) -> bool {
        self.graphs.remove(&h).is_some()
    }

    /// `cuGraphInstantiate*`: a new exec holding clones of graph `graph`'s nodes.
    pub fn instantiate(&mut self, graph: u64) -> Result<u64, CUresult> {
        let g = self
            .graphs
            .get(&graph)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?
            .clone();
        let nodes = g
            .nodes
            .into_iter()
            .map(|n| Node {
                id: self.next_node_id(),
                ..n
            })
            .collect();
        let h = self.next_handle(EXEC_HANDLE_BASE);
        self.execs.insert(
            h,
            Exec {
                graph_id: g.id,
                nodes,
                tail_ns: 0,
            },
        );
        Ok(h)
    }

    /// The exec behind handle `h`.
    pub fn exec(&self, h: u64) -> Option<&Exec> {
        self.execs.get(&h)
    }

    /// Mutable access to the exec behind `h` (its launch tail).
    pub fn exec_mut(&mut self, h: u64) -> Option<&mut Exec> {
        self.execs.get_mut(&h)
    }

    /// `cuGraphExecDestroy`; false for an unknown handle.
    pub fn destroy_exec(&mut self, h: u64) -> bool {
        self.execs.remove(&h).is_some()
    }
}

/// `roots` and every node they transitively depend on.
fn ancestors(nodes: &[Node], roots: &[usize]) -> HashSet<usize> {
    let mut seen: HashSet<usize> = HashSet::default();
    let mut stack: Vec<usize> = roots.to_vec();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(nodes[i].deps.iter().copied());
        }
    }
    seen
}

/// Start and end (ns) of each node when a graph's nodes run from GPU time `base_ns`: a node
/// starts when all its dependencies have ended (roots at `base_ns`), and no earlier than
/// `floor(node)` (an event-wait node: the event's recorded time), and runs for its
/// duration; the sim adds no gap between dependent nodes.
pub fn schedule(nodes: &[Node], base_ns: u64, floor: impl Fn(&Node) -> u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(nodes.len());
    for n in nodes {
        let start = n
            .deps
            .iter()
            .map(|&d| out[d].1)
            .max()
            .unwrap_or(base_ns)
            .max(base_ns)
            .max(floor(n));
        out.push((start, start + n.dur_ns));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> NodeOp {
        NodeOp::Kernel {
            name: super::super::names::intern(0, "k"),
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_bytes: 0,
        }
    }

    #[test]
    fn modes_and_statuses_match_cuda_h() {
        for (m, v) in [
            (CaptureMode::Global, 0),
            (CaptureMode::ThreadLocal, 1),
            (CaptureMode::Relaxed, 2),
        ] {
            assert_eq!(m.raw(), v);
            assert_eq!(CaptureMode::from_raw(v), Some(m));
        }
        assert_eq!(CaptureMode::from_raw(3), None);
        assert_eq!(
            [
                CaptureStatus::None.raw(),
                CaptureStatus::Active.raw(),
                CaptureStatus::Invalidated.raw()
            ],
            [0, 1, 2]
        );
        assert_eq!(thread_mode(), CaptureMode::Global);
        assert_eq!(
            exchange_thread_mode(CaptureMode::Relaxed),
            CaptureMode::Global
        );
        assert_eq!(
            exchange_thread_mode(CaptureMode::Global),
            CaptureMode::Relaxed
        );
    }

    #[test]
    fn capture_chain_end_instantiate() {
        let mut g = Graphs::default();
        let id = g.begin(0x100, true, CaptureMode::Global, 7).unwrap();
        assert_eq!(
            g.begin(0x100, true, CaptureMode::Global, 7),
            Err(CUDA_ERROR_ILLEGAL_STATE)
        );
        assert!(g.captures_work(0x100).unwrap());
        assert!(!g.captures_work(0x200).unwrap());
        let a = g.add_node(0x100, k(), 10).unwrap();
        let b = g.add_node(0x100, k(), 20).unwrap();
        assert_ne!(a, b);
        let info = g.info(0x100).unwrap();
        assert_eq!(
            (info.id, info.num_deps, info.status),
            (id, 1, CaptureStatus::Active)
        );
        // SAFETY: the array lives in the member entry until the next call on the stream.
        assert_eq!(unsafe { *info.deps }, node_handle(b));
        assert_eq!(
            g.end(0x100, 8),
            Err(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD),
            "GLOBAL capture ended elsewhere"
        );
        let graph = g.end(0x100, 7).unwrap();
        assert_eq!(g.status(0x100), CaptureStatus::None);
        assert_eq!(g.end(0x100, 7), Err(CUDA_ERROR_ILLEGAL_STATE));
        let gr = g.graph(graph).unwrap();
        assert_eq!(gr.nodes.len(), 2);
        assert_eq!(gr.nodes[1].deps, vec![0]);
        let e1 = g.instantiate(graph).unwrap();
        let e2 = g.instantiate(graph).unwrap();
        let (x, y) = (g.exec(e1).unwrap(), g.exec(e2).unwrap());
        assert_eq!(x.graph_id, y.graph_id);
        assert_ne!(
            x.nodes[0].id, y.nodes[0].id,
            "each exec has its own node ids"
        );
        assert_eq!(schedule(&x.nodes, 100, |_| 0), vec![(100, 110), (110, 130)]);
        assert!(g.destroy_exec(e1) && !g.destroy_exec(e1));
        assert!(g.destroy_graph(graph) && !g.destroy_graph(graph));
        assert_eq!(g.instantiate(graph), Err(CUDA_ERROR_INVALID_VALUE));
    }

    #[test]
    fn fork_join_and_unjoined() {
        let mut g = Graphs::default();
        let (o, s) = (0x100, 0x200);
        g.begin(o, false, CaptureMode::Global, 1).unwrap();
        g.add_node(o, k(), 5).unwrap();
        g.record_event(o, 0xe1).unwrap();
        assert!(g.is_captured_event(0xe1));
        assert_eq!(
            g.wait_event(s, false, 0xe1, true, false),
            Ok(Wait::Captured),
            "fork"
        );
        assert_eq!(g.status(s), CaptureStatus::Active);
        assert_eq!(g.end(s, 1), Err(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED));
        g.add_node(s, k(), 7).unwrap();
        g.add_node(o, k(), 3).unwrap();
        g.record_event(s, 0xe2).unwrap();
        assert_eq!(
            g.wait_event(o, false, 0xe2, true, false),
            Ok(Wait::Captured),
            "join"
        );
        g.add_node(o, k(), 1).unwrap();
        let graph = g.end(o, 1).unwrap();
        assert_eq!(g.status(s), CaptureStatus::None, "forked stream released");
        let nodes = &g.graph(graph).unwrap().nodes;
        assert_eq!(nodes[3].deps, vec![2, 1]);
        assert_eq!(
            schedule(nodes, 0, |_| 0),
            vec![(0, 5), (5, 12), (5, 8), (12, 13)]
        );
        assert_eq!(
            g.wait_event(s, false, 0xe2, true, false),
            Err(CUDA_ERROR_CAPTURED_EVENT),
            "capture over"
        );

        // Without the join: UNJOINED.
        g.begin(o, false, CaptureMode::Global, 1).unwrap();
        g.record_event(o, 0xe3).unwrap();
        g.wait_event(s, false, 0xe3, true, false).unwrap();
        g.add_node(s, k(), 1).unwrap();
        assert_eq!(g.end(o, 1), Err(CUDA_ERROR_STREAM_CAPTURE_UNJOINED));
        assert_eq!(g.status(s), CaptureStatus::None);
    }

    #[test]
    fn isolation_merge_and_invalidation() {
        let mut g = Graphs::default();
        g.begin(0x100, false, CaptureMode::Relaxed, 1).unwrap();
        assert_eq!(
            g.wait_event(0x100, false, 0xe0, false, false),
            Ok(Wait::Captured),
            "never-recorded event: empty"
        );
        assert_eq!(
            g.wait_event(0x100, false, 0xe0, true, true),
            Ok(Wait::Captured),
            "CU_EVENT_WAIT_EXTERNAL: an event-wait node"
        );
        let waits = &g.capture_of(0x100).unwrap().nodes;
        assert_eq!(waits[0].op, NodeOp::EventWait { event: 0xe0 });
        assert_eq!(
            schedule(waits, 10, |_| 50),
            vec![(50, 50)],
            "waits for the event"
        );
        assert_eq!(
            g.wait_event(0x100, false, 0xe0, true, false),
            Err(CUDA_ERROR_STREAM_CAPTURE_ISOLATION)
        );
        assert_eq!(g.status(0x100), CaptureStatus::Invalidated);
        assert_eq!(
            g.add_node(0x100, k(), 1),
            Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
        );
        assert_eq!(
            g.end(0x100, 2),
            Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED),
            "RELAXED: any thread may end it"
        );
        g.begin(0x100, false, CaptureMode::Global, 1).unwrap();
        g.begin(0x200, false, CaptureMode::Global, 1).unwrap();
        g.record_event(0x100, 0xe1).unwrap();
        assert_eq!(
            g.wait_event(0x200, false, 0xe1, true, false),
            Err(CUDA_ERROR_STREAM_CAPTURE_MERGE)
        );
        assert_eq!(g.status(0x200), CaptureStatus::Invalidated);
        assert_eq!(g.status(0x100), CaptureStatus::Active);
    }

    #[test]
    fn unsafe_call_rule_by_mode() {
        use CaptureMode::*;
        let mut g = Graphs::default();
        g.begin(0x100, false, Global, 1).unwrap();
        g.begin(0x200, false, ThreadLocal, 2).unwrap();
        g.begin(0x300, false, Relaxed, 3).unwrap();
        // Thread 1 (GLOBAL): its own GLOBAL capture.
        assert_eq!(g.prohibiting(1, Global), vec![1]);
        // Thread 2 (THREAD_LOCAL capture) in GLOBAL mode: its own + thread 1's GLOBAL one.
        assert_eq!(g.prohibiting(2, Global), vec![1, 2]);
        // Thread 3 has a RELAXED capture: only the other thread's GLOBAL capture counts.
        assert_eq!(g.prohibiting(3, Global), vec![1]);
        assert_eq!(g.prohibiting(3, ThreadLocal), Vec::<u64>::new());
        assert_eq!(g.prohibiting(4, ThreadLocal), Vec::<u64>::new());
        assert_eq!(g.prohibiting(1, Relaxed), Vec::<u64>::new());
        assert_eq!(
            g.check_unsafe(4, Global),
            Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        );
        assert_eq!(
            [g.status(0x100), g.status(0x200), g.status(0x300)],
            [
                CaptureStatus::Invalidated,
                CaptureStatus::Active,
                CaptureStatus::Active
            ]
        );
        assert_eq!(g.check_unsafe(4, Relaxed), Ok(()));
        assert_eq!(
            g.check_stream_wait(0x300),
            Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        );
        assert_eq!(g.status(0x300), CaptureStatus::Invalidated);
    }

    #[test]
    fn blocking_captures_and_exec_inlining() {
        let mut g = Graphs::default();
        g.begin(0x100, false, CaptureMode::Global, 1).unwrap();
        assert!(!g.blocking_capture());
        g.add_node(0x100, k(), 4).unwrap();
        g.add_node(0x100, k(), 4).unwrap();
        let graph = g.end(0x100, 1).unwrap();
        let exec = g.instantiate(graph).unwrap();
        g.begin(0x200, true, CaptureMode::Global, 1).unwrap();
        assert!(g.blocking_capture());
        g.add_node(0x200, k(), 1).unwrap();
        g.capture_exec(0x200, exec).unwrap();
        g.add_node(0x200, k(), 1).unwrap();
        let outer = g.end(0x200, 1).unwrap();
        let n = &g.graph(outer).unwrap().nodes;
        assert_eq!(
            n.iter().map(|x| x.deps.clone()).collect::<Vec<_>>(),
            vec![vec![], vec![0], vec![1], vec![2]]
        );
        g.begin(0x200, true, CaptureMode::Global, 1).unwrap();
        g.invalidate_blocking();
        assert_eq!(g.status(0x200), CaptureStatus::Invalidated);
        g.stream_destroyed(0x200);
        assert_eq!(g.status(0x200), CaptureStatus::None);
        assert!(!g.blocking_capture());
    }
}

//! The Kineto-schema trace model: what a capture file holds and what `gpuspan stats` reads.
//!
//! One [`Trace`] is the in-memory form of a Kineto / torch.profiler Chrome-trace JSON file
//! (`traceEvents` of complete `ph: "X"` events). Times are µs as `f64`, Kineto's own unit,
//! relative to [`Trace::base_time_ns`] when the file has one (Kineto ≥ 2.x writes
//! `baseTimeNanoseconds` and relative `ts`), never rounded. Only complete events are kept;
//! flow (`s`/`f`), instant and metadata events are not part of the model except process /
//! thread names ([`Trace::process_names`], [`Trace::thread_names`]).
//!
//! Both category schemas map onto [`Category`]: the current one (`kernel`, `gpu_memcpy`,
//! `gpu_memset`, `cuda_runtime`, `cuda_driver`, `user_annotation`, `gpu_user_annotation`,
//! `cpu_op`, `python_function`) and the old one (`Kernel`, `Memcpy`, `Memset`, `Runtime`,
//! `Operator`).

use std::collections::BTreeMap;

/// Event category (Kineto `cat`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `kernel` / old `Kernel`.
    Kernel,
    /// `gpu_memcpy` / old `Memcpy`.
    GpuMemcpy,
    /// `gpu_memset` / old `Memset`.
    GpuMemset,
    /// `cuda_runtime` / old `Runtime`.
    CudaRuntime,
    /// `cuda_driver`.
    CudaDriver,
    /// `user_annotation` (CPU side ranges, e.g. `ProfilerStep#N`, our scopes).
    UserAnnotation,
    /// `gpu_user_annotation` (GPU-side projection of a user annotation).
    GpuUserAnnotation,
    /// `cpu_op` / old `Operator`.
    CpuOp,
    /// `python_function`.
    PythonFunction,
    /// Anything else, kept verbatim.
    Other(String),
}

impl Category {
    /// Maps a Kineto `cat` string (either schema).
    pub fn from_kineto(cat: &str) -> Category {
        match cat {
            "kernel" | "Kernel" => Category::Kernel,
            "gpu_memcpy" | "Memcpy" => Category::GpuMemcpy,
            "gpu_memset" | "Memset" => Category::GpuMemset,
            "cuda_runtime" | "Runtime" => Category::CudaRuntime,
            "cuda_driver" | "Driver" => Category::CudaDriver,
            "user_annotation" => Category::UserAnnotation,
            "gpu_user_annotation" => Category::GpuUserAnnotation,
            "cpu_op" | "Operator" => Category::CpuOp,
            "python_function" => Category::PythonFunction,
            other => Category::Other(other.to_string()),
        }
    }

    /// The current-schema `cat` string written to capture files.
    pub fn as_kineto(&self) -> &str {
        match self {
            Category::Kernel => "kernel",
            Category::GpuMemcpy => "gpu_memcpy",
            Category::GpuMemset => "gpu_memset",
            Category::CudaRuntime => "cuda_runtime",
            Category::CudaDriver => "cuda_driver",
            Category::UserAnnotation => "user_annotation",
            Category::GpuUserAnnotation => "gpu_user_annotation",
            Category::CpuOp => "cpu_op",
            Category::PythonFunction => "python_function",
            Category::Other(s) => s,
        }
    }

    /// True for GPU activity that occupies the device: kernels, memcpy, memset.
    pub fn is_gpu_activity(&self) -> bool {
        matches!(self, Category::Kernel | Category::GpuMemcpy | Category::GpuMemset)
    }

    /// True for CPU launch calls (`cuda_runtime`, `cuda_driver`).
    pub fn is_launch_api(&self) -> bool {
        matches!(self, Category::CudaRuntime | Category::CudaDriver)
    }
}

/// One complete (`ph: "X"`) trace event.
///
/// The typed `args` fields are the ones Kineto writes for GPU events (`device`, `stream`,
/// `correlation`, `External id`, `grid`, `block`, `registers per thread`, `shared memory`,
/// `bytes`) plus gpuspan's own (`gpuspan.stage`, `gpuspan.step`, `gpuspan.trace_id`,
/// `gpuspan.scope`). Other args are kept in [`TraceEvent::extra_args`] so a read → write
/// round trip loses nothing the model does not interpret.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraceEvent {
    /// Category.
    pub cat: Option<Category>,
    /// Event name (kernel name, API name, range name).
    pub name: String,
    /// Kineto `pid` (device id for GPU rows in current Kineto, OS pid for CPU rows).
    pub pid: i64,
    /// Kineto `tid` (stream for GPU rows, thread for CPU rows). Old-schema strings such as
    /// `"stream 7"` are reduced to their number.
    pub tid: i64,
    /// Start, µs, relative to [`Trace::base_time_ns`] when set.
    pub ts_us: f64,
    /// Duration, µs.
    pub dur_us: f64,
    /// `args.device`.
    pub device: Option<i64>,
    /// `args.stream`.
    pub stream: Option<i64>,
    /// `args.correlation`: the CUPTI correlation id shared by a launch and its GPU work.
    pub correlation: Option<i64>,
    /// `args["External id"]` (torch op id).
    pub external_id: Option<i64>,
    /// `args.grid`.
    pub grid: Option<[i64; 3]>,
    /// `args.block`.
    pub block: Option<[i64; 3]>,
    /// `args["registers per thread"]`.
    pub registers_per_thread: Option<i64>,
    /// `args["shared memory"]`, bytes.
    pub shared_memory_bytes: Option<i64>,
    /// `args.bytes` for memcpy / memset.
    pub bytes: Option<i64>,
    /// `args["gpuspan.stage"]`: the stage this GPU event was attributed to.
    pub stage: Option<String>,
    /// `args["gpuspan.step"]`: the step scope name (e.g. `dit.step 3/50`, `ProfilerStep#6`).
    pub step: Option<String>,
    /// `args["gpuspan.trace_id"]`: W3C trace id (32 hex) of the enclosing request.
    pub trace_id: Option<String>,
    /// `args["gpuspan.scope"]`: the innermost scope name the event was launched under.
    pub scope: Option<String>,
    /// Any other args, verbatim.
    pub extra_args: BTreeMap<String, serde_json::Value>,
}

impl TraceEvent {
    /// End, µs (`ts_us + dur_us`).
    pub fn end_us(&self) -> f64 {
        self.ts_us + self.dur_us
    }

    /// True when the event is of category `c`.
    pub fn is(&self, c: &Category) -> bool {
        self.cat.as_ref() == Some(c)
    }
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// Complete events, in file order.
    pub events: Vec<TraceEvent>,
    /// `baseTimeNanoseconds`: Unix ns that `ts_us == 0` stands for, when known.
    pub base_time_ns: Option<i64>,
    /// `schemaVersion`, when present.
    pub schema_version: Option<i64>,
    /// `deviceProperties`, verbatim, when present.
    pub device_properties: Option<serde_json::Value>,
    /// `distributedInfo`, verbatim, when present: Kineto's record of the process's place in
    /// a distributed job (`{"backend": "nccl", "rank": 3, "world_size": 8}`, kineto
    /// `libkineto/src/output_json.cpp`; HTA reads `rank` from it). See [`Trace::rank`].
    pub distributed_info: Option<serde_json::Value>,
    /// `process_name` metadata: pid → name.
    pub process_names: BTreeMap<i64, String>,
    /// `thread_name` metadata: (pid, tid) → name.
    pub thread_names: BTreeMap<(i64, i64), String>,
    /// Counter samples (`ph: "C"` events), in file order: GPU-wide figures over time, such
    /// as the agent's `nvlink_bandwidth_gbps` track.
    pub counters: Vec<CounterEvent>,
}

/// One sample of a counter track (a Chrome-trace `ph: "C"` event, "Trace Event Format",
/// section "Counter Events"): at `ts_us` the track `name` of process `pid` takes
/// `values`, which hold until the track's next sample. Chrome's trace viewer and Perfetto
/// draw one track per value key (Perfetto names it `<name> <key>`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CounterEvent {
    /// Track name (`nvlink_bandwidth_gbps`).
    pub name: String,
    /// Kineto `pid`: the device id for a GPU's counters, so the track sits with its
    /// streams.
    pub pid: i64,
    /// Start of the sample, µs on the trace's time base (the same as [`TraceEvent::ts_us`]).
    pub ts_us: f64,
    /// `args`: value key (its unit, `GB/s`) → value, in file order.
    pub values: Vec<(String, f64)>,
}

impl Trace {
    /// The rank of the process that recorded this trace (`distributedInfo.rank`), when known.
    pub fn rank(&self) -> Option<u32> {
        self.distributed_info.as_ref()?.get("rank")?.as_u64().and_then(|r| u32::try_from(r).ok())
    }

    /// `distributedInfo.world_size`, when known.
    pub fn world_size(&self) -> Option<u32> {
        self.distributed_info.as_ref()?.get("world_size")?.as_u64().and_then(|r| u32::try_from(r).ok())
    }

    /// Iterator over kernel events.
    pub fn kernels(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events.iter().filter(|e| e.is(&Category::Kernel))
    }
}

/// Where an event sits and how long it lasts, without its strings: what a writer needs of
/// every event before writing the first (row names, the `ts` of metadata events, the
/// touching-duration fixes of `gpuspan_export::kineto`).
#[derive(Debug, Clone, PartialEq)]
pub struct EventShape {
    /// `pid` of the event's row.
    pub pid: i64,
    /// `tid` of the event's row.
    pub tid: i64,
    /// Start, µs.
    pub ts_us: f64,
    /// Duration, µs.
    pub dur_us: f64,
    /// The event's category, when it has one (cheap: the GPU ones carry no string).
    pub cat: Option<Category>,
}

impl EventShape {
    /// The shape of `e`.
    pub fn of(e: &TraceEvent) -> EventShape {
        EventShape { pid: e.pid, tid: e.tid, ts_us: e.ts_us, dur_us: e.dur_us, cat: e.cat.clone() }
    }
}

/// The events of a trace, handed to a writer one at a time, in file order: either a built
/// [`Trace`]'s (borrowed) or built one by one as they are written (the agent's join,
/// `gpuspan_core::join::JoinedEvents`), so writing a capture holds no second copy of it.
pub trait EventSource {
    /// Number of events.
    fn len(&self) -> usize;
    /// True when there is none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row, times and category of event `i` (`i < len()`), without building it.
    fn shape(&self, i: usize) -> EventShape;
    /// Event `i` (`i < len()`), borrowed or built for the caller; writers ask for each `i`
    /// once, in increasing order.
    fn event(&mut self, i: usize) -> std::borrow::Cow<'_, TraceEvent>;
}

impl EventSource for &Trace {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn shape(&self, i: usize) -> EventShape {
        EventShape::of(&self.events[i])
    }

    fn event(&mut self, i: usize) -> std::borrow::Cow<'_, TraceEvent> {
        std::borrow::Cow::Borrowed(&self.events[i])
    }
}

//! Plain-data spans and timings: what the assembler hands to the OTLP exporter and to the
//! metrics (`gpuspan-export`), with no OpenTelemetry types so this crate stays I/O free.

use std::borrow::Cow;
use std::sync::Arc;

/// An attribute value (the OTLP `AnyValue` subset gpuspan writes).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(Arc<str>),
    /// A signed integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An integer array (grid / block dimensions `[x, y, z]`).
    IntArray(Vec<i64>),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// W3C trace id.
    pub trace_id: [u8; 16],
    /// This span's id (deterministic, see [`super::ids`]).
    pub span_id: [u8; 8],
    /// Parent span id; `None` for a root.
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent belongs to another process (the worker's span from its traceparent).
    pub parent_is_remote: bool,
    /// Span name (`gpu.request`, `dit.step`, a stage name, `cuda.kernel`).
    pub name: Arc<str>,
    /// Start, Unix ns (CUPTI time + the agent's clock offset).
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Attributes (`gpu.*`, `cuda.*`, `gpuspan.*`).
    pub attributes: Vec<(Cow<'static, str>, AttrValue)>,
    /// W3C tracestate of the request (empty when none).
    pub trace_state: Arc<str>,
    /// The traceparent's sampled flag.
    pub sampled: bool,
}

impl SpanRecord {
    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Rough heap + inline size in bytes, for bounding exporter backlogs.
    pub fn approx_bytes(&self) -> usize {
        let attrs: usize = self
            .attributes
            .iter()
            .map(|(k, v)| {
                k.len()
                    + 32
                    + match v {
                        AttrValue::Str(s) => s.len(),
                        AttrValue::IntArray(a) => 8 * a.len(),
                        _ => 0,
                    }
            })
            .sum();
        std::mem::size_of::<SpanRecord>() + self.name.len() + attrs
    }
}

/// GPU timing of one finished step, for the step metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTiming {
    /// `model` attribute of the request (`unknown` when none).
    pub model: Arc<str>,
    /// Trace id of the request (exemplar of the step histograms).
    pub trace_id: [u8; 16],
    /// Span id of the step's `dit.step` span (the same whether or not the trace is sampled).
    pub span_id: [u8; 8],
    /// The request's id: its `request_id` attribute when it named one, else its scope id.
    pub request_id: Arc<str>,
    /// Step index as named by the scope.
    pub index: u64,
    /// Steps of the request as named by the scope (`dit.step i/n`), when known.
    pub total: Option<u64>,
    /// GPU duration of the step (first GPU start to last GPU end), ns; CPU scope duration
    /// when the step launched nothing.
    pub dur_ns: u64,
    /// Per stage: summed GPU time of its activities in this step, ns.
    pub stage_busy_ns: Vec<(Arc<str>, u64)>,
    /// Union of the intervals of the step's collective kernels (stage `communication`), ns;
    /// 0 when it ran none.
    pub comm_ns: u64,
    /// The part of [`StepTiming::comm_ns`] no other kernel of the step overlaps, ns.
    pub exposed_comm_ns: u64,
}

/// GPU timing of one finished request, for the request metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTiming {
    /// `model` attribute (`unknown` when none).
    pub model: Arc<str>,
    /// Trace id.
    pub trace_id: [u8; 16],
    /// GPU duration (first start to last end of its GPU activity), ns.
    pub dur_ns: u64,
    /// GPU duration of its `vae.decode` stage (first start to last end), ns, if any.
    pub vae_decode_ns: Option<u64>,
    /// `frames` attribute, when the request named one.
    pub frames: Option<u64>,
    /// Kernels in the request.
    pub kernel_count: u64,
}

/// What one [`super::SpanAssembler::poll`] finalized.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Finalized {
    /// Spans, children before parents (a request's span comes after its steps').
    pub spans: Vec<SpanRecord>,
    /// Finished steps.
    pub steps: Vec<StepTiming>,
    /// Finished requests.
    pub requests: Vec<RequestTiming>,
}

impl Finalized {
    /// Appends `other`.
    pub fn extend(&mut self, other: Finalized) {
        self.spans.extend(other.spans);
        self.steps.extend(other.steps);
        self.requests.extend(other.requests);
    }

    /// Nothing finalized.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.steps.is_empty() && self.requests.is_empty()
    }
}

/// How a scope's GPU interval was measured in coarse mode: the `gpuspan.timing` attribute
/// of its spans. Ordered from most to least faithful; a span aggregating several scopes
/// reports the least faithful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimingSource {
    /// CUDA events recorded on the streams the application named for the scope.
    CudaEvent,
    /// CUDA events on the legacy default stream, because the scope named no stream (a plain
    /// NVTX range). The legacy stream orders with blocking streams only: work on
    /// non-blocking streams (PyTorch's pool streams) is not inside the measured interval.
    LegacyStream,
    /// No CUDA event could be recorded (event pool exhausted, no CUDA context on the
    /// thread, a driver error): the interval is the scope's CPU begin and end.
    CpuFallback,
    /// The process has no CUDA driver (a CPU-only run, such as a PyTorch worker on the CPU
    /// under auto-instrumentation): the interval is the scope's CPU begin and end, and that
    /// is the whole story, not a degraded measurement.
    Cpu,
    /// A boundary of the scope ran while its stream was being captured into a CUDA graph
    /// (or the legacy stream could not be touched because a capture was open): its work was
    /// recorded into the graph, not executed, so it has no GPU interval and gets no span.
    Captured,
}

impl TimingSource {
    /// The attribute value: `cuda_event`, `legacy_stream`, `cpu_fallback`, `cpu` or
    /// `captured`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimingSource::CudaEvent => "cuda_event",
            TimingSource::LegacyStream => "legacy_stream",
            TimingSource::CpuFallback => "cpu_fallback",
            TimingSource::Cpu => "cpu",
            TimingSource::Captured => "captured",
        }
    }
}

/// One scope's GPU interval measured by coarse timing, in the CUPTI clock domain (ns, the
/// same domain as scope events and activity records) so the assembler treats it like
/// activity times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeGpuTime {
    /// The scope.
    pub id: crate::scope::ScopeId,
    /// When the GPU reached the scope's begin, CUPTI ns.
    pub start_ns: u64,
    /// When the GPU reached the scope's end, CUPTI ns (≥ `start_ns`).
    pub end_ns: u64,
    /// How it was measured.
    pub source: TimingSource,
    /// The CUDA device (ordinal) it ran on, when known: coarse mode knows it for a request
    /// scope (the device current on its thread when it began, `cuCtxGetDevice`), so a
    /// process that drives several devices can say which one served a request.
    pub device: Option<u32>,
}

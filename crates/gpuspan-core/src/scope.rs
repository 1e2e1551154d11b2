//! Scope events: the worker's request / step / stage ranges, as the agent sees them.
//!
//! A scope begins and ends on an application thread (an NVTX push/pop, or the C / Rust /
//! Python API). The hot path turns each into a fixed-size [`ScopeEvent`] (no allocation:
//! the name is copied into an inline buffer) and pushes it onto a bounded queue; the
//! collector thread pairs begins with ends and parses names with [`ScopeKind::parse`].
//!
//! Built-in naming convention (DESIGN.md "How the worker tells the agent"):
//! `gpuspan.request <traceparent> [k=v ...]`, `dit.step <i>/<n>`, `attention.spatial`,
//! `attention.temporal`, `attention.cross`, `ffn`, `norm`, `vae.decode`. torch.profiler's
//! `ProfilerStep#N` is a step too, so replayed traces keep their steps.

/// Identifier of one scope instance, unique within a process. It is also the external
/// correlation id the agent pushes (kind CUSTOM2), so every kernel launched inside the scope
/// carries it. 0 means "no scope".
pub type ScopeId = u64;

/// Capacity of [`InlineName`], bytes. Longer names are truncated at a UTF-8 boundary.
pub const INLINE_NAME_CAP: usize = 256;

/// A scope name stored inline so the hot path never allocates.
#[derive(Clone, Copy)]
pub struct InlineName {
    len: u16,
    bytes: [u8; INLINE_NAME_CAP],
}

impl InlineName {
    /// Copies up to [`INLINE_NAME_CAP`] bytes of `s`, cutting at a char boundary.
    pub fn new(s: &str) -> Self {
        Self::from_bytes(s.as_bytes())
    }

    /// Copies up to [`INLINE_NAME_CAP`] bytes; invalid UTF-8 is cut at the first bad byte.
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut n = b.len().min(INLINE_NAME_CAP);
        let valid = match std::str::from_utf8(&b[..n]) {
            Ok(_) => n,
            Err(e) => e.valid_up_to(),
        };
        n = valid;
        let mut bytes = [0u8; INLINE_NAME_CAP];
        bytes[..n].copy_from_slice(&b[..n]);
        Self { len: n as u16, bytes }
    }

    /// The stored name.
    pub fn as_str(&self) -> &str {
        // Only whole valid UTF-8 prefixes are stored (see `from_bytes`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for InlineName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl PartialEq for InlineName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One scope boundary, as produced on an application thread.
// Fixed size on purpose: events travel through a preallocated lock-free queue, and boxing
// the name would allocate on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScopeEvent {
    /// A scope opened.
    Begin {
        /// This scope's id.
        id: ScopeId,
        /// Enclosing scope on the same thread, 0 when none.
        parent: ScopeId,
        /// OS thread id (gettid) of the thread that opened it.
        thread_id: u32,
        /// CPU time of the begin, CUPTI ns (`cuptiGetTimestamp` domain).
        ts_ns: u64,
        /// The range name.
        name: InlineName,
    },
    /// A scope closed.
    End {
        /// The scope's id.
        id: ScopeId,
        /// CPU time of the end, CUPTI ns.
        ts_ns: u64,
        /// Launches (kernel launches, copies, sets: calls that make one GPU activity record)
        /// the thread made while the scope was open, nested scopes included, counted by the
        /// agent's CUPTI API callbacks; `None` when those callbacks are off. Lets the span
        /// assembler know when all of a step's GPU records are in. CUDA graph launches are
        /// not among them: see `graph_launches`.
        launches: Option<u32>,
        /// CUDA graph launches (`cuGraphLaunch`, `cudaGraphLaunch`) the thread made while the
        /// scope was open, nested scopes included (0 when the callbacks are off). Each makes
        /// one GPU record per node of the graph, a count the launch call does not tell: the
        /// span assembler learns it per graph (`graphId`) from the launches it has seen.
        graph_launches: u32,
    },
    /// The scope (still open, its `End` follows) began and is ending while its thread had a
    /// CUDA stream capture open, and it launched nothing that ran: its work was recorded into
    /// a graph, not executed (fine mode; the agent's CUPTI capture callbacks tell). It gets no
    /// span and no timing, only a count (`AssemblerStats::captured_scopes`), as coarse mode's
    /// `TimingSource::Captured` scopes.
    InCapture {
        /// The scope's id.
        id: ScopeId,
    },
}

/// What a scope name means.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopeKind {
    /// `gpuspan.request <traceparent> [k=v ...]`: one inference request.
    Request {
        /// W3C traceparent as given (validated later by the span layer), if any.
        traceparent: Option<String>,
        /// `k=v` attributes following the traceparent.
        attrs: Vec<(String, String)>,
    },
    /// `dit.step <i>/<n>` or torch.profiler's `ProfilerStep#<i>`.
    Step {
        /// Step index as named.
        index: u64,
        /// Total steps when known (`dit.step i/n`).
        count: Option<u64>,
    },
    /// A stage range whose name decides the stage of the kernels under it.
    Stage(&'static str),
    /// Any other range (a CPU op, a user annotation).
    Other,
}

/// Stage names that a scope decides (DESIGN.md "Stage classification"), plus `text_encode`:
/// the prompt encoding before the first step, which the Python auto-instrumentation
/// announces and the kernel-stream step detection names the same way.
pub const SCOPE_STAGES: [&str; 7] = [
    "attention.spatial",
    "attention.temporal",
    "attention.cross",
    "ffn",
    "norm",
    "vae.decode",
    "text_encode",
];

impl ScopeKind {
    /// Parses a range name by the built-in convention. Never fails: unknown names are
    /// [`ScopeKind::Other`].
    pub fn parse(name: &str) -> ScopeKind {
        let name = name.trim();
        if let Some(rest) = name.strip_prefix("gpuspan.request") {
            if rest.is_empty() || rest.starts_with(' ') {
                let mut parts = rest.split_whitespace();
                let mut traceparent = None;
                let mut attrs = Vec::new();
                if let Some(first) = parts.next() {
                    if let Some((k, v)) = first.split_once('=') {
                        attrs.push((k.to_string(), v.to_string()));
                    } else {
                        traceparent = Some(first.to_string());
                    }
                }
                for p in parts {
                    if let Some((k, v)) = p.split_once('=') {
                        attrs.push((k.to_string(), v.to_string()));
                    }
                }
                return ScopeKind::Request { traceparent, attrs };
            }
        }
        if let Some(rest) = name.strip_prefix("dit.step ") {
            let (i, n) = match rest.split_once('/') {
                // `i/0` says the count is unknown (the auto-instrumentation before a
                // scheduler has timesteps).
                Some((i, n)) => (i.trim().parse().ok(), n.trim().parse().ok().filter(|&n: &u64| n > 0)),
                None => (rest.trim().parse().ok(), None),
            };
            if let Some(index) = i {
                return ScopeKind::Step { index, count: n };
            }
        }
        if let Some(rest) = name.strip_prefix("ProfilerStep#") {
            if let Ok(index) = rest.parse() {
                return ScopeKind::Step { index, count: None };
            }
        }
        for s in SCOPE_STAGES {
            if name == s {
                return ScopeKind::Stage(s);
            }
        }
        ScopeKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_convention() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            ScopeKind::parse(&format!("gpuspan.request {tp} tenant=gold model=wan")),
            ScopeKind::Request {
                traceparent: Some(tp.into()),
                attrs: vec![("tenant".into(), "gold".into()), ("model".into(), "wan".into())]
            }
        );
        assert_eq!(ScopeKind::parse("dit.step 3/50"), ScopeKind::Step { index: 3, count: Some(50) });
        assert_eq!(ScopeKind::parse("dit.step 3/0"), ScopeKind::Step { index: 3, count: None }, "0: unknown");
        assert_eq!(ScopeKind::parse("ProfilerStep#1009"), ScopeKind::Step { index: 1009, count: None });
        assert_eq!(ScopeKind::parse("attention.cross"), ScopeKind::Stage("attention.cross"));
        assert_eq!(ScopeKind::parse("aten::mm"), ScopeKind::Other);
        assert_eq!(ScopeKind::parse("gpuspan.requestx"), ScopeKind::Other);
        assert_eq!(ScopeKind::parse("dit.step x"), ScopeKind::Other);
    }

    #[test]
    fn inline_name_truncates_on_char_boundary() {
        let long = "é".repeat(200);
        let n = InlineName::new(&long);
        assert!(n.as_str().len() <= INLINE_NAME_CAP);
        // A name of exactly the capacity survives whole (the length must not wrap).
        let full = "x".repeat(INLINE_NAME_CAP + 10);
        assert_eq!(InlineName::new(&full).as_str(), &full[..INLINE_NAME_CAP]);
        assert_eq!(n.as_str().len() % 2, 0);
        assert!(long.starts_with(n.as_str()));
    }
}

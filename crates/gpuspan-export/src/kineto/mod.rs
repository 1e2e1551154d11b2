//! Kineto / torch.profiler Chrome-trace JSON: reading ([`read_trace`]) and writing
//! ([`write_trace`]) capture files.
//!
//! The format is Chrome's "JSON Object Format" trace (`{"traceEvents": [...], ...}`) with
//! Kineto's conventions: complete events (`ph: "X"`) with `ts` / `dur` in µs (floats with ns
//! decimals in Kineto ≥ 2, integers in older versions), `pid` = device id and `tid` = stream
//! for GPU rows, the CUPTI `correlation` id joining a `cuda_runtime` launch to its `kernel`,
//! `M` metadata events naming processes and threads, and top-level `schemaVersion`,
//! `baseTimeNanoseconds` and `deviceProperties`. Both category schemas are understood on
//! input (current `kernel` / `cuda_runtime` / `gpu_memcpy` / ... and old `Kernel` / `Runtime`
//! / `Memcpy` / `Memset` / `Operator` with `tid: "stream 7"`); output is always the current
//! schema. See <https://github.com/pytorch/kineto/blob/main/libkineto/src/output_json.cpp>
//! for the writer this mirrors.

/// `Visitor` methods for the JSON values a visitor does not read: each consumes its value
/// (an array's or object's contents unbuilt, as `IgnoredAny`) and returns `$value`. The
/// methods written are those named, of `bool i64 u64 f64 str unit seq map`; `$de` is the
/// impl's deserializer lifetime. (The lean reader's visitors each skip most kinds of value.)
macro_rules! visit_others_as {
    ($de:lifetime, $value:expr; $($kind:ident)*) => { $( visit_others_as!(@$kind $de, $value); )* };
    (@bool $de:lifetime, $v:expr) => { fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> { Ok($v) } };
    (@i64 $de:lifetime, $v:expr) => { fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> { Ok($v) } };
    (@u64 $de:lifetime, $v:expr) => { fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> { Ok($v) } };
    (@f64 $de:lifetime, $v:expr) => { fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> { Ok($v) } };
    (@str $de:lifetime, $v:expr) => { fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> { Ok($v) } };
    (@unit $de:lifetime, $v:expr) => { fn visit_unit<E>(self) -> Result<Self::Value, E> { Ok($v) } };
    (@seq $de:lifetime, $v:expr) => {
        fn visit_seq<A: serde::de::SeqAccess<$de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok($v)
        }
    };
    (@map $de:lifetime, $v:expr) => {
        fn visit_map<A: serde::de::MapAccess<$de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
            Ok($v)
        }
    };
}

mod dir;
mod error;
pub mod gzip;
mod json_out;
mod lean;
mod read;
mod split;
mod write;

pub use dir::{merge, process_captures, read_captures, read_captures_with, read_rank_traces, trace_files, RankTraces};
pub use error::{ReadError, ReadErrorKind};
pub use read::{read_trace, read_trace_bytes, read_trace_with, ReadOptions, Skipped};
pub use write::{write_events_with, write_trace, write_trace_json_to, write_trace_with, Trailer, WriteOptions, WriteProgress, DEADLINE_CHECK_EVERY};

/// The typed `args` keys the model interprets (see [`gpuspan_core::trace::TraceEvent`]);
/// every other arg goes to `extra_args` on read and comes back verbatim on write.
pub(crate) mod keys {
    // A key typed here is typed by `read::take_args`, `lean::XArgs` and `lean::lean_keeps`.
    pub const DEVICE: &str = "device";
    pub const STREAM: &str = "stream";
    pub const CORRELATION: &str = "correlation";
    pub const EXTERNAL_ID: &str = "External id";
    /// Old-schema (Kineto 1.x) spelling of `External id` on GPU and runtime events.
    pub const EXTERNAL_ID_OLD: &str = "external id";
    pub const GRID: &str = "grid";
    pub const BLOCK: &str = "block";
    pub const REGISTERS: &str = "registers per thread";
    pub const SHARED_MEMORY: &str = "shared memory";
    pub const BYTES: &str = "bytes";
    pub const STAGE: &str = "gpuspan.stage";
    pub const STEP: &str = "gpuspan.step";
    pub const TRACE_ID: &str = "gpuspan.trace_id";
    pub const SCOPE: &str = "gpuspan.scope";
}

#[cfg(test)]
mod tests;

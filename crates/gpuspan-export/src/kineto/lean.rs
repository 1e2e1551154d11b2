//! Lean reads of `traceEvents` entries ([`ReadOptions::drop_extra_args`]: `gpuspan stats`,
//! `diff`, `waterfall`): what such a read drops is skipped, not built (issue 14, item 4).
//!
//! - A complete event (`"ph": "X"`) whose `ph` comes before its `args` (Kineto and
//!   torch.profiler write `ph` first) reads its args straight into the typed fields
//!   ([`XArgs`]): keys are matched without being allocated, no `Value` is built, and every
//!   other arg is skipped. Its `cat` is read straight into a [`Category`].
//! - Any other entry (metadata, counters, an `X` event that names its phase after its args)
//!   reads its args as [`LeanArgs`]: a `Value` map of the typed keys, `name`, and the other
//!   keys whose value is a number (what metadata and counter events use), and goes on as a
//!   full read's [`RawEvent`].
//!
//! - An entry whose phase is not one the trace holds (`X`, `M`, `C`: flows, instants,
//!   async and object events, an unknown or missing phase) is read only as far as its `ph`:
//!   every later field is skipped unread, since all the reader does with such an entry is
//!   ignore it or, for an unknown phase, count it skipped.
//! - With a host-op filter ([`super::ReadOptions::keep_host_op`]), a `cpu_op` or
//!   `python_function` complete event whose name the filter declines has its `args` skipped
//!   unread and is checked as any complete event is, then not kept ([`LeanX::keep`]).
//!
//! Either way the result is what a full read gives with the extra args dropped
//! (`tests::lean_args_keep_what_every_use_of_args_needs`), less the host ops a filter
//! declined (`tests::a_host_op_filter_drops_only_what_it_declines`). That holds for any
//! trace that is valid JSON; what a lean read skips unread (an ignored entry's fields, a
//! declined op's args, any arg without a typed field) is not checked for valid UTF-8 as a
//! full read's strings are. Who uses it: `read::SlotVisitor`.
//!
//! [`ReadOptions::drop_extra_args`]: super::ReadOptions::drop_extra_args

use std::fmt;

use gpuspan_core::trace::{Category, TraceEvent};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys;
use super::read::{f64_to_i64, Cat, RawEvent, Scalar, ScalarVisitor, Slot, CHROME_PHASES};

/// A complete event read lean: the fields a full read types, its typed args in [`XArgs`].
#[derive(Debug, Default)]
pub(super) struct LeanX {
    pub(super) cat: Cat,
    pub(super) name: Scalar,
    pub(super) pid: Scalar,
    pub(super) tid: Scalar,
    pub(super) ts: Scalar,
    pub(super) dur: Scalar,
    pub(super) args: XArgs,
    /// `false`: a host op the filter declined: checked as any complete event, not kept.
    pub(super) keep: bool,
}

/// The top-level keys of an event that the reader uses.
#[derive(Clone, Copy)]
enum Field {
    Ph,
    Cat,
    Name,
    Pid,
    Tid,
    Ts,
    Dur,
    Args,
    Other,
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_identifier(FieldSeed)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Field, E> {
        Ok(match v {
            "ph" => Field::Ph,
            "cat" => Field::Cat,
            "name" => Field::Name,
            "pid" => Field::Pid,
            "tid" => Field::Tid,
            "ts" => Field::Ts,
            "dur" => Field::Dur,
            "args" => Field::Args,
            _ => Field::Other,
        })
    }
}

/// The next value of `map` into `slot`, or serde's "duplicate field" error when `slot` is
/// set already (as the derived reader of the full path says it).
fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(map: &mut A, slot: &mut Option<T>, key: &'static str) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(key));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// What an event's `args` were read as. (Not boxed: a box would be an allocation per event,
/// and the value is moved once.)
#[allow(clippy::large_enum_variant)]
enum ReadArgs {
    Typed(XArgs),
    Lean(Option<LeanArgs>),
}

/// Whether the reader holds events of phase `ph` (`X`, `M`, `C`); it ignores (or, for an
/// unknown phase, counts skipped) every other entry, so nothing after its `ph` is read.
fn phase_is_read(ph: &Scalar) -> bool {
    matches!(ph.as_str(), Some("X" | "M" | "C"))
}

/// Reads an event's `ph`: one of Chrome's phases as a [`Scalar::Phase`] (no allocation, where
/// [`Scalar`]'s own read makes a `String` of every event's `ph`), anything else as [`Scalar`]
/// reads it.
struct PhaseSeed;

impl<'de> DeserializeSeed<'de> for PhaseSeed {
    type Value = Scalar;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(PhaseSeed)
    }
}

impl<'de> Visitor<'de> for PhaseSeed {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        // Kineto's own phases first, then the rest of Chrome's.
        let phase = match v {
            "X" => Some("X"),
            "f" => Some("f"),
            "s" => Some("s"),
            "i" => Some("i"),
            _ => CHROME_PHASES.iter().copied().find(|p| *p == v),
        };
        Ok(phase.map_or_else(|| Scalar::Str(v.to_owned()), Scalar::Phase))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(PhaseSeed)
    }
    // Anything but a string: as `Scalar` reads it.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        ScalarVisitor.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        ScalarVisitor.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        ScalarVisitor.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        ScalarVisitor.visit_f64(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        ScalarVisitor.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        ScalarVisitor.visit_none()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        ScalarVisitor.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
        ScalarVisitor.visit_map(map)
    }
}

/// A `cpu_op` / `python_function` event (a host-side op: most of a torch.profiler trace's
/// entries) named `name` that `keep_host_op` declines.
fn declined(keep_host_op: Option<fn(&str) -> bool>, cat: &Option<Cat>, name: &Option<NameRead<'_>>) -> bool {
    let host_op = matches!(cat, Some(Cat(Some(Category::CpuOp | Category::PythonFunction))));
    match (keep_host_op, name.as_ref().and_then(NameRead::as_str)) {
        (Some(keep), Some(n)) if host_op => !keep(n),
        _ => false,
    }
}

/// An event's `name` as a lean read holds it until it knows whether the event is kept: a
/// string borrowed from the JSON where serde_json can lend one (a slice without escapes), so
/// a declined host op's name is never copied; else as [`Scalar`] reads it.
enum NameRead<'de> {
    Borrowed(&'de str),
    Read(Scalar),
}

impl NameRead<'_> {
    /// The name when it is a string.
    fn as_str(&self) -> Option<&str> {
        match self {
            NameRead::Borrowed(s) => Some(s),
            NameRead::Read(s) => s.as_str(),
        }
    }

    /// The name as the event holds it.
    fn into_scalar(self) -> Scalar {
        match self {
            NameRead::Borrowed(s) => Scalar::Str(s.to_owned()),
            NameRead::Read(s) => s,
        }
    }
}

/// Reads a [`NameRead`].
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = NameRead<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<NameRead<'de>, D::Error> {
        d.deserialize_any(NameSeed)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = NameRead<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<NameRead<'de>, E> {
        Ok(NameRead::Borrowed(v))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NameRead<'de>, D::Error> {
        d.deserialize_any(NameSeed)
    }
    // Anything else (a string serde_json cannot lend): as `Scalar` reads it.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_str(v).map(NameRead::Read)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_string(v).map(NameRead::Read)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_bool(v).map(NameRead::Read)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_i64(v).map(NameRead::Read)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_u64(v).map(NameRead::Read)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_f64(v).map(NameRead::Read)
    }
    fn visit_unit<E: de::Error>(self) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_unit().map(NameRead::Read)
    }
    fn visit_none<E: de::Error>(self) -> Result<NameRead<'de>, E> {
        ScalarVisitor.visit_none().map(NameRead::Read)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<NameRead<'de>, A::Error> {
        ScalarVisitor.visit_seq(seq).map(NameRead::Read)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NameRead<'de>, A::Error> {
        ScalarVisitor.visit_map(map).map(NameRead::Read)
    }
}

/// Skips a field's value unread, with [`once`]'s duplicate check: `slot` is set to `seen`,
/// so a later copy of the key is still refused.
fn skip_once<'de, T, A: MapAccess<'de>>(map: &mut A, slot: &mut Option<T>, seen: T, key: &'static str) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(key));
    }
    map.next_value::<IgnoredAny>()?;
    *slot = Some(seen);
    Ok(())
}

/// Reads one `traceEvents` object lean (module docs); `keep_host_op`: the read's host-op
/// filter ([`super::ReadOptions::keep_host_op`]).
pub(super) fn read_event<'de, A: MapAccess<'de>>(mut map: A, keep_host_op: Option<fn(&str) -> bool>) -> Result<Slot, A::Error> {
    let (mut ph, mut cat, mut name, mut pid, mut tid, mut ts, mut dur) = (None, None, None, None, None, None, None);
    let mut args: Option<ReadArgs> = None;
    // The entry's phase is one the reader ignores: the rest is skipped unread.
    let mut ignored = false;
    while let Some(field) = map.next_key_seed(FieldSeed)? {
        if ignored {
            match field {
                Field::Ph => skip_once(&mut map, &mut ph, Scalar::Null, "ph")?,
                Field::Cat => skip_once(&mut map, &mut cat, Cat::default(), "cat")?,
                Field::Name => skip_once(&mut map, &mut name, NameRead::Read(Scalar::Null), "name")?,
                Field::Pid => skip_once(&mut map, &mut pid, Scalar::Null, "pid")?,
                Field::Tid => skip_once(&mut map, &mut tid, Scalar::Null, "tid")?,
                Field::Ts => skip_once(&mut map, &mut ts, Scalar::Null, "ts")?,
                Field::Dur => skip_once(&mut map, &mut dur, Scalar::Null, "dur")?,
                Field::Args => skip_once(&mut map, &mut args, ReadArgs::Lean(None), "args")?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            continue;
        }
        match field {
            Field::Ph => {
                if ph.is_some() {
                    return Err(de::Error::duplicate_field("ph"));
                }
                ph = Some(map.next_value_seed(PhaseSeed)?);
                ignored = !ph.as_ref().is_some_and(phase_is_read);
            }
            Field::Cat => once(&mut map, &mut cat, "cat")?,
            Field::Name => {
                if name.is_some() {
                    return Err(de::Error::duplicate_field("name"));
                }
                name = Some(map.next_value_seed(NameSeed)?);
            }
            Field::Pid => once(&mut map, &mut pid, "pid")?,
            Field::Tid => once(&mut map, &mut tid, "tid")?,
            Field::Ts => once(&mut map, &mut ts, "ts")?,
            Field::Dur => once(&mut map, &mut dur, "dur")?,
            Field::Args => {
                if args.is_some() {
                    return Err(de::Error::duplicate_field("args"));
                }
                let complete = ph.as_ref().and_then(Scalar::as_str) == Some("X");
                args = Some(if complete && declined(keep_host_op, &cat, &name) {
                    map.next_value::<IgnoredAny>()?;
                    ReadArgs::Typed(XArgs::default())
                } else if complete {
                    ReadArgs::Typed(map.next_value::<Option<XArgs>>()?.unwrap_or_default())
                } else {
                    ReadArgs::Lean(map.next_value::<Option<LeanArgs>>()?)
                });
            }
            Field::Other => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    // A phase of Chrome's that the trace does not hold: ignored (`read::take_slot`).
    if ignored && matches!(ph, Some(Scalar::Phase(_))) {
        return Ok(Slot::Unkept);
    }
    // Decided on the whole event, whatever the order of its fields.
    let complete = ph.as_ref().and_then(Scalar::as_str) == Some("X");
    let keep = !(complete && declined(keep_host_op, &cat, &name));
    let numeric = |x: &Option<Scalar>| x.as_ref().and_then(Scalar::as_f64).is_some();
    if !keep && numeric(&ts) && numeric(&dur) {
        // Valid as a complete event, strict or lenient (`read::complete_fields`): nothing
        // is left to check, and its name is never copied.
        return Ok(Slot::Unkept);
    }
    let name = name.map(NameRead::into_scalar);
    let (cat, name, pid, tid, ts, dur) =
        (cat.unwrap_or_default(), name.unwrap_or_default(), pid.unwrap_or_default(), tid.unwrap_or_default(), ts.unwrap_or_default(), dur.unwrap_or_default());
    Ok(match args {
        Some(ReadArgs::Typed(args)) => Slot::LeanX(Box::new(LeanX { cat, name, pid, tid, ts, dur, args, keep })),
        // Declined (so complete), its args not kept however they were read.
        _ if !keep => Slot::LeanX(Box::new(LeanX { cat, name, pid, tid, ts, dur, args: XArgs::default(), keep })),
        other => {
            let args = match other {
                Some(ReadArgs::Lean(a)) => a.and_then(|a| a.0).map(Value::Object),
                _ => None,
            };
            Slot::Raw(Box::new(RawEvent { ph: ph.unwrap_or_default(), cat, name, pid, tid, ts, dur, args }))
        }
    })
}

// ---------------------------------------------------------------------------------------
// Typed args of a complete event
// ---------------------------------------------------------------------------------------

/// A complete event's typed args, each the value of its key's last occurrence converted as
/// `read::take_args` converts it (`None`: absent, or of a type that does not convert).
#[derive(Debug, Default)]
pub(super) struct XArgs {
    device: Option<i64>,
    stream: Option<i64>,
    correlation: Option<i64>,
    external_id: Option<i64>,
    external_id_old: Option<i64>,
    grid: Option<[i64; 3]>,
    block: Option<[i64; 3]>,
    registers_per_thread: Option<i64>,
    shared_memory_bytes: Option<i64>,
    bytes: Option<i64>,
    stage: Option<String>,
    step: Option<String>,
    trace_id: Option<String>,
    scope: Option<String>,
}

impl XArgs {
    /// Sets `ev`'s typed arg fields (those of a new event: all `None`). `External id` wins
    /// over the old `external id` when both convert, as in `take_args`, which meets them in
    /// that (sorted) order.
    pub(super) fn apply(self, ev: &mut TraceEvent) {
        ev.device = self.device;
        ev.stream = self.stream;
        ev.correlation = self.correlation;
        ev.external_id = self.external_id.or(self.external_id_old);
        ev.grid = self.grid;
        ev.block = self.block;
        ev.registers_per_thread = self.registers_per_thread;
        ev.shared_memory_bytes = self.shared_memory_bytes;
        ev.bytes = self.bytes;
        ev.stage = self.stage;
        ev.step = self.step;
        ev.trace_id = self.trace_id;
        ev.scope = self.scope;
    }
}

impl<'de> Deserialize<'de> for XArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(XArgsVisitor)
    }
}

/// An arg key of [`XArgs`], matched without allocating.
#[derive(Clone, Copy)]
enum ArgKey {
    Device,
    Stream,
    Correlation,
    ExternalId,
    ExternalIdOld,
    Grid,
    Block,
    Registers,
    SharedMemory,
    Bytes,
    Stage,
    Step,
    TraceId,
    Scope,
    Other,
}

struct ArgKeySeed;

impl<'de> DeserializeSeed<'de> for ArgKeySeed {
    type Value = ArgKey;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ArgKey, D::Error> {
        d.deserialize_identifier(ArgKeySeed)
    }
}

impl<'de> Visitor<'de> for ArgKeySeed {
    type Value = ArgKey;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an args key")
    }
    fn visit_str<E>(self, v: &str) -> Result<ArgKey, E> {
        Ok(match v {
            keys::DEVICE => ArgKey::Device,
            keys::STREAM => ArgKey::Stream,
            keys::CORRELATION => ArgKey::Correlation,
            keys::EXTERNAL_ID => ArgKey::ExternalId,
            keys::EXTERNAL_ID_OLD => ArgKey::ExternalIdOld,
            keys::GRID => ArgKey::Grid,
            keys::BLOCK => ArgKey::Block,
            keys::REGISTERS => ArgKey::Registers,
            keys::SHARED_MEMORY => ArgKey::SharedMemory,
            keys::BYTES => ArgKey::Bytes,
            keys::STAGE => ArgKey::Stage,
            keys::STEP => ArgKey::Step,
            keys::TRACE_ID => ArgKey::TraceId,
            keys::SCOPE => ArgKey::Scope,
            _ => ArgKey::Other,
        })
    }
}

struct XArgsVisitor;

impl<'de> Visitor<'de> for XArgsVisitor {
    type Value = XArgs;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an args object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<XArgs, A::Error> {
        let mut a = XArgs::default();
        while let Some(key) = map.next_key_seed(ArgKeySeed)? {
            match key {
                ArgKey::Device => a.device = map.next_value::<IntArg>()?.0,
                ArgKey::Stream => a.stream = map.next_value::<IntArg>()?.0,
                ArgKey::Correlation => a.correlation = map.next_value::<IntArg>()?.0,
                ArgKey::ExternalId => a.external_id = map.next_value::<IntArg>()?.0,
                ArgKey::ExternalIdOld => a.external_id_old = map.next_value::<IntArg>()?.0,
                ArgKey::Grid => a.grid = map.next_value::<Dim3Arg>()?.0,
                ArgKey::Block => a.block = map.next_value::<Dim3Arg>()?.0,
                ArgKey::Registers => a.registers_per_thread = map.next_value::<IntArg>()?.0,
                ArgKey::SharedMemory => a.shared_memory_bytes = map.next_value::<IntArg>()?.0,
                ArgKey::Bytes => a.bytes = map.next_value::<IntArg>()?.0,
                ArgKey::Stage => a.stage = map.next_value::<StrArg>()?.0,
                ArgKey::Step => a.step = map.next_value::<StrArg>()?.0,
                ArgKey::TraceId => a.trace_id = map.next_value::<StrArg>()?.0,
                ArgKey::Scope => a.scope = map.next_value::<StrArg>()?.0,
                ArgKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(a)
    }
    visit_others_as!('de, XArgs::default(); bool i64 u64 f64 str unit seq);
}

/// An integer arg as `read::arg_int` converts a `Value`: an integer, a float with no
/// fraction within `i64`, or a string holding an integer; anything else (skipped) is `None`.
struct IntArg(Option<i64>);

impl<'de> Deserialize<'de> for IntArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntArgVisitor)
    }
}

struct IntArgVisitor;

impl<'de> Visitor<'de> for IntArgVisitor {
    type Value = IntArg;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E>(self, v: i64) -> Result<IntArg, E> {
        Ok(IntArg(Some(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<IntArg, E> {
        Ok(IntArg(i64::try_from(v).ok()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<IntArg, E> {
        Ok(IntArg(f64_to_i64(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<IntArg, E> {
        Ok(IntArg(v.trim().parse::<i64>().ok()))
    }
    visit_others_as!('de, IntArg(None); bool unit seq map);
}

/// A `[x, y, z]` arg as `read::arg_dim3` converts it: exactly three [`IntArg`]s that all
/// convert.
struct Dim3Arg(Option<[i64; 3]>);

impl<'de> Deserialize<'de> for Dim3Arg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Dim3ArgVisitor)
    }
}

struct Dim3ArgVisitor;

impl<'de> Visitor<'de> for Dim3ArgVisitor {
    type Value = Dim3Arg;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dim3Arg, A::Error> {
        let mut dims = [None; 3];
        let mut n = 0usize;
        while let Some(IntArg(v)) = seq.next_element::<IntArg>()? {
            if let Some(d) = dims.get_mut(n) {
                *d = v;
            }
            n += 1;
        }
        Ok(Dim3Arg(match (n, dims) {
            (3, [Some(x), Some(y), Some(z)]) => Some([x, y, z]),
            _ => None,
        }))
    }
    visit_others_as!('de, Dim3Arg(None); i64 u64 f64 str bool unit map);
}

/// A string arg as `read::arg_string` converts it: a JSON string; anything else (skipped)
/// is `None`.
struct StrArg(Option<String>);

impl<'de> Deserialize<'de> for StrArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrArgVisitor)
    }
}

struct StrArgVisitor;

impl<'de> Visitor<'de> for StrArgVisitor {
    type Value = StrArg;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<StrArg, E> {
        Ok(StrArg(Some(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrArg, E> {
        Ok(StrArg(Some(v)))
    }
    visit_others_as!('de, StrArg(None); i64 u64 f64 bool unit seq map);
}

// ---------------------------------------------------------------------------------------
// Args of any other entry
// ---------------------------------------------------------------------------------------

/// An event's `args` as [`ReadOptions::drop_extra_args`] needs them, read without building a
/// `Value` for what would be dropped (issue 14, item 4: the `args` of a torch.profiler trace
/// are 40 % of its bytes, mostly `Input Dims`, `Input type`, `Call stack` strings and
/// arrays): the typed keys of `read::take_args` and `name` (metadata events) are kept whole,
/// any other key only when its value is a number (counter events keep their numeric args).
/// Same map as a full read for every use of it: a skipped value also removes what an
/// earlier duplicate of its key left (the last duplicate wins, as in a `Value` map). `None`
/// when `args` is not an object.
#[derive(Debug, Default)]
pub(super) struct LeanArgs(pub(super) Option<Map<String, Value>>);

/// The arg keys kept whole by [`LeanArgs`]: every key `read::take_args` types, and `name`. A key
/// typed there must be added here too, or lean reads (`gpuspan stats`, `diff`, `waterfall`)
/// drop it when its value is not a number.
fn lean_keeps(key: &str) -> bool {
    matches!(
        key,
        keys::DEVICE
            | keys::STREAM
            | keys::CORRELATION
            | keys::EXTERNAL_ID
            | keys::EXTERNAL_ID_OLD
            | keys::GRID
            | keys::BLOCK
            | keys::REGISTERS
            | keys::SHARED_MEMORY
            | keys::BYTES
            | keys::STAGE
            | keys::STEP
            | keys::TRACE_ID
            | keys::SCOPE
            | "name"
    )
}

impl<'de> Deserialize<'de> for LeanArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LeanArgsVisitor)
    }
}

struct LeanArgsVisitor;

impl<'de> Visitor<'de> for LeanArgsVisitor {
    type Value = LeanArgs;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an args object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeanArgs, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if lean_keeps(&key) {
                let v: Value = map.next_value()?;
                out.insert(key, v);
            } else {
                match map.next_value::<NumberOrSkip>()?.0 {
                    Some(n) => {
                        out.insert(key, Value::Number(n));
                    }
                    None => {
                        out.remove(&key);
                    }
                }
            }
        }
        Ok(LeanArgs(Some(out)))
    }
    visit_others_as!('de, LeanArgs(None); bool i64 u64 f64 str unit seq);
}

/// An arg value that is kept only when it is a JSON number; anything else is skipped
/// without being built.
struct NumberOrSkip(Option<serde_json::Number>);

impl<'de> Deserialize<'de> for NumberOrSkip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrSkipVisitor)
    }
}

struct NumberOrSkipVisitor;

impl<'de> Visitor<'de> for NumberOrSkipVisitor {
    type Value = NumberOrSkip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E>(self, v: i64) -> Result<NumberOrSkip, E> {
        Ok(NumberOrSkip(Some(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<NumberOrSkip, E> {
        Ok(NumberOrSkip(Some(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<NumberOrSkip, E> {
        // As `Value` reads it: a non-finite float cannot be a JSON number.
        Ok(NumberOrSkip(serde_json::Number::from_f64(v)))
    }
    visit_others_as!('de, NumberOrSkip(None); bool str unit seq map);
}


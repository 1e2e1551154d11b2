//! [`SpanRecord`] → `opentelemetry_sdk::trace::SpanData`, the input of
//! `opentelemetry-otlp`'s span exporter.

use gpuspan_core::spans::{AttrValue, SpanRecord};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The instrumentation scope of every gpuspan span: name `gpuspan`, the crate version.
pub fn instrumentation_scope() -> InstrumentationScope {
    InstrumentationScope::builder("gpuspan").with_version(env!("CARGO_PKG_VERSION")).build()
}

fn value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::String(s.to_string().into()),
        AttrValue::Int(i) => Value::I64(*i),
        AttrValue::Float(f) => Value::F64(*f),
        AttrValue::Bool(b) => Value::Bool(*b),
        AttrValue::IntArray(a) => Value::Array(Array::I64(a.clone())),
    }
}

fn time(unix_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_ns)
}

/// Converts one span (kind INTERNAL, status UNSET, sampled).
pub fn to_span_data(r: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_state = if r.trace_state.is_empty() {
        TraceState::default()
    } else {
        TraceState::from_str(&r.trace_state).unwrap_or_default()
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(r.trace_id),
            SpanId::from_bytes(r.span_id),
            TraceFlags::SAMPLED,
            false,
            trace_state,
        ),
        parent_span_id: r.parent_span_id.map(SpanId::from_bytes).unwrap_or(SpanId::INVALID),
        parent_span_is_remote: r.parent_is_remote,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(r.name.to_string()),
        start_time: time(r.start_unix_ns),
        end_time: time(r.end_unix_ns.max(r.start_unix_ns)),
        attributes: r.attributes.iter().map(|(k, v)| KeyValue::new(k.to_string(), value(v))).collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

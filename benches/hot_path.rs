//! Criterion benches of the agent's two hot paths (issue 2, item 7):
//!
//! - `decode_join_classify`: a recorded-layout activity buffer (CUPTI 12.9 layouts from
//!   cudarc's `sys` types: per kernel one ExternalCorrelation, one driver API and one
//!   Kernel9 record, as CUPTI writes them) decoded into owned records (`decode`), joined
//!   with scopes and classified (`decode+join+classify`: each GPU record's scope, step and
//!   stage, issue 14 item 3), then also built into Kineto events with their strings
//!   (`decode+join+classify+events`, `build_trace`), or fed to the span assembler
//!   (`decode+assemble_spans`). Throughput is in records/s.
//! - `nvtx_push_pop`: one NVTX range push + pop through the agent's hook functions while the
//!   agent is not collecting (the one-atomic-load check), next to an empty baseline.
//!
//! Run: `cargo bench --bench hot_path`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use cudarc::cupti::sys::{
    CUpti_Activity, CUpti_ActivityAPI, CUpti_ActivityExternalCorrelation, CUpti_ActivityKernel9,
};
use gpuspan_core::classify::Classifier;
use gpuspan_core::join::{build_trace, JoinOptions, JoinedEvents, ScopeTable};
use gpuspan_core::trace::EventSource;
use gpuspan_core::scope::{InlineName, ScopeEvent};
use gpuspan_core::spans::{SpanAssembler, SpanOptions};
use gpuspan_cupti::decode::{decode_buffer, NameCache, NextRecord};
use gpuspan_cupti::layouts::RecordLayouts;
use gpuspan_cupti::activity::{KIND_CONCURRENT_KERNEL, KIND_DRIVER, KIND_EXTERNAL_CORRELATION};
use std::mem::{offset_of, size_of};

const KERNEL_NAMES: [&[u8]; 4] = [
    b"void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4> >\0",
    b"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_execute_segment_k_off_kernel\0",
    b"void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>\0",
    b"void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>\0",
];

/// Stand-in for `cuptiActivityGetNextRecord` over the records written below: strides by the
/// 12.9 record size of each kind (what CUPTI 12.9 does, CUPTI-NOTES §1).
unsafe extern "C" fn next_record(buf: *mut u8, valid: usize, rec: *mut *mut CUpti_Activity) -> u32 {
    let off = if (*rec).is_null() {
        0
    } else {
        let cur = *rec as *mut u8;
        let kind = std::ptr::read_unaligned(cur as *const u32);
        let size = match kind {
            KIND_CONCURRENT_KERNEL => size_of::<CUpti_ActivityKernel9>(),
            KIND_DRIVER => size_of::<CUpti_ActivityAPI>(),
            KIND_EXTERNAL_CORRELATION => size_of::<CUpti_ActivityExternalCorrelation>(),
            _ => return 21,
        };
        cur.offset_from(buf) as usize + size
    };
    if off + 8 > valid {
        return 12;
    }
    *rec = buf.add(off) as *mut CUpti_Activity;
    0
}

fn put<T: Copy>(buf: &mut [u8], at: usize, v: T) {
    assert!(at + size_of::<T>() <= buf.len());
    // SAFETY: bounds checked above; unaligned write of a plain value.
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(at) as *mut T, v) };
}

/// A buffer with `n` kernels, each preceded by its external correlation and API records;
/// kernel i is launched in scope `1 + i % 8` (scopes are "ffn"/"attention.cross"/... under a step).
fn recorded_buffer(n: usize) -> Vec<u8> {
    let per = size_of::<CUpti_ActivityExternalCorrelation>() + size_of::<CUpti_ActivityAPI>() + size_of::<CUpti_ActivityKernel9>();
    let mut b = vec![0u8; n * per];
    let mut at = 0;
    for i in 0..n {
        let corr = i as u32 + 1;
        type E = CUpti_ActivityExternalCorrelation;
        put(&mut b, at, KIND_EXTERNAL_CORRELATION);
        put(&mut b, at + offset_of!(E, externalKind), 5u32);
        put(&mut b, at + offset_of!(E, externalId), 2 + (i % 4) as u64);
        put(&mut b, at + offset_of!(E, correlationId), corr);
        at += size_of::<E>();
        type A = CUpti_ActivityAPI;
        put(&mut b, at, KIND_DRIVER);
        put(&mut b, at + offset_of!(A, cbid), 307u32);
        put(&mut b, at + offset_of!(A, start), 1_000 * i as u64);
        put(&mut b, at + offset_of!(A, end), 1_000 * i as u64 + 3_000);
        put(&mut b, at + offset_of!(A, correlationId), corr);
        at += size_of::<A>();
        type K = CUpti_ActivityKernel9;
        put(&mut b, at, KIND_CONCURRENT_KERNEL);
        put(&mut b, at + offset_of!(K, start), 5_000 + 1_000 * i as u64);
        put(&mut b, at + offset_of!(K, end), 5_900 + 1_000 * i as u64);
        put(&mut b, at + offset_of!(K, streamId), 7u32);
        put(&mut b, at + offset_of!(K, correlationId), corr);
        put(&mut b, at + offset_of!(K, gridX), 132i32);
        put(&mut b, at + offset_of!(K, blockX), 256i32);
        put(&mut b, at + offset_of!(K, name), KERNEL_NAMES[i % 4].as_ptr() as usize);
        at += size_of::<K>();
    }
    b
}

fn scopes() -> ScopeTable {
    let mut t = ScopeTable::new();
    let ev = |id, parent, name: &str| ScopeEvent::Begin { id, parent, thread_id: 1, ts_ns: 0, name: InlineName::new(name) };
    t.apply(&ev(1, 0, "dit.step 0/50"));
    for (id, n) in [(2, "attention.spatial"), (3, "attention.cross"), (4, "ffn"), (5, "norm")] {
        t.apply(&ev(id, 1, n));
    }
    t
}

fn bench_decode_join(c: &mut Criterion) {
    const N: usize = 20_000;
    let mut buf = recorded_buffer(N);
    let valid = buf.len();
    let table = scopes();
    let mut g = c.benchmark_group("decode_join_classify");
    g.throughput(Throughput::Elements((3 * N) as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut names = NameCache::default();
            let mut out = Vec::with_capacity(3 * N);
            // SAFETY: `buf` holds `valid` bytes of records in the layout `next_record` walks.
            let st = unsafe { decode_buffer(NextRecord::V1(next_record), &RecordLayouts::cupti_12_9(), buf.as_mut_ptr(), valid, &mut names, &mut out) };
            assert_eq!(st.decoded as usize, 3 * N);
            black_box(out)
        })
    });
    // The join and classification proper: every GPU record's scope, step and stage
    // (`JoinedEvents::gpu_attribution`, what the capture writer and the trace builder turn
    // into strings), with the decoder's and classifier's caches warm as in a running agent.
    let mut names = NameCache::default();
    let mut cl = Classifier::default();
    g.bench_function("decode+join+classify", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(3 * N);
            // SAFETY: as above.
            unsafe { decode_buffer(NextRecord::V1(next_record), &RecordLayouts::cupti_12_9(), buf.as_mut_ptr(), valid, &mut names, &mut out) };
            let opts = JoinOptions { base_time_ns: 0, process_id: 1, include_api: true, trace_seed: None, env_traceparent: None };
            let mut j = JoinedEvents::new(&out, &table, &mut cl, &opts, false);
            let mut attributed = 0;
            for i in 0..j.len() {
                if let Some(a) = j.gpu_attribution(i) {
                    attributed += usize::from(a.scope.is_some());
                    black_box(&a);
                }
            }
            assert_eq!(attributed, N);
            drop(j);
            black_box(out)
        })
    });
    // The same, then every event materialised as a Kineto `TraceEvent` with its strings
    // (`build_trace`; the capture writer does this one event at a time).
    g.bench_function("decode+join+classify+events", |b| {
        b.iter(|| {
            let mut names = NameCache::default();
            let mut out = Vec::with_capacity(3 * N);
            // SAFETY: as above.
            unsafe { decode_buffer(NextRecord::V1(next_record), &RecordLayouts::cupti_12_9(), buf.as_mut_ptr(), valid, &mut names, &mut out) };
            let mut cl = Classifier::default();
            let opts = JoinOptions { base_time_ns: 0, process_id: 1, include_api: true, trace_seed: None, env_traceparent: None };
            let (trace, st) = build_trace(&out, &table, &mut cl, &opts);
            assert_eq!(st.attributed as usize, N);
            black_box(trace)
        })
    });
    g.finish();
}

/// The scope events of one request around the benchmark's step and stages (ids 1–5).
fn request_events() -> Vec<ScopeEvent> {
    let ev = |id, parent, name: &str| ScopeEvent::Begin { id, parent, thread_id: 1, ts_ns: 0, name: InlineName::new(name) };
    let mut v = vec![
        ev(100, 0, "gpuspan.request 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 model=bench"),
        ev(1, 100, "dit.step 0/50"),
    ];
    for (id, n) in [(2, "attention.spatial"), (3, "attention.cross"), (4, "ffn"), (5, "norm")] {
        v.push(ev(id, 1, n));
    }
    for id in [2, 3, 4, 5, 1, 100] {
        v.push(ScopeEvent::End { id, ts_ns: 1, launches: None, graph_launches: 0 });
    }
    v
}

fn bench_spans(c: &mut Criterion) {
    const N: usize = 20_000;
    let mut buf = recorded_buffer(N);
    let valid = buf.len();
    let events = request_events();
    let mut g = c.benchmark_group("decode_join_classify");
    g.throughput(Throughput::Elements((3 * N) as u64));
    // With kernel spans (an exporter configured: one `cuda.kernel` span per kernel) and
    // without (no exporter, or the kernel span budget spent: what the collector does per
    // record in fine mode then, issue 14 item 1's "collector without the capture write").
    for (row, kernel_spans) in [("decode+assemble_spans", true), ("decode+assemble_no_kernel_spans", false)] {
        g.bench_function(row, |b| {
            b.iter(|| {
                let mut names = NameCache::default();
                let mut out = Vec::with_capacity(3 * N);
                // SAFETY: `buf` holds `valid` bytes of records in the layout `next_record` walks.
                unsafe { decode_buffer(NextRecord::V1(next_record), &RecordLayouts::cupti_12_9(), buf.as_mut_ptr(), valid, &mut names, &mut out) };
                let mut cl = Classifier::default();
                let mut table = ScopeTable::new();
                let mut asm = SpanAssembler::new(SpanOptions { kernel_span_budget: u64::MAX, kernel_spans, ..Default::default() });
                for e in &events {
                    table.apply(e);
                    asm.observe_scope(e, &table);
                }
                for r in &out {
                    asm.observe_record(r, &table, &mut cl);
                }
                let f = asm.poll(&table, 0, true);
                let want = if kernel_spans { N } else { 0 };
                assert_eq!(f.spans.iter().filter(|s| &*s.name == "cuda.kernel").count(), want);
                assert!(f.steps.iter().any(|s| s.stage_busy_ns.len() == 4), "every stage scope's kernels placed");
                black_box(f)
            })
        });
    }
    g.finish();
}

#[inline(never)]
fn baseline_push_pop() -> i32 {
    black_box(0)
}

fn bench_nvtx(c: &mut Criterion) {
    let mut g = c.benchmark_group("nvtx_push_pop");
    let name = b"attention.spatial\0";
    g.bench_function("baseline_empty_fn", |b| b.iter(|| baseline_push_pop() + baseline_push_pop()));
    g.bench_function("agent_not_collecting", |b| {
        b.iter(|| {
            // SAFETY: a NUL-terminated name, as NVTX passes it.
            let l = unsafe { gpuspan_agent::hooks::range_push_a(name.as_ptr() as *const std::ffi::c_char) };
            // SAFETY: no arguments.
            l + unsafe { gpuspan_agent::hooks::range_pop() }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode_join, bench_spans, bench_nvtx);
criterion_main!(benches);

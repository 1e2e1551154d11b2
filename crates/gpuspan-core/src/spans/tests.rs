//! Span assembly on a small synthetic request: 2 steps × (attention.spatial, ffn) + a VAE
//! decode, with records arriving out of order and across polls.

use super::*;
use crate::activity::*;
use crate::classify::{Classifier, StageRules};
use crate::join::ScopeTable;
use crate::scope::ScopeEvent;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

use crate::test_records::{begin, ext, kernel};

fn launch(corr: u32) -> ActivityRecord {
    driver_api(corr, 307)
}

/// A driver API record of callback `cbid` (307 `cuLaunchKernel`, 514 `cuGraphLaunch`).
fn driver_api(corr: u32, cbid: u32) -> ActivityRecord {
    ActivityRecord::Api(ApiRecord {
        domain: ApiDomain::Driver,
        cbid,
        start_ns: 0,
        end_ns: 0,
        process_id: 1,
        thread_id: 11,
        correlation_id: corr,
        return_value: 0,
    })
}

struct Fixture {
    scopes: ScopeTable,
    asm: SpanAssembler,
    cls: Classifier,
}

impl Fixture {
    fn new(opts: SpanOptions) -> Fixture {
        Fixture { scopes: ScopeTable::new(), asm: SpanAssembler::new(opts), cls: Classifier::new(StageRules::builtin()) }
    }
    fn scope(&mut self, ev: ScopeEvent) {
        self.scopes.apply(&ev);
        self.asm.observe_scope(&ev, &self.scopes);
    }
    fn rec(&mut self, r: ActivityRecord) {
        self.asm.observe_record(&r, &self.scopes, &mut self.cls);
    }
    fn poll(&mut self, now_ms: u64) -> Finalized {
        self.asm.poll(&self.scopes, now_ms, false)
    }
}

/// Scope ids: 1 request, 2/5 steps, 3/6 attention.spatial, 4/7 ffn, 8 vae.decode.
/// Kernel k (corr k) of step s runs [1000*k, 1000*k + 400 + k].
fn run_request(f: &mut Fixture, tp: &str) -> Vec<(u32, u64, u64)> {
    run_request_with(f, tp, false, true)
}

/// [`run_request`] with the launch counts on the end events (`counted`, as the agent's
/// CUPTI callbacks report them) and with or without the API records delivered.
fn run_request_with(f: &mut Fixture, tp: &str, counted: bool, api_records: bool) -> Vec<(u32, u64, u64)> {
    let n_of = |c: u32| counted.then_some(c);
    let mut kernels = Vec::new();
    let mut corr = 1u32;
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {tp} model=stdit frames=48")));
    for (step, attn, ffn) in [(2u64, 3u64, 4u64), (5, 6, 7)] {
        f.scope(begin(step, 1, 100 * step, &format!("dit.step {}/2", step / 3)));
        for (scope, name, n) in [(attn, "flash_fwd_kernel", 2), (ffn, "sm90_xmma_gemm_bf16", 3)] {
            f.scope(begin(scope, step, 100 * step + 1, if scope == attn { "attention.spatial" } else { "ffn" }));
            for _ in 0..n {
                let (s, e) = (1000 * corr as u64, 1000 * corr as u64 + 400 + corr as u64);
                kernels.push((corr, s, e));
                // GPU records of the second step arrive before their external correlation
                // and API records (another buffer delivered first).
                if step == 5 {
                    f.rec(kernel(name, corr, s, e));
                }
                f.rec(ext(corr, scope));
                if api_records {
                    f.rec(launch(corr));
                }
                corr += 1;
            }
            f.scope(ScopeEvent::End { id: scope, ts_ns: 100 * step + 50, launches: n_of(n), graph_launches: 0 });
        }
        f.scope(ScopeEvent::End { id: step, ts_ns: 100 * step + 60, launches: n_of(5), graph_launches: 0 });
    }
    f.scope(begin(8, 1, 900, "vae.decode"));
    f.rec(ext(corr, 8));
    if api_records {
        f.rec(launch(corr));
    }
    kernels.push((corr, 1000 * corr as u64, 1000 * corr as u64 + 5000));
    f.scope(ScopeEvent::End { id: 8, ts_ns: 950, launches: n_of(1), graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 1, ts_ns: 990, launches: n_of(11), graph_launches: 0 });
    kernels
}

/// Delivers the kernels [`run_request`] left undelivered (step 1's and the VAE's).
fn deliver_rest(f: &mut Fixture, ks: &[(u32, u64, u64)], name: &str) {
    for &(c, s, e) in ks[..5].iter().chain(&ks[10..]) {
        f.rec(kernel(name, c, s, e));
    }
}

fn by_id(spans: &[SpanRecord]) -> HashMap<[u8; 8], &SpanRecord> {
    spans.iter().map(|s| (s.span_id, s)).collect()
}

fn int(s: &SpanRecord, k: &str) -> i64 {
    match s.attr(k) {
        Some(AttrValue::Int(v)) => *v,
        other => panic!("{k} on {}: {other:?}", s.name),
    }
}

#[test]
fn tree_times_aggregates_and_completeness() {
    let mut f = Fixture::new(SpanOptions { clock_offset_ns: 1_000_000, ..Default::default() });
    let kernels = run_request(&mut f, TP);
    // Step 1's kernels (corr 1..=5) and the VAE kernel (corr 11) have not arrived: only
    // step 2 (scope 5) may complete, and only after settle_ms.
    assert!(f.poll(0).is_empty());
    assert!(f.poll(599).is_empty());
    let out = f.poll(600);
    assert_eq!(out.steps.len(), 1);
    assert_eq!(out.steps[0].index, 1);
    assert!(out.requests.is_empty());

    for &(corr, s, e) in &kernels[..5] {
        let name = if corr <= 2 { "flash_fwd_kernel" } else { "sm90_xmma_gemm_bf16" };
        f.rec(kernel(name, corr, s, e));
    }
    let out2 = f.poll(700);
    assert_eq!(out2.steps.len(), 1, "step 1 completes once its 5 kernels are in");
    assert!(out2.requests.is_empty(), "the VAE kernel is still missing");
    let (c, s, e) = kernels[10];
    f.rec(kernel("conv3d_fprop_implicit_gemm", c, s, e));
    let out3 = f.poll(800);
    assert_eq!(out3.requests.len(), 1);

    let mut all = Finalized::default();
    all.extend(out);
    all.extend(out2);
    all.extend(out3);
    let spans = &all.spans;
    let ids = by_id(spans);
    assert_eq!(ids.len(), spans.len(), "span ids are unique");

    // Exactly one root-in-this-process: gpu.request, child of the worker's span.
    let req: Vec<&SpanRecord> = spans.iter().filter(|s| &*s.name == "gpu.request").collect();
    assert_eq!(req.len(), 1);
    let req = req[0];
    assert_eq!(context::format_traceparent(&req.trace_id, &req.parent_span_id.unwrap(), true), TP);
    assert!(req.parent_is_remote);
    // Every other span's parent is in the set (no orphan), and all share the trace id.
    for s in spans {
        assert_eq!(s.trace_id, req.trace_id);
        if s.span_id != req.span_id {
            let p = ids.get(&s.parent_span_id.unwrap()).unwrap_or_else(|| panic!("orphan {}", s.name));
            let expected_parent = match &*s.name {
                "dit.step" => "gpu.request",
                "cuda.kernel" => "stage",
                "vae.decode" => "gpu.request",
                _ => "dit.step",
            };
            if expected_parent == "stage" {
                assert!(!matches!(&*p.name, "gpu.request" | "dit.step" | "cuda.kernel"));
            } else {
                assert_eq!(&*p.name, expected_parent, "parent of {}", s.name);
            }
            assert!(s.start_unix_ns >= p.start_unix_ns && s.end_unix_ns <= p.end_unix_ns, "{} inside {}", s.name, p.name);
        }
    }
    let kernel_spans: Vec<&SpanRecord> = spans.iter().filter(|s| &*s.name == "cuda.kernel").collect();
    assert_eq!(kernel_spans.len(), kernels.len());
    let corrs: HashSet<i64> = kernel_spans.iter().map(|s| int(s, "cuda.correlation_id")).collect();
    assert_eq!(corrs.len(), kernels.len());
    let k1 = kernel_spans.iter().find(|s| int(s, "cuda.correlation_id") == 1).unwrap();
    assert_eq!(k1.start_unix_ns, 1000 + 1_000_000);
    assert_eq!(k1.end_unix_ns, 1401 + 1_000_000);
    assert_eq!(k1.attr("cuda.kernel.grid"), Some(&AttrValue::IntArray(vec![4, 2, 1])));
    assert_eq!(int(k1, "cuda.kernel.shared_memory_bytes"), 1024);

    // Stage spans: one per (step, stage); busy = sum of their kernels' durations.
    let ffn: Vec<&SpanRecord> = spans.iter().filter(|s| &*s.name == "ffn").collect();
    assert_eq!(ffn.len(), 2, "the scope decides the stage even when the kernel came first");
    assert_eq!(spans.iter().filter(|s| &*s.name == "attention.spatial").count(), 2);
    assert!(!spans.iter().any(|s| &*s.name == "gemm" || &*s.name == "attention"));
    let step1_ffn: i64 = kernels[2..5].iter().map(|(_, s, e)| (e - s) as i64).sum();
    assert!(ffn.iter().any(|s| int(s, "gpuspan.gpu_busy_ns") == step1_ffn && int(s, "gpuspan.kernel_count") == 3));
    let vae = spans.iter().find(|s| &*s.name == "vae.decode").unwrap();
    assert_eq!(int(vae, "gpuspan.gpu_busy_ns"), 5000);
    assert_eq!(vae.parent_span_id, Some(req.span_id));
    // Request: GPU start of the first kernel to GPU end of the last.
    assert_eq!(req.start_unix_ns, 1000 + 1_000_000);
    assert_eq!(req.end_unix_ns, kernels[10].2 + 1_000_000);
    assert_eq!(int(req, "gpuspan.kernel_count"), 11);
    assert_eq!(int(req, "gpuspan.step_count"), 2);
    assert_eq!(req.attr("gpuspan.request.model"), Some(&AttrValue::Str(Arc::from("stdit"))));

    // Timings for the metrics.
    let r = &all.requests[0];
    assert_eq!(r.frames, Some(48));
    assert_eq!(r.vae_decode_ns, Some(5000));
    assert_eq!(r.kernel_count, 11);
    let step1 = all.steps.iter().find(|s| s.index == 0).unwrap();
    assert_eq!(step1.dur_ns, kernels[4].2 - kernels[0].1);
    assert!(step1.stage_busy_ns.iter().any(|(st, b)| &**st == "ffn" && *b as i64 == step1_ffn));
    assert_eq!(f.asm.open_counts(), (0, 0));
}

#[test]
fn launch_counts_finish_steps_exactly_even_before_api_records_arrive() {
    // The API records sit in an undelivered buffer (a kernel of theirs is still running):
    // without counts, step 1 (none of whose records arrived) would look complete after
    // settle_ms; with the counts from the end events it waits for its 5 kernels.
    let mut f = Fixture::new(SpanOptions::default());
    let ks = run_request_with(&mut f, TP, true, false);
    let out = f.poll(0);
    assert_eq!(out.steps.iter().map(|s| s.index).collect::<Vec<_>>(), [1], "step 2 is complete, no settle wait");
    assert!(f.poll(5_000).is_empty(), "step 1 and the VAE wait for their kernels");
    for &(c, s, e) in &ks[..5] {
        f.rec(kernel("k", c, s, e));
    }
    assert_eq!(f.poll(5_001).steps.len(), 1);
    assert!(f.poll(5_002).requests.is_empty(), "the request's own launch (the VAE) is missing");
    let (c, s, e) = ks[10];
    f.rec(kernel("k", c, s, e));
    let last = f.poll(5_003);
    assert_eq!(last.requests.len(), 1);
    assert_eq!(last.requests[0].kernel_count, 11);
    assert_eq!(f.asm.stats.units_timed_out, 0);
    assert_eq!(f.asm.stats.gpu_late, 0);

    // The fallback without counts finishes step 1 early and counts its kernels as late.
    let mut g = Fixture::new(SpanOptions::default());
    let ks = run_request_with(&mut g, TP, false, false);
    g.poll(0);
    let early = g.poll(600);
    assert!(early.steps.iter().any(|s| s.index == 0), "finished without its kernels");
    for &(c, s, e) in &ks[..5] {
        g.rec(kernel("k", c, s, e));
    }
    g.poll(700);
    assert_eq!(g.asm.stats.gpu_late, 5);
}

#[test]
fn same_scopes_give_the_same_span_ids() {
    let run = || {
        let mut f = Fixture::new(SpanOptions::default());
        let ks = run_request(&mut f, TP);
        deliver_rest(&mut f, &ks, "k");
        let mut v: Vec<[u8; 8]> = f.asm.poll(&f.scopes, 1_000, true).spans.iter().map(|s| s.span_id).collect();
        v.sort();
        v
    };
    assert_eq!(run(), run());
}

#[test]
fn budget_keeps_stage_spans_exact() {
    let mut f = Fixture::new(SpanOptions { kernel_span_budget: 4, ..Default::default() });
    let ks = run_request(&mut f, TP);
    deliver_rest(&mut f, &ks, "sm90_xmma_gemm_bf16");
    let out = f.asm.poll(&f.scopes, 0, true);
    let kernel_spans = out.spans.iter().filter(|s| &*s.name == "cuda.kernel").count();
    assert_eq!(kernel_spans, 4);
    let req = out.spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    assert_eq!(int(req, "gpuspan.kernel_spans_omitted"), ks.len() as i64 - 4);
    let stage_total: i64 = out
        .spans
        .iter()
        .filter(|s| !matches!(&*s.name, "gpu.request" | "dit.step" | "cuda.kernel"))
        .map(|s| int(s, "gpuspan.kernel_count"))
        .sum();
    assert_eq!(stage_total, ks.len() as i64);
    assert_eq!(f.asm.stats.kernel_spans_omitted, ks.len() as u64 - 4);
}

#[test]
fn missing_kernels_time_out_after_grace() {
    let mut f = Fixture::new(SpanOptions { grace_ms: 5_000, ..Default::default() });
    run_request(&mut f, TP);
    assert!(f.poll(0).is_empty());
    let early = f.poll(4_999);
    assert_eq!(early.steps.len(), 1, "only the complete step");
    assert!(early.requests.is_empty());
    let out = f.poll(5_000);
    assert_eq!(out.requests.len(), 1);
    assert_eq!(f.asm.stats.units_timed_out, 2, "step 1 and the request's own work");
    // A kernel arriving afterwards is counted late, not lost silently.
    f.rec(kernel("flash_fwd_kernel", 1, 1000, 1401));
    f.poll(6_000);
    assert_eq!(f.asm.stats.gpu_late, 1);
}

#[test]
fn bad_or_missing_traceparent_still_yields_spans() {
    let mut f = Fixture::new(SpanOptions { seed: 42, ..Default::default() });
    let ks = run_request(&mut f, "not-a-traceparent");
    deliver_rest(&mut f, &ks, "k");
    let out = f.asm.poll(&f.scopes, 0, true);
    let req = out.spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    assert!(req.parent_span_id.is_none());
    assert_eq!(req.attr("gpuspan.trace_context"), Some(&AttrValue::Str(Arc::from("malformed"))));
    assert_eq!(out.spans.iter().filter(|s| &*s.name == "cuda.kernel").count(), 11);
    assert_eq!(f.asm.stats.context_malformed, 1);
    assert_eq!(f.asm.take_context_problems().len(), 1);
}

#[test]
fn a_request_without_traceparent_takes_the_environments() {
    let env_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut f = Fixture::new(SpanOptions { env_traceparent: Some(env_tp.into()), ..Default::default() });
    let ks = run_request(&mut f, "");
    deliver_rest(&mut f, &ks, "k");
    let out = f.asm.poll(&f.scopes, 0, true);
    let req = out.spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    assert_eq!(ids::hex(&req.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(req.parent_span_id.map(|p| ids::hex(&p)).as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(req.attr("gpuspan.trace_context"), Some(&AttrValue::Str(Arc::from("traceparent"))));
    // A request's own traceparent still wins.
    let mut f = Fixture::new(SpanOptions { env_traceparent: Some(env_tp.into()), ..Default::default() });
    let ks = run_request(&mut f, TP);
    deliver_rest(&mut f, &ks, "k");
    let out = f.asm.poll(&f.scopes, 0, true);
    let req = out.spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    assert_ne!(ids::hex(&req.trace_id), "0af7651916cd43dd8448eb211c80319c");
}

#[test]
fn unsampled_requests_give_timings_but_no_spans() {
    let mut f = Fixture::new(SpanOptions::default());
    let ks = run_request(&mut f, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    deliver_rest(&mut f, &ks, "k");
    let out = f.asm.poll(&f.scopes, 0, true);
    assert!(out.spans.is_empty());
    assert_eq!(out.steps.len(), 2);
    assert_eq!(out.requests.len(), 1);
}

#[test]
fn expected_gpu_work_by_callback_id() {
    assert!(gpu_work_expected(ApiDomain::Driver, 307));
    assert!(gpu_work_expected(ApiDomain::Runtime, 211));
    assert!(!gpu_work_expected(ApiDomain::Driver, 119), "cuEventRecord makes no activity record");
    assert!(gpu_work_expected(ApiDomain::Driver, 514), "a graph launch makes at least one");
    assert!(gpu_work_expected(ApiDomain::Runtime, 311), "cudaGraphLaunch too");
}

#[test]
fn request_attributes_are_percent_decoded() {
    let mut f = Fixture::new(SpanOptions::default());
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=my%20model tenant=gold%25 baggage=k=v%20w")));
    f.scope(ScopeEvent::End { id: 1, ts_ns: 20, launches: Some(0), graph_launches: 0 });
    let out = f.poll(0);
    let req = out.spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    assert_eq!(req.attr("gpuspan.request.model"), Some(&AttrValue::Str(Arc::from("my model"))));
    assert_eq!(req.attr("gpuspan.request.tenant"), Some(&AttrValue::Str(Arc::from("gold%"))));
    assert_eq!(req.attr("gpuspan.baggage.k"), Some(&AttrValue::Str(Arc::from("v w"))), "baggage values decode per W3C Baggage");
    assert_eq!(out.requests[0].model.as_ref(), "my model");
}

/// Coarse mode: a request of 2 steps × (attention.spatial, ffn) and a VAE decode, with the
/// scope intervals the agent would measure with CUDA events, fed in scope-end order.
/// Interval of scope `id` = [10_000·id, 10_000·id + 1_000·id]; steps and the request
/// enclose their children.
#[test]
fn coarse_tree_from_scope_intervals() {
    let mut f = Fixture::new(SpanOptions { coarse: true, kernel_spans: false, ..Default::default() });
    let gt = |id: u64, start: u64, end: u64, source| ScopeGpuTime { id, start_ns: start, end_ns: end, source, device: None };
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=wan2.1")));
    let mut intervals = Vec::new();
    for (step, attn, ffn, base) in [(2u64, 3u64, 4u64, 100_000u64), (5, 6, 7, 200_000)] {
        f.scope(begin(step, 1, step, &format!("dit.step {}/2", step / 3)));
        f.scope(begin(attn, step, step, "attention.spatial"));
        f.scope(ScopeEvent::End { id: attn, ts_ns: step, launches: None, graph_launches: 0 });
        f.scope(begin(ffn, step, step, "ffn"));
        f.scope(ScopeEvent::End { id: ffn, ts_ns: step, launches: None, graph_launches: 0 });
        f.scope(ScopeEvent::End { id: step, ts_ns: step, launches: None, graph_launches: 0 });
        // attention [base+100, base+40_100], ffn [base+40_100, base+70_100], step [base, base+80_000]
        intervals.push(gt(attn, base + 100, base + 40_100, TimingSource::CudaEvent));
        intervals.push(gt(ffn, base + 40_100, base + 70_100, TimingSource::CudaEvent));
        intervals.push(gt(step, base, base + 80_000, TimingSource::CudaEvent));
    }
    f.scope(begin(8, 1, 900, "vae.decode"));
    f.scope(ScopeEvent::End { id: 8, ts_ns: 950, launches: None, graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 1, ts_ns: 990, launches: None, graph_launches: 0 });
    intervals.push(gt(8, 300_000, 350_000, TimingSource::LegacyStream));
    intervals.push(gt(1, 90_000, 360_000, TimingSource::CudaEvent));

    // Nothing completes before the intervals arrive, whatever the time waited.
    assert!(f.poll(5_000).is_empty());
    // The first step's three intervals: that step completes, nothing else.
    for t in &intervals[..3] {
        f.asm.observe_scope_time(t, &f.scopes);
    }
    let out = f.poll(5_001);
    assert_eq!(out.steps.len(), 1);
    assert_eq!(out.steps[0].dur_ns, 80_000, "the step's own interval, not its stages'");
    assert_eq!(
        out.steps[0].stage_busy_ns,
        vec![(Arc::from("attention.spatial"), 40_000), (Arc::from("ffn"), 30_000)]
    );
    for t in &intervals[3..] {
        f.asm.observe_scope_time(t, &f.scopes);
    }
    let out2 = f.poll(5_002);
    assert_eq!(out2.steps.len(), 1);
    assert_eq!(out2.requests.len(), 1);
    let r = &out2.requests[0];
    assert_eq!(r.dur_ns, 270_000);
    assert_eq!(r.vae_decode_ns, Some(50_000));
    assert_eq!(r.kernel_count, 0, "coarse mode sees no kernels");

    let spans: Vec<SpanRecord> = out.spans.into_iter().chain(out2.spans).collect();
    assert!(spans.iter().all(|s| &*s.name != "cuda.kernel"));
    let names: Vec<&str> = spans.iter().map(|s| &*s.name).collect();
    assert_eq!(names.iter().filter(|n| **n == "dit.step").count(), 2);
    assert_eq!(names.iter().filter(|n| **n == "ffn").count(), 2);
    assert_eq!(names.iter().filter(|n| **n == "vae.decode").count(), 1);
    let ids = by_id(&spans);
    let req = spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    assert_eq!(req.attr("gpuspan.timing"), Some(&AttrValue::Str(Arc::from("legacy_stream"))), "least faithful part");
    assert!(req.attr("gpuspan.kernel_count").is_none());
    assert_eq!((req.start_unix_ns, req.end_unix_ns), (90_000, 360_000));
    for s in &spans {
        if let Some(p) = s.parent_span_id.and_then(|p| ids.get(&p)) {
            assert!(p.start_unix_ns <= s.start_unix_ns && s.end_unix_ns <= p.end_unix_ns, "{} inside {}", s.name, p.name);
        }
    }
    let step2 = spans.iter().find(|s| &*s.name == "dit.step" && int(s, "gpuspan.step.index") == 1).unwrap();
    assert_eq!((step2.start_unix_ns, step2.end_unix_ns), (200_000, 280_000));
    assert_eq!(step2.attr("gpuspan.timing"), Some(&AttrValue::Str(Arc::from("cuda_event"))));
    let ffn2 = spans.iter().find(|s| &*s.name == "ffn" && s.parent_span_id == Some(step2.span_id)).unwrap();
    assert_eq!((ffn2.start_unix_ns, ffn2.end_unix_ns), (240_100, 270_100));
    assert_eq!(int(ffn2, "gpuspan.scope_count"), 1);
    assert_eq!(int(ffn2, "gpuspan.gpu_busy_ns"), 30_000);
    let vae = spans.iter().find(|s| &*s.name == "vae.decode").unwrap();
    assert_eq!(vae.parent_span_id, Some(req.span_id));
    assert_eq!(vae.attr("gpuspan.timing"), Some(&AttrValue::Str(Arc::from("legacy_stream"))));
    assert_eq!(f.asm.open_counts(), (0, 0));
    // A late interval (for a finalized request) is counted, not re-emitted.
    f.asm.observe_scope_time(&intervals[0], &f.scopes);
    assert_eq!(f.asm.stats.gpu_late, 1);
    assert!(f.poll(5_003).is_empty());
}

/// Coarse mode: a step whose interval never arrives is finalized by the grace timer (and
/// counted), so its request is not held forever.
#[test]
fn coarse_missing_interval_times_out() {
    let mut f = Fixture::new(SpanOptions { coarse: true, grace_ms: 1_000, ..Default::default() });
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP}")));
    f.scope(begin(2, 1, 20, "dit.step 0/1"));
    f.scope(ScopeEvent::End { id: 2, ts_ns: 30, launches: None, graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 1, ts_ns: 40, launches: None, graph_launches: 0 });
    f.asm.observe_scope_time(&ScopeGpuTime { id: 1, start_ns: 10, end_ns: 40, source: TimingSource::CpuFallback, device: None }, &f.scopes);
    assert!(f.poll(0).is_empty());
    let out = f.poll(1_000);
    assert_eq!(f.asm.stats.units_timed_out, 1);
    assert_eq!(out.requests.len(), 1);
    assert_eq!(out.steps.len(), 1);
}

/// The correlation → scope map lets go of a finalized request's ids (`WAIT_GENERATIONS`
/// polls after it, so late records still count as late), so it stays bounded
/// and a 32-bit correlation id that comes back after wrapping is not claimed by the old
/// request (before: the second request's kernel, delivered before its external correlation
/// record, went to the first request's finished step and was counted late).
#[test]
fn correlation_ids_go_with_their_request_and_may_wrap() {
    let mut f = Fixture::new(SpanOptions::default());
    let request = |f: &mut Fixture, base: u64, ts: u64, kernel_first: bool| {
        f.scope(begin(base, 0, ts, &format!("gpuspan.request {TP} model=stdit")));
        f.scope(begin(base + 1, base, ts + 10, "dit.step 0/1"));
        let k = kernel("flash_fwd_kernel", 7, ts + 100, ts + 200);
        if kernel_first {
            f.rec(k.clone());
        }
        f.rec(ext(7, base + 1));
        f.rec(launch(7));
        f.scope(ScopeEvent::End { id: base + 1, ts_ns: ts + 20, launches: Some(1), graph_launches: 0 });
        f.scope(ScopeEvent::End { id: base, ts_ns: ts + 30, launches: Some(1), graph_launches: 0 });
        if !kernel_first {
            f.rec(k);
        }
        let mut out = f.poll(ts);
        out.extend(f.poll(ts + 1));
        out
    };
    let first = request(&mut f, 1, 1_000, false);
    assert_eq!((first.requests.len(), first.steps.len()), (1, 1));
    assert_eq!(f.asm.correlation_entries(), 1, "kept a while for late records");
    for i in 0..=assemble::WAIT_GENERATIONS {
        f.poll(2_000 + i);
    }
    assert_eq!(f.asm.correlation_entries(), 0, "released with its request");
    // Correlation id 7 again (wrapped), its kernel delivered before its external correlation.
    let second = request(&mut f, 11, 5_000, true);
    assert_eq!((second.requests.len(), second.steps.len()), (1, 1), "the second request's step completes");
    assert_eq!(f.asm.stats.gpu_late, 0, "no kernel went to the finished request");
    assert_eq!(f.asm.stats.units_timed_out, 0);
}

/// An external correlation record can be decoded before its scope's begin reaches the table:
/// the collector drains the scope queue, then CUPTI's buffers, and a thread may open a scope
/// and launch in between. A release of finalized requests' ids in that moment kept only ids
/// whose scope was in the table, so the new scope's launches lost their scope: in a flood
/// (`scripts/bench-flood.sh`) a step's records went unattributed, its unit waited for the
/// 10 s grace period, and the capture segments stopped while scopes piled up.
#[test]
fn a_correlation_decoded_before_its_scope_begins_survives_a_release() {
    let mut f = Fixture::new(SpanOptions::default());
    // Request 1 runs and is finalized.
    f.scope(begin(1, 0, 1_000, &format!("gpuspan.request {TP} model=stdit")));
    f.scope(begin(2, 1, 1_010, "dit.step 0/1"));
    f.rec(ext(7, 2));
    f.rec(launch(7));
    f.rec(kernel("flash_fwd_kernel", 7, 1_100, 1_200));
    f.scope(ScopeEvent::End { id: 2, ts_ns: 1_020, launches: Some(1), graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 1, ts_ns: 1_030, launches: Some(1), graph_launches: 0 });
    let out = f.poll(1_000);
    assert_eq!((out.requests.len(), out.steps.len()), (1, 1));
    for i in 1..=assemble::WAIT_GENERATIONS {
        f.poll(1_000 + i);
    }
    // Request 11 begins; its step's external correlation record is decoded before the
    // step's begin is applied, and the next poll releases request 1's ids.
    f.scope(begin(11, 0, 5_000, &format!("gpuspan.request {TP} model=stdit")));
    f.rec(ext(20, 12));
    f.rec(launch(20));
    f.poll(2_000);
    assert_eq!(f.asm.correlation_entries(), 1, "request 1's id went, the new step's stayed");
    f.scope(begin(12, 11, 5_010, "dit.step 0/1"));
    f.rec(kernel("flash_fwd_kernel", 20, 5_100, 5_200));
    f.scope(ScopeEvent::End { id: 12, ts_ns: 5_020, launches: Some(1), graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 11, ts_ns: 5_030, launches: Some(1), graph_launches: 0 });
    let out = f.poll(2_001);
    assert_eq!((out.requests.len(), out.steps.len()), (1, 1), "the step completes with its kernel");
    assert_eq!((f.asm.stats.unattributed, f.asm.stats.units_timed_out), (0, 0));
    // An id whose scope left the table (a written segment) still goes, one release later.
    f.scope(begin(21, 0, 9_000, &format!("gpuspan.request {TP} model=stdit")));
    f.rec(ext(30, 99));
    for i in 0..=2 * assemble::WAIT_GENERATIONS + 2 {
        f.poll(3_000 + i);
    }
    assert_eq!(f.asm.correlation_entries(), 0, "ids of scopes never seen are let go");
}

/// A request that announces no step (fine mode): its kernels are a text encoder, three
/// forward passes separated by the scheduler's idle gap, and a VAE decode. The assembler
/// detects the three passes as `dit.step i/3` spans (`gpuspan.step_source=detected`) with
/// their kernels, step timings for the histogram, and leaves the encoder and decoder kernels
/// to the request. The same request with one announced step is left as announced.
#[test]
fn steps_of_a_request_that_announces_none_are_detected_from_its_kernels() {
    let pass = ["flash_fwd_kernel", "sm90_xmma_gemm_bf16", "layer_norm_kernel", "flash_fwd_kernel", "sm90_xmma_gemm_bf16", "layer_norm_kernel", "scheduler_step_kernel"];
    let run = |announce_one_step: bool| {
        let mut f = Fixture::new(SpanOptions { settle_ms: 0, ..Default::default() });
        f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=stdit")));
        if announce_one_step {
            f.scope(begin(2, 1, 11, "dit.step 0/1"));
            f.scope(ScopeEvent::End { id: 2, ts_ns: 12, launches: Some(0), graph_launches: 0 });
        }
        let (mut corr, mut t) = (1u32, 1_000u64);
        let mut launch_kernel = |f: &mut Fixture, name: &str, gap_ns: u64| {
            t += gap_ns;
            f.rec(kernel(name, corr, t, t + 10_000));
            f.rec(ext(corr, 1));
            f.rec(launch(corr));
            t += 10_000;
            corr += 1;
        };
        for name in ["t5_encoder_gemm", "t5_encoder_softmax"] {
            launch_kernel(&mut f, name, 1_000);
        }
        for _ in 0..3 {
            for (i, name) in pass.iter().enumerate() {
                launch_kernel(&mut f, name, if i == 0 { 2_000_000 } else { 1_000 });
            }
        }
        launch_kernel(&mut f, "vae_decoder_conv", 2_000_000);
        f.scope(ScopeEvent::End { id: 1, ts_ns: t + 1, launches: Some(corr - 1), graph_launches: 0 });
        f.poll(1_000)
    };

    let out = run(false);
    let steps: Vec<&SpanRecord> = out.spans.iter().filter(|s| &*s.name == "dit.step").collect();
    assert_eq!(steps.len(), 3, "{:?}", out.spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    let req = out.spans.iter().find(|s| &*s.name == "gpu.request").unwrap();
    let attr = |s: &SpanRecord, k: &str| s.attributes.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(attr(req, "gpuspan.step_source"), Some(AttrValue::Str(Arc::from("detected"))));
    assert_eq!(attr(req, "gpuspan.step_count"), Some(AttrValue::Int(3)));
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s.parent_span_id, Some(req.span_id));
        assert_eq!(attr(s, "gpuspan.step_source"), Some(AttrValue::Str(Arc::from("detected"))));
        assert_eq!(attr(s, "gpuspan.step.index"), Some(AttrValue::Int(i as i64)));
        assert_eq!(attr(s, "gpuspan.step.count"), Some(AttrValue::Int(3)));
        assert_eq!(attr(s, "gpuspan.kernel_count"), Some(AttrValue::Int(pass.len() as i64)), "a whole pass per step");
        assert_eq!(attr(s, "gpuspan.scope"), Some(AttrValue::Str(Arc::from(format!("dit.step {i}/3").as_str()))));
    }
    assert!(steps.windows(2).all(|w| w[0].end_unix_ns < w[1].start_unix_ns), "in order, disjoint");
    assert_eq!(out.steps.len(), 3, "a timing per detected step");
    assert!(out.steps.iter().enumerate().all(|(i, t)| t.index == i as u64 && t.total == Some(3)));
    // The encoder and decoder kernels stay the request's own work, with its stage spans
    // parented on the request.
    let own: i64 = out
        .spans
        .iter()
        .filter(|s| s.parent_span_id == Some(req.span_id) && &*s.name != "dit.step")
        .filter_map(|s| match attr(s, "gpuspan.kernel_count") {
            Some(AttrValue::Int(n)) => Some(n),
            _ => None,
        })
        .sum();
    assert_eq!(own, 3);
    assert_eq!(out.requests[0].kernel_count, 3 * pass.len() as u64 + 3);

    // Announced steps are never replaced.
    let out = run(true);
    let steps: Vec<&SpanRecord> = out.spans.iter().filter(|s| &*s.name == "dit.step").collect();
    assert_eq!(steps.len(), 1);
    assert!(out.spans.iter().all(|s| attr(s, "gpuspan.step_source").is_none()));
}

/// One step of [`graph_launched_steps_finish_without_the_settle_wait_once_their_graph_is_known`]:
/// step scope `id` makes one ordinary launch (a copy kernel) and launches graph `graph_id`,
/// which runs `kernels` kernels (all with the `cuGraphLaunch` call's correlation id), then
/// ends with both counts, as the agent's callbacks report them; polled at `now_ms`.
fn graph_step(f: &mut Fixture, corr: &mut u32, id: u64, graph_id: u32, kernels: u32, now_ms: u64) -> Finalized {
    let t = 1_000_000 * id;
    f.scope(begin(id, 1, t, &format!("dit.step {}/4", id - 2)));
    f.rec(kernel("copy_kernel", *corr, t + 10, t + 20));
    f.rec(ext(*corr, id));
    f.rec(launch(*corr));
    *corr += 1;
    f.rec(ext(*corr, id));
    f.rec(driver_api(*corr, DRIVER_GRAPH_LAUNCH_CBIDS[0]));
    for i in 0..kernels as u64 {
        let mut r = kernel("sm90_xmma_gemm_bf16", *corr, t + 100 * (i + 1), t + 100 * (i + 1) + 50);
        if let ActivityRecord::Kernel(k) = &mut r {
            k.graph_id = graph_id;
        }
        f.rec(r);
    }
    *corr += 1;
    f.scope(ScopeEvent::End { id, ts_ns: t + 900, launches: Some(1), graph_launches: 1 });
    f.poll(now_ms)
}

/// A worker whose forward passes are CUDA graphs (torch.compile "reduce-overhead"): a graph
/// launch makes one GPU record per node, a count the launch callback cannot know. The first
/// step's graph is unknown, so its unit waits `settle_ms` as one without counts, and teaches
/// the assembler that the graph makes 3 kernels a launch. The next step of that graph is
/// finalized as soon as its records are in. A launch that made fewer (a conditional node
/// skipped) and a graph never seen wait `settle_ms` again. Nothing is late or timed out.
#[test]
fn graph_launched_steps_finish_without_the_settle_wait_once_their_graph_is_known() {
    let mut f = Fixture::new(SpanOptions { settle_ms: 600, ..Default::default() });
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=stdit")));
    let mut corr = 1u32;
    let kernels = |out: &Finalized| {
        let s = out.spans.iter().find(|s| &*s.name == "dit.step").expect("a step span");
        s.attributes.iter().find(|(n, _)| n == "gpuspan.kernel_count").map(|(_, v)| v.clone())
    };

    let first = graph_step(&mut f, &mut corr, 3, 7, 3, 1_000);
    assert!(first.steps.is_empty(), "an unknown graph: the unit waits");
    let first = f.poll(1_700);
    assert_eq!(first.steps.len(), 1, "finalized after settle_ms");
    assert_eq!(kernels(&first), Some(AttrValue::Int(4)));

    let second = graph_step(&mut f, &mut corr, 4, 7, 3, 2_000);
    assert_eq!(second.steps.len(), 1, "a known graph with all its kernels in: finalized at once");
    assert_eq!(kernels(&second), Some(AttrValue::Int(4)));

    assert!(graph_step(&mut f, &mut corr, 5, 7, 2, 3_000).steps.is_empty(), "fewer kernels than the graph makes: it waits");
    assert_eq!(f.poll(3_700).steps.len(), 1);

    assert!(graph_step(&mut f, &mut corr, 6, 8, 3, 4_000).steps.is_empty(), "another graph, never seen: it waits");
    assert_eq!(f.poll(4_700).steps.len(), 1);
    assert_eq!((f.asm.stats.gpu_late, f.asm.stats.units_timed_out, f.asm.stats.gpu_dropped), (0, 0, 0));
}

/// Between polls the agent finalizes what is complete ([`SpanAssembler::finalize_ready`])
/// while many records are held. That finalizes a step whose records are in at once, shrinks
/// the vector of a unit that waits `settle_ms` once it has waited `SHRINK_AFTER_MS`, and
/// leaves the waits counted in polls alone: a record whose external correlation never comes
/// is unattributed after `WAIT_GENERATIONS` polls, however often `finalize_ready` ran.
#[test]
fn finalize_ready_between_polls_finishes_complete_units_and_moves_no_poll_count() {
    let mut f = Fixture::new(SpanOptions { settle_ms: 600, ..Default::default() });
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=stdit")));
    // Step 2: one counted launch, its records in.
    f.scope(begin(2, 1, 1_000, "dit.step 0/2"));
    f.rec(ext(1, 2));
    f.rec(launch(1));
    f.rec(kernel("flash_fwd_kernel", 1, 1_100, 1_200));
    f.scope(ScopeEvent::End { id: 2, ts_ns: 1_300, launches: Some(1), graph_launches: 0 });
    // A kernel whose external correlation record never comes: it waits for its scope.
    f.rec(kernel("flash_fwd_kernel", 99, 1_400, 1_500));
    let out = f.asm.finalize_ready(&f.scopes, 5, false);
    assert_eq!(out.steps.len(), 1, "a complete step is finalized between polls");
    assert_eq!(f.asm.held_gpu(), 0);

    // Step 3: its launches not counted (no callbacks), so it waits settle_ms; 5 kernels in a
    // vector grown to 8.
    f.scope(begin(3, 1, 2_000, "dit.step 1/2"));
    for corr in 10..15u32 {
        f.rec(ext(corr, 3));
        f.rec(launch(corr));
        f.rec(kernel("flash_fwd_kernel", corr, 2_000 + 100 * corr as u64, 2_050 + 100 * corr as u64));
    }
    f.scope(ScopeEvent::End { id: 3, ts_ns: 4_000, launches: None, graph_launches: 0 });
    assert_eq!((f.asm.held_gpu(), f.asm.held_gpu_capacity()), (5, 8));
    for now_ms in [10, 10 + assemble::SHRINK_AFTER_MS - 1] {
        assert!(f.asm.finalize_ready(&f.scopes, now_ms, false).is_empty());
    }
    assert_eq!(f.asm.held_gpu_capacity(), 8, "not shrunk before SHRINK_AFTER_MS");
    assert!(f.asm.finalize_ready(&f.scopes, 10 + assemble::SHRINK_AFTER_MS, false).is_empty());
    assert_eq!((f.asm.held_gpu(), f.asm.held_gpu_capacity()), (5, 5), "shrunk while it settles");
    for now_ms in 100..200 {
        f.asm.finalize_ready(&f.scopes, now_ms, false);
    }
    assert_eq!(f.asm.stats.unattributed, 0, "finalize_ready counts no poll");
    let out = f.asm.finalize_ready(&f.scopes, 610, false);
    assert_eq!(out.steps.len(), 1, "finalized after settle_ms");
    let step = out.spans.iter().find(|s| &*s.name == "dit.step").expect("the step's span");
    assert_eq!(int(step, "gpuspan.kernel_count"), 5);

    for i in 0..=assemble::WAIT_GENERATIONS {
        f.poll(1_000 + i);
    }
    assert_eq!(f.asm.stats.unattributed, 1, "WAIT_GENERATIONS polls later");
    assert_eq!((f.asm.stats.gpu_late, f.asm.stats.units_timed_out, f.asm.stats.gpu_dropped), (0, 0, 0));
}

/// The assembler remembers where the last record's scope put its records (`PlaceCache`),
/// keyed by the scope table's version: once the table lets go of that scope, the scope's
/// next records are looked up again (and wait, the scope being unknown), not placed from
/// the memory of it. Before the version key, a hit skipped the table altogether.
#[test]
fn a_scope_the_table_let_go_of_is_looked_up_again() {
    let mut f = Fixture::new(SpanOptions::default());
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=stdit")));
    f.scope(begin(3, 1, 20, "ffn"));
    f.rec(ext(1, 3));
    f.rec(kernel("sm90_xmma_gemm_bf16", 1, 1_000, 1_400));
    f.rec(ext(2, 3));
    let version = f.scopes.version();
    f.scopes.retain(|s| s.id != 3);
    assert_ne!(f.scopes.version(), version, "removing a scope changes the version");
    f.rec(kernel("sm90_xmma_gemm_bf16", 2, 2_000, 2_400));
    f.scope(ScopeEvent::End { id: 1, ts_ns: 990, launches: None, graph_launches: 0 });
    let out = f.asm.poll(&f.scopes, 10_000, true);
    assert_eq!(f.asm.stats.unattributed, 1, "the kernel of the removed scope waits, then counts as unattributed");
    let ffn = out.spans.iter().find(|s| &*s.name == "ffn").expect("the first kernel's stage span");
    assert_eq!(int(ffn, "gpuspan.kernel_count"), 1);
}

/// Kernel names and stages held by index (`GpuNames`, `StageNames`): past the name table's
/// bound, each kernel still gets its own name; a kernel in a stage scope takes the scope's
/// stage (an NCCL kernel `communication`), one outside any takes its name's class, whether
/// its scope was known when it arrived or only later; every stage span counts its own.
#[test]
fn kernel_names_and_stages_survive_the_name_tables_bound() {
    let mut f = Fixture::new(SpanOptions { kernel_span_budget: u64::MAX, ..Default::default() });
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=m")));
    f.scope(begin(2, 1, 20, "dit.step 0/1"));
    f.scope(begin(3, 2, 30, "ffn"));
    let n = super::assemble::GPU_NAMES_MAX as u32 + 5;
    let mut want: HashMap<i64, (String, &str)> = HashMap::new();
    for (corr, i) in (1u32..).zip(0..n) {
        // Every name distinct, as many as the table holds and more; one in 1,000 an NCCL
        // kernel; the last of every 100 launched outside the stage scope (in the step).
        let (name, scope, stage) = match i {
            i if i % 1000 == 999 => (format!("ncclDevKernel_AllReduce_{i}"), 3, "communication"),
            i if i % 100 == 99 => (format!("flash_fwd_kernel_{i}"), 2, "attention"),
            i => (format!("gemm_{i}"), 3, "ffn"),
        };
        let (s, e) = (1000 * corr as u64, 1000 * corr as u64 + 500);
        // Half the kernels arrive before their scope is known.
        if i % 2 == 0 {
            f.rec(ext(corr, scope));
            f.rec(launch(corr));
            f.rec(kernel(&name, corr, s, e));
        } else {
            f.rec(kernel(&name, corr, s, e));
            f.rec(ext(corr, scope));
            f.rec(launch(corr));
        }
        want.insert(corr as i64, (name, stage));
    }
    f.scope(ScopeEvent::End { id: 3, ts_ns: 1_000_000_000, launches: None, graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 2, ts_ns: 1_000_000_001, launches: None, graph_launches: 0 });
    f.scope(ScopeEvent::End { id: 1, ts_ns: 1_000_000_002, launches: None, graph_launches: 0 });
    let out = f.asm.poll(&f.scopes, 0, true);
    let text = |s: &SpanRecord, k: &str| match s.attr(k) {
        Some(AttrValue::Str(v)) => v.to_string(),
        other => panic!("{k} on {}: {other:?}", s.name),
    };
    let kernels: Vec<&SpanRecord> = out.spans.iter().filter(|s| &*s.name == "cuda.kernel").collect();
    assert_eq!(kernels.len(), n as usize);
    for k in &kernels {
        let (name, stage) = &want[&int(k, "cuda.correlation_id")];
        assert_eq!(&text(k, "cuda.kernel.name"), name);
        assert_eq!(&text(k, "gpuspan.stage"), stage, "{name}");
    }
    let mut per_stage: HashMap<String, i64> = HashMap::new();
    for s in out.spans.iter().filter(|s| !matches!(&*s.name, "gpu.request" | "dit.step" | "cuda.kernel")) {
        per_stage.insert(s.name.to_string(), int(s, "gpuspan.kernel_count"));
    }
    let count = |st: &str| want.values().filter(|(_, s)| *s == st).count() as i64;
    assert_eq!(per_stage.len(), 3, "{per_stage:?}");
    for st in ["ffn", "attention", "communication"] {
        assert_eq!(per_stage[st], count(st), "{st}");
    }
}

/// A collective kernel in a stage scope is `communication` whatever its name's class, also
/// when it arrives before its external correlation (classified by name while it waits) and
/// its class is the stage scope's own stage.
#[test]
fn a_waiting_collective_kernel_is_communication_even_when_its_class_is_its_scopes_stage() {
    let rules = StageRules::with_overrides("[[rule]]\nclass = \"attention.spatial\"\ncontains = [\"nccl\"]\n").unwrap();
    let mut f = Fixture { scopes: ScopeTable::new(), asm: SpanAssembler::new(SpanOptions::default()), cls: Classifier::new(rules) };
    f.scope(begin(1, 0, 10, &format!("gpuspan.request {TP} model=m")));
    f.scope(begin(2, 1, 20, "dit.step 0/1"));
    f.scope(begin(3, 2, 30, "attention.spatial"));
    // Arrives first: its scope is unknown, so it waits with its name's class.
    f.rec(kernel("ncclDevKernel_AllGather_RING_LL", 1, 1_000, 2_000));
    f.rec(ext(1, 3));
    f.rec(launch(1));
    // Arrives after: placed at once.
    f.rec(ext(2, 3));
    f.rec(launch(2));
    f.rec(kernel("ncclDevKernel_AllGather_RING_LL", 2, 3_000, 4_000));
    for id in [3, 2, 1] {
        f.scope(ScopeEvent::End { id, ts_ns: 10_000, launches: None, graph_launches: 0 });
    }
    let out = f.asm.poll(&f.scopes, 0, true);
    let stages: Vec<String> = out.spans.iter().filter(|s| &*s.name == "cuda.kernel").map(|s| match s.attr("gpuspan.stage") {
        Some(AttrValue::Str(v)) => v.to_string(),
        other => panic!("{other:?}"),
    }).collect();
    assert_eq!(stages, ["communication", "communication"]);
}

//! Coarse mode, the default (issue 5): scopes timed with pooled CUDA events, no CUPTI
//! subscription. The same 50-step stdit request runs twice on the simulated H100 (virtual
//! clock, deterministic): once in the default mode and once in fine mode. Spans and metrics
//! of both arrive at an OTLP receiver.
//!
//! Ground truth, from the fine run's capture alone (its CUPTI API and GPU records and the
//! scopes' CPU times, none of it from CUDA events): a CUDA event recorded at host time T
//! on the one stream the workload uses completes when the stream has finished everything
//! launched before T, or at T + the launch latency if the stream is idle (cuda.h
//! `cuEventRecord`; the simulator's documented launch model). So a scope's GPU interval is
//! `[max(begin + latency, tail(begin)), max(end + latency, tail(end))]`, with `tail(T)` the
//! latest end of the GPU work whose launch call came before T. A step therefore includes
//! the scheduler's host gap at its end, during which the GPU idles: the fine spans, which
//! run from first kernel start to last kernel end, do not, and are not the reference.

use crate::util::*;
use gpuspan_testkit::{OtlpReceiver, ReceivedSpan, Transport};
use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

/// Runs `gpuspan run [--mode MODE] --sim -- gpuspan-replay stdit --steps N [extra]` with
/// spans and metrics going to `rx`; returns the worker's output.
fn run_stdit(mode: Option<&str>, steps: u32, extra: &[&str], env: &[(&str, &str)], rx: &OtlpReceiver) -> Output {
    let out = tempfile::tempdir().unwrap();
    run_stdit_into(out.path(), mode, steps, extra, env, rx)
}

/// [`run_stdit`] writing into `out` (also the devices tests' runner).
pub(crate) fn run_stdit_into(out: &std::path::Path, mode: Option<&str>, steps: u32, extra: &[&str], env: &[(&str, &str)], rx: &OtlpReceiver) -> Output {
    let mut c = gpuspan();
    c.arg("run");
    if let Some(m) = mode {
        c.args(["--mode", m]);
    }
    c.args(["--sim", "--out"])
        .arg(out)
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--steps", &steps.to_string()])
        .args(extra)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .env("GPUSPAN_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = output(&mut c);
    assert!(o.status.success(), "worker failed: {}", String::from_utf8_lossy(&o.stderr));
    if mode.is_none() || mode == Some("coarse") {
        assert!(captures_in(out).is_empty(), "coarse mode writes no kernel capture");
    }
    o
}

fn spans_of(rx: &OtlpReceiver, trace_id: &str) -> Vec<ReceivedSpan> {
    assert!(
        rx.wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.name == "gpu.request" && s.trace_id == trace_id)),
        "no gpu.request arrived"
    );
    rx.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
}

/// Scope intervals by the ground-truth rule of the module docs, from a fine capture:
/// `(step index → interval ns, (step index, stage) → summed stage-scope intervals ns,
/// vae.decode interval ns)`.
/// (step index → ns, (step index, stage) → ns, vae.decode ns).
type GroundTruth = (BTreeMap<i64, f64>, BTreeMap<(i64, String), f64>, f64);

fn ground_truth(capture: &std::path::Path) -> GroundTruth {
    use gpuspan_core::trace::Category;
    let latency_us = gpuspan_simgpu::sim::costs::LAUNCH_LATENCY_NS as f64 / 1000.0;
    let t = gpuspan_export::read_trace(capture).unwrap();
    let mut launch_us = std::collections::HashMap::new();
    for e in &t.events {
        if matches!(e.cat, Some(Category::CudaDriver) | Some(Category::CudaRuntime)) {
            if let Some(c) = e.correlation {
                launch_us.insert(c, e.ts_us);
            }
        }
    }
    // (launch time, GPU end) of every GPU op, by launch time, with the running max of ends.
    let mut ops: Vec<(f64, f64)> = t
        .events
        .iter()
        .filter(|e| matches!(e.cat, Some(Category::Kernel) | Some(Category::GpuMemcpy) | Some(Category::GpuMemset)))
        .map(|e| (launch_us[&e.correlation.unwrap()], e.end_us()))
        .collect();
    ops.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut tail_max = Vec::with_capacity(ops.len());
    let mut m = f64::MIN;
    for o in &ops {
        m = m.max(o.1);
        tail_max.push(m);
    }
    // Ops launched before `t_us`: by more than 1 ns, since µs floats in the file can put a
    // launch that followed a boundary by a few ns at or just before it (a graph launch right
    // after the previous step's end).
    let tail = |t_us: f64| -> f64 {
        let n = ops.partition_point(|o| o.0 < t_us - 0.001);
        if n == 0 {
            f64::MIN
        } else {
            tail_max[n - 1]
        }
    };
    let interval_ns = |b: f64, e: f64| -> f64 {
        let start = (b + latency_us).max(tail(b));
        let end = (e + latency_us).max(tail(e));
        (end - start) * 1000.0
    };
    let scopes: Vec<_> = t.events.iter().filter(|e| e.cat == Some(Category::UserAnnotation)).collect();
    let steps: Vec<(i64, f64, f64)> = scopes
        .iter()
        .filter_map(|e| {
            let i = e.name.strip_prefix("dit.step ")?.split('/').next()?.parse().ok()?;
            Some((i, e.ts_us, e.end_us()))
        })
        .collect();
    let step_gt = steps.iter().map(|&(i, b, e)| (i, interval_ns(b, e))).collect();
    let mut stage_gt = BTreeMap::new();
    let mut vae = 0.0;
    for e in &scopes {
        if e.name == "vae.decode" {
            vae = interval_ns(e.ts_us, e.end_us());
        }
        if !["attention.spatial", "attention.temporal", "attention.cross", "ffn", "norm"].contains(&e.name.as_str()) {
            continue;
        }
        let Some(&(i, _, _)) = steps.iter().find(|&&(_, b, en)| b <= e.ts_us && e.end_us() <= en) else { continue };
        *stage_gt.entry((i, e.name.clone())).or_insert(0.0) += interval_ns(e.ts_us, e.end_us());
    }
    (step_gt, stage_gt, vae)
}

/// Step index → duration ns of the `dit.step` spans.
fn step_durations(spans: &[ReceivedSpan]) -> BTreeMap<i64, u64> {
    spans
        .iter()
        .filter(|s| s.name == "dit.step")
        .map(|s| (s.int("gpuspan.step.index").unwrap(), s.end_unix_ns - s.start_unix_ns))
        .collect()
}

/// (step index, stage) → `gpuspan.gpu_busy_ns` of the stage spans under steps.
fn stage_busy(spans: &[ReceivedSpan]) -> BTreeMap<(i64, String), i64> {
    let steps: BTreeMap<&str, i64> =
        spans.iter().filter(|s| s.name == "dit.step").map(|s| (s.span_id.as_str(), s.int("gpuspan.step.index").unwrap())).collect();
    spans
        .iter()
        .filter_map(|s| Some(((*steps.get(s.parent_span_id.as_str())?, s.name.clone()), s.int("gpuspan.gpu_busy_ns")?)))
        .collect()
}

/// The cumulative (count, sum) of `dit_inference_step_duration_ms{step_type="step"}` over
/// OTLP (the latest export).
fn step_histogram(rx: &OtlpReceiver) -> (u64, f64) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut best = (0u64, 0f64);
    for r in rx.metrics() {
        for m in r.resource_metrics.iter().flat_map(|x| &x.scope_metrics).flat_map(|x| &x.metrics) {
            let (true, Some(Data::Histogram(h))) = (m.name == "dit_inference_step_duration_ms", &m.data) else { continue };
            for dp in &h.data_points {
                let is_step = dp.attributes.iter().any(|kv| {
                    kv.key == "step_type"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(v)) if v == "step")
                });
                if is_step && dp.count >= best.0 {
                    best = (dp.count, dp.sum.unwrap_or(0.0));
                }
            }
        }
    }
    best
}

#[test]
fn coarse_default_no_cupti_and_within_one_percent_of_ground_truth() {
    const STEPS: u32 = 50;
    let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", 0);
    let trace_id = tp.split('-').nth(1).unwrap().to_string();

    let coarse_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let coarse = run_stdit(None, STEPS, &[], &[], &coarse_rx);
    let cupti = sim_cupti(&coarse);
    assert_eq!((cupti["subscribes"], cupti["enables"]), (0, 0), "coarse mode never subscribes nor enables: {cupti:?}");
    let stderr = String::from_utf8_lossy(&coarse.stderr);
    assert!(stderr.contains("coarse mode on"), "{stderr}");

    let fine_out = tempfile::tempdir().unwrap();
    let fine_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let fine = run_stdit_into(fine_out.path(), Some("fine"), STEPS, &[], &[], &fine_rx);
    assert!(sim_cupti(&fine)["subscribes"] >= 1);
    let (step_gt, stage_gt, vae_gt) = ground_truth(&capture_in(fine_out.path()));

    let spans = spans_of(&coarse_rx, &trace_id);
    assert!(spans.iter().all(|s| s.name != "cuda.kernel"), "no kernel spans in coarse mode");
    for s in spans.iter().filter(|s| s.name != "gpu.request") {
        assert_eq!(s.str("gpuspan.timing"), Some("cuda_event"), "{} timed on the named stream", s.name);
    }
    let mut worst = 0f64;
    let mut check = |what: String, got: f64, want: f64| {
        let d = (got - want).abs() / want;
        worst = worst.max(d);
        assert!(d < 0.01, "{what}: coarse {got} ns, ground truth {want} ns ({:.3} %)", d * 100.0);
    };
    // Every step.
    let cs = step_durations(&spans);
    assert_eq!(cs.len(), STEPS as usize);
    assert_eq!(step_gt.len(), STEPS as usize);
    for (i, want) in &step_gt {
        check(format!("step {i}"), cs[i] as f64, *want);
    }
    // Every (step, scope stage): the stage span's busy time is the sum of its scopes.
    let cb = stage_busy(&spans);
    assert_eq!(stage_gt.len(), 5 * STEPS as usize, "five scope stages per step");
    for ((step, stage), want) in &stage_gt {
        let got = cb.get(&(*step, stage.clone())).unwrap_or_else(|| panic!("no {stage} span in step {step}"));
        check(format!("step {step} {stage}"), *got as f64, *want);
    }
    let vae = spans.iter().find(|s| s.name == "vae.decode").unwrap();
    check("vae.decode".into(), (vae.end_unix_ns - vae.start_unix_ns) as f64, vae_gt);
    // Metrics: the step histogram's count, and its sum against the ground truth's.
    let (count, sum_ms) = step_histogram(&coarse_rx);
    assert_eq!(count, STEPS as u64);
    let want_ms = step_gt.values().sum::<f64>() / 1e6;
    check("dit_inference_step_duration_ms sum".into(), sum_ms * 1e6, want_ms * 1e6);
    eprintln!("coarse vs ground truth: worst relative difference {:.4} %", worst * 100.0);
}

/// A worker that names no stream (plain NVTX): scopes are timed on the legacy default
/// stream, which never sees the non-blocking stream the kernels run on, and the spans say so.
#[test]
fn coarse_plain_nvtx_is_timed_on_the_legacy_stream_and_says_so() {
    let rx = OtlpReceiver::start(Transport::Grpc, "127.0.0.1:0");
    let o = run_stdit(Some("coarse"), 2, &["--legacy-stream"], &[], &rx);
    assert_eq!(sim_cupti(&o)["subscribes"], 0);
    let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", 0);
    let spans = spans_of(&rx, tp.split('-').nth(1).unwrap());
    for s in &spans {
        assert_eq!(s.str("gpuspan.timing"), Some("legacy_stream"), "{}", s.name);
    }
    assert_eq!(spans.iter().filter(|s| s.name == "dit.step").count(), 2);
}

/// A pool of 4 events cannot time hundreds of open scopes: the rest are timed on the CPU
/// side, marked so, and the run still yields every step.
#[test]
fn coarse_exhausted_event_pool_falls_back_to_cpu_times() {
    let rx = OtlpReceiver::start(Transport::Grpc, "127.0.0.1:0");
    let o = run_stdit(Some("coarse"), 2, &[], &[("GPUSPAN_EVENT_POOL", "4")], &rx);
    let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", 0);
    let spans = spans_of(&rx, tp.split('-').nth(1).unwrap());
    assert_eq!(spans.iter().filter(|s| s.name == "dit.step").count(), 2);
    let cpu = spans.iter().filter(|s| s.str("gpuspan.timing") == Some("cpu_fallback")).count();
    assert!(cpu > 0, "some spans are CPU-timed");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("event pool"), "the exhaustion is reported: {stderr}");
}


/// `stdit --cuda-graph`: each forward pass (denoising step) is captured into a CUDA graph in
/// GLOBAL mode the first time and replayed with `cuGraphLaunch` afterwards, as
/// torch.compile's reduce-overhead mode does. Under coarse mode the worker must finish
/// (no capture invalidated by the agent's event queries or legacy-stream records), the
/// stage scopes that ran inside the capture get no span, and every step span is within 1 %
/// of the ground truth taken from a fine run of the same graphs; in fine mode every graph
/// kernel lands in its step and the step histogram matches the run without graphs within
/// 1 %.
#[test]
fn cuda_graph_steps_under_coarse_and_fine() {
    const STEPS: u32 = 6;
    let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", 0);
    let trace_id = tp.split('-').nth(1).unwrap().to_string();

    let coarse_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let coarse = run_stdit(None, STEPS, &["--cuda-graph"], &[], &coarse_rx);
    let stdout = String::from_utf8_lossy(&coarse.stdout);
    assert!(stdout.contains("cuda graph: captured=1 "), "{stdout}");

    let fine_out = tempfile::tempdir().unwrap();
    let fine_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let _fine = run_stdit_into(fine_out.path(), Some("fine"), STEPS, &["--cuda-graph"], &[], &fine_rx);
    let capture = capture_in(fine_out.path());
    let (step_gt, _, vae_gt) = ground_truth(&capture);
    assert_eq!(step_gt.len(), STEPS as usize);

    // Coarse: one span per step, within 1 % of the ground truth; no stage span (the stage
    // scopes ran inside the capture, and on replay no stage code runs).
    let spans = spans_of(&coarse_rx, &trace_id);
    let cs = step_durations(&spans);
    assert_eq!(cs.len(), STEPS as usize, "a span for every step");
    let mut worst = 0f64;
    for (i, want) in &step_gt {
        let d = (cs[i] as f64 - want).abs() / want;
        worst = worst.max(d);
        assert!(d < 0.01, "step {i}: coarse {} ns, ground truth {want} ns", cs[i]);
    }
    eprintln!("cuda graphs, coarse steps vs ground truth: worst relative difference {:.4} %", worst * 100.0);
    let steps: std::collections::BTreeSet<&str> = spans.iter().filter(|s| s.name == "dit.step").map(|s| s.span_id.as_str()).collect();
    let stage_spans: Vec<&str> =
        spans.iter().filter(|s| steps.contains(s.parent_span_id.as_str())).map(|s| s.name.as_str()).collect();
    assert!(stage_spans.is_empty(), "no span for captured stage scopes: {stage_spans:?}");
    let vae = spans.iter().find(|s| s.name == "vae.decode").expect("vae.decode runs outside the graphs");
    let d = ((vae.end_unix_ns - vae.start_unix_ns) as f64 - vae_gt).abs() / vae_gt;
    assert!(d < 0.01, "vae.decode off by {:.3} %", d * 100.0);

    // Fine: every kernel of the run is in the capture, and every graph kernel is in its step:
    // per step, as many kernels as the same run without graphs puts there.
    let t = gpuspan_export::read_trace(&capture).unwrap();
    let launched: usize = String::from_utf8_lossy(&_fine.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("replayed N kernels");
    assert_eq!(t.kernels().count(), launched, "every kernel captured");
    let plain_out = tempfile::tempdir().unwrap();
    let plain_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let _plain = run_stdit_into(plain_out.path(), Some("fine"), STEPS, &[], &[], &plain_rx);
    let plain = gpuspan_export::read_trace(&capture_in(plain_out.path())).unwrap();
    let per_step = |t: &gpuspan_core::trace::Trace| -> BTreeMap<Option<String>, usize> {
        let mut m = BTreeMap::new();
        for k in t.kernels() {
            *m.entry(k.step.clone()).or_insert(0) += 1;
        }
        m
    };
    let (with_graphs, without) = (per_step(&t), per_step(&plain));
    assert_eq!(with_graphs.len(), STEPS as usize + 1, "every step and the work outside steps: {:?}", with_graphs.keys());
    assert_eq!(with_graphs, without, "kernels per step with graphs and without");

    // The fine step histogram with graphs against the same run without them.
    let (n_graph, sum_graph) = step_histogram(&fine_rx);
    let (n_plain, sum_plain) = step_histogram(&plain_rx);
    assert_eq!((n_graph, n_plain), (STEPS as u64, STEPS as u64), "every step in both histograms");
    let d = (sum_graph - sum_plain).abs() / sum_plain;
    eprintln!("fine step histogram sum: with graphs {sum_graph:.3} ms, without {sum_plain:.3} ms ({:.4} %)", d * 100.0);
    assert!(d < 0.01, "step histogram sum with graphs {sum_graph} ms vs without {sum_plain} ms");
}

/// A real trace (`h100-vit-falconsai`, whose `ProfilerStep#N` range is a forward pass)
/// replayed three times with `--cuda-graph` (captured once, launched three times): under coarse mode the worker finishes (no capture
/// invalidated); in fine mode every kernel lands in the same step as in the replay without
/// graphs.
#[test]
fn cuda_graph_fixture_replay_under_coarse_and_fine() {
    let trace = fixture("h100-vit-falconsai.json.gz");
    let replay = |mode: &str, graphs: bool, out: &std::path::Path, rx: &OtlpReceiver| -> Output {
        let mut c = gpuspan();
        c.args(["run", "--mode", mode, "--sim", "--out"])
            .arg(out)
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .arg(&trace)
            .args(["--requests", "3"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env());
        if graphs {
            c.arg("--cuda-graph");
        }
        let o = output(&mut c);
        assert!(o.status.success(), "{mode} graphs={graphs}: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        o
    };
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = replay("coarse", true, out.path(), &rx);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("cuda graph: captured=1 launches=3"), "one graph, launched for each request's step: {stdout}");
    let per_step = |dir: &std::path::Path| -> BTreeMap<Option<String>, usize> {
        let t = gpuspan_export::read_trace(&capture_in(dir)).unwrap();
        let mut m = BTreeMap::new();
        for k in t.kernels() {
            *m.entry(k.step.clone()).or_insert(0) += 1;
        }
        m
    };
    let (g, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    replay("fine", true, g.path(), &rx);
    replay("fine", false, p.path(), &rx);
    let (with_graphs, without) = (per_step(g.path()), per_step(p.path()));
    assert!(with_graphs.iter().any(|(k, n)| k.is_some() && *n > 0), "kernels in steps: {with_graphs:?}");
    assert_eq!(with_graphs, without, "kernels per step with graphs and without");
}

/// Coarse timing needs only the driver: with the simulated `libcuda.so.1` but no CUPTI
/// library anywhere on the path, the agent says once that fine capture is off and still
/// times every step with CUDA events.
#[test]
fn coarse_mode_runs_without_cupti() {
    const STEPS: u32 = 3;
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    for name in std::fs::read_dir(sim.path()).unwrap().flatten().map(|e| e.path()) {
        if name.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libcupti")) {
            std::fs::remove_file(&name).unwrap();
        }
    }
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = output(
        std::process::Command::new(artifact("gpuspan-replay"))
            .args(["stdit", "--steps", &STEPS.to_string()])
            .env("LD_PRELOAD", artifact("libgpuspan.so"))
            .env("LD_LIBRARY_PATH", sim.path())
            .env_remove("NVTX_INJECTION64_PATH")
            .env_remove("CUDA_INJECTION64_PATH")
            .env("GPUSPAN_MODE", "coarse")
            .env("GPUSPAN_OUT", out.path())
            .env("GPUSPAN_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env()),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stderr.matches("fine capture windows are off").count(), 1, "one line says so: {stderr}");
    assert!(stderr.contains("coarse mode on") && stderr.contains("no CUPTI"), "{stderr}");
    let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", 0);
    let spans = spans_of(&rx, tp.split('-').nth(1).unwrap());
    let steps: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "dit.step").collect();
    assert_eq!(steps.len(), STEPS as usize, "every step");
    for s in &steps {
        assert!(s.end_unix_ns > s.start_unix_ns, "{s:?}");
        assert_ne!(s.str("gpuspan.timing"), Some("cpu_fallback"), "timed with events: {s:?}");
    }
}

#[test]
fn requests_that_never_end_give_their_events_back_after_the_scope_timeout() {
    // Six threads each begin a request, launch and die without ending it; each request's
    // begin event stays out of the 6-event pool until GPUSPAN_SCOPE_TIMEOUT (300 ms) gives
    // the request up. Without the timeout the pool stays empty and the later requests are
    // timed on the CPU (`pool_exhausted`).
    unended_requests(&[]);
}

/// As above, each request with a step under it that never ends either: giving the request
/// up gives the step's events back too (a root releases the children it still has
/// pending, found from its own list of children, not by a scan of every pending scope).
#[test]
fn unended_steps_of_requests_given_up_give_their_events_back() {
    unended_requests(&["step"]);
}

/// Twenty threads open requests at once, more than the agent's 16 thread rings: the four
/// without a ring queue their boundaries (scope events and CUDA-event marks together) on the
/// shared boundary queue, and every request is timed with its events all the same.
#[test]
fn threads_past_the_rings_are_timed_through_the_shared_queue() {
    let (threads, requests) = (20u64, 3u64);
    let mut w = ReadyWorker::start("many_threads", &[&threads.to_string(), &requests.to_string()], "coarse", &[]);
    let (coarse, _) = w.poll_status("coarse", |c| c["scopes_timed"].as_u64() >= Some(threads * requests));
    let drops = crate::control::status_json(w.child.id())["drops"].clone();
    let _ = w.child.kill();
    let stderr = w.finish();
    assert_eq!(coarse["scopes_timed"], threads * requests, "{coarse}\n{stderr}");
    assert_eq!((coarse["scopes_cpu_timed"].as_u64(), coarse["marks_dropped"].as_u64()), (Some(0), Some(0)), "{coarse}");
    assert_eq!(drops["scope_queue"], 0, "{drops}");
}

/// Twenty threads, one after the other, each end their request and its step in a
/// `pthread_key` destructor, which runs after the agent's thread-local destructors (a C++
/// RAII range in a thread-local does the same): both ends are still tracked (the scope stack
/// outlives the thread's teardown, and the boundaries take the shared queue behind what the
/// thread's ring still held), every scope is timed with its events, none is given up, and
/// every event is back in the pool. Before, the ends found the thread's state destroyed and
/// the scopes stayed open until the scope timeout gave them up.
#[test]
fn scopes_ended_in_a_threads_teardown_are_timed() {
    let threads = 20u64;
    let mut w = ReadyWorker::start("teardown_scopes", &[&threads.to_string(), "20"], "coarse", &[]);
    let (coarse, _) = w.poll_status("coarse", |c| c["scopes_timed"].as_u64() >= Some(2 * threads));
    let drops = crate::control::status_json(w.child.id())["drops"].clone();
    let _ = w.child.kill();
    let stderr = w.finish();
    assert_eq!(coarse["scopes_timed"], 2 * threads, "each request and its step: {coarse}\n{stderr}");
    assert_eq!((coarse["scopes_cpu_timed"].as_u64(), coarse["marks_dropped"].as_u64()), (Some(0), Some(0)), "{coarse}");
    assert_eq!(coarse["roots_timed_out"], 0, "{coarse}");
    assert_eq!(drops["scope_queue"], 0, "{drops}");
    // Every event is back but the anchor (the latest request's begin event): the exited
    // threads' stashes were given back, and the events their teardown took one at a time too.
    let (made, free) = (coarse["events_made"].as_u64().unwrap(), coarse["events_free"].as_u64().unwrap());
    assert!(free + 1 >= made, "events made {made}, free {free}: {coarse}");
}

/// `unended_requests 6 1500 EXTRA...` with a 300 ms scope timeout and a pool that holds
/// every begin event the leaky requests take (one each, two with `step`).
fn unended_requests(extra: &[&str]) {
    let pool = if extra.contains(&"step") { "12" } else { "6" };
    let env = [("GPUSPAN_EVENT_POOL", pool), ("GPUSPAN_SCOPE_TIMEOUT", "300ms")];
    let args: Vec<&str> = ["6", "1500"].iter().copied().chain(extra.iter().copied()).collect();
    let mut w = ReadyWorker::start("unended_requests", &args, "coarse", &env);
    // The collector resolves within a few ms; allow a few seconds on a loaded machine.
    let (coarse, _) = w.poll_status("coarse", |c| c["scopes_timed"].as_u64() >= Some(2));
    let _ = w.child.kill();
    let stderr = w.finish();
    println!("{coarse}");
    assert_eq!(coarse["roots_timed_out"], 6, "{coarse}\n{stderr}");
    if extra.contains(&"step") {
        assert_eq!(coarse["marks_dropped"], 6, "each unended step given up with its request: {coarse}");
    }
    // Every event is back but the anchor (the latest request's begin event).
    let (made, free) = (coarse["events_made"].as_u64().unwrap(), coarse["events_free"].as_u64().unwrap());
    assert!(free + 1 >= made, "events made {made}, free {free}: {coarse}");
    // The two tidy requests after the timeout (4 events at once, with 5 free) were timed
    // with events, not on the CPU.
    assert_eq!(coarse["pool_exhausted"], 0, "{coarse}");
    assert_eq!(coarse["scopes_timed"], 2, "{coarse}");
    assert!(stderr.contains("were given up and their CUDA events returned to the pool"), "{stderr}");
}

/// A step that only captures a CUDA graph (its launches become graph nodes, no GPU record)
/// and launches none, in fine mode: the agent tells captured launches from launches that
/// run (stream-capture callbacks), so the step and its request are finalized as soon as
/// their records are in, not after the 10 s span grace with the step counted as timed out.
#[test]
fn a_step_that_only_captures_is_finalized_without_waiting_for_the_grace() {
    capture_only_step("around");
}

/// A step that begins and ends inside a stream capture, in fine mode: it was recorded into a
/// graph, not run, so it gets no `dit.step` span and no step timing, only a count
/// (`gpuspan.span_captured_scopes`), as coarse mode does.
#[test]
fn a_step_inside_a_capture_gets_no_span() {
    capture_only_step("inside");
}

/// The `capture_only_step` worker in MODE (`around`: step 1 around the capture; `inside`:
/// step 1 inside it), checked from its status while it waits and from its capture.
fn capture_only_step(mode: &str) {
    let mut w = ReadyWorker::start("capture_only_step", &["3", mode], "fine", &[]);
    // Records arrive within the collector's 500 ms flush period; the grace is 10 s.
    let (spans, finalized_after) = w.poll_status("spans", |s| s["requests"].as_u64() >= Some(1));
    let _ = std::process::Command::new("kill").args(["-TERM", &w.child.id().to_string()]).status();
    let stderr = w.finish();
    let out = &w.out;
    assert_eq!(spans["requests"], 1, "the request was finalized within 5 s ({finalized_after:?}): {spans}\n{stderr}");
    let inside = mode == "inside";
    assert_eq!(spans["steps"], if inside { 1 } else { 2 }, "a step recorded into a graph is no step span: {spans}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("a capture");
    let summary = t.events.iter().find(|e| e.name == "gpuspan.summary").expect("summary");
    assert_eq!(summary.extra_args["gpuspan.span_units_timed_out"], 0, "no unit waited for the grace: {:?}", summary.extra_args);
    assert_eq!(summary.extra_args["gpuspan.span_captured_scopes"], u64::from(inside), "{:?}", summary.extra_args);
    // Only the first step's kernels ran.
    assert_eq!(t.kernels().count(), 3);
}

/// A C test worker (`tests/e2e/workers/<name>.c`) under the preloaded agent on the simulated
/// H100, started and past its `ready` line with its control socket up; it then waits to be
/// killed.
struct ReadyWorker {
    child: std::process::Child,
    /// `GPUSPAN_OUT`.
    out: tempfile::TempDir,
    _dirs: [tempfile::TempDir; 2],
}

impl ReadyWorker {
    /// Compiles worker `name`, runs it with `args` in agent `mode` with `env` added, and
    /// waits for its `ready` line and its control socket.
    fn start(name: &str, args: &[&str], mode: &str, env: &[(&str, &str)]) -> ReadyWorker {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join(name);
        compile_c(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/e2e/workers/{name}.c")), &exe, &[]);
        let sim = tempfile::tempdir().unwrap();
        gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut c = std::process::Command::new(&exe);
        c.args(args);
        preload_agent(&mut c, sim.path(), mode, out.path()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        assert_eq!(lines.next().map(|l| l.unwrap()).as_deref(), Some("ready"));
        crate::control::wait_for_socket(child.id());
        ReadyWorker { child, out, _dirs: [dir, sim] }
    }

    /// `gpuspan status --json`'s member `key`, polled every 50 ms until `done` holds or 5 s
    /// have passed; with the time it took.
    fn poll_status(&self, key: &str, done: impl Fn(&serde_json::Value) -> bool) -> (serde_json::Value, std::time::Duration) {
        let t0 = std::time::Instant::now();
        loop {
            let v = crate::control::status_json(self.child.id())[key].clone();
            if done(&v) || t0.elapsed() > std::time::Duration::from_secs(5) {
                return (v, t0.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for the worker (killed or signalled by the caller) and returns its stderr.
    fn finish(&mut self) -> String {
        let _ = self.child.wait();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        stderr
    }
}

/// Days of uptime in seconds (issue 13, item 2): the simulated GPU's event timer runs 2 %
/// fast against the host clock (`GPUSPAN_SIM_GPU_CLOCK_PPM=20000`, a thousand times a real
/// GPU's tens of ppm, so a day's drift shows in seconds). Coarse mode chains each request's
/// start from the previous one through `cuEventElapsedTime`, which would carry that drift
/// from request to request (20 ms per second of run: the 12th request, 16 s in, would start
/// about 300 ms late). Re-anchored at every request that begins on an idle GPU, each
/// `gpu.request` span starts at the host time the worker pushed its range
/// (`gpuspan-replay --print-request-begins`): three in four within 1 ms, every one within
/// 25 ms, the last third no further off than the first (the slack is the host's scheduling
/// between the worker reading the clock and the agent's hook, on a loaded 2-core machine
/// running other tests; unanchored, the offsets grow by 30 ms a request). The simulator's
/// real clock is `CLOCK_REALTIME`, so where the time-stamp counter is the machine's clock the
/// agent's boundaries read it (`GPUSPAN_BOUNDARY_CLOCK=auto`, issue 14 item 5) and these
/// offsets also check the collector's conversion against the worker's own clock reads.
#[test]
fn coarse_request_starts_do_not_drift_with_the_gpu_clock() {
    const REQUESTS: usize = 12;
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let o = run_stdit(
        None,
        2,
        &["--requests", &REQUESTS.to_string(), "--print-request-begins"],
        &[("GPUSPAN_SIM_CLOCK", "real"), ("GPUSPAN_SIM_GPU_CLOCK_PPM", "20000")],
        &rx,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let tsc = cfg!(target_arch = "x86_64")
        && std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource").is_ok_and(|s| s.trim() == "tsc");
    let clock = if tsc { "boundary clock: the time-stamp counter" } else { "boundary clock: the ns clock" };
    assert!(stderr.contains(clock), "expected {clock:?}: {stderr}");
    let begins: Vec<u64> = stdout.lines().filter_map(|l| l.strip_prefix("request begin_unix_ns=")).map(|v| v.parse().unwrap()).collect();
    assert_eq!(begins.len(), REQUESTS, "{stdout}");
    assert!(rx.wait_for(Duration::from_secs(10), |s| s.iter().filter(|s| s.name == "gpu.request").count() == REQUESTS));
    let mut starts: Vec<u64> = rx.spans().iter().filter(|s| s.name == "gpu.request").map(|s| s.start_unix_ns).collect();
    starts.sort_unstable();
    let run_s = (begins[REQUESTS - 1] - begins[0]) as f64 / 1e9;
    assert!(run_s > 5.0, "the run spans enough time for the drift to show ({run_s:.2} s: {:.0} ms unanchored)", run_s * 20.0);
    let offsets_ms: Vec<f64> = starts.iter().zip(&begins).map(|(s, b)| (*s as f64 - *b as f64) / 1e6).collect();
    let mut sorted: Vec<f64> = offsets_ms.iter().map(|o| o.abs()).collect();
    sorted.sort_by(f64::total_cmp);
    assert!(sorted[REQUESTS * 3 / 4] < 1.0, "three in four within 1 ms: {offsets_ms:.3?}");
    assert!(sorted[REQUESTS - 1] < 25.0, "every request within 25 ms of its host begin: {offsets_ms:.3?}");
    let third = REQUESTS / 3;
    let mean = |v: &[f64]| v.iter().map(|o| o.abs()).sum::<f64>() / v.len() as f64;
    assert!(
        mean(&offsets_ms[REQUESTS - third..]) <= mean(&offsets_ms[..third]) + 10.0,
        "no growth over the run: {offsets_ms:.3?}"
    );
}

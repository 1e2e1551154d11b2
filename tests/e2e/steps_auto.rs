//! Step detection from the kernel stream (issue 12, item 3): every fixture trace and fine
//! captures of the presets, with their step ranges removed (and once with every NVTX range
//! removed), give the same number of steps as recorded and put at least 99 % of the kernels
//! in the same step (or outside every step, as recorded).

use crate::util::*;
use gpuspan_core::stats::kernel_step_assignment;
use gpuspan_core::step_detect::{apply, detect, strip_step_scopes};
use gpuspan_core::trace::{Category, Trace};
use std::collections::BTreeMap;
use std::path::Path;

/// Per kernel event (in event order): the ordinal of its step by first kernel start, or
/// `None` outside every step; and the number of steps.
fn step_ordinals(t: &Trace) -> (Vec<Option<usize>>, usize) {
    let assignment = kernel_step_assignment(t);
    let mut first: BTreeMap<String, f64> = BTreeMap::new();
    for (i, s) in &assignment {
        if let Some(s) = s {
            let ts = t.events[*i].ts_us;
            first.entry(s.clone()).and_modify(|x| *x = x.min(ts)).or_insert(ts);
        }
    }
    let mut order: Vec<(f64, String)> = first.into_iter().map(|(s, ts)| (ts, s)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ordinal: BTreeMap<String, usize> = order.iter().enumerate().map(|(i, (_, s))| (s.clone(), i)).collect();
    (assignment.into_iter().map(|(_, s)| s.map(|s| ordinal[&s])).collect(), order.len())
}

/// Detects steps on `t` without its step ranges (and, with `no_ranges`, without any NVTX
/// range) and compares with what `t` recorded. Returns (recorded steps, detected steps,
/// fraction of kernels placed alike).
fn compare(what: &str, t: &Trace, no_ranges: bool) -> (usize, usize, f64) {
    let (want, want_n) = step_ordinals(t);
    let mut bare = t.clone();
    strip_step_scopes(&mut bare);
    if no_ranges {
        bare.events.retain(|e| !matches!(e.cat, Some(Category::UserAnnotation | Category::GpuUserAnnotation)));
    }
    let d = detect(&bare);
    apply(&mut bare, &d);
    let (got, got_n) = step_ordinals(&bare);
    assert_eq!(want.len(), got.len(), "{what}: kernels kept");
    let same = want.iter().zip(&got).filter(|(a, b)| a == b).count() as f64 / want.len() as f64;
    println!(
        "{what}{}: recorded {want_n} steps, detected {got_n} ({:?}, {} pass(es) × {} kernels), {:.2} % of {} kernels placed alike",
        if no_ranges { " (no NVTX ranges)" } else { "" },
        d.evidence,
        d.passes_per_step,
        d.period_kernels,
        same * 100.0,
        want.len()
    );
    (want_n, got_n, same)
}

fn check(what: &str, t: &Trace) {
    for no_ranges in [false, true] {
        let (want, got, same) = compare(what, t, no_ranges);
        assert_eq!(got, want, "{what}: step count");
        assert!(same >= 0.99, "{what}: only {:.2} % of kernels in the same step", same * 100.0);
    }
}

#[test]
fn detected_steps_match_the_recorded_ones_on_every_fixture() {
    for f in FIXTURE_TRACES {
        check(f, &gpuspan_export::read_trace(&fixture(f)).unwrap());
    }
}

/// A fine capture of `preset` at `steps` steps on the simulated H100.
fn preset_capture(dir: &Path, preset: &str, steps: u32) -> Trace {
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(dir)
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args([preset, "--steps", &steps.to_string()]),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    gpuspan_export::read_trace(&capture_in(dir)).unwrap()
}

#[test]
fn detected_steps_match_the_recorded_ones_on_preset_captures() {
    for (preset, steps) in [("stdit", 4), ("wan2.1", 3)] {
        let d = tempfile::tempdir().unwrap();
        let t = preset_capture(d.path(), preset, steps);
        check(preset, &t);
    }
}

#[test]
fn stats_detects_steps_by_default_when_a_trace_names_none() {
    let d = tempfile::tempdir().unwrap();
    let mut t = gpuspan_export::read_trace(&fixture("v100-resnet50-oldschema.json.gz")).unwrap();
    strip_step_scopes(&mut t);
    let bare = d.path().join("bare.json.gz");
    gpuspan_export::write_trace(&t, &bare).unwrap();
    let o = output(gpuspan().args(["stats", "--json"]).arg(&bare));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("steps detected from the kernel stream: 6 steps"), "{stderr}");
    let s: gpuspan_core::stats::Stats = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s.steps.len(), 6, "six training iterations");
    assert!(s.step_detection.is_some_and(|d| d.steps.len() == 6));
    // `--steps scopes` keeps what the trace says: no step.
    let o = output(gpuspan().args(["stats", "--json", "--steps", "scopes"]).arg(&bare));
    let s: gpuspan_core::stats::Stats = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s.steps.is_empty() && s.step_detection.is_none());
}

/// torch.profiler's `step()` around a whole request (one `ProfilerStep#N` holding every
/// denoising step) does not stop detection: `stats` detects the steps inside it by default.
#[test]
fn one_profiler_step_around_a_request_holds_the_detected_steps() {
    let d = tempfile::tempdir().unwrap();
    let mut t = preset_capture(d.path(), "stdit", 3);
    strip_step_scopes(&mut t);
    let (start, end) = t.events.iter().fold((f64::MAX, f64::MIN), |(a, b), e| (a.min(e.ts_us), b.max(e.end_us())));
    t.events.push(gpuspan_core::trace::TraceEvent {
        cat: Some(Category::UserAnnotation),
        name: "ProfilerStep#0".into(),
        pid: 1,
        tid: 1,
        ts_us: start,
        dur_us: end - start,
        ..Default::default()
    });
    let file = d.path().join("one-profiler-step.json.gz");
    gpuspan_export::write_trace(&t, &file).unwrap();
    let o = output(gpuspan().args(["stats", "--json"]).arg(&file));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: gpuspan_core::stats::Stats = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = s.steps.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["dit.step 0/3", "dit.step 1/3", "dit.step 2/3"], "{}", String::from_utf8_lossy(&o.stderr));
    // A single ProfilerStep around one forward pass (no repetition) stays the step.
    let o = output(gpuspan().args(["stats", "--json"]).arg(fixture("h100-vit-falconsai.json.gz")));
    let s: gpuspan_core::stats::Stats = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s.step_detection.is_none() && s.steps.len() == 1 && s.steps[0].name.starts_with("ProfilerStep#"), "{:?}", s.steps);
}

/// `(dit.step spans by start, the gpu.request span)` of the one request the receiver got.
fn step_spans(rx: &gpuspan_testkit::OtlpReceiver) -> (Vec<gpuspan_testkit::ReceivedSpan>, gpuspan_testkit::ReceivedSpan) {
    let spans = rx.spans();
    let reqs: Vec<_> = spans.iter().filter(|s| s.name == "gpu.request").cloned().collect();
    assert_eq!(reqs.len(), 1, "one gpu.request: {reqs:?}");
    let mut steps: Vec<_> = spans.iter().filter(|s| s.name == "dit.step").cloned().collect();
    steps.sort_by_key(|s| s.start_unix_ns);
    for s in &steps {
        assert_eq!(s.parent_span_id, reqs[0].span_id, "a step is a child of the request");
    }
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for s in &spans {
        assert!(s.name == "gpu.request" || ids.contains(s.parent_span_id.as_str()), "orphan {}", s.name);
    }
    (steps, reqs[0].clone())
}

/// Observations of `dit_inference_step_duration_ms{step_type="step"}` (whole steps; the other
/// step types are per stage) in the latest export.
fn step_observations(rx: &gpuspan_testkit::OtlpReceiver) -> u64 {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut latest = 0u64;
    for r in rx.metrics() {
        for m in r.resource_metrics.iter().flat_map(|x| &x.scope_metrics).flat_map(|x| &x.metrics) {
            let (true, Some(Data::Histogram(h))) = (m.name == "dit_inference_step_duration_ms", &m.data) else { continue };
            for dp in &h.data_points {
                let whole_step = dp.attributes.iter().any(|kv| {
                    kv.key == "step_type" && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(v)) if v == "step")
                });
                if whole_step {
                    latest = latest.max(dp.count);
                }
            }
        }
    }
    latest
}

/// The agent runs the detector over the fine-mode records of a request that announced no
/// step (`gpuspan-replay --announce requests`: only the `gpuspan.request` range): the
/// request still gets its `dit.step i/n` spans (`gpuspan.step_source=detected`), with the
/// kernels of the same steps as when the worker announces them, and the step histogram its
/// observations. A request with its steps announced has no `gpuspan.step_source`.
#[test]
fn agent_detects_the_steps_of_a_request_that_announces_none() {
    use gpuspan_testkit::{OtlpReceiver, Transport, Val};
    const STEPS: usize = 4;
    let run = |announce: &str| {
        let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
        let out = tempfile::tempdir().unwrap();
        let mut c = gpuspan();
        c.args(["run", "--sim", "--mode", "fine", "--out"]).arg(out.path()).arg("--").arg(artifact("gpuspan-replay"));
        c.args(["stdit", "--steps", &STEPS.to_string(), "--announce", announce]);
        c.env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env())
            .env("OTEL_METRIC_EXPORT_INTERVAL", "500");
        let o = output(&mut c);
        assert!(o.status.success(), "--announce {announce}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(rx.wait_for(std::time::Duration::from_secs(10), |s| s.iter().any(|s| s.name == "gpu.request")));
        let t0 = std::time::Instant::now();
        while step_observations(&rx) < STEPS as u64 && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (steps, req) = step_spans(&rx);
        (steps, req, step_observations(&rx))
    };
    let (announced, req, observed) = run("all");
    assert_eq!(announced.len(), STEPS);
    assert_eq!(observed, STEPS as u64);
    assert!(announced.iter().all(|s| s.str("gpuspan.step_source").is_none()));
    assert_eq!(req.str("gpuspan.step_source"), None);

    let (detected, req, observed) = run("requests");
    assert_eq!(detected.len(), STEPS, "as many steps as announced");
    assert_eq!(observed, STEPS as u64, "one histogram observation per detected step");
    assert_eq!(req.str("gpuspan.step_source"), Some("detected"));
    assert_eq!(req.int("gpuspan.step_count"), Some(STEPS as i64));
    let (mut same, mut total) = (0i64, 0i64);
    for (i, (d, a)) in detected.iter().zip(&announced).enumerate() {
        assert_eq!(d.str("gpuspan.step_source"), Some("detected"));
        assert_eq!(d.int("gpuspan.step.index"), Some(i as i64));
        assert_eq!(d.int("gpuspan.step.count"), Some(STEPS as i64));
        assert_eq!(d.attributes.get("gpuspan.scope"), Some(&Val::Str(format!("dit.step {i}/{STEPS}"))));
        let (kd, ka) = (d.int("gpuspan.kernel_count").unwrap(), a.int("gpuspan.kernel_count").unwrap());
        same += kd.min(ka);
        total += ka;
    }
    assert!(same as f64 >= 0.99 * total as f64, "at least 99 % of the kernels in the same step: {same} of {total}");
}

/// Hints a trace carries are used (issue 12, item 3): on a `stdit` capture whose step ranges
/// are removed and whose kernels are renamed one by one (so the kernel stream has no
/// repetition left and alone finds one step), a diffusers scheduler's `step` call at the end
/// of each step (torch.profiler's `python_function` event), or a `## Call CompiledFxGraph
/// … ##` range around each, gives back the recorded steps with at least 99 % of the kernels
/// in the same step. The same traces written out, with host ops that name no step around the
/// hints (which `stats` reads without keeping: `ReadOptions::keep_host_op`), give `gpuspan
/// stats` the same evidence and step count.
#[test]
fn scheduler_step_calls_and_compiled_graph_calls_mark_the_steps() {
    use gpuspan_core::step_detect::Evidence;
    use gpuspan_core::trace::TraceEvent;
    let d = tempfile::tempdir().unwrap();
    let t = preset_capture(d.path(), "stdit", 4);
    let (want, want_n) = step_ordinals(&t);
    let ranges: Vec<(f64, f64)> = t
        .events
        .iter()
        .filter(|e| e.is(&Category::UserAnnotation) && e.name.starts_with("dit.step "))
        .map(|e| (e.ts_us, e.end_us()))
        .collect();
    assert_eq!(ranges.len(), want_n);
    let mut bare = t.clone();
    strip_step_scopes(&mut bare);
    for (i, k) in bare.events.iter_mut().filter(|e| e.is(&Category::Kernel)).enumerate() {
        k.name = format!("{}_{i}", k.name);
    }
    assert_eq!(detect(&bare).steps.len(), 1, "the renamed kernel stream alone finds no steps");
    let hint = |name: &str, cat: Category, ts: f64, end: f64| TraceEvent {
        cat: Some(cat),
        name: name.into(),
        pid: 1,
        tid: 1,
        ts_us: ts,
        dur_us: end - ts,
        ..Default::default()
    };
    let scheduler = "diffusers/schedulers/scheduling_flow_match_euler_discrete.py(457): step";
    let compiled = "## Call CompiledFxGraph fx3kq2sd ##";
    // The scheduler's step() ends the step (2 µs long); the compiled graph's call spans it.
    let by_scheduler: Vec<TraceEvent> = ranges.iter().map(|&(_, e)| hint(scheduler, Category::PythonFunction, e - 2.0, e)).collect();
    // As torch.profiler writes it when the call is an op: a `cpu_op`.
    let by_graph: Vec<TraceEvent> = ranges.iter().map(|&(s, e)| hint(compiled, Category::CpuOp, s, e)).collect();
    for (what, evidence, hints) in [
        ("scheduler step() calls", Evidence::SchedulerSteps, by_scheduler),
        ("CompiledFxGraph calls", Evidence::CompiledGraphCalls, by_graph),
    ] {
        let mut hinted = bare.clone();
        hinted.events.extend(hints);
        let det = detect(&hinted);
        assert_eq!(det.evidence, evidence, "{what}");
        apply(&mut hinted, &det);
        let (got, got_n) = step_ordinals(&hinted);
        let same = want.iter().zip(&got).filter(|(a, b)| a == b).count() as f64 / want.len() as f64;
        println!("{what}: recorded {want_n} steps, found {got_n}, {:.2} % of {} kernels placed alike", same * 100.0, want.len());
        assert_eq!(got_n, want_n, "{what}: step count");
        assert!(same >= 0.99, "{what}: only {:.2} % of kernels in the same step", same * 100.0);

        // Through the command line: the hints among ops that name no step.
        let mut written = bare.clone();
        written.events.extend(hinted.events.iter().filter(|e| e.name == scheduler || e.name == compiled).cloned());
        for &(s, e) in &ranges {
            written.events.push(hint("aten::mm", Category::CpuOp, s + 1.0, s + 2.0));
            written.events.push(hint("torch/nn/modules/module.py(1750): _call_impl", Category::PythonFunction, s, e - 3.0));
        }
        let file = d.path().join("hinted.json.gz");
        gpuspan_export::write_trace(&written, &file).unwrap();
        let o = output(gpuspan().args(["stats", "--json"]).arg(&file));
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        let st: gpuspan_core::stats::Stats = serde_json::from_slice(&o.stdout).unwrap();
        let det = st.step_detection.expect("detection ran");
        assert_eq!((det.evidence, det.steps.len(), st.steps.len()), (evidence, want_n, want_n), "{what}: from the command line");
    }
}

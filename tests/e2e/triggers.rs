//! Capture triggers (issue 5) on the simulated H100, real clock, coarse mode: a per-request
//! rule on a baggage entry, and an anomaly rule with the flight recorder on. Expected kernels
//! come from the workload's own op list (`gpuspan_simgpu::workload::preset`).

use crate::util::*;
use gpuspan_core::trace::{Category, Trace};
use gpuspan_simgpu::workload::{preset::preset, Op};
use std::collections::BTreeMap;
use std::path::Path;

/// Kernel launches per `dit.step i/n` name and inside `vae.decode`, for one request of the
/// `stdit` preset with `steps` steps (every request of a preset is the same).
fn launches(steps: u32, slow: Option<(u32, f64)>) -> (BTreeMap<String, u64>, u64, BTreeMap<String, u64>) {
    let w = preset("stdit", steps, 1).unwrap();
    let mut stack: Vec<String> = Vec::new();
    let (mut per_step, mut vae, mut dur) = (BTreeMap::new(), 0u64, BTreeMap::new());
    for op in &w.ops {
        match op {
            Op::RangePush(n) => stack.push(n.clone()),
            Op::RangePop => {
                stack.pop();
            }
            Op::Launch { dur_ns, .. } => {
                if let Some(s) = stack.iter().find(|n| n.starts_with("dit.step ")) {
                    *per_step.entry(s.clone()).or_insert(0) += 1;
                    let f = match slow {
                        Some((i, f)) if s.starts_with(&format!("dit.step {i}/")) => f,
                        _ => 1.0,
                    };
                    *dur.entry(s.clone()).or_insert(0) += (*dur_ns as f64 * f) as u64;
                }
                if stack.iter().any(|n| n == "vae.decode") {
                    vae += 1;
                }
            }
            _ => {}
        }
    }
    (per_step, vae, dur)
}

fn run(out: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = gpuspan();
    c.args(["run", "--sim", "--out"]).arg(out).arg("--").arg(artifact("gpuspan-replay")).args(args);
    c.env("GPUSPAN_SIM_CLOCK", "real").env("GPUSPAN_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = output(&mut c);
    let text = format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "worker failed: {text}");
    text
}

fn kernels_by_step(t: &Trace) -> BTreeMap<String, Vec<f64>> {
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for k in t.events.iter().filter(|e| e.cat == Some(Category::Kernel)) {
        m.entry(k.step.clone().unwrap_or_default()).or_default().push(k.dur_us);
    }
    m
}

/// A request whose W3C baggage says `gpuspan.capture=fine` is captured fine, whole, while
/// the requests before and after it stay coarse.
#[test]
fn baggage_rule_captures_that_request_fine_and_only_it() {
    const STEPS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[capture.request]]\nname = \"marked\"\nbaggage = { \"gpuspan.capture\" = \"fine\" }\n").unwrap();
    let out = dir.path().join("out");
    let text = run(
        &out,
        &["stdit", "--steps", &STEPS.to_string(), "--requests", "3", "--request-attr", "1:baggage=gpuspan.capture=fine"],
        &[("GPUSPAN_RULES", rules.to_str().unwrap())],
    );
    assert!(text.contains("rule marked: request"), "{text}");
    let line = text.lines().find(|l| l.starts_with("sim cupti:")).unwrap();
    assert!(line.contains("subscribes=1 ") && line.contains("unsubscribes=1 ") && line.contains("subscribed=0"), "one window, CUPTI released: {line}");
    assert!(window_dirs(&out, 2).is_empty(), "the other requests stay coarse");
    assert!(captures_in(&out).is_empty());
    let t = gpuspan_export::read_trace(&window_capture(&out, 1)).expect("the request's capture");
    let requests: Vec<&str> = t
        .events
        .iter()
        .filter(|e| e.cat == Some(Category::UserAnnotation) && e.name.starts_with("gpuspan.request"))
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].contains("baggage=gpuspan.capture=fine"), "{}", requests[0]);
    let want_trace = gpuspan_simgpu::workload::preset::traceparent("stdit", 1).split('-').nth(1).unwrap().to_string();
    let (per_step, vae, _) = launches(STEPS, None);
    let got = kernels_by_step(&t);
    for (step, n) in &per_step {
        assert_eq!(got.get(step).map(|v| v.len() as u64), Some(*n), "every kernel of {step}");
    }
    let vae_got = t.events.iter().filter(|e| e.cat == Some(Category::Kernel) && e.stage.as_deref() == Some("vae.decode")).count() as u64;
    assert_eq!(vae_got, vae, "every kernel of its VAE decode");
    assert!(
        t.events.iter().filter(|e| e.cat == Some(Category::Kernel)).all(|k| k.trace_id.as_deref() == Some(want_trace.as_str())),
        "only request 1's kernels"
    );
}

/// The flight recorder keeps the last 4 steps; step 6, made 3× slower by the workload,
/// fires the fixed-threshold anomaly rule, and the exported capture holds that slow step
/// itself (from the recorder) and the 2 steps after it.
#[test]
fn flight_recorder_exports_the_slow_step_that_fired_the_anomaly() {
    const STEPS: u32 = 10;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[capture.anomaly]]\nname = \"slow\"\nstep_over_ms = 1000.0\ncapture_steps = 2\n").unwrap();
    let out = dir.path().join("out");
    let text = run(
        &out,
        &["stdit", "--steps", &STEPS.to_string(), "--slow-step", "6:3"],
        &[("GPUSPAN_RULES", rules.to_str().unwrap()), ("GPUSPAN_FLIGHT_RECORDER", "4")],
    );
    assert!(text.contains("flight recorder on: CUPTI collects the last 4 steps"), "{text}");
    assert!(text.contains("anomaly slow: step 6 of stdit took"), "{text}");
    assert_eq!(text.matches("anomaly slow:").count(), 1, "one window: {text}");
    let t = gpuspan_export::read_trace(&window_capture(&out, 1)).expect("the anomaly's capture");
    let steps: Vec<String> = t
        .events
        .iter()
        .filter(|e| e.cat == Some(Category::UserAnnotation) && e.name.starts_with("dit.step "))
        .map(|e| e.name.clone())
        .collect();
    // The 4 recorded steps (the slow one last), the step in progress when the rule fired
    // (normally 7: the recorder has its records too), and the 2 that began after.
    let mut idx: Vec<u32> = steps.iter().map(|s| s["dit.step ".len()..].split('/').next().unwrap().parse().unwrap()).collect();
    idx.sort_unstable();
    assert!(idx == (3..=9).collect::<Vec<_>>() || idx == (3..=8).collect::<Vec<_>>(), "steps {idx:?}");
    let want: Vec<String> = idx.iter().map(|i| format!("dit.step {i}/{STEPS}")).collect();
    let (per_step, _, dur) = launches(STEPS, Some((6, 3.0)));
    let got = kernels_by_step(&t);
    for s in &want {
        assert_eq!(got[s].len() as u64, per_step[s], "every kernel of {s}");
    }
    let slow = format!("dit.step 6/{STEPS}");
    let total_us = |s: &str| got[s].iter().sum::<f64>();
    assert!(
        (total_us(&slow) - dur[&slow] as f64 / 1000.0).abs() < 1.0,
        "the slow step's kernels ran 3× longer: {} µs vs {} ns",
        total_us(&slow),
        dur[&slow]
    );
    assert!(total_us(&slow) > 2.5 * total_us(&format!("dit.step 5/{STEPS}")));
    let line = text.lines().find(|l| l.starts_with("sim cupti:")).unwrap();
    assert!(line.contains("subscribes=1 ") && line.contains("subscribed=1"), "the recorder holds CUPTI for the run: {line}");
}

/// With the flight recorder holding CUPTI, an allocation the driver refuses with
/// CUDA_ERROR_OUT_OF_MEMORY (the workload asks for 1 TiB at the start of step 4) fires the
/// `oom` rule, and the capture holds the step it happened in.
#[test]
fn oom_on_the_api_fires_the_oom_rule() {
    const STEPS: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[capture.anomaly]]\nname = \"oom\"\noom = true\ncapture_steps = 1\n").unwrap();
    let out = dir.path().join("out");
    let text = run(
        &out,
        &["stdit", "--steps", &STEPS.to_string(), "--oom-at-step", "4"],
        &[("GPUSPAN_RULES", rules.to_str().unwrap()), ("GPUSPAN_FLIGHT_RECORDER", "2")],
    );
    assert!(text.contains("1 allocations refused (out of memory)"), "{text}");
    assert!(text.contains("anomaly oom: CUDA_ERROR_OUT_OF_MEMORY on the API"), "{text}");
    let t = gpuspan_export::read_trace(&window_capture(&out, 1)).expect("the OOM's capture");
    let steps: Vec<&str> = t
        .events
        .iter()
        .filter(|e| e.cat == Some(Category::UserAnnotation) && e.name.starts_with("dit.step "))
        .map(|e| e.name.as_str())
        .collect();
    assert!(steps.contains(&"dit.step 4/8"), "the step of the OOM is in the capture: {steps:?}");
    let (per_step, _, _) = launches(STEPS, None);
    let got = kernels_by_step(&t);
    for s in &steps {
        assert_eq!(got[*s].len() as u64, per_step[*s], "every kernel of {s}");
    }
}

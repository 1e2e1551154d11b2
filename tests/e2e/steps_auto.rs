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

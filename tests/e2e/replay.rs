//! `gpuspan replay` of every real fixture trace: the capture the agent writes on the
//! simulated H100 must describe the same kernels as the original trace.

use crate::util::*;
use gpuspan_core::stats::kernel_step_assignment;
use std::collections::BTreeMap;

/// (step, kernel name) → count, from the stats crate's step assignment.
fn kernels_by_step(trace: &gpuspan_core::trace::Trace) -> BTreeMap<(Option<String>, String), usize> {
    let mut m = BTreeMap::new();
    for (i, step) in kernel_step_assignment(trace) {
        *m.entry((step, trace.events[i].name.clone())).or_insert(0) += 1;
    }
    m
}

fn check_fixture(name: &str) {
    let original = fixture(name);
    let out = tempfile::tempdir().unwrap();
    let o = output(gpuspan().arg("replay").arg(&original).arg("--out").arg(out.path()));
    assert!(o.status.success(), "{name}: replay failed: {}", String::from_utf8_lossy(&o.stderr));
    let capture = capture_in(out.path());
    assert!(capture.is_file(), "{name}: no capture; stderr: {}", String::from_utf8_lossy(&o.stderr));

    let a = stats_json(&original);
    let b = stats_json(&capture);
    assert_eq!(b.kernel_count, a.kernel_count, "{name}: kernel count");
    let names_a: BTreeMap<&str, f64> = a.kernels.iter().map(|k| (k.name.as_str(), k.total_us)).collect();
    let names_b: BTreeMap<&str, f64> = b.kernels.iter().map(|k| (k.name.as_str(), k.total_us)).collect();
    assert_eq!(names_b.keys().collect::<Vec<_>>(), names_a.keys().collect::<Vec<_>>(), "{name}: kernel names");
    for (k, ta) in &names_a {
        let tb = names_b[k];
        let rel = if *ta > 0.0 { (tb - ta).abs() / ta } else { tb.abs() };
        assert!(rel <= 0.001, "{name}: total of {k}: {tb} µs vs {ta} µs ({:.4}%)", rel * 100.0);
    }

    // Every kernel inside the ProfilerStep scope it was in.
    let ta = gpuspan_export::read_trace(&original).unwrap();
    let tb = gpuspan_export::read_trace(&capture).unwrap();
    assert_eq!(kernels_by_step(&tb), kernels_by_step(&ta), "{name}: kernels per ProfilerStep");
}

#[test]
fn replay_h100_vit_falconsai() {
    check_fixture("h100-vit-falconsai.json.gz");
}

#[test]
fn replay_h100_bert_small() {
    check_fixture("h100-bert-small.json.gz");
}

#[test]
fn replay_h100_qwen_prefill() {
    check_fixture("h100-qwen-prefill.json.gz");
}

#[test]
fn replay_a100_hta_control() {
    check_fixture("a100-hta-control.json.gz");
}

#[test]
fn replay_v100_resnet50_oldschema() {
    check_fixture("v100-resnet50-oldschema.json.gz");
}

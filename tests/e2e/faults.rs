//! The agent on a simulated CUPTI 13.x, and under dropped records.

use crate::util::*;
use std::path::Path;

/// Runs the 2-step stdit preset under the agent with extra environment; returns the capture.
fn run_stdit(out: &Path, env: &[(&str, &str)]) -> gpuspan_core::trace::Trace {
    let mut c = gpuspan();
    c.args(["run", "--mode", "fine", "--sim", "--out"]).arg(out).arg("--").arg(artifact("gpuspan-replay")).args(["stdit", "--steps", "2"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = output(&mut c);
    assert!(o.status.success(), "run failed: {}", String::from_utf8_lossy(&o.stderr));
    gpuspan_export::read_trace(&capture_in(out)).expect("capture")
}


#[test]
fn cupti13_layouts_give_the_same_capture() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let t12 = run_stdit(a.path(), &[]);
    let t13 = run_stdit(b.path(), &[("GPUSPAN_SIM_CUPTI_VERSION", "13")]);
    assert_eq!(summary_u64(&t12, "gpuspan.cupti_version"), 28);
    assert_eq!(summary_u64(&t13, "gpuspan.cupti_version"), 130500);
    let k12: Vec<_> = t12.kernels().map(|k| (k.name.clone(), k.dur_us, k.stage.clone(), k.step.clone())).collect();
    let k13: Vec<_> = t13.kernels().map(|k| (k.name.clone(), k.dur_us, k.stage.clone(), k.step.clone())).collect();
    assert!(!k12.is_empty());
    assert_eq!(k13, k12, "same kernels, durations, stages and steps from 13.x records");
}

#[test]
fn dropped_records_are_counted_not_hidden() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let full = run_stdit(a.path(), &[]);
    let lossy = run_stdit(b.path(), &[("GPUSPAN_SIM_FAULT", "drop_records"), ("GPUSPAN_SIM_DROP_EVERY", "10")]);
    assert_eq!(summary_u64(&full, "gpuspan.records_dropped_cupti"), 0);
    let dropped = summary_u64(&lossy, "gpuspan.records_dropped_cupti");
    let (nf, nl) = (full.kernels().count() as u64, lossy.kernels().count() as u64);
    assert!(dropped > 0, "CUPTI's dropped count reaches the capture");
    assert!(nl < nf, "fewer kernels when records drop ({nl} vs {nf})");
    let decoded_full = summary_u64(&full, "gpuspan.records_decoded");
    let decoded_lossy = summary_u64(&lossy, "gpuspan.records_decoded");
    assert_eq!(decoded_lossy + dropped, decoded_full, "every record is either decoded or counted as dropped");
}

/// Fine-mode replays under the simulated CUPTI of 12.0 (Overhead records of 40 bytes, no
/// `overheadData`), 12.3 (Overhead2), 12.4 (Overhead3, whose `overheadData` the agent must
/// free), 12.9 and 13.0 / 13.5 (longer kernel records) give the same `gpuspan stats --json`,
/// with glibc checking every free (`MALLOC_CHECK_=3` aborts on a bad one: reading
/// `overheadData` from a 12.0–12.3 record frees the next record's bytes).
#[test]
fn every_cupti_release_gives_the_same_stats() {
    let mut reference: Option<(String, serde_json::Value)> = None;
    for version in ["12.0", "12.3", "12.4", "12.9", "13.0", "13.5"] {
        let out = tempfile::tempdir().unwrap();
        let mut c = gpuspan();
        c.args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["stdit", "--steps", "2", "--requests", "2"])
            .env("GPUSPAN_SIM_CUPTI_VERSION", version)
            .env("MALLOC_CHECK_", "3");
        let o = output(&mut c);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "CUPTI {version}: {stdout}\n{stderr}");
        assert!(stdout.contains(&format!("sim cupti: version={version} ")), "CUPTI {version}: {stdout}");
        let capture = capture_in(out.path());
        let t = gpuspan_export::read_trace(&capture).expect("capture");
        let want_api = gpuspan_cupti::layouts::release_named(version).unwrap().api_version as u64;
        assert_eq!(summary_u64(&t, "gpuspan.cupti_version"), want_api, "CUPTI {version}");
        let so = output(gpuspan().args(["stats", "--json"]).arg(&capture));
        assert!(so.status.success());
        let mut stats: serde_json::Value = serde_json::from_slice(&so.stdout).unwrap();
        stats.as_object_mut().unwrap().remove("source");
        assert!(stats["kernel_count"].as_u64().unwrap() > 0);
        match &reference {
            None => reference = Some((version.to_string(), stats)),
            Some((v0, s0)) => assert_eq!(&stats, s0, "stats under CUPTI {version} differ from CUPTI {v0}"),
        }
    }
}

/// An unknown simulated CUPTI version is an error, not a silent default.
#[test]
fn unknown_simulated_cupti_version_is_an_error() {
    let out = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["stdit", "--steps", "1"])
            .env("GPUSPAN_SIM_CUPTI_VERSION", "12.7"),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "12.7 does not exist");
    assert!(stderr.contains("GPUSPAN_SIM_CUPTI_VERSION=\"12.7\""), "{stderr}");
}

//! `gpuspan demo` and the `wan2.1` preset against the calibration profile.

use crate::util::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn demo_has_every_stage_and_50_steps() {
    let out = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let o = output(gpuspan().arg("demo").arg("--out").arg(out.path()));
    let elapsed = t0.elapsed();
    assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
    // Acceptance bound of issue 2 (a wall-clock cap, not a performance measurement).
    assert!(elapsed < Duration::from_secs(60), "demo took {elapsed:?}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let capture = capture_in(out.path());
    assert!(stdout.contains(&capture.display().to_string()), "prints the capture path: {stdout}");

    let s = stats_json(&capture);
    let stages: BTreeSet<&str> = s.stages.iter().map(|x| x.stage.as_str()).collect();
    for want in ["attention.spatial", "attention.temporal", "attention.cross", "ffn", "norm", "vae.decode"] {
        assert!(stages.contains(want), "stage {want} missing from {stages:?}");
        assert!(stdout.contains(want), "per-stage table lists {want}");
    }
    let dit_steps: Vec<_> = s.steps.iter().filter(|x| x.name.starts_with("dit.step ")).collect();
    assert_eq!(dit_steps.len(), 50, "50 steps");
    assert!(dit_steps.iter().all(|x| x.kernel_count > 0), "every step has kernels");
    let sum_stages: f64 = s.stages.iter().map(|x| x.total_us).sum();
    let sum_count: usize = s.stages.iter().map(|x| x.count).sum();
    assert_eq!(sum_count, s.kernel_count, "stage counts add up to the kernel count");
    assert!((sum_stages - s.kernel_total_us).abs() <= 1e-6 * s.kernel_total_us, "stage totals add up: {sum_stages} vs {}", s.kernel_total_us);
}

/// One row of the calibration `kernel_summary.csv` (TraceLens): name, count, mean µs.
fn calibration_top20() -> Vec<(String, f64, f64, f64)> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/calibration/wan2.1-t2v-1.3b-h100/kernel_summary.csv");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    for line in text.lines().skip(1) {
        let f = split_csv(line);
        // Parent op category, Parent cpu_op, Kernel name, stream, sum, count, mean, ...
        let (name, sum, count, mean) = (f[2].clone(), f[4].parse().unwrap(), f[5].parse().unwrap(), f[6].parse().unwrap());
        rows.push((name, sum, count, mean));
    }
    // A kernel may appear under several parent ops: merge by name.
    let mut merged: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for (n, sum, count, _) in rows {
        let e = merged.entry(n).or_insert((0.0, 0.0));
        e.0 += sum;
        e.1 += count;
    }
    let mut v: Vec<(String, f64, f64, f64)> =
        merged.into_iter().map(|(n, (sum, count))| (n, sum, count, sum / count)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(20);
    v
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                out.last_mut().unwrap().push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn wan21_matches_the_calibration_profile() {
    let out = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["wan2.1", "--steps", "5"]),
    );
    assert!(o.status.success(), "wan2.1 run failed: {}", String::from_utf8_lossy(&o.stderr));
    let s = stats_json(&capture_in(out.path()));
    for (name, _sum, count, mean) in calibration_top20() {
        let k = s.kernels.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("kernel missing: {name}"));
        let dc = (k.count as f64 - count).abs() / count;
        let dm = (k.mean_us - mean).abs() / mean;
        assert!(dc <= 0.05, "{name}: count {} vs {count}", k.count);
        assert!(dm <= 0.05, "{name}: mean {} µs vs {mean} µs", k.mean_us);
    }
    let busy_pct = 100.0 * s.gpu_busy_us / s.gpu_span_us;
    assert!((busy_pct - 97.806).abs() <= 1.0, "GPU busy {busy_pct:.2}% vs 97.81%");
}

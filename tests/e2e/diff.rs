//! `gpuspan diff`: two runs of the demo, and a copy of one run with a stage made slower.

use crate::util::*;
use gpuspan_core::trace::Category;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `gpuspan demo --steps 4 --out DIR`, returning the capture.
fn demo(dir: &Path) -> PathBuf {
    let o = output(gpuspan().args(["demo", "--steps", "4", "--out"]).arg(dir));
    assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
    capture_in(dir)
}

/// `gpuspan diff --json A B [extra…]`: exit code and the parsed object.
fn diff_json(a: &Path, b: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let o = output(gpuspan().args(["diff", "--json"]).arg(a).arg(b).args(extra));
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("diff --json output does not parse ({e}); stderr: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), v)
}

fn rows<'v>(v: &'v Value, key: &str) -> &'v Vec<Value> {
    v[key].as_array().unwrap_or_else(|| panic!("{key} is not an array: {v}"))
}

fn stage<'v>(v: &'v Value, name: &str) -> &'v Value {
    rows(v, "stages").iter().find(|s| s["stage"] == name).unwrap_or_else(|| panic!("stage {name} missing"))
}

/// A copy of `capture` with every kernel of `stage` 1.3 × longer, written with the
/// exporter's own writer.
fn slower_copy(capture: &Path, stage: &str, out: &Path) -> PathBuf {
    let mut t = gpuspan_export::read_trace(capture).unwrap();
    let mut n = 0;
    for e in &mut t.events {
        if e.is(&Category::Kernel) && e.stage.as_deref() == Some(stage) {
            e.dur_us *= 1.3;
            n += 1;
        }
    }
    assert!(n > 0, "no {stage} kernels in {}", capture.display());
    std::fs::create_dir_all(out).unwrap();
    let p = out.join("capture.json.gz");
    gpuspan_export::write_trace(&t, &p).unwrap();
    p
}

#[test]
fn diff_flags_only_the_slowed_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let a = demo(&tmp.path().join("a"));
    let b = demo(&tmp.path().join("b"));

    // Identical inputs: everything zero and noise, exit 0 even with a 0 % gate.
    let (code, v) = diff_json(&a, &a, &["--fail-over", "0"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!((v["a_steps"].as_u64(), v["b_steps"].as_u64()), (Some(4), Some(4)));
    assert_eq!(v["delta_us"], 0.0);
    assert_eq!(v["failing"], Value::Array(vec![]));
    for key in ["stages", "kernels", "steps"] {
        assert!(!rows(&v, key).is_empty(), "{key}");
        for r in rows(&v, key) {
            assert_eq!((&r["status"], &r["delta_us"], &r["noise"]), (&Value::from("changed"), &Value::from(0.0), &Value::from(true)), "{key}: {r}");
            if key != "steps" {
                assert_eq!(r["ratio"], 1.0, "{r}");
            }
        }
    }

    // Two runs of the same workload: no stage moved beyond its step-to-step range.
    let (code, v) = diff_json(&a, &b, &["--fail-over", "10"]);
    assert_eq!(code, Some(0), "{v}");
    for s in rows(&v, "stages") {
        assert_eq!(s["noise"], true, "{s}");
        assert_eq!(s["status"], "changed", "{s}");
    }

    // One stage 30 % slower: flagged, and the 10 % gate fails on it alone.
    let c = slower_copy(&a, "ffn", &tmp.path().join("c"));
    let (code, v) = diff_json(&a, &c, &["--fail-over", "10"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["failing"], serde_json::json!(["ffn"]));
    assert_eq!(v["fail_over_pct"], 10.0);
    let ffn = stage(&v, "ffn");
    assert_eq!((&ffn["status"], &ffn["noise"], &ffn["basis"]), (&Value::from("changed"), &Value::from(false), &Value::from("step_mean")), "{ffn}");
    let ratio = ffn["ratio"].as_f64().unwrap();
    assert!((ratio - 1.3).abs() < 1e-9, "ffn ratio {ratio}");
    let pct = ffn["change_pct"].as_f64().unwrap();
    assert!((pct - 30.0).abs() < 1e-6, "ffn change {pct} %");
    let (at, bt, delta) = (ffn["a_total_us"].as_f64().unwrap(), ffn["b_total_us"].as_f64().unwrap(), ffn["delta_us"].as_f64().unwrap());
    assert!((delta - (bt - at)).abs() < 1e-6 && delta > 0.0 && ffn["a_count"] == ffn["b_count"]);
    assert!(ffn["value_delta_us"].as_f64().unwrap() > ffn["noise_us"].as_f64().unwrap(), "{ffn}");
    assert_eq!(rows(&v, "stages")[0]["stage"], "ffn", "largest change first");
    for s in rows(&v, "stages").iter().filter(|s| s["stage"] != "ffn") {
        assert_eq!(s["noise"], true, "{s}");
        assert!(s["delta_us"].as_f64().unwrap().abs() < 1e-6, "{s}");
    }
    // Kernels: those that ran only under ffn are flagged; unchanged kernels are noise.
    let ffn_kernels: Vec<&Value> = rows(&v, "kernels").iter().filter(|k| k["stage"] == "ffn").collect();
    assert!(!ffn_kernels.is_empty());
    assert!(ffn_kernels.iter().any(|k| k["noise"] == false && k["delta_us"].as_f64().unwrap() > 0.0));
    for k in rows(&v, "kernels").iter().filter(|k| k["delta_us"].as_f64().unwrap() == 0.0) {
        assert_eq!(k["noise"], true, "{k}");
    }
    // Every step holds ffn work, so every step got slower.
    assert_eq!(rows(&v, "steps").len(), 4);
    for s in rows(&v, "steps") {
        assert_eq!(s["noise"], false, "{s}");
        assert!(s["delta_us"].as_f64().unwrap() > 0.0);
        assert_eq!(s["a_name"], s["b_name"]);
    }

    // 30 % < 50 %: the gate passes; the table for people names the slower stage.
    let o = output(gpuspan().arg("diff").arg(&a).arg(&c).args(["--fail-over", "50"]));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ffn ") && l.contains("SLOWER")), "{text}");
    assert!(text.contains("fail-over 50%: ok"), "{text}");
}

#[test]
fn diff_bad_files_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"traceEvents\": [ {\"ph\": \"X\", \"ts\": ").unwrap();
    let missing = dir.path().join("missing.json.gz");
    let good = fixture("h100-bert-small.json.gz");
    for (a, b, bad) in [(&garbage, &good, &garbage), (&good, &missing, &missing), (&missing, &garbage, &missing)] {
        for json in [true, false] {
            let mut c = gpuspan();
            c.arg("diff").arg(a).arg(b);
            if json {
                c.arg("--json");
            }
            let o = output(&mut c);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{err}");
            assert_eq!(err.lines().count(), 1, "one line: {err:?}");
            assert!(err.contains(bad.file_name().unwrap().to_str().unwrap()), "names {}: {err}", bad.display());
            assert!(!err.contains("panicked"), "{err}");
            assert!(o.stdout.is_empty());
        }
    }
    // A fixture against itself: exit 0.
    let (code, v) = diff_json(&good, &good, &["--fail-over", "1"]);
    assert_eq!(code, Some(0), "{v}");
}

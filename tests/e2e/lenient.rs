//! Lenient trace reading (issue 13, item 5): a real trace with a few malformed events is
//! analysed with them skipped and counted in one warning line; `--strict` refuses it.

use crate::util::*;
use std::io::Read;

/// The fixture as JSON, and the indices (into `traceEvents`) of its first `n` kernel events.
fn fixture_json(name: &str, n: usize) -> (serde_json::Value, Vec<usize>) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture(name)).unwrap()).read_to_string(&mut text).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kernels: Vec<usize> = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, e)| e["ph"] == "X" && e["cat"] == "kernel")
        .map(|(i, _)| i)
        .step_by(97)
        .take(n)
        .collect();
    assert_eq!(kernels.len(), n);
    (v, kernels)
}

fn stats_of(file: &std::path::Path, strict: bool) -> (std::process::Output, Option<serde_json::Value>) {
    let mut c = gpuspan();
    c.args(["stats", "--json"]).arg(file);
    if strict {
        c.arg("--strict");
    }
    let o = output(&mut c);
    let mut v: Option<serde_json::Value> = serde_json::from_slice(&o.stdout).ok();
    if let Some(serde_json::Value::Object(m)) = v.as_mut() {
        m.remove("source");
    }
    (o, v)
}

#[test]
fn ten_malformed_events_are_skipped_counted_and_named_once() {
    let (mut v, picked) = fixture_json("a100-hta-control.json.gz", 10);
    let events = v["traceEvents"].as_array_mut().unwrap();
    // What a broken exporter writes: a missing dur, a string where a number belongs, an
    // unknown phase, no phase, an entry that is not an object.
    for (k, &i) in picked.iter().enumerate() {
        let e = &mut events[i];
        match k {
            0..=2 => {
                e.as_object_mut().unwrap().remove("dur");
            }
            3..=5 => e["ts"] = serde_json::json!("n/a"),
            6 | 7 => e["ph"] = serde_json::json!("Q"),
            8 => {
                e.as_object_mut().unwrap().remove("ph");
            }
            _ => *e = serde_json::json!(42),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, serde_json::to_vec(&v).unwrap()).unwrap();
    // The same fixture with those events removed.
    let events = v["traceEvents"].as_array_mut().unwrap();
    for &i in picked.iter().rev() {
        events.remove(i);
    }
    let clean = dir.path().join("clean.json");
    std::fs::write(&clean, serde_json::to_vec(&v).unwrap()).unwrap();

    let (o, got) = stats_of(&broken, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("malformed")).collect();
    assert_eq!(warnings.len(), 1, "one warning line: {stderr}");
    assert!(
        warnings[0].contains(&format!("skipped 10 malformed events (first: event {}: ", picked[0])) && warnings[0].contains("no \"dur\""),
        "{}",
        warnings[0]
    );
    let (o, want) = stats_of(&clean, false);
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("malformed"));
    assert_eq!(got.unwrap(), want.unwrap(), "the same numbers as the clean fixture minus those events");

    // --strict: today's behaviour, the first bad event refused by index.
    let (o, _) = stats_of(&broken, true);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&format!("event {}", picked[3])), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_trace_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("not-a-trace.json");
    std::fs::write(&f, br#"{"hello": [1, 2, 3]}"#).unwrap();
    let (o, _) = stats_of(&f, false);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no \"traceEvents\" array"));
}

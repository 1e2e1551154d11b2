//! Bad input files get one line naming the file and the problem, exit code 2, no panic.

use crate::util::*;

fn check_one_line_error(args: &[&str], file: &std::path::Path) {
    let o = output(gpuspan().args(args).arg(file));
    assert_eq!(o.status.code(), Some(2), "{args:?}: exit code; stderr: {}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: exactly one line, got {err:?}");
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(lines[0].contains(name.as_ref()), "{args:?}: names the file: {err:?}");
    assert!(!err.contains("panicked"), "{args:?}: no panic: {err:?}");
}

#[test]
fn malformed_traces_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"traceEvents\": [ {\"ph\": \"X\", \"ts\": ").unwrap();
    let not_kineto = dir.path().join("not-kineto.json");
    std::fs::write(&not_kineto, b"{\"hello\": 1}").unwrap();
    let bad_gz = dir.path().join("truncated.json.gz");
    let real = std::fs::read(fixture("h100-bert-small.json.gz")).unwrap();
    std::fs::write(&bad_gz, &real[..real.len() / 2]).unwrap();
    let missing = dir.path().join("missing.json");
    for f in [&garbage, &not_kineto, &bad_gz, &missing] {
        check_one_line_error(&["stats"], f);
        check_one_line_error(&["stats", "--json"], f);
        check_one_line_error(&["replay"], f);
    }
}

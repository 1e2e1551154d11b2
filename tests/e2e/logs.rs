//! Structured JSON logs (issue 15, item 3): a fine-mode replay on the simulated H100 with
//! `GPUSPAN_LOG_FORMAT=json GPUSPAN_LOG=debug` and an OTLP receiver. Every stderr line is a
//! JSON object valid against `docs/log-schema.json` (checked with Python's `jsonschema`,
//! which `scripts/test.sh` installs into `.venv`); there is one `generation.step.completed`
//! per step, each naming the trace and span id of that step's `dit.step` span as the OTLP
//! receiver got it; the OOM the worker provokes is one `cuda.oom` error naming its step; the
//! same events arrive as OTLP log records with the same trace and span ids; the text format
//! is unchanged by default.

use crate::util::*;
use gpuspan_testkit::{OtlpReceiver, Transport};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const STEPS: u32 = 6;
const OOM_STEP: u32 = 3;

fn run(json: bool, rx: &OtlpReceiver) -> String {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut c = Command::new(artifact("gpuspan-replay"));
    c.args(["stdit", "--steps", &STEPS.to_string(), "--oom-at-step", &OOM_STEP.to_string()]);
    preload_agent(&mut c, sim.path(), "fine", out.path())
        .env("GPUSPAN_LOG", "debug")
        .env("GPUSPAN_WORKER_ID", "worker-logs")
        // Every step span reaches the receiver before exit (the default 2 s budget may cut
        // the OTLP flush on a loaded machine).
        .env("GPUSPAN_EXIT_BUDGET", "30s")
        .env("GPUSPAN_KERNEL_SPAN_BUDGET", "200")
        .env("OTEL_SERVICE_NAME", "dit-video")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env());
    if json {
        c.env("GPUSPAN_LOG_FORMAT", "json");
    }
    let o = output(&mut c);
    assert!(o.status.success(), "worker failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn json_logs_follow_the_schema_and_name_each_steps_span() {
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let stderr = run(true, &rx);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{stderr}")))
        .collect();
    assert!(!lines.is_empty());

    // The schema, with a real validator.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.jsonl");
    std::fs::write(&file, &stderr).unwrap();
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/log-schema.json");
    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 jsonschema.Draft202012Validator.check_schema(schema)\n\
                 v = jsonschema.Draft202012Validator(schema)\n\
                 for n, l in enumerate(open(sys.argv[2]), 1):\n    \
                     errs = list(v.iter_errors(json.loads(l)))\n    \
                     if errs: sys.exit(f'line {n}: {errs[0].message} at {list(errs[0].path)}: {l}')\n\
                 print('ok', n)\n";
    let venv = std::env::var_os("GPUSPAN_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = venv.join("bin/python");
    let has_validator = Command::new(&python).args(["-c", "import jsonschema"]).status().is_ok_and(|s| s.success());
    if has_validator {
        let o = output(Command::new(&python).arg("-c").arg(check).arg(&schema).arg(&file));
        assert!(o.status.success(), "schema check: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must have jsonschema in {} (scripts/test.sh installs it)", venv.display());
        eprintln!("note: no jsonschema in {}: the schema check is skipped (run scripts/test.sh)", venv.display());
    }

    for l in &lines {
        assert_eq!(l["service"], "dit-video");
        assert_eq!(l["worker_id"], "worker-logs");
    }
    let of = |e: &str| lines.iter().filter(|l| l["event"] == e).collect::<Vec<_>>();
    let activated = of("agent.activated");
    assert_eq!(activated.len(), 1, "{stderr}");
    assert_eq!(activated[0]["mode"], "fine");

    // One step event per step, each with its step span's ids.
    let steps = of("generation.step.completed");
    assert_eq!(steps.len(), STEPS as usize, "{stderr}");
    let got = rx.wait_for(Duration::from_secs(10), |s| s.iter().filter(|s| s.name == "dit.step").count() >= STEPS as usize);
    assert!(got, "dit.step spans: {:?}\n{stderr}", rx.spans().iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>());
    let spans: BTreeSet<(String, String)> =
        rx.spans().iter().filter(|s| s.name == "dit.step").map(|s| (s.trace_id.clone(), s.span_id.clone())).collect();
    let mut indices = BTreeSet::new();
    for s in &steps {
        let ids = (s["trace_id"].as_str().unwrap().to_string(), s["span_id"].as_str().unwrap().to_string());
        assert!(spans.contains(&ids), "no dit.step span {ids:?} among {spans:?}");
        assert_eq!(s["context"]["model"], "stdit");
        assert_eq!(s["context"]["total_steps"], STEPS);
        assert!(s["context"]["step_duration_ms"].as_f64().unwrap() > 0.0);
        indices.insert(s["context"]["step"].as_u64().unwrap());
    }
    assert_eq!(indices, (0..STEPS as u64).collect(), "every step once");

    let oom = of("cuda.oom");
    assert_eq!(oom.len(), 1, "{stderr}");
    assert_eq!(oom[0]["level"], "ERROR");
    assert_eq!(oom[0]["message"], format!("CUDA OOM during DiT step {OOM_STEP}"));
    assert_eq!(oom[0]["context"]["step"], OOM_STEP);

    // The same events as OTLP log records, linked to the same spans.
    let logs = rx.logs();
    let otlp_steps: BTreeSet<(String, String)> = logs
        .iter()
        .filter(|l| l.event_name == "generation.step.completed")
        .map(|l| {
            assert_eq!((l.severity_text.as_str(), l.severity_number), ("DEBUG", 5), "{l:?}");
            assert_eq!(l.resource.get("service.instance.id"), Some(&gpuspan_testkit::Val::Str("worker-logs".into())));
            (l.trace_id.clone(), l.span_id.clone())
        })
        .collect();
    let json_steps: BTreeSet<(String, String)> =
        steps.iter().map(|s| (s["trace_id"].as_str().unwrap().to_string(), s["span_id"].as_str().unwrap().to_string())).collect();
    assert_eq!(otlp_steps, json_steps, "one OTLP record per step with its span's ids: {logs:?}");
    let otlp_oom: Vec<_> = logs.iter().filter(|l| l.event_name == "cuda.oom").collect();
    assert_eq!(otlp_oom.len(), 1);
    assert_eq!((otlp_oom[0].severity_text.as_str(), otlp_oom[0].body.clone()), ("ERROR", format!("CUDA OOM during DiT step {OOM_STEP}")));
    assert_eq!(otlp_oom[0].attributes.get("context.step"), Some(&gpuspan_testkit::Val::Int(OOM_STEP as i64)));
    assert!(logs.iter().any(|l| l.event_name == "agent.activated"), "{logs:?}");
}

#[test]
fn text_logs_stay_the_default() {
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let stderr = run(false, &rx);
    assert!(stderr.lines().all(|l| l.starts_with("gpuspan: ") || l.is_empty()), "{stderr}");
    assert!(stderr.contains("gpuspan: fine mode on"), "{stderr}");
    assert!(stderr.contains("gpuspan: error: CUDA OOM during DiT step 3"), "{stderr}");
    assert!(!stderr.contains("generation.step.completed"), "step events are JSON only: {stderr}");
}

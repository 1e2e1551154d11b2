//! Python auto-instrumentation (issue 12, items 1–2): real diffusers pipelines with tiny
//! random-weight models (`python/examples/tiny_dit.py`: Wan, Latte with separate temporal
//! attention, the PixArt image DiT) run on the CPU under `gpuspan run` with no gpuspan code
//! in the worker. Torch, diffusers and transformers come from `.venv-torch`
//! (`scripts/test.sh` installs them, pinned).
//!
//! Per family: one `gpu.request` → exactly 3 `dit.step` spans (guidance on: Wan runs the
//! denoiser twice per step, Latte and PixArt on a batch of two) → per step the stage spans
//! the model has → one `vae.decode`; `dit_inference_step_duration_ms` observations for
//! every step type; every span CPU-timed (`gpuspan.timing=cpu`, no CUDA in the process);
//! and the generated frames identical to a run without gpuspan. A text encoder run in the
//! request is one `text_encode` span before the first step. Also: the same through
//! `python -m gpuspan.instrument` and from an installed layout (`scripts/install.sh`) with
//! no `PYTHONPATH`, and `--no-auto`.

use crate::util::*;
use gpuspan_testkit::{OtlpReceiver, ReceivedSpan, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STEPS: usize = 3;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The torch venv's Python (`GPUSPAN_TORCH_VENV`, else `.venv-torch`), when it imports
/// torch and diffusers; under CI its absence is a failure.
fn torch_python() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_TORCH_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv-torch"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import torch, diffusers, transformers"])
        .env_remove("LD_PRELOAD")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok || std::env::var_os("CI").is_none(), "{} lacks torch / diffusers: run scripts/test.sh", py.display());
    if !ok {
        eprintln!("skipping: no torch venv at {} (scripts/test.sh installs it)", venv.display());
    }
    ok.then_some(py)
}

fn worker() -> PathBuf {
    repo().join("python/examples/tiny_dit.py")
}

/// `checksum <hex>` from the worker's stdout.
fn checksum(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("checksum ").map(str::to_string))
        .unwrap_or_else(|| panic!("no checksum line:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr)))
}

/// The worker without gpuspan (no preload, no auto environment).
fn plain_checksum(py: &Path, family: &str) -> String {
    let o = output(
        Command::new(py)
            .arg(worker())
            .arg(family)
            .env_remove("LD_PRELOAD")
            .env_remove("PYTHONPATH")
            .env_remove("GPUSPAN_AUTO"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    checksum(&o)
}

/// Points a `gpuspan run` at the OTLP receiver.
fn to_receiver<'c>(c: &'c mut Command, rx: &OtlpReceiver) -> &'c mut Command {
    c.env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .env("GPUSPAN_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("PYTHONPATH")
        .env_remove("GPUSPAN_AUTO")
}

fn ok(o: Output) -> Output {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "worker failed:\n{}\n{stderr}", String::from_utf8_lossy(&o.stdout));
    assert!(!stderr.contains("panicked") && !stderr.contains("Traceback"), "{stderr}");
    assert!(!stderr.contains("gpuspan.auto: switched off"), "no internal error: {stderr}");
    o
}

/// The latest cumulative count of `dit_inference_step_duration_ms` per `step_type`, for
/// `model`, over OTLP.
fn step_histogram_counts(rx: &OtlpReceiver, model: &str) -> BTreeMap<String, u64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let label = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], k: &str| -> Option<String> {
        attrs.iter().find(|kv| kv.key == k).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
    };
    let mut counts = BTreeMap::new();
    for r in rx.metrics() {
        for m in r.resource_metrics.iter().flat_map(|x| &x.scope_metrics).flat_map(|x| &x.metrics) {
            let (true, Some(Data::Histogram(h))) = (m.name == "dit_inference_step_duration_ms", &m.data) else { continue };
            for dp in &h.data_points {
                if label(&dp.attributes, "model").as_deref() != Some(model) {
                    continue;
                }
                let Some(st) = label(&dp.attributes, "step_type") else { continue };
                let e = counts.entry(st).or_insert(0);
                *e = (*e).max(dp.count);
            }
        }
    }
    counts
}

/// Checks the span tree of one auto-instrumented request and returns the stage names seen
/// under its steps.
fn assert_request_tree(spans: &[ReceivedSpan], model: &str, pipeline: &str, stages: &[&str]) {
    let requests: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "gpu.request").collect();
    assert_eq!(requests.len(), 1, "one gpu.request: {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    let req = requests[0];
    assert_eq!(req.str("gpuspan.model"), Some(model));
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == req.trace_id).collect();
    let steps: Vec<&ReceivedSpan> = in_trace.iter().copied().filter(|s| s.name == "dit.step").collect();
    assert_eq!(steps.len(), STEPS, "exactly {STEPS} dit.step spans");
    let indices: BTreeSet<i64> = steps.iter().map(|s| s.int("gpuspan.step.index").expect("step index")).collect();
    assert_eq!(indices, (0..STEPS as i64).collect(), "steps numbered 0..{STEPS}");
    for s in &steps {
        assert_eq!(s.parent_span_id, req.span_id, "steps under the request");
        assert_eq!(s.int("gpuspan.step.count"), Some(STEPS as i64), "n from the scheduler's timesteps");
        assert_eq!(s.str("gpuspan.timing"), Some("cpu"), "CPU-timed: no CUDA in the process");
        let under: BTreeSet<&str> =
            in_trace.iter().filter(|c| c.parent_span_id == s.span_id).map(|c| c.name.as_str()).collect();
        for st in stages {
            assert!(under.contains(st), "step {:?} has a {st} span: {under:?}", s.int("gpuspan.step.index"));
        }
        assert!(!under.contains("vae.decode") && !under.contains("dit.step"), "{under:?}");
        if !stages.contains(&"attention.temporal") {
            assert!(!under.contains("attention.temporal"), "{pipeline} has no temporal attention: {under:?}");
        }
    }
    let vae: Vec<&&ReceivedSpan> = in_trace.iter().filter(|s| s.name == "vae.decode").collect();
    assert_eq!(vae.len(), 1, "one vae.decode");
    assert_eq!(vae[0].parent_span_id, req.span_id, "vae.decode under the request, after the steps");
    let last_step_end = steps.iter().map(|s| s.end_unix_ns).max().unwrap();
    assert!(vae[0].start_unix_ns >= last_step_end, "the VAE decodes after the last step");
}

/// One family under `gpuspan run -- python tiny_dit.py FAMILY` (coarse mode, the default).
fn family(name: &str, pipeline: &str, stages: &[&str]) {
    let Some(py) = torch_python() else { return };
    let expected = plain_checksum(&py, name);
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = ok(output(
        to_receiver(&mut gpuspan(), &rx).arg("run").arg("--out").arg(out.path()).arg("--").arg(&py).arg(worker()).arg(name),
    ));
    assert_eq!(checksum(&o), expected, "the frames are the same with gpuspan");
    let spans = rx.spans();
    assert_request_tree(&spans, pipeline, pipeline, stages);
    let counts = step_histogram_counts(&rx, pipeline);
    assert_eq!(counts.get("step"), Some(&(STEPS as u64)), "one step observation per step: {counts:?}");
    // The histogram's step types for the stages (platform spec names; DESIGN.md).
    for (stage, step_type) in [("attention.spatial", "spatial_attn"), ("attention.temporal", "temporal_attn"), ("attention.cross", "cross_attn"), ("ffn", "ffn")] {
        let n = counts.get(step_type).copied().unwrap_or(0);
        if stages.contains(&stage) {
            assert_eq!(n, STEPS as u64, "{step_type} observed once per step: {counts:?}");
        } else {
            assert_eq!(n, 0, "{pipeline} has no {stage}: {counts:?}");
        }
    }
}

#[test]
fn wan_pipeline_gets_requests_steps_and_stages() {
    family("wan", "WanPipeline", &["attention.spatial", "attention.cross", "ffn", "norm"]);
}

#[test]
fn latte_pipeline_gets_temporal_attention() {
    family("latte", "LattePipeline", &["attention.spatial", "attention.temporal", "attention.cross", "ffn", "norm"]);
}

#[test]
fn pixart_image_dit_gets_requests_steps_and_stages() {
    family("pixart", "PixArtAlphaPipeline", &["attention.spatial", "attention.cross", "ffn", "norm"]);
}

/// A text encoder run by the pipeline (`tiny_dit.py wan --text-encoder`: a tiny
/// `UMT5EncoderModel` and an in-memory tokenizer encode the prompt in the request) is one
/// `text_encode` stage span under the request, ending before the first step begins; the
/// encoder's own attention and norms open nothing (outside steps, and inside its stage).
#[test]
fn text_encoder_before_the_first_step_is_text_encode() {
    let Some(py) = torch_python() else { return };
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = ok(output(
        to_receiver(&mut gpuspan(), &rx)
            .arg("run")
            .arg("--out")
            .arg(out.path())
            .arg("--")
            .arg(&py)
            .arg(worker())
            .args(["wan", "--text-encoder"]),
    ));
    checksum(&o);
    let spans = rx.spans();
    assert_request_tree(&spans, "WanPipeline", "WanPipeline", &["attention.spatial", "attention.cross", "ffn"]);
    let req = spans.iter().find(|s| s.name == "gpu.request").unwrap();
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == req.trace_id).collect();
    let text: Vec<&&ReceivedSpan> = in_trace.iter().filter(|s| s.name == "text_encode").collect();
    assert_eq!(text.len(), 1, "one text_encode: {:?}", in_trace.iter().map(|s| &s.name).collect::<Vec<_>>());
    assert_eq!(text[0].parent_span_id, req.span_id, "text_encode under the request, in no step");
    let first_step_start = in_trace.iter().filter(|s| s.name == "dit.step").map(|s| s.start_unix_ns).min().unwrap();
    assert!(text[0].end_unix_ns <= first_step_start, "the prompt is encoded before the first step");
    let under_request: BTreeSet<&str> =
        in_trace.iter().filter(|s| s.parent_span_id == req.span_id).map(|s| s.name.as_str()).collect();
    assert_eq!(under_request, BTreeSet::from(["dit.step", "text_encode", "vae.decode"]), "no stage of the encoder's modules");
}

/// `python -m gpuspan.instrument` under a plain `LD_PRELOAD` (no `gpuspan run`), and
/// `gpuspan run --no-auto`, which leaves the worker's environment alone.
#[test]
fn instrument_module_and_no_auto() {
    let Some(py) = torch_python() else { return };
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = ok(output(
        to_receiver(&mut Command::new(&py), &rx)
            .args(["-m", "gpuspan.instrument"])
            .arg(worker())
            .arg("pixart")
            .env("PYTHONPATH", repo().join("python"))
            .env("LD_PRELOAD", artifact("libgpuspan.so"))
            .env("GPUSPAN_OUT", out.path()),
    ));
    checksum(&o);
    assert_request_tree(&rx.spans(), "PixArtAlphaPipeline", "PixArtAlphaPipeline", &["attention.spatial", "attention.cross", "ffn"]);

    // `--no-auto` leaves the worker's environment alone (a plain interpreter is enough to
    // see it; the pipelines above show what the environment switches on).
    let probe = "import os, sys; print(os.environ.get('GPUSPAN_AUTO'), 'sitecustomize' in sys.modules and 'gpuspan' in sys.modules)";
    for (flag, expected) in [(None, "1 True"), (Some("--no-auto"), "None False")] {
        let mut c = gpuspan();
        c.args(["run", "--out"]).arg(out.path());
        if let Some(f) = flag {
            c.arg(f);
        }
        let o = ok(output(c.arg("--").arg(&py).args(["-c", probe]).env_remove("PYTHONPATH").env_remove("GPUSPAN_AUTO")));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), expected, "{flag:?}");
    }
}

/// From an installed layout (`scripts/install.sh PREFIX`: binaries in `PREFIX/bin`, the
/// package in `PREFIX/share/gpuspan/python`), with no `PYTHONPATH` set by the user.
#[test]
fn installed_layout_needs_no_pythonpath() {
    let Some(py) = torch_python() else { return };
    let prefix = tempfile::tempdir().unwrap();
    let profile = target_dir().file_name().unwrap().to_string_lossy().into_owned();
    let st = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .args(["--profile", &profile])
        .arg(prefix.path())
        .env("CARGO_TARGET_DIR", target_dir().parent().unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(prefix.path().join("share/gpuspan/python/gpuspan/auto.toml").is_file(), "rules copied, not linked");
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let mut c = Command::new(prefix.path().join("bin/gpuspan"));
    for k in ["GPUSPAN_AGENT_LIB", "GPUSPAN_SIM_LIB", "GPUSPAN_REPLAY_BIN", "GPUSPAN_PYTHON_DIR"] {
        c.env_remove(k);
    }
    let o = ok(output(to_receiver(&mut c, &rx).args(["run", "--out"]).arg(out.path()).arg("--").arg(&py).arg(worker()).arg("wan")));
    checksum(&o);
    assert_request_tree(&rx.spans(), "WanPipeline", "WanPipeline", &["attention.spatial", "attention.cross", "ffn"]);
}

/// The mapping is data: an `[auto]` table in `GPUSPAN_RULES` (the file the agent reads for
/// its kernel-name rules, which ignores the table) puts its module rules first; a bad rule
/// switches the auto-instrumentation off with one warning and the worker runs on.
#[test]
fn rules_file_extends_the_mapping_and_a_bad_one_warns() {
    let Some(py) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    // Any stage name works as a scope; spans are made for the stage names the agent knows,
    // so the test maps PixArt's feed-forward onto one PixArt does not have.
    std::fs::write(&rules, "[[auto.module]]\nclass = '^FeedForward$'\nstage = \"attention.temporal\"\n").unwrap();
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let o = ok(output(
        to_receiver(&mut gpuspan(), &rx)
            .args(["run", "--out"])
            .arg(dir.path())
            .arg("--")
            .arg(&py)
            .arg(worker())
            .arg("pixart")
            .env("GPUSPAN_RULES", &rules),
    ));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("GPUSPAN_RULES"), "the agent accepts the file: {stderr}");
    let spans = rx.spans();
    assert_request_tree(&spans, "PixArtAlphaPipeline", "PixArtAlphaPipeline", &["attention.spatial", "attention.cross", "attention.temporal"]);
    assert!(!spans.iter().any(|s| s.name == "ffn"), "the file's rule came first");

    std::fs::write(&rules, "[[auto.module]]\nclass = '(unclosed'\nstage = \"x\"\n").unwrap();
    // The bootstrap installs the hooks at interpreter start, so a plain interpreter shows the
    // warning; the worker goes on.
    let o = output(
        gpuspan()
            .args(["run", "--out"])
            .arg(dir.path())
            .arg("--")
            .arg(&py)
            .args(["-c", "import gpuspan.auto as a; print('installed', a.installed())"])
            .env("GPUSPAN_RULES", &rules)
            .env_remove("PYTHONPATH")
            .env_remove("GPUSPAN_AUTO"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "installed False");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("gpuspan.auto: off")).collect();
    assert_eq!(warnings.len(), 1, "one warning naming the problem: {stderr}");
    assert!(warnings[0].contains("auto-instrumentation rules") && warnings[0].contains("class"), "{}", warnings[0]);
}

/// The class `forward` wrappers (how `gpuspan.auto` times a module's call: see its module
/// docs) against what workers do with modules: `tests/e2e/workers/auto_wrappers.py` checks
/// outputs, signatures and the scope state in Python (a deep copy runs its own weights, a
/// pickled model loads and runs, an accelerate-style instance `forward` gets torch's hooks,
/// a worker's exception closes the scope of the module it left at once); here the spans of
/// each request, named by `gpuspan.model`.
#[test]
fn auto_forward_wrappers_survive_copies_pickles_offload_hooks_and_exceptions() {
    let Some(py) = torch_python() else { return };
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = ok(output(
        to_receiver(&mut gpuspan(), &rx)
            .args(["run", "--no-auto", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(&py)
            .arg(repo().join("tests/e2e/workers/auto_wrappers.py"))
            .env("PYTHONPATH", repo().join("python")),
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().last(), Some("ok"));
    let spans = rx.spans();
    let stages = ["attention.spatial", "attention.cross", "ffn", "norm"];
    let mut seen = BTreeSet::new();
    for req in spans.iter().filter(|s| s.name == "gpu.request") {
        let model = req.str("gpuspan.model").expect("model").to_string();
        assert!(seen.insert(model.clone()), "one request per model: {model}");
        let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == req.trace_id).collect();
        // Every span closed inside its parent: an exception left nothing open.
        for s in &in_trace {
            assert!(s.end_unix_ns >= s.start_unix_ns, "{model}: {} ends after it starts", s.name);
            if let Some(p) = in_trace.iter().find(|p| p.span_id == s.parent_span_id) {
                assert!(
                    p.start_unix_ns <= s.start_unix_ns && s.end_unix_ns <= p.end_unix_ns,
                    "{model}: {} inside its parent {}",
                    s.name,
                    p.name
                );
            }
        }
        let steps: Vec<&&ReceivedSpan> = in_trace.iter().filter(|s| s.name == "dit.step").collect();
        let want_steps = if model == "escaped" { 2 } else { STEPS };
        assert_eq!(steps.len(), want_steps, "{model}: steps");
        for s in &steps {
            assert_eq!(s.parent_span_id, req.span_id);
            // One span per (step, stage) (architecture.md): every stage of the blocks, in
            // the escaped request's last step too (its first block ran all four).
            let under: BTreeSet<&str> =
                in_trace.iter().filter(|c| c.parent_span_id == s.span_id).map(|c| c.name.as_str()).collect();
            assert_eq!(under, BTreeSet::from(stages), "{model} step {:?}", s.int("gpuspan.step.index"));
        }
    }
    let expected: BTreeSet<String> =
        ["plain", "offloaded", "copy", "check", "loaded", "caught", "escaped", "after"].iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, expected, "every request");
}

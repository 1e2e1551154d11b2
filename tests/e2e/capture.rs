//! Fine-capture windows (issue 5): `gpuspan capture PID --steps N | --duration D |
//! --requests N` against a worker running in coarse mode on the simulated H100 (real clock),
//! the refusal when CUPTI is held by another client, and bad control messages.
//!
//! The expected kernels of a window come from the workload itself
//! (`gpuspan_simgpu::workload::preset`): the launches the worker makes inside each step /
//! request scope, counted from its op list, independently of the agent.

use crate::control::{child_of, expected_socket, raw, status_json, wait_for_socket, Worker};
use crate::util::*;
use gpuspan_core::trace::Category;
use gpuspan_simgpu::workload::{preset::preset, Op};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u32 = 8;
const REQUESTS: u32 = 6;

/// Kernel launches per step scope name, and per request, of `stdit` with STEPS × REQUESTS.
fn launches() -> (BTreeMap<String, u64>, u64) {
    let w = preset("stdit", STEPS, REQUESTS).unwrap();
    let mut stack: Vec<String> = Vec::new();
    let mut per_step: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_request: Vec<u64> = Vec::new();
    for op in &w.ops {
        match op {
            Op::RangePush(n) => {
                if n.starts_with("gpuspan.request") {
                    per_request.push(0);
                }
                stack.push(n.clone());
            }
            Op::RangePop => {
                stack.pop();
            }
            Op::Launch { .. } => {
                if let Some(step) = stack.iter().find(|n| n.starts_with("dit.step ")) {
                    *per_step.entry(step.clone()).or_insert(0) += 1;
                }
                if stack.iter().any(|n| n.starts_with("gpuspan.request")) {
                    *per_request.last_mut().unwrap() += 1;
                }
            }
            _ => {}
        }
    }
    // Requests are identical: per-step counts summed over REQUESTS, so divide.
    for v in per_step.values_mut() {
        assert_eq!(*v % REQUESTS as u64, 0);
        *v /= REQUESTS as u64;
    }
    assert!(per_request.windows(2).all(|p| p[0] == p[1]));
    (per_step, per_request[0])
}

/// Starts the worker in coarse mode (real clock) and waits for its control socket.
fn start_worker(out: &Path, env: &[(&str, &str)]) -> (Worker, std::thread::JoinHandle<String>) {
    start_worker_with(out, &[], env)
}

/// [`start_worker`] with extra worker arguments.
fn start_worker_with(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Worker, std::thread::JoinHandle<String>) {
    let (steps, requests) = (STEPS.to_string(), REQUESTS.to_string());
    let mut args = vec!["stdit", "--steps", &steps, "--requests", &requests];
    args.extend_from_slice(extra);
    start_replay(out, &args, env)
}

/// `gpuspan run --sim -- gpuspan-replay ARGS` in coarse mode (real clock); waits for the
/// worker's control socket.
fn start_replay(out: &Path, replay_args: &[&str], env: &[(&str, &str)]) -> (Worker, std::thread::JoinHandle<String>) {
    let mut c = gpuspan();
    c.args(["run", "--sim", "--out"])
        .arg(out)
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(replay_args)
        .env("GPUSPAN_SIM_CLOCK", "real")
        .env("GPUSPAN_LOG", "info")
        .env_remove("GPUSPAN_CONTROL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let run = c.spawn().unwrap();
    let run_pid = run.id();
    let mut w = Worker { run, pid: None };
    let (stdout, stderr) = (w.run.stdout.take().unwrap(), w.run.stderr.take().unwrap());
    let output = std::thread::spawn(move || {
        let (mut a, mut b) = (String::new(), String::new());
        let (mut so, mut se) = (stdout, stderr);
        let t = std::thread::spawn(move || {
            let _ = se.read_to_string(&mut b);
            b
        });
        let _ = so.read_to_string(&mut a);
        format!("{a}\n--- stderr ---\n{}", t.join().unwrap())
    });
    let pid = child_of(run_pid, Duration::from_secs(30)).expect("the worker process");
    w.pid = Some(pid);
    wait_for_socket(pid);
    (w, output)
}

/// `gpuspan capture PID ARGS --out DIR`: its output, and the capture it wrote.
fn capture(pid: u32, args: &[&str], dir: &Path) -> (std::process::Output, Option<gpuspan_core::trace::Trace>) {
    let o = output(gpuspan().args(["capture", &pid.to_string()]).args(args).arg("--out").arg(dir));
    let t = gpuspan_export::read_trace(&dir.join(format!("capture-{pid}.json.gz"))).ok();
    (o, t)
}

fn scopes_named<'a>(t: &'a gpuspan_core::trace::Trace, prefix: &str) -> Vec<&'a gpuspan_core::trace::TraceEvent> {
    t.events.iter().filter(|e| e.cat == Some(Category::UserAnnotation) && e.name.starts_with(prefix)).collect()
}

fn kernels(t: &gpuspan_core::trace::Trace) -> Vec<&gpuspan_core::trace::TraceEvent> {
    t.events.iter().filter(|e| e.cat == Some(Category::Kernel)).collect()
}

/// Index of a `dit.step i/n` name.
fn step_index(name: &str) -> u32 {
    name["dit.step ".len()..].split('/').next().unwrap().parse().unwrap()
}

#[test]
fn capture_windows_steps_duration_requests() {
    let (per_step, per_request) = launches();
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker(out.path(), &[]);
    let pid = w.pid.unwrap();
    let st = status_json(pid);
    assert_eq!(st["mode"], "coarse", "{st}");
    assert!(st["capture_window"].is_null());

    // --steps 3: exactly three consecutive whole steps, every kernel of them, nothing else.
    let d1 = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--steps", "3"], d1.path());
    assert!(o.status.success(), "capture --steps 3: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&d1.path().join(format!("capture-{pid}.json.gz")).display().to_string()), "{stdout}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("the capture will be"), "it says where the files will be: {stderr}");
    let t = t.expect("the window's capture");
    let steps = scopes_named(&t, "dit.step ");
    assert_eq!(steps.len(), 3, "three steps: {:?}", steps.iter().map(|s| &s.name).collect::<Vec<_>>());
    let mut idx: Vec<u32> = steps.iter().map(|s| step_index(&s.name)).collect();
    idx.sort_unstable();
    assert!(
        idx.windows(2).all(|p| p[1] == p[0] + 1) || idx.contains(&(STEPS - 1)) && idx.contains(&0),
        "consecutive steps (possibly across a request boundary): {idx:?}"
    );
    let want: u64 = steps.iter().map(|s| per_step[&s.name]).sum();
    let ks = kernels(&t);
    assert_eq!(ks.len() as u64, want, "every kernel of the three steps and nothing else");
    assert!(ks.iter().all(|k| k.step.as_deref().is_some_and(|s| steps.iter().any(|x| x.name == s))));
    let st = status_json(pid);
    assert_eq!(st["capture_window"]["state"], "written", "{st}");
    assert_eq!(st["capture_window"]["kernels"], want);
    assert_eq!(st["capture_window"]["steps"], 3);

    // --duration 2s.
    let d2 = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--duration", "2s"], d2.path());
    if !o.status.success() {
        let text = output_thread.join().unwrap();
        panic!("capture --duration: {}\nworker: {text}", String::from_utf8_lossy(&o.stderr));
    }
    let t = t.expect("the window's capture");
    let steps = scopes_named(&t, "dit.step ");
    assert!(!steps.is_empty());
    // The steps that began within 2 s of the first one's begin, whole (the window closes
    // at the end of the last of them, or at the first step end past 2 s).
    let first = steps.iter().map(|s| s.ts_us).fold(f64::MAX, f64::min);
    let last_begin = steps.iter().map(|s| s.ts_us).fold(0.0, f64::max);
    assert!(last_begin - first < 2e6, "no step begun after the 2 s: {} µs", last_begin - first);
    assert!(steps.len() >= 2, "a 2 s window of ≈ 0.6 s steps holds several: {}", steps.len());
    let want: u64 = steps.iter().map(|s| per_step[&s.name]).sum();
    assert_eq!(kernels(&t).len() as u64, want, "whole steps, nothing else");

    // --requests 1: one whole request (its steps and its VAE decode).
    let d3 = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--requests", "1"], d3.path());
    assert!(o.status.success(), "capture --requests: {}", String::from_utf8_lossy(&o.stderr));
    let t = t.expect("the window's capture");
    assert_eq!(scopes_named(&t, "gpuspan.request").len(), 1);
    assert_eq!(scopes_named(&t, "dit.step ").len(), STEPS as usize);
    assert_eq!(kernels(&t).len() as u64, per_request, "every kernel of the request");
    assert!(!scopes_named(&t, "vae.decode").is_empty());

    // CUPTI was released after each window: three subscribes, three unsubscribes, nothing
    // held when the worker finished.
    let status = w.run.wait().unwrap();
    assert!(status.success());
    let text = output_thread.join().unwrap();
    let line = text.lines().find(|l| l.starts_with("sim cupti:")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("subscribes=3 ") && line.contains("unsubscribes=3 "), "{line}");
    assert!(line.contains("subscribed=0") && line.contains("kinds_enabled=0"), "{line}");
    assert_eq!(text.matches("CUPTI released").count(), 3, "{text}");
    w.pid = None;
}

/// The simulated "another tool holds CUPTI" fault: the window is refused with that reason
/// (reply, status, one log line) and coarse timing goes on.
#[test]
fn capture_refused_when_cupti_is_held_and_coarse_continues() {
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker(out.path(), &[("GPUSPAN_SIM_FAULT", "cupti_subscribed")]);
    let pid = w.pid.unwrap();
    let d = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (o, t) = capture(pid, &["--steps", "2"], d.path());
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("CUPTI is held by another client") && e.contains("MULTIPLE_SUBSCRIBERS"), "{e}");
        assert!(t.is_none());
    }
    let st = status_json(pid);
    assert_eq!(st["capture_window"]["state"], "refused", "{st}");
    assert!(st["capture_window"]["error"].as_str().unwrap().contains("held by another client"));
    let timed = st["coarse"]["scopes_timed"].as_u64().unwrap();
    let t0 = Instant::now();
    loop {
        let now = status_json(pid)["coarse"]["scopes_timed"].as_u64().unwrap();
        if now > timed {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "coarse timing stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = w.run.wait();
    let text = output_thread.join().unwrap();
    assert_eq!(text.matches("capture window refused").count(), 1, "logged once: {text}");
    w.pid = None;
}

/// Malformed and oversize capture messages get an error reply and open no window.
#[test]
fn capture_bad_messages_change_nothing() {
    let out = tempfile::tempdir().unwrap();
    let (w, _output) = start_worker(out.path(), &[]);
    let pid = w.pid.unwrap();
    let sock = expected_socket(pid);
    for (msg, needle) in [
        (b"{\"v\":1,\"op\":\"capture\",\"steps\":\"3\"}\n".to_vec(), "bad request"),
        (b"{\"v\":1,\"op\":\"capture\",\"steps\":3,\"requests\":1}\n".to_vec(), "only one"),
        (b"{\"v\":1,\"op\":\"capture\",\"steps\":3,\"out\":\"rel\"}\n".to_vec(), "absolute"),
        (b"{\"v\":1,\"op\":\"capture\",\"steps\":3\n".to_vec(), "malformed"),
        (vec![b'{'; 1 << 20], "too long"),
    ] {
        let r = raw(&sock, &msg);
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains(needle), "{r}");
    }
    let st = status_json(pid);
    assert!(st["capture_window"].is_null(), "no window opened: {st}");
}

/// A fine window opened mid-run in a worker that replays each step as a CUDA graph
/// (`--cuda-graph`): CUPTI is subscribed while graphs launch, the worker finishes without a
/// capture invalidated, and the window holds two whole steps, every graph kernel of them in
/// its step.
#[test]
fn capture_window_over_cuda_graph_steps() {
    let (per_step, _) = launches();
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker_with(out.path(), &["--cuda-graph"], &[]);
    let pid = w.pid.unwrap();
    let d = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--steps", "2"], d.path());
    assert!(o.status.success(), "capture --steps 2: {}", String::from_utf8_lossy(&o.stderr));
    let t = t.expect("the window's capture");
    let steps = scopes_named(&t, "dit.step ");
    assert_eq!(steps.len(), 2, "two steps: {:?}", steps.iter().map(|s| &s.name).collect::<Vec<_>>());
    let want: u64 = steps.iter().map(|s| per_step[&s.name]).sum();
    let ks = kernels(&t);
    assert_eq!(ks.len() as u64, want, "every graph kernel of the two steps");
    assert!(ks.iter().all(|k| k.step.as_deref().is_some_and(|s| steps.iter().any(|x| x.name == s))));
    let status = w.run.wait().unwrap();
    let text = output_thread.join().unwrap();
    assert!(status.success(), "the worker finished: {text}");
    assert!(text.contains("cuda graph: captured="), "{text}");
    w.pid = None;
}

/// A real trace replayed with `--cuda-graph` (`h100-vit-falconsai`, whose `ProfilerStep#N`
/// is a forward pass captured once and launched per request) under a fine window opened
/// mid-run: the worker finishes (no capture invalidated), and each step of the window holds
/// exactly the kernels the same step holds in a fine-mode replay without graphs.
#[test]
fn capture_window_over_a_cuda_graph_fixture_replay() {
    let trace = fixture("h100-vit-falconsai.json.gz");
    let trace = trace.to_str().unwrap();
    // Kernels of one step, from a fine-mode replay without graphs.
    let p = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(p.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args([trace, "--requests", "1"]),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = gpuspan_export::read_trace(&capture_in(p.path())).unwrap();
    let per_step = plain.kernels().filter(|k| k.step.is_some()).count();
    assert!(per_step > 0, "the fixture's step holds kernels");

    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_replay(out.path(), &[trace, "--requests", "400", "--cuda-graph"], &[]);
    let pid = w.pid.unwrap();
    let d = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--steps", "2"], d.path());
    assert!(o.status.success(), "capture --steps 2: {}", String::from_utf8_lossy(&o.stderr));
    let t = t.expect("the window's capture");
    let steps: Vec<String> = t.events.iter().filter(|e| e.cat == Some(Category::UserAnnotation) && e.name.starts_with("ProfilerStep#")).map(|e| e.name.clone()).collect();
    assert_eq!(steps.len(), 2, "two steps: {steps:?}");
    // Every request replays the same trace, so both steps may carry the same name.
    for s in steps.iter().collect::<std::collections::BTreeSet<_>>() {
        let occurrences = steps.iter().filter(|x| *x == s).count();
        let n = t.kernels().filter(|k| k.step.as_deref() == Some(s.as_str())).count();
        assert_eq!(n, per_step * occurrences, "{s}: graph kernels in the window's steps vs the same step without graphs");
    }
    assert_eq!(t.kernels().count(), 2 * per_step, "nothing outside the two steps");
    let status = w.run.wait().unwrap();
    let text = output_thread.join().unwrap();
    assert!(status.success(), "the worker finished: {text}");
    assert!(text.contains("cuda graph: captured=1 launches=400"), "{text}");
    w.pid = None;
}

/// SIGTERM while a fine window collects (coarse mode, window armed by `gpuspan capture`):
/// the agent's handler (installed when the window subscribed CUPTI) writes the window's
/// capture of what it collected, marked partial, and the worker still dies of SIGTERM.
#[test]
fn sigterm_during_a_fine_window_leaves_a_partial_window_capture() {
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker_with(out.path(), &[], &[]);
    let pid = w.pid.unwrap();
    let d = tempfile::tempdir().unwrap();
    // A window far longer than the test: it is collecting when the signal comes.
    let mut cap = gpuspan()
        .args(["capture", &pid.to_string(), "--steps", "1000", "--out"])
        .arg(d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let st = status_json(pid);
        let done = st["capture_window"]["done"].as_u64().unwrap_or(0);
        if st["capture_window"]["state"] == "open" && done >= 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the window never collected a step: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the worker's pid (our grandchild, alive: its socket answered).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = w.run.wait().unwrap();
    let text = output_thread.join().unwrap();
    let _ = cap.wait();
    w.pid = None;
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "the worker died of SIGTERM: {text}");
    assert!(text.contains("SIGTERM: wrote what the open capture window collected"), "{text}");
    let t = gpuspan_export::read_trace(&d.path().join(format!("capture-{pid}.json.gz"))).expect("a readable window capture");
    let summary = t.events.iter().find(|e| e.name == "gpuspan.summary").unwrap();
    assert_eq!(summary.extra_args.get("gpuspan.partial").and_then(|v| v.as_u64()), Some(1), "marked partial");
    assert!(!scopes_named(&t, "dit.step ").is_empty(), "the steps collected before the signal");
    assert!(!kernels(&t).is_empty(), "their kernels");
}

/// A second CUPTI activity client in the worker (what torch.profiler / Kineto is on CUPTI
/// ≤ 13.2: its own V1 buffer callbacks and `CONCURRENT_KERNEL`, no subscriber, calls through
/// the global symbol scope). Coarse mode leaves it alone: it receives a record of every
/// kernel. A fine window then registers gpuspan's callbacks; the client's registration and
/// kinds went through `libgpuspan.so`'s interposed entry points
/// (`gpuspan_cupti::foreign_client`), so its outstanding buffer is handed back after gpuspan
/// read it, its records during the window are forwarded into buffers it lends, and closing
/// the window leaves `CONCURRENT_KERNEL` on: it still receives every kernel of the run, its
/// canaries hold, and the window's capture is exact. The same in fine mode from the start.
#[test]
fn a_second_activity_client_is_left_alone() {
    // Coarse mode alone: the client sees every kernel.
    let out = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--sim", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["stdit", "--steps", "2", "--activity-client"]),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let replayed: u64 = stdout.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("replayed N");
    assert!(
        stdout.contains(&format!("kernels={replayed} canary_intact=1")),
        "the client got a record of every kernel: {stdout}"
    );

    // A fine window while the client collects.
    let (per_step, _) = launches();
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker_with(out.path(), &["--activity-client"], &[]);
    let pid = w.pid.unwrap();
    // Arm once work has completed (a scope timed), so the client already holds a buffer of
    // records when gpuspan registers its callbacks.
    let t0 = Instant::now();
    while status_json(pid)["coarse"]["scopes_timed"].as_u64().unwrap_or(0) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no scope timed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--steps", "2"], d.path());
    assert!(o.status.success(), "capture --steps 2: {}", String::from_utf8_lossy(&o.stderr));
    let t = t.expect("the window's capture");
    let steps = scopes_named(&t, "dit.step ");
    let want: u64 = steps.iter().map(|s| per_step[&s.name]).sum();
    assert_eq!(kernels(&t).len() as u64, want, "the window's capture is exact");
    let summary_of = |t: &gpuspan_core::trace::Trace, k: &str| -> u64 {
        let s = t.events.iter().find(|e| e.name == "gpuspan.summary").expect("summary");
        s.extra_args.get(&format!("gpuspan.{k}")).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("{k}: {:?}", s.extra_args))
    };
    let foreign = summary_of(&t, "buffers_foreign");
    let status = w.run.wait().unwrap();
    let text = output_thread.join().unwrap();
    assert!(foreign >= 1, "the client's buffer reached gpuspan's callback: {text}");
    assert_eq!(summary_of(&t, "foreign_client_known"), 1, "the client's registration was seen");
    assert_eq!(summary_of(&t, "foreign_buffers_handed_back"), foreign, "each of its buffers went back to it");
    assert_eq!(summary_of(&t, "foreign_records_not_forwarded"), 0);
    assert!(status.success(), "{text}");
    let (lent, returned, got, intact) = activity_client_report(&text);
    assert!(intact, "nothing wrote into the client's buffers: {text}");
    // CUPTI went on filling the client's buffer through the window (it was lent before
    // gpuspan registered) and it came back whole; every later record reached the client only
    // by being forwarded from gpuspan's buffers (gpuspan's callbacks stay registered).
    assert_eq!(got, replayed_kernels(&text), "the client got every kernel, the window's included: {text}");
    assert_eq!(lent, returned, "every buffer it lent came back to it: {text}");
    w.pid = None;

    // Fine mode from the start: both get every kernel.
    let out = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--sim", "--mode", "fine", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["stdit", "--steps", "2", "--activity-client"]),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).unwrap();
    let replayed = replayed_kernels(&text);
    assert_eq!(kernels(&t).len() as u64, replayed, "gpuspan's capture holds every kernel");
    let (lent, returned, got, intact) = activity_client_report(&text);
    assert!(intact, "{text}");
    assert_eq!(got, replayed, "the client got every kernel: {text}");
    assert_eq!(lent, returned, "{text}");
}

/// `lent=`, `returned=`, `kernels=` of the replay worker's `activity client:` line.
fn activity_client_report(text: &str) -> (u64, u64, u64, bool) {
    let line = text.lines().find(|l| l.starts_with("activity client:")).unwrap_or_else(|| panic!("no report: {text}"));
    let field = |k: &str| -> u64 {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k} in {line}"))
    };
    (field("lent="), field("returned="), field("kernels="), line.contains("canary_intact=1"))
}


/// CUPTI 13.3+'s multiple-subscriber mode (`gpuspan_cupti::multi_subscriber`): a second tool
/// that subscribes with `cuptiSubscribe_v2` asking for it (a V2-aware torch.profiler) and
/// gpuspan both collect every kernel, each into its own buffers, whoever subscribes first:
/// in fine mode from the start, and in coarse mode with a fine window opened mid-run (the
/// tool first). Nothing of the other's reaches gpuspan (`buffers_foreign` 0), the capture
/// says it subscribed in that mode, and `status` says so while the window is open. A tool
/// that took CUPTI in single mode is named in the refusal.
#[test]
fn multiple_subscriber_mode_lets_a_second_tool_collect_alongside() {
    const CUPTI: (&str, &str) = ("GPUSPAN_SIM_CUPTI_VERSION", "13.3");
    let summary_of = |t: &gpuspan_core::trace::Trace, k: &str| -> u64 {
        let s = t.events.iter().find(|e| e.name == "gpuspan.summary").expect("summary");
        s.extra_args.get(&format!("gpuspan.{k}")).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("{k}: {:?}", s.extra_args))
    };

    // `gpuspan run --sim --mode fine` of `stdit --steps 2 EXTRA` with ENV: (output, capture).
    let fine_run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = tempfile::tempdir().unwrap();
        let mut c = gpuspan();
        c.args(["run", "--sim", "--mode", "fine", "--out"]).arg(out.path()).arg("--").arg(artifact("gpuspan-replay"));
        c.args(["stdit", "--steps", "2"]).args(extra).env("GPUSPAN_LOG", "info");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = output(&mut c);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{env:?}: {text}");
        let t = gpuspan_export::read_trace(&capture_in(out.path())).unwrap();
        (text, t)
    };

    // Fine mode from the start.
    let (text, t) = fine_run(&["--activity-client=multi-subscriber"], &[CUPTI]);
    assert!(text.contains("multiple-subscriber mode"), "the activation line says so: {text}");
    let replayed = replayed_kernels(&text);
    let (lent, returned, seen, intact) = activity_client_report(&text);
    assert_eq!((seen, returned, intact), (replayed, lent, true), "the tool got every kernel in its own buffers: {text}");
    assert_eq!(kernels(&t).len() as u64, replayed, "gpuspan got every kernel too");
    assert_eq!(summary_of(&t, "cupti_multi_subscriber_subscriptions"), 1);
    assert_eq!(summary_of(&t, "buffers_foreign"), 0, "CUPTI kept the tool's buffers apart");
    // gpuspan promised zeroed buffers for its own subscriber (`cuptiActivitySetAttribute_v2`):
    // CUPTI zeroed every buffer the tool lent (it promised nothing) and none of gpuspan's, and
    // none of gpuspan's was lent dirty.
    let cupti = crate::util::sim_cupti_text(&text);
    assert_eq!(cupti["buffers_zeroed_by_cupti"], lent, "only the tool's buffers were zeroed by CUPTI: {cupti:?}\n{text}");
    assert_eq!(cupti["buffers_lent_dirty"], 0, "{cupti:?}");

    // The single V1 subscription when the driver refuses the mode (older than r610), or when
    // it is turned off.
    for env in [[("GPUSPAN_SIM_FAULT", "no_multi_subscriber"), CUPTI], [("GPUSPAN_CUPTI_MULTI_SUBSCRIBER", "0"), CUPTI]] {
        let (text, t) = fine_run(&[], &env);
        assert_eq!(kernels(&t).len() as u64, replayed_kernels(&text), "{env:?}");
        assert_eq!(summary_of(&t, "cupti_multi_subscriber_subscriptions"), 0, "{env:?}: single mode");
    }

    // Coarse mode, the tool subscribed first, a fine window mid-run.
    let (per_step, _) = launches();
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker_with(out.path(), &["--activity-client=multi-subscriber"], &[CUPTI]);
    let pid = w.pid.unwrap();
    let t0 = Instant::now();
    while status_json(pid)["coarse"]["scopes_timed"].as_u64().unwrap_or(0) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no scope timed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_json(pid)["cupti_multi_subscriber"], false, "coarse mode holds no subscription");
    let d = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--steps", "2"], d.path());
    assert!(o.status.success(), "capture --steps 2 alongside the tool: {}", String::from_utf8_lossy(&o.stderr));
    let t = t.expect("the window's capture");
    let steps = scopes_named(&t, "dit.step ");
    let want: u64 = steps.iter().map(|s| per_step[&s.name]).sum();
    assert_eq!(kernels(&t).len() as u64, want, "the window's capture is exact");
    assert_eq!(summary_of(&t, "cupti_multi_subscriber_subscriptions"), 1);
    assert_eq!(summary_of(&t, "buffers_foreign"), 0);
    assert_eq!(status_json(pid)["cupti_multi_subscriber"], false, "unsubscribed when the window closed");
    let status = w.run.wait().unwrap();
    let text = output_thread.join().unwrap();
    w.pid = None;
    assert!(status.success(), "{text}");
    let (lent, returned, seen, intact) = activity_client_report(&text);
    assert_eq!((seen, returned, intact), (replayed_kernels(&text), lent, true), "the tool lost nothing to the window: {text}");

    // A tool that took CUPTI in single mode is named.
    let out = tempfile::tempdir().unwrap();
    let (mut w, output_thread) = start_worker_with(out.path(), &["--activity-client=single-subscriber"], &[CUPTI]);
    let pid = w.pid.unwrap();
    let d = tempfile::tempdir().unwrap();
    let (o, t) = capture(pid, &["--steps", "2"], d.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("CUPTI for torch.profiler"), "the holder is named: {e}");
    assert!(t.is_none());
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = w.run.wait();
    let _ = output_thread.join();
    w.pid = None;
}

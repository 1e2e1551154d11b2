//! `fork` inside a profiled worker (issue 11, item 3): the child starts with the agent
//! inactive (no inherited CUPTI session, queues, threads or control socket) and exits
//! without touching the parent's capture; a fork while the agent is activating leaves a
//! child that does not wait for that activation.

use crate::util::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `python/examples/sim_worker.py ARGS` under `gpuspan run --mode fine --sim`, writing into
/// `out`.
fn forking_worker(out: &Path, args: &[&str]) -> std::process::Output {
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/examples/sim_worker.py");
    output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(out)
            .arg("--")
            .arg(python_exe())
            .arg(&worker)
            .args(args),
    )
}

/// A Python worker forks inside step 1; the child finds the agent inactive and exits
/// through its exit handlers; the parent's capture holds every kernel the parent launched,
/// in its scopes, and is the only capture.
#[test]
fn forked_child_is_inactive_and_the_parents_capture_is_intact() {
    let out = tempfile::tempdir().unwrap();
    let o = forking_worker(out.path(), &["--steps", "3", "--requests", "2", "--fork-at-step", "1"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("child active=0"), "the child is inactive: {stdout}");
    assert!(stdout.contains("forked child exited 0"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let launched: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("launched ")?.strip_suffix(" kernels")?.parse().ok())
        .unwrap_or_else(|| panic!("no launched line: {stdout}"));
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("the parent's capture");
    assert_eq!(t.kernels().count(), launched, "every kernel of the parent");
    assert!(t.kernels().all(|k| k.scope.is_some() && k.trace_id.is_some()), "all in their scopes");
    assert!(!t.events.iter().any(|e| e.name == "child.stage"), "nothing of the child's");
}

/// The child of a fine-mode worker (whose agent installed its SIGTERM flag handler) still
/// dies of SIGTERM: the handler is reset in the child, where no collector thread would
/// read the flag.
#[test]
fn a_forked_child_still_dies_of_sigterm() {
    let out = tempfile::tempdir().unwrap();
    let o = forking_worker(out.path(), &["--steps", "2", "--requests", "1", "--fork-at-step", "0", "--child-sigterm"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains(&format!("forked child exited -{}", libc::SIGTERM)), "killed by SIGTERM: {stdout}");
}

/// One thread starts the agent (the simulated CUPTI takes 400 ms to answer
/// `cuptiGetVersion`, `GPUSPAN_SIM_FAULT=slow_cupti`) while another forks; the child's
/// first gpuspan call must answer at once (inactive) instead of waiting for an activation
/// that no thread of the child will ever finish. Bounded: the parent gives the child 5 s.
#[test]
fn fork_during_activation_does_not_hang_the_child() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = r#"
import ctypes, os, sys, threading, time
lib = ctypes.CDLL(None)
lib.gpuspan_is_active.restype = ctypes.c_int
t = threading.Thread(target=lib.gpuspan_is_active)
t.start()
time.sleep(0.15)
pid = os.fork()
if pid == 0:
    t0 = time.monotonic()
    active = lib.gpuspan_is_active()
    print(f"child active={active} after {time.monotonic() - t0:.3f} s", flush=True)
    os._exit(0)
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.02)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("child hung", flush=True)
    sys.exit(1)
t.join()
print(f"parent active={lib.gpuspan_is_active()}", flush=True)
"#;
    let t0 = Instant::now();
    let o = output(
        Command::new(python_exe())
            .args(["-c", script])
            .env("LD_PRELOAD", artifact("libgpuspan.so"))
            .env("LD_LIBRARY_PATH", sim.path())
            .env("GPUSPAN_SIM_FAULT", "slow_cupti")
            .env("GPUSPAN_MODE", "coarse")
            .env("GPUSPAN_OUT", out.path())
            .env_remove("NVTX_INJECTION64_PATH")
            .env_remove("CUDA_INJECTION64_PATH"),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("child active=0"), "the child answers, inactive: {stdout}");
    assert!(stdout.contains("parent active=1"), "the parent's activation finished: {stdout}\n{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(10), "bounded");
}

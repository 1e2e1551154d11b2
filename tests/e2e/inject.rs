//! The agent injected with LD_PRELOAD where it cannot work: the host program behaves exactly
//! as without it, and the agent says once why it is inactive; and where it has nothing to
//! do (no CUDA, no NVTX, no gpuspan API): it does not activate at all.

use crate::util::*;
use std::process::Command;

/// A worker that emits one NVTX range through NVIDIA's NVTX library (which activates the
/// agent), prints `msg` and exits with `code`.
fn nvtx_worker(nvtx: &std::path::Path, msg: &str, code: i32) -> Vec<String> {
    let script = format!(
        "import ctypes, sys\nl = ctypes.CDLL({nvtx:?})\nl.nvtxRangePushA(b'request')\nl.nvtxRangePop()\nprint({msg:?})\nsys.exit({code})\n",
        nvtx = nvtx.display().to_string()
    );
    vec!["-c".into(), script]
}

/// Runs `program args` with `env`, with and without the agent; returns (without, with).
fn with_and_without(program: &str, args: &[&str], env: &[(&str, String)]) -> (std::process::Output, std::process::Output) {
    let base = || {
        let mut c = Command::new(program);
        c.args(args).env_remove("LD_PRELOAD").env_remove("NVTX_INJECTION64_PATH");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    };
    let without = output(&mut base());
    let with = output(base().env("LD_PRELOAD", artifact("libgpuspan.so")).env("GPUSPAN_MODE", "fine"));
    (without, with)
}

fn assert_same_and_one_warning(without: &std::process::Output, with: &std::process::Output, reason: &str) {
    assert_eq!(with.status.code(), without.status.code(), "exit code unchanged");
    // The replay worker's `sim cupti:` line counts the agent's CUPTI calls, and its `worker
    // thread cpu_ns` line is a measurement: the lines allowed to differ.
    let worker_lines = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with("sim cupti:") && !l.starts_with("worker thread cpu_ns"))
            .map(String::from)
            .collect()
    };
    assert_eq!(worker_lines(with), worker_lines(without), "stdout unchanged");
    let err = String::from_utf8_lossy(&with.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("gpuspan:")).collect();
    assert_eq!(ours.len(), 1, "one agent line, got {err:?}");
    assert!(ours[0].contains("inactive"), "says it is inactive: {err:?}");
    assert!(ours[0].contains(reason), "says why ({reason}): {err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
}

#[test]
fn no_cuda_libraries_at_all() {
    let Some(nvtx) = real_nvtx_lib() else { return };
    let empty = tempfile::tempdir().unwrap();
    // NVTX from outside any site-packages: the agent looks for a CUPTI wheel next to the
    // Python packages the process has mapped, and the venv's nvidia-nvtx-cu12 sits beside
    // nvidia-cuda-cupti-cu12.
    let nvtx_copy = empty.path().join("libnvtx3interop.so.1");
    std::fs::copy(&nvtx, &nvtx_copy).unwrap();
    let nvtx = nvtx_copy;
    let args = nvtx_worker(&nvtx, "hello from the worker", 3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (without, with) = with_and_without("python3", &args, &[("LD_LIBRARY_PATH", empty.path().display().to_string())]);
    assert_eq!(without.status.code(), Some(3));
    assert_same_and_one_warning(&without, &with, "no CUPTI library found");
}

#[test]
fn real_libcupti_without_a_driver() {
    let Some(dir) = real_cupti_lib_dir() else {
        // scripts/test.sh installs the wheel; only a bare `cargo test` lacks it.
        assert!(std::env::var_os("CI").is_none(), "CI must have the nvidia-cuda-cupti-cu12 wheel (scripts/test.sh)");
        eprintln!("skipping: nvidia-cuda-cupti-cu12 wheel not installed (run scripts/test.sh)");
        return;
    };
    let Some(nvtx) = real_nvtx_lib() else { return };
    let args = nvtx_worker(&nvtx, "real cupti", 0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (without, with) = with_and_without("python3", &args, &[("LD_LIBRARY_PATH", dir.display().to_string())]);
    // The real CUPTI loads, but with no driver beside it no CUPTI function is called
    // (CUPTI 13.2's `cuptiGetVersion` overflows the stack without one; 12.9's would
    // answer and `cuptiSubscribe` return 15).
    assert_same_and_one_warning(&without, &with, "no CUDA driver library (libcuda.so.1) to go with CUPTI");
}

#[test]
fn cupti_held_by_another_tool() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let replay = artifact("gpuspan-replay");
    let (without, with) = with_and_without(
        replay.to_str().unwrap(),
        &["stdit", "--steps", "2"],
        &[
            ("LD_LIBRARY_PATH", sim.path().display().to_string()),
            ("GPUSPAN_SIM_FAULT", "cupti_subscribed".to_string()),
        ],
    );
    assert_eq!(without.status.code(), Some(0), "{}", String::from_utf8_lossy(&without.stderr));
    assert_same_and_one_warning(&without, &with, "held by another tool");
}

/// `CUDA_INJECTION64_PATH` alone (no LD_PRELOAD): the simulated driver loads the agent in
/// `cuInit` and calls `InitializeInjection`, and the capture holds every kernel.
#[test]
fn cuda_injection64_path_alone() {
    let sim = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let o = output(
        Command::new(artifact("gpuspan-replay"))
            .args(["stdit", "--steps", "2"])
            .env_remove("LD_PRELOAD")
            .env_remove("NVTX_INJECTION64_PATH")
            .env("LD_LIBRARY_PATH", sim.path())
            .env("CUDA_INJECTION64_PATH", artifact("libgpuspan.so"))
            .env("GPUSPAN_MODE", "fine")
            .env("GPUSPAN_OUT", out.path()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("capture written");
    // The replay worker prints `replayed N kernels, ...`.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let launched: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("replay summary: {stdout}"));
    assert_eq!(t.kernels().count(), launched, "every launched kernel captured");
    // The whole generation runs inside `gpuspan.request`: every kernel has a scope, which
    // needs the NVTX injection the agent set up from inside `cuInit`.
    assert!(t.kernels().all(|k| k.scope.is_some() && k.trace_id.is_some()), "kernels attributed to scopes");    // Not preloaded, so no interposer keeps another client from registering its own buffers:
    // the agent leaves CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER alone, and CUPTI zeroes
    // every buffer itself, on the worker's thread.
    let cupti = sim_cupti(&o);
    assert!(cupti["buffers_zeroed_by_cupti"] > 0, "{cupti:?}");
    assert_eq!(cupti["buffers_lent_dirty"], 0, "{cupti:?}");
}

/// Preloaded, the agent tells CUPTI its buffers come zeroed
/// (`CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER`), so CUPTI zeroes none on the worker's
/// thread, and every buffer it lends, recycled here (a pool of 4 buffers of 256 KiB for
/// a few MB of records), is zero where CUPTI will write: the pool zeroes what each use
/// wrote.
#[test]
fn preloaded_agent_lends_zeroed_buffers_and_cupti_zeroes_none() {
    let sim = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let o = output(
        preload_agent(Command::new(artifact("gpuspan-replay")).args(["stdit", "--steps", "4"]), sim.path(), "fine", out.path())
            .env("GPUSPAN_BUFFER_BYTES", "262144")
            .env("GPUSPAN_MAX_BUFFERS", "4"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cupti = sim_cupti(&o);
    assert_eq!(cupti["buffers_zeroed_by_cupti"], 0, "{cupti:?}");
    assert_eq!(cupti["buffers_lent_dirty"], 0, "a recycled buffer was lent with stale bytes: {cupti:?}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("capture written");
    assert!(t.kernels().count() > 1000, "{} kernels", t.kernels().count());
}

/// `LD_PRELOAD=libgpuspan.so` on processes that never initialise CUDA, call NVTX or call
/// the gpuspan API (a shell running 40 commands, a Python that imports nothing of ours):
/// with the simulated driver and CUPTI on the library path and fine mode asked for, none of
/// them activates: no line on stderr, no file in `GPUSPAN_OUT`, no thread of ours.
#[test]
fn processes_without_cuda_are_left_untouched() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let preloaded = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.args(args)
            .env_remove("NVTX_INJECTION64_PATH")
            .env_remove("CUDA_INJECTION64_PATH")
            .env("LD_PRELOAD", artifact("libgpuspan.so"))
            .env("LD_LIBRARY_PATH", sim.path())
            .env("GPUSPAN_MODE", "fine")
            .env("GPUSPAN_LOG", "info")
            .env("GPUSPAN_OUT", out.path());
        output(&mut c)
    };
    let script = "for i in $(seq 1 20); do ls / > /dev/null; cat /proc/self/status > /dev/null; done; echo done";
    let o = preloaded("/bin/sh", &["-c", script]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "done");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "nothing on stderr");

    let o = preloaded("python3", &["-c", "import os; print(len(os.listdir('/proc/self/task')))"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1", "a non-CUDA Python keeps its one thread");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "nothing on stderr");

    let written: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(written.is_empty(), "no file written: {written:?}");
}

/// `replayed N kernels` from a replay worker's stdout.
fn replayed(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("replayed ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `replayed N kernels` line: {stdout}"))
}

/// Two simulated workers started by one `gpuspan run` through a shell, as a launcher starts
/// one process per GPU: each leaves its own complete `capture-<pid>.json.gz`, the shell
/// none, and `gpuspan stats DIR` reads both as one.
#[test]
fn sibling_workers_each_write_their_own_capture() {
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let replay = artifact("gpuspan-replay");
    let (a, b) = (logs.path().join("a.txt"), logs.path().join("b.txt"));
    let script = format!(
        "'{r}' stdit --steps 2 > '{a}' & '{r}' stdit --steps 3 > '{b}'; wait",
        r = replay.display(),
        a = a.display(),
        b = b.display()
    );
    let o = output(gpuspan().args(["run", "--mode", "fine", "--sim", "--out"]).arg(out.path()).args(["--", "/bin/sh", "-c", &script]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (na, nb) = (replayed(&std::fs::read_to_string(&a).unwrap()), replayed(&std::fs::read_to_string(&b).unwrap()));
    assert_ne!(na, nb, "the two workers ran different step counts");
    let captures = captures_in(out.path());
    assert_eq!(captures.len(), 2, "one capture per worker, none for the shell: {captures:?}");
    let mut counts: Vec<usize> = captures
        .iter()
        .map(|c| gpuspan_export::read_trace(c).unwrap_or_else(|e| panic!("{e}")).kernels().count())
        .collect();
    counts.sort();
    let mut want = vec![na, nb];
    want.sort();
    assert_eq!(counts, want, "each capture complete");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for c in &captures {
        assert!(stderr.contains(&c.display().to_string()), "run names every capture: {stderr}");
    }
    let s = stats_json(out.path());
    assert_eq!(s.kernel_count as usize, na + nb, "stats reads the directory as one");
}

//! The agent injected with LD_PRELOAD where it cannot work: the host program behaves exactly
//! as without it, and the agent says once why it is inactive.

use crate::util::*;
use std::process::Command;

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
    assert_eq!(with.stdout, without.stdout, "stdout unchanged");
    let err = String::from_utf8_lossy(&with.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("gpuspan:")).collect();
    assert_eq!(ours.len(), 1, "one agent line, got {err:?}");
    assert!(ours[0].contains("inactive"), "says it is inactive: {err:?}");
    assert!(ours[0].contains(reason), "says why ({reason}): {err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
}

#[test]
fn no_cuda_libraries_at_all() {
    let empty = tempfile::tempdir().unwrap();
    let (without, with) = with_and_without(
        "/bin/sh",
        &["-c", "echo hello from the worker; exit 3"],
        &[("LD_LIBRARY_PATH", empty.path().display().to_string())],
    );
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
    let (without, with) = with_and_without(
        "/bin/sh",
        &["-c", "echo real cupti; exit 0"],
        &[("LD_LIBRARY_PATH", dir.display().to_string())],
    );
    // CUPTI 12.9 without a driver: cuptiGetVersion works, cuptiSubscribe returns 15.
    assert_same_and_one_warning(&without, &with, "CUPTI_ERROR_NOT_INITIALIZED");
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
    let t = gpuspan_export::read_trace(&out.path().join("capture.json.gz")).expect("capture written");
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
    assert!(t.kernels().all(|k| k.scope.is_some() && k.trace_id.is_some()), "kernels attributed to scopes");
}

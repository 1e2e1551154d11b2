//! How the agent leaves a worker (issue 11, item 3): SIGTERM during fine collection still
//! leaves a readable capture of what was collected, marked partial, and the worker still
//! dies of SIGTERM.

use crate::util::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn sigterm_during_fine_collection_leaves_a_partial_capture() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/examples/sim_worker.py");
    let mut child = Command::new(python_exe())
        .arg(&worker)
        .args(["--steps", "20", "--requests", "200"])
        .env("LD_PRELOAD", artifact("libgpuspan.so"))
        .env("LD_LIBRARY_PATH", sim.path())
        .env("GPUSPAN_MODE", "fine")
        .env("GPUSPAN_OUT", out.path())
        .env_remove("NVTX_INJECTION64_PATH")
        .env_remove("CUDA_INJECTION64_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two requests done: then SIGTERM, as a pod eviction would send.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut done = 0;
    for l in lines.by_ref() {
        if l.unwrap().starts_with("request ") {
            done += 1;
            if done == 2 {
                break;
            }
        }
    }
    assert_eq!(done, 2, "the worker ran two requests");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "the worker still dies of SIGTERM: {status:?}\n{stderr}");
    assert!(stderr.contains("SIGTERM: wrote what was collected"), "{stderr}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("a readable capture");
    let summary = t.events.iter().find(|e| e.name == "gpuspan.summary").expect("summary");
    assert_eq!(summary.extra_args.get("gpuspan.partial").and_then(|v| v.as_u64()), Some(1), "marked partial");
    let requests: std::collections::BTreeSet<&str> = t.kernels().filter_map(|k| k.trace_id.as_deref()).collect();
    assert!(requests.len() >= 2, "at least the two finished requests' kernels: {}", requests.len());
    assert!(requests.len() < 200, "not the whole run");
}

//! NVTX as real workers use it, through NVIDIA's own NVTX library (`libnvtx3interop.so.1`
//! of the `nvidia-nvtx-cu12` wheel) injected with `libgpuspan.so`: wide (`W`) names,
//! domain ranges with ASCII / wide / registered-string messages, and another library's
//! domain (NCCL's) whose ranges interleave with ours. `python/examples/sim_worker.py --nvtx`.

use crate::util::{artifact, capture_in, gpuspan, output, python_exe, real_nvtx_lib};
use gpuspan_export::read_trace;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const STAGES: [&str; 6] = ["attention.spatial", "attention.temporal", "attention.cross", "ffn", "norm", "vae.decode"];

/// Every kernel lands in its stage and step although the step names are wide strings, the
/// stages are `gpuspan`-domain ranges named three ways, and an NCCL-domain range opened
/// before each step's first stage is closed inside it: NCCL's pop closes nothing of ours,
/// and NCCL's ranges are no scopes.
#[test]
fn wide_names_domains_and_foreign_domain_ranges() {
    let Some(nvtx) = real_nvtx_lib() else { return };
    let _ = artifact("libgpuspan.so");
    let out = tempfile::tempdir().unwrap();
    let worker = repo().join("python/examples/sim_worker.py");
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(python_exe())
            .arg(&worker)
            .args(["--steps", "3", "--requests", "2", "--nvtx"])
            .arg(&nvtx),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let launched: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("launched ")?.strip_suffix(" kernels")?.parse().ok())
        .unwrap_or_else(|| panic!("no launched line: {stdout}"));

    let t = read_trace(&capture_in(out.path())).expect("capture written");
    assert_eq!(t.kernels().count(), launched, "every kernel captured");
    let mut per_trace: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut per_stage: BTreeMap<&str, usize> = BTreeMap::new();
    for k in t.kernels() {
        let scope = k.scope.as_deref().unwrap_or_else(|| panic!("kernel outside any stage: {k:?}"));
        assert!(STAGES.contains(&scope), "kernel in stage scope, got {scope:?}: {k:?}");
        *per_stage.entry(scope).or_default() += 1;
        let trace = k.trace_id.as_deref().expect("kernel in a request");
        match k.step.as_deref() {
            Some(s) => {
                per_trace.entry(trace).or_default().insert(s);
            }
            None => assert_eq!(scope, "vae.decode", "only the VAE decode runs outside the steps"),
        }
    }
    assert_eq!(per_trace.len(), 2, "two requests: {per_trace:?}");
    for steps in per_trace.values() {
        let steps: Vec<&str> = steps.iter().copied().collect();
        assert_eq!(steps, ["dit.step 0/3", "dit.step 1/3", "dit.step 2/3"], "wide step names");
    }
    // sim_worker's STEP_PLAN: 2 spatial, 1 temporal, 1 cross, 2 ffn, 1 norm per step; 4 VAE.
    let want = [("attention.spatial", 12), ("attention.temporal", 6), ("attention.cross", 6), ("ffn", 12), ("norm", 6), ("vae.decode", 8)];
    assert_eq!(per_stage, want.into_iter().collect::<BTreeMap<_, _>>(), "kernels per stage");
    let names: BTreeSet<&str> = t.events.iter().map(|e| e.name.as_str()).collect();
    assert!(!names.contains("ncclAllReduce"), "NCCL's domain ranges are not scopes");
}

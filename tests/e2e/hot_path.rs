//! The application-thread hot path allocates nothing after warm-up (issue 14, item 5): a C
//! worker (`tests/e2e/workers/hot_path_allocs.c`) runs a million NVTX range pairs, through
//! NVIDIA's own NVTX v3 loader, and C-ABI stage scopes, nested, in coarse and in fine mode,
//! and counts the allocations libgpuspan.so makes on that thread (interposed malloc, caller
//! named by `dladdr`). Coarse mode runs twice: back to back (the event pool runs dry, the
//! CPU fallback and the drop paths) and paced (every boundary records CUDA events).

use crate::util::*;
use std::path::Path;
use std::process::Command;

/// `(probe, warm-up, hot)` allocation counts of the worker's output.
fn counts(stdout: &str) -> (u64, u64, u64) {
    let probe = stdout.lines().find_map(|l| l.strip_prefix("probe allocations ")?.parse().ok());
    let warm = stdout.lines().find_map(|l| l.strip_prefix("warm-up allocations ")?.parse().ok());
    let hot = stdout.lines().find_map(|l| l.strip_prefix("hot allocations ")?.split(' ').next()?.parse().ok());
    let get = |v: Option<u64>| v.unwrap_or_else(|| panic!("{stdout}"));
    (get(probe), get(warm), get(hot))
}

#[test]
fn nvtx_and_c_abi_scopes_allocate_nothing_after_warm_up() {
    let Some(nvtx_lib) = real_nvtx_lib() else { return };
    // The wheel's header-only NVTX v3 loader: site-packages/nvidia/nvtx/include.
    let include = nvtx_lib.parent().and_then(Path::parent).unwrap().join("include");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("hot_path_allocs");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/workers/hot_path_allocs.c");
    compile_c(&src, &exe, &["-I", include.to_str().unwrap(), "-rdynamic"]);
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    // Back to back, a million pairs outrun the collector: the 4096-event pool runs dry and
    // most boundaries take the CPU fallback (or are dropped when the ring is full). Paced
    // (10 ms after every 500 pairs, 2000 boundaries), the pool never runs dry and every
    // boundary records its CUDA events: the path a worker's scopes take.
    for (mode, args) in [("coarse", &["1000000"][..]), ("coarse", &["100000", "500", "10000"][..]), ("fine", &["1000000"][..])] {
        let paced = args.len() > 1;
        let out = tempfile::tempdir().unwrap();
        let o = output(preload_agent(Command::new(&exe).args(args), sim.path(), mode, out.path()));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{mode}: {stdout}\n{stderr}");
        let (probe, warm, hot) = counts(&stdout);
        println!(
            "{mode}{}: {probe} allocations by the agent to register an NVTX string, {warm} in 1000 warm-up pairs, {hot} in {} pairs; event pool ran dry: {}",
            if paced { " (paced)" } else { "" },
            args[0],
            stderr.contains("was exhausted")
        );
        assert!(probe > 0, "{mode}: the counter saw no allocation of the agent's NVTX string registration (it would see none anywhere)");
        assert_eq!(hot, 0, "{mode}: the agent allocated on the application thread after warm-up\n{stderr}");
        if paced {
            assert!(!stderr.contains("was exhausted") && !stderr.contains("dropped"), "paced: every boundary should have had its events\n{stderr}");
        }
    }
}

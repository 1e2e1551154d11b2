//! `gpuspan-replay --cuda-graph` on the simulator alone (no agent): the worker binary run
//! with the sim installed under the NVIDIA sonames (`install::install` + `LD_LIBRARY_PATH`,
//! as the e2e tests do), and the same executor in-process with CUPTI records read back
//! from the sim, so the graph launches are seen as the sim reports them.

use gpuspan_simgpu::install;
use gpuspan_simgpu::workload::exec::{execute_with, ExecOptions};
use gpuspan_simgpu::workload::graph_plan;
use gpuspan_simgpu::workload::preset::preset;
use libloading::Library;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

fn sim_lib() -> PathBuf {
    install::find_sim_lib().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("debug").join(install::SIM_LIB_NAME)
    })
}

/// Runs the replay worker on the installed sim: (exit code, stdout, stderr).
fn replay(args: &[&str]) -> (i32, String, String) {
    replay_env(args, &[])
}

/// [`replay`] with extra environment variables.
fn replay_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("gpuspan-replay-graph-{}-{n}", std::process::id()));
    install::install(&dir, &sim_lib()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuspan-replay"));
    cmd.args(args).envs(install::sim_env(&dir));
    for v in [
        "CUDA_INJECTION64_PATH",
        "NVTX_INJECTION64_PATH",
        "LD_PRELOAD",
        "GPUSPAN_SIM_FAULT",
    ] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let o = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn kernels_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("replayed "))
        .unwrap_or_else(|| panic!("no replayed line in {stdout}"))
}

#[test]
fn stdit_cuda_graph_replays_the_same_kernels() {
    let (rc, plain, err) = replay(&["stdit", "--steps", "4"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, graph, err) = replay(&["stdit", "--steps", "4", "--cuda-graph"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        kernels_line(&graph),
        kernels_line(&plain),
        "same kernels, memcpys and memsets"
    );
    assert!(
        graph
            .lines()
            .any(|l| l == "cuda graph: captured=1 launches=4"),
        "{graph}"
    );
    assert!(!plain.contains("cuda graph:"));
}

#[test]
fn a_failed_capture_names_the_driver_error() {
    let (rc, out, err) = replay_env(
        &["stdit", "--steps", "2", "--cuda-graph"],
        &[("GPUSPAN_SIM_FAULT", "capture_invalidated")],
    );
    assert_eq!(rc, 1, "{out}");
    assert!(
        err.contains("cuStreamEndCapture failed with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (901)"),
        "{err}"
    );
}

#[test]
fn cuda_graph_refusals_exit_2() {
    let (rc, _, err) = replay(&[
        "stdit",
        "--steps",
        "2",
        "--cuda-graph",
        "--slow-step",
        "1:2",
    ]);
    assert_eq!(rc, 2);
    assert!(err.contains("--slow-step"), "{err}");
    let bert = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/traces/h100-bert-small.json.gz"
    ));
    if bert.is_file() {
        let (rc, out, err) = replay(&[bert.to_str().unwrap(), "--cuda-graph"]);
        assert_eq!(rc, 2, "{out}");
        assert!(
            err.contains("--cuda-graph: step \"ProfilerStep#") && err.contains("DtoH"),
            "{err}"
        );
    }
}

// --- in-process: the executor against the dlopened sim, with CUPTI records -------------

static RECORDS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn lib() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    // SAFETY: loading our own cdylib; its initializers are Rust statics only.
    LIB.get_or_init(|| unsafe { Library::new(sim_lib()) }.unwrap())
}

extern "C" fn request(buf: *mut *mut u8, size: *mut usize, max: *mut usize) {
    // SAFETY: out-pointers from the sim; a non-zero-sized layout.
    unsafe {
        *buf = alloc_zeroed(Layout::from_size_align(1 << 22, 8).unwrap());
        *size = 1 << 22;
        *max = 0;
    }
}

extern "C" fn complete(_ctx: *mut c_void, _stream: u32, buf: *mut u8, size: usize, valid: usize) {
    // SAFETY: the sim's `cuptiActivityGetNextRecord`, with its C prototype.
    let next = unsafe {
        *lib()
            .get::<unsafe extern "C" fn(*mut u8, usize, *mut *mut c_void) -> u32>(
                b"cuptiActivityGetNextRecord\0",
            )
            .unwrap()
    };
    let mut rec: *mut c_void = std::ptr::null_mut();
    let mut starts = Vec::new();
    // SAFETY: a buffer from `request` with `valid` bytes, handed back by the sim.
    while unsafe { next(buf, valid, &mut rec) } == 0 {
        starts.push(rec as usize);
    }
    let mut out = RECORDS.lock().unwrap();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(buf as usize + valid);
        // SAFETY: [s, e) lies in the valid part of the buffer.
        out.push(unsafe { std::slice::from_raw_parts(s as *const u8, e - s) }.to_vec());
    }
    // SAFETY: allocated in `request` with this layout.
    unsafe { dealloc(buf, Layout::from_size_align(size, 8).unwrap()) };
}

fn u32_at(r: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(r[off..off + 4].try_into().unwrap())
}
fn u64_at(r: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(r[off..off + 8].try_into().unwrap())
}

#[test]
fn graph_launched_steps_produce_graph_kernel_records() {
    type Req = extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Done = extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);
    // SAFETY: the sim's CUPTI exports with their cupti_activity.h prototypes.
    unsafe {
        let reg = *lib()
            .get::<unsafe extern "C" fn(Req, Done) -> u32>(b"cuptiActivityRegisterCallbacks\0")
            .unwrap();
        let enable = *lib()
            .get::<unsafe extern "C" fn(u32) -> u32>(b"cuptiActivityEnable\0")
            .unwrap();
        assert_eq!(reg(request, complete), 0);
        assert_eq!(enable(10), 0, "CONCURRENT_KERNEL");
        assert_eq!(enable(4), 0, "DRIVER");
    }
    let steps = 3;
    let w = preset("stdit", steps, 1).unwrap();
    let plan = graph_plan::plan(&w).unwrap();
    let per_step = plan.regions[0].kernels;
    let s = execute_with(
        lib(),
        &w,
        &ExecOptions {
            cuda_graph: true,
            ..ExecOptions::default()
        },
    )
    .unwrap();
    assert_eq!((s.graphs_captured, s.graph_launches), (1, steps as u64));
    assert_eq!(s.kernels, w.summary().kernel_count);
    // SAFETY: `cuptiActivityFlushAll(uint32_t)`.
    unsafe {
        let flush = *lib()
            .get::<unsafe extern "C" fn(u32) -> u32>(b"cuptiActivityFlushAll\0")
            .unwrap();
        assert_eq!(flush(0), 0);
    }
    let recs = std::mem::take(&mut *RECORDS.lock().unwrap());
    let kernels: Vec<&Vec<u8>> = recs.iter().filter(|r| u32_at(r, 0) == 10).collect();
    assert_eq!(
        kernels.len() as u64,
        s.kernels,
        "the sim ran every kernel once"
    );
    let launches: HashSet<u32> = recs
        .iter()
        .filter(|r| u32_at(r, 0) == 4 && u32_at(r, 4) == 514)
        .map(|r| u32_at(r, 32))
        .collect();
    assert_eq!(
        launches.len(),
        steps as usize,
        "one cuGraphLaunch (cbid 514) per step"
    );
    let mut per_launch: HashMap<u32, Vec<&Vec<u8>>> = HashMap::new();
    for k in kernels.iter().filter(|k| u32_at(k, 156) != 0) {
        per_launch.entry(u32_at(k, 92)).or_default().push(k);
    }
    assert_eq!(
        per_launch.keys().copied().collect::<HashSet<u32>>(),
        launches,
        "graph kernels carry a cuGraphLaunch correlation id"
    );
    for ks in per_launch.values() {
        assert_eq!(ks.len() as u64, per_step);
        let nodes: HashSet<u64> = ks.iter().map(|k| u64_at(k, 144)).collect();
        assert_eq!(nodes.len() as u64, per_step, "one graphNodeId per node");
        assert!(!nodes.contains(&0));
    }
    let outside = kernels.iter().filter(|k| u32_at(k, 156) == 0).count() as u64;
    assert_eq!(
        outside + per_step * steps as u64,
        s.kernels,
        "text encoder and VAE launched normally"
    );
}

//! NVTX push + pop through the agent in coarse mode, with a driver that does nothing (issue
//! 14, item 5: "at most 50 ns excluding the driver's event call").
//!
//! Compiles `benches/c/noop_driver.c` as `libcuda.so.1` (every entry point coarse mode calls
//! returns at once) and `benches/c/nvtx_pairs.c` (nested NVTX range pairs through NVIDIA's
//! header-only NVTX v3 loader from the `nvidia-nvtx-cu12` wheel, timed with the thread's CPU
//! clock), then runs the worker alternately, `RUNS` times each: `baseline` (no agent: the
//! loader's own no-op cost), `coarse` (`libgpuspan.so` preloaded, `GPUSPAN_MODE=coarse`: two
//! CUDA events recorded per scope on the legacy stream, here free; the pairs alternate a
//! root scope, `dit.step`, and a scope inside it), `coarse-nested` (the same pairs all inside
//! one enclosing request, as in a worker, where a root is one scope in thousands: a root's
//! boundary also asks whether its streams are idle) and `coarse-cpu` (a
//! one-event pool, so boundaries take the CPU-time fallback: no driver call at all). Prints
//! the median ns per push + pop pair of each and what the agent adds over the baseline,
//! against the 50 ns goal. The first boundary on a new thread allocates its ring
//! (`gpuspan_agent::thread_ring`) and registers a thread-local destructor; the 1000 warm-up
//! pairs take that and are not timed.
//!
//! The worker pauses 10 ms after every 1000 pairs (not counted: the figure is the thread's
//! CPU time), so the collector hands the events back and drains the ring between batches,
//! as in a worker that opens thousands of scopes a second, not millions. Without the pauses
//! a 4096-event pool ran dry within milliseconds and nearly every boundary of `coarse` was
//! timed by the CPU fallback (199,904 of 200,000), which is cheaper: `coarse` read about 25 %
//! low until this was seen. A run whose agent still reports an exhausted pool or dropped
//! marks is named in the output.
//!
//! Run: `cargo build --release --workspace && cargo bench --bench nvtx_push_pop` (`RUNS`,
//! default 7; `PAIRS`, default 400,000; needs gcc and the `.venv` of `scripts/test.sh`).
//! `AGENT_B=/path/to/libgpuspan.so` adds the rows `coarse-B` and `coarse-cpu-B` with that
//! library (another build, e.g. the previous commit's), interleaved with the others: a
//! change's cost side by side in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn nvtx_include() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    std::fs::read_dir(venv.join("lib")).ok()?.flatten().map(|e| e.path().join("site-packages/nvidia/nvtx/include")).find(|p| p.is_dir())
}

fn gcc(args: &[&str]) {
    let o = Command::new("gcc").args(args).output().expect("gcc");
    assert!(o.status.success(), "gcc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let pairs: u64 = std::env::var("PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(400_000);
    let exe = std::env::current_exe().expect("bench exe");
    let deps = exe.parent().expect("deps");
    let dir = if deps.ends_with("deps") { deps.parent().unwrap() } else { deps };
    let agent = dir.join("libgpuspan.so");
    let Some(include) = nvtx_include() else {
        eprintln!("nvtx_push_pop: the nvidia-nvtx-cu12 wheel is not in .venv: run scripts/test.sh first");
        std::process::exit(2);
    };
    if !agent.exists() {
        eprintln!("nvtx_push_pop: {} missing: run `cargo build --release --workspace` first", agent.display());
        std::process::exit(2);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/c");
    let driver = tmp.path().join("libcuda.so.1");
    let worker = tmp.path().join("nvtx_pairs");
    gcc(&["-O2", "-shared", "-fPIC", "-o", driver.to_str().unwrap(), src.join("noop_driver.c").to_str().unwrap()]);
    gcc(&["-O2", "-I", include.to_str().unwrap(), "-o", worker.to_str().unwrap(), src.join("nvtx_pairs.c").to_str().unwrap(), "-ldl"]);
    let out = tempfile::tempdir().expect("tempdir");
    let agent_b = std::env::var_os("AGENT_B").map(PathBuf::from);
    let mut modes: Vec<(&str, Option<&str>, &Path)> = vec![
        ("baseline", None, agent.as_path()),
        ("coarse", Some("4096"), agent.as_path()),
        ("coarse-nested", Some("4096"), agent.as_path()),
        ("coarse-cpu", Some("1"), agent.as_path()),
    ];
    if let Some(b) = &agent_b {
        modes.push(("coarse-B", Some("4096"), b.as_path()));
        modes.push(("coarse-cpu-B", Some("1"), b.as_path()));
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut starved: Vec<&str> = Vec::new();
    for _ in 0..runs {
        for (i, (_, pool, lib)) in modes.iter().enumerate() {
            let mut c = Command::new(&worker);
            c.args([pairs.to_string().as_str(), "1000", "10000"])
                .env("LD_LIBRARY_PATH", tmp.path())
                .env_remove("LD_PRELOAD")
                .env_remove("NVTX_INJECTION64_PATH")
                .env_remove("NVTX_PAIRS_OUTER");
            if modes[i].0 == "coarse-nested" {
                c.env("NVTX_PAIRS_OUTER", "request");
            }
            if let Some(pool) = pool {
                c.env("LD_PRELOAD", lib)
                    .env("GPUSPAN_MODE", "coarse")
                    .env("GPUSPAN_EVENT_POOL", pool)
                    .env("GPUSPAN_OUT", out.path())
                    .env("GPUSPAN_LOG", "warn")
                    .env("GPUSPAN_CONTROL", "off")
                    .env_remove("GPUSPAN_METRICS_ADDR")
                    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
            }
            let o = c.output().expect("worker");
            assert!(o.status.success(), "{}: {}", modes[i].0, String::from_utf8_lossy(&o.stderr));
            // The one-event pool runs dry by design; the others must not.
            let stderr = String::from_utf8_lossy(&o.stderr);
            if *pool != Some("1") && (stderr.contains("was exhausted") || stderr.contains("dropped")) && !starved.contains(&modes[i].0) {
                starved.push(modes[i].0);
            }
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("worker's JSON line");
            ns[i].push(v["thread_cpu_ns"].as_f64().unwrap() / v["pairs"].as_f64().unwrap());
        }
    }
    let med: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    for m in &starved {
        println!("  note: a {m} run ran its event pool dry or dropped marks: its figure mixes in the CPU fallback");
    }
    println!("nvtx_push_pop: {pairs} push + pop pairs per run, {runs} runs per mode, median thread CPU per pair:");
    for (i, (name, _, _)) in modes.iter().enumerate() {
        println!("  {name:<14} {:>7.1} ns", med[i]);
    }
    for (i, (name, _, _)) in modes.iter().enumerate().skip(1) {
        let added = med[i] - med[0];
        println!(
            "  {name} adds {added:.1} ns per pair over the baseline ({:.1}x the baseline); goal <= 50 ns: {}",
            med[i] / med[0],
            if added <= 50.0 { "met" } else { "NOT met" }
        );
    }
}

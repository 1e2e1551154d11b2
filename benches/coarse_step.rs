//! Added CPU time per DiT step on the application thread, by collection mode (issue 5:
//! "its per-step added CPU time on the app thread is reported by a bench").
//!
//! The bench re-runs itself as a worker process on the simulated H100 (virtual clock): the
//! `stdit` preset through the driver API, its scopes announced with NVTX and its stream
//! named with `gpuspan_use_streams`, with `libgpuspan.so` preloaded in mode `off`, `coarse`
//! and `fine`, alternating, `RUNS` times each. Each worker measures its own thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) around the whole workload, so the agent's collector, exporter
//! and CUPTI threads are not counted; the difference from `off` in the same run is what the
//! mode adds on the application thread. The simulated driver's own calls cost the same
//! CPU in every mode except for the calls each mode adds (coarse: two `cuEventRecord` per
//! scope; fine: CUPTI's callbacks), which are counted in. The simulator serializes every
//! driver call on one mutex that the agent's collector thread also takes (its event
//! queries), so its event calls cost more than a real driver's; `coarse-cpu` (a one-event
//! pool: boundaries fall back to CPU time) isolates the agent's own code.
//!
//! Run: `cargo build --release --workspace && cargo bench --bench coarse_step`
//! (environment: `RUNS`, default 5; `STEPS`, default 10).

use std::process::Command;

/// Thread CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn child(steps: u32) {
    let w = gpuspan_simgpu::workload::preset::preset("stdit", steps, 1).expect("preset");
    let scopes = w.summary().range_push_count;
    let lib = gpuspan_simgpu::workload::exec::open_driver().expect("libcuda.so.1 (the simulator)");
    let t0 = thread_cpu_ns();
    let s = gpuspan_simgpu::workload::exec::execute(&lib, &w).expect("workload");
    let cpu = thread_cpu_ns() - t0;
    println!("{{\"thread_cpu_ns\":{cpu},\"scopes\":{scopes},\"kernels\":{}}}", s.kernels);
}

fn main() {
    let steps: u32 = std::env::var("STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    if std::env::var_os("GPUSPAN_BENCH_CHILD").is_some() {
        child(steps);
        return;
    }
    // `cargo bench` passes `--bench`; ignore arguments.
    let exe = std::env::current_exe().expect("bench exe");
    let deps = exe.parent().expect("deps");
    let dir = if deps.ends_with("deps") { deps.parent().unwrap() } else { deps };
    let agent = dir.join("libgpuspan.so");
    let sim = dir.join("libgpuspan_simgpu.so");
    if !agent.exists() || !sim.exists() {
        eprintln!(
            "coarse_step: {} or {} missing: run `cargo build --release --workspace` first",
            agent.display(),
            sim.display()
        );
        std::process::exit(2);
    }
    let simdir = tempfile::tempdir().expect("tempdir");
    gpuspan_simgpu::install::install(simdir.path(), &sim).expect("install the simulator");
    let out = tempfile::tempdir().expect("tempdir");
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    // (label, GPUSPAN_MODE, GPUSPAN_EVENT_POOL): `coarse-cpu` has a one-event pool, so nearly
    // every boundary falls back to CPU time: the agent's own hook cost without the driver's
    // event calls.
    let modes = [("off", "off", "4096"), ("coarse", "coarse", "4096"), ("coarse-cpu", "coarse", "1"), ("fine", "fine", "4096")];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut scopes = 0u64;
    for _ in 0..runs {
        for (i, (m, mode, pool)) in modes.iter().enumerate() {
            let o = Command::new(&exe)
                .env("GPUSPAN_BENCH_CHILD", "1")
                .env("STEPS", steps.to_string())
                .env("LD_PRELOAD", &agent)
                .env("NVTX_INJECTION64_PATH", &agent)
                .env("LD_LIBRARY_PATH", simdir.path())
                .env("GPUSPAN_MODE", mode)
                .env("GPUSPAN_EVENT_POOL", pool)
                .env("GPUSPAN_OUT", out.path())
                .env("GPUSPAN_LOG", "off")
                .env("GPUSPAN_CONTROL", "off")
                .env_remove("GPUSPAN_METRICS_ADDR")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("GPUSPAN_SIM_CLOCK")
                .output()
                .expect("run the worker");
            assert!(o.status.success(), "{m}: {}", String::from_utf8_lossy(&o.stderr));
            let line = String::from_utf8_lossy(&o.stdout);
            let json = line.lines().find(|l| l.starts_with("{\"thread_cpu_ns\"")).expect("worker line");
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            cpu[i].push(v["thread_cpu_ns"].as_f64().unwrap());
            scopes = v["scopes"].as_u64().unwrap();
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let med: Vec<f64> = cpu.iter_mut().map(median).collect();
    let per_step = |ns: f64| ns / steps as f64 / 1000.0;
    println!("stdit, {steps} steps, {scopes} scopes ({:.0} per step), {runs} runs per mode alternating; median app-thread CPU", scopes as f64 / steps as f64);
    println!("{:<11} {:>14} {:>16} {:>12}", "mode", "µs per step", "added µs/step", "vs off");
    for (i, (m, _, _)) in modes.iter().enumerate() {
        println!(
            "{:<11} {:>14.1} {:>16.1} {:>11.3}×",
            m,
            per_step(med[i]),
            per_step(med[i] - med[0]),
            med[i] / med[0]
        );
    }
    println!(
        "per scope (begin + end): coarse adds {:.2} µs (the hook + 2 cuEventRecord on the simulated driver), of which the hook alone (coarse-cpu) {:.2} µs",
        (med[1] - med[0]) / scopes as f64 / 1000.0,
        (med[2] - med[0]) / scopes as f64 / 1000.0
    );
}

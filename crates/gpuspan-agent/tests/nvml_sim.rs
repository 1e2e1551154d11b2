//! `gpuspan_agent::nvml` against the simulated H100's NVML (`libgpuspan_simgpu.so` installed
//! as `libnvidia-ml.so.1`), and without any NVML.
//!
//! The dynamic loader reads `LD_LIBRARY_PATH` once, at process start, so each test re-runs
//! this test binary (`--exact <its name>`) with `LD_LIBRARY_PATH` set and a marker variable
//! that makes the child run the checks; the parent asserts the child passed.

use gpuspan_agent::nvml::{device_info, start_sampler};
use gpuspan_export::metrics::{Metrics, MetricsLabels};
use gpuspan_simgpu::install;
use gpuspan_simgpu::sim::device;
use gpuspan_simgpu::workload::exec;
use gpuspan_simgpu::workload::{Op, Workload};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Set in the re-run child: which checks to run.
const CHILD: &str = "GPUSPAN_NVML_TEST_CHILD";

fn child_mode() -> Option<String> {
    std::env::var(CHILD).ok()
}

fn metrics() -> std::sync::Arc<Metrics> {
    Metrics::new(MetricsLabels {
        worker_id: "w0".into(),
        gpu_index: 0,
        gpu_type: "test-gpu".into(),
    })
}

/// A directory with the sim installed under the NVIDIA sonames.
fn sim_dir() -> tempfile::TempDir {
    let lib = install::find_sim_lib().unwrap_or_else(|| {
        panic!(
            "{} not found next to {:?} or in its parent: build it first \
             (cargo build -p gpuspan-simgpu; scripts/test.sh builds the workspace)",
            install::SIM_LIB_NAME,
            std::env::current_exe().ok()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    install::install(dir.path(), &lib).unwrap();
    dir
}

/// Re-runs test `name` of this binary as a child in `mode` with `LD_LIBRARY_PATH=libdir`.
fn rerun(name: &str, mode: &str, libdir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("LD_LIBRARY_PATH", libdir)
        .env_remove("GPUSPAN_SIM_FAULT")
        .env_remove("GPUSPAN_SIM_CLOCK")
        .env_remove("GPUSPAN_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("child {mode} ok")),
        "child {mode} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Value of the one sample `name{…gpu_index="0"…}` in Prometheus text.
fn gpu0(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("gpu_index=\"0\""))
        .collect();
    assert_eq!(lines.len(), 1, "{name} in:\n{text}");
    let v = lines[0].rsplit(' ').next().unwrap();
    v.parse()
        .unwrap_or_else(|_| panic!("value of {}", lines[0]))
}

/// A 2 s kernel: run on the sim (through its CUDA driver ABI, the same loaded library), it
/// makes NVML's last-second utilization ~100 % and temperature / power follow.
fn busy_workload() -> Workload {
    let mut w = Workload::new();
    w.ops.push(Op::Launch {
        name: "spin".into(),
        dur_ns: 2_000_000_000,
        stream: 0,
        grid: [1, 1, 1],
        block: [1, 1, 1],
        shared_mem_bytes: 0,
    });
    w
}

/// Moves the sim's virtual host clock by `ns` (a host gap: `gpuspanSimAdvanceHostNs`).
fn idle_workload(ns: u64) -> Workload {
    let mut w = Workload::new();
    w.ops.push(Op::HostGap { ns });
    w
}

fn child_sim() {
    // Held for the whole check, like a CUDA process holds libcuda: without it, the sim (one
    // object for libcuda and libnvidia-ml) is unloaded whenever nvml-wrapper drops its
    // handle, and reloaded with a fresh state.
    let driver = exec::open_driver().expect("the sim as libcuda.so.1");
    let info = device_info().expect("device_info reads the sim's NVML");
    assert_eq!((info.name.as_str(), info.driver.as_str()), (device::NAME, device::DRIVER_VERSION));
    assert_eq!((info.index, info.uuid.as_str(), info.mig.as_deref()), (0, device::UUID, None));
    assert_eq!(info.sampled, vec![0], "one device on the node, visible");
    let run = |w: &Workload| exec::execute(&driver, w).expect("workload on the sim");
    let summary = run(&busy_workload());
    assert_eq!(summary.kernels, 1);
    assert!(
        summary.virtual_clock,
        "the sim's virtual clock keeps NVML readings stable"
    );
    let m = metrics();
    let h = start_sampler(m.clone(), Duration::from_millis(20), info.sampled.clone()).expect("sampler starts");
    let text = m.encode_prometheus_text();
    for l in text.lines().filter(|l| l.starts_with("gpu_")) {
        println!("{l}");
    }

    let util = gpu0(&text, "gpu_utilization_percent");
    // The kernel covers the last 1 s but for the host costs of the calls after it (µs).
    assert!((99.0..=100.0).contains(&util), "utilization {util}");
    let u = util as u32;
    // Sim: temperature idle 33 → busy 68 °C, power 70 → 700 W, linear in utilization.
    let temp = device::IDLE_TEMP_C + (device::BUSY_TEMP_C - device::IDLE_TEMP_C) * u / 100;
    assert_eq!(gpu0(&text, "gpu_temperature_celsius"), f64::from(temp));
    let mw = device::IDLE_POWER_MW + (device::BUSY_POWER_MW - device::IDLE_POWER_MW) / 100 * u;
    assert_eq!(gpu0(&text, "gpu_power_watts"), f64::from(mw) / 1000.0);
    assert!(gpu0(&text, "gpu_power_watts") > 600.0);
    assert_eq!(
        gpu0(&text, "gpu_sm_clock_mhz"),
        f64::from(device::SM_CLOCK_MHZ)
    );
    // nvmlDeviceGetMemoryInfo_v2: `used` excludes the driver's reserved 542 MiB (the v1
    // call would report it); the workload freed its buffer.
    assert_eq!(gpu0(&text, "gpu_memory_used_bytes"), 0.0);
    assert_eq!(gpu0(&text, "gpu_memory_utilization_percent"), 0.0);
    assert!(text.contains("gpu_type=\"test-gpu\""));
    assert!(text.contains("worker_id=\"w0\""));

    // The thread keeps sampling: let the sim's (virtual) clock move 1.5 s past the kernel;
    // the next samples show the GPU going idle.
    run(&idle_workload(1_500_000_000));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = m.encode_prometheus_text();
        if gpu0(&t, "gpu_utilization_percent") == 0.0 {
            assert_eq!(
                gpu0(&t, "gpu_temperature_celsius"),
                f64::from(device::IDLE_TEMP_C)
            );
            assert_eq!(
                gpu0(&t, "gpu_power_watts"),
                f64::from(device::IDLE_POWER_MW) / 1000.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sampler never saw the GPU idle:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(h.is_running(), "sampler thread keeps running");
    assert!(
        h.stop_until(Instant::now() + Duration::from_secs(2)),
        "the sampler stops when asked (the agent finishing)"
    );
}

/// No NVML (no library, or init failing): no sampler, no device info, no gpu_* family.
fn child_no_nvml() {
    assert_eq!(device_info(), None);
    let m = metrics();
    assert!(start_sampler(m.clone(), Duration::from_millis(20), vec![0]).is_none());
    std::thread::sleep(Duration::from_millis(100));
    for text in [m.encode_prometheus_text(), m.encode_openmetrics()] {
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("gpu_") || l.contains(" gpu_")),
            "no gpu_* family without NVML:\n{text}"
        );
        assert!(text.contains("gpuspan_capture_active"), "{text}");
    }
}

/// Values of `name` by `gpu_index` in Prometheus text.
fn by_index(text: &str, name: &str) -> std::collections::BTreeMap<u32, f64> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let i = l.split("gpu_index=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
            (i, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect()
}

/// An 8-GPU node (`GPUSPAN_SIM_NVML_DEVICES=8`) where `CUDA_VISIBLE_DEVICES=5,2`: the worker's
/// own device is NVML index 5 (its CUDA device 0), it samples 5 and 2 only, and its work
/// shows on 5.
fn child_visible() {
    let driver = exec::open_driver().expect("the sim as libcuda.so.1");
    let info = device_info().expect("device info");
    assert_eq!(info.index, 5);
    assert_eq!(info.uuid, device::uuid(5));
    assert_eq!(info.visible, vec![5, 2]);
    assert_eq!(info.sampled, vec![5], "at first only the worker's own device");
    exec::execute(&driver, &busy_workload()).expect("workload on the sim");
    let m = metrics();
    let h = start_sampler(m.clone(), Duration::from_millis(20), info.sampled.clone()).expect("sampler starts");
    let text = m.encode_prometheus_text();
    assert_eq!(by_index(&text, "gpu_utilization_percent").keys().copied().collect::<Vec<_>>(), vec![5], "{text}");
    // The worker is seen on its CUDA device 1 (NVML 2); CUDA device 7 it cannot see.
    gpuspan_agent::nvml::note_cuda_device(1);
    gpuspan_agent::nvml::note_cuda_device(7);
    assert_eq!(gpuspan_agent::nvml::used_devices(), vec![2]);
    let t0 = Instant::now();
    let text = loop {
        let text = m.encode_prometheus_text();
        if by_index(&text, "gpu_utilization_percent").len() == 2 || t0.elapsed() > Duration::from_secs(5) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let util = by_index(&text, "gpu_utilization_percent");
    assert_eq!(util.keys().copied().collect::<Vec<_>>(), vec![2, 5], "the own GPU and the one it uses:\n{text}");
    assert!(util[&5] >= 99.0, "the worker's own GPU is busy:\n{text}");
    assert_eq!(util[&2], 0.0, "another visible GPU is idle:\n{text}");
    assert_eq!(by_index(&text, "gpu_temperature_celsius")[&2], f64::from(device::IDLE_TEMP_C));
    assert!(h.stop_until(Instant::now() + Duration::from_secs(2)));
}

/// 8 GPUs, `CUDA_VISIBLE_DEVICES=5,2`: the worker's own GPU 5 is sampled from the start, GPU 2
/// once the worker is seen on its CUDA device 1, nothing else.
#[test]
fn a_worker_samples_only_its_visible_gpus() {
    if let Some(mode) = child_mode() {
        child_visible();
        return finish_child(&mode);
    }
    let dir = sim_dir();
    rerun(
        "a_worker_samples_only_its_visible_gpus",
        "visible",
        dir.path(),
        &[("GPUSPAN_SIM_NVML_DEVICES", "8"), ("CUDA_VISIBLE_DEVICES", "5,2")],
    );
}

fn child_mig() {
    let driver = exec::open_driver().expect("the sim as libcuda.so.1");
    let info = device_info().expect("device info");
    assert_eq!(info.mig, std::env::var("CUDA_VISIBLE_DEVICES").ok(), "the MIG entry as CUDA_VISIBLE_DEVICES names it");
    assert_eq!(info.index, 5, "the MIG instance's parent GPU");
    assert_eq!(info.uuid, device::uuid(5));
    assert_eq!(info.sampled, vec![5], "only the parent is sampled");
    exec::execute(&driver, &busy_workload()).expect("workload on the sim");
    let m = metrics();
    let h = start_sampler(m.clone(), Duration::from_millis(20), info.sampled.clone()).expect("sampler starts");
    let text = m.encode_prometheus_text();
    let util = by_index(&text, "gpu_utilization_percent");
    assert_eq!(util.keys().copied().collect::<Vec<_>>(), vec![5], "only the MIG instance's GPU:\n{text}");
    assert!(util[&5] >= 99.0, "the work runs on the MIG instance's GPU:\n{text}");
    assert!(text.contains(&format!("gpu_uuid=\"{}\"", device::uuid(5))), "{text}");
    assert!(h.stop_until(Instant::now() + Duration::from_secs(2)));
}

/// A worker on a MIG instance (`CUDA_VISIBLE_DEVICES=MIG-…`: the full UUID, which NVML
/// resolves by handle, and a unique prefix, as CUDA accepts, found among every GPU's
/// instances) of GPU 5 of 8, GPUs 5 and 2 in MIG mode: the agent resolves the instance's
/// parent through NVML and samples that GPU only (NVML's utilization is per GPU).
#[test]
fn a_mig_worker_samples_its_parent_gpu() {
    if let Some(mode) = child_mode() {
        child_mig();
        return finish_child(&mode);
    }
    let dir = sim_dir();
    let mig = device::mig_uuid(5, 1);
    for visible in [&mig[..], &mig[..14]] {
        rerun(
            "a_mig_worker_samples_its_parent_gpu",
            "mig",
            dir.path(),
            &[("GPUSPAN_SIM_NVML_DEVICES", "8"), ("GPUSPAN_SIM_NVML_MIG", "2,5"), ("CUDA_VISIBLE_DEVICES", visible)],
        );
    }
}

fn finish_child(mode: &str) {
    println!("child {mode} ok");
}

#[test]
fn sampler_reads_the_simulated_h100() {
    if let Some(mode) = child_mode() {
        child_sim();
        return finish_child(&mode);
    }
    let dir = sim_dir();
    let out = rerun("sampler_reads_the_simulated_h100", "sim", dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("gpuspan: warning"), "no warning: {stderr}");
}

/// The one warning a failed start prints.
fn warnings(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("gpuspan: warning:"))
        .map(String::from)
        .collect()
}

#[test]
fn no_nvml_library_means_no_sampler_and_no_gpu_gauges() {
    if let Some(mode) = child_mode() {
        child_no_nvml();
        return finish_child(&mode);
    }
    // A real driver's libnvidia-ml.so.1 in the loader's cache would be found despite the
    // empty LD_LIBRARY_PATH: then this case cannot be set up (the sim fault case below
    // still covers init failure).
    let cached = Command::new("/sbin/ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libnvidia-ml.so.1"))
        .unwrap_or(false);
    if cached {
        eprintln!("note: a system libnvidia-ml.so.1 is installed; no-library case not run");
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = rerun(
        "no_nvml_library_means_no_sampler_and_no_gpu_gauges",
        "nolib",
        empty.path(),
        &[],
    );
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "exactly one warning: {w:?}");
    assert!(w[0].contains("gpu_* metrics are absent"), "{w:?}");
    assert!(w[0].contains("libnvidia-ml.so.1"), "{w:?}");
}

#[test]
fn nvml_init_failure_means_no_sampler_and_no_gpu_gauges() {
    if let Some(mode) = child_mode() {
        child_no_nvml();
        return finish_child(&mode);
    }
    // The sim's `no_device` fault: nvmlInit_v2 → 9 (DRIVER_NOT_LOADED), like a machine
    // with the library but no driver.
    let dir = sim_dir();
    let out = rerun(
        "nvml_init_failure_means_no_sampler_and_no_gpu_gauges",
        "nodevice",
        dir.path(),
        &[("GPUSPAN_SIM_FAULT", "no_device")],
    );
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "exactly one warning: {w:?}");
    assert!(w[0].contains("gpu_* metrics are absent"), "{w:?}");
}

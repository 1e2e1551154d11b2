//! Several devices in one process (issue 16): `gpuspan-replay --devices 2` serves requests
//! from one thread per simulated H100 (`GPUSPAN_SIM_DEVICES=2`), each thread with its own
//! device's primary context current and its own streams, which carry the same CUPTI stream
//! ids on both devices. What a real driver enforces, the simulator does too (CUDA
//! Programming Guide, "Stream and Event Behavior"): an event recorded on another device's
//! stream, and the elapsed time between two devices' events, are errors.
//!
//! Checked: the fine capture keeps each device's kernels on its own process row, as many as
//! the simulator launched there, with stream 13 once per device, and each thread's driver
//! calls on the row of its own ranges; each request's span and kernel spans name the
//! device (ordinal and UUID) its kernels ran on; coarse mode times every scope with CUDA events (none falls
//! back to CPU times because an event of the other device came out of the pool, which
//! before per-context pools was 1986 of 3558 scopes), and no step is shorter than the GPU
//! time of its kernels (a CPU-timed step is: the host runs ahead of the GPU).

use crate::util::*;
use gpuspan_core::trace::{Category, Trace};
use gpuspan_testkit::{OtlpReceiver, ReceivedSpan, Transport};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const REQUESTS: u32 = 4;
const STEPS: u32 = 4;

/// `gpuspan run [--mode MODE] --sim -- gpuspan-replay stdit --devices 2 …` on a simulated
/// process that sees two H100s, spans to `rx`, capture (fine mode) into `out`.
fn run_two_devices(out: &Path, mode: Option<&str>, rx: &OtlpReceiver) -> Output {
    let requests = REQUESTS.to_string();
    let env = [("GPUSPAN_SIM_DEVICES", "2"), ("GPUSPAN_NVML_PERIOD", "100ms"), ("OTEL_METRIC_EXPORT_INTERVAL", "500")];
    crate::coarse::run_stdit_into(out, mode, STEPS, &["--devices", "2", "--requests", &requests], &env, rx)
}

/// Waits until `gpu_utilization_percent` has arrived for both devices (NVML samples every
/// device the worker is seen to use: its kernels' `deviceId`, or the device current when a
/// request begins), each with its UUID.
fn both_devices_sampled(rx: &OtlpReceiver, mode: &str) {
    let sampled = || -> BTreeSet<i64> {
        rx.metric_points()
            .into_iter()
            .filter(|p| p.name == "gpu_utilization_percent")
            .filter_map(|p| match (p.attributes.get("gpu_index"), p.attributes.get("gpu_uuid")) {
                (Some(gpuspan_testkit::Val::Int(i)), Some(gpuspan_testkit::Val::Str(u))) if *u == gpuspan_simgpu::sim::device::uuid(*i as u32) => Some(*i),
                _ => None,
            })
            .collect()
    };
    let t0 = std::time::Instant::now();
    while sampled().len() < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sampled(), BTreeSet::from([0, 1]), "{mode}: NVML gauges of both devices");
}

/// The trace ids of the run's requests (the replay's deterministic traceparents).
fn trace_ids() -> Vec<String> {
    (0..REQUESTS)
        .map(|i| gpuspan_simgpu::workload::preset::traceparent("stdit", i).split('-').nth(1).unwrap().to_string())
        .collect()
}

/// Every span of the run, once all requests have arrived.
fn all_spans(rx: &OtlpReceiver) -> Vec<ReceivedSpan> {
    let ids = trace_ids();
    assert!(
        rx.wait_for(Duration::from_secs(20), |s| ids.iter().all(|t| s.iter().any(|s| s.name == "gpu.request" && &s.trace_id == t))),
        "not every gpu.request arrived"
    );
    rx.spans()
}

/// Device → (its thread's OS id, kernels launched) from the replay's `device D: thread TID
/// replayed N kernels, …` lines: the replay's own account.
fn replayed_per_device(o: &Output) -> BTreeMap<i64, (i64, usize)> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (d, rest) = l.strip_prefix("device ")?.split_once(": thread ")?;
            let (tid, rest) = rest.split_once(" replayed ")?;
            Some((d.parse().ok()?, (tid.parse().ok()?, rest.split_whitespace().next()?.parse().ok()?)))
        })
        .collect()
}

/// From a fine capture and the replay's device → thread map: (trace id, step index) → the
/// GPU time of the kernels the step launched on its thread's device, ns (the simulator's
/// kernel durations: the same in every run).
fn step_kernel_time(t: &Trace, device_threads: &BTreeMap<i64, i64>) -> BTreeMap<(String, i64), f64> {
    // Correlation id → launch time µs.
    let mut launch: HashMap<i64, f64> = HashMap::new();
    for e in t.events.iter().filter(|e| e.cat == Some(Category::CudaDriver)) {
        if let Some(c) = e.correlation {
            launch.insert(c, e.ts_us);
        }
    }
    // Per device: (launch µs, duration µs) of its kernels, by launch time.
    let mut ops: HashMap<i64, Vec<(f64, f64)>> = HashMap::new();
    for e in t.events.iter().filter(|e| e.cat == Some(Category::Kernel)) {
        let at = launch[&e.correlation.expect("kernel with a correlation id")];
        ops.entry(e.pid).or_default().push((at, e.dur_us));
    }
    for v in ops.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let device_of: HashMap<i64, i64> = device_threads.iter().map(|(d, tid)| (*tid, *d)).collect();
    // Kernel time launched on `tid`'s device between `b_us` and `e_us`, ns.
    let launched = |tid: i64, b_us: f64, e_us: f64| -> f64 {
        let v = &ops[&device_of[&tid]];
        let (i, j) = (v.partition_point(|o| o.0 < b_us), v.partition_point(|o| o.0 < e_us));
        v[i..j].iter().map(|o| o.1).sum::<f64>() * 1000.0
    };
    let scopes: Vec<_> = t.events.iter().filter(|e| e.cat == Some(Category::UserAnnotation)).collect();
    let mut steps = BTreeMap::new();
    for r in scopes.iter().filter(|e| e.name.starts_with("gpuspan.request ")) {
        let trace = r.name.split_whitespace().nth(1).unwrap().split('-').nth(1).unwrap().to_string();
        for s in scopes.iter().filter(|s| s.tid == r.tid && r.ts_us <= s.ts_us && s.end_us() <= r.end_us()) {
            let Some(i) = s.name.strip_prefix("dit.step ").and_then(|n| n.split('/').next()?.parse::<i64>().ok()) else { continue };
            steps.insert((trace.clone(), i), launched(s.tid, s.ts_us, s.end_us()));
        }
    }
    steps
}

/// Trace id → the devices its requests' kernels ran on, from the capture: a request's
/// `gpuspan.request` range lies on its thread's row (OS thread id), and the replay says which
/// device each thread drives; the kernels launched inside the range on that device are the
/// request's. Checked: that device had kernels in the range.
fn request_devices(t: &Trace, device_threads: &BTreeMap<i64, i64>) -> BTreeMap<String, i64> {
    let device_of: HashMap<i64, i64> = device_threads.iter().map(|(d, tid)| (*tid, *d)).collect();
    t.events
        .iter()
        .filter(|e| e.cat == Some(Category::UserAnnotation) && e.name.starts_with("gpuspan.request "))
        .map(|r| {
            let trace = r.name.split_whitespace().nth(1).unwrap().split('-').nth(1).unwrap().to_string();
            let d = device_of[&r.tid];
            let inside = t
                .events
                .iter()
                .filter(|k| k.cat == Some(Category::Kernel) && k.pid == d && k.ts_us < r.end_us() && k.end_us() > r.ts_us)
                .count();
            assert!(inside > 0, "request {trace}: no kernel of device {d} in its range");
            (trace, d)
        })
        .collect()
}

#[test]
fn two_devices_in_one_process_keep_their_kernels_streams_and_coarse_timing_apart() {
    let ids = trace_ids();

    // Fine mode: rows, counts and devices.
    let fine_out = tempfile::tempdir().unwrap();
    let fine_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let fine = run_two_devices(fine_out.path(), Some("fine"), &fine_rx);
    let replayed = replayed_per_device(&fine);
    assert_eq!(replayed.keys().copied().collect::<Vec<_>>(), vec![0, 1], "{}", String::from_utf8_lossy(&fine.stdout));
    let device_threads: BTreeMap<i64, i64> = replayed.iter().map(|(d, (tid, _))| (*d, *tid)).collect();
    let launched: BTreeMap<i64, usize> = replayed.iter().map(|(d, (_, n))| (*d, *n)).collect();
    let capture = capture_in(fine_out.path());
    let t = gpuspan_export::read_trace(&capture).unwrap();
    let mut kernels: BTreeMap<i64, usize> = BTreeMap::new();
    let mut rows: BTreeSet<(i64, i64)> = BTreeSet::new();
    for e in t.events.iter().filter(|e| e.cat == Some(Category::Kernel)) {
        *kernels.entry(e.pid).or_default() += 1;
        rows.insert((e.pid, e.tid));
    }
    assert_eq!(kernels, launched, "each device's kernels on its own process row, all of them");
    assert!(rows.contains(&(0, 13)) && rows.contains(&(1, 13)), "stream 13 of each device is a row of its own: {rows:?}");
    // CUPTI's API records name threads as `gettid` does (`cuptiSetThreadIdType(SYSTEM)`):
    // each device thread's launches lie on the row of its own ranges.
    for (d, tid) in &device_threads {
        let launches = t.events.iter().filter(|e| e.cat == Some(Category::CudaDriver) && e.tid == *tid).count();
        assert!(launches >= launched[d], "device {d}'s thread {tid}: {launches} driver calls on its row, {} kernels launched", launched[d]);
    }
    let devices = request_devices(&t, &device_threads);
    let kernel_time = step_kernel_time(&t, &device_threads);
    let spans = all_spans(&fine_rx);
    let mut used = BTreeSet::new();
    for id in &ids {
        let d = devices[id];
        used.insert(d);
        let uuid = gpuspan_simgpu::sim::device::uuid(d as u32);
        let req = spans.iter().find(|s| s.name == "gpu.request" && &s.trace_id == id).unwrap();
        assert_eq!(req.int("gpu.device.id"), Some(d), "request {id}'s span names its device");
        assert_eq!(req.str("gpu.device.uuid"), Some(uuid.as_str()), "request {id}'s span names its device's UUID");
        let kernel_spans: Vec<_> = spans.iter().filter(|s| s.name == "cuda.kernel" && &s.trace_id == id).collect();
        assert!(!kernel_spans.is_empty(), "request {id} has kernel spans");
        for k in kernel_spans {
            assert_eq!(k.int("gpu.device.id"), Some(d), "kernel spans of request {id}");
            assert_eq!(k.str("gpu.device.uuid"), Some(uuid.as_str()), "kernel spans of request {id}");
        }
    }
    assert_eq!(used, BTreeSet::from([0, 1]), "both devices served requests");
    both_devices_sampled(&fine_rx, "fine");

    // Coarse mode: every scope timed with CUDA events, and within 1 % of the ground truth.
    let coarse_out = tempfile::tempdir().unwrap();
    let coarse_rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let coarse = run_two_devices(coarse_out.path(), None, &coarse_rx);
    let stderr = String::from_utf8_lossy(&coarse.stderr);
    assert!(!stderr.contains("refused an event call"), "no event of the other device was recorded: {stderr}");
    let spans = all_spans(&coarse_rx);
    // Which device served which request differs from the fine run (the threads race for
    // the queue); each request span names one, with its UUID, and both served.
    let mut served = BTreeSet::new();
    for id in &ids {
        let req = spans.iter().find(|s| s.name == "gpu.request" && &s.trace_id == id).unwrap();
        let d = req.int("gpu.device.id").unwrap_or_else(|| panic!("coarse request {id} names no device"));
        assert_eq!(req.str("gpu.device.uuid"), Some(gpuspan_simgpu::sim::device::uuid(d as u32).as_str()));
        served.insert(d);
    }
    assert_eq!(served, BTreeSet::from([0, 1]), "coarse: both devices served requests");
    both_devices_sampled(&coarse_rx, "coarse");
    let mut worst = f64::MAX;
    for id in &ids {
        let mine: Vec<&ReceivedSpan> = spans.iter().filter(|s| &s.trace_id == id).collect();
        for s in mine.iter().filter(|s| s.name != "gpu.request") {
            assert_eq!(s.str("gpuspan.timing"), Some("cuda_event"), "request {id}: {} timed with CUDA events", s.name);
        }
        let steps: BTreeMap<i64, u64> = mine
            .iter()
            .filter(|s| s.name == "dit.step")
            .map(|s| (s.int("gpuspan.step.index").unwrap(), s.end_unix_ns - s.start_unix_ns))
            .collect();
        assert_eq!(steps.len(), STEPS as usize, "request {id}: {steps:?}");
        for (i, got) in steps {
            // A step's GPU interval holds its kernels, which run one after another on the
            // stream: never shorter than their time, and, the GPU being the bottleneck,
            // within a few percent of it (more when the device idled in the step, waiting
            // for the host: the two runs interleave their threads differently, so the
            // fine run's interval is not this run's reference).
            let want = kernel_time[&(id.clone(), i)];
            let r = got as f64 / want;
            worst = worst.min(r);
            assert!(r > 0.999, "request {id} step {i}: coarse {got} ns, shorter than its kernels' {want} ns");
        }
    }
    eprintln!("two devices: coarse steps over their kernels' GPU time, least ratio {worst:.5}");
}

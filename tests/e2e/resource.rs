//! Resource and device attributes (issue 15, item 4): a worker on an 8-GPU simulated node
//! (`GPUSPAN_SIM_NVML_DEVICES=8`) that `CUDA_VISIBLE_DEVICES=3,1` gives two GPUs, in a pod
//! whose downward-API variables are set, exporting over OTLP. Its spans' resource names the
//! instance, host, process, pod, namespace, node and its own GPU (NVML index 3, that GPU's
//! UUID); its metrics carry `gpu_index` 3, and it samples GPU 3 only: GPU 1 is visible but
//! the worker never runs on it.

use crate::util::*;
use gpuspan_simgpu::sim::device;
use gpuspan_testkit::{OtlpReceiver, Transport, Val};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn resource_names_the_pod_and_the_workers_own_gpu() {
    let rx = OtlpReceiver::start(Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.args(["demo", "--steps", "2", "--out"])
        .arg(out.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env())
        .env("OTEL_SERVICE_NAME", "gpuspan-e2e")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
        .env("GPUSPAN_WORKER_ID", "dit-worker-7f9c")
        .env("K8S_POD_NAME", "dit-worker-7f9c")
        .env("K8S_NAMESPACE_NAME", "video")
        .env("K8S_NODE_NAME", "gpu-node-3")
        .env("GPUSPAN_SIM_NVML_DEVICES", "8")
        .env("CUDA_VISIBLE_DEVICES", "3,1");
    let o = output(&mut c);
    assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(rx.wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.name == "gpu.request")), "no gpu.request arrived");
    let spans = rx.spans();
    let req = spans.iter().find(|s| s.name == "gpu.request").unwrap();
    let r = &req.resource;
    let s = |k: &str| match r.get(k) {
        Some(Val::Str(v)) => v.clone(),
        other => panic!("resource {k}: {other:?} in {r:?}"),
    };
    assert_eq!(s("service.name"), "gpuspan-e2e");
    assert_eq!(s("service.instance.id"), "dit-worker-7f9c");
    assert_eq!(s("deployment.environment.name"), "staging", "OTEL_RESOURCE_ATTRIBUTES is honoured");
    assert!(!s("host.name").is_empty());
    let int = |k: &str| match r.get(k) {
        Some(Val::Int(v)) => *v,
        other => panic!("resource {k}: {other:?}, an int by the conventions"),
    };
    assert!(int("process.pid") > 1);
    assert_eq!(s("k8s.pod.name"), "dit-worker-7f9c");
    assert_eq!(s("k8s.namespace.name"), "video");
    assert_eq!(s("k8s.node.name"), "gpu-node-3");
    assert_eq!(s("gpu.device.name"), device::NAME);
    assert_eq!(int("gpu.device.index"), 3, "the worker's CUDA device 0 is NVML device 3");
    assert_eq!(s("gpu.device.uuid"), device::uuid(3));
    assert_eq!(s("gpu.driver.version"), device::DRIVER_VERSION);
    assert!(r.get("gpu.device.mig.uuid").is_none());
    assert!(spans.iter().all(|x| x.resource == *r), "one resource for all spans");

    // Metrics: the agent's families carry its own gpu_index; the gpu_* gauges only the
    // visible GPUs'.
    let t0 = std::time::Instant::now();
    while !["gpu_utilization_percent", "gpuspan_records"].iter().all(|m| rx.metric_names().iter().any(|n| n == m)) {
        assert!(t0.elapsed() < Duration::from_secs(10), "metrics arrived: {:?}", rx.metric_names());
        std::thread::sleep(Duration::from_millis(50));
    }
    let points = rx.metric_points();
    let index = |p: &gpuspan_testkit::ReceivedPoint| match p.attributes.get("gpu_index") {
        Some(Val::Int(i)) => *i,
        other => panic!("{} gpu_index {other:?}", p.name),
    };
    let sampled: BTreeSet<i64> = points.iter().filter(|p| p.name == "gpu_utilization_percent").map(index).collect();
    assert_eq!(sampled, BTreeSet::from([3]), "only the GPU the worker uses (1 is visible, unused)");
    for p in points.iter().filter(|p| p.name == "gpu_utilization_percent") {
        let i = index(p);
        assert_eq!(p.attributes.get("gpu_uuid"), Some(&Val::Str(device::uuid(i as u32))), "gpu {i}'s UUID");
    }
    let own: BTreeSet<i64> = points.iter().filter(|p| p.name == "gpuspan_records").map(index).collect();
    assert_eq!(own, BTreeSet::from([3]));
    assert!(points.iter().all(|p| p.resource.get("k8s.pod.name") == Some(&Val::Str("dit-worker-7f9c".into()))));
}

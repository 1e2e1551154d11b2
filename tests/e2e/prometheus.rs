//! Metrics (issue 3) scraped by a real Prometheus server (Debian's `prometheus` package,
//! started here on loopback), and the exposition checked by `promtool check metrics`.

use crate::util::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn prometheus_scrapes_step_histograms_and_promtool_accepts_the_exposition() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus", "PROMETHEUS"), tool("promtool", "PROMTOOL")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: gpuspan\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // The demo workload on the simulated H100 with a real-time clock, so the worker lives
    // long enough to be scraped: 3 requests × 4 steps.
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.args(["run", "--mode", "fine", "--sim", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--steps", "4", "--requests", "3"])
        .env("GPUSPAN_METRICS_ADDR", &metrics_addr)
        .env("GPUSPAN_SIM_CLOCK", "real")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let worker = Kill(c.spawn().unwrap());

    let want = ["cross_attn", "ffn", "spatial_attn", "step", "temporal_attn"];
    let query = format!(
        "/api/v1/query?query={}",
        url_encode("count by (step_type) (dit_inference_step_duration_ms_bucket{job=\"gpuspan\"})")
    );
    let t0 = Instant::now();
    let mut exposition = None;
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        if exposition.is_none() {
            if let Some(body) = http_get(&metrics_addr, "/metrics", "text/plain") {
                if body.contains("dit_inference_step_duration_ms_bucket") {
                    exposition = Some(body);
                }
            }
        }
        if let Some(body) = http_get(&prom_addr, &query, "application/json") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            seen = v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["metric"]["step_type"].as_str().map(String::from))
                .collect();
            seen.sort();
            if seen == want && exposition.is_some() {
                break;
            }
        }
    }
    drop(worker);
    assert_eq!(seen, want, "step_type series Prometheus scraped");

    let exposition = exposition.expect("the agent served dit_inference_step_duration_ms");
    // NVML (simulated) is present: its gauges are served with the simulator's values.
    let util = exposition
        .lines()
        .find(|l| l.starts_with("gpu_utilization_percent{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("gpu_utilization_percent served");
    assert!((0.0..=100.0).contains(&util), "utilization {util}");
    assert!(exposition.contains("gpu_type=\"NVIDIA H100 80GB HBM3\""), "gpu_type from NVML");
    let uuid = gpuspan_simgpu::sim::device::uuid(0);
    assert!(exposition.contains(&format!("gpu_uuid=\"{uuid}\"")), "gpu_uuid from NVML: {exposition}");
    for family in [
        "dit_inference_step_duration_ms",
        "gpuspan_records",
        "gpuspan_capture_active",
        "gpu_utilization_percent",
        "gpu_memory_used_bytes",
        "gpu_temperature_celsius",
        "gpu_power_watts",
        "gpu_sm_clock_mhz",
    ] {
        assert!(exposition.contains(&format!("# HELP {family}")), "HELP for {family}");
        assert!(exposition.contains(&format!("# TYPE {family}")), "TYPE for {family}");
    }
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let o = check.wait_with_output().unwrap();
    // promtool 2.42 lints the spec's own name `dit_inference_step_duration_ms` ("metric
    // names should not contain abbreviated units", exit code 3). The name is the
    // platform's interface (DESIGN.md), so that one lint is allowed; anything else fails.
    let report = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| *l != "dit_inference_step_duration_ms metric names should not contain abbreviated units")
        .collect();
    assert!(problems.is_empty(), "promtool check metrics: {report}\n{exposition}");
    assert!(matches!(o.status.code(), Some(0) | Some(3)), "promtool exit {:?}: {report}", o.status.code());
}

//! Multi-GPU DiT (issue 16): `gpuspan-replay --ranks 8` runs 8 sequence-parallel rank
//! processes on 8 simulated H100s whose NCCL collectives wait for each other; the agent in
//! each rank writes its capture with `distributedInfo`, tags its spans with the rank, and
//! `gpuspan stats DIR` puts the ranks side by side. Checked against the simulator's own
//! account of each device (`node truth:` lines, `gpuspanSimNodeTruth`), computed from its
//! timeline, not from CUPTI records.

use crate::util::*;
use gpuspan_core::stats::Stats;
use gpuspan_testkit::{OtlpReceiver, Transport, Val};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

/// One `node truth:` line of a rank, as `key → value`.
fn truths(stdout: &str) -> BTreeMap<u32, HashMap<String, u64>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node truth: "))
        .map(|l| {
            let kv: HashMap<String, u64> = l
                .split_whitespace()
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().expect("numeric truth")))
                .collect();
            (kv["rank"] as u32, kv)
        })
        .collect()
}

/// Each rank's NVLink transfers, `(start_ns, end_ns, bytes)`, from its `node transfers:`
/// line (`gpuspanSimNodeTransfers`).
fn transfers(stdout: &str) -> BTreeMap<u32, Vec<(u64, u64, u64)>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node transfers: rank="))
        .map(|l| {
            let (rank, list) = l.split_once(' ').unwrap_or((l, ""));
            let xs = list
                .split(',')
                .filter(|x| !x.is_empty())
                .map(|x| {
                    let v: Vec<u64> = x.split(':').map(|n| n.parse().expect("numeric transfer")).collect();
                    (v[0], v[1], v[2])
                })
                .collect();
            (rank.parse().expect("rank"), xs)
        })
        .collect()
}

/// Bytes the transfers have moved by `t_ns`, a transfer in progress in proportion to its
/// elapsed time (how the simulator's NVML counter counts).
fn bytes_by(xs: &[(u64, u64, u64)], t_ns: u64) -> f64 {
    xs.iter()
        .map(|&(s, e, b)| if t_ns >= e { b as f64 } else if t_ns <= s { 0.0 } else { b as f64 * (t_ns - s) as f64 / (e - s) as f64 })
        .sum()
}

/// The capture's `nvlink_bandwidth_gbps` track against the simulator's transfers: each
/// sample's rate over its interval (to the next sample), and the bytes they add up to.
/// Returns the number of intervals that carried traffic.
fn check_nvlink_track(t: &gpuspan_core::trace::Trace, xs: &[(u64, u64, u64)], rank: u32) -> usize {
    let base = t.base_time_ns.expect("capture base time");
    let at = |ts_us: f64| (base as f64 + ts_us * 1000.0).round() as u64;
    let track: Vec<(u64, f64)> = t
        .counters
        .iter()
        .filter(|c| c.name == "nvlink_bandwidth_gbps" && c.pid == 0)
        .map(|c| (at(c.ts_us), c.values.iter().find(|(k, _)| k == "GB/s").expect("GB/s value").1))
        .collect();
    assert!(track.len() >= 2, "rank {rank}: {} NVLink samples", track.len());
    let (mut got_bytes, mut busy) = (0.0, 0);
    for w in track.windows(2) {
        let ((a, gbps), (b, _)) = (w[0], w[1]);
        let dt_ns = (b - a) as f64;
        let truth = (bytes_by(xs, b) - bytes_by(xs, a)) / dt_ns;
        // NVML quantizes: KiB per link (18 links: 18 KiB a reading) and µs timestamps (at
        // 360 GB/s, 360 KB either end); that slack, and 1 % of the rate.
        let slack = 2.0 * (18.0 * 1024.0 + 360_000.0) / dt_ns;
        assert!((gbps - truth).abs() <= 0.01 * truth + slack, "rank {rank}: {gbps} GB/s over [{a}, {b}] ns, the simulator moved {truth} GB/s");
        got_bytes += gbps * dt_ns;
        busy += usize::from(truth > 0.0);
    }
    let (first, last) = (track[0].0, track[track.len() - 1].0);
    let truth_bytes = bytes_by(xs, last) - bytes_by(xs, first);
    assert!(truth_bytes > 0.0, "rank {rank}: no traffic between the first and last samples");
    assert!((got_bytes - truth_bytes).abs() <= 0.01 * truth_bytes, "rank {rank}: the track adds up to {got_bytes} bytes, the simulator moved {truth_bytes}");
    busy
}

fn close(got_us: f64, truth_ns: u64, what: &str) {
    let truth_us = truth_ns as f64 / 1000.0;
    assert!(truth_us > 0.0, "{what}: the simulator saw none");
    assert!((got_us - truth_us).abs() <= 0.01 * truth_us, "{what}: {got_us} µs against the simulator's {truth_us} µs");
}

#[test]
fn eight_ranks_name_the_straggler_and_match_the_simulators_communication() {
    let rx = OtlpReceiver::start(Transport::Grpc, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let mut c = gpuspan();
    c.args(["run", "--sim", "--mode", "fine", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(artifact("gpuspan-replay"))
        .args(["stdit", "--ranks", "8", "--steps", "3", "--slow-rank", "3:1.5", "--linger", "1200ms"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        // 8 fine-mode ranks on the test machine's 2 cores: no cuda.kernel spans (the tree
        // above them is what is checked), and a patient exporter.
        .env("GPUSPAN_KERNEL_SPAN_BUDGET", "0")
        // NVLink samples every 10 ms, so the capture's track has many intervals to check.
        .env("GPUSPAN_NVML_PERIOD", "10ms")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.transport().protocol_env())
        .env("OTEL_SERVICE_NAME", "gpuspan-e2e");
    let o = output(&mut c);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("ranks: 8 exit=0"), "{stdout}");
    let truth = truths(&stdout);
    assert_eq!(truth.keys().copied().collect::<Vec<_>>(), (0..8).collect::<Vec<_>>(), "{stdout}");
    // Every rank met the others at the same collectives and moved the same bytes.
    let colls: BTreeSet<u64> = truth.values().map(|t| t["collectives"]).collect();
    assert_eq!(colls.len(), 1, "{truth:?}");
    assert!(*colls.iter().next().unwrap() > 3 * 28 * 4, "{truth:?}");
    // The straggler waits least: the others spend its extra compute inside collectives.
    assert!(truth[&3]["compute_ns"] > truth[&0]["compute_ns"] * 14 / 10);
    assert!(truth[&3]["comm_ns"] < truth[&0]["comm_ns"] / 2);

    assert_eq!(captures_in(out.path()).len(), 8, "one capture per rank");
    let s: Stats = stats_json(out.path());
    assert!(s.stages.iter().any(|st| st.stage == "communication"), "NCCL kernels are the communication stage");
    let ranks = s.ranks.as_ref().expect("a directory of rank captures has a ranks section");
    assert_eq!(ranks.ranks, (0..8).collect::<Vec<u32>>());
    assert_eq!(ranks.world_size, 8);
    assert_eq!(ranks.steps.len(), 3, "{:?}", ranks.steps.iter().map(|s| &s.name).collect::<Vec<_>>());
    for st in &ranks.steps {
        assert_eq!(st.straggler_rank, 3, "step {} names rank {}", st.name, st.straggler_rank);
        // Rank 3 computes 1.5x as long as the median rank: the spread is half the median.
        assert!((st.spread_us / st.median_compute_us - 0.5).abs() < 0.05, "{st:?}");
        assert!(st.ranks.iter().all(|r| r.exposed_comm_us > 0.0 && r.exposed_comm_us <= r.comm_us));
    }
    for t in &ranks.totals {
        let truth = &truth[&t.rank];
        close(t.exposed_comm_us, truth["exposed_comm_ns"], &format!("rank {} exposed communication", t.rank));
        close(t.comm_us, truth["comm_ns"], &format!("rank {} communication", t.rank));
        close(t.compute_us, truth["compute_ns"], &format!("rank {} compute", t.rank));
    }
    // Hidden communication exists (the prefetch all-gathers), so exposed < total.
    assert!(ranks.totals.iter().all(|t| t.exposed_comm_us < t.comm_us));

    // NVLink over time: each capture's nvlink_bandwidth_gbps track follows the simulator's
    // transfers, sample by sample, within 1 %.
    let xs = transfers(&stdout);
    assert_eq!(xs.len(), 8, "a node transfers line per rank");
    let mut busy = 0;
    for f in captures_in(out.path()) {
        let t = gpuspan_export::read_trace(&f).unwrap();
        let rank = t.rank().expect("every capture names its rank");
        let moved: u64 = xs[&rank].iter().map(|x| x.2).sum();
        assert_eq!(moved, truth[&rank]["nvlink_tx_bytes"], "rank {rank}: transfers add up to the truth");
        busy += check_nvlink_track(&t, &xs[&rank], rank);
    }
    assert!(busy >= 8, "only {busy} sampled intervals carried NVLink traffic");

    // The waterfall of the directory: each step shows the 8 ranks as 8 lane groups, in a
    // real headless Chromium too.
    let page = out.path().join("ranks.html");
    let o = output(gpuspan().arg("waterfall").arg(out.path()).arg("--html").arg(&page));
    assert!(o.status.success(), "waterfall: {}", String::from_utf8_lossy(&o.stderr));
    let mut traces = Vec::new();
    for f in captures_in(out.path()) {
        let t = gpuspan_export::read_trace(&f).unwrap();
        traces.push((t.rank().expect("every capture names its rank"), t));
    }
    let w = gpuspan_export::waterfall::Waterfall::from_ranks(&traces, "x");
    assert_eq!(w.range_steps(), 3);
    // In the terminal (plain ASCII, 80 columns), every lane's label is whole: its rank,
    // device and stream.
    let o = output(gpuspan().arg("waterfall").arg(out.path()).args(["--step", "0"]));
    assert!(o.status.success(), "waterfall: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| l.ends_with('|')).collect();
    assert_eq!(rows.len(), w.steps[0].lanes.len(), "one row per lane:\n{text}");
    for (row, lane) in rows.iter().zip(&w.steps[0].lanes) {
        let want = lane.label.replace('\u{b7}', "-");
        assert!(row.starts_with(&format!("{want} ")) && row.is_ascii() && row.chars().count() <= 80, "{row:?} labels {want:?}");
    }
    for i in 0..w.steps.len() {
        assert_eq!(w.lane_groups(i), 8, "step {i}: {:?}", w.steps[i].lanes.iter().map(|l| &l.label).collect::<Vec<_>>());
    }
    // Rank 3's lanes hold the longest compute kernel of each step (the longest bars of all
    // are the other ranks' collectives, waiting for it).
    for step in &w.steps[..3] {
        let (lane, bar) = step
            .lanes
            .iter()
            .flat_map(|l| l.bars.iter().map(move |b| (l, b)))
            .filter(|(_, b)| w.stages[b.stage as usize] != "communication")
            .max_by(|a, b| a.1.dur_us.total_cmp(&b.1.dur_us))
            .unwrap();
        assert_eq!(lane.rank, Some(3), "{}: {} µs", lane.label, bar.dur_us);
    }
    if let Some(chromium) = crate::waterfall::chromium() {
        let profile = tempfile::tempdir().unwrap();
        let dom = crate::waterfall::run_with_deadline(
            Command::new(&chromium)
                .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(["--virtual-time-budget=10000", "--dump-dom"])
                .arg(format!("file://{}", page.display())),
            Duration::from_secs(120),
        );
        assert_eq!(crate::waterfall::body_attr(&dom, "error"), None, "JavaScript error in the page");
        assert_eq!(crate::waterfall::body_attr(&dom, "lane-groups"), Some("8"), "lane groups drawn: {}", &dom[..dom.len().min(300)]);
    } else {
        assert!(std::env::var_os("CI").is_none(), "chromium not found (scripts/test.sh installs it)");
    }

    // Over OTLP: the request's one trace holds the 8 ranks' gpu.request spans, each under the
    // worker's span, and no span of the trace lacks its parent.
    let tp = gpuspan_simgpu::workload::preset::traceparent("stdit", 0);
    let parts: Vec<&str> = tp.split('-').collect();
    let (trace_id, worker_span) = (parts[1], parts[2]);
    let got_all = rx.wait_for(Duration::from_secs(20), |s| s.iter().filter(|s| s.name == "gpu.request" && s.trace_id == trace_id).count() >= 8);
    let spans = rx.spans();
    let mine: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let requests: Vec<_> = mine.iter().filter(|s| s.name == "gpu.request").collect();
    assert!(got_all, "{} gpu.request spans arrived", requests.len());
    let mut rank_attrs: Vec<i64> = requests.iter().map(|r| r.int("gpuspan.rank").expect("gpuspan.rank")).collect();
    rank_attrs.sort_unstable();
    assert_eq!(rank_attrs, (0..8).collect::<Vec<i64>>());
    assert!(requests.iter().all(|r| r.int("gpuspan.world_size") == Some(8) && r.parent_span_id == worker_span));
    // Each rank's spans name its own GPU of the node (CUDA_VISIBLE_DEVICES=<rank>): NVML
    // index and UUID in the resource.
    for r in &requests {
        let rank = r.int("gpuspan.rank").unwrap();
        assert_eq!(r.resource.get("gpu.device.index"), Some(&Val::Int(rank)), "{:?}", r.resource);
        let uuid = gpuspan_simgpu::sim::device::uuid(rank as u32);
        assert_eq!(r.resource.get("gpu.device.uuid"), Some(&Val::Str(uuid)), "{:?}", r.resource);
    }
    let ids: BTreeSet<&str> = mine.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), mine.len(), "span ids are unique across ranks");
    for s in &mine {
        assert!(s.name == "gpu.request" || ids.contains(s.parent_span_id.as_str()), "orphan {} (parent {})", s.name, s.parent_span_id);
    }
    // Every span of a rank, kernel spans included, names the rank in its resource.
    let request_rank: HashMap<&str, i64> = requests.iter().map(|r| (r.span_id.as_str(), r.int("gpuspan.rank").unwrap())).collect();
    let by_id: HashMap<&str, &gpuspan_testkit::ReceivedSpan> = mine.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    for s in &mine {
        let mut at = *s;
        while at.name != "gpu.request" {
            at = by_id[at.parent_span_id.as_str()];
        }
        let rank = request_rank[at.span_id.as_str()];
        assert_eq!(s.resource.get("gpuspan.rank"), Some(&Val::Int(rank)), "{} of rank {rank}", s.name);
        assert_eq!(s.resource.get("gpuspan.world_size"), Some(&Val::Int(8)));
    }
    let comm_spans = mine.iter().filter(|s| s.name == "communication").count();
    assert!(comm_spans >= 8 * 3, "a communication stage span per rank and step: {comm_spans}");
    // Each dit.step span carries its communication; per rank and step it is what
    // `gpuspan stats` computed from the capture.
    let rank_of = |s: &gpuspan_testkit::ReceivedSpan| -> i64 {
        let mut id = s.parent_span_id.as_str();
        loop {
            let p = by_id[id];
            if p.name == "gpu.request" {
                return p.int("gpuspan.rank").unwrap();
            }
            id = p.parent_span_id.as_str();
        }
    };
    let mut step_spans: Vec<_> = mine.iter().filter(|s| s.name == "dit.step").map(|s| (rank_of(s), s.int("gpuspan.step.index").unwrap(), *s)).collect();
    step_spans.sort_by_key(|(r, i, _)| (*r, *i));
    assert_eq!(step_spans.len(), 8 * 3);
    for (rank, index, s) in &step_spans {
        let st = &ranks.steps[*index as usize].ranks[*rank as usize];
        let comm = s.int("gpuspan.comm_ns").expect("gpuspan.comm_ns") as f64 / 1000.0;
        let exposed = s.int("gpuspan.exposed_comm_ns").expect("gpuspan.exposed_comm_ns") as f64 / 1000.0;
        assert!((comm - st.comm_us).abs() <= 0.01 * st.comm_us, "rank {rank} step {index}: span {comm} µs, stats {} µs", st.comm_us);
        assert!((exposed - st.exposed_comm_us).abs() <= 0.01 * st.exposed_comm_us, "rank {rank} step {index}: span {exposed} µs, stats {} µs", st.exposed_comm_us);
    }
    // Metrics: every rank observed its 3 steps' communication; NVLink throughput arrived.
    let mut comm_counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in rx.metrics() {
        for m in r.resource_metrics.iter().flat_map(|x| &x.scope_metrics).flat_map(|x| &x.metrics) {
            if m.name != "tensor_parallel_comm_duration_ms" {
                continue;
            }
            if let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(h)) = &m.data {
                for dp in &h.data_points {
                    let worker = dp.attributes.iter().find(|kv| kv.key == "worker_id").map(|kv| format!("{:?}", kv.value)).unwrap_or_default();
                    let c = comm_counts.entry(worker).or_default();
                    *c = (*c).max(dp.count);
                }
            }
        }
    }
    assert_eq!(comm_counts.len(), 8, "{comm_counts:?}");
    assert!(comm_counts.values().all(|c| *c == 3), "{comm_counts:?}");
    let nvlink: Vec<f64> = rx
        .metric_points()
        .into_iter()
        .filter(|p| p.name == "nvlink_bandwidth_gbps")
        .filter_map(|p| match p.value {
            Val::Float(v) => Some(v),
            _ => None,
        })
        .collect();
    assert!(!nvlink.is_empty(), "no nvlink_bandwidth_gbps point");
    // Per direction an H100's NVLink 4 carries at most 450 GB/s. (Each point is the rate of
    // the 10 ms before an export, so whether any is above 0 is chance: the counter below
    // is what shows the traffic arrived.)
    assert!(nvlink.iter().all(|v| (0.0..=450.0).contains(v)), "{nvlink:?}");
    // The semantic conventions' hw.gpu.io counter: each rank's last export (at exit,
    // after the linger) holds every byte its GPU sent, within NVML's quantum (KiB per
    // link, 18 links).
    let mut sent: BTreeMap<u32, i64> = BTreeMap::new();
    for p in rx.metric_points().into_iter().filter(|p| p.name == "hw.gpu.io") {
        assert_eq!(p.str("network.io.direction"), Some("transmit"));
        assert_eq!(p.kind, gpuspan_testkit::MetricKind::Sum { monotonic: true, cumulative: true });
        let Val::Int(b) = p.value else { panic!("hw.gpu.io {:?}", p.value) };
        let Some(Val::Int(rank)) = p.resource.get("gpuspan.rank") else { panic!("hw.gpu.io without gpuspan.rank: {:?}", p.resource) };
        let last = sent.entry(*rank as u32).or_default();
        assert!(b >= *last, "rank {rank}: a counter went back from {last} to {b}");
        *last = b;
    }
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), (0..8).collect::<Vec<u32>>(), "{sent:?}");
    for (rank, b) in &sent {
        let truth = truth[rank]["nvlink_tx_bytes"] as i64;
        assert!(truth > 0 && (b - truth).abs() <= 18 * 1024 + 18, "rank {rank}: hw.gpu.io {b} bytes, the simulator sent {truth}");
    }
    assert!(requests.iter().all(|r| matches!(r.attributes.get("gpuspan.kernel_count"), Some(Val::Int(n)) if *n > 0)));
}

/// `gpuspan diff` of two 2-rank runs whose straggler moved from rank 0 to rank 1.
#[test]
fn diff_of_two_rank_directories_follows_the_straggler() {
    let run = |slow: &str| {
        let out = tempfile::tempdir().unwrap();
        let o = output(
            gpuspan()
                .args(["run", "--sim", "--mode", "fine", "--out"])
                .arg(out.path())
                .arg("--")
                .arg(artifact("gpuspan-replay"))
                .args(["stdit", "--ranks", "2", "--steps", "2", "--slow-rank", slow]),
        );
        assert!(o.status.success(), "run failed: {}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let (a, b) = (run("0:1.5"), run("1:1.5"));
    let o = output(gpuspan().arg("diff").arg("--json").arg(a.path()).arg(b.path()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: gpuspan_core::diff::Diff = serde_json::from_slice(&o.stdout).unwrap();
    let r = d.ranks.expect("two rank directories compare rank by rank");
    assert_eq!(r.ranks.iter().map(|c| c.rank).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(r.steps.len(), 2);
    assert!(r.steps.iter().all(|s| s.a_straggler_rank == 0 && s.b_straggler_rank == 1), "{:?}", r.steps);
    // Rank 0 lost its 1.5x slowdown (-33 %), rank 1 gained it (+50 %).
    let pct = |rank: u32| r.ranks.iter().find(|c| c.rank == rank).unwrap().compute_change_pct.unwrap();
    assert!(pct(0) < -25.0 && pct(1) > 35.0, "{} {}", pct(0), pct(1));
    let o = output(gpuspan().arg("diff").arg(a.path()).arg(b.path()));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("straggler A rank 0") && text.contains("B rank 1"), "{text}");
}

/// `--ranks` with `--duration`: rank 0 decides before each request whether the ranks run it,
/// so they stop together. Each rank checking its own clock let one start a request the others
/// never joined (their clocks start a few ms apart), and it waited out the 120 s rendezvous
/// timeout at its first collective: before the fix this test failed 3 times in 4 (a run
/// hung), after it passed 4 times in 4. Six runs here, each given 30 s.
#[test]
fn ranks_with_a_duration_run_the_same_requests_and_stop_together() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    for run in 0..6 {
        let mut child = gpuspan()
            .args(["run", "--sim", "--mode", "off", "--"])
            .arg(artifact("gpuspan-replay"))
            .args(["stdit", "--ranks", "4", "--steps", "1", "--duration", "1500ms"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // Read as it comes: the ranks' `node transfers:` lines alone would fill the pipe.
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                // The whole group: the ranks too, which hold the output pipe.
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                let text = reader.join().unwrap();
                let counts: Vec<&str> = text.lines().filter(|l| l.starts_with("requests: ")).collect();
                panic!("run {run}: the ranks did not stop together within 30 s; finished: {counts:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "run {run}: {status}");
        let stdout = reader.join().unwrap();
        let counts: Vec<u32> = stdout.lines().filter_map(|l| l.strip_prefix("requests: ")?.trim().parse().ok()).collect();
        assert_eq!(counts.len(), 4, "run {run}: one count per rank: {stdout}");
        assert!(counts[0] >= 1 && counts.iter().all(|c| *c == counts[0]), "run {run}: every rank ran the same requests: {counts:?}");
    }
}

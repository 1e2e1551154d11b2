//! `gpuspan-soak --minutes N --bin-dir DIR`: the soak harness (issue 13, item 3), run by
//! `scripts/soak.sh`.
//!
//! One simulated worker (`gpuspan-replay stdit --steps 4`, requests until N minutes minus
//! 20 s have passed, then 30 s idle) runs with `libgpuspan.so` preloaded in coarse mode, the
//! flight recorder on (4 steps), on the simulated H100's real clock at `GPUSPAN_SIM_SPEED=20`.
//! Around it, for N minutes:
//! - a fine window every 30 s (`gpuspan capture PID --steps 2`), which must be written;
//! - OTLP export (HTTP/protobuf, a 64 KiB backlog that each outage overflows) to an
//!   [`OtlpReceiver`] that is stopped for 10 s every minute (its port held so connections
//!   are refused) and started again on the same port;
//! - a Prometheus scrape of the agent's endpoint every second, which must answer.
//!
//! Every minute it prints the worker's RSS, the CPU time of the agent's threads (`gpuspan-*`
//! in `/proc/PID/task`), records decoded, drops by reason, spans received and windows
//! written. It exits 1 when a window fails or takes over a minute, a scrape fails, once the load has stopped and
//! the receiver is up the spans the agent produced are not exactly those received plus
//! those it counts as dropped, or, in a run with at least [`MIN_JUDGED`] of load after the
//! [`WARM_UP`] (8 minutes or more), the worker's RSS grows by more than 1 MB per 10 minutes
//! (least-squares slope over samples every 10 s). A shorter run prints the slope unjudged.

use gpuspan_testkit::{OtlpReceiver, ReservedPort, Transport};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The simulator's sonames (`gpuspan_simgpu::install::SONAMES`).
const SONAMES: [&str; 5] = ["libcuda.so.1", "libcuda.so", "libcupti.so.12", "libcupti.so", "libnvidia-ml.so.1"];
/// Most RSS growth after warm-up, MB per 10 minutes.
const MAX_GROWTH_MB_PER_10MIN: f64 = 1.0;
/// Warm-up before RSS is judged: the worker's RSS climbs to a plateau (glibc's arenas of the
/// agent's threads reaching their high-water marks as windows, OTLP outages and the
/// flight recorder's largest steps come around) within about 3 minutes (a 10-minute run:
/// 91.3, 98.9, 100.3, 100.3, 100.4, 94.2 MB at minutes 1 … 6).
const WARM_UP: Duration = Duration::from_secs(180);
/// RSS is judged only with at least this much load after the warm-up (shorter runs print
/// the slope without judging it).
const MIN_JUDGED: Duration = Duration::from_secs(300);
/// Longest a 2-step window may take (a step of the worker takes well under 10 s).
const WINDOW_LIMIT: Duration = Duration::from_secs(60);

struct Args {
    minutes: u64,
    bin_dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut minutes = 3u64;
    let mut bin_dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().and_then(|v| v.parse().ok()).filter(|m| *m >= 2).ok_or("--minutes takes a whole number ≥ 2")?,
            "--bin-dir" => bin_dir = it.next().map(PathBuf::from),
            other => return Err(format!("unknown argument {other:?} (usage: gpuspan-soak --minutes N --bin-dir DIR)")),
        }
    }
    Ok(Args { minutes, bin_dir: bin_dir.ok_or("--bin-dir DIR (where gpuspan, gpuspan-replay and the libraries are) is required")? })
}

/// `gpuspan status PID --json`, parsed; `None` when it fails (the worker is exiting).
fn status(bin: &Path, pid: u32) -> Option<serde_json::Value> {
    let o = Command::new(bin.join("gpuspan")).args(["status", &pid.to_string(), "--json"]).output().ok()?;
    o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
}

/// Resident set of `pid`, KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// CPU seconds (user + system) of `pid`'s threads named `gpuspan-*`.
fn agent_cpu_s(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let mut ticks = 0u64;
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // `pid (comm) state …`: comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with("gpuspan-") || stat[open + 1..close].starts_with("gpuspan-replay") {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the state.
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / tick
}

/// `GET /metrics` over plain HTTP/1.0; true on a 200 with a body.
fn scrape(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.") && body.contains(" 200 ") && body.contains("gpuspan_records_total")
}

/// Least-squares slope of `(t_s, kib)`, MB per 10 minutes.
fn slope_mb_per_10min(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, mk) = (samples.iter().map(|s| s.0).sum::<f64>() / n, samples.iter().map(|s| s.1).sum::<f64>() / n);
    let cov: f64 = samples.iter().map(|s| (s.0 - mt) * (s.1 - mk)).sum();
    let var: f64 = samples.iter().map(|s| (s.0 - mt).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    cov / var * 600.0 / 1024.0
}

/// The receiver and what the receivers before it got.
struct Receivers {
    live: Option<OtlpReceiver>,
    reserved: Option<ReservedPort>,
    port: u16,
    spans_before: u64,
}

impl Receivers {
    fn start() -> Receivers {
        let port = ReservedPort::new().release();
        let live = OtlpReceiver::start(Transport::HttpProtobuf, &format!("127.0.0.1:{port}"));
        Receivers { live: Some(live), reserved: None, port, spans_before: 0 }
    }

    fn spans(&self) -> u64 {
        self.spans_before + self.live.as_ref().map_or(0, |r| r.spans().len() as u64)
    }

    /// Stops the receiver and holds its port (connections are refused meanwhile).
    fn stop(&mut self) {
        if let Some(r) = self.live.take() {
            // Counted after the server stopped: a request being stored meanwhile counts.
            self.spans_before += r.stop().len() as u64;
            // The port may stay in TIME_WAIT; binding without listening still works.
            self.reserved = Some(reserve(self.port));
        }
    }

    fn restart(&mut self) {
        if let Some(p) = self.reserved.take() {
            let port = p.release();
            self.live = Some(OtlpReceiver::start(Transport::HttpProtobuf, &format!("127.0.0.1:{port}")));
        }
    }
}

/// Holds `port` bound without listening (connections refused), like [`ReservedPort`] on a
/// given port: retried briefly while the stopped receiver's socket closes.
fn reserve(port: u16) -> ReservedPort {
    for _ in 0..50 {
        if let Ok(r) = ReservedPort::on(port) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ReservedPort::on(port).expect("re-reserve the receiver's port")
}

fn spawn_worker(bin: &Path, sim: &Path, out: &Path, endpoint: &str, run_s: u64) -> Child {
    Command::new(bin.join("gpuspan-replay"))
        .args(["stdit", "--steps", "4", "--duration", &format!("{run_s}s"), "--linger", "40s"])
        .env("LD_PRELOAD", bin.join("libgpuspan.so"))
        .env("LD_LIBRARY_PATH", sim)
        .env("GPUSPAN_MODE", "coarse")
        .env("GPUSPAN_SIM_CLOCK", "real")
        .env("GPUSPAN_SIM_SPEED", "20")
        .env("GPUSPAN_FLIGHT_RECORDER", "4")
        .env("GPUSPAN_METRICS_ADDR", "127.0.0.1:0")
        .env("GPUSPAN_OUT", out)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        // A backlog a 10 s outage overflows (≈ 26 spans, ≈ 15 KB a request), so spans are
        // dropped, and the accounting checked, every minute.
        .env("GPUSPAN_OTLP_BACKLOG_BYTES", "65536")
        .env_remove("CUDA_INJECTION64_PATH")
        .env_remove("NVTX_INJECTION64_PATH")
        .env_remove("GPUSPAN_EXIT_BUDGET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gpuspan-replay")
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpuspan-soak: {e}");
            std::process::exit(2);
        }
    };
    let bin = std::fs::canonicalize(&args.bin_dir).expect("--bin-dir exists");
    let work = std::env::temp_dir().join(format!("gpuspan-soak-{}", std::process::id()));
    let (sim, out) = (work.join("sim"), work.join("out"));
    std::fs::create_dir_all(&sim).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    for name in SONAMES {
        let _ = std::os::unix::fs::symlink(bin.join("libgpuspan_simgpu.so"), sim.join(name));
    }
    let total = Duration::from_secs(args.minutes * 60);
    let mut rx = Receivers::start();
    let mut worker = spawn_worker(&bin, &sim, &out, &format!("http://127.0.0.1:{}", rx.port), total.as_secs() - 20);
    let pid = worker.id();
    let stderr = worker.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let stdout = BufReader::new(worker.stdout.take().unwrap()).lines();
    let stdout_reader = std::thread::spawn(move || stdout.map_while(Result::ok).collect::<Vec<_>>());

    // The agent activates on the worker's cuInit; its status names the metrics address.
    let t0 = Instant::now();
    let metrics_addr = loop {
        if let Some(s) = status(&bin, pid) {
            if let Some(a) = s["metrics_addr"].as_str() {
                break a.to_string();
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            eprintln!("gpuspan-soak: the agent never answered status");
            let _ = worker.kill();
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("soak: {} min, worker pid {pid}, metrics on {metrics_addr}, OTLP receiver on 127.0.0.1:{}", args.minutes, rx.port);
    println!("{:>6} {:>8} {:>10} {:>12} {:>14} {:>10} {:>8}  drops (cupti/limit/scopes/buffers/otlp)", "minute", "RSS MB", "agent CPU", "records", "spans recv", "windows", "scrapes");

    let mut failures: Vec<String> = Vec::new();
    let (mut windows_ok, mut scrapes_ok) = (0u64, 0u64);
    let mut rss_samples: Vec<(f64, f64)> = Vec::new();
    let mut window: Option<(Instant, std::thread::JoinHandle<Result<(), String>>)> = None;
    let mut window_stuck = false;
    let mut next_window = Duration::from_secs(20);
    let mut next_minute = 1u64;
    let load_ends = total - Duration::from_secs(20);
    while t0.elapsed() < total {
        let now = t0.elapsed();
        // Receiver: down for 10 s from second 40 of every minute while the load runs.
        let in_minute = now.as_secs() % 60;
        if now < load_ends && (40..50).contains(&in_minute) {
            rx.stop();
        } else {
            rx.restart();
        }
        if scrape(&metrics_addr) {
            scrapes_ok += 1;
        } else if now < load_ends {
            failures.push(format!("{:.0} s: the Prometheus scrape failed", now.as_secs_f64()));
        }
        if now.as_secs().is_multiple_of(10) && now > WARM_UP && now < load_ends {
            if let Some(k) = rss_kib(pid) {
                if rss_samples.last().is_none_or(|l| l.0 < now.as_secs_f64() - 5.0) {
                    rss_samples.push((now.as_secs_f64(), k as f64));
                }
            }
        }
        if window.as_ref().is_some_and(|w| w.0.elapsed() > WINDOW_LIMIT) && !window_stuck {
            window_stuck = true;
            failures.push(format!("{:.0} s: a window has not been written after {} s", now.as_secs_f64(), WINDOW_LIMIT.as_secs()));
        }
        if window.as_ref().is_some_and(|w| w.1.is_finished()) {
            let (_, h) = window.take().unwrap();
            match h.join().unwrap_or_else(|_| Err("the capture thread panicked".into())) {
                Ok(()) => windows_ok += 1,
                Err(e) => failures.push(format!("{:.0} s: a window failed: {e}", now.as_secs_f64())),
            }
        }
        if now >= next_window && now + Duration::from_secs(15) < load_ends && window.is_none() {
            let (b, o) = (bin.clone(), out.join(format!("window-{}", now.as_secs())));
            window = Some((
                Instant::now(),
                std::thread::spawn(move || {
                    let r = Command::new(b.join("gpuspan"))
                        .args(["capture", &pid.to_string(), "--steps", "2", "--out"])
                        .arg(&o)
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .output()
                        .map_err(|e| e.to_string())?;
                    if r.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&r.stderr).trim().to_string())
                    }
                }),
            ));
            next_window += Duration::from_secs(30);
        }
        if now >= Duration::from_secs(next_minute * 60) {
            let s = status(&bin, pid);
            let d = s.as_ref().map(|s| s["drops"].clone()).unwrap_or_default();
            println!(
                "{:>6} {:>8.1} {:>9.2}s {:>12} {:>14} {:>10} {:>8}  {}/{}/{}/{}/{}",
                next_minute,
                rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
                agent_cpu_s(pid),
                s.as_ref().and_then(|s| s["records_decoded"].as_u64()).unwrap_or(0),
                rx.spans(),
                windows_ok,
                scrapes_ok,
                d["cupti"], d["record_limit"], d["scope_queue"], d["buffer_queue"], d["otlp_spans"]
            );
            next_minute += 1;
        }
        std::thread::sleep(Duration::from_millis(1000 - (t0.elapsed().as_millis() % 1000) as u64));
    }
    // The load stopped 20 s ago and the receiver has been up since: the backlog is out.
    rx.restart();
    // Up to 30 s more: the exporter retries with a backoff of at most 2 s, and the last
    // request may have finished after the load's end.
    let exact = (0..60).find_map(|_| {
        let s = status(&bin, pid)?;
        let produced = s["spans"]["spans"].as_u64()?;
        let dropped = s["drops"]["otlp_spans"].as_u64()?;
        let received = rx.spans();
        if produced == received + dropped {
            return Some((produced, received, dropped));
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    match exact {
        Some((p, r, d)) => println!("spans: {p} produced = {r} received + {d} dropped (counted)"),
        None => {
            let s = status(&bin, pid).unwrap_or_default();
            failures.push(format!(
                "spans produced {} ≠ received {} + dropped {}",
                s["spans"]["spans"], rx.spans(), s["drops"]["otlp_spans"]
            ));
        }
    }
    // A window still in flight: its `gpuspan capture` ends with the worker, so the worker
    // goes first (the soak is over).
    let last_window = window.take();
    if last_window.is_some() {
        let _ = worker.kill();
    }
    if let Some((_, h)) = last_window {
        match h.join() {
            Ok(Ok(())) => windows_ok += 1,
            _ if window_stuck => {}
            Ok(Err(e)) => failures.push(format!("the last window failed: {e}")),
            Err(_) => failures.push("the last window's thread panicked".into()),
        }
    }
    let slope = slope_mb_per_10min(&rss_samples);
    let judged = load_ends >= WARM_UP + MIN_JUDGED;
    println!(
        "RSS after {} s of warm-up: {} samples, slope {slope:+.2} MB per 10 min ({}); windows written {windows_ok}; scrapes {scrapes_ok}",
        WARM_UP.as_secs(),
        rss_samples.len(),
        if judged { format!("limit {MAX_GROWTH_MB_PER_10MIN}") } else { "not judged: the run is shorter than 8 min".to_string() }
    );
    if judged && slope > MAX_GROWTH_MB_PER_10MIN {
        failures.push(format!("RSS grows {slope:.2} MB per 10 min after warm-up"));
    }
    if windows_ok == 0 {
        failures.push("no window was written".into());
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let lines = stdout_reader.join().unwrap_or_default();
    let err = stderr_reader.join().unwrap_or_default();
    if let Some(l) = lines.iter().find(|l| l.starts_with("requests: ")) {
        println!("worker: {l}");
    }
    if err.contains("panicked") {
        failures.push(format!("the worker panicked:\n{err}"));
    }
    let _ = std::fs::remove_dir_all(&work);
    if failures.is_empty() {
        println!("soak passed");
    } else {
        for f in &failures {
            eprintln!("gpuspan-soak: FAIL: {f}");
        }
        eprintln!("worker stderr:\n{err}");
        std::process::exit(1);
    }
}

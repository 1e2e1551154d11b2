//! `gpuspan-replay WORKLOAD [--steps N] [--requests N] [--duration D] [--cuda-graph]`: the
//! replay worker.
//!
//! Behaves like a real inference worker: opens `libcuda.so.1` at run time, `cuInit(0)`
//! (where `CUDA_INJECTION64_PATH` takes effect), launches the workload's kernels through the
//! driver API and announces requests / steps / stages as NVTX ranges through the NVTX v3
//! loader logic (`NVTX_INJECTION64_PATH`). WORKLOAD is a built-in preset (`stdit`,
//! `wan2.1`) or a Kineto trace file (`.json` / `.json.gz`).
//!
//! Requests are generated and run one at a time, so memory does not depend on `--requests`;
//! `--requests 0` runs until stopped, `--duration D` until D of wall time has passed (both
//! print `requests: N` after the `replayed` line); `--linger D` stays alive, idle, for D
//! after the last request (`lingering D`). For soaks, `GPUSPAN_SIM_CLOCK=real` with
//! `GPUSPAN_SIM_SPEED=F` runs the simulated H100 F times faster than wall time.
//!
//! Each request is an NVTX range `gpuspan.request <traceparent> model=<name>`: presets
//! build theirs; a trace replay is wrapped in one, with `--traceparent` if given (every
//! request then shares that parent span) or else the deterministic
//! `preset::traceparent(<file stem>, request index)`.
//!
//! The workload's streams are named to the agent (`gpuspan_use_streams`, when it is in the
//! process) so coarse mode times scopes on them; `--legacy-stream` leaves them unnamed.
//!
//! `--cuda-graph` replays as a worker whose forward passes run as CUDA graphs
//! (torch.compile's "reduce-overhead" mode): each step's forward pass (the ops inside
//! `dit.step` / `ProfilerStep#`, see `workload::graph_plan`) is captured in GLOBAL mode the
//! first time its kernels are seen, with its stage ranges running on the CPU during the
//! capture only; every step launches the graph with one `cuGraphLaunch` on the step's
//! stream. What surrounds the forward pass in a step (allocation probe, input / output
//! copies, the scheduler's synchronize and host gap) and everything outside steps (text
//! encoder, VAE decode) runs normally. A workload whose steps synchronise, allocate or copy
//! to or from the host inside the forward pass is refused (exit 2), as is `--slow-step`
//! (a replayed graph runs the kernels it captured). The last stdout line is
//! `cuda graph: captured=<graphs> launches=<cuGraphLaunch calls>`.
//!
//! `--activity-client` starts a second CUPTI activity client in the worker before anything
//! else, as torch.profiler (Kineto) would be (`workload::activity_client`): its own buffer
//! callbacks, `CONCURRENT_KERNEL` enabled, canary-filled 32 MiB buffers; the last stdout line is
//! `activity client: lent=<n> returned=<n> kernels=<n> canary_intact=<0|1>`.
//! `--activity-client=multi-subscriber` makes it a CUPTI 13.3+ V2 tool in
//! multiple-subscriber mode (its own subscriber, kinds and buffers), `=single-subscriber` a V2
//! tool that takes CUPTI in single mode.
//!
//! `--announce requests` keeps only the `gpuspan.request` ranges (a pipeline that wraps its
//! whole call and announces no step or stage, as most real DiT workers), `--announce none`
//! drops every range; kernels, copies and synchronisations are the same.
//!
//! Hostile exits, as real workers do them (the agent must finish within its budget and never
//! deadlock): `--exit-on-sigterm` installs a SIGTERM handler that calls `exit(0)` from the
//! signal handler (not async-signal-safe, yet common: the atexit handlers then run on
//! whichever thread the signal interrupted, possibly inside a CUDA call);
//! `--exit-after-ms MS` starts a second thread that calls `exit(0)` after MS ms while the
//! main thread keeps launching.
//!
//! `--ranks N` (presets only) runs the request as N sequence-parallel ranks
//! (`workload::parallel`: Ulysses all-to-alls around attention, a prefetch all-gather behind
//! cross attention, an all-gather of the latents before the VAE, on NCCL's stream). The
//! process becomes a launcher, as torchrun: it makes a node directory
//! (`GPUSPAN_SIM_NODE_DIR`, where the simulated devices' collectives meet, `sim::node`) and
//! starts N copies of itself with `RANK`, `LOCAL_RANK`, `WORLD_SIZE` and
//! `CUDA_VISIBLE_DEVICES=<rank>`, forwards their stdout line by line (whole lines, however
//! long), waits for all, removes the directory and exits with the worst status. A process started with `RANK` set is one rank: it prints, last,
//! `node truth: rank=R world=N collectives=C comm_ns=.. compute_ns=.. exposed_comm_ns=..
//! nvlink_tx_bytes=..`, the simulator's own account of its device (`gpuspanSimNodeTruth`),
//! then `node transfers: rank=R START:END:BYTES,...`, its NVLink transfers on the sim's
//! clock (ns; `gpuspanSimNodeTransfers`), from which NVML's counters are read.
//! `--slow-rank R:F` makes rank R's kernels F times as long. With `--duration`, rank 0 decides
//! before each request whether the ranks run it, as a distributed server's rank 0 takes the
//! requests and the others follow, and publishes the decision in the node directory. Every rank's requests carry the
//! same deterministic traceparents, so each request's spans from all ranks share one trace.
//!
//! `--devices K` runs the requests on K devices of this one process (a worker that keeps a
//! pipeline replica per GPU and serves them from threads): one thread per device makes that
//! device's primary context current, creates its own streams and takes the next request
//! from a shared queue when it is free, so request `i` runs on whichever device took it.
//! The simulator must see K devices (`GPUSPAN_SIM_DEVICES`, as a real process sees those
//! `CUDA_VISIBLE_DEVICES` lists). The summary line adds, per device,
//! `device D: thread TID replayed N kernels, M memcpy, S memset` (TID: the OS thread id of
//! the device's thread, as NVTX ranges and `gettid` name it).
//!
//! `--kernel-ns NS` makes a flood of short kernels (issue 14 item 6): every kernel runs NS
//! of simulated GPU time and the workload's host gaps are dropped, so with `--cuda-graph`
//! (one `cuGraphLaunch` per forward pass, not one launch per kernel) the simulated GPU runs
//! about 10^9 / NS kernels per simulated second.
//!
//! On the simulator, a line `sim clock: elapsed_ns=N virtual=0|1` follows the `worker thread`
//! line: the simulated host time the whole replay took (`gpuspanSimHostNowNs` before the
//! first driver call and after the last synchronize), so a bench can give kernels per second
//! of simulated GPU time.
//!
//! After the summary (and the per-device lines), `worker thread cpu_ns N`: the CPU time of the thread that replayed
//! (the main thread; with `--devices`, the thread that waited for the device threads), ns,
//! so a bench can tell the worker's thread (its own work, CUPTI's record writing, which the
//! simulator does there, and a profiler's callbacks) from the rest of the process (a
//! profiler's own threads: `scripts/bench-agent-cpu.sh`).
//!
//! Exit codes: 0 done; 1 a CUDA call failed (with `--cuda-graph`, a capture, instantiation
//! or graph launch failure names the driver's error, `cuGetErrorName`); 2 bad workload
//! (unknown preset, unreadable or invalid trace, not capturable with `--cuda-graph`); 3 no
//! `libcuda.so.1`. Errors are one line on stderr.

use std::path::Path;
use gpuspan_simgpu::sim::node::RENDEZVOUS_TIMEOUT;
use std::process::ExitCode;

use clap::Parser;
use gpuspan_simgpu::workload::exec::{execute_requests, node_transfers, node_truth, open_driver, ExecError, ExecOptions, ExecSummary};
use gpuspan_simgpu::workload::parallel::{sequence_parallel, Parallel};
use gpuspan_simgpu::workload::graph_plan;
use gpuspan_simgpu::workload::from_trace::workload_from_trace;
use gpuspan_simgpu::workload::preset::{traceparent, PresetRequests, DEFAULT_STEPS, PRESET_NAMES, PRESET_STREAM};
use gpuspan_simgpu::workload::{Op, Workload};

/// Replay a DiT preset or a Kineto trace on the (simulated) GPU, with NVTX scopes.
#[derive(Parser, Debug)]
#[command(name = "gpuspan-replay", version)]
struct Args {
    /// A preset (`stdit`, `wan2.1`) or the path of a Kineto trace (.json / .json.gz).
    workload: String,
    /// Denoising steps per request (presets only).
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    steps: u32,
    /// Requests to run (a trace is replayed this many times); 0 runs until stopped (a
    /// signal, or `--duration`). Default 1, or without end with `--duration`.
    #[arg(long)]
    requests: Option<u32>,
    /// Run requests until this much wall time has passed (`30s`, `2h`; checked between
    /// requests, so the request in flight finishes).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    duration: Option<std::time::Duration>,
    /// W3C traceparent of the replayed requests (trace files only).
    #[arg(long)]
    traceparent: Option<String>,
    /// Do not name the streams to gpuspan (`gpuspan_use_streams`): behave like a worker that
    /// only announces NVTX ranges, so coarse mode times scopes on the legacy default stream.
    #[arg(long)]
    legacy_stream: bool,
    /// `INDEX:KEY=VALUE`: add an attribute to request INDEX (0-based) of the run, e.g.
    /// `1:baggage=gpuspan.capture=fine` (a W3C baggage header as a gateway would set it).
    /// Repeatable.
    #[arg(long, value_name = "INDEX:KEY=VALUE")]
    request_attr: Vec<String>,
    /// `STEP:FACTOR`: make the kernels of step STEP (of every request) FACTOR times longer
    /// (a slow step for the anomaly rules).
    #[arg(long, value_name = "STEP:FACTOR")]
    slow_step: Option<String>,
    /// Every kernel runs NS of simulated GPU time, and host gaps are dropped: a flood of
    /// short kernels (with `--cuda-graph`, about 10^9 / NS kernels per simulated second).
    #[arg(long, value_name = "NS", value_parser = clap::value_parser!(u64).range(1..))]
    kernel_ns: Option<u64>,
    /// At the start of step STEP (of every request), ask the driver for more memory than
    /// the device has (`cuMemAlloc_v2`, which fails with CUDA_ERROR_OUT_OF_MEMORY) and go on.
    #[arg(long, value_name = "STEP")]
    oom_at_step: Option<u64>,
    /// Capture each step's forward pass into a CUDA graph once and replay it with
    /// `cuGraphLaunch` on every step (torch.compile "reduce-overhead"; see the module docs).
    #[arg(long)]
    cuda_graph: bool,
    /// After the last kernel, unload the kernels' module (`cuModuleUnload`) before exit, as
    /// the CUDA runtime does with each fatbinary at process exit: records still in CUPTI's
    /// buffers then name kernels of an unloaded module (the simulator overwrites those
    /// names).
    #[arg(long)]
    unload_module: bool,
    /// Start a second CUPTI activity client in the worker, as torch.profiler would be (see
    /// the module docs): `v1` (the default: activity calls, no subscriber),
    /// `multi-subscriber` (CUPTI 13.3+: `cuptiSubscribe_v2` asking for multiple subscribers,
    /// then the `_v2` calls) or `single-subscriber` (`cuptiSubscribe_v2` without).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "v1", value_name = "KIND")]
    activity_client: Option<gpuspan_simgpu::workload::activity_client::ClientKind>,
    /// Which NVTX ranges the worker announces: `all` (the default), `requests` (only the
    /// `gpuspan.request` ranges, like a pipeline that wraps only its whole call) or `none`
    /// (a worker that announces nothing). Kernels and synchronisations are unchanged.
    #[arg(long, value_enum, default_value_t = Announce::All)]
    announce: Announce,
    /// Print `request begin_unix_ns=<ns>` (`CLOCK_REALTIME`) just before each request's
    /// `gpuspan.request` range is pushed.
    #[arg(long)]
    print_request_begins: bool,
    /// Install a SIGTERM handler that calls `exit(0)` inside the signal handler.
    #[arg(long)]
    exit_on_sigterm: bool,
    /// A second thread calls `exit(0)` after this many ms, mid-run.
    #[arg(long, value_name = "MS")]
    exit_after_ms: Option<u64>,
    /// After the last request, stay alive (idle, as a worker between requests) this long
    /// before exiting (`20s`): a soak reads the agent's status after the load stopped.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    linger: Option<std::time::Duration>,
    /// Run as N sequence-parallel ranks (presets only, 1–8): start N rank processes like a
    /// launcher (see the module docs), each on its own simulated H100.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    ranks: u32,
    /// `RANK:FACTOR`: with `--ranks`, rank RANK's kernels take FACTOR times as long (a
    /// straggler).
    #[arg(long, value_name = "RANK:FACTOR")]
    slow_rank: Option<String>,
    /// Run the requests on this many devices of this process (1–8), one thread per device
    /// taking the next request when free (see the module docs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    devices: u32,
}

/// `--announce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Announce {
    All,
    Requests,
    None,
}

/// Drops the NVTX ranges of `w` that `announce` leaves out (a push and its pop together).
fn keep_announced(w: &mut Workload, announce: Announce) {
    if announce == Announce::All {
        return;
    }
    // Whether each open push was kept, innermost last.
    let mut open: Vec<bool> = Vec::new();
    w.ops.retain(|op| match op {
        Op::RangePush(name) => {
            let keep = announce == Announce::Requests && name.starts_with("gpuspan.request ");
            open.push(keep);
            keep
        }
        Op::RangePop => open.pop().unwrap_or(true),
        _ => true,
    });
}

/// `--exit-on-sigterm`'s handler: `exit(0)` from signal context, as some workers do.
extern "C" fn exit_in_handler(_sig: libc::c_int) {
    // SAFETY: deliberately not async-signal-safe (that is the behaviour under test); exit
    // is a valid call with a valid status.
    unsafe { libc::exit(0) }
}

/// Sets up `--exit-on-sigterm` and `--exit-after-ms`.
fn arrange_exits(on_sigterm: bool, after_ms: Option<u64>) {
    if on_sigterm || after_ms.is_some() {
        use std::io::Write;
        println!("exits armed");
        let _ = std::io::stdout().flush();
    }
    if on_sigterm {
        // SAFETY: `signal` with a 'static extern "C" handler.
        unsafe { libc::signal(libc::SIGTERM, exit_in_handler as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    if let Some(ms) = after_ms {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            println!("exit from a second thread");
            // SAFETY: exit from another thread while the main one runs: what is under test.
            unsafe { libc::exit(0) }
        });
    }
}

/// The index of a `dit.step i/n` range name.
fn step_index(name: &str) -> Option<u64> {
    name.strip_prefix("dit.step ")?.split('/').next()?.trim().parse().ok()
}

/// `--request-attr` and `--slow-step`, parsed.
struct Adjustments {
    /// (request index, `KEY=VALUE`).
    attrs: Vec<(u32, String)>,
    /// (step index, duration factor).
    slow: Option<(u64, f64)>,
    /// `--oom-at-step`.
    oom_at_step: Option<u64>,
    /// `--kernel-ns`.
    kernel_ns: Option<u64>,
}

impl Adjustments {
    fn parse(request_attrs: &[String], slow_step: Option<&str>, oom_at_step: Option<u64>, kernel_ns: Option<u64>) -> Result<Adjustments, String> {
        let mut attrs: Vec<(u32, String)> = Vec::new();
        for a in request_attrs {
            let (i, kv) = a.split_once(':').ok_or_else(|| format!("--request-attr {a:?}: expected INDEX:KEY=VALUE"))?;
            let i: u32 = i.parse().map_err(|_| format!("--request-attr {a:?}: INDEX is not a number"))?;
            if !kv.contains('=') || kv.contains(char::is_whitespace) {
                return Err(format!("--request-attr {a:?}: expected KEY=VALUE without spaces"));
            }
            attrs.push((i, kv.to_string()));
        }
        let slow = match slow_step {
            None => None,
            Some(s) => {
                let (i, f) = s.split_once(':').ok_or_else(|| format!("--slow-step {s:?}: expected STEP:FACTOR"))?;
                let i: u64 = i.parse().map_err(|_| format!("--slow-step {s:?}: STEP is not a number"))?;
                let f: f64 = f.parse().ok().filter(|f: &f64| *f > 0.0).ok_or_else(|| format!("--slow-step {s:?}: FACTOR must be positive"))?;
                Some((i, f))
            }
        };
        Ok(Adjustments { attrs, slow, oom_at_step, kernel_ns })
    }

    /// Applies the adjustments to `w`, the run's requests from index `first_request` on
    /// (one request, or a whole trace pass). Errors when a named step does not exist.
    fn apply(&self, w: &mut Workload, first_request: u32) -> Result<(), String> {
        if let Some(ns) = self.kernel_ns {
            w.ops.retain(|op| !matches!(op, Op::HostGap { .. }));
            for op in w.ops.iter_mut() {
                if let Op::Launch { dur_ns, .. } = op {
                    *dur_ns = ns;
                }
            }
        }
        let mut request = first_request;
        let mut in_slow_step = 0usize;
        let mut depth_of_slow = None;
        let mut depth = 0usize;
        for op in w.ops.iter_mut() {
            match op {
                Op::RangePush(name) => {
                    if name.starts_with("gpuspan.request") {
                        for (_, kv) in self.attrs.iter().filter(|(i, _)| *i == request) {
                            name.push(' ');
                            name.push_str(kv);
                        }
                        request += 1;
                    }
                    depth += 1;
                    if self.slow.is_some_and(|(i, _)| step_index(name) == Some(i)) {
                        depth_of_slow = Some(depth);
                        in_slow_step += 1;
                    }
                }
                Op::RangePop => {
                    if depth_of_slow == Some(depth) {
                        depth_of_slow = None;
                    }
                    depth = depth.saturating_sub(1);
                }
                Op::Launch { dur_ns, .. } if depth_of_slow.is_some() => {
                    *dur_ns = (*dur_ns as f64 * self.slow.map(|s| s.1).unwrap_or(1.0)) as u64;
                }
                _ => {}
            }
        }
        if self.slow.is_some() && in_slow_step == 0 {
            return Err("--slow-step: the workload has no such step".into());
        }
        if let Some(step) = self.oom_at_step {
            let at: Vec<usize> = w
                .ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, Op::RangePush(n) if step_index(n) == Some(step)))
                .map(|(i, _)| i)
                .collect();
            if at.is_empty() {
                return Err("--oom-at-step: the workload has no such step".into());
            }
            for i in at.into_iter().rev() {
                w.ops.insert(i + 1, Op::AllocProbe { bytes: 1 << 40 });
            }
        }
        Ok(())
    }
}

/// The run's requests one at a time (issue 13, item 1: memory does not depend on
/// `--requests`): a preset's from [`PresetRequests`], a trace's as the trace's ops (read and
/// converted once) wrapped in a `gpuspan.request` range per pass.
enum Requests {
    Preset(PresetRequests),
    /// One rank's share of a preset's requests (`--ranks`).
    Parallel(PresetRequests, Parallel),
    Trace {
        one: Workload,
        stem: String,
        traceparent: Option<String>,
        /// `None`: without end.
        requests: Option<u32>,
        next: u32,
    },
}

impl Iterator for Requests {
    type Item = Workload;

    fn next(&mut self) -> Option<Workload> {
        match self {
            Requests::Preset(p) => p.next(),
            Requests::Parallel(p, par) => p.next().map(|w| Workload { ops: sequence_parallel(w.ops, par, PRESET_STREAM) }),
            Requests::Trace { one, stem, traceparent: tp, requests, next } => {
                if requests.is_some_and(|n| *next >= n) {
                    return None;
                }
                let r = *next;
                *next = r.wrapping_add(1);
                let tp = tp.clone().unwrap_or_else(|| traceparent(stem, r));
                let mut w = Workload::new();
                w.ops.reserve(one.ops.len() + 2);
                w.ops.push(Op::RangePush(format!("gpuspan.request {tp} model={stem}")));
                w.extend(one);
                w.ops.push(Op::RangePop);
                Some(w)
            }
        }
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`: user and system), ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant Linux knows.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gpuspan-replay: {msg}");
    ExitCode::from(code)
}

/// File name without directories and without `.json` / `.json.gz` / `.pt.trace.json…`.
fn trace_stem(path: &str) -> String {
    let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.split('.').next().unwrap_or("");
    if stem.is_empty() {
        "trace".into()
    } else {
        stem.replace(' ', "_")
    }
}

/// The simulator's host clock now, Unix ns (`gpuspanSimHostNowNs`); `None` on a real driver.
fn sim_host_now_ns(lib: &libloading::Library) -> Option<u64> {
    // SAFETY: the sim's documented extra, `uint64_t gpuspanSimHostNowNs(void)` (`abi::ext`).
    unsafe { lib.get::<unsafe extern "C" fn() -> u64>(b"gpuspanSimHostNowNs\0").ok().map(|f| f()) }
}

/// On the simulated H100: `sim cupti: version=12.9 subscribes=N enables=N unsubscribes=N subscribed=0|1
/// kinds_enabled=N buffers_zeroed_by_cupti=N buffers_lent_dirty=N` (the sim's
/// `gpuspanSimCuptiCounters` / `gpuspanSimCuptiSubscription` / `gpuspanSimCuptiBuffers`),
/// so tests can tell what the agent did with CUPTI while the worker ran. `None` on a real
/// driver.
fn sim_cupti_line(lib: &libloading::Library) -> Option<String> {
    type Counters = unsafe extern "C" fn(*mut u64, *mut u64);
    type Subscription = unsafe extern "C" fn(*mut u64, *mut std::ffi::c_int, *mut u64);
    // SAFETY: the sim's documented extras, with these prototypes (`abi::ext`); out-pointers
    // are live locals.
    unsafe {
        let counters = lib.get::<Counters>(b"gpuspanSimCuptiCounters\0").ok()?;
        let subscription = lib.get::<Subscription>(b"gpuspanSimCuptiSubscription\0").ok()?;
        let buffers = lib.get::<Counters>(b"gpuspanSimCuptiBuffers\0").ok()?;
        let (mut s, mut e, mut u, mut held, mut k) = (0u64, 0u64, 0u64, 0, 0u64);
        let (mut zeroed, mut dirty) = (0u64, 0u64);
        counters(&mut s, &mut e);
        subscription(&mut u, &mut held, &mut k);
        buffers(&mut zeroed, &mut dirty);
        let version = gpuspan_simgpu::sim::config::Config::from_env().cupti.name();
        Some(format!(
            "sim cupti: version={version} subscribes={s} enables={e} unsubscribes={u} subscribed={held} kinds_enabled={k} buffers_zeroed_by_cupti={zeroed} buffers_lent_dirty={dirty}"
        ))
    }
}

/// `--slow-rank RANK:FACTOR`, parsed and checked against `ranks`.
fn parse_slow_rank(s: &str, ranks: u32) -> Result<(u32, f64), String> {
    let (r, f) = s.split_once(':').ok_or_else(|| format!("--slow-rank {s:?}: expected RANK:FACTOR"))?;
    let r: u32 = r.parse().ok().filter(|r| *r < ranks).ok_or_else(|| format!("--slow-rank {s:?}: RANK must be below --ranks {ranks}"))?;
    let f: f64 = f.parse().ok().filter(|f: &f64| f.is_finite() && *f > 0.0).ok_or_else(|| format!("--slow-rank {s:?}: FACTOR must be positive"))?;
    Ok((r, f))
}

/// Copies a rank's stdout to ours line by line, each line whole under the stdout lock: the
/// ranks' `node transfers:` lines run to tens of KB, beyond what one pipe write keeps
/// together (`PIPE_BUF`), so ranks writing to a shared stdout cut into each other's lines.
fn forward_lines(from: std::process::ChildStdout) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    })
}

/// `--ranks N` in the launcher (no `RANK` in the environment): runs N rank processes (see
/// the module docs), their stdout forwarded line by line, and returns the worst exit
/// status.
fn launch_ranks(ranks: u32) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(1, format!("--ranks: cannot find this executable: {e}")),
    };
    let dir = std::env::temp_dir().join(format!(
        "gpuspan-node-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(1, format!("--ranks: cannot make the node directory {}: {e}", dir.display()));
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // NVML lists the whole node (at least one device per rank).
    let nvml_devices = std::env::var("GPUSPAN_SIM_NVML_DEVICES").ok().and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(1).max(ranks);
    let mut children = Vec::new();
    let mut worst = 0u8;
    for r in 0..ranks {
        let child = std::process::Command::new(&exe)
            .args(&args)
            .env("RANK", r.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("WORLD_SIZE", ranks.to_string())
            .env("LOCAL_WORLD_SIZE", ranks.to_string())
            .env("CUDA_VISIBLE_DEVICES", r.to_string())
            .env("GPUSPAN_SIM_NODE_DIR", &dir)
            .env("GPUSPAN_SIM_NVML_DEVICES", nvml_devices.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn();
        match child {
            Ok(mut c) => {
                let forward = c.stdout.take().map(forward_lines);
                children.push((r, c, forward));
            }
            Err(e) => {
                eprintln!("gpuspan-replay: --ranks: cannot start rank {r}: {e}");
                worst = 1;
            }
        }
    }
    for (r, mut c, forward) in children {
        let code = match c.wait() {
            Ok(s) => s.code().map_or(1, |c| c.clamp(0, 255) as u8),
            Err(_) => 1,
        };
        if let Some(t) = forward {
            let _ = t.join();
        }
        if code != 0 {
            eprintln!("gpuspan-replay: rank {r} exited with status {code}");
        }
        worst = worst.max(code);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("ranks: {ranks} exit={worst}");
    ExitCode::from(worst)
}

/// Whether the ranks of `--ranks` run request `k` under `--duration`: rank 0 decides from its
/// own clock (`mine`) and publishes the decision as `go-<k>` in the node directory (written
/// whole, then renamed); every other rank waits for it, polling, at most
/// [`RENDEZVOUS_TIMEOUT`] (then stops). Each rank checking its own clock could let one rank
/// start a request the others never join, leaving it waiting at that request's first
/// collective.
fn rank_zero_decides(dir: &std::path::Path, rank: u32, k: u32, mine: bool) -> bool {
    let path = dir.join(format!("go-{k}"));
    if rank == 0 {
        let tmp = dir.join(format!(".go-{k}"));
        if std::fs::write(&tmp, if mine { "1" } else { "0" }).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            eprintln!("gpuspan-replay: rank 0 cannot publish its decision in {}", dir.display());
        }
        return mine;
    }
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(v) = std::fs::read_to_string(&path) {
            return v == "1";
        }
        if t0.elapsed() > RENDEZVOUS_TIMEOUT {
            eprintln!("gpuspan-replay: rank {rank}: no decision from rank 0 on request {k}; stopping");
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// `--devices K`: one thread per device, each taking the next request from `requests` when
/// it is free. Returns the summed summary and each device's, with its thread's OS id.
fn on_devices(
    lib: &libloading::Library,
    requests: impl Iterator<Item = Workload> + Send,
    opts: &ExecOptions,
    devices: u32,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Result<(ExecSummary, Vec<(u32, ExecSummary)>), ExecError> {
    let queue = std::sync::Mutex::new(requests);
    let per_device: Vec<Result<(u32, ExecSummary), ExecError>> = std::thread::scope(|scope| {
        let queue = &queue;
        let threads: Vec<_> = (0..devices)
            .map(|d| {
                let opts = ExecOptions { device: d as i32, ..*opts };
                scope.spawn(move || {
                    let next = std::iter::from_fn(|| queue.lock().unwrap_or_else(|e| e.into_inner()).next());
                    execute_requests(lib, next, &opts, &mut || keep_going()).map(|s| (gpuspan_simgpu::sim::os_tid(), s))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let per_device = per_device.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut sum = ExecSummary { device_name: per_device[0].1.device_name.clone(), ..ExecSummary::default() };
    for (_, p) in &per_device {
        sum.kernels += p.kernels;
        sum.memcpys += p.memcpys;
        sum.memsets += p.memsets;
        sum.failed_allocs += p.failed_allocs;
    }
    Ok((sum, per_device))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let slow_rank = match args.slow_rank.as_deref().map(|s| parse_slow_rank(s, args.ranks)).transpose() {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    if args.devices > 1 && (args.ranks > 1 || args.cuda_graph || args.exit_after_ms.is_some()) {
        return fail(2, "--devices: not with --ranks, --cuda-graph or --exit-after-ms");
    }
    if args.ranks > 1 {
        if !PRESET_NAMES.contains(&args.workload.as_str()) {
            return fail(2, "--ranks: only the presets run sequence-parallel");
        }
        if args.cuda_graph {
            return fail(2, "--ranks: --cuda-graph captures single-rank forward passes only");
        }
        if std::env::var_os("RANK").is_none() {
            return launch_ranks(args.ranks);
        }
    } else if slow_rank.is_some() {
        return fail(2, "--slow-rank needs --ranks");
    }
    // This process's rank, when it is one of several.
    let parallel = (args.ranks > 1)
        .then(|| std::env::var("RANK").ok().and_then(|r| r.parse::<u32>().ok()).filter(|r| *r < args.ranks).unwrap_or(0));
    // `--requests 0`, or `--duration` without `--requests`: without end.
    let requests = match (args.requests, args.duration) {
        (Some(0), _) | (None, Some(_)) => None,
        (Some(n), _) => Some(n),
        (None, None) => Some(1),
    };
    let mut source = if PRESET_NAMES.contains(&args.workload.as_str()) {
        let p = PresetRequests::new(&args.workload, args.steps, requests).expect("known preset");
        match parallel {
            Some(rank) => {
                let par = Parallel::stdit(rank, args.ranks, slow_rank, p.latent_bytes());
                Requests::Parallel(p, par)
            }
            None => Requests::Preset(p),
        }
    } else {
        match gpuspan_export::read_trace(Path::new(&args.workload)) {
            Ok(trace) => Requests::Trace {
                one: workload_from_trace(&trace),
                stem: trace_stem(&args.workload),
                traceparent: args.traceparent.clone(),
                requests,
                next: 0,
            },
            Err(e) => return fail(2, format!("{e} (presets: {})", PRESET_NAMES.join(", "))),
        }
    };
    let adjust = match Adjustments::parse(&args.request_attr, args.slow_step.as_deref(), args.oom_at_step, args.kernel_ns) {
        Ok(a) => a,
        Err(e) => return fail(2, e),
    };
    // The first request is checked before anything runs (every request has its steps).
    let Some(mut first) = source.next() else {
        return fail(2, "--requests: nothing to run");
    };
    if let Err(e) = adjust.apply(&mut first, 0) {
        return fail(2, e);
    }
    if args.cuda_graph {
        if args.slow_step.is_some() {
            return fail(2, "--cuda-graph: --slow-step cannot be honoured: a replayed CUDA graph runs the kernels it captured");
        }
        if let Err(e) = graph_plan::plan(&first) {
            return fail(2, format!("--cuda-graph: {e}"));
        }
    }
    let lib = match open_driver() {
        Ok(l) => l,
        Err(e) => return fail(3, e),
    };
    if let Some(kind) = args.activity_client {
        if let Err(e) = gpuspan_simgpu::workload::activity_client::start(kind) {
            return fail(1, format!("--activity-client: {e}"));
        }
    }
    arrange_exits(args.exit_on_sigterm, args.exit_after_ms);
    let opts = ExecOptions {
        announce_streams: !args.legacy_stream,
        cuda_graph: args.cuda_graph,
        unload_module: args.unload_module,
        print_request_begins: args.print_request_begins,
        device: 0,
    };
    let started = std::time::Instant::now();
    let sim_started_ns = sim_host_now_ns(&lib);
    let ran = std::sync::atomic::AtomicU32::new(0);
    let asked = std::sync::atomic::AtomicU32::new(0);
    // A rank of `--ranks` with `--duration`: rank 0 decides for all (module docs).
    let node_dir = std::env::var_os("GPUSPAN_SIM_NODE_DIR").map(std::path::PathBuf::from).filter(|_| args.duration.is_some());
    let keep_going = || {
        let mine = args.duration.is_none_or(|d| started.elapsed() < d);
        let k = asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let go = match (parallel, &node_dir) {
            (Some(rank), Some(dir)) => rank_zero_decides(dir, rank, k, mine),
            _ => mine,
        };
        ran.fetch_add(u32::from(go), std::sync::atomic::Ordering::Relaxed);
        go
    };
    keep_announced(&mut first, args.announce);
    let announce = args.announce;
    let adjusted = source.enumerate().map(move |(i, mut w)| {
        // Checked on the first request: the others have the same steps.
        let _ = adjust.apply(&mut w, i as u32 + 1);
        keep_announced(&mut w, announce);
        w
    });
    let all = std::iter::once(first).chain(adjusted);
    let result = if args.devices > 1 {
        on_devices(&lib, all, &opts, args.devices, &keep_going)
    } else {
        execute_requests(&lib, all, &opts, &mut { keep_going }).map(|s| (s, Vec::new()))
    };
    match result {
        Ok((s, per_device)) => {
            println!(
                "replayed {} kernels, {} memcpy, {} memset on {}",
                s.kernels, s.memcpys, s.memsets, s.device_name
            );
            for (d, (tid, p)) in per_device.iter().enumerate() {
                println!("device {d}: thread {tid} replayed {} kernels, {} memcpy, {} memset", p.kernels, p.memcpys, p.memsets);
            }
            println!("worker thread cpu_ns {}", thread_cpu_ns());
            if let (Some(t0), Some(t1)) = (sim_started_ns, sim_host_now_ns(&lib)) {
                println!("sim clock: elapsed_ns={} virtual={}", t1.saturating_sub(t0), u8::from(s.virtual_clock));
            }
            if requests.is_none() {
                println!("requests: {}", ran.load(std::sync::atomic::Ordering::Relaxed));
            }
            if let Some(d) = args.linger {
                use std::io::Write;
                println!("lingering {}", humantime::format_duration(d));
                let _ = std::io::stdout().flush();
                std::thread::sleep(d);
            }
            if s.failed_allocs > 0 {
                println!("{} allocations refused (out of memory)", s.failed_allocs);
            }
            if let Some(line) = sim_cupti_line(&lib) {
                println!("{line}");
            }
            if args.cuda_graph {
                println!("cuda graph: captured={} launches={}", s.graphs_captured, s.graph_launches);
            }
            if parallel.is_some() {
                if let Some(t) = node_truth(&lib) {
                    println!(
                        "node truth: rank={} world={} collectives={} comm_ns={} compute_ns={} exposed_comm_ns={} nvlink_tx_bytes={}",
                        t.rank, t.world_size, t.collectives, t.comm_ns, t.compute_ns, t.exposed_comm_ns, t.nvlink_tx_bytes
                    );
                    if let Some(x) = node_transfers(&lib) {
                        let list: Vec<String> = x.iter().map(|(s, e, b)| format!("{s}:{e}:{b}")).collect();
                        println!("node transfers: rank={} {}", t.rank, list.join(","));
                    }
                }
            }
            if args.activity_client.is_some() {
                let r = gpuspan_simgpu::workload::activity_client::finish();
                println!(
                    "activity client: lent={} returned={} kernels={} canary_intact={}",
                    r.lent,
                    r.returned,
                    r.kernels,
                    u8::from(r.canary_intact)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ ExecError::NotCapturable(_)) => fail(2, e),
        Err(e) => fail(1, e),
    }
}

//! `gpuspan-replay WORKLOAD [--steps N] [--requests N]`: the replay worker.
//!
//! Behaves like a real inference worker: opens `libcuda.so.1` at run time, `cuInit(0)`
//! (where `CUDA_INJECTION64_PATH` takes effect), launches the workload's kernels through the
//! driver API and announces requests / steps / stages as NVTX ranges through the NVTX v3
//! loader logic (`NVTX_INJECTION64_PATH`). WORKLOAD is a built-in preset (`stdit`,
//! `wan2.1`) or a Kineto trace file (`.json` / `.json.gz`).
//!
//! Each request is an NVTX range `gpuspan.request <traceparent> model=<name>`: presets
//! build theirs; a trace replay is wrapped in one, with `--traceparent` if given (every
//! request then shares that parent span) or else the deterministic
//! `preset::traceparent(<file stem>, request index)`.
//!
//! The workload's streams are named to the agent (`gpuspan_use_streams`, when it is in the
//! process) so coarse mode times scopes on them; `--legacy-stream` leaves them unnamed.
//!
//! Exit codes: 0 done; 1 a CUDA call failed; 2 bad workload (unknown preset, unreadable or
//! invalid trace); 3 no `libcuda.so.1`. Errors are one line on stderr.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use gpuspan_simgpu::workload::exec::{execute_with, open_driver, ExecOptions};
use gpuspan_simgpu::workload::from_trace::workload_from_trace;
use gpuspan_simgpu::workload::preset::{preset, traceparent, DEFAULT_STEPS, PRESET_NAMES};
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
    /// Requests to run (a trace is replayed this many times).
    #[arg(long, default_value_t = 1)]
    requests: u32,
    /// W3C traceparent of the replayed requests (trace files only).
    #[arg(long)]
    traceparent: Option<String>,
    /// Do not name the streams to gpuspan (`gpuspan_use_streams`): behave like a worker that
    /// only announces NVTX ranges, so coarse mode times scopes on the legacy default stream.
    #[arg(long)]
    legacy_stream: bool,
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

/// On the simulated H100: `sim cupti: subscribes=N enables=N unsubscribes=N subscribed=0|1
/// kinds_enabled=N` (the sim's `gpuspanSimCuptiCounters` / `gpuspanSimCuptiSubscription`),
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
        let (mut s, mut e, mut u, mut held, mut k) = (0u64, 0u64, 0u64, 0, 0u64);
        counters(&mut s, &mut e);
        subscription(&mut u, &mut held, &mut k);
        Some(format!("sim cupti: subscribes={s} enables={e} unsubscribes={u} subscribed={held} kinds_enabled={k}"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workload = if PRESET_NAMES.contains(&args.workload.as_str()) {
        preset(&args.workload, args.steps, args.requests).expect("known preset")
    } else {
        match gpuspan_export::read_trace(Path::new(&args.workload)) {
            Ok(trace) => {
                let one = workload_from_trace(&trace);
                let stem = trace_stem(&args.workload);
                let mut w = Workload::new();
                for r in 0..args.requests {
                    let tp = args.traceparent.clone().unwrap_or_else(|| traceparent(&stem, r));
                    w.ops.push(Op::RangePush(format!("gpuspan.request {tp} model={stem}")));
                    w.extend(&one);
                    w.ops.push(Op::RangePop);
                }
                w
            }
            Err(e) => return fail(2, format!("{e} (presets: {})", PRESET_NAMES.join(", "))),
        }
    };
    let lib = match open_driver() {
        Ok(l) => l,
        Err(e) => return fail(3, e),
    };
    match execute_with(&lib, &workload, &ExecOptions { announce_streams: !args.legacy_stream }) {
        Ok(s) => {
            println!(
                "replayed {} kernels, {} memcpy, {} memset on {}",
                s.kernels, s.memcpys, s.memsets, s.device_name
            );
            if let Some(line) = sim_cupti_line(&lib) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

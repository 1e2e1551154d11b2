//! `gpuspan run | demo | replay`: start a worker with the agent injected.
//!
//! The agent goes in through `LD_PRELOAD` (DESIGN.md "Three ways to load the agent", way 1),
//! with `NVTX_INJECTION64_PATH` pointing at it too, so the worker's NVTX ranges reach it.
//! `--sim` installs the simulated H100 (symlinks named `libcuda.so.1`, `libcupti.so.12`,
//! `libnvidia-ml.so.1`, … to one `libgpuspan_simgpu.so`) into a private directory put first
//! on `LD_LIBRARY_PATH`.

use crate::artifacts;
use gpuspan_core::stats::Stats;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn prepend_path_var(var: &str, first: &Path, sep: &str) -> OsString {
    let mut v = OsString::from(first.as_os_str());
    if let Some(old) = std::env::var_os(var).filter(|o| !o.is_empty()) {
        v.push(sep);
        v.push(old);
    }
    v
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Result of one injected run.
pub struct RunOutcome {
    /// The worker's exit status code (128 + signal when killed by one).
    pub code: i32,
    /// The captures the agent wrote, one per process that collected
    /// (`OUT/capture-<pid>.json.gz`), sorted by name.
    pub captures: Vec<PathBuf>,
    /// Wall time of the worker.
    pub elapsed: Duration,
}

/// Where `run` / `demo` / `replay` have the agent serve Prometheus metrics unless
/// `GPUSPAN_METRICS_ADDR` is set (9464: the OpenTelemetry Prometheus exporter's port).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// The agent's exit budget on the simulated H100 (`--sim`, `demo`, `replay`) unless
/// `GPUSPAN_EXIT_BUDGET` is set: there the whole capture is the point and no orchestrator is
/// waiting to kill the worker, while a debug build of the agent writes a 100k-kernel capture
/// in seconds. Real workers keep the agent's own default (2 s).
pub const SIM_EXIT_BUDGET: &str = "60s";

/// Runs `cmd` with the agent injected. The captures an earlier run left in `out` are
/// removed first, so `out` ends up holding this run's (one per process that collected).
/// With `auto` and a Python `cmd`, the Python auto-instrumentation is switched on
/// ([`crate::python_auto`]). Errors are one-line messages and an exit code.
pub fn run_injected(
    cmd: &[String],
    mode: &str,
    out: &Path,
    sim: bool,
    auto: bool,
    label: Option<&str>,
) -> Result<RunOutcome, (String, u8)> {
    let agent = artifacts::agent_lib().map_err(|e| (e.to_string(), 3))?;
    let out = absolute(out);
    for old in gpuspan_export::process_captures(&out) {
        std::fs::remove_file(&old).map_err(|e| (format!("cannot replace {}: {e}", old.display()), 2))?;
    }
    let (program, args) = cmd.split_first().ok_or_else(|| ("no command given".to_string(), 2))?;
    let mut c = Command::new(program);
    c.args(args)
        .env("LD_PRELOAD", prepend_path_var("LD_PRELOAD", &agent, ":"))
        .env("NVTX_INJECTION64_PATH", &agent)
        .env("GPUSPAN_MODE", mode)
        .env("GPUSPAN_OUT", &out);
    if auto && crate::python_auto::is_python(program) {
        match crate::python_auto::package_dir() {
            Some(dir) => {
                c.env("GPUSPAN_AUTO", "1").env("PYTHONPATH", crate::python_auto::pythonpath(&dir));
            }
            None => eprintln!(
                "gpuspan: warning: the gpuspan Python package was not found (set GPUSPAN_PYTHON_DIR); {program} runs without auto-instrumentation"
            ),
        }
    }
    // `run` and `demo` serve metrics by default (DESIGN.md); the user's setting wins.
    if std::env::var_os("GPUSPAN_METRICS_ADDR").is_none() {
        c.env("GPUSPAN_METRICS_ADDR", DEFAULT_METRICS_ADDR);
    }
    let _simdir = if sim {
        let sim_lib = artifacts::sim_lib().map_err(|e| (e.to_string(), 3))?;
        let dir = tempfile::Builder::new()
            .prefix("gpuspan-sim-")
            .tempdir()
            .map_err(|e| (format!("cannot create a directory for the simulated H100: {e}"), 3))?;
        gpuspan_simgpu::install::install(dir.path(), &sim_lib)
            .map_err(|e| (format!("cannot install the simulated H100 into {}: {e}", dir.path().display()), 3))?;
        c.env("LD_LIBRARY_PATH", prepend_path_var("LD_LIBRARY_PATH", dir.path(), ":"));
        if std::env::var_os("GPUSPAN_EXIT_BUDGET").is_none() {
            c.env("GPUSPAN_EXIT_BUDGET", SIM_EXIT_BUDGET);
        }
        Some(dir)
    } else {
        None
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("{} {}", label.unwrap_or("running"), cmd.join(" ")));
    bar.enable_steady_tick(Duration::from_millis(120));
    let t0 = Instant::now();
    let status = c.status().map_err(|e| {
        bar.finish_and_clear();
        (format!("cannot start {program}: {e}"), 2)
    })?;
    let elapsed = t0.elapsed();
    bar.finish_and_clear();
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok(RunOutcome { code, captures: gpuspan_export::process_captures(&out), elapsed })
}

fn exit_with(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `gpuspan run`.
pub fn run(cmd: &[String], mode: &str, out: &Path, sim: bool, auto: bool, label: Option<&str>) -> ExitCode {
    match run_injected(cmd, mode, out, sim, auto, label) {
        Ok(o) => {
            for p in &o.captures {
                eprintln!("gpuspan: capture {}", p.display());
            }
            exit_with(o.code)
        }
        Err((msg, code)) => {
            eprintln!("gpuspan: {msg}");
            ExitCode::from(code)
        }
    }
}

/// `gpuspan replay TRACE`: checks the trace reads, then replays it on the simulated H100.
pub fn replay(trace: &Path, out: &Path) -> ExitCode {
    if let Err(e) = gpuspan_export::read_trace(trace) {
        eprintln!("gpuspan: {e}");
        return ExitCode::from(2);
    }
    let bin = match artifacts::replay_bin() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gpuspan: {e}");
            return ExitCode::from(3);
        }
    };
    let cmd = vec![bin.to_string_lossy().into_owned(), absolute(trace).to_string_lossy().into_owned()];
    run(&cmd, "fine", out, true, false, Some("replaying"))
}

/// `gpuspan demo`: the stdit preset on the simulated H100, then `DIR/waterfall.html` next to
/// the capture, the per-stage table, and the paths of both files.
pub fn demo(out: &Path, steps: u32) -> ExitCode {
    let bin = match artifacts::replay_bin() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gpuspan: {e}");
            return ExitCode::from(3);
        }
    };
    let cmd = vec![bin.to_string_lossy().into_owned(), "stdit".into(), "--steps".into(), steps.to_string()];
    let o = match run_injected(&cmd, "fine", out, true, false, Some("simulated H100: stdit")) {
        Ok(o) => o,
        Err((msg, code)) => {
            eprintln!("gpuspan: {msg}");
            return ExitCode::from(code);
        }
    };
    if o.code != 0 {
        eprintln!("gpuspan: the worker exited with {}", o.code);
        return exit_with(o.code);
    }
    // The replay worker is the one process that collects.
    let Some(capture) = o.captures.into_iter().next() else {
        eprintln!("gpuspan: the agent wrote no capture (see its warnings above)");
        return ExitCode::from(1);
    };
    let trace = match gpuspan_export::read_trace(&capture) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gpuspan: {e}");
            return ExitCode::from(2);
        }
    };
    let stats = gpuspan_core::stats::compute(&trace, &capture.to_string_lossy());
    // The waterfall page of every step, next to the capture.
    let page = capture.with_file_name("waterfall.html");
    let waterfall = gpuspan_export::waterfall::Waterfall::from_trace(&trace, &capture.to_string_lossy());
    if let Err(e) = gpuspan_export::waterfall::write_html(&waterfall, None, &page) {
        eprintln!("gpuspan: cannot write {}: {e}", page.display());
        return ExitCode::from(2);
    }
    drop(waterfall);
    print_stage_table(&stats);
    println!();
    println!(
        "{} kernels in {} steps, GPU busy {:.1}% of {:.1} ms; ran in {:.1} s",
        stats.kernel_count,
        stats.steps.len(),
        if stats.gpu_span_us > 0.0 { 100.0 * stats.gpu_busy_us / stats.gpu_span_us } else { 0.0 },
        stats.gpu_span_us / 1000.0,
        o.elapsed.as_secs_f64()
    );
    println!("capture: {}", capture.display());
    println!("waterfall: {}", page.display());
    ExitCode::SUCCESS
}

/// Prints the per-stage table (stage, kernels, total ms, share of kernel time).
pub fn print_stage_table(stats: &Stats) {
    println!("{:<22} {:>9} {:>12} {:>7}", "stage", "kernels", "total ms", "share");
    for s in &stats.stages {
        let share = if stats.kernel_total_us > 0.0 { 100.0 * s.total_us / stats.kernel_total_us } else { 0.0 };
        println!("{:<22} {:>9} {:>12.3} {:>6.1}%", s.stage, s.count, s.total_us / 1000.0, share);
    }
    println!(
        "{:<22} {:>9} {:>12.3} {:>6.1}%",
        "total",
        stats.kernel_count,
        stats.kernel_total_us / 1000.0,
        100.0
    );
}

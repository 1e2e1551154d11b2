//! `gpuspan`: the command line of the gpuspan profiling agent.
//!
//! - `demo`, `run`, `replay` start a worker with `libgpuspan.so` injected (and, with `--sim`,
//!   the simulated H100 under it) and leave `DIR/capture-<pid>.json.gz` behind, one per
//!   process that collected ([`cmd_run`]);
//! - `stats` summarises a capture, any Kineto trace, or a directory of them ([`cmd_stats`]);
//! - `waterfall` draws one step's kernels per stream, in the terminal or as HTML
//!   ([`cmd_waterfall`]);
//! - `diff` compares two traces per stage, kernel and step ([`cmd_diff`]);
//! - `status PID` asks a running worker's agent for its state over its control socket
//!   ([`cmd_status`]).
//!
//! Exit codes: the worker's own for `run` / `demo` / `replay`; 2 for a bad input file or a
//! usage error, or when `status` cannot reach the process's agent; 3 when the agent or
//! simulator libraries cannot be found.
#![forbid(unsafe_code)]

mod artifacts;
mod cmd_capture;
mod cmd_diff;
mod cmd_run;
mod cmd_stats;
mod cmd_status;
mod cmd_waterfall;
mod input;
mod python_auto;
mod steps_arg;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "gpuspan", version, about = "GPU-side profiling agent for DiT inference workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Built-in DiT video workload (stdit preset) on the simulated H100 with the agent
    /// injected: writes DIR/capture-<pid>.json.gz and DIR/waterfall.html and prints the
    /// per-stage table.
    Demo {
        /// Output directory.
        #[arg(long, default_value = "gpuspan-out")]
        out: PathBuf,
        /// Denoising steps.
        #[arg(long, default_value_t = 50)]
        steps: u32,
    },
    /// Runs CMD with the agent injected (LD_PRELOAD).
    Run {
        /// Collection mode: off, coarse, fine.
        #[arg(long, default_value = "coarse")]
        mode: String,
        /// Output directory.
        #[arg(long, default_value = "gpuspan-out")]
        out: PathBuf,
        /// Put the simulated H100 under CMD.
        #[arg(long)]
        sim: bool,
        /// Do not switch on the Python auto-instrumentation (by default a Python CMD gets
        /// request / step / stage scopes from its torch modules, `python/gpuspan/auto.py`).
        #[arg(long)]
        no_auto: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Replays a Kineto trace on the simulated H100 through the agent.
    Replay {
        /// The Kineto / torch.profiler trace (.json or .json.gz).
        trace: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "gpuspan-out")]
        out: PathBuf,
    },
    /// Kernel / stage / step breakdown of a capture or a Kineto trace.
    Stats {
        /// The trace file (.json or .json.gz), or a directory of them (read as one).
        file: PathBuf,
        /// Print the DESIGN.md JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Where steps come from: `scopes` (the trace's step ranges) or `auto` (detected
        /// from the repeating kernel sequence). Default: auto when the trace names no steps.
        #[arg(long, value_enum)]
        steps: Option<steps_arg::StepsMode>,
        /// Refuse a trace with malformed events (default: skip and count them, one warning).
        #[arg(long)]
        strict: bool,
    },
    /// Per-step kernel waterfall: one row per stream, bars coloured by stage.
    Waterfall {
        /// The trace file (.json or .json.gz), or a directory of them (read as one).
        file: PathBuf,
        /// Step to draw (index into the trace's steps, 0-based); default: the slowest.
        #[arg(long)]
        step: Option<usize>,
        /// Write a self-contained HTML waterfall of every step to OUT instead.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Where steps come from: `scopes` (the trace's step ranges) or `auto` (detected
        /// from the repeating kernel sequence). Default: auto when the trace names no steps.
        #[arg(long, value_enum)]
        steps: Option<steps_arg::StepsMode>,
        /// Refuse a trace with malformed events (default: skip and count them, one warning).
        #[arg(long)]
        strict: bool,
    },
    /// What got slower from A to B: per stage, per kernel, per step.
    Diff {
        /// The baseline trace, or a directory of them.
        a: PathBuf,
        /// The trace (or directory) to compare with it.
        b: PathBuf,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Exit 1 when a stage slowed by more than PCT percent (CI gates, canaries).
        #[arg(long, value_name = "PCT")]
        fail_over: Option<f64>,
        /// Where steps come from: `scopes` (the trace's step ranges) or `auto` (detected
        /// from the repeating kernel sequence). Default: auto when the trace names no steps.
        #[arg(long, value_enum)]
        steps: Option<steps_arg::StepsMode>,
        /// Refuse a trace with malformed events (default: skip and count them, one warning).
        #[arg(long)]
        strict: bool,
    },
    /// Opens a fine-capture window in a running worker (coarse mode) and waits, with a
    /// progress bar, until its capture is written.
    Capture {
        /// The worker's process id.
        pid: u32,
        /// Capture the next N steps.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000), group = "size", required_unless_present_any = ["duration", "requests"])]
        steps: Option<u64>,
        /// Capture whole steps for this long (e.g. 2s, 500ms, 1m).
        #[arg(long, value_name = "D", group = "size")]
        duration: Option<String>,
        /// Capture the next N requests, whole.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000), group = "size")]
        requests: Option<u64>,
        /// Directory for the capture (default: the worker's GPUSPAN_OUT/window-<pid>-<id>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// State of a running worker's agent (mode, records, drops, spans) over its control
    /// socket.
    Status {
        /// The worker's process id.
        pid: u32,
        /// Print the agent's reply (one JSON object) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Demo { out, steps } => cmd_run::demo(&out, steps),
        Command::Run { mode, out, sim, no_auto, cmd } => cmd_run::run(&cmd, &mode, &out, sim, !no_auto, None),
        Command::Replay { trace, out } => cmd_run::replay(&trace, &out),
        Command::Stats { file, json, steps, strict } => cmd_stats::run(&file, json, steps, strict),
        Command::Waterfall { file, step, html, steps, strict } => {
            cmd_waterfall::run(&file, step, html.as_deref(), steps, strict)
        }
        Command::Diff { a, b, json, fail_over, steps, strict } => cmd_diff::run(&a, &b, json, fail_over, steps, strict),
        Command::Status { pid, json } => cmd_status::run(pid, json),
        Command::Capture { pid, steps, duration, requests, out } => {
            cmd_capture::run(pid, cmd_capture::size(steps, duration.as_deref(), requests), out.as_deref())
        }
    }
}

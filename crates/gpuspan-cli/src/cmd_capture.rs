//! `gpuspan capture PID --steps N | --duration D | --requests N [--out DIR]`: opens a
//! fine-capture window in a running worker whose agent is in coarse mode, over its control
//! socket (protocol v1, [`gpuspan_core::control`]; `docs/control-protocol.md`).
//!
//! It prints where the capture will be, then polls the agent's `status` (every
//! [`POLL_INTERVAL`]) with a progress bar until the window is written, and prints the
//! capture's path, kernels and steps. The window opens at the next step (request) that
//! begins, so with an idle worker this waits until work arrives.
//!
//! Exit status: 0 when the capture is written; 1 when the window failed; 2 after one line
//! `gpuspan: …` when the agent refused it (another window open, CUPTI held by another
//! client, fine mode), the request was bad, or the worker went away.

use crate::cmd_status::{fetch_status, find_socket, request};
use gpuspan_core::control::{parse_capture_reply, window_state, CaptureRequest, Request, WindowSize, WindowStatus};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// How often the window's progress is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The window's size from the command line (exactly one given; clap enforces it).
pub fn size(steps: Option<u64>, duration: Option<&str>, requests: Option<u64>) -> Result<WindowSize, String> {
    match (steps, duration, requests) {
        (Some(n), None, None) => Ok(WindowSize::Steps(n)),
        (None, Some(d), None) => {
            let d = humantime::parse_duration(d).map_err(|e| format!("--duration {d:?}: {e} (e.g. 2s, 500ms, 1m)"))?;
            let ms = d.as_millis();
            if ms == 0 {
                return Err("--duration must be at least 1ms".into());
            }
            Ok(WindowSize::DurationMs(ms.min(u64::MAX as u128) as u64))
        }
        (None, None, Some(n)) => Ok(WindowSize::Requests(n)),
        _ => Err("give exactly one of --steps, --duration, --requests".into()),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Runs `gpuspan capture`.
pub fn run(pid: u32, size: Result<WindowSize, String>, out: Option<&Path>) -> ExitCode {
    match capture(pid, size, out) {
        Ok(w) if w.state == window_state::WRITTEN => {
            println!(
                "capture: {} ({} kernels in {} steps)",
                w.capture.as_deref().unwrap_or("?"),
                w.kernels.unwrap_or(0),
                w.steps.unwrap_or(0)
            );
            if let Some(e) = &w.error {
                eprintln!("gpuspan: {e}");
            }
            ExitCode::SUCCESS
        }
        Ok(w) => {
            eprintln!("gpuspan: window {} {}: {}", w.id, w.state, w.error.as_deref().unwrap_or("no reason given"));
            ExitCode::from(1)
        }
        Err(msg) => {
            eprintln!("gpuspan: {msg}");
            ExitCode::from(2)
        }
    }
}

fn capture(pid: u32, size: Result<WindowSize, String>, out: Option<&Path>) -> Result<WindowStatus, String> {
    let size = size?;
    let path = find_socket(pid)?;
    let out = out.map(|o| absolute(o).to_string_lossy().into_owned());
    let req = Request::Capture(CaptureRequest { size, out });
    let reply = request(pid, &path, &req)?;
    let w = parse_capture_reply(&reply).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "gpuspan: window {} armed in process {pid}: {} {}; the capture will be {}/capture-{pid}.json.gz",
        w.id,
        w.target,
        w.kind,
        w.out_dir
    );
    let unit = if w.kind == "duration" { "ms" } else { w.kind.as_str() };
    let bar = indicatif::ProgressBar::new(w.target);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} window {msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} ({unit})", w.id));
    bar.enable_steady_tick(Duration::from_millis(120));
    let id = w.id;
    let last = loop {
        std::thread::sleep(POLL_INTERVAL);
        let st = match fetch_status(pid, &path) {
            Ok(st) => st,
            Err(e) => {
                bar.finish_and_clear();
                return Err(format!("lost the worker while window {id} was open: {e}"));
            }
        };
        let Some(w) = st.capture_window.filter(|w| w.id == id) else {
            bar.finish_and_clear();
            return Err(format!("process {pid} no longer reports window {id}"));
        };
        bar.set_position(w.done.min(w.target));
        bar.set_message(format!("{} ({unit}, {})", w.id, w.state));
        if [window_state::WRITTEN, window_state::FAILED, window_state::REFUSED].contains(&w.state.as_str()) {
            break w;
        }
    };
    bar.finish_and_clear();
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes() {
        assert_eq!(size(Some(3), None, None), Ok(WindowSize::Steps(3)));
        assert_eq!(size(None, Some("2s"), None), Ok(WindowSize::DurationMs(2000)));
        assert_eq!(size(None, Some("1m 30s"), None), Ok(WindowSize::DurationMs(90_000)));
        assert_eq!(size(None, Some("250ms"), None), Ok(WindowSize::DurationMs(250)));
        assert_eq!(size(None, None, Some(1)), Ok(WindowSize::Requests(1)));
        assert!(size(None, Some("soon"), None).unwrap_err().contains("--duration"));
        assert!(size(None, Some("0s"), None).is_err());
        assert!(size(None, None, None).is_err());
    }
}

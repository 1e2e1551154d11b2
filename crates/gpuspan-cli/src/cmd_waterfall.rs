//! `gpuspan waterfall FILE [--step N] [--html OUT]`: the per-step kernel waterfall of a
//! capture or any Kineto trace, in the terminal (one step) or as one self-contained HTML
//! page (every step).
//!
//! The model and both renderings live in [`gpuspan_export::waterfall`]; this module reads
//! the file, picks the step, decides on colour and reports errors.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use gpuspan_export::waterfall::{self, StepKind, TerminalOptions, Waterfall};

/// Width of the terminal waterfall, columns.
const WIDTH: usize = 80;

/// Runs `gpuspan waterfall`.
///
/// - Without `html`: prints step `step` (an index into the trace's steps as `gpuspan stats`
///   lists them; default the slowest) to stdout, coloured by stage when stdout is a terminal
///   and `NO_COLOR` is not set (anstream's rules, `CLICOLOR_FORCE` included), else plain
///   ASCII.
/// - With `html`: writes the page for every step to `html` (opening on `step`, default the
///   slowest) and prints its path.
///
/// Exit status: 0 on success; 2 after one line `gpuspan: <error>` on stderr when the file
/// cannot be read, `step` is out of range, or the page cannot be written.
pub fn run(file: &Path, step: Option<usize>, html: Option<&Path>, steps: Option<crate::steps_arg::StepsMode>, strict: bool) -> ExitCode {
    let w = match crate::input::read_ranks(file, strict) {
        Ok(crate::input::Ranked::Ranks(mut ranks)) => {
            for (_, t) in &mut ranks {
                crate::steps_arg::prepare(t, steps, file);
            }
            Waterfall::from_ranks(&ranks, &file.display().to_string())
        }
        Ok(crate::input::Ranked::One(mut trace)) => {
            crate::steps_arg::prepare(&mut trace, steps, file);
            Waterfall::from_trace(&trace, &file.display().to_string())
        }
        Err(code) => return code,
    };
    if let Some(n) = step.filter(|&n| n >= w.steps.len()) {
        eprintln!(
            "gpuspan: --step {n}: {} {}",
            file.display(),
            describe_steps(&w)
        );
        return ExitCode::from(2);
    }
    if let Some(out) = html {
        if let Err(e) = waterfall::write_html(&w, step, out) {
            eprintln!("gpuspan: cannot write {}: {e}", out.display());
            return ExitCode::from(2);
        }
        return print(&format!("waterfall: {}", out.display()));
    }
    let index = step.or_else(|| w.slowest_step()).unwrap_or(0);
    let colour = anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never;
    match waterfall::render_step(
        &w,
        index,
        &TerminalOptions {
            colour,
            width: WIDTH,
        },
    ) {
        Some(text) => print(&text),
        None => {
            eprintln!("gpuspan: {}: nothing to draw", file.display());
            ExitCode::from(2)
        }
    }
}

/// "has 6 steps (0 to 5)", naming the extra step of work outside the steps when there is one.
fn describe_steps(w: &Waterfall) -> String {
    let n = w.steps.len();
    match w.steps.last().map(|s| s.kind) {
        Some(StepKind::Whole) => "has no steps: the only step is 0 (the whole trace)".to_string(),
        Some(StepKind::Outside) => format!(
            "has {} steps (0 to {}) and step {} for the GPU work outside them",
            n - 1,
            n.saturating_sub(2),
            n - 1
        ),
        _ => format!("has {n} steps (0 to {})", n.saturating_sub(1)),
    }
}

/// Prints `text` and a newline; a closed pipe (`gpuspan waterfall f | head`) is not an error.
fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuspan: cannot write to stdout: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_file_exits_2() {
        assert_eq!(
            run(Path::new("/nonexistent/trace.json.gz"), None, None, None, false),
            ExitCode::from(2)
        );
    }
}

//! `gpuspan stats FILE [--json]`: kernel / stage / step breakdown and GPU busy / idle time
//! of a Kineto trace (a gpuspan capture or any torch.profiler trace, `.json` or `.json.gz`).
//!
//! The numbers come from [`gpuspan_core::stats::compute`]; `--json` prints that
//! [`gpuspan_core::stats::Stats`] object (its keys are the interface, DESIGN.md "Command
//! line"), otherwise a table for people.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use gpuspan_core::stats::{self, Stats};

/// Kernel rows shown in the table.
const TOP_KERNELS: usize = 15;
/// Table width, columns.
const WIDTH: usize = 80;

/// Runs `gpuspan stats`: reads `file` with [`gpuspan_export::read_trace`] and prints its
/// statistics to stdout, as pretty JSON when `json` is set, else as a table.
///
/// Exit status: 0 on success; 2 when the file cannot be read, after one line
/// `gpuspan: <error>` on stderr (the error names the file and what is wrong).
pub fn run(file: &Path, json: bool) -> ExitCode {
    let trace = match gpuspan_export::read_trace(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gpuspan: {e}");
            return ExitCode::from(2);
        }
    };
    let stats = stats::compute(&trace, &file.display().to_string());
    let out = if json {
        match serde_json::to_string_pretty(&stats) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gpuspan: {}: cannot format statistics: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    } else {
        render_table(&stats)
    };
    // A closed pipe (`gpuspan stats f | head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuspan: cannot write to stdout: {e}");
            ExitCode::from(2)
        }
    }
}

/// Formats µs for people: µs below 1 ms, ms below 1 s, else s.
fn human_us(us: f64) -> String {
    let a = us.abs();
    if a < 1_000.0 {
        format!("{us:.3} µs")
    } else if a < 1_000_000.0 {
        format!("{:.3} ms", us / 1_000.0)
    } else {
        format!("{:.3} s", us / 1_000_000.0)
    }
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1}%", 100.0 * part / whole)
    } else {
        "-".to_string()
    }
}

/// Cuts `s` to at most `max` characters (not bytes), marking the cut with `…`.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The human-readable report: totals, busy / idle, top kernels, stages, steps; every line
/// at most [`WIDTH`] columns.
fn render_table(s: &Stats) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}",
        truncate(&format!("gpuspan stats: {}", s.source), WIDTH)
    );
    let _ = writeln!(o, "{}", "=".repeat(WIDTH));
    let _ = writeln!(o, "kernels           {}", s.kernel_count);
    let _ = writeln!(o, "kernel time       {}", human_us(s.kernel_total_us));
    let _ = writeln!(o, "GPU span          {}", human_us(s.gpu_span_us));
    let _ = writeln!(
        o,
        "GPU busy          {} ({} of span)",
        human_us(s.gpu_busy_us),
        percent(s.gpu_busy_us, s.gpu_span_us)
    );
    let _ = writeln!(
        o,
        "GPU idle          {} ({} of span)",
        human_us(s.gpu_idle_us),
        percent(s.gpu_idle_us, s.gpu_span_us)
    );

    if !s.kernels.is_empty() {
        // One row of numbers per kernel, its name (cut to fit) on the line below.
        let _ = writeln!(o);
        let shown = s.kernels.len().min(TOP_KERNELS);
        let _ = writeln!(
            o,
            "top {shown} of {} kernels by total time",
            s.kernels.len()
        );
        let _ = writeln!(
            o,
            "{:>6} {:>12} {:>7} {:>11} {:>11}  stage",
            "share", "total", "count", "mean", "max"
        );
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for k in s.kernels.iter().take(TOP_KERNELS) {
            let _ = writeln!(
                o,
                "{:>6} {:>12} {:>7} {:>11} {:>11}  {}",
                percent(k.total_us, s.kernel_total_us),
                human_us(k.total_us),
                k.count,
                human_us(k.mean_us),
                human_us(k.max_us),
                truncate(&k.stage, WIDTH - 52)
            );
            let _ = writeln!(o, "       {}", truncate(&k.name, WIDTH - 7));
        }
    }

    if !s.stages.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<40} {:>8} {:>14} {:>8}",
            "stage", "kernels", "total", "share"
        );
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for st in &s.stages {
            let _ = writeln!(
                o,
                "{:<40} {:>8} {:>14} {:>8}",
                truncate(&st.stage, 40),
                st.count,
                human_us(st.total_us),
                percent(st.total_us, s.kernel_total_us)
            );
        }
    }

    if !s.steps.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<40} {:>14} {:>8} {:>14}",
            "step", "duration", "kernels", "kernel time"
        );
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for st in &s.steps {
            let _ = writeln!(
                o,
                "{:<40} {:>14} {:>8} {:>14}",
                truncate(&st.name, 40),
                human_us(st.dur_us),
                st.kernel_count,
                human_us(st.kernel_total_us)
            );
        }
    }
    while o.ends_with('\n') {
        o.pop();
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::trace::{Category, Trace, TraceEvent};

    #[test]
    fn table_fits_80_columns_and_has_sections() {
        let long = "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, c10::BFloat16 const*)";
        let mut events: Vec<TraceEvent> = (0..20)
            .map(|i| TraceEvent {
                cat: Some(Category::Kernel),
                name: format!("{long} #{i}"),
                ts_us: i as f64 * 10.0,
                dur_us: 5.0 + i as f64,
                ..Default::default()
            })
            .collect();
        events.push(TraceEvent {
            cat: Some(Category::UserAnnotation),
            name: "ProfilerStep#6".into(),
            ts_us: 0.0,
            dur_us: 1000.0,
            ..Default::default()
        });
        let s = stats::compute(
            &Trace {
                events,
                ..Default::default()
            },
            "capture.json.gz",
        );
        let t = render_table(&s);
        for line in t.lines() {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
            assert_eq!(line.trim_end(), line, "no trailing blanks");
        }
        assert!(t.contains("top 15 of 20 kernels"));
        assert!(t.contains("norm"));
        assert!(t.contains("ProfilerStep#6"));
    }

    #[test]
    fn unreadable_file_exits_2() {
        assert_eq!(
            run(Path::new("/nonexistent/trace.json.gz"), true),
            ExitCode::from(2)
        );
    }
}

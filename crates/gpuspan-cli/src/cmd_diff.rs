//! `gpuspan diff A B [--json] [--fail-over PCT]`: what got slower from trace A (the
//! baseline) to trace B, per stage, per kernel name and per step.
//!
//! The comparison is [`gpuspan_core::diff::compare`]; its module documentation defines every
//! number and the JSON keys (`--json` prints the [`gpuspan_core::diff::Diff`] object:
//! `a_source`, `b_source`, `a_steps`, `b_steps`, `a_kernel_total_us`, `b_kernel_total_us`,
//! `delta_us`, `stages`, `kernels`, `steps`, `fail_over_pct`, `failing`). In short: a
//! stage's per-step mean kernel time (its total when some of its kernels run outside
//! steps) is compared, and a change is `noise` when it lies within the range (max − min)
//! of that stage's per-step kernel time in A.
//!
//! Exit status: 0; 1 with `--fail-over PCT` when some stage slowed by more than PCT percent
//! (per-step mean, or total for stages outside steps) and is not noise, or is new; 2 when a
//! file cannot be read (one line `gpuspan: <error>` naming it) or PCT is not a number.
//! Each trace is read, summarised and dropped before the next is read.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use gpuspan_core::diff::{self, Change, Diff, DiffInput, Status};
use gpuspan_core::stats::ranks::{RankDiff, RankStats};

use crate::cmd_stats::{human_us, truncate};

/// Table width, columns (as `gpuspan stats`).
const WIDTH: usize = 100;
/// Kernel rows shown.
const TOP_KERNELS: usize = 15;
/// Step rows shown.
const TOP_STEPS: usize = 10;

/// Runs `gpuspan diff`; see the module documentation for output and exit status.
pub fn run(a: &Path, b: &Path, json: bool, fail_over: Option<f64>, steps: Option<crate::steps_arg::StepsMode>, strict: bool) -> ExitCode {
    if let Some(p) = fail_over {
        if !p.is_finite() {
            eprintln!("gpuspan: --fail-over {p}: not a finite percentage");
            return ExitCode::from(2);
        }
    }
    let summarise = |p: &Path| -> Result<(DiffInput, Option<RankStats>), ExitCode> {
        let (mut t, ranks) = crate::input::read_ranked(p, strict)?;
        crate::steps_arg::prepare(&mut t, steps, p);
        Ok((DiffInput::new(&t, &p.display().to_string()), ranks))
    };
    let ia = match summarise(a) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let ib = match summarise(b) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let ((ia, ra), (ib, rb)) = (ia, ib);
    let mut d = diff::compare(&ia, &ib);
    if let (Some(ra), Some(rb)) = (&ra, &rb) {
        d.ranks = Some(RankDiff::compare(ra, rb));
    }
    let failed = fail_over.is_some_and(|p| d.set_fail_over(p));
    let out = if json {
        match serde_json::to_string_pretty(&d) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gpuspan: cannot format the comparison: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        render(&d)
    };
    let code = if failed { ExitCode::from(1) } else { ExitCode::SUCCESS };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            eprintln!("gpuspan: cannot write to stdout: {e}");
            ExitCode::from(2)
        }
    }
}

/// Signed µs for people (`+1.234 ms`, `-5.000 µs`, `0`).
fn signed_us(us: f64) -> String {
    if us == 0.0 {
        "0".to_string()
    } else if us > 0.0 {
        format!("+{}", human_us(us))
    } else {
        human_us(us)
    }
}

fn signed_pct(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:+.1}%"),
        None => "-".to_string(),
    }
}

/// One word for a row: `new`, `vanished`, `noise`, `slower`, `faster`, `same`.
fn verdict(c: &Change) -> &'static str {
    match c.status {
        Status::New => "new",
        Status::Vanished => "vanished",
        Status::Changed if c.value_delta_us == 0.0 => "same",
        Status::Changed if c.noise => "noise",
        Status::Changed if c.value_delta_us > 0.0 => "SLOWER",
        Status::Changed => "faster",
    }
}

/// The report for people: totals, stages, top kernels, top steps, the fail-over verdict;
/// every line at most [`WIDTH`] columns.
fn render(d: &Diff) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", truncate(&format!("gpuspan diff: A = {}", d.a_source), WIDTH));
    let _ = writeln!(o, "{}", truncate(&format!("              B = {}", d.b_source), WIDTH));
    let _ = writeln!(o, "{}", "=".repeat(WIDTH));
    let pct = (d.a_kernel_total_us != 0.0).then(|| 100.0 * d.delta_us / d.a_kernel_total_us);
    let _ = writeln!(
        o,
        "kernel time   A {}   B {}   {} ({})",
        human_us(d.a_kernel_total_us),
        human_us(d.b_kernel_total_us),
        signed_us(d.delta_us),
        signed_pct(pct)
    );
    let _ = writeln!(o, "steps         A {}   B {}", d.a_steps, d.b_steps);
    let _ = writeln!(o, "noise         a change within the range (max - min) of A's per-step times");

    if !d.stages.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "stages: kernel time per step (\"/step\") or in total, A vs B");
        let _ = writeln!(
            o,
            "{:<24} {:>11} {:>11} {:>12} {:>8} {:>11}  verdict",
            "stage", "A", "B", "change", "change%", "A range"
        );
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for s in &d.stages {
            let c = &s.change;
            let basis = match c.basis {
                diff::Basis::StepMean => "/step",
                diff::Basis::Total => "total",
            };
            let _ = writeln!(
                o,
                "{:<24} {:>11} {:>11} {:>12} {:>8} {:>11}  {} ({basis})",
                truncate(&s.stage, 24),
                human_us(c.a_value_us),
                human_us(c.b_value_us),
                signed_us(c.value_delta_us),
                signed_pct(c.change_pct),
                human_us(c.noise_us),
                verdict(c)
            );
        }
    }

    let moved: Vec<_> = d.kernels.iter().filter(|k| k.change.delta_us != 0.0).collect();
    let _ = writeln!(o);
    if moved.is_empty() {
        let _ = writeln!(o, "kernels: no kernel's total time changed ({} kernel names)", d.kernels.len());
    } else {
        let shown = moved.len().min(TOP_KERNELS);
        let _ = writeln!(o, "kernels: top {shown} of {} by change of total time", moved.len());
        let _ = writeln!(
            o,
            "{:>12} {:>8} {:>7} {:>7} {:>11} {:>11}  {:<9} stage",
            "change", "change%", "A count", "B count", "A mean", "B mean", "verdict"
        );
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for k in moved.iter().take(TOP_KERNELS) {
            let c = &k.change;
            let mean = |t: f64, n: usize| if n > 0 { human_us(t / n as f64) } else { "-".to_string() };
            let line = format!(
                "{:>12} {:>8} {:>7} {:>7} {:>11} {:>11}  {:<9} {}",
                signed_us(c.delta_us),
                signed_pct(c.ratio.map(|r| 100.0 * (r - 1.0))),
                c.a_count,
                c.b_count,
                mean(c.a_total_us, c.a_count),
                mean(c.b_total_us, c.b_count),
                verdict(c),
                k.stage
            );
            let _ = writeln!(o, "{}", truncate(&line, WIDTH));
            let _ = writeln!(o, "       {}", truncate(&k.name, WIDTH - 7));
        }
    }

    if !d.steps.is_empty() {
        let shown = d.steps.len().min(TOP_STEPS);
        let _ = writeln!(o);
        let _ = writeln!(o, "steps: top {shown} of {} by change of kernel time (i-th step of A vs of B)", d.steps.len());
        let _ = writeln!(
            o,
            "{:>5} {:<24} {:>11} {:>11} {:>12} {:>8}  verdict",
            "#", "step (A / B)", "A", "B", "change", "change%"
        );
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for s in d.steps.iter().take(TOP_STEPS) {
            let name = match (&s.a_name, &s.b_name) {
                (Some(a), Some(b)) if a == b => a.clone(),
                (Some(a), Some(b)) => format!("{a} / {b}"),
                (Some(a), None) => a.clone(),
                (None, Some(b)) => b.clone(),
                (None, None) => String::new(),
            };
            let v = match s.status {
                Status::New => "new",
                Status::Vanished => "vanished",
                Status::Changed if s.delta_us == 0.0 => "same",
                Status::Changed if s.noise => "noise",
                Status::Changed if s.delta_us > 0.0 => "SLOWER",
                Status::Changed => "faster",
            };
            let _ = writeln!(
                o,
                "{:>5} {:<24} {:>11} {:>11} {:>12} {:>8}  {}",
                s.index,
                truncate(&name, 24),
                human_us(s.a_kernel_total_us),
                human_us(s.b_kernel_total_us),
                signed_us(s.delta_us),
                signed_pct(s.change_pct),
                v
            );
        }
    }

    if let Some(r) = &d.ranks {
        let _ = writeln!(o);
        let _ = writeln!(o, "ranks (compute = GPU time of a rank's own kernels; whole capture)");
        let _ = writeln!(o, "{:<6} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11}", "rank", "A compute", "B compute", "change", "A comm", "B comm", "A exposed", "B exposed");
        let _ = writeln!(o, "{}", "-".repeat(WIDTH));
        for c in &r.ranks {
            let _ = writeln!(
                o,
                "{:<6} {:>11} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11}",
                c.rank,
                human_us(c.a_compute_us),
                human_us(c.b_compute_us),
                signed_pct(c.compute_change_pct),
                human_us(c.a_comm_us),
                human_us(c.b_comm_us),
                human_us(c.a_exposed_comm_us),
                human_us(c.b_exposed_comm_us)
            );
        }
        if !r.unmatched.is_empty() {
            let _ = writeln!(o, "ranks in only one of the two: {:?}", r.unmatched);
        }
        for st in &r.steps {
            let _ = writeln!(
                o,
                "step #{:<3} straggler A rank {} (+{} over the median)   B rank {} (+{})",
                st.index,
                st.a_straggler_rank,
                human_us(st.a_spread_us),
                st.b_straggler_rank,
                human_us(st.b_spread_us)
            );
        }
    }

    if let Some(p) = d.fail_over_pct {
        let _ = writeln!(o);
        if d.failing.is_empty() {
            let _ = writeln!(o, "fail-over {p}%: ok, no stage slowed by more than {p}% beyond noise");
        } else {
            let list: Vec<String> = d
                .stages
                .iter()
                .filter(|s| d.failing.contains(&s.stage))
                .map(|s| format!("{} ({})", s.stage, signed_pct(s.change.change_pct)))
                .collect();
            let _ = writeln!(o, "{}", truncate(&format!("fail-over {p}%: FAILED: {}", list.join(", ")), WIDTH));
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

    fn trace(scale_ffn: f64) -> Trace {
        let mut events = Vec::new();
        for i in 0..4i64 {
            let t0 = 1000.0 * i as f64;
            events.push(TraceEvent {
                cat: Some(Category::UserAnnotation),
                name: format!("dit.step {i}/4"),
                ts_us: t0,
                dur_us: 1000.0,
                ..Default::default()
            });
            for (j, (name, stage, dur)) in
                [("gemm_ffn_with_a_rather_long_name_".repeat(5), "ffn", 100.0 * scale_ffn), ("flash".into(), "attention.spatial", 50.0 + i as f64)]
                    .into_iter()
                    .enumerate()
            {
                let corr = 10 * i + j as i64;
                events.push(TraceEvent {
                    cat: Some(Category::CudaRuntime),
                    name: "cudaLaunchKernel".into(),
                    ts_us: t0 + 1.0 + j as f64,
                    dur_us: 1.0,
                    correlation: Some(corr),
                    ..Default::default()
                });
                events.push(TraceEvent {
                    cat: Some(Category::Kernel),
                    name: name.clone(),
                    ts_us: t0 + 10.0 + 200.0 * j as f64,
                    dur_us: dur,
                    stage: Some(stage.into()),
                    correlation: Some(corr),
                    ..Default::default()
                });
            }
        }
        Trace { events, ..Default::default() }
    }

    #[test]
    fn report_fits_and_names_the_slower_stage() {
        let a = DiffInput::new(&trace(1.0), "a/capture.json.gz");
        let b = DiffInput::new(&trace(1.3), "b/capture.json.gz");
        let mut d = diff::compare(&a, &b);
        assert!(d.set_fail_over(10.0));
        let t = render(&d);
        for line in t.lines() {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
            assert_eq!(line.trim_end(), line);
        }
        assert!(t.contains("SLOWER (/step)"), "{t}");
        assert!(t.contains("+30.0%"), "{t}");
        assert!(t.contains("fail-over 10%: FAILED: ffn (+30.0%)"), "{t}");
        assert!(t.contains("same (/step)"), "attention did not move: {t}");
        let same = diff::compare(&a, &a);
        assert!(render(&same).contains("no kernel's total time changed"));
    }

    #[test]
    fn unreadable_file_exits_2() {
        assert_eq!(run(Path::new("/nonexistent/a.json"), Path::new("/nonexistent/b.json"), true, None, None, false), ExitCode::from(2));
        assert_eq!(run(Path::new("a"), Path::new("b"), true, Some(f64::NAN), None, false), ExitCode::from(2));
    }
}

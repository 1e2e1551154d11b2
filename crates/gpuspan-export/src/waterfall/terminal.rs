//! The terminal waterfall: one step, one row per (device, stream), bars scaled to the
//! step's window and drawn by stage, a legend, busy / idle and the five longest kernels.
//!
//! Every line fits [`TerminalOptions::width`] columns. Without colour the output is plain
//! ASCII: each stage has its own character ([`super::palette`]) and `.` is an idle column;
//! with colour the same characters are drawn on the stage's colour (xterm 256 colours).

use std::fmt::Write as _;

use anstyle::{Ansi256Color, Style};

use super::model::{StepKind, Waterfall};
use super::palette::{self, StageStyle};

/// Kernels listed under the waterfall.
pub const TOP_KERNELS: usize = 5;

/// Character of a column in which nothing ran.
pub const IDLE: char = '.';

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalOptions {
    /// ANSI colours (else plain ASCII).
    pub colour: bool,
    /// Line width, columns (at least 40 is used).
    pub width: usize,
}

impl Default for TerminalOptions {
    /// No colour, 80 columns.
    fn default() -> Self {
        TerminalOptions {
            colour: false,
            width: 80,
        }
    }
}

/// Formats µs for people: `us` (or `µs` with colour) below 1 ms, then ms, then s.
fn human_us(us: f64, colour: bool) -> String {
    let a = us.abs();
    if a < 1_000.0 {
        format!("{us:.1} {}", if colour { "µs" } else { "us" })
    } else if a < 1_000_000.0 {
        format!("{:.3} ms", us / 1_000.0)
    } else {
        format!("{:.3} s", us / 1_000_000.0)
    }
}

/// Cuts `s` to at most `max` characters, marking a cut with `...`; with `ascii`, the
/// separators our own labels use become their ASCII look-alikes (`·` `-`, `µ` `u`) and any
/// other non-ASCII character `?`.
fn fit(s: &str, max: usize, ascii: bool) -> String {
    let clean: String = s
        .chars()
        .map(|c| match c {
            c if c.is_control() => '?',
            '\u{b7}' if ascii => '-',
            '\u{b5}' | '\u{3bc}' if ascii => 'u',
            c if ascii && !c.is_ascii() => '?',
            c => c,
        })
        .collect();
    if clean.chars().count() <= max {
        clean
    } else if max <= 3 {
        clean.chars().take(max).collect()
    } else {
        let mut t: String = clean.chars().take(max - 3).collect();
        t.push_str("...");
        t
    }
}

fn paint(out: &mut String, text: &str, style: Option<&StageStyle>, colour: bool) {
    match style {
        Some(s) if colour => {
            let st = Style::new()
                .fg_color(Some(Ansi256Color(16).into()))
                .bg_color(Some(Ansi256Color(palette::ansi256(s.rgb)).into()));
            let _ = write!(out, "{}{text}{}", st.render(), st.render_reset());
        }
        _ => out.push_str(text),
    }
}

/// The dominant stage of each of `cells` columns of one lane over `[t0, t0 + cells·dt)`:
/// the stage with the most busy time in the column, `None` for a column with no activity.
fn lane_cells(bars: &[super::model::Bar], t0: f64, dt: f64, cells: usize) -> Vec<Option<u32>> {
    let mut acc: Vec<Vec<(u32, f64)>> = vec![Vec::new(); cells];
    for b in bars {
        let rel0 = (b.start_us - t0) / dt;
        let rel1 = (b.end_us() - t0) / dt;
        let c0 = (rel0.floor().max(0.0) as usize).min(cells - 1);
        let c1 = (rel1.floor().max(0.0) as usize).min(cells - 1);
        for (c, cell) in acc.iter_mut().enumerate().take(c1 + 1).skip(c0) {
            let (a, z) = (c as f64, c as f64 + 1.0);
            // A zero-length bar still marks its column.
            let overlap = (rel1.min(z) - rel0.max(a)).max(1e-9);
            match cell.iter_mut().find(|(s, _)| *s == b.stage) {
                Some((_, t)) => *t += overlap,
                None => cell.push((b.stage, overlap)),
            }
        }
    }
    acc.into_iter()
        .map(|cell| {
            cell.into_iter()
                .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                .map(|(s, _)| s)
        })
        .collect()
}

/// Renders step `index` of `w` (an index into [`Waterfall::steps`]); `None` when there is
/// no such step. Lines are separated by `\n`, without a trailing newline.
pub fn render_step(w: &Waterfall, index: usize, opts: &TerminalOptions) -> Option<String> {
    let step = w.steps.get(index)?;
    let width = opts.width.max(40);
    let colour = opts.colour;
    let ascii = !colour;
    let styles = palette::styles(&w.stages);
    let mut o = String::new();

    let _ = writeln!(
        o,
        "{}",
        fit(&format!("gpuspan waterfall: {}", w.source), width, ascii)
    );
    let slowest = w.slowest_step() == Some(index) && step.kind == StepKind::Range;
    let which = match step.kind {
        StepKind::Range => format!("step {index} (of 0..{})", w.steps.len() - 1),
        StepKind::Outside => format!(
            "step {index} (of 0..{}): GPU work outside the steps",
            w.steps.len() - 1
        ),
        StepKind::Whole => "no steps in the trace: all GPU work".to_string(),
    };
    let title = match step.kind {
        StepKind::Range => format!(
            "{which}: {}{}",
            step.name,
            if slowest { " (slowest)" } else { "" }
        ),
        _ => which,
    };
    let _ = writeln!(o, "{}", fit(&title, width, ascii));
    let _ = writeln!(
        o,
        "{}",
        fit(
            &format!(
                "GPU span {}, busy {:.1}%, idle {:.1}%, {} kernels, {} stream{}",
                human_us(step.span_us, colour),
                step.busy_percent(),
                if step.span_us > 0.0 {
                    100.0 - step.busy_percent()
                } else {
                    0.0
                },
                step.kernel_count,
                step.lanes.len(),
                if step.lanes.len() == 1 { "" } else { "s" }
            ),
            width,
            ascii
        )
    );
    let _ = writeln!(o);

    if step.lanes.is_empty() {
        let _ = writeln!(o, "(no GPU activity in this step)");
    } else {
        // Wide enough for the longest lane label (`rank 7 · GPU0 stream 13`), up to a third
        // of the width.
        let longest = step.lanes.iter().map(|l| l.label.chars().count()).max().unwrap_or(0);
        let label_w = (longest + 1).clamp(8, (width / 3).max(8));
        let cells = width - label_w - 2;
        let t0 = step.start_us;
        let dt = if step.span_us > 0.0 {
            step.span_us / cells as f64
        } else {
            1.0
        };

        // Axis: 0, middle, end of the window; the labels sit over the frame.
        let mut axis: Vec<char> = vec![' '; cells + 2];
        let mut put = |text: &str, at: usize| {
            for (k, c) in text.chars().enumerate() {
                if let Some(slot) = axis.get_mut(at + k) {
                    *slot = c;
                }
            }
        };
        let end = human_us(step.span_us, colour);
        let mid = human_us(step.span_us / 2.0, colour);
        put("0", 0);
        put(&mid, (cells + 2) / 2 - mid.chars().count() / 2);
        put(&end, cells + 2 - end.chars().count());
        let axis: String = axis.into_iter().collect();
        let _ = writeln!(o, "{:label_w$}{}", "", axis.trim_end());
        let _ = writeln!(o, "{:label_w$}+{}+", "", "-".repeat(cells));

        for lane in &step.lanes {
            let _ = write!(o, "{:<label_w$}|", fit(&lane.label, label_w - 1, ascii));
            let cols = lane_cells(&lane.bars, t0, dt, cells);
            // Runs of one stage share one colour escape.
            let mut i = 0;
            while i < cols.len() {
                let mut j = i;
                while j < cols.len() && cols[j] == cols[i] {
                    j += 1;
                }
                match cols[i] {
                    Some(s) => {
                        let st = &styles[s as usize];
                        paint(
                            &mut o,
                            &st.symbol.to_string().repeat(j - i),
                            Some(st),
                            colour,
                        );
                    }
                    None => o.push_str(&IDLE.to_string().repeat(j - i)),
                }
                i = j;
            }
            let _ = writeln!(o, "|");
        }
        let _ = writeln!(o, "{:label_w$}+{}+", "", "-".repeat(cells));
        let _ = writeln!(
            o,
            "{}",
            fit(
                &format!(
                    "{:label_w$}1 column = {}; {IDLE} = idle",
                    "",
                    human_us(dt, colour)
                ),
                width,
                ascii
            )
        );
    }

    // Legend: the stages present in this step, in the trace's stage order.
    let mut seen = vec![false; styles.len()];
    for b in step.bars() {
        seen[b.stage as usize] = true;
    }
    let present: Vec<&StageStyle> = styles
        .iter()
        .zip(seen)
        .filter(|(_, p)| *p)
        .map(|(s, _)| s)
        .collect();
    if !present.is_empty() {
        let _ = writeln!(o);
        let mut line = String::from("legend:");
        let mut line_len = line.len();
        for s in present {
            let name = fit(&s.stage, width - 10, ascii);
            let item_len = 2 + 2 + name.chars().count();
            if line_len + item_len > width {
                let _ = writeln!(o, "{line}");
                line = String::from("       ");
                line_len = line.len();
            }
            line.push_str("  ");
            paint(&mut line, &s.symbol.to_string(), Some(s), colour);
            line.push(' ');
            line.push_str(&name);
            line_len += item_len;
        }
        let _ = writeln!(o, "{line}");
    }

    let top = step.top_kernels(TOP_KERNELS);
    if !top.is_empty() {
        let _ = writeln!(o);
        let unit = if colour { "µs" } else { "us" };
        let _ = writeln!(o, "{} longest kernels", top.len());
        let _ = writeln!(o, "{:>12}  stage  name", format!("dur ({unit})"));
        for (_, b) in top {
            let st = &styles[b.stage as usize];
            let _ = write!(o, "{:>12.3}  ", b.dur_us);
            paint(&mut o, &st.symbol.to_string(), Some(st), colour);
            let name = &w.names[b.name as usize];
            let _ = writeln!(o, "      {}", fit(name, width - 21, ascii));
        }
    }
    while o.ends_with('\n') {
        o.pop();
    }
    Some(o)
}

//! The HTML waterfall: one self-contained file (no network access: CSS, JS and data inline)
//! with a step selector, per-stage totals of every step as a stacked bar chart, and the
//! selected step's lanes drawn on a `<canvas>` with zoom, pan and kernel tooltips.
//!
//! The data is one JSON object in a `<script type="application/json">` element, columnar and
//! interned so a 100 000-kernel capture stays a few MB:
//! - `stages`, `colours` (`#rrggbb`, per stage), `names` (event names), `lanes` (row labels),
//!   `lr` (per lane, its rank in a waterfall of ranks, −1 otherwise: consecutive lanes of one
//!   rank are drawn as a lane group),
//!   `cfgs` (distinct launch configurations `[grid x, y, z, block x, y, z, registers per
//!   thread, shared memory bytes]`, −1 where unknown), `slowest` (the slowest step's index),
//!   `sel` (the step shown first);
//! - `steps[i]`: `name`, `kind` (`range` / `outside` / `whole`), `t0` (window start, µs in the
//!   trace's time base), `span`, `busy`, `range` (CPU range duration) in µs, `n` (kernels),
//!   `tot` (µs per stage), `ln` (its lanes, indices into `lanes`), and `k`, per lane (in `ln`
//!   order) its bars by start as columns: `s` the start in integer ns as the gap after the
//!   previous bar's end (the first: after `t0`; negative where bars overlap), `d` the
//!   duration in ns, `n` name, `g` stage, `c` launch configuration, `r` the correlation id
//!   as the delta from the lane's previous known one (`null` where unknown), and `x` the
//!   indices of the bars that are memcpy / memset rather than kernels.
//!
//! Every `<` and `/` in the JSON is written as an escape (`\u003c`, `\/`), so no trace
//! string can end the script element or read as a URL.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::model::{Bar, BarKind, StepKind, Waterfall};
use super::palette;

const PAGE: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

#[derive(Serialize)]
struct Data<'a> {
    v: u32,
    source: &'a str,
    stages: &'a [String],
    colours: Vec<String>,
    names: &'a [String],
    cfgs: Vec<[i64; 8]>,
    lanes: Vec<String>,
    lr: Vec<i64>,
    slowest: Option<usize>,
    sel: Option<usize>,
    steps: Vec<StepData>,
}

#[derive(Serialize)]
struct StepData {
    name: String,
    kind: &'static str,
    t0: f64,
    span: f64,
    busy: f64,
    range: f64,
    n: usize,
    tot: Vec<f64>,
    ln: Vec<u32>,
    k: Vec<Cols>,
}

/// The bars of one lane, column by column.
#[derive(Serialize, Default)]
struct Cols {
    s: Vec<i64>,
    d: Vec<i64>,
    n: Vec<u32>,
    g: Vec<u32>,
    c: Vec<u32>,
    r: Vec<Option<i64>>,
    x: Vec<u32>,
}

/// µs → integer ns (Kineto's finest resolution), exact for ns-resolution traces.
fn ns(us: f64) -> i64 {
    (us * 1000.0).round() as i64
}

/// µs rounded to ns, for the per-step figures.
fn round_ns(us: f64) -> f64 {
    (us * 1000.0).round() / 1000.0
}

fn data(w: &Waterfall, selected: Option<usize>) -> Data<'_> {
    let colours = palette::styles(&w.stages)
        .into_iter()
        .map(|s| s.colour)
        .collect();
    let mut lane_ids: HashMap<(Option<u32>, i64, i64), u32> = HashMap::new();
    let mut lanes: Vec<String> = Vec::new();
    let mut lr: Vec<i64> = Vec::new();
    let mut cfg_ids: HashMap<[i64; 8], u32> = HashMap::new();
    let mut cfgs: Vec<[i64; 8]> = Vec::new();
    let steps = w
        .steps
        .iter()
        .map(|s| {
            let ln: Vec<u32> = s
                .lanes
                .iter()
                .map(|l| {
                    *lane_ids.entry((l.rank, l.device, l.stream)).or_insert_with(|| {
                        lanes.push(l.label.clone());
                        lr.push(l.rank.map_or(-1, i64::from));
                        (lanes.len() - 1) as u32
                    })
                })
                .collect();
            let mut cfg_id = |b: &Bar| {
                let g = b.grid.unwrap_or([-1; 3]);
                let bl = b.block.unwrap_or([-1; 3]);
                let cfg = [
                    g[0],
                    g[1],
                    g[2],
                    bl[0],
                    bl[1],
                    bl[2],
                    b.registers_per_thread.unwrap_or(-1),
                    b.shared_memory_bytes.unwrap_or(-1),
                ];
                *cfg_ids.entry(cfg).or_insert_with(|| {
                    cfgs.push(cfg);
                    (cfgs.len() - 1) as u32
                })
            };
            let k = s
                .lanes
                .iter()
                .map(|lane| {
                    let mut k = Cols::default();
                    // Integer ns from the window start; each start as the gap after the
                    // previous bar's end (0 on a saturated stream).
                    let (mut prev_end, mut prev_corr) = (0i64, 0i64);
                    for (q, b) in lane.bars.iter().enumerate() {
                        let start = ns(b.start_us - s.start_us);
                        let dur = ns(b.dur_us);
                        k.s.push(start - prev_end);
                        k.d.push(dur);
                        prev_end = start + dur;
                        k.n.push(b.name);
                        k.g.push(b.stage);
                        k.c.push(cfg_id(b));
                        k.r.push(b.correlation.map(|c| {
                            let d = c - prev_corr;
                            prev_corr = c;
                            d
                        }));
                        if b.kind != BarKind::Kernel {
                            k.x.push(q as u32);
                        }
                    }
                    k
                })
                .collect();
            StepData {
                name: s.name.clone(),
                kind: match s.kind {
                    StepKind::Range => "range",
                    StepKind::Outside => "outside",
                    StepKind::Whole => "whole",
                },
                t0: s.start_us,
                span: round_ns(s.span_us),
                busy: round_ns(s.busy_us),
                range: round_ns(s.range_dur_us),
                n: s.kernel_count,
                tot: s.stage_totals_us.iter().map(|&t| round_ns(t)).collect(),
                ln,
                k,
            }
        })
        .collect();
    Data {
        v: 1,
        source: &w.source,
        stages: &w.stages,
        colours,
        names: &w.names,
        cfgs,
        lanes,
        lr,
        slowest: w.slowest_step(),
        sel: selected
            .filter(|&i| i < w.steps.len())
            .or_else(|| w.slowest_step()),
        steps,
    }
}

/// The page for `w`: one self-contained HTML document (see the module docs), opening on
/// step `selected` (an index into [`Waterfall::steps`]; `None` or out of range: the
/// slowest step).
pub fn render_html(w: &Waterfall, selected: Option<usize>) -> String {
    let json = serde_json::to_string(&data(w, selected)).unwrap_or_else(|_| "{}".to_string());
    // `<` only occurs inside JSON strings, where `\u003c` means the same; `/` may be `\/`.
    let json = json.replace('<', "\\u003c").replace('/', "\\/");
    let (head, rest) = PAGE
        .split_once("/*@CSS@*/")
        .expect("page.html has the CSS slot");
    let (mid, rest) = rest
        .split_once("@DATA@")
        .expect("page.html has the data slot");
    let (tail_a, tail_b) = rest
        .split_once("/*@JS@*/")
        .expect("page.html has the JS slot");
    let mut out = String::with_capacity(PAGE.len() + CSS.len() + JS.len() + json.len());
    for part in [head, CSS, mid, &json, tail_a, JS, tail_b] {
        out.push_str(part);
    }
    out
}

/// Writes [`render_html`]`(w, selected)` to `path` (through a temporary file in the same
/// directory, renamed into place, so a reader never sees half a page).
pub fn write_html(w: &Waterfall, selected: Option<usize>, path: &Path) -> std::io::Result<()> {
    let page = render_html(w, selected);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, page.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

//! Tests of the waterfall: the step model on a hand-made trace and on real GPU traces, the
//! terminal rendering and the HTML page.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use gpuspan_core::stats;
use gpuspan_core::trace::{Category, Trace, TraceEvent};

use super::*;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/traces"
);

/// a100-hta-control: 6 `ProfilerStep`s, 3 streams, 8568 kernels (read once per process).
fn a100() -> &'static Trace {
    static T: OnceLock<Trace> = OnceLock::new();
    T.get_or_init(|| {
        crate::read_trace(&Path::new(FIXTURES).join("a100-hta-control.json.gz"))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn ev(cat: Category, name: &str, ts: f64, dur: f64) -> TraceEvent {
    TraceEvent {
        cat: Some(cat),
        name: name.into(),
        pid: 1,
        tid: 1,
        ts_us: ts,
        dur_us: dur,
        ..Default::default()
    }
}

fn kernel(name: &str, stream: i64, ts: f64, dur: f64, corr: i64) -> TraceEvent {
    TraceEvent {
        pid: 0,
        tid: stream,
        device: Some(0),
        stream: Some(stream),
        correlation: Some(corr),
        grid: Some([8, 1, 1]),
        block: Some([128, 1, 1]),
        registers_per_thread: Some(32),
        shared_memory_bytes: Some(1024),
        ..ev(Category::Kernel, name, ts, dur)
    }
}

fn launch(ts: f64, corr: i64) -> TraceEvent {
    TraceEvent {
        correlation: Some(corr),
        ..ev(Category::CudaRuntime, "cudaLaunchKernel", ts, 1.0)
    }
}

/// Two steps; step 1 on streams 7 and 8 with overlap, step 2 on stream 7 only, a memcpy
/// launched in step 2, and one kernel launched after every step.
fn small() -> Trace {
    let mut events = vec![
        ev(Category::UserAnnotation, "ProfilerStep#1", 0.0, 100.0),
        ev(Category::UserAnnotation, "ProfilerStep#2", 100.0, 100.0),
    ];
    // step 1: launches at 10..17
    let k1 = [
        ("flash_fwd_kernel", 7, 20.0, 30.0), // 20..50
        ("sm90_xmma_gemm", 8, 40.0, 20.0),   // 40..60, overlaps
        ("layer_norm_kernel", 7, 50.0, 5.0), // 50..55
        ("custom_a", 7, 70.0, 1.0),          // 70..71
        ("custom_b", 7, 72.0, 2.0),
        ("custom_c", 7, 75.0, 3.0),
        ("custom_d", 8, 80.0, 4.0), // 80..84
    ];
    for (i, (n, s, ts, d)) in k1.iter().enumerate() {
        events.push(launch(10.0 + i as f64, i as i64 + 1));
        events.push(kernel(n, *s, *ts, *d, i as i64 + 1));
    }
    // step 2
    events.push(launch(110.0, 20));
    events.push(kernel("sm90_xmma_gemm", 7, 120.0, 10.0, 20));
    events.push(launch(111.0, 21));
    events.push(TraceEvent {
        tid: 7,
        pid: 0,
        stream: Some(7),
        correlation: Some(21),
        ..ev(
            Category::GpuMemcpy,
            "Memcpy DtoH (Device -> Pinned)",
            135.0,
            5.0,
        )
    });
    // outside every step
    events.push(launch(300.0, 30));
    events.push(kernel("vae_conv", 7, 310.0, 50.0, 30));
    let mut thread_names = BTreeMap::new();
    thread_names.insert((0, 7), "stream 7 ".to_string());
    Trace {
        events,
        thread_names,
        ..Default::default()
    }
}

fn union(mut iv: Vec<(f64, f64)>) -> f64 {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (a, b) in iv {
        cur = match cur {
            Some((cs, ce)) if a <= ce => Some((cs, ce.max(b))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map_or(0.0, |(a, b)| b - a)
}

#[test]
fn small_trace_steps_lanes_busy_and_top_kernels() {
    let w = Waterfall::from_trace(&small(), "small.json");
    let names: Vec<(&str, StepKind)> = w.steps.iter().map(|s| (s.name.as_str(), s.kind)).collect();
    assert_eq!(
        names,
        [
            ("ProfilerStep#1", StepKind::Range),
            ("ProfilerStep#2", StepKind::Range),
            ("outside steps", StepKind::Outside)
        ]
    );
    let s1 = &w.steps[0];
    let lanes: Vec<(i64, i64, &str, usize)> = s1
        .lanes
        .iter()
        .map(|l| (l.device, l.stream, l.label.as_str(), l.bars.len()))
        .collect();
    assert_eq!(
        lanes,
        [(0, 7, "GPU0 stream 7", 5), (0, 8, "GPU0 stream 8", 2)]
    );
    assert_eq!((s1.start_us, s1.span_us), (20.0, 64.0));
    // union: 20..60, 70..71, 72..74, 75..78, 80..84 = 40 + 1 + 2 + 3 + 4
    assert_eq!(s1.busy_us, 50.0);
    assert_eq!(s1.idle_us(), 14.0);
    assert!((s1.busy_percent() - 100.0 * 50.0 / 64.0).abs() < 1e-12);
    assert_eq!(s1.kernel_count, 7);
    let top: Vec<&str> = s1
        .top_kernels(5)
        .iter()
        .map(|(_, b)| w.names[b.name as usize].as_str())
        .collect();
    assert_eq!(
        top,
        [
            "flash_fwd_kernel",
            "sm90_xmma_gemm",
            "layer_norm_kernel",
            "custom_d",
            "custom_c"
        ]
    );
    // Stage of each bar by the name rules; stage totals add up.
    let stage = |n: &str| {
        let b = s1.bars().find(|b| w.names[b.name as usize] == n).unwrap();
        w.stages[b.stage as usize].as_str()
    };
    assert_eq!(
        (
            stage("flash_fwd_kernel"),
            stage("sm90_xmma_gemm"),
            stage("custom_a")
        ),
        ("attention", "gemm", "other")
    );
    assert_eq!(
        s1.stage_totals_us.iter().sum::<f64>(),
        30.0 + 20.0 + 5.0 + 1.0 + 2.0 + 3.0 + 4.0
    );
    // Tooltip fields survive.
    let b = s1
        .bars()
        .find(|b| w.names[b.name as usize] == "flash_fwd_kernel")
        .unwrap();
    assert_eq!(
        (
            b.grid,
            b.block,
            b.registers_per_thread,
            b.shared_memory_bytes,
            b.correlation
        ),
        (
            Some([8, 1, 1]),
            Some([128, 1, 1]),
            Some(32),
            Some(1024),
            Some(1)
        )
    );

    // Step 2: the kernel and the memcpy launched in it.
    let s2 = &w.steps[1];
    let kinds: Vec<BarKind> = s2.bars().map(|b| b.kind).collect();
    assert_eq!(kinds, [BarKind::Kernel, BarKind::Memcpy]);
    assert_eq!(w.stages[s2.bars().nth(1).unwrap().stage as usize], "memcpy");
    assert_eq!(
        (s2.start_us, s2.span_us, s2.busy_us, s2.kernel_count),
        (120.0, 20.0, 15.0, 1)
    );
    // The slowest real step is step 0 (64 µs > 20 µs); the outside step never is.
    assert_eq!(w.slowest_step(), Some(0));
    assert_eq!(w.range_steps(), 2);
    assert_eq!(w.steps[2].bars().count(), 1);
}

#[test]
fn trace_without_steps_is_one_step_over_all_gpu_activity() {
    let mut t = small();
    t.events.retain(|e| !e.is(&Category::UserAnnotation));
    let w = Waterfall::from_trace(&t, "x");
    assert_eq!(w.steps.len(), 1);
    let s = &w.steps[0];
    assert_eq!(s.kind, StepKind::Whole);
    let s_all = stats::compute(&t, "x");
    assert_eq!(
        s.bars().count(),
        t.events
            .iter()
            .filter(|e| e.cat.as_ref().is_some_and(Category::is_gpu_activity))
            .count()
    );
    assert_eq!(
        (s.span_us, s.busy_us),
        (s_all.gpu_span_us, s_all.gpu_busy_us)
    );
    assert_eq!(w.slowest_step(), Some(0));
    assert!(Waterfall::from_trace(&Trace::default(), "e").steps.len() == 1);
    assert_eq!(
        Waterfall::from_trace(&Trace::default(), "e").steps[0]
            .lanes
            .len(),
        0
    );
}

/// On a real A100 trace: steps in `stats` order, every kernel of a step exactly once, lanes
/// = the distinct streams of its kernels, busy = union / span, top 5 = five longest.
#[test]
fn a100_fixture_step_model_matches_an_independent_computation() {
    let t = a100();
    let w = Waterfall::from_trace(t, "a100");
    let st = stats::compute(t, "a100");
    assert_eq!(w.range_steps(), st.steps.len());
    assert_eq!(st.steps.len(), 6);
    let mut by_step: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in stats::kernel_step_assignment(t) {
        if let Some(s) = s {
            by_step.entry(s).or_default().push(i);
        }
    }
    for (i, (ws, ss)) in w.steps.iter().zip(&st.steps).enumerate() {
        assert_eq!(ws.name, ss.name, "step {i}");
        assert_eq!(ws.kernel_count, ss.kernel_count, "step {i}");
        let want = &by_step[&ss.name];
        let mut got: Vec<usize> = ws
            .bars()
            .filter(|b| b.kind == BarKind::Kernel)
            .map(|b| b.event)
            .collect();
        got.sort_unstable();
        assert_eq!(&got, want, "step {i}: every kernel exactly once");
        // Lanes: the distinct streams of the step's kernels, plus those of its memcpy /
        // memset (here: launched inside the step's CPU range, e.g. the copy stream 22).
        let launch: BTreeMap<i64, f64> = t
            .events
            .iter()
            .filter(|e| e.cat.as_ref().is_some_and(Category::is_launch_api))
            .filter_map(|e| Some((e.correlation?, e.ts_us)))
            .collect();
        let copies: Vec<usize> = t
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is(&Category::GpuMemcpy) || e.is(&Category::GpuMemset))
            .filter(|(_, e)| {
                e.correlation
                    .and_then(|c| launch.get(&c))
                    .is_some_and(|&l| ss.start_us <= l && l < ss.start_us + ss.dur_us)
            })
            .map(|(k, _)| k)
            .collect();
        let mut got_copies: Vec<usize> = ws
            .bars()
            .filter(|b| b.kind != BarKind::Kernel)
            .map(|b| b.event)
            .collect();
        got_copies.sort_unstable();
        assert_eq!(
            got_copies, copies,
            "step {i}: memcpy / memset launched in the step"
        );
        let want_lanes: BTreeSet<(i64, i64)> = want
            .iter()
            .chain(&copies)
            .map(|&k| (t.events[k].device.unwrap(), t.events[k].stream.unwrap()))
            .collect();
        let got_lanes: Vec<(i64, i64)> = ws.lanes.iter().map(|l| (l.device, l.stream)).collect();
        assert_eq!(
            got_lanes,
            want_lanes.iter().copied().collect::<Vec<_>>(),
            "step {i}: lanes"
        );
        for l in &ws.lanes {
            assert!(l
                .bars
                .iter()
                .all(|b| (t.events[b.event].device, t.events[b.event].stream)
                    == (Some(l.device), Some(l.stream))));
        }
        let iv: Vec<(f64, f64)> = ws
            .bars()
            .map(|b| (t.events[b.event].ts_us, t.events[b.event].end_us()))
            .collect();
        let first = iv.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
        let last = iv.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(ws.span_us, last - first);
        assert!((ws.busy_us - union(iv)).abs() < 1e-6, "step {i}: busy");
        assert!(ws.busy_percent() > 0.0 && ws.busy_percent() <= 100.0);
        let mut durs: Vec<f64> = want.iter().map(|&k| t.events[k].dur_us).collect();
        durs.sort_by(|a, b| b.total_cmp(a));
        let top: Vec<f64> = ws.top_kernels(5).iter().map(|(_, b)| b.dur_us).collect();
        assert_eq!(top, durs[..5].to_vec(), "step {i}: top 5");
    }
    // Three streams, labelled from the trace's thread names.
    let labels: Vec<&str> = w.steps[0].lanes.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "GPU3 stream 7",
            "GPU3 stream 20",
            "GPU3 stream 21",
            "GPU3 stream 22"
        ]
    );
    let slowest = w.slowest_step().unwrap();
    assert!(w
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Range)
        .all(|s| s.span_us <= w.steps[slowest].span_us));
}

/// Plain-text checks shared with the e2e test: ≤ `width` columns, ASCII, one framed row per
/// lane, a legend naming every stage of the step.
fn check_plain(w: &Waterfall, i: usize, text: &str) {
    let step = &w.steps[i];
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line:?}",
            line.chars().count()
        );
        assert!(line.is_ascii(), "ASCII only: {line:?}");
        assert!(!line.contains('\x1b'), "no escapes without colour");
    }
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with('|'))
        .collect();
    assert_eq!(rows.len(), step.lanes.len(), "one row per stream:\n{text}");
    for (row, lane) in rows.iter().zip(&step.lanes) {
        assert!(
            row.starts_with(&lane.label[..lane.label.len().min(10)]),
            "{row:?} vs {}",
            lane.label
        );
    }
    let legend: BTreeSet<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("legend:"))
        .take_while(|l| !l.is_empty())
        .flat_map(str::split_whitespace)
        .collect();
    for (g, name) in w.stages.iter().enumerate() {
        let present = step.bars().any(|b| b.stage as usize == g);
        assert_eq!(
            legend.contains(name.as_str()),
            present,
            "legend and stage {name}: {legend:?}"
        );
    }
}

#[test]
fn terminal_fits_80_columns_on_a_fixture() {
    let w = Waterfall::from_trace(
        a100(),
        "/work/shared/fixtures/traces/a100-hta-control.json.gz",
    );
    let i = w.slowest_step().unwrap();
    let text = render_step(&w, i, &TerminalOptions::default()).unwrap();
    println!("{text}");
    check_plain(&w, i, &text);
    assert!(text.contains("(slowest)"));
    assert!(text.contains("5 longest kernels"));
    assert!(text.contains(&format!("busy {:.1}%", w.steps[i].busy_percent())));
    // Stream 7 is busy most of the step: most of its columns are drawn.
    let row7 = text
        .lines()
        .find(|l| l.starts_with("GPU3 stream 7 "))
        .unwrap();
    assert!(row7.chars().filter(|c| *c != '.').count() > 40, "{row7}");
    assert!(render_step(&w, w.steps.len(), &TerminalOptions::default()).is_none());
    // Colour: escapes present, same number of rows.
    let col = render_step(
        &w,
        i,
        &TerminalOptions {
            colour: true,
            width: 80,
        },
    )
    .unwrap();
    assert!(col.contains("\x1b["));
    assert_eq!(col.lines().count(), text.lines().count());
}

#[test]
fn terminal_on_every_small_step_and_narrow_width() {
    let w = Waterfall::from_trace(&small(), "small.json");
    for i in 0..w.steps.len() {
        let text = render_step(&w, i, &TerminalOptions::default()).unwrap();
        check_plain(&w, i, &text);
    }
    let narrow = render_step(
        &w,
        0,
        &TerminalOptions {
            colour: false,
            width: 50,
        },
    )
    .unwrap();
    assert!(narrow.lines().all(|l| l.chars().count() <= 50), "{narrow}");
}

/// The JSON data embedded in a page.
fn page_data(page: &str) -> serde_json::Value {
    let start = page
        .find("<script type=\"application/json\" id=\"data\">")
        .unwrap();
    let rest = &page[start..];
    let body = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(body).unwrap()
}

#[test]
fn html_is_self_contained_and_carries_every_bar() {
    let w = Waterfall::from_trace(a100(), "a100-hta-control.json.gz");
    let page = render_html(&w, None);
    for bad in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "src=",
        "@import",
        "url(",
    ] {
        assert!(
            !page.to_ascii_lowercase().contains(bad),
            "page contains {bad}"
        );
    }
    assert!(page.contains("<canvas id=\"wf\">"));
    let d = page_data(&page);
    let steps = d["steps"].as_array().unwrap();
    assert_eq!(steps.len(), w.steps.len());
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let lanes = d["lanes"].as_array().unwrap();
    let cfgs = d["cfgs"].as_array().unwrap();
    for (s, ws) in steps.iter().zip(&w.steps) {
        let ln = ints(&s["ln"]);
        assert_eq!(ln.len(), ws.lanes.len());
        let k = s["k"].as_array().unwrap();
        assert_eq!(k.len(), ws.lanes.len(), "one column set per lane");
        for ((cols, lane), &id) in k.iter().zip(&ws.lanes).zip(&ln) {
            assert_eq!(lanes[id as usize], lane.label.as_str());
            let (gaps, durs, names, stages, cfg, corr) = (
                ints(&cols["s"]),
                ints(&cols["d"]),
                ints(&cols["n"]),
                ints(&cols["g"]),
                ints(&cols["c"]),
                cols["r"].as_array().unwrap(),
            );
            for col in [&gaps, &durs, &names, &stages, &cfg] {
                assert_eq!(col.len(), lane.bars.len());
            }
            // Decode as page.js does and compare with the model, bar by bar, to the ns.
            let (mut end, mut c) = (0i64, 0i64);
            for (q, b) in lane.bars.iter().enumerate() {
                let start = end + gaps[q];
                end = start + durs[q];
                assert!((start as f64 / 1000.0 + ws.start_us - b.start_us).abs() < 1e-3);
                assert!((durs[q] as f64 / 1000.0 - b.dur_us).abs() < 1e-3);
                assert_eq!((names[q] as u32, stages[q] as u32), (b.name, b.stage));
                let want = [
                    b.grid.map_or(-1, |g| g[0]),
                    b.grid.map_or(-1, |g| g[1]),
                    b.grid.map_or(-1, |g| g[2]),
                    b.block.map_or(-1, |g| g[0]),
                    b.block.map_or(-1, |g| g[1]),
                    b.block.map_or(-1, |g| g[2]),
                    b.registers_per_thread.unwrap_or(-1),
                    b.shared_memory_bytes.unwrap_or(-1),
                ];
                assert_eq!(ints(&cfgs[cfg[q] as usize]), want);
                let got = corr[q].as_i64().map(|dc| {
                    c += dc;
                    c
                });
                assert_eq!(got, b.correlation);
            }
            let x: Vec<usize> = ints(&cols["x"]).iter().map(|&q| q as usize).collect();
            let want_x: Vec<usize> = (0..lane.bars.len())
                .filter(|&q| lane.bars[q].kind != BarKind::Kernel)
                .collect();
            assert_eq!(x, want_x);
        }
        let tot: f64 = s["tot"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!(
            (tot - ws.stage_totals_us.iter().sum::<f64>()).abs()
                < 1e-3 * ws.stage_totals_us.len() as f64
        );
        assert_eq!(s["n"].as_u64(), Some(ws.kernel_count as u64));
    }
    assert!(
        steps.iter().any(|s| s["k"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| !c["x"].as_array().unwrap().is_empty())),
        "copies present"
    );
    assert_eq!(d["slowest"].as_u64(), w.slowest_step().map(|x| x as u64));
}

#[test]
fn html_escapes_trace_strings() {
    let mut t = small();
    t.events.push(kernel(
        "evil</script><script src=\"https://x\">",
        7,
        90.0,
        1.0,
        99,
    ));
    let page = render_html(&Waterfall::from_trace(&t, "a</script>.json"), Some(1));
    assert_eq!(
        page.matches("</script>").count(),
        3,
        "only the page's own script ends"
    );
    assert!(!page.contains("https://"));
    let d = page_data(&page);
    assert!(d["names"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("evil</script>")));
    assert_eq!(d["source"], "a</script>.json");
    assert_eq!(
        (d["sel"].as_u64(), d["slowest"].as_u64()),
        (Some(1), Some(0))
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.html");
    write_html(&Waterfall::from_trace(&t, "a"), None, &out).unwrap();
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    assert!(write_html(
        &Waterfall::from_trace(&t, "a"),
        None,
        &dir.path().join("missing/w.html")
    )
    .is_err());
}

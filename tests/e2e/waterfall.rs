//! `gpuspan waterfall` (terminal and HTML) on real GPU traces and on captures of the
//! simulated H100, `gpuspan demo`'s `waterfall.html`, and the HTML page opened in a real
//! headless Chromium with a 102 280-kernel capture.

use crate::util::*;
use gpuspan_export::waterfall::Waterfall;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The step model of `file`, computed in the test (independently of the CLI run).
fn model(file: &Path) -> Waterfall {
    Waterfall::from_trace(&gpuspan_export::read_trace(file).unwrap(), "x")
}

/// Checks a plain (colour off) terminal waterfall of step `index` of `w`: every line at
/// most 80 columns and ASCII, one framed row per stream of the step, a legend naming exactly
/// the stages present, five longest kernels.
fn check_plain_waterfall(w: &Waterfall, index: usize, text: &str) {
    let step = &w.steps[index];
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line:?}",
            line.chars().count()
        );
        assert!(
            line.is_ascii() && !line.contains('\x1b'),
            "plain ASCII: {line:?}"
        );
    }
    let rows: Vec<&str> = text.lines().filter(|l| l.ends_with('|')).collect();
    assert_eq!(rows.len(), step.lanes.len(), "one row per stream:\n{text}");
    for (row, lane) in rows.iter().zip(&step.lanes) {
        assert!(row.starts_with(&format!("GPU{} ", lane.device)), "{row}");
        assert!(
            row.contains(&lane.stream.to_string()),
            "{row} names stream {}",
            lane.stream
        );
    }
    let legend: BTreeSet<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("legend:"))
        .take_while(|l| !l.is_empty())
        .flat_map(str::split_whitespace)
        .collect();
    let present: BTreeSet<&str> = step
        .bars()
        .map(|b| w.stages[b.stage as usize].as_str())
        .collect();
    for s in &w.stages {
        assert_eq!(
            legend.contains(s.as_str()),
            present.contains(s.as_str()),
            "legend vs stage {s}: {legend:?}"
        );
    }
    let top = step.top_kernels(5);
    assert!(
        text.contains(&format!("{} longest kernels", top.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{:.3}", top[0].1.dur_us)),
        "longest kernel's duration listed"
    );
}

fn waterfall_out(args: &[&str], file: &Path) -> (String, String, Option<i32>) {
    let o = output(
        gpuspan()
            .arg("waterfall")
            .arg(file)
            .args(args)
            .env_remove("CLICOLOR_FORCE"),
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code(),
    )
}

/// An HTML page must not reach the network or load anything beside itself.
fn assert_self_contained(page: &str) {
    let lower = page.to_ascii_lowercase();
    for bad in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "src=",
        "@import",
        "url(",
    ] {
        assert!(!lower.contains(bad), "the page contains {bad:?}");
    }
}

#[test]
fn waterfall_terminal_on_real_traces() {
    // a100: 6 ProfilerSteps, kernels on 3 streams and copies on a 4th.
    let a100 = fixture("a100-hta-control.json.gz");
    let w = model(&a100);
    let (out, err, code) = waterfall_out(&[], &a100);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("ProfilerStep#1014 (slowest)"),
        "default: the slowest step\n{out}"
    );
    check_plain_waterfall(&w, 5, &out);
    let (out, _, code) = waterfall_out(&["--step", "0"], &a100);
    assert_eq!(code, Some(0));
    assert!(out.contains("step 0 (of 0..5): ProfilerStep#1009"), "{out}");
    check_plain_waterfall(&w, 0, &out);
    // NO_COLOR: same plain text; CLICOLOR_FORCE: colour even into a pipe.
    let o = output(
        gpuspan()
            .args(["waterfall", "--step", "0"])
            .arg(&a100)
            .env("NO_COLOR", "1")
            .env("CLICOLOR_FORCE", "1"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), out);
    let o = output(
        gpuspan()
            .args(["waterfall", "--step", "0"])
            .arg(&a100)
            .env_remove("NO_COLOR")
            .env("CLICOLOR_FORCE", "1"),
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\x1b["),
        "forced colour"
    );

    // The old schema (V100) and a single-step H100 trace.
    for name in [
        "v100-resnet50-oldschema.json.gz",
        "h100-vit-falconsai.json.gz",
    ] {
        let f = fixture(name);
        let (out, err, code) = waterfall_out(&[], &f);
        assert_eq!(code, Some(0), "{name}: {err}");
        let w = model(&f);
        check_plain_waterfall(&w, w.slowest_step().unwrap(), &out);
    }
}

#[test]
fn waterfall_bad_step_and_bad_file_get_one_line_errors() {
    let f = fixture("h100-bert-small.json.gz");
    let (out, err, code) = waterfall_out(&["--step", "7"], &f);
    assert_eq!(code, Some(2), "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("gpuspan: --step 7: ") && err.contains("h100-bert-small.json.gz"),
        "{err}"
    );
    assert!(out.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"traceEvents\": [ {\"ph\": \"X\", \"ts\": ").unwrap();
    for (f, extra) in [
        (garbage.clone(), vec![]),
        (dir.path().join("missing.json.gz"), vec!["--html", "x.html"]),
    ] {
        let (_, err, code) = waterfall_out(&extra, &f);
        assert_eq!(code, Some(2));
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(
            err.contains(&*f.file_name().unwrap().to_string_lossy()) && !err.contains("panicked"),
            "{err}"
        );
    }
    let (_, err, code) = waterfall_out(&["--html", "/nonexistent-dir/w.html"], &f);
    assert_eq!((code, err.lines().count()), (Some(2), 1), "{err}");
    assert!(err.contains("/nonexistent-dir/w.html"), "{err}");
}

#[test]
fn demo_writes_waterfall_html_and_prints_its_path() {
    let out = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["demo", "--steps", "3", "--out"])
            .arg(out.path()),
    );
    assert!(
        o.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let page = out.path().join("waterfall.html");
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("waterfall: {}", page.display())),
        "prints the page's path: {stdout}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);
    assert!(html.contains("dit.step 2\\/3"), "every step is in the page");

    // The terminal waterfall of the demo capture: 3 dit steps + the work outside them
    // (VAE decode), each drawn within 80 columns.
    let capture = capture_in(out.path());
    let w = model(&capture);
    assert_eq!(w.steps.len(), 4);
    for step in ["0", "1", "2", "3"] {
        let (text, err, code) = waterfall_out(&["--step", step], &capture);
        assert_eq!(code, Some(0), "{err}");
        check_plain_waterfall(&w, step.parse().unwrap(), &text);
    }
    let (text, _, _) = waterfall_out(&["--step", "3"], &capture);
    assert!(text.contains("vae.decode"), "{text}");
    let (text, _, _) = waterfall_out(&["--step", "1"], &capture);
    for s in [
        "attention.spatial",
        "attention.temporal",
        "attention.cross",
        "ffn",
        "norm",
    ] {
        assert!(text.contains(s), "legend names {s}:\n{text}");
    }
}

/// Headless Chromium: `$CHROMIUM`, else `/usr/bin/chromium`.
pub(crate) fn chromium() -> Option<PathBuf> {
    let p = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    p.exists().then_some(p)
}

/// Runs `cmd` with a deadline, returning its stdout.
pub(crate) fn run_with_deadline(cmd: &mut Command, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// The value of `data-NAME="…"` on the dumped `<body>`.
pub(crate) fn body_attr<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let key = format!("data-{name}=\"");
    let at = body.find(&key)? + key.len();
    Some(&body[at..at + body[at..].find('"')?])
}

#[test]
fn waterfall_html_of_a_100k_kernel_capture_renders_in_chromium_under_2s() {
    let Some(chromium) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium not found at /usr/bin/chromium (or $CHROMIUM): install Debian's `chromium` package (scripts/test.sh does)");
        }
        eprintln!(
            "note: chromium not found (/usr/bin/chromium or $CHROMIUM); skipping the browser test"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(dir.path())
            .arg("--")
            .arg(artifact("gpuspan-replay"))
            .args(["wan2.1", "--steps", "5"]),
    );
    assert!(
        o.status.success(),
        "wan2.1 run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let capture = capture_in(dir.path());
    let s = stats_json(&capture);
    assert!(s.kernel_count >= 100_000, "{} kernels", s.kernel_count);
    let page = dir.path().join("waterfall.html");
    let (out, err, code) = waterfall_out(&["--html", page.to_str().unwrap()], &capture);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("waterfall: {}", page.display()));
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);
    let size = html.len();

    let profile = tempfile::tempdir().unwrap();
    let dom = run_with_deadline(
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--virtual-time-budget=10000", "--dump-dom"])
            .arg(format!("file://{}", page.display())),
        Duration::from_secs(120),
    );
    assert_eq!(
        body_attr(&dom, "error"),
        None,
        "JavaScript error in the page"
    );
    let render_ms: f64 = body_attr(&dom, "render-ms")
        .unwrap_or_else(|| {
            panic!(
                "the page never finished its first draw: {}",
                &dom[..dom.len().min(400)]
            )
        })
        .parse()
        .unwrap();
    let bars: usize = body_attr(&dom, "drawn-bars").unwrap().parse().unwrap();
    println!(
        "waterfall.html: {} kernels, {:.2} MB, first draw at {render_ms} ms in Chromium ({bars} rectangles)",
        s.kernel_count,
        size as f64 / 1e6
    );
    assert!(bars > 0, "something was drawn");
    assert!(render_ms < 2000.0, "first draw took {render_ms} ms");
}

/// The page's interactions in a real headless Chromium, driven with real mouse and keyboard
/// input by `tests/interop/waterfall_ui.mjs` (npm `playwright-core`, pinned in
/// `tests/interop/package-lock.json`) on `gpuspan demo --steps 4`'s `waterfall.html`: no
/// errors; the step selector lists the 4 steps and the work outside them and switches the
/// drawn step; the legend names exactly each step's stages; hovering a kernel's bar shows
/// its name, duration, grid, block, registers, shared memory and correlation id (as in the
/// page's data); the wheel zooms about the cursor, a drag pans by the dragged pixels; a click
/// on a bar of the per-step chart selects that step. Skipped with a note when node,
/// playwright-core or chromium is missing, a failure under `CI`.
#[test]
fn waterfall_html_interactions_in_chromium() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = repo.join("tests/interop");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let playwright = interop.join("node_modules/playwright-core/package.json");
    let browser = chromium();
    if !node || !playwright.exists() || browser.is_none() {
        let msg = format!(
            "node on PATH: {node}, {} exists: {}, chromium (/usr/bin/chromium or $CHROMIUM) found: {}",
            playwright.display(),
            playwright.exists(),
            browser.is_some()
        );
        assert!(
            !ci,
            "{msg} (CI is set, so this is a failure: scripts/test.sh installs them)"
        );
        eprintln!(
            "note: skipping the waterfall UI test: {msg}; run scripts/test.sh to install them"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["demo", "--steps", "4", "--out"])
            .arg(dir.path()),
    );
    assert!(
        o.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let page = dir.path().join("waterfall.html");
    assert!(page.is_file(), "demo wrote no {}", page.display());

    let mut child = Command::new("node")
        .arg(interop.join("waterfall_ui.mjs"))
        .arg(&page)
        .args(["--expect-steps", "5"])
        .env("CHROMIUM", browser.unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run node");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("waterfall_ui.mjs did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    println!("{}", out.trim());
    assert!(
        status.success(),
        "waterfall_ui.mjs failed ({status}):\nstdout: {out}\nstderr: {err}"
    );
    let r: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {out}"));
    assert_eq!(r["ok"], true, "{out}");
    assert_eq!(r["failures"].as_array().map(Vec::len), Some(0), "{out}");
    assert_eq!(r["steps"], 5, "4 dit steps + the work outside them");
    assert_eq!(r["options"].as_array().map(Vec::len), Some(5), "{out}");
    let outside = r["outside_option"].as_str().unwrap_or_default();
    assert!(outside.starts_with("4: outside steps"), "{outside}");
    let tip = r["tooltip"]["text"].as_str().unwrap_or_default();
    for word in [
        "duration",
        "grid",
        "block",
        "registers",
        "shared memory",
        "correlation",
    ] {
        assert!(tip.contains(word), "tooltip lacks {word}: {tip}");
    }
    assert!(
        r["zoom"]["ratio"].as_f64().is_some_and(|x| x < 0.9),
        "{out}"
    );
    assert_eq!(r["chart_clicks"].as_array().map(Vec::len), Some(5), "{out}");
}

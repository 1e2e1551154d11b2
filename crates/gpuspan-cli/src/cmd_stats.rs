//! `gpuspan stats FILE [--json]`: kernel / stage / step breakdown, GPU busy / idle time and
//! the HolisticTraceAnalysis-style analyses (kernel types, temporal breakdown per device,
//! idle time per stream, launch statistics, memcpy bandwidth) of a Kineto trace (a gpuspan
//! capture or any torch.profiler trace, `.json` or `.json.gz`).
//!
//! The numbers come from [`gpuspan_core::stats::compute`]; `--json` prints that
//! [`gpuspan_core::stats::Stats`] object (its keys are the interface, DESIGN.md "Command
//! line"; definitions in `gpuspan_core::stats`), otherwise tables for people, at most
//! [`WIDTH`] columns wide.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use gpuspan_core::stats::{self, Stats};

/// Kernel rows shown in the table.
const TOP_KERNELS: usize = 15;
/// Table width, columns.
const WIDTH: usize = 100;

/// Runs `gpuspan stats`: reads `file` (a trace, or a directory of them merged) with
/// [`crate::input::read_ranked`] (malformed events skipped and counted unless `strict`), takes its
/// steps as `steps` says
/// ([`crate::steps_arg`]; the JSON then carries `step_detection`) and prints its
/// statistics to stdout, as pretty JSON when `json` is set, else as a table.
///
/// Exit status: 0 on success; 2 when the file cannot be read, after one line
/// `gpuspan: <error>` on stderr (the error names the file and what is wrong).
pub fn run(file: &Path, json: bool, steps: Option<crate::steps_arg::StepsMode>, strict: bool) -> ExitCode {
    let (mut trace, ranks) = match crate::input::read_ranked(file, strict) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let detection = crate::steps_arg::prepare(&mut trace, steps, file);
    let mut stats = stats::compute(&trace, &file.display().to_string());
    stats.step_detection = detection;
    stats.ranks = ranks;
    // The trace is not needed past here and the process ends soon after: its events are
    // left to the exit instead of freed one by one (9.6 M instructions, a tenth of what
    // follows the read, on a100-hta-control), as rustc leaves its own arenas.
    std::mem::forget(trace);
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
pub(crate) fn human_us(us: f64) -> String {
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
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// One numeric column of a table: µs for people, right-aligned in 11 columns.
fn col(us: f64) -> String {
    format!("{:>11}", human_us(us))
}

/// Section heading: a blank line, the title, a rule.
fn section(o: &mut String, title: &str, header: &str) {
    let _ = writeln!(o);
    let _ = writeln!(o, "{}", truncate(title, WIDTH));
    if !header.is_empty() {
        let _ = writeln!(o, "{}", header.trim_end());
    }
    let _ = writeln!(o, "{}", "-".repeat(WIDTH));
}

/// Byte counts for people (powers of 1024).
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The human-readable report: totals, busy / idle, kernel types, temporal breakdown, top
/// kernels, stages, steps, idle time per stream, launches, memcpy; every line at most
/// [`WIDTH`] columns, no trailing blanks.
fn render_table(s: &Stats) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", truncate(&format!("gpuspan stats: {}", s.source), WIDTH));
    let _ = writeln!(o, "{}", "=".repeat(WIDTH));
    let _ = writeln!(o, "kernels           {}", s.kernel_count);
    let _ = writeln!(o, "kernel time       {}", human_us(s.kernel_total_us));
    let _ = writeln!(o, "GPU span          {}", human_us(s.gpu_span_us));
    let _ = writeln!(o, "GPU busy          {} ({} of span)", human_us(s.gpu_busy_us), percent(s.gpu_busy_us, s.gpu_span_us));
    let _ = writeln!(o, "GPU idle          {} ({} of span)", human_us(s.gpu_idle_us), percent(s.gpu_idle_us, s.gpu_span_us));

    if s.kernel_types.iter().any(|k| k.count > 0) {
        section(
            &mut o,
            "kernel types (HTA get_gpu_kernel_breakdown; exclusive = no other type running)",
            &format!("{:<16} {:>9} {:>11} {:>7} {:>11}", "type", "count", "total", "share", "exclusive"),
        );
        for k in &s.kernel_types {
            let _ = writeln!(
                o,
                "{:<16} {:>9} {} {:>7} {}",
                k.kernel_type.as_str(),
                k.count,
                col(k.total_us),
                format!("{:.1}%", 100.0 * k.share),
                col(k.exclusive_us)
            );
        }
    }

    if !s.temporal.is_empty() {
        section(
            &mut o,
            "temporal breakdown per device (HTA get_temporal_breakdown)",
            &format!(
                "{:>6} {:>11} {:>11} {:>11} {:>11} {:>7} {:>8} {:>12}",
                "device", "span", "idle", "compute", "non-compute", "idle%", "compute%", "non-compute%"
            ),
        );
        for t in &s.temporal {
            let _ = writeln!(
                o,
                "{:>6} {} {} {} {} {:>7.2} {:>8.2} {:>12.2}",
                t.device,
                col(t.span_us),
                col(t.idle_us),
                col(t.compute_us),
                col(t.non_compute_us),
                t.idle_pct,
                t.compute_pct,
                t.non_compute_pct
            );
        }
    }

    if !s.kernels.is_empty() {
        // One row of numbers per kernel, its name (cut to fit) on the line below.
        let shown = s.kernels.len().min(TOP_KERNELS);
        section(
            &mut o,
            &format!("top {shown} of {} kernels by total time", s.kernels.len()),
            &format!(
                "{:>6} {:>11} {:>7} {:>11} {:>11} {:>11} {:>11}  {}",
                "share", "total", "count", "mean", "p50", "p99", "max", "stage"
            ),
        );
        for k in s.kernels.iter().take(TOP_KERNELS) {
            let _ = writeln!(
                o,
                "{:>6} {} {:>7} {} {} {} {}  {}",
                format!("{:.1}%", 100.0 * k.share),
                col(k.total_us),
                k.count,
                col(k.mean_us),
                col(k.p50_us),
                col(k.p99_us),
                col(k.max_us),
                truncate(&k.stage, WIDTH - 76)
            );
            let _ = writeln!(o, "       {}", truncate(&k.name, WIDTH - 7));
        }
    }

    if !s.stages.is_empty() {
        section(
            &mut o,
            "stages (kernel time; mean / p50 / p99 / max of single kernels)",
            &format!(
                "{:<24} {:>7} {:>11} {:>6} {:>11} {:>11} {:>11} {:>11}",
                "stage", "kernels", "total", "share", "mean", "p50", "p99", "max"
            ),
        );
        for st in &s.stages {
            let _ = writeln!(
                o,
                "{:<24} {:>7} {} {:>6} {} {} {} {}",
                truncate(&st.stage, 24),
                st.count,
                col(st.total_us),
                format!("{:.1}%", 100.0 * st.share),
                col(st.mean_us),
                col(st.p50_us),
                col(st.p99_us),
                col(st.max_us)
            );
        }
    }

    if !s.steps.is_empty() {
        section(
            &mut o,
            "steps",
            &format!("{:<30} {:>11} {:>8} {:>11}  {}", "step", "duration", "kernels", "kernel time", "largest stage"),
        );
        for st in &s.steps {
            let top = st
                .stages
                .first()
                .map(|x| format!("{} {}", x.stage, percent(x.total_us, st.kernel_total_us)))
                .unwrap_or_default();
            let line = format!(
                "{:<30} {} {:>8} {}  {}",
                truncate(&st.name, 30),
                col(st.dur_us),
                st.kernel_count,
                col(st.kernel_total_us),
                top
            );
            let _ = writeln!(o, "{}", truncate(line.trim_end(), WIDTH));
        }
    }

    if !s.idle_breakdown.is_empty() {
        section(
            &mut o,
            &format!(
                "idle time per stream (HTA get_idle_time_breakdown; kernel wait: gaps < {} µs)",
                gpuspan_core::stats::CONSECUTIVE_KERNEL_DELAY_US
            ),
            &format!(
                "{:>6} {:>8} {:>11} {:>11} {:>11} {:>11}",
                "device", "stream", "idle", "host wait", "kernel wait", "other"
            ),
        );
        for r in &s.idle_breakdown {
            let _ = writeln!(
                o,
                "{:>6} {:>8} {} {} {} {}",
                r.device,
                r.stream,
                col(r.idle_us),
                col(r.host_wait_us),
                col(r.kernel_wait_us),
                col(r.other_us)
            );
        }
    }

    let l = &s.launch;
    if l.kernels_with_launch > 0 {
        section(
            &mut o,
            &format!(
                "launches (HTA get_cuda_kernel_launch_stats): {} GPU events joined to their launch call",
                l.kernels_with_launch
            ),
            &format!("{:<34} {:>11} {:>11} {:>11} {:>11}", "", "mean", "p50", "p99", "max"),
        );
        for (label, d) in [
            ("CPU launch duration", &l.cpu_launch_us),
            ("launch delay (after call returned)", &l.launch_delay_us),
            ("start delay (from call start)", &l.start_delay_us),
        ] {
            let _ = writeln!(o, "{:<34} {} {} {} {}", label, col(d.mean_us), col(d.p50_us), col(d.p99_us), col(d.max_us));
        }
        let _ = writeln!(
            o,
            "short kernels (GPU time < launch time): {} of {}, {} of GPU time",
            l.short_kernels.count,
            l.kernels_with_launch,
            human_us(l.short_kernels.total_us)
        );
    }

    if !s.memcpy.is_empty() {
        section(
            &mut o,
            "memcpy / memset (bandwidth = bytes / total time)",
            &format!("{:<16} {:>9} {:>12} {:>11} {:>11}", "kind", "count", "bytes", "total", "GB/s"),
        );
        for m in &s.memcpy {
            let _ = writeln!(
                o,
                "{:<16} {:>9} {:>12} {} {:>11.2}",
                truncate(&m.kind, 16),
                m.count,
                human_bytes(m.bytes),
                col(m.total_us),
                m.gb_per_s
            );
        }
    }
    if let Some(r) = &s.ranks {
        render_ranks(&mut o, r);
    }
    while o.ends_with('\n') {
        o.pop();
    }
    o
}

/// The ranks of a distributed job side by side: per step the straggler, the spread and the
/// ranks' communication; then per rank over the whole capture.
fn render_ranks(o: &mut String, r: &gpuspan_core::stats::ranks::RankStats) {
    section(
        o,
        &format!("ranks: {} of world size {} (compute = GPU time of a rank's own kernels)", r.ranks.len(), r.world_size),
        &format!("{:<24} {:>9} {:>11} {:>11} {:>11} {:>11}", "step", "straggler", "its compute", "spread", "comm max", "exposed max"),
    );
    for st in &r.steps {
        let max = |f: fn(&gpuspan_core::stats::ranks::RankTime) -> f64| st.ranks.iter().map(f).fold(0.0, f64::max);
        let slowest = st.ranks.iter().find(|t| t.rank == st.straggler_rank).map_or(0.0, |t| t.compute_us);
        let _ = writeln!(
            o,
            "{:<24} {:>9} {} {} {} {}",
            truncate(&format!("{} #{}", st.name, st.index), 24),
            format!("rank {}", st.straggler_rank),
            col(slowest),
            col(st.spread_us),
            col(max(|t| t.comm_us)),
            col(max(|t| t.exposed_comm_us))
        );
    }
    if !r.missing_steps.is_empty() {
        let _ = writeln!(o, "ranks with fewer steps than the others: {:?}", r.missing_steps);
    }
    section(o, "per rank, whole capture", &format!("{:<8} {:>9} {:>11} {:>11} {:>11}", "rank", "kernels", "compute", "comm", "exposed"));
    for t in &r.totals {
        let _ = writeln!(o, "{:<8} {:>9} {} {} {}", t.rank, t.kernel_count, col(t.compute_us), col(t.comm_us), col(t.exposed_comm_us));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::trace::{Category, Trace, TraceEvent};
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    #[test]
    fn table_fits_100_columns_and_has_sections() {
        let long = "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, c10::BFloat16 const*)";
        let mut events: Vec<TraceEvent> = (0..20)
            .map(|i| TraceEvent {
                cat: Some(Category::Kernel),
                name: format!("{long} #{i}"),
                ts_us: i as f64 * 10.0,
                dur_us: 5.0 + i as f64,
                stage: (i == 3).then(|| "a.very.long.stage.name.that.does.not.fit.anywhere".to_string()),
                correlation: Some(i),
                device: Some(0),
                stream: Some(7),
                ..Default::default()
            })
            .collect();
        events.extend((0..20).map(|i| TraceEvent {
            cat: Some(Category::CudaRuntime),
            name: "cudaLaunchKernel".into(),
            ts_us: i as f64 * 10.0 - 3.0,
            dur_us: 2.0,
            correlation: Some(i),
            ..Default::default()
        }));
        events.push(TraceEvent {
            cat: Some(Category::UserAnnotation),
            name: "ProfilerStep#6".into(),
            ts_us: -10.0,
            dur_us: 1000.0,
            ..Default::default()
        });
        events.push(TraceEvent {
            cat: Some(Category::GpuMemcpy),
            name: "Memcpy HtoD (Pageable -> Device)".into(),
            ts_us: 500.0,
            dur_us: 12345678.0,
            bytes: Some(123_456_789_012),
            device: Some(0),
            stream: Some(7),
            ..Default::default()
        });
        let s = stats::compute(&Trace { events, ..Default::default() }, "capture.json.gz");
        let t = render_table(&s);
        for line in t.lines() {
            assert!(line.chars().count() <= WIDTH, "{} columns: {line:?}", line.chars().count());
            assert_eq!(line.trim_end(), line, "no trailing blanks");
        }
        for want in [
            "top 15 of 20 kernels",
            "norm",
            "ProfilerStep#6",
            "kernel types",
            "COMPUTATION",
            "MEMORY",
            "temporal breakdown per device",
            "idle time per stream",
            "launches (HTA get_cuda_kernel_launch_stats): 20 GPU events",
            "launch delay",
            "short kernels",
            "Memcpy HtoD",
            "114.98 GiB",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn unreadable_file_exits_2() {
        assert_eq!(run(Path::new("/nonexistent/trace.json.gz"), true, None, false), ExitCode::from(2));
    }

    // ---- The real traces of ../shared/fixtures/traces against plain, independent
    // computations (different algorithms from gpuspan-core's: boundary sweeps instead of
    // interval merging, linear scans instead of indexes).

    const FIXTURES: [&str; 5] = [
        "h100-vit-falconsai.json.gz",
        "h100-bert-small.json.gz",
        "h100-qwen-prefill.json.gz",
        "a100-hta-control.json.gz",
        "v100-resnet50-oldschema.json.gz",
    ];

    fn fixture(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/traces").join(name);
        assert!(p.exists(), "fixture {} missing", p.display());
        p
    }

    /// `stats` reads host ops only where they name steps (`input`'s host-op filter): on every
    /// fixture its statistics, step detection included, are those of a read that keeps every
    /// host op, and the filter did drop most of them.
    #[test]
    fn statistics_are_the_same_without_the_host_ops_stats_does_not_read() {
        use gpuspan_export::kineto::ReadOptions;
        let host_ops = |t: &Trace| t.events.iter().filter(|e| matches!(e.cat, Some(Category::CpuOp | Category::PythonFunction))).count();
        let stats_of = |mut t: Trace, path: &Path| {
            let detection = crate::steps_arg::prepare(&mut t, None, path);
            let mut s = stats::compute(&t, "same");
            s.step_detection = detection;
            serde_json::to_value(&s).unwrap()
        };
        let (mut kept, mut read) = (0, 0);
        for name in FIXTURES {
            let path = fixture(name);
            let (filtered, _) = crate::input::read_ranked(&path, false).unwrap();
            let all = gpuspan_export::kineto::read_trace_with(&path, ReadOptions { drop_extra_args: true, ..Default::default() }).unwrap().0;
            kept += host_ops(&filtered);
            read += host_ops(&all);
            assert_eq!(stats_of(filtered, &path), stats_of(all, &path), "{name}");
        }
        assert!(read > 50_000 && kept * 100 < read, "{kept} of {read} host ops kept");
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn gpu_cat(e: &TraceEvent) -> Option<&str> {
        let c = e.cat.as_ref()?.as_kineto();
        matches!(c, "kernel" | "gpu_memcpy" | "gpu_memset").then_some(c)
    }

    /// Length of the union of intervals by a boundary sweep (starts before ends at equal
    /// times, so touching intervals join).
    fn union_sweep(iv: &[(f64, f64)]) -> f64 {
        let mut pts: Vec<(f64, i32)> = iv.iter().flat_map(|&(s, e)| [(s, 0), (e, 1)]).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut depth, mut busy, mut opened) = (0i32, 0.0, 0.0);
        for (t, kind) in pts {
            if kind == 0 {
                if depth == 0 {
                    opened = t;
                }
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    busy += t - opened;
                }
            }
        }
        busy
    }

    /// 0 computation, 1 communication, 2 memory (HTA get_kernel_type, written out).
    fn plain_type(e: &TraceEvent) -> usize {
        let n = e.name.as_str();
        if gpu_cat(e) != Some("kernel") {
            2
        } else if n.len() > 4 && &n[..4] == "nccl" && n[4..].contains("Kernel") {
            1
        } else if ["Memcpy", "Memset", "dma"].iter().any(|p| n.starts_with(p)) {
            2
        } else {
            0
        }
    }

    /// Smallest sample with at least pct % of the samples at or below it, by linear scan.
    fn plain_percentile(sorted: &[f64], pct: usize) -> f64 {
        let n = sorted.len();
        (0..n).find(|&i| (i + 1) * 100 >= pct * n).map(|i| sorted[i]).unwrap()
    }

    fn check_fixture(name: &str) {
        let trace = gpuspan_export::read_trace(&fixture(name)).unwrap();
        let s = stats::compute(&trace, name);
        let gpu: Vec<&TraceEvent> = trace.events.iter().filter(|e| gpu_cat(e).is_some()).collect();
        let dev = |e: &TraceEvent| e.device.unwrap_or(e.pid);
        let stream = |e: &TraceEvent| e.stream.unwrap_or(e.tid);

        // Kernel types: counts, sums, shares.
        let mut count = [0usize; 3];
        let mut total = [0.0f64; 3];
        for e in &gpu {
            count[plain_type(e)] += 1;
            total[plain_type(e)] += e.dur_us;
        }
        let sum: f64 = total.iter().sum();
        for (i, ty) in ["COMPUTATION", "COMMUNICATION", "MEMORY"].iter().enumerate() {
            let r = s.kernel_types.iter().find(|k| k.kernel_type.as_str() == *ty).unwrap();
            assert_eq!(r.count, count[i], "{name} {ty}");
            assert!(close(r.total_us, total[i]), "{name} {ty}: {} vs {}", r.total_us, total[i]);
            assert!(close(r.share, total[i] / sum), "{name} {ty} share");
        }
        assert!(close(s.kernel_types.iter().map(|k| k.share).sum::<f64>(), 1.0));

        // Temporal breakdown per device.
        let mut devices: BTreeMap<i64, Vec<&TraceEvent>> = BTreeMap::new();
        for e in &gpu {
            devices.entry(dev(e)).or_default().push(e);
        }
        assert_eq!(s.temporal.len(), devices.len(), "{name}");
        for (t, (d, evs)) in s.temporal.iter().zip(&devices) {
            let iv: Vec<(f64, f64)> = evs.iter().map(|e| (e.ts_us, e.ts_us + e.dur_us)).collect();
            let first = iv.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
            let last = iv.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
            let span = last - first;
            let busy = union_sweep(&iv);
            let comp: Vec<(f64, f64)> =
                evs.iter().filter(|e| plain_type(e) == 0).map(|e| (e.ts_us, e.ts_us + e.dur_us)).collect();
            let compute = union_sweep(&comp);
            assert_eq!(t.device, *d);
            assert!(close(t.span_us, span), "{name} span {} vs {span}", t.span_us);
            assert!(close(t.idle_us, span - busy), "{name} idle {} vs {}", t.idle_us, span - busy);
            assert!(close(t.compute_us, compute), "{name} compute");
            assert!(close(t.non_compute_us, busy - compute), "{name} non-compute");
            assert!(close(t.idle_pct + t.compute_pct + t.non_compute_pct, 100.0), "{name} pcts");
        }

        // Idle time per stream.
        let mut api_start: HashMap<i64, f64> = HashMap::new();
        for e in trace.events.iter().filter(|e| matches!(e.cat, Some(Category::CudaRuntime | Category::CudaDriver))) {
            if let Some(c) = e.correlation {
                let t = api_start.entry(c).or_insert(f64::INFINITY);
                *t = t.min(e.ts_us);
            }
        }
        let mut streams: BTreeMap<(i64, i64), Vec<&TraceEvent>> = BTreeMap::new();
        for e in &gpu {
            streams.entry((dev(e), stream(e))).or_default().push(e);
        }
        assert_eq!(s.idle_breakdown.len(), streams.len(), "{name}");
        for (r, ((d, st), evs)) in s.idle_breakdown.iter().zip(&mut streams) {
            evs.sort_by(|a, b| a.ts_us.total_cmp(&b.ts_us).then(a.end_us().total_cmp(&b.end_us())));
            let (mut host, mut kernel, mut other) = (0.0, 0.0, 0.0);
            for w in evs.windows(2) {
                let gap = (w[1].ts_us - w[0].end_us()).max(0.0);
                let launched = w[1].correlation.and_then(|c| api_start.get(&c).copied());
                if launched.is_some_and(|t| t > w[0].end_us()) {
                    host += gap;
                } else if gap < 30.0 {
                    kernel += gap;
                } else {
                    other += gap;
                }
            }
            assert_eq!((r.device, r.stream), (*d, *st));
            assert!(close(r.host_wait_us, host), "{name} {st} host {} vs {host}", r.host_wait_us);
            assert!(close(r.kernel_wait_us, kernel), "{name} {st} kernel wait");
            assert!(close(r.other_us, other), "{name} {st} other");
            assert!(close(r.idle_us, host + kernel + other), "{name} {st} idle");
        }

        // Launches: the launch calls present in these traces, by exact name.
        let calls = ["cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cudaMemcpyAsync", "cudaMemsetAsync"];
        let mut launch: HashMap<i64, (f64, f64)> = HashMap::new();
        for e in &trace.events {
            if e.cat.as_ref().is_some_and(|c| c.is_launch_api()) && calls.contains(&e.name.as_str()) {
                if let Some(c) = e.correlation {
                    assert!(launch.insert(c, (e.ts_us, e.dur_us)).is_none(), "{name}: one launch per correlation");
                }
            }
        }
        let (mut n, mut cpu, mut delay, mut short, mut short_us) = (0usize, Vec::new(), Vec::new(), 0usize, 0.0);
        for e in &gpu {
            if let Some(&(ts, dur)) = e.correlation.and_then(|c| launch.get(&c)) {
                n += 1;
                cpu.push(dur);
                delay.push((e.ts_us - ts - dur).max(0.0));
                if e.dur_us < dur {
                    short += 1;
                    short_us += e.dur_us;
                }
            }
        }
        let l = &s.launch;
        assert_eq!(l.kernels_with_launch, n, "{name}");
        assert!(n > 0, "{name}: some launches join");
        cpu.sort_by(f64::total_cmp);
        delay.sort_by(f64::total_cmp);
        assert!(close(l.cpu_launch_us.mean_us, cpu.iter().sum::<f64>() / n as f64), "{name}");
        assert_eq!(l.cpu_launch_us.p50_us, plain_percentile(&cpu, 50), "{name}");
        assert_eq!(l.cpu_launch_us.p99_us, plain_percentile(&cpu, 99), "{name}");
        assert_eq!(l.cpu_launch_us.max_us, cpu[n - 1], "{name}");
        assert!(close(l.launch_delay_us.mean_us, delay.iter().sum::<f64>() / n as f64), "{name}");
        assert_eq!(l.launch_delay_us.p50_us, plain_percentile(&delay, 50), "{name}");
        assert_eq!(l.launch_delay_us.p99_us, plain_percentile(&delay, 99), "{name}");
        assert_eq!(l.short_kernels.count, short, "{name}");
        assert!(close(l.short_kernels.total_us, short_us), "{name}");

        // Memcpy / memset per kind.
        let mut kinds: BTreeMap<String, (usize, u64, f64)> = BTreeMap::new();
        for e in gpu.iter().filter(|e| gpu_cat(e) != Some("kernel")) {
            let kind = if gpu_cat(e) == Some("gpu_memset") { "Memset".to_string() } else { e.name.chars().take(11).collect() };
            let k = kinds.entry(kind).or_default();
            k.0 += 1;
            k.1 += e.bytes.unwrap_or(0) as u64;
            k.2 += e.dur_us;
        }
        assert_eq!(s.memcpy.len(), kinds.len(), "{name}");
        for m in &s.memcpy {
            let (c, b, t) = kinds[&m.kind];
            assert_eq!((m.count, m.bytes), (c, b), "{name} {}", m.kind);
            assert!(close(m.total_us, t) && close(m.gb_per_s, b as f64 / t / 1e3), "{name} {}", m.kind);
        }

        // Kernel percentiles and shares.
        let mut by_name: HashMap<&str, Vec<f64>> = HashMap::new();
        for e in gpu.iter().filter(|e| gpu_cat(e) == Some("kernel")) {
            by_name.entry(e.name.as_str()).or_default().push(e.dur_us);
        }
        assert_eq!(s.kernels.len(), by_name.len());
        for k in &s.kernels {
            let v = by_name.get_mut(k.name.as_str()).unwrap();
            v.sort_by(f64::total_cmp);
            assert_eq!((k.p50_us, k.p99_us), (plain_percentile(v, 50), plain_percentile(v, 99)), "{name} {}", k.name);
            assert!(close(k.share, v.iter().sum::<f64>() / s.kernel_total_us));
        }
        assert!(close(s.stages.iter().map(|x| x.share).sum::<f64>(), 1.0), "{name}");
        for st in &s.stages {
            assert!(st.min_us <= st.p50_us && st.p50_us <= st.p99_us && st.p99_us <= st.max_us, "{name} {}", st.stage);
            assert!(close(st.mean_us * st.count as f64, st.total_us));
        }
        // Each step's stages add up to the step.
        for step in &s.steps {
            let c: usize = step.stages.iter().map(|x| x.count).sum();
            let t: f64 = step.stages.iter().map(|x| x.total_us).sum();
            assert_eq!(c, step.kernel_count, "{name} {}", step.name);
            assert!(close(t, step.kernel_total_us), "{name} {}", step.name);
        }
        // The report renders within the width.
        assert!(render_table(&s).lines().all(|l| l.chars().count() <= WIDTH));
    }

    #[test]
    fn fixture_h100_vit() {
        check_fixture(FIXTURES[0]);
    }

    #[test]
    fn fixture_h100_bert() {
        check_fixture(FIXTURES[1]);
    }

    #[test]
    fn fixture_h100_qwen() {
        check_fixture(FIXTURES[2]);
    }

    #[test]
    fn fixture_a100_hta_control() {
        check_fixture(FIXTURES[3]);
    }

    #[test]
    fn fixture_v100_resnet50_old_schema() {
        check_fixture(FIXTURES[4]);
    }
}

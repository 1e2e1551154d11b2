//! A directory of captures read as one trace: the per-process captures that sibling
//! workers under one `gpuspan run` leave (`capture-<pid>.json.gz`, one per GPU or launcher
//! rank), rolling segments, or a folder of torch.profiler traces (DESIGN.md "Command line":
//! every command that reads a capture also reads a directory of them).

use super::read::{read_trace_with, ReadOptions, Skipped};
use super::{ReadError, ReadErrorKind};
use gpuspan_core::trace::Trace;
use std::path::{Path, PathBuf};

/// The per-process captures the agent writes in `dir` (`capture-<pid>.json.gz`, and rolling
/// segments `capture-<pid>-<seq>.json.gz`), in order of process id then segment number
/// (segment 10 after segment 9, not after 1; names of another shape last, by name); empty
/// when there are none or `dir` cannot be listed.
pub fn process_captures(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("capture-") && n.ends_with(".json.gz"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_cached_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        (capture_order(&name).unwrap_or((u64::MAX, u64::MAX)), name)
    });
    v
}

/// `(pid, seq)` of a capture named `capture-<pid>.json.gz` (seq 0) or
/// `capture-<pid>-<seq>.json.gz`; `None` for any other name.
fn capture_order(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_prefix("capture-")?.strip_suffix(".json.gz")?;
    match stem.split_once('-') {
        Some((pid, seq)) => Some((pid.parse().ok()?, seq.parse().ok()?)),
        None => Some((stem.parse().ok()?, 0)),
    }
}

/// The trace files of `dir`, directly inside it: gpuspan's per-process
/// captures ([`process_captures`]) when there are any, so other JSON beside them (a ground-truth file,
/// a report) is not mistaken for a trace; otherwise every `*.json` and `*.json.gz` (a
/// folder of torch.profiler traces). Errors: the directory cannot be listed, or it holds no
/// trace file.
pub fn trace_files(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReadError::new(dir, ReadErrorKind::Io(e)))?;
    let captures = process_captures(dir);
    if !captures.is_empty() {
        return Ok(captures);
    }
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".json") || n.ends_with(".json.gz")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ReadError::new(dir, ReadErrorKind::NoTraceInDir));
    }
    Ok(files)
}

/// Reads `path` as one trace: a file with [`read_trace`](crate::read_trace), or every trace file of a
/// directory ([`trace_files`]) merged: events of all files in file order, each file's
/// timestamps moved onto the earliest `baseTimeNanoseconds` among them (files without one
/// keep theirs), process and thread names united, the first file's schema version and
/// device properties. Events of different processes keep their `pid`s, so per-process
/// analyses stay apart. Errors: the first file that does not read, named.
pub fn read_captures(path: &Path) -> Result<Trace, ReadError> {
    read_captures_with(path, ReadOptions { strict: true, ..ReadOptions::default() }).map(|(t, _)| t)
}

/// [`read_captures`] with [`ReadOptions`] (each file read by
/// [`super::read::read_trace_with`]): the merged trace and every file's skipped events.
pub fn read_captures_with(path: &Path, opts: ReadOptions) -> Result<(Trace, Skipped), ReadError> {
    if !path.is_dir() {
        return read_trace_with(path, opts);
    }
    let (traces, skipped) = read_rank_traces(path, opts)?;
    Ok((merge(traces.into_iter().map(|(_, t)| t).collect()), skipped))
}

/// Traces with the rank each names (`distributedInfo.rank`), in file order.
pub type RankTraces = Vec<(Option<u32>, Trace)>;

/// The traces of `path` one by one, each with its rank (`distributedInfo.rank`), moved onto
/// one time base (the earliest `baseTimeNanoseconds`, as [`merge`] does), unmerged: what a
/// view of a distributed job's ranks side by side needs (`Waterfall::from_ranks`). A file
/// is one trace. Errors: as [`read_captures_with`].
pub fn read_rank_traces(path: &Path, opts: ReadOptions) -> Result<(RankTraces, Skipped), ReadError> {
    if !path.is_dir() {
        return read_trace_with(path, opts).map(|(t, s)| (vec![(t.rank(), t)], s));
    }
    let mut skipped = Skipped::default();
    let mut traces = Vec::new();
    for f in trace_files(path)? {
        let (t, s) = read_trace_with(&f, opts)?;
        skipped.add(s);
        traces.push((t.rank(), t));
    }
    let base = traces.iter().filter_map(|(_, t)| t.base_time_ns).min();
    for (_, t) in &mut traces {
        if let (Some(b), Some(m)) = (t.base_time_ns, base) {
            let shift_us = (b - m) as f64 / 1000.0;
            if shift_us != 0.0 {
                t.events.iter_mut().for_each(|e| e.ts_us += shift_us);
                t.counters.iter_mut().for_each(|c| c.ts_us += shift_us);
            }
            t.base_time_ns = Some(m);
        }
    }
    Ok((traces, skipped))
}

/// Merges traces as [`read_captures`] describes.
pub fn merge(traces: Vec<Trace>) -> Trace {
    let base = traces.iter().filter_map(|t| t.base_time_ns).min();
    let mut out = Trace { base_time_ns: base, ..Default::default() };
    for (i, t) in traces.into_iter().enumerate() {
        if i == 0 {
            out.schema_version = t.schema_version;
            out.device_properties = t.device_properties.clone();
        }
        let shift_us = match (t.base_time_ns, base) {
            (Some(b), Some(m)) => (b - m) as f64 / 1000.0,
            _ => 0.0,
        };
        out.events.extend(t.events.into_iter().map(|mut e| {
            e.ts_us += shift_us;
            e
        }));
        out.counters.extend(t.counters.into_iter().map(|mut c| {
            c.ts_us += shift_us;
            c
        }));
        out.process_names.extend(t.process_names);
        out.thread_names.extend(t.thread_names);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuspan_core::trace::{Category, TraceEvent};

    fn trace(pid: i64, base_ns: i64, ts_us: f64) -> Trace {
        Trace {
            events: vec![TraceEvent {
                cat: Some(Category::Kernel),
                name: format!("k{pid}"),
                pid,
                ts_us,
                dur_us: 1.0,
                ..Default::default()
            }],
            base_time_ns: Some(base_ns),
            process_names: [(pid, format!("worker {pid}"))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_directory_merges_onto_the_earliest_base_time() {
        let dir = tempfile::tempdir().unwrap();
        crate::write_trace(&trace(2, 5_000_000, 10.0), &dir.path().join("capture-2.json.gz")).unwrap();
        crate::write_trace(&trace(1, 3_000_000, 10.0), &dir.path().join("capture-1.json.gz")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a trace").unwrap();
        std::fs::write(dir.path().join("truth.json"), "{}").unwrap();
        let files = trace_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let t = read_captures(dir.path()).unwrap();
        assert_eq!(t.base_time_ns, Some(3_000_000));
        let ts: Vec<(i64, f64)> = t.kernels().map(|k| (k.pid, k.ts_us)).collect();
        assert_eq!(ts, [(1, 10.0), (2, 2010.0)], "pid 2's kernel moved by its 2 ms later base");
        assert_eq!(t.process_names.len(), 2);
    }

    #[test]
    fn captures_come_in_process_then_segment_order() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["capture-7-10.json.gz", "capture-7-2.json.gz", "capture-12.json.gz", "capture-7-9.json.gz", "capture-x.json.gz", "capture-7.json.gz"];
        for n in names {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let got: Vec<String> = process_captures(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(got, ["capture-7.json.gz", "capture-7-2.json.gz", "capture-7-9.json.gz", "capture-7-10.json.gz", "capture-12.json.gz", "capture-x.json.gz"]);
    }

    #[test]
    fn an_empty_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_captures(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()) && e.contains("no trace file"), "{e}");
    }
}

//! Reading the trace a command analyses (`stats`, `waterfall`, `diff`): a file or a
//! directory of them ([`gpuspan_export::kineto::read_rank_traces`], merged or rank by rank), leniently unless `--strict`:
//! malformed events are skipped and counted in one warning line on stderr
//! (`gpuspan: warning: <file>: skipped N malformed events (first: event I: why); …`); only a
//! file that is not a trace at all is refused. The analyses read no untyped event args, so
//! they are not kept ([`ReadOptions::drop_extra_args`]).

use std::path::Path;
use std::process::ExitCode;

use gpuspan_core::stats::ranks::{RankStats, RankSummary};
use gpuspan_core::trace::Trace;
use gpuspan_export::kineto::{RankTraces, ReadOptions};

/// `path` read trace by trace ([`gpuspan_export::kineto::read_rank_traces`]: a file is
/// one trace; a directory's traces on one time base), each with its rank; the skipped
/// events warned about once. On failure prints `gpuspan: <error>` and gives exit code 2.
fn read_traces(path: &Path, strict: bool) -> Result<RankTraces, ExitCode> {
    match gpuspan_export::kineto::read_rank_traces(path, ReadOptions { strict, drop_extra_args: true, keep_host_op: Some(gpuspan_core::step_detect::is_step_name) }) {
        Ok((traces, skipped)) => {
            if let Some(w) = skipped.warning() {
                eprintln!("gpuspan: warning: {w}");
            }
            Ok(traces)
        }
        Err(e) => {
            eprintln!("gpuspan: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// One trace from `traces`: a file's as it is, a directory's merged
/// ([`gpuspan_export::kineto::merge`]).
fn merged(path: &Path, mut traces: RankTraces) -> Trace {
    if !path.is_dir() && traces.len() == 1 {
        return traces.pop().map(|(_, t)| t).unwrap_or_default();
    }
    gpuspan_export::kineto::merge(traces.into_iter().map(|(_, t)| t).collect())
}

/// What [`read_ranks`] read.
pub enum Ranked {
    /// A file, or a directory of one process's (or one rank's) captures, merged.
    One(Trace),
    /// A directory of two or more ranks' captures of a distributed job: each rank's trace,
    /// on one time base, by rank.
    Ranks(Vec<(u32, Trace)>),
}

/// Reads `path` once, keeping a distributed job's ranks apart when it is a directory whose
/// files all carry a rank (`distributedInfo`), two or more distinct; else merged.
pub fn read_ranks(path: &Path, strict: bool) -> Result<Ranked, ExitCode> {
    let traces = read_traces(path, strict)?;
    let mut ranks: Vec<u32> = traces.iter().filter_map(|(r, _)| *r).collect();
    ranks.sort_unstable();
    ranks.dedup();
    if !path.is_dir() || ranks.len() < 2 || traces.iter().any(|(r, _)| r.is_none()) {
        return Ok(Ranked::One(merged(path, traces)));
    }
    let mut by_rank: Vec<(u32, Trace)> = traces.into_iter().map(|(r, t)| (r.unwrap_or(0), t)).collect();
    by_rank.sort_by_key(|(r, _)| *r);
    Ok(Ranked::Ranks(by_rank))
}

/// `path` as one trace (a directory merged), with the ranks side by side ([`RankStats`])
/// when it is a directory of a distributed job's per-rank captures: each trace that names its rank is summarised before
/// the merge, which no longer tells the ranks apart (their GPU rows share device 0).
pub fn read_ranked(path: &Path, strict: bool) -> Result<(Trace, Option<RankStats>), ExitCode> {
    let traces = read_traces(path, strict)?;
    let ranks = if path.is_dir() {
        RankStats::combine(traces.iter().filter_map(|(r, t)| r.map(|r| RankSummary::of(r, t))).collect())
    } else {
        None
    };
    Ok((merged(path, traces), ranks))
}

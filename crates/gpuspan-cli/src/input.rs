//! Reading the trace a command analyses (`stats`, `waterfall`, `diff`): a file or a
//! directory of them ([`gpuspan_export::read_captures_with`]), leniently unless `--strict`:
//! malformed events are skipped and counted in one warning line on stderr
//! (`gpuspan: warning: <file>: skipped N malformed events (first: event I: why); …`); only a
//! file that is not a trace at all is refused. The analyses read no untyped event args, so
//! they are not kept ([`ReadOptions::drop_extra_args`]).

use std::path::Path;
use std::process::ExitCode;

use gpuspan_core::stats::ranks::RankStats;
use gpuspan_core::trace::Trace;
use gpuspan_export::kineto::ReadOptions;

/// Reads `path`; on failure prints `gpuspan: <error>` and gives exit code 2.
pub fn read(path: &Path, strict: bool) -> Result<Trace, ExitCode> {
    read_ranked(path, strict).map(|(t, _)| t)
}

/// What [`read_ranks`] read.
pub enum Ranked {
    /// A file, or a directory of one process's (or one rank's) captures, merged as [`read`].
    One(Trace),
    /// A directory of two or more ranks' captures of a distributed job: each rank's trace,
    /// on one time base, by rank.
    Ranks(Vec<(u32, Trace)>),
}

/// Reads `path` once, keeping a distributed job's ranks apart
/// ([`gpuspan_export::kineto::read_rank_traces`]) when its files carry two or more ranks
/// (`distributedInfo`), else merged as [`read`] does.
pub fn read_ranks(path: &Path, strict: bool) -> Result<Ranked, ExitCode> {
    if !path.is_dir() {
        return read(path, strict).map(Ranked::One);
    }
    match gpuspan_export::kineto::read_rank_traces(path, ReadOptions { strict, drop_extra_args: true }) {
        Ok((traces, skipped)) => {
            if let Some(w) = skipped.warning() {
                eprintln!("gpuspan: warning: {w}");
            }
            let mut ranks: Vec<u32> = traces.iter().filter_map(|(r, _)| *r).collect();
            ranks.sort_unstable();
            ranks.dedup();
            if ranks.len() < 2 || traces.iter().any(|(r, _)| r.is_none()) {
                return Ok(Ranked::One(gpuspan_export::kineto::merge(traces.into_iter().map(|(_, t)| t).collect())));
            }
            let mut by_rank: Vec<(u32, Trace)> = traces.into_iter().map(|(r, t)| (r.unwrap_or(0), t)).collect();
            by_rank.sort_by_key(|(r, _)| *r);
            Ok(Ranked::Ranks(by_rank))
        }
        Err(e) => {
            eprintln!("gpuspan: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// [`read`], with the ranks side by side when `path` is a directory of a distributed job's
/// per-rank captures ([`gpuspan_export::kineto::read_captures_ranked`]).
pub fn read_ranked(path: &Path, strict: bool) -> Result<(Trace, Option<RankStats>), ExitCode> {
    match gpuspan_export::kineto::read_captures_ranked(path, ReadOptions { strict, drop_extra_args: true }) {
        Ok((trace, skipped, ranks)) => {
            if let Some(w) = skipped.warning() {
                eprintln!("gpuspan: warning: {w}");
            }
            Ok((trace, ranks))
        }
        Err(e) => {
            eprintln!("gpuspan: {e}");
            Err(ExitCode::from(2))
        }
    }
}

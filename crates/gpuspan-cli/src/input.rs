//! Reading the trace a command analyses (`stats`, `waterfall`, `diff`): a file or a
//! directory of them ([`gpuspan_export::read_captures_with`]), leniently unless `--strict`:
//! malformed events are skipped and counted in one warning line on stderr
//! (`gpuspan: warning: <file>: skipped N malformed events (first: event I: why); …`); only a
//! file that is not a trace at all is refused. The analyses read no untyped event args, so
//! they are not kept ([`ReadOptions::drop_extra_args`]).

use std::path::Path;
use std::process::ExitCode;

use gpuspan_core::trace::Trace;
use gpuspan_export::kineto::ReadOptions;

/// Reads `path`; on failure prints `gpuspan: <error>` and gives exit code 2.
pub fn read(path: &Path, strict: bool) -> Result<Trace, ExitCode> {
    match gpuspan_export::read_captures_with(path, ReadOptions { strict, drop_extra_args: true }) {
        Ok((trace, skipped)) => {
            if let Some(w) = skipped.warning() {
                eprintln!("gpuspan: warning: {w}");
            }
            Ok(trace)
        }
        Err(e) => {
            eprintln!("gpuspan: {e}");
            Err(ExitCode::from(2))
        }
    }
}

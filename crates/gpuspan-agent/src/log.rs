//! Agent diagnostics: one line on stderr each, prefixed `gpuspan:`; some at most once.
//!
//! The agent never uses stdout (the worker's stdout is the worker's). `GPUSPAN_LOG=off`
//! silences everything, `info` adds informational lines; the default prints warnings.

use std::sync::atomic::{AtomicU8, Ordering};

/// Log level: 0 off, 1 warn (default), 2 info.
static LEVEL: AtomicU8 = AtomicU8::new(1);

/// Sets the level from `GPUSPAN_LOG` (`off`, `warn`, `info`; anything else: warn).
pub fn init_from_env() {
    let l = match std::env::var("GPUSPAN_LOG").as_deref() {
        Ok("off") | Ok("0") => 0,
        Ok("info") | Ok("debug") => 2,
        _ => 1,
    };
    LEVEL.store(l, Ordering::Relaxed);
}

/// Whether warnings are printed (`GPUSPAN_LOG` is not `off`). One atomic load.
pub fn warnings_on() -> bool {
    LEVEL.load(Ordering::Relaxed) >= 1
}

/// Prints `gpuspan: warning: <msg>` on stderr unless logging is off.
pub fn warn(msg: &str) {
    if LEVEL.load(Ordering::Relaxed) >= 1 {
        eprintln!("gpuspan: warning: {msg}");
    }
}

/// Prints `gpuspan: <msg>` on stderr at level info.
pub fn info(msg: &str) {
    if LEVEL.load(Ordering::Relaxed) >= 2 {
        eprintln!("gpuspan: {msg}");
    }
}

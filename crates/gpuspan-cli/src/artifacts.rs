//! Finding the libraries and binaries `gpuspan` starts: `libgpuspan.so` (the agent),
//! `libgpuspan_simgpu.so` (the simulated H100) and `gpuspan-replay`.
//!
//! They are looked up next to the running `gpuspan` executable (cargo puts all of a
//! workspace's artifacts in one `target/<profile>/`), unless overridden by
//! `GPUSPAN_AGENT_LIB`, `GPUSPAN_SIM_LIB`, `GPUSPAN_REPLAY_BIN`.

use std::path::PathBuf;

/// A required artifact that is not there.
#[derive(Debug)]
pub struct Missing {
    /// What was looked for.
    pub what: &'static str,
    /// Where.
    pub path: PathBuf,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} not found at {} (build the workspace: cargo build --workspace)",
            self.what,
            self.path.display()
        )
    }
}

fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn find(env: &str, file: &str, what: &'static str) -> Result<PathBuf, Missing> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| exe_dir().join(file));
    if path.is_file() {
        Ok(std::fs::canonicalize(&path).unwrap_or(path))
    } else {
        Err(Missing { what, path })
    }
}

/// `libgpuspan.so`.
pub fn agent_lib() -> Result<PathBuf, Missing> {
    find("GPUSPAN_AGENT_LIB", "libgpuspan.so", "the agent library libgpuspan.so")
}

/// `libgpuspan_simgpu.so`.
pub fn sim_lib() -> Result<PathBuf, Missing> {
    find("GPUSPAN_SIM_LIB", "libgpuspan_simgpu.so", "the simulated H100 library libgpuspan_simgpu.so")
}

/// `gpuspan-replay`.
pub fn replay_bin() -> Result<PathBuf, Missing> {
    find("GPUSPAN_REPLAY_BIN", "gpuspan-replay", "the replay worker gpuspan-replay")
}

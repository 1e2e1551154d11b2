//! Finding the libraries and binaries `gpuspan` starts: `libgpuspan.so` (the agent),
//! `libgpuspan_simgpu.so` (the simulated H100) and `gpuspan-replay`.
//!
//! They are looked up next to the running `gpuspan` executable (cargo puts all of a
//! workspace's artifacts in one `target/<profile>/`; `scripts/install.sh` puts them in
//! `PREFIX/bin`), else in the Python wheel's layout (`pip install gpuspan`: the executable
//! in `<venv>/bin`, the rest in `<venv>/lib/python3.X/site-packages/gpuspan/_native/`),
//! unless overridden by `GPUSPAN_AGENT_LIB`, `GPUSPAN_SIM_LIB`, `GPUSPAN_REPLAY_BIN`.

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

/// The `site-packages` directories of the virtual environment (or prefix) whose `bin/`
/// holds `exe_dir`: `<exe_dir>/../lib/python3.*/site-packages`, sorted. Where a wheel's
/// packages are when its scripts are in `exe_dir`.
pub fn site_packages_beside(exe_dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(exe_dir.join("../lib")) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages"))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn find(env: &str, file: &str, what: &'static str) -> Result<PathBuf, Missing> {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        return if path.is_file() { Ok(std::fs::canonicalize(&path).unwrap_or(path)) } else { Err(Missing { what, path }) };
    }
    let beside = exe_dir().join(file);
    let wheel = site_packages_beside(&exe_dir()).into_iter().map(|d| d.join("gpuspan/_native").join(file));
    match std::iter::once(beside.clone()).chain(wheel).find(|p| p.is_file()) {
        Some(path) => Ok(std::fs::canonicalize(&path).unwrap_or(path)),
        None => Err(Missing { what, path: beside }),
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

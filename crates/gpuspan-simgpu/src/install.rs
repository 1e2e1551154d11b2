//! Installing the simulator under the NVIDIA sonames (safe Rust; used by tests and the CLI).
//!
//! One loaded copy of the cdylib must serve `libcuda`, `libcupti` and `libnvidia-ml` so
//! CUPTI sees the driver's launches: the names are **symlinks** to one file, and the
//! dynamic loader, resolving them to the same path, loads it once.

use std::path::{Path, PathBuf};

/// File name cargo gives the cdylib.
pub const SIM_LIB_NAME: &str = "libgpuspan_simgpu.so";

/// Names the sim is installed under: the sonames the agent, cudarc and nvml-wrapper open.
pub const SONAMES: [&str; 5] = [
    "libcuda.so.1",
    "libcuda.so",
    "libcupti.so.12",
    "libcupti.so",
    "libnvidia-ml.so.1",
];

/// Finds the built cdylib next to the current executable or in its parent directory
/// (cargo puts test binaries in `target/<profile>/deps`, the cdylib in `target/<profile>`).
pub fn find_sim_lib() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(SIM_LIB_NAME))
        .find(|p| p.is_file());
    found
}

/// Creates (or replaces) the [`SONAMES`] symlinks in `dir`, all pointing at `sim_lib`.
pub fn install(dir: &Path, sim_lib: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = if sim_lib.is_absolute() {
        sim_lib.to_path_buf()
    } else {
        std::env::current_dir()?.join(sim_lib)
    };
    for name in SONAMES {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(_) => std::fs::remove_file(&link)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&target, &link)?;
    }
    Ok(())
}

/// Environment for a child process that should load the sim from `dir`:
/// `LD_LIBRARY_PATH` with `dir` prepended to the current value.
pub fn sim_env(dir: &Path) -> Vec<(String, String)> {
    let mut v = dir.to_string_lossy().into_owned();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        if !old.is_empty() {
            v.push(':');
            v.push_str(&old);
        }
    }
    vec![("LD_LIBRARY_PATH".to_string(), v)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_creates_and_replaces_symlinks() {
        let dir = std::env::temp_dir().join(format!("gpuspan-sim-install-{}", std::process::id()));
        let lib_a = dir.join("a.so");
        let lib_b = dir.join("b.so");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&lib_a, b"a").unwrap();
        std::fs::write(&lib_b, b"b").unwrap();
        let libs = dir.join("libs");
        install(&libs, &lib_a).unwrap();
        install(&libs, &lib_b).unwrap();
        for n in SONAMES {
            let p = libs.join(n);
            assert!(
                std::fs::symlink_metadata(&p)
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{n} is a symlink"
            );
            assert_eq!(std::fs::read_link(&p).unwrap(), lib_b);
        }
        let env = sim_env(&libs);
        assert_eq!(env[0].0, "LD_LIBRARY_PATH");
        assert!(env[0].1.starts_with(libs.to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

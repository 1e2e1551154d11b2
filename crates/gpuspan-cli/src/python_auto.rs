//! `gpuspan run -- python …`: switching on the Python auto-instrumentation
//! (`python/gpuspan/auto.py`, issue 12) for a worker that announces nothing.
//!
//! When the command is a Python interpreter (its name is `python`, `python3`, `python3.11`,
//! …, or it is a script whose `#!` line names one, as `torchrun` and `accelerate` are),
//! `run` sets `GPUSPAN_AUTO=1` and puts the package's `bootstrap` directory (whose
//! `sitecustomize` installs the hooks) and the package's parent directory first on
//! `PYTHONPATH`, the way `opentelemetry-instrument` does. `--no-auto` leaves the
//! environment alone.
//!
//! The package is looked up, in order: `GPUSPAN_PYTHON_DIR`; `<exe dir>/../share/gpuspan/python`
//! (the installed layout of `scripts/install.sh`); `<exe dir>/../../python` (the build tree:
//! `target/<profile>/gpuspan`); `<exe dir>/../lib/python3.X/site-packages` (the Python
//! wheel, `pip install gpuspan`).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Is `name` (a file name, no directory) a Python interpreter's?
fn is_python_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("python") else { return false };
    rest.is_empty() || rest.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// `program` as the shell would find it: itself when it has a `/`, else the first match
/// on `PATH`.
fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// True when `program` runs Python: a Python interpreter by name, or a script whose `#!`
/// line names one (`#!/usr/bin/env python3`, `#!/opt/venv/bin/python3.11`).
pub fn is_python(program: &str) -> bool {
    let base = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program);
    if is_python_name(base) {
        return true;
    }
    let Some(path) = resolve(program) else { return false };
    let mut head = [0u8; 256];
    let n = std::fs::File::open(&path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let first = &head[..n];
    if !first.starts_with(b"#!") {
        return false;
    }
    let line = first.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(&line[2..]).split_whitespace().any(|w| {
        let base = w.rsplit('/').next().unwrap_or(w);
        is_python_name(base)
    })
}

/// The directory holding the `gpuspan` Python package (it has `gpuspan/auto.py`), if any.
pub fn package_dir() -> Option<PathBuf> {
    let has_package = |d: &Path| d.join("gpuspan/auto.py").is_file();
    if let Some(d) = std::env::var_os("GPUSPAN_PYTHON_DIR").map(PathBuf::from) {
        return has_package(&d).then_some(d);
    }
    let exe = std::env::current_exe().ok()?;
    let exe_dir = exe.parent()?;
    [exe_dir.join("../share/gpuspan/python"), exe_dir.join("../../python")]
        .into_iter()
        .chain(crate::artifacts::site_packages_beside(exe_dir))
        .find(|d| has_package(d))
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
}

/// The `PYTHONPATH` for an instrumented worker: the bootstrap directory, the package's
/// parent, then the user's own entries.
pub fn pythonpath(package_dir: &Path) -> OsString {
    let mut dirs = vec![package_dir.join("gpuspan/bootstrap"), package_dir.to_path_buf()];
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|o| !o.is_empty()) {
        dirs.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_names() {
        for yes in ["python", "python3", "python3.11", "/usr/bin/python3", ".venv/bin/python"] {
            assert!(is_python(yes), "{yes}");
        }
        for no in ["pythonista", "bash", "/bin/true", "gpuspan-replay", "ipython-not-there"] {
            assert!(!is_python(no), "{no}");
        }
    }

    #[test]
    fn scripts_with_a_python_shebang() {
        let d = tempfile::tempdir().unwrap();
        let script = |name: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        assert!(is_python(&script("torchrun", "#!/opt/venv/bin/python3.11\nimport sys\n")));
        assert!(is_python(&script("accelerate", "#!/usr/bin/env python3\n")));
        assert!(!is_python(&script("launch.sh", "#!/bin/bash\npython3 worker.py\n")));
        assert!(!is_python(&script("data.bin", "\x7fELF....")));
    }

    #[test]
    fn the_build_tree_has_the_package() {
        // Unit tests run from target/<profile>/deps, two levels below target/: the build
        // tree lookup is `<exe dir>/../../python`, so check the repository's copy directly.
        let repo_python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python");
        assert!(repo_python.join("gpuspan/auto.py").is_file());
        assert!(repo_python.join("gpuspan/bootstrap/sitecustomize.py").is_file());
        let pp = pythonpath(&repo_python);
        let first: Vec<PathBuf> = std::env::split_paths(&pp).take(2).collect();
        assert_eq!(first, vec![repo_python.join("gpuspan/bootstrap"), repo_python.clone()]);
    }
}

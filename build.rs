//! Build script of the root package: compiles `kernels/*.cu` (the GPU validation workload,
//! docs/gpu-validation.md) to PTX for `sm_90` with NVRTC when NVRTC can be found, and
//! writes `$OUT_DIR/kernels_ptx.rs`, which `src/kernels.rs` includes: one
//! `Option<&str>` per source (`Some(ptx)` or `None`) and the reason when skipped.
//!
//! NVRTC is looked up, in order:
//! 1. `GPUSPAN_NVRTC_LIB` — the path of a `libnvrtc.so*`; set but missing (e.g. `/nonexistent`)
//!    means "skip", which is how the no-NVRTC build is tested;
//! 2. the PyPI wheel `nvidia-cuda-nvrtc-cu12` in `.venv/lib/python3*/site-packages/nvidia/
//!    cuda_nvrtc/lib/` of this repository (scripts/test.sh installs it);
//! 3. the dynamic loader's default search (`LD_LIBRARY_PATH` as cargo was started, ld.so.cache).
//!
//! cudarc's NVRTC loader (`cudarc::nvrtc::sys::culib`) only `dlopen`s bare names
//! (`libnvrtc.so`, …, `libnvrtc.so.12`), and `LD_LIBRARY_PATH` changes made inside a running
//! process are ignored by `dlopen`. So for 1 and 2 the library is first `dlopen`ed here by
//! its full path and kept loaded: glibc then satisfies cudarc's `dlopen("libnvrtc.so.12")`
//! with the already-loaded object of that SONAME. `cudarc::nvrtc::sys::is_culib_present()`
//! confirms cudarc can see it before any cudarc NVRTC call (those panic when it cannot).
//!
//! Without NVRTC (or with NVRTC older than 12.0, which cannot target sm_90) the build
//! goes on with one `cargo:warning=` line and every PTX is `None`; it never fails for lack of
//! CUDA. A kernel that NVRTC rejects does fail the build, with NVRTC's log.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// CUDA sources under `kernels/`, as `gpuspan_kernels::SOURCES` lists them (the ptxas test
/// checks the two agree).
const SOURCES: [&str; 5] = ["spin.cu", "attention.cu", "ffn.cu", "layer_norm.cu", "conv3d.cu"];
/// Virtual architecture of the PTX (H100 = sm_90).
const ARCH: &str = "compute_90";
const ENV_LIB: &str = "GPUSPAN_NVRTC_LIB";

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed={ENV_LIB}");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    watch_venv(&manifest);

    let result = find_nvrtc(&manifest).and_then(|found| {
        let kernels = manifest.join("kernels");
        // cudarc panics on a missing symbol; make that a skip, not a failed build.
        match std::panic::catch_unwind(|| compile_all(&kernels)) {
            Ok(r) => r.map(|ptx| (found, ptx)),
            Err(_) => Err(format!("NVRTC from {found} panicked inside cudarc (missing symbol?)")),
        }
    });
    let module = match result {
        Ok((found, ptx)) => {
            let mut paths = Vec::new();
            for (src, text) in SOURCES.iter().zip(&ptx) {
                let p = out.join(src.replace(".cu", ".ptx"));
                std::fs::write(&p, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
                paths.push(Some(p));
            }
            render_module(&paths, None, Some(&found))
        }
        Err(reason) => {
            println!("cargo:warning=gpuspan: kernels/*.cu not compiled to PTX: {reason}");
            render_module(&vec![None; SOURCES.len()], Some(&reason), None)
        }
    };
    let dest = out.join("kernels_ptx.rs");
    std::fs::write(&dest, module).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}

/// `.venv/lib/python3*/site-packages` of the repository, if present.
fn venv_site_packages(manifest: &Path) -> Vec<PathBuf> {
    let lib = manifest.join(".venv").join("lib");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Reruns when the NVRTC wheel appears or changes. Only existing paths are watched (cargo
/// reruns a build script every time for a missing one); before `.venv` exists, installing
/// the wheel later needs `touch kernels` or a changed `GPUSPAN_NVRTC_LIB`.
fn watch_venv(manifest: &Path) {
    for sp in venv_site_packages(manifest) {
        let nvrtc = sp.join("nvidia").join("cuda_nvrtc").join("lib");
        let nvidia = sp.join("nvidia");
        if nvrtc.is_dir() {
            println!("cargo:rerun-if-changed={}", nvrtc.display());
        } else if nvidia.is_dir() {
            println!("cargo:rerun-if-changed={}", nvidia.display());
        }
    }
}

/// Loads `path` and keeps it loaded for the rest of the build script.
fn preload(path: &Path) -> Result<(), String> {
    // SAFETY: libnvrtc's initializers have no preconditions; the handle is leaked so the
    // library stays mapped while cudarc resolves symbols from it by SONAME.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(format!("cannot load {}: {e}", path.display())),
    }
}

/// Finds and loads NVRTC; returns where it came from (for the generated docs).
fn find_nvrtc(manifest: &Path) -> Result<String, String> {
    let origin = if let Some(v) = std::env::var_os(ENV_LIB) {
        let p = PathBuf::from(&v);
        if v.is_empty() || !p.is_file() {
            return Err(format!("{ENV_LIB}={} is not a file", p.display()));
        }
        println!("cargo:rerun-if-changed={}", p.display());
        preload(&p)?;
        p.display().to_string()
    } else if let Some(p) = venv_site_packages(manifest).into_iter().find_map(|sp| {
        let dir = sp.join("nvidia").join("cuda_nvrtc").join("lib");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc.so")))
            .collect();
        libs.sort();
        libs.into_iter().next()
    }) {
        preload(&p)?;
        p.display().to_string()
    } else {
        "the default library search path".to_string()
    };
    // SAFETY: only dlopen()s cudarc's candidate names and closes them again.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(format!(
            "no libnvrtc.so.12 in {origin} (install the PyPI wheel nvidia-cuda-nvrtc-cu12 into .venv, or set {ENV_LIB})"
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers; the library is present (checked above).
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed ({rc:?}) for NVRTC from {origin}"));
    }
    if major < 12 {
        return Err(format!("NVRTC {major}.{minor} from {origin} cannot target sm_90 (need 12.0 or newer)"));
    }
    Ok(format!("NVRTC {major}.{minor} ({origin})"))
}

/// Compiles every source; `Err` only for reasons that are not our kernels' fault.
fn compile_all(kernels: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for src in SOURCES {
        let path = kernels.join(src);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(ARCH),
            include_paths: vec![kernels.display().to_string()],
            options: vec!["--std=c++17".into()],
            name: Some(src.to_string()),
            ..Default::default()
        };
        match cudarc::nvrtc::compile_ptx_with_opts(&text, opts) {
            Ok(ptx) => out.push(ptx.to_src()),
            Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
                panic!("NVRTC rejected kernels/{src}:\n{}", log.to_string_lossy())
            }
            Err(e) => return Err(format!("NVRTC failed on kernels/{src}: {e}")),
        }
    }
    Ok(out)
}

fn render_module(paths: &[Option<PathBuf>], skipped: Option<&str>, nvrtc: Option<&str>) -> String {
    let mut m = String::from("// Generated by build.rs; see src/kernels.rs.\n\n");
    for (src, p) in SOURCES.iter().zip(paths) {
        let ident = src.trim_end_matches(".cu").to_uppercase();
        let value = match p {
            Some(p) => format!("Some(include_str!({:?}))", p.display().to_string()),
            None => "None".to_string(),
        };
        let _ = writeln!(m, "/// PTX (sm_90) of `kernels/{src}`, or `None` when NVRTC was not found at build time.");
        let _ = writeln!(m, "pub const {ident}: Option<&str> = {value};");
    }
    let _ = writeln!(m, "/// Why the PTX is missing (`None` when it was built).");
    let _ = writeln!(m, "pub const SKIPPED: Option<&str> = {};", opt_str(skipped));
    let _ = writeln!(m, "/// The NVRTC that compiled the PTX (`NVRTC major.minor (path)`), when it was built.");
    let _ = writeln!(m, "pub const NVRTC: Option<&str> = {};", opt_str(nvrtc));
    let _ = writeln!(m, "/// `(source file, PTX)` for every source, in build order.");
    let list: Vec<String> = SOURCES
        .iter()
        .map(|s| format!("({s:?}, {})", s.trim_end_matches(".cu").to_uppercase()))
        .collect();
    let _ = writeln!(m, "pub const ALL: [(&str, Option<&str>); {}] = [{}];", SOURCES.len(), list.join(", "));
    m
}

fn opt_str(s: Option<&str>) -> String {
    match s {
        Some(s) => format!("Some({s:?})"),
        None => "None".into(),
    }
}

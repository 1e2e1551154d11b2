//! Shared helpers: where the artifacts and fixtures are, running commands.

use gpuspan_core::stats::Stats;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/<profile>/`, where cargo put every workspace artifact.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") { deps.parent().unwrap() } else { deps };
    dir.to_path_buf()
}

/// An artifact in the target dir; panics with a clear message when it was not built.
pub fn artifact(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(p.exists(), "{} missing: run `cargo build --workspace` first (scripts/test.sh does)", p.display());
    p
}

/// The `gpuspan` CLI. Metrics go to an ephemeral port (tests run in parallel) and no OTLP
/// endpoint is inherited from the environment.
pub fn gpuspan() -> Command {
    let mut c = Command::new(artifact("gpuspan"));
    c.env("GPUSPAN_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    c
}

/// Every trace of `../shared/fixtures/traces/` (recorded on real GPUs).
pub const FIXTURE_TRACES: [&str; 5] = [
    "a100-hta-control.json.gz",
    "h100-bert-small.json.gz",
    "h100-qwen-prefill.json.gz",
    "h100-vit-falconsai.json.gz",
    "v100-resnet50-oldschema.json.gz",
];

/// `../shared/fixtures/traces/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/traces").join(name)
}


/// Runs and returns the output, with stdout/stderr in the panic message on a spawn error.
pub fn output(c: &mut Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

/// `gpuspan stats --json FILE`, parsed.
pub fn stats_json(file: &Path) -> Stats {
    let o = output(gpuspan().arg("stats").arg("--json").arg(file));
    assert!(o.status.success(), "stats {} failed: {}", file.display(), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("stats --json parses")
}

/// The real CUPTI 12.9 library directory from the PyPI wheel in the test venv, if installed.
pub fn real_cupti_lib_dir() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let lib = venv.join("lib");
    for e in std::fs::read_dir(&lib).ok()?.flatten() {
        let d = e.path().join("site-packages/nvidia/cuda_cupti/lib");
        if d.join("libcupti.so.12").exists() {
            return Some(d);
        }
    }
    None
}

/// The per-process captures (`capture-<pid>.json.gz`) in `dir`, sorted by name.
pub fn captures_in(dir: &Path) -> Vec<PathBuf> {
    gpuspan_export::process_captures(dir)
}

/// `libnvtx3interop.so.1` of the test venv's `nvidia-nvtx-cu12` wheel (NVIDIA's NVTX
/// library); `None` (with a message) outside CI when it is not installed, a failure under CI.
pub fn real_nvtx_lib() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let found = std::fs::read_dir(venv.join("lib")).ok().into_iter().flatten().flatten().find_map(|e| {
        let p = e.path().join("site-packages/nvidia/nvtx/lib/libnvtx3interop.so.1");
        p.exists().then_some(p)
    });
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have the nvidia-nvtx-cu12 wheel (scripts/test.sh)");
        eprintln!("skipping: libnvtx3interop.so.1 not found (run scripts/test.sh)");
    }
    found
}

/// The real interpreter behind `python3` (`sys.executable`), so that an injected process
/// tree is the worker itself and not a version manager's shim.
pub fn python_exe() -> PathBuf {
    let o = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).env_remove("LD_PRELOAD").output();
    PathBuf::from(String::from_utf8_lossy(&o.expect("python3").stdout).trim())
}

/// The one capture in `dir`; panics naming the directory and what it holds otherwise.
pub fn capture_in(dir: &Path) -> PathBuf {
    let mut v = captures_in(dir);
    assert_eq!(v.len(), 1, "one capture-<pid>.json.gz expected in {}: {v:?}", dir.display());
    v.remove(0)
}

/// The window directories `window-<pid>-<n>` in `dir` for window number `n`.
pub fn window_dirs(dir: &Path, n: u32) -> Vec<PathBuf> {
    let suffix = format!("-{n}");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|name| name.starts_with("window-") && name.ends_with(&suffix) && name.matches('-').count() == 2)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The capture of window `n` in `dir` (`window-<pid>-<n>/capture-<pid>.json.gz`).
pub fn window_capture(dir: &Path, n: u32) -> PathBuf {
    let w = window_dirs(dir, n);
    assert_eq!(w.len(), 1, "one window-<pid>-{n} in {}: {w:?}", dir.display());
    capture_in(&w[0])
}

/// Compiles the C program `source` into `exe` with gcc (C11 with GNU extensions, warnings as
/// errors, `-pthread -ldl`) plus `extra` arguments; panics with gcc's output if it fails.
pub fn compile_c(source: &Path, exe: &Path, extra: &[&str]) {
    let o = output(
        Command::new("gcc")
            .args(["-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread"])
            .arg(source)
            .arg("-o")
            .arg(exe)
            .args(extra)
            .arg("-ldl"),
    );
    assert!(o.status.success(), "gcc {} failed:\n{}", source.display(), String::from_utf8_lossy(&o.stderr));
}

/// Sets `c` up to run with `libgpuspan.so` preloaded in `mode`, writing into `out`, on the
/// simulated H100 installed in `sim`: the injection variables a parent test process may
/// carry and `GPUSPAN_EXIT_BUDGET` (so the agent's default applies) are removed.
pub fn preload_agent<'c>(c: &'c mut Command, sim: &Path, mode: &str, out: &Path) -> &'c mut Command {
    c.env("LD_PRELOAD", artifact("libgpuspan.so"))
        .env("LD_LIBRARY_PATH", sim)
        .env("GPUSPAN_MODE", mode)
        .env("GPUSPAN_OUT", out)
        .env_remove("NVTX_INJECTION64_PATH")
        .env_remove("CUDA_INJECTION64_PATH")
        .env_remove("GPUSPAN_EXIT_BUDGET")
}

/// An external tool (`/usr/bin/NAME`, or the path in the environment variable `env`), for
/// the tests that run Debian's `prometheus` package (`prometheus`, `promtool`). Missing:
/// `None` with a note outside CI (the test skips), a failure under CI (`CI` set).
pub fn tool(name: &str, env: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin").join(name));
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} not found: scripts/test.sh installs Debian's `prometheus` package",
        p.display()
    );
    eprintln!("note: {} not found; install Debian's `prometheus` to run this test", p.display());
    None
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.0 GET: the status code and body, or `None` when nothing answers.
pub fn http_get_status(addr: &str, path: &str, accept: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A plain HTTP/1.0 GET; the body of a 200 answer, or `None`.
pub fn http_get(addr: &str, path: &str, accept: &str) -> Option<String> {
    http_get_status(addr, path, accept).and_then(|(code, body)| (code == 200).then_some(body))
}

/// A child process killed (and reaped) when this goes out of scope.
pub struct Kill(pub std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes everything but `[A-Za-z0-9_.-]` (a URL query value).
pub fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The worker's `sim cupti: …` line as (key → value), its counters (not `version=`).
pub fn sim_cupti(o: &Output) -> std::collections::BTreeMap<String, u64> {
    sim_cupti_text(&String::from_utf8_lossy(&o.stdout))
}

/// [`sim_cupti`] of the worker's output `stdout`.
pub fn sim_cupti_text(stdout: &str) -> std::collections::BTreeMap<String, u64> {
    let line = stdout.lines().find(|l| l.starts_with("sim cupti:")).unwrap_or_else(|| panic!("no sim cupti line in {stdout}"));
    line["sim cupti:".len()..]
        .split_whitespace()
        .filter(|kv| !kv.starts_with("version="))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// `N` of the replay worker's `replayed N kernels` line in `text` (its stdout).
pub fn replayed_kernels(text: &str) -> u64 {
    text.split("replayed ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no `replayed N kernels` line: {text}"))
}

/// The `gpuspan.summary` event's arg `key` (a count) in capture `t`.
pub fn summary_u64(t: &gpuspan_core::trace::Trace, key: &str) -> u64 {
    let s = t.events.iter().find(|e| e.name == "gpuspan.summary").expect("gpuspan.summary event");
    s.extra_args.get(key).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("summary has no {key}: {:?}", s.extra_args))
}

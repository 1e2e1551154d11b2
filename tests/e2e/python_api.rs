//! The scope API from outside Rust: the `python/gpuspan` package (ctypes) in
//! `python/examples/sim_worker.py`, and `include/gpuspan.h` from a C program, each on the
//! simulated H100 under `gpuspan run --sim`: the capture proves every kernel landed in the
//! request / step / stage scopes its thread opened.

use crate::util::*;
use gpuspan_export::read_trace;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TP0: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP1: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn trace_id(tp: &str) -> &str {
    tp.split('-').nth(1).unwrap()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Skips (returns None) when `tool` is missing outside CI; CI must have it.
fn required_tool(found: Option<PathBuf>, tool: &str) -> Option<PathBuf> {
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have {tool}");
        eprintln!("skipping: {tool} not found");
    }
    found
}

/// The real Python interpreter behind `python3` (`sys.executable`). Version managers'
/// `python3` shims are shell scripts that fork; running the interpreter directly keeps the
/// injected process tree to the worker itself.
fn python() -> Option<PathBuf> {
    let o = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).env_remove("LD_PRELOAD").output();
    let found = o.ok().filter(|o| o.status.success()).map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    required_tool(found, "python3")
}

fn run_sim(out: &Path, program: &Path, args: &[&str]) -> Output {
    let o = output(gpuspan().args(["run", "--mode", "fine", "--sim", "--out"]).arg(out).arg("--").arg(program).args(args));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{} failed:\n{}\n{stderr}", program.display(), String::from_utf8_lossy(&o.stdout));
    assert!(!stderr.contains("panicked"), "{stderr}");
    o
}

/// `launched <n> kernels` from a worker's stdout.
fn launched(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("launched ")?.strip_suffix(" kernels")?.parse().ok())
        .unwrap_or_else(|| panic!("no `launched N kernels` line: {stdout}"))
}

const STAGES: [&str; 6] = ["attention.spatial", "attention.temporal", "attention.cross", "ffn", "norm", "vae.decode"];

#[test]
fn python_worker_requests_carry_their_traceparents() {
    let Some(py) = python() else { return };
    let out = tempfile::tempdir().unwrap();
    let worker = repo().join("python/examples/sim_worker.py");
    let o = run_sim(
        out.path(),
        &py,
        &[worker.to_str().unwrap(), "--steps", "3", "--requests", "2", "--traceparent", TP0, "--traceparent", TP1],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("not loaded"), "gpuspan.py found the preloaded agent: {stderr}");

    // `request <r> trace_id=<id> kernels=<k>`, one line per request.
    let mut per_request: BTreeMap<String, usize> = BTreeMap::new();
    for l in stdout.lines().filter(|l| l.starts_with("request ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let id = f[2].strip_prefix("trace_id=").unwrap().to_string();
        let k: usize = f[3].strip_prefix("kernels=").unwrap().parse().unwrap();
        assert_eq!(id.len(), 32, "{l}");
        per_request.insert(id, k);
    }
    let want: BTreeSet<String> = [trace_id(TP0), trace_id(TP1)].map(String::from).into();
    assert_eq!(per_request.keys().cloned().collect::<BTreeSet<_>>(), want, "{stdout}");

    let t = read_trace(&capture_in(out.path())).expect("capture written");
    let n = launched(&stdout);
    assert_eq!(t.kernels().count(), n, "every launched kernel captured");
    assert_eq!(per_request.values().sum::<usize>(), n);

    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut steps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut spatial = 0;
    for k in t.kernels() {
        let id = k.trace_id.as_deref().unwrap_or_else(|| panic!("kernel without trace id: {k:?}"));
        *count.entry(id).or_default() += 1;
        let scope = k.scope.as_deref().expect("every kernel is inside a stage scope");
        assert!(STAGES.contains(&scope), "stage scope, got {scope}");
        assert_eq!(k.stage.as_deref(), Some(scope), "the stage scope decides the stage: {k:?}");
        spatial += usize::from(scope == "attention.spatial");
        match k.step.as_deref() {
            Some(s) => {
                steps.entry(id).or_default().insert(s);
            }
            None => assert_eq!(scope, "vae.decode", "only the VAE decode runs outside the steps"),
        }
    }
    assert!(spatial > 0, "kernels under attention.spatial");
    for (id, k) in &per_request {
        assert_eq!(count.get(id.as_str()), Some(k), "kernels of trace {id}");
        let s: Vec<&str> = steps[id.as_str()].iter().copied().collect();
        assert_eq!(s, ["dit.step 0/3", "dit.step 1/3", "dit.step 2/3"], "3 steps in trace {id}");
    }
}

/// Requests with a malformed or no traceparent still get their GPU data, each in a new
/// trace, and the agent says so in one warning line, not one per request.
#[test]
fn bad_traceparents_start_new_traces_with_one_warning() {
    let Some(py) = python() else { return };
    let out = tempfile::tempdir().unwrap();
    let worker = repo().join("python/examples/sim_worker.py");
    let o = run_sim(
        out.path(),
        &py,
        &[worker.to_str().unwrap(), "--steps", "1", "--requests", "4", "--traceparent", "00-not-a-traceparent-01"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("malformed traceparent")).collect();
    assert_eq!(warnings.len(), 1, "one rate-limited warning: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let t = read_trace(&capture_in(out.path())).expect("capture written");
    assert_eq!(t.kernels().count(), launched(&stdout), "no GPU data lost");
    let ids: BTreeSet<&str> = t.kernels().map(|k| k.trace_id.as_deref().expect("a new trace id")).collect();
    assert_eq!(ids.len(), 4, "a new trace per request: {ids:?}");
    assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
}

/// `GPUSPAN_LIB` names the library when it is not preloaded: loading it starts the agent.
/// Without it and without a preload, gpuspan.py warns once and the worker runs unchanged.
#[test]
fn python_finds_the_library_by_path_or_runs_without_it() {
    let Some(py) = python() else { return };
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let worker = repo().join("python/examples/sim_worker.py");
    let base = || {
        let mut c = Command::new(&py);
        c.arg(&worker)
            .args(["--steps", "2", "--requests", "1", "--traceparent", TP0])
            .env_remove("LD_PRELOAD")
            .env_remove("NVTX_INJECTION64_PATH")
            .env_remove("GPUSPAN_LIB")
            .env("LD_LIBRARY_PATH", sim.path());
        c
    };

    let out = tempfile::tempdir().unwrap();
    let o = output(base().env("GPUSPAN_LIB", artifact("libgpuspan.so")).env("GPUSPAN_OUT", out.path()).env("GPUSPAN_MODE", "fine"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let t = read_trace(&capture_in(out.path())).expect("capture written");
    assert_eq!(t.kernels().count(), launched(&stdout));
    assert!(t.kernels().all(|k| k.trace_id.as_deref() == Some(trace_id(TP0))), "all kernels in the request");

    let o = output(&mut base());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches("gpuspan: libgpuspan.so is not loaded").count(), 1, "one warning: {stderr}");
    assert!(launched(&String::from_utf8_lossy(&o.stdout)) > 0);
}

/// The test venv's Python when it has the OpenTelemetry SDK and the OTLP HTTP exporter
/// (`scripts/test.sh` installs them; under CI their absence is a failure).
fn otel_python() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv"));
    let py = venv.join("bin/python");
    let probe = "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter";
    let ok = Command::new(&py).args(["-c", probe]).env_remove("LD_PRELOAD").output().is_ok_and(|o| o.status.success());
    assert!(ok || std::env::var_os("CI").is_none(), "{} lacks opentelemetry-sdk: run scripts/test.sh", py.display());
    ok.then_some(py)
}

/// With the OpenTelemetry SDK: the worker's own `worker.request` span (a child of
/// `--traceparent` when given, else a new root) and gpuspan's GPU spans arrive at one OTLP
/// receiver (official schema, HTTP/protobuf) in one trace, `gpu.request` directly under the
/// worker's span, and the capture's kernels carry that trace id.
#[test]
fn python_worker_with_opentelemetry_takes_the_current_span() {
    let Some(py) = otel_python() else {
        eprintln!("skipping: the test venv has no opentelemetry-sdk / OTLP HTTP exporter");
        return;
    };
    let rx = gpuspan_testkit::OtlpReceiver::start(gpuspan_testkit::Transport::HttpProtobuf, "127.0.0.1:0");
    let worker = repo().join("python/examples/sim_worker.py");
    for traceparent in [Some(TP0), None] {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![worker.to_str().unwrap(), "--steps", "2", "--requests", "2"];
        args.extend(traceparent.map(|tp| ["--traceparent", tp]).into_iter().flatten());
        let o = output(
            gpuspan()
                .args(["run", "--mode", "fine", "--sim", "--out"])
                .arg(out.path())
                .arg("--")
                .arg(&py)
                .args(&args)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let ids: Vec<String> = stdout
            .lines()
            .filter_map(|l| Some(l.strip_prefix("request ")?.split_whitespace().nth(1)?.strip_prefix("trace_id=")?.to_string()))
            .collect();
        assert_eq!(ids.len(), 2, "{stdout}");
        match traceparent {
            Some(tp) => assert!(ids.iter().all(|id| id == trace_id(tp)), "children of the traceparent: {ids:?}"),
            None => assert!(ids[0] != ids[1] && ids.iter().all(|id| id.len() == 32), "new roots: {ids:?}"),
        }
        let t = read_trace(&capture_in(out.path())).expect("capture written");
        assert_eq!(t.kernels().count(), launched(&stdout));
        let captured: BTreeSet<&str> = t.kernels().map(|k| k.trace_id.as_deref().expect("trace id")).collect();
        let printed: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(captured, printed);

        // Both exporters reached the receiver: per request, the worker's span and the GPU
        // tree under it, in one trace.
        let spans = rx.spans();
        let workers: Vec<_> = spans.iter().filter(|s| s.name == "worker.request").collect();
        let gpu_requests: Vec<_> = spans.iter().filter(|s| s.name == "gpu.request").collect();
        let mut kernels_seen = 0;
        let distinct: BTreeSet<&String> = ids.iter().collect();
        for id in distinct {
            let per_trace = ids.iter().filter(|x| *x == id).count();
            let w: Vec<_> = workers.iter().filter(|s| &s.trace_id == id).collect();
            assert_eq!(w.len(), per_trace, "the worker's own spans for trace {id}");
            let g: Vec<_> = gpu_requests.iter().filter(|s| &s.trace_id == id).collect();
            assert_eq!(g.len(), per_trace, "gpuspan's gpu.request spans for trace {id}");
            for wspan in &w {
                let children: Vec<_> = g.iter().filter(|s| s.parent_span_id == wspan.span_id).collect();
                assert_eq!(children.len(), 1, "one gpu.request under each worker.request");
                assert_ne!(wspan.scope_name, children[0].scope_name, "two different producers");
                let steps = spans.iter().filter(|s| s.name == "dit.step" && s.parent_span_id == children[0].span_id).count();
                assert_eq!(steps, 2);
            }
            kernels_seen += spans.iter().filter(|s| &s.trace_id == id && s.name == "cuda.kernel").count();
        }
        assert_eq!(kernels_seen, launched(&stdout), "one kernel span per launch");
    }
}

/// A C worker using `include/gpuspan.h` (linked with `-lgpuspan`) and the driver API through
/// `dlopen("libcuda.so.1")` (no `cuda.h` here: the prototypes are declared by hand).
const C_WORKER: &str = r#"
#include "gpuspan.h"
#include "sim_driver.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static cuModuleGetFunction_t pGetFunction;
static cuStreamCreate_t pStreamCreate;
static cuLaunchKernel_t pLaunch;
static cuCtxSynchronize_t pSync;
static void *module;
static int launched; /* updated under `lock` */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(call) do { int rc_ = (call); if (rc_ != 0) { fprintf(stderr, "%s: %d\n", #call, rc_); exit(1); } } while (0)

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) { fprintf(stderr, "missing %s\n", name); exit(1); }
    return p;
}

static void cuda_init(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); exit(1); }
    int dev;
    void *ctx;
    CHECK(((cuInit_t)sym(h, "cuInit"))(0));
    CHECK(((cuDeviceGet_t)sym(h, "cuDeviceGet"))(&dev, 0));
    CHECK(((cuDevicePrimaryCtxRetain_t)sym(h, "cuDevicePrimaryCtxRetain"))(&ctx, dev));
    CHECK(((cuCtxSetCurrent_t)sym(h, "cuCtxSetCurrent"))(ctx));
    CHECK(((cuModuleLoadData_t)sym(h, "cuModuleLoadData"))(&module, "sim image"));
    pGetFunction = (cuModuleGetFunction_t)sym(h, "cuModuleGetFunction");
    pStreamCreate = (cuStreamCreate_t)sym(h, "cuStreamCreate");
    pLaunch = (cuLaunchKernel_t)sym(h, "cuLaunchKernel");
    pSync = (cuCtxSynchronize_t)sym(h, "cuCtxSynchronize");
}

static void launch(void *stream, const char *name, unsigned long long ns) {
    void *f;
    CHECK(pGetFunction(&f, module, name));
    void *params[1] = { &ns };
    CHECK(pLaunch(f, 132, 1, 1, 128, 1, 1, 0, stream, params, NULL));
    pthread_mutex_lock(&lock);
    launched++;
    pthread_mutex_unlock(&lock);
}

/* One request, levels printed as `levels a b c ...` (begin and end return values in order). */
static int sequential(const char *tp) {
    cuda_init();
    void *stream;
    CHECK(pStreamCreate(&stream, 0));
    printf("active %d version %s\n", gpuspan_is_active(), gpuspan_version());
    int lv[64], n = 0;
    lv[n++] = gpuspan_request_begin(tp, "model=cworker tenant=gold");
    for (unsigned i = 0; i < 2; i++) {
        lv[n++] = gpuspan_step_begin(i, 2);
        lv[n++] = gpuspan_stage_begin("attention.spatial");
        launch(stream, "flash_fwd_kernel", 300000);
        launch(stream, "flash_fwd_kernel", 300000);
        lv[n++] = gpuspan_end();
        lv[n++] = gpuspan_stage_begin("ffn");
        launch(stream, "sm90_xmma_gemm_bf16bf16_bf16f32", 200000);
        lv[n++] = gpuspan_end();
        lv[n++] = gpuspan_end();
    }
    lv[n++] = gpuspan_stage_begin("vae.decode");
    launch(stream, "conv3d_fprop_implicit_gemm", 1000000);
    lv[n++] = gpuspan_end();
    lv[n++] = gpuspan_end();
    lv[n++] = gpuspan_end(); /* nothing left open */
    /* A request without traceparent or attributes: the agent starts a new trace. */
    lv[n++] = gpuspan_request_begin(NULL, NULL);
    lv[n++] = gpuspan_stage_begin("norm");
    launch(stream, "layer_norm_kernel", 10000);
    lv[n++] = gpuspan_end();
    lv[n++] = gpuspan_end();
    CHECK(pSync());
    printf("levels");
    for (int i = 0; i < n; i++) printf(" %d", lv[i]);
    printf("\nlaunched %d kernels\n", launched);
    return 0;
}

/* Two threads, each its own request, interleaving their launches step by step. */
static pthread_barrier_t barrier;
struct job { int index; const char *tp; };

static void *thread_main(void *arg) {
    struct job *j = arg;
    void *stream;
    CHECK(pStreamCreate(&stream, 0));
    char attrs[64], kernel[64];
    snprintf(attrs, sizeof attrs, "thread=%d", j->index);
    snprintf(kernel, sizeof kernel, "flash_fwd_kernel_thread%d", j->index);
    if (gpuspan_request_begin(j->tp, attrs) != 0) { fprintf(stderr, "request level\n"); exit(1); }
    pthread_barrier_wait(&barrier);
    for (unsigned s = 0; s < 3; s++) {
        gpuspan_step_begin(s, 3);
        gpuspan_stage_begin("attention.temporal");
        for (int k = 0; k < 4; k++) {
            launch(stream, kernel, 100000);
            pthread_barrier_wait(&barrier); /* the other thread launches in between */
        }
        gpuspan_end();
        gpuspan_end();
    }
    pthread_barrier_wait(&barrier);
    gpuspan_end();
    return NULL;
}

static int threads(const char *tp0, const char *tp1) {
    cuda_init();
    pthread_t t[2];
    struct job jobs[2] = { { 0, tp0 }, { 1, tp1 } };
    pthread_barrier_init(&barrier, NULL, 2);
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, thread_main, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK(pSync());
    printf("launched %d kernels\n", launched);
    return 0;
}

/* No agent collecting: every call returns -2. */
static int inactive(void) {
    printf("%d %d %d %d %d %d %d %s\n", gpuspan_is_active(), gpuspan_request_begin("00-x", "a=b"),
           gpuspan_step_begin(0, 1), gpuspan_stage_begin("ffn"), gpuspan_stage_begin(NULL),
           gpuspan_end(), gpuspan_end(), gpuspan_version());
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "seq")) return sequential(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "threads")) return threads(argv[2], argv[3]);
    if (argc == 2 && !strcmp(argv[1], "inactive")) return inactive();
    fprintf(stderr, "usage: worker seq TP | threads TP0 TP1 | inactive\n");
    return 2;
}
"#;

/// Compiles [`C_WORKER`] into `dir` against `include/gpuspan.h` and the built `libgpuspan.so`.
fn c_worker(dir: &Path) -> Option<PathBuf> {
    required_tool(
        Command::new("gcc").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from("gcc")),
        "gcc",
    )?;
    let src = dir.join("worker.c");
    let exe = dir.join("worker");
    std::fs::write(&src, C_WORKER).unwrap();
    let lib_dir = artifact("libgpuspan.so").parent().unwrap().to_path_buf();
    let include = repo().join("include");
    let workers = repo().join("tests/e2e/workers");
    compile_c(
        &src,
        &exe,
        &[
            "-I",
            include.to_str().unwrap(),
            "-I",
            workers.to_str().unwrap(),
            "-L",
            lib_dir.to_str().unwrap(),
            &format!("-Wl,-rpath,{}", lib_dir.display()),
            "-lgpuspan",
        ],
    );
    Some(exe)
}

#[test]
fn c_program_through_the_c_abi() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = c_worker(dir.path()) else { return };
    let out = tempfile::tempdir().unwrap();
    let o = run_sim(out.path(), &exe, &["seq", TP0]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("active 1 version {}", env!("CARGO_PKG_VERSION"))), "{stdout}");
    // request 0, per step: step 1, stage 2, end 2, stage 2, end 2, end 1; vae 1 / end 1; end
    // 0; one end too many (-2); the second request 0, stage 1, end 1, end 0.
    let levels: Vec<i32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("levels "))
        .expect("levels line")
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    let step = [1, 2, 2, 2, 2, 1];
    let want: Vec<i32> = [0].into_iter().chain(step).chain(step).chain([1, 1, 0, -2, 0, 1, 1, 0]).collect();
    assert_eq!(levels, want);

    let t = read_trace(&capture_in(out.path())).expect("capture written");
    assert_eq!(t.kernels().count(), launched(&stdout));
    // (trace id, step, scope) → kernels.
    type Key<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
    for k in t.kernels() {
        assert_eq!(k.stage, k.scope, "the stage scope decides the stage: {k:?}");
        *seen.entry((k.trace_id.as_deref(), k.step.as_deref(), k.scope.as_deref())).or_default() += 1;
    }
    let id = Some(trace_id(TP0));
    for s in ["dit.step 0/2", "dit.step 1/2"] {
        assert_eq!(seen.get(&(id, Some(s), Some("attention.spatial"))), Some(&2), "{seen:?}");
        assert_eq!(seen.get(&(id, Some(s), Some("ffn"))), Some(&1), "{seen:?}");
    }
    assert_eq!(seen.get(&(id, None, Some("vae.decode"))), Some(&1), "{seen:?}");
    // The second request has no traceparent: its kernel is in its own scope, not in TP0's trace.
    let norm: Vec<_> = t.kernels().filter(|k| k.scope.as_deref() == Some("norm")).collect();
    assert_eq!(norm.len(), 1);
    assert_ne!(norm[0].trace_id.as_deref(), id);
    assert_eq!(norm[0].step, None);
}

#[test]
fn concurrent_requests_on_two_threads_keep_their_trace_ids() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = c_worker(dir.path()) else { return };
    let out = tempfile::tempdir().unwrap();
    let o = run_sim(out.path(), &exe, &["threads", TP0, TP1]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let t = read_trace(&capture_in(out.path())).expect("capture written");
    assert_eq!(t.kernels().count(), launched(&stdout));
    let mut per_thread: BTreeMap<&str, usize> = BTreeMap::new();
    for k in t.kernels() {
        let (want, thread) = if k.name.ends_with("_thread0") {
            (trace_id(TP0), "thread0")
        } else if k.name.ends_with("_thread1") {
            (trace_id(TP1), "thread1")
        } else {
            panic!("unexpected kernel {}", k.name)
        };
        assert_eq!(k.trace_id.as_deref(), Some(want), "{k:?}");
        assert_eq!(k.scope.as_deref(), Some("attention.temporal"), "{k:?}");
        assert!(k.step.as_deref().is_some_and(|s| s.starts_with("dit.step ") && s.ends_with("/3")), "{k:?}");
        *per_thread.entry(thread).or_default() += 1;
    }
    assert_eq!(per_thread.get("thread0"), Some(&12));
    assert_eq!(per_thread.get("thread1"), Some(&12));
    // The launches really interleaved: in launch order the kernels alternate between threads.
    let mut ks: Vec<_> = t.kernels().collect();
    ks.sort_by_key(|k| k.correlation);
    let switches = ks.windows(2).filter(|w| w[0].name != w[1].name).count();
    assert!(switches >= 12, "launches interleave ({switches} switches)");
}

/// Linked, in fine mode, with no CUPTI to be found: the agent is inactive and every call is
/// a no-op. (Coarse mode in such a process activates and CPU-times its scopes,
/// `gpuspan.timing=cpu`: `auto_python` runs PyTorch on the CPU that way.)
#[test]
fn c_calls_are_no_ops_when_the_agent_is_inactive() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = c_worker(dir.path()) else { return };
    let empty = tempfile::tempdir().unwrap();
    let o = output(
        Command::new(&exe)
            .arg("inactive")
            .env("GPUSPAN_MODE", "fine")
            .env_remove("LD_PRELOAD")
            .env_remove("NVTX_INJECTION64_PATH")
            .env_remove("CUDA_INJECTION64_PATH")
            .env("LD_LIBRARY_PATH", empty.path()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.trim(), format!("0 -2 -2 -2 -2 -2 -2 {}", env!("CARGO_PKG_VERSION")));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("inactive"), "the agent says once why: {stderr}");
}

/// Coarse mode (the default) with a Python worker on a non-blocking stream: named with
/// `gpuspan.use_streams`, its scopes are timed on it (`gpuspan.timing=cuda_event`, steps as
/// long as their kernels); unnamed, they fall back to the legacy default stream, which
/// never sees that stream's work, and the spans say so.
#[test]
fn python_worker_names_its_stream_for_coarse_timing() {
    let Some(py) = python() else { return };
    let rx = gpuspan_testkit::OtlpReceiver::start(gpuspan_testkit::Transport::Grpc, "127.0.0.1:0");
    let worker = repo().join("python/examples/sim_worker.py");
    for (name, tp) in [(true, TP0), (false, TP1)] {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![worker.to_str().unwrap(), "--steps", "2", "--nonblocking", "--traceparent", tp];
        if name {
            args.push("--name-stream");
        }
        let o = output(
            gpuspan()
                .args(["run", "--sim", "--out"])
                .arg(out.path())
                .arg("--")
                .arg(&py)
                .args(&args)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                .env("OTEL_SDK_DISABLED", "true"),
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(stdout.contains("use_streams kept 1"), name, "{stdout}");
        let id = trace_id(tp);
        assert!(rx.wait_for(std::time::Duration::from_secs(10), |s| s.iter().any(|s| s.trace_id == id && s.name == "gpu.request")));
        let spans: Vec<_> = rx.spans().into_iter().filter(|s| s.trace_id == id).collect();
        let steps: Vec<_> = spans.iter().filter(|s| s.name == "dit.step").collect();
        assert_eq!(steps.len(), 2);
        let want = if name { "cuda_event" } else { "legacy_stream" };
        for s in &spans {
            assert_eq!(s.str("gpuspan.timing"), Some(want), "{} of the {} run", s.name, if name { "named" } else { "unnamed" });
        }
        assert!(captures_in(out.path()).is_empty(), "coarse mode writes no capture");
    }
}

/// `TRACEPARENT` in the worker's environment (OpenTelemetry's environment-variable context
/// carrier, how a launcher hands every rank of a job one trace) parents the requests that
/// name no traceparent themselves; a request that names one keeps it. The C worker's second
/// request begins with `NULL`.
#[test]
fn traceparent_in_the_environment_parents_the_requests_that_name_none() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = c_worker(dir.path()) else { return };
    let rx = gpuspan_testkit::OtlpReceiver::start(gpuspan_testkit::Transport::HttpProtobuf, "127.0.0.1:0");
    let out = tempfile::tempdir().unwrap();
    let o = output(
        gpuspan()
            .args(["run", "--mode", "fine", "--sim", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(&exe)
            .args(["seq", TP0])
            .env("TRACEPARENT", TP1)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (tp0, tp1) = (trace_id(TP0), trace_id(TP1));
    assert!(
        rx.wait_for(std::time::Duration::from_secs(10), |s| s.iter().filter(|s| s.name == "gpu.request").count() >= 2),
        "two gpu.request spans"
    );
    let spans = rx.spans();
    let requests: Vec<_> = spans.iter().filter(|s| s.name == "gpu.request").collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let named = requests.iter().find(|s| s.trace_id == tp0).expect("the request that names TP0 keeps it");
    assert_eq!(named.parent_span_id, TP0.split('-').nth(2).unwrap());
    let unnamed = requests.iter().find(|s| s.trace_id == tp1).expect("the request that names none is in TRACEPARENT's trace");
    assert_eq!(unnamed.parent_span_id, TP1.split('-').nth(2).unwrap(), "under TRACEPARENT's span");
    // Its kernel carries that trace id in the capture too.
    let t = read_trace(&capture_in(out.path())).expect("capture written");
    let norm: Vec<_> = t.kernels().filter(|k| k.scope.as_deref() == Some("norm")).collect();
    assert_eq!(norm.len(), 1);
    assert_eq!(norm[0].trace_id.as_deref(), Some(tp1));
}

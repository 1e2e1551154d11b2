//! `dit_worker`: a real-GPU DiT video worker for validating gpuspan (docs/gpu-validation.md).
//!
//! Runs the mini DiT of `gpuspan_kernels::dit` (our own kernels from `kernels/*.cu`, PTX
//! embedded at build time by `build.rs`) through the CUDA driver API, announcing requests,
//! steps and stages as NVTX ranges exactly as DESIGN.md names them
//! (`gpuspan.request <traceparent> model=mini-dit`, `dit.step <i>/<n>`, `norm`,
//! `attention.spatial`, `attention.temporal`, `attention.cross`, `ffn`, `vae.decode`), and
//! measures its own ground truth with CUDA events: one `cuEventRecord` pair around every
//! stage on the stage's stream, around every step and around every request. Nothing of
//! gpuspan is linked in: run it bare for the baseline, under `LD_PRELOAD=libgpuspan.so` to
//! measure the agent.
//!
//! ```text
//! dit_worker [--steps N] [--blocks B] [--requests R] [--frames F] [--nonblocking]
//!            [--traceparent TP] [--truth OUT.json]
//! dit_worker --check                       # every kernel against its CPU reference
//! dit_worker --replay TRACE.json[.gz] [--requests R] [--truth OUT.json]
//! ```
//!
//! - Default mode: R requests (default 2; the first one doubles as warm-up in the
//!   validation report) of N denoising steps (10) × B transformer blocks (4), then the VAE
//!   decode on a second stream that waits for the first. Streams are created blocking
//!   (flags 0) so that NVTX scopes timed on the legacy stream (coarse mode) cover them;
//!   `--nonblocking` creates `CU_STREAM_NON_BLOCKING` streams instead (PyTorch's pool
//!   streams), to see the coarse-mode caveat of DESIGN.md.
//! - `--check`: runs each kernel once on small random inputs (odd sizes, partial tiles),
//!   compares with `gpuspan_kernels`' CPU reference under that kernel's tolerance, and
//!   times `spin_ns`; prints one line per kernel; exit 1 on any failure.
//! - `--replay`: a Kineto trace turned into `spin_ns` kernels of the recorded durations on
//!   the recorded streams, with the trace's CPU ranges as NVTX ranges (the same conversion
//!   as `gpuspan-replay`: `gpuspan_simgpu::workload::from_trace`, pure data; the simulated
//!   GPU is not involved). All kernels are named `spin_ns` on the GPU, so only scopes decide
//!   their stage.
//!
//! NVTX goes through the NVTX v3 loader logic (`gpuspan_simgpu::nvtx_loader`: reads
//! `NVTX_INJECTION64_PATH` at the first call, as the header-only NVTX v3 compiled into a real
//! worker does) rather than cudarc's `nvtx` module, which needs `libnvToolsExt.so`, a
//! library CUDA 12 no longer ships. With no injection set, ranges are no-ops.
//!
//! `--truth OUT.json` writes the ground truth (times in ms, from CUDA events):
//! `{"worker", "mode", "device", "streams", "config", "kernels_launched", "stages":
//! [{"stage", "count", "total_ms", "kernels_launched"}], "requests": [{"index",
//! "traceparent", "request_ms", "vae_decode_ms", "kernels_launched", "step_ms": [...]}]}`;
//! in replay mode a stage's `total_ms` is the sum of the requested spin durations.
//!
//! `--scrape HOST:PORT --scrape-out FILE` (for runs under the agent with
//! `GPUSPAN_METRICS_ADDR=HOST:PORT`): before exiting, waits until the agent's `/metrics`
//! has observed every step and VAE decode of the run (≤ 10 s) and saves the exposition, so
//! the report can compare the metrics too (coarse mode writes no capture file).
//!
//! Exit codes: 0 done; 1 a CUDA call failed or `--check` found a mismatch; 2 no CUDA device
//! (no driver library, `cuInit` failed, or zero devices); 3 the PTX was not built (NVRTC
//! missing at build time); 4 bad arguments or unreadable trace.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CString};
use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::ptr::null_mut;

use cudarc::driver::sys as cu;
use gpuspan_core::scope::ScopeKind;
use gpuspan_kernels::attention::{self, AttnShape, HEAD_DIM};
use gpuspan_kernels::conv3d::{self, Conv3dShape};
use gpuspan_kernels::dit::DitConfig;
use gpuspan_kernels::ffn::{self, Epilogue};
use gpuspan_kernels::layer_norm;
use gpuspan_kernels::rng::Rng;
use gpuspan_kernels::{bf16, compare, spin, Tolerance, KERNELS};
use gpuspan_simgpu::nvtx_loader::{nvtx_range_pop, nvtx_range_push};
use gpuspan_simgpu::workload::{MemcpyKind, Op};

/// The PTX constants `build.rs` generated (same file `gpuspan::kernels` includes; included
/// here directly so the worker does not link the agent library).
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));
}

/// `CU_STREAM_NON_BLOCKING` (cuda.h `CUstream_flags`).
const CU_STREAM_NON_BLOCKING: u32 = 0x1;
/// Largest memcpy / memset replayed, bytes (larger ones are clamped).
const MAX_REPLAY_COPY_BYTES: u64 = 64 << 20;
/// Model name on the request range.
const MODEL: &str = "mini-dit";

// ---------------------------------------------------------------------------------------
// Errors and arguments

/// A failed driver call.
#[derive(Debug)]
struct CuError {
    call: &'static str,
    code: cu::CUresult,
}

impl fmt::Display for CuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed with CUresult {} ({:?})", self.call, self.code as u32, self.code)
    }
}

fn ck(code: cu::CUresult, call: &'static str) -> Result<(), CuError> {
    if code == cu::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError { call, code })
    }
}

#[derive(Debug)]
struct Args {
    cfg: DitConfig,
    requests: usize,
    nonblocking: bool,
    traceparent: Option<String>,
    truth: Option<String>,
    check: bool,
    replay: Option<String>,
    scrape: Option<String>,
    scrape_out: Option<String>,
}

fn usage() -> &'static str {
    "usage: dit_worker [--steps N] [--blocks B] [--requests R] [--frames F] [--nonblocking] \
     [--traceparent TP] [--truth OUT.json] [--scrape HOST:PORT --scrape-out FILE] | --check | \
     --replay TRACE.json[.gz] [--requests R] [--truth OUT.json]"
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        cfg: DitConfig::default(),
        requests: 2,
        nonblocking: false,
        traceparent: None,
        truth: None,
        check: false,
        replay: None,
        scrape: None,
        scrape_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let mut count = |name: &str| -> Result<usize, String> {
            let v = value(name)?;
            v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{name} {v:?}: not a positive integer"))
        };
        match flag.as_str() {
            "--steps" => a.cfg.steps = count("--steps")?,
            "--blocks" => a.cfg.blocks = count("--blocks")?,
            "--requests" => a.requests = count("--requests")?,
            "--frames" => a.cfg.frames = count("--frames")?,
            "--nonblocking" => a.nonblocking = true,
            "--check" => a.check = true,
            "--traceparent" => a.traceparent = Some(value("--traceparent")?),
            "--truth" => a.truth = Some(value("--truth")?),
            "--replay" => a.replay = Some(value("--replay")?),
            "--scrape" => a.scrape = Some(value("--scrape")?),
            "--scrape-out" => a.scrape_out = Some(value("--scrape-out")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.check && a.replay.is_some() {
        return Err("--check and --replay are separate runs".into());
    }
    if a.scrape.is_some() != a.scrape_out.is_some() {
        return Err("--scrape and --scrape-out go together".into());
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------
// The GPU

/// One kernel argument, kept alive while `cuLaunchKernel` reads it.
enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    U64(u64),
}

impl Arg {
    fn as_param(&mut self) -> *mut c_void {
        match self {
            Arg::Ptr(v) | Arg::U64(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
        }
    }
}

/// Launch geometry.
#[derive(Clone, Copy)]
struct Dims {
    grid: [u32; 3],
    block: [u32; 3],
}

/// The current context, its modules' kernels, and per-stage launch counters.
struct Gpu {
    device_name: String,
    funcs: HashMap<&'static str, cu::CUfunction>,
    allocations: Vec<u64>,
    events: Vec<cu::CUevent>,
    next_event: usize,
    /// Kernels launched per stage label (`norm`, `vae.decode`, `other` …).
    launched: BTreeMap<String, u64>,
    /// Stage label charged for the next launches.
    current_stage: String,
}

enum InitError {
    NoDevice(String),
    Cuda(CuError),
}

impl From<CuError> for InitError {
    fn from(e: CuError) -> Self {
        InitError::Cuda(e)
    }
}

impl Gpu {
    /// Opens device 0: probes the driver library first (cudarc panics on a missing one).
    fn open() -> Result<Gpu, InitError> {
        // SAFETY: only dlopen()s cudarc's candidate names of the driver library.
        if !unsafe { cu::is_culib_present() } {
            return Err(InitError::NoDevice("no NVIDIA driver library (libcuda.so) found".into()));
        }
        // SAFETY: cuInit has no preconditions.
        let rc = unsafe { cu::cuInit(0) };
        if rc != cu::CUresult::CUDA_SUCCESS {
            return Err(InitError::NoDevice(format!("cuInit failed with CUresult {} ({rc:?})", rc as u32)));
        }
        let mut n = 0;
        // SAFETY: valid out-pointer.
        ck(unsafe { cu::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
        if n == 0 {
            return Err(InitError::NoDevice("the driver reports 0 devices".into()));
        }
        let mut dev = 0;
        // SAFETY: valid out-pointer; ordinal 0 exists (n > 0).
        ck(unsafe { cu::cuDeviceGet(&mut dev, 0) }, "cuDeviceGet")?;
        let mut name = [0 as std::ffi::c_char; 256];
        // SAFETY: the buffer holds 256 bytes, as passed.
        ck(unsafe { cu::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev) }, "cuDeviceGetName")?;
        // SAFETY: the driver NUL-terminates within the buffer.
        let device_name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        let mut ctx = null_mut();
        // SAFETY: valid out-pointer and device.
        ck(unsafe { cu::cuDevicePrimaryCtxRetain(&mut ctx, dev) }, "cuDevicePrimaryCtxRetain")?;
        // SAFETY: ctx was just retained.
        ck(unsafe { cu::cuCtxSetCurrent(ctx) }, "cuCtxSetCurrent")?;
        Ok(Gpu {
            device_name,
            funcs: HashMap::new(),
            allocations: Vec::new(),
            events: Vec::new(),
            next_event: 0,
            launched: BTreeMap::new(),
            current_stage: "other".into(),
        })
    }

    /// Loads every PTX module and looks up every kernel of `gpuspan_kernels::KERNELS`.
    fn load_kernels(&mut self) -> Result<(), String> {
        for (src, text) in ptx::ALL {
            let text = text.ok_or_else(|| format!("no PTX for kernels/{src}"))?;
            let module = load_module(src, text)?;
            for k in KERNELS.iter().filter(|k| k.source == src) {
                let name = CString::new(k.name).expect("kernel names have no NUL");
                let mut f = null_mut();
                // SAFETY: module is loaded; name is NUL-terminated; f is a valid out-pointer.
                ck(unsafe { cu::cuModuleGetFunction(&mut f, module, name.as_ptr()) }, "cuModuleGetFunction")
                    .map_err(|e| format!("{}: {e}", k.name))?;
                self.funcs.insert(k.name, f);
            }
        }
        Ok(())
    }

    fn stream(&mut self, nonblocking: bool) -> Result<cu::CUstream, CuError> {
        let mut s = null_mut();
        let flags = if nonblocking { CU_STREAM_NON_BLOCKING } else { 0 };
        // SAFETY: valid out-pointer; a context is current.
        ck(unsafe { cu::cuStreamCreate(&mut s, flags) }, "cuStreamCreate")?;
        Ok(s)
    }

    fn alloc(&mut self, bytes: usize) -> Result<u64, CuError> {
        let mut p = 0;
        // SAFETY: valid out-pointer; a context is current.
        ck(unsafe { cu::cuMemAlloc_v2(&mut p, bytes.max(1)) }, "cuMemAlloc")?;
        self.allocations.push(p);
        Ok(p)
    }

    fn upload<T: Copy>(&mut self, data: &[T]) -> Result<u64, CuError> {
        let bytes = std::mem::size_of_val(data);
        let p = self.alloc(bytes)?;
        // SAFETY: p has `bytes` bytes; data is a live host slice of that size.
        ck(unsafe { cu::cuMemcpyHtoD_v2(p, data.as_ptr() as *const c_void, bytes) }, "cuMemcpyHtoD")?;
        Ok(p)
    }

    fn download<T: Copy + Default>(&self, p: u64, n: usize) -> Result<Vec<T>, CuError> {
        let mut v = vec![T::default(); n];
        // SAFETY: v holds n elements; p was allocated with at least that many bytes.
        ck(
            unsafe { cu::cuMemcpyDtoH_v2(v.as_mut_ptr() as *mut c_void, p, std::mem::size_of_val(v.as_slice())) },
            "cuMemcpyDtoH",
        )?;
        Ok(v)
    }

    fn launch(&mut self, name: &'static str, d: Dims, stream: cu::CUstream, args: &mut [Arg]) -> Result<(), CuError> {
        let f = *self.funcs.get(name).expect("kernel looked up at load");
        let mut params: Vec<*mut c_void> = args.iter_mut().map(Arg::as_param).collect();
        // SAFETY: f is a loaded kernel whose parameter list matches `args` (kernels/*.cu
        // signatures); params point into `args`, alive for the call; stream is ours.
        ck(
            unsafe {
                cu::cuLaunchKernel(
                    f,
                    d.grid[0],
                    d.grid[1],
                    d.grid[2],
                    d.block[0],
                    d.block[1],
                    d.block[2],
                    0,
                    stream,
                    params.as_mut_ptr(),
                    null_mut(),
                )
            },
            "cuLaunchKernel",
        )?;
        *self.launched.entry(self.current_stage.clone()).or_default() += 1;
        Ok(())
    }

    /// An event from the pool (created on first use; reused after [`Gpu::reset_events`]).
    fn event(&mut self) -> Result<cu::CUevent, CuError> {
        if self.next_event == self.events.len() {
            let mut e = null_mut();
            // SAFETY: valid out-pointer; flags 0 = timing enabled.
            ck(unsafe { cu::cuEventCreate(&mut e, 0) }, "cuEventCreate")?;
            self.events.push(e);
        }
        self.next_event += 1;
        Ok(self.events[self.next_event - 1])
    }

    fn record(&mut self, stream: cu::CUstream) -> Result<cu::CUevent, CuError> {
        let e = self.event()?;
        // SAFETY: e is a live event, stream a live stream of the current context.
        ck(unsafe { cu::cuEventRecord(e, stream) }, "cuEventRecord")?;
        Ok(e)
    }

    fn reset_events(&mut self) {
        self.next_event = 0;
    }

    fn sync(&self) -> Result<(), CuError> {
        // SAFETY: a context is current.
        ck(unsafe { cu::cuCtxSynchronize() }, "cuCtxSynchronize")
    }

    fn wait(&self, stream: cu::CUstream, event: cu::CUevent) -> Result<(), CuError> {
        // SAFETY: live stream and recorded event.
        ck(unsafe { cu::cuStreamWaitEvent(stream, event, 0) }, "cuStreamWaitEvent")
    }
}

/// Elapsed ms between two completed events.
fn elapsed_ms(a: cu::CUevent, b: cu::CUevent) -> Result<f64, CuError> {
    let mut ms = 0.0f32;
    // SAFETY: both events were recorded and the context synchronized.
    ck(unsafe { cu::cuEventElapsedTime(&mut ms, a, b) }, "cuEventElapsedTime")?;
    Ok(ms as f64)
}

/// `cuModuleLoadData`, retrying with PTX ISA 7.8 when the driver is older than the NVRTC
/// that wrote the PTX (CUDA_ERROR_UNSUPPORTED_PTX_VERSION): the kernels use nothing newer
/// than ISA 7.8 (CUDA 11.8, the first with sm_90).
fn load_module(src: &str, text: &str) -> Result<cu::CUmodule, String> {
    let try_load = |t: &str| -> Result<cu::CUmodule, CuError> {
        let c = CString::new(t).expect("PTX has no NUL");
        let mut m = null_mut();
        // SAFETY: c is a NUL-terminated PTX image alive for the call; m a valid out-pointer.
        ck(unsafe { cu::cuModuleLoadData(&mut m, c.as_ptr() as *const c_void) }, "cuModuleLoadData")?;
        Ok(m)
    };
    match try_load(text) {
        Ok(m) => Ok(m),
        Err(e) if e.code == cu::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
            let older: String = text
                .lines()
                .map(|l| if l.starts_with(".version ") { ".version 7.8" } else { l })
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("dit_worker: the driver is older than the PTX of kernels/{src}; retrying as PTX ISA 7.8");
            try_load(&older).map_err(|e| format!("kernels/{src}: {e}"))
        }
        Err(e) => Err(format!("kernels/{src}: {e}")),
    }
}

fn grid_for(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block) as u32
}

// ---------------------------------------------------------------------------------------
// Kernel launchers (shapes and geometry as gpuspan_kernels documents them)

struct AttnBufs {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
}

fn flash_attention(g: &mut Gpu, s: cu::CUstream, shape: AttnShape, b: &AttnBufs) -> Result<(), CuError> {
    g.launch(
        "flash_attn_fwd_d64",
        Dims {
            grid: [grid_for(shape.q_len, attention::FLASH_BLOCK_M), shape.batch_heads as u32, 1],
            block: [attention::FLASH_BLOCK_M as u32, 1, 1],
        },
        s,
        &mut [
            Arg::Ptr(b.q),
            Arg::Ptr(b.k),
            Arg::Ptr(b.v),
            Arg::Ptr(b.o),
            Arg::I32(shape.q_len as i32),
            Arg::I32(shape.kv_len as i32),
            Arg::F32(attention::default_scale()),
        ],
    )
}

fn qk_scores(g: &mut Gpu, s: cu::CUstream, shape: AttnShape, q: u64, k: u64, scores: u64) -> Result<(), CuError> {
    let t = attention::QK_TILE;
    g.launch(
        "sdpa_qk_scores_d64",
        Dims {
            grid: [grid_for(shape.kv_len, t), grid_for(shape.q_len, t), shape.batch_heads as u32],
            block: [t as u32, t as u32, 1],
        },
        s,
        &mut [
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(scores),
            Arg::I32(shape.q_len as i32),
            Arg::I32(shape.kv_len as i32),
            Arg::F32(attention::default_scale()),
        ],
    )
}

fn softmax_rows(g: &mut Gpu, s: cu::CUstream, rows: usize, cols: usize, scores: u64) -> Result<(), CuError> {
    g.launch(
        "softmax_rows_f32",
        Dims { grid: [rows as u32, 1, 1], block: [attention::SOFTMAX_THREADS as u32, 1, 1] },
        s,
        &mut [Arg::Ptr(scores), Arg::I32(cols as i32)],
    )
}

fn pv(g: &mut Gpu, s: cu::CUstream, shape: AttnShape, p: u64, v: u64, o: u64) -> Result<(), CuError> {
    g.launch(
        "sdpa_pv_d64",
        Dims {
            grid: [grid_for(shape.q_len, attention::PV_ROWS), shape.batch_heads as u32, 1],
            block: [HEAD_DIM as u32, attention::PV_ROWS as u32, 1],
        },
        s,
        &mut [Arg::Ptr(p), Arg::Ptr(v), Arg::Ptr(o), Arg::I32(shape.q_len as i32), Arg::I32(shape.kv_len as i32)],
    )
}

#[allow(clippy::too_many_arguments)]
fn gemm(g: &mut Gpu, s: cu::CUstream, epi: Epilogue, a: u64, b: u64, bias: u64, c: u64, m: usize, n: usize, k: usize) -> Result<(), CuError> {
    let name = match epi {
        Epilogue::Bias => "gemm_bf16_bias",
        Epilogue::BiasGelu => "gemm_bf16_bias_gelu",
    };
    g.launch(
        name,
        Dims {
            grid: [grid_for(n, ffn::GEMM_TILE_N), grid_for(m, ffn::GEMM_TILE_M), 1],
            block: [ffn::GEMM_THREADS as u32, 1, 1],
        },
        s,
        &mut [Arg::Ptr(a), Arg::Ptr(b), Arg::Ptr(bias), Arg::Ptr(c), Arg::I32(m as i32), Arg::I32(n as i32), Arg::I32(k as i32)],
    )
}

#[allow(clippy::too_many_arguments)]
fn layer_norm(g: &mut Gpu, s: cu::CUstream, x: u64, gamma: u64, beta: u64, y: u64, rows: usize, cols: usize) -> Result<(), CuError> {
    g.launch(
        "layer_norm_bf16",
        Dims { grid: [rows as u32, 1, 1], block: [layer_norm::LAYER_NORM_THREADS as u32, 1, 1] },
        s,
        &mut [Arg::Ptr(x), Arg::Ptr(gamma), Arg::Ptr(beta), Arg::Ptr(y), Arg::I32(cols as i32), Arg::F32(layer_norm::LAYER_NORM_EPS)],
    )
}

fn conv(g: &mut Gpu, s: cu::CUstream, c: Conv3dShape, x: u64, w: u64, bias: u64, y: u64) -> Result<(), CuError> {
    g.launch(
        "vae_conv3d_k3_bf16",
        Dims {
            grid: [grid_for(c.height * c.width, conv3d::CONV3D_THREADS), c.depth as u32, c.cout as u32],
            block: [conv3d::CONV3D_THREADS as u32, 1, 1],
        },
        s,
        &mut [
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(bias),
            Arg::Ptr(y),
            Arg::I32(c.cin as i32),
            Arg::I32(c.depth as i32),
            Arg::I32(c.height as i32),
            Arg::I32(c.width as i32),
        ],
    )
}

fn spin_kernel(g: &mut Gpu, s: cu::CUstream, dur_ns: u64) -> Result<(), CuError> {
    g.launch("spin_ns", Dims { grid: [1, 1, 1], block: [1, 1, 1] }, s, &mut [Arg::U64(dur_ns)])
}

// ---------------------------------------------------------------------------------------
// --check

struct CheckLine {
    kernel: &'static str,
    detail: String,
    passed: bool,
}

fn check_values(kernel: &'static str, got: &[f32], want: &[f32], tol: Tolerance) -> CheckLine {
    let c = compare(got, want, tol);
    CheckLine {
        kernel,
        detail: format!(
            "{} values, max |err| {:.3e}, {} outside abs {:.0e} + rel {:.0e}{}",
            c.len,
            c.max_abs_err,
            c.mismatches,
            tol.abs,
            tol.rel,
            c.first_bad_index.map(|i| format!(" (first at {i}: gpu {} ref {})", got.get(i).copied().unwrap_or(f32::NAN), want.get(i).copied().unwrap_or(f32::NAN))).unwrap_or_default()
        ),
        passed: c.passed(),
    }
}

fn run_check(g: &mut Gpu) -> Result<Vec<CheckLine>, CuError> {
    let s = g.stream(false)?;
    let mut r = Rng::new(0x5eed);
    let mut lines = Vec::new();
    let down_bf16 = |g: &Gpu, p: u64, n: usize| -> Result<Vec<f32>, CuError> { Ok(bf16::to_f32_slice(&g.download::<u16>(p, n)?)) };

    // Fused attention: partial query block and a partial key tile.
    let a = AttnShape { batch_heads: 3, q_len: 100, kv_len: 150 };
    let (q, k, v) = (r.bf16_vec(a.q_elems(), -2.0, 2.0), r.bf16_vec(a.kv_elems(), -2.0, 2.0), r.bf16_vec(a.kv_elems(), -1.0, 1.0));
    let bufs = AttnBufs { q: g.upload(&q)?, k: g.upload(&k)?, v: g.upload(&v)?, o: g.alloc(a.q_elems() * 2)? };
    flash_attention(g, s, a, &bufs)?;
    g.sync()?;
    let want = attention::flash_attention_ref(a, &q, &k, &v, attention::default_scale());
    lines.push(check_values("flash_attn_fwd_d64", &down_bf16(g, bufs.o, a.q_elems())?, &want, attention::ATTENTION_TOLERANCE));

    // Unfused attention, each kernel on its own (GPU) input.
    let c = AttnShape::cross(2, 40, 37, 2);
    let (q, k, v) = (r.bf16_vec(c.q_elems(), -2.0, 2.0), r.bf16_vec(c.kv_elems(), -2.0, 2.0), r.bf16_vec(c.kv_elems(), -1.0, 1.0));
    let (dq, dk, dv) = (g.upload(&q)?, g.upload(&k)?, g.upload(&v)?);
    let ds = g.alloc(c.score_elems() * 4)?;
    let dout = g.alloc(c.q_elems() * 2)?;
    qk_scores(g, s, c, dq, dk, ds)?;
    g.sync()?;
    let scores: Vec<f32> = g.download(ds, c.score_elems())?;
    let want = attention::qk_scores_ref(c, &q, &k, attention::default_scale());
    lines.push(check_values("sdpa_qk_scores_d64", &scores, &want, attention::SCORES_TOLERANCE));
    softmax_rows(g, s, c.batch_heads * c.q_len, c.kv_len, ds)?;
    g.sync()?;
    let probs: Vec<f32> = g.download(ds, c.score_elems())?;
    let mut want = scores.clone();
    attention::softmax_rows_ref(&mut want, c.kv_len);
    lines.push(check_values("softmax_rows_f32", &probs, &want, attention::SCORES_TOLERANCE));
    pv(g, s, c, ds, dv, dout)?;
    g.sync()?;
    let want = attention::pv_ref(c, &probs, &v);
    lines.push(check_values("sdpa_pv_d64", &down_bf16(g, dout, c.q_elems())?, &want, attention::ATTENTION_TOLERANCE));

    // GEMMs: sizes not multiples of the 64 × 64 × 16 tiling.
    let (m, n, kk) = (100, 70, 90);
    let (ha, hb, hbias) = (r.bf16_vec(m * kk, -1.0, 1.0), r.bf16_vec(kk * n, -1.0, 1.0), r.bf16_vec(n, -0.5, 0.5));
    let (da, db, dbias, dc) = (g.upload(&ha)?, g.upload(&hb)?, g.upload(&hbias)?, g.alloc(m * n * 2)?);
    for (epi, name) in [(Epilogue::Bias, "gemm_bf16_bias"), (Epilogue::BiasGelu, "gemm_bf16_bias_gelu")] {
        gemm(g, s, epi, da, db, dbias, dc, m, n, kk)?;
        g.sync()?;
        let want = ffn::gemm_ref(&ha, &hb, &hbias, m, n, kk, epi);
        lines.push(check_values(name, &down_bf16(g, dc, m * n)?, &want, ffn::GEMM_TOLERANCE));
    }

    // Layer norm: rows of different offsets; cols not a multiple of the block.
    let (rows, cols) = (5, 1000);
    let x: Vec<u16> = (0..rows * cols).map(|i| bf16::from_f32((i / cols) as f32 * 2.0 - 3.0 + r.uniform_f32(-1.5, 1.5))).collect();
    let (gm, bt) = (r.bf16_vec(cols, 0.5, 1.5), r.bf16_vec(cols, -0.5, 0.5));
    let (dx, dg, db2, dy) = (g.upload(&x)?, g.upload(&gm)?, g.upload(&bt)?, g.alloc(rows * cols * 2)?);
    layer_norm(g, s, dx, dg, db2, dy, rows, cols)?;
    g.sync()?;
    let want = layer_norm::layer_norm_ref(&x, &gm, &bt, rows, cols, layer_norm::LAYER_NORM_EPS);
    lines.push(check_values("layer_norm_bf16", &down_bf16(g, dy, rows * cols)?, &want, layer_norm::LAYER_NORM_TOLERANCE));

    // conv3d: borders on every axis.
    let cs = Conv3dShape { cin: 5, cout: 6, depth: 3, height: 7, width: 9 };
    let (hx, hw, hb3) = (r.bf16_vec(cs.x_elems(), -1.0, 1.0), r.bf16_vec(cs.w_elems(), -0.5, 0.5), r.bf16_vec(cs.cout, -0.1, 0.1));
    let (dx3, dw3, db3, dy3) = (g.upload(&hx)?, g.upload(&hw)?, g.upload(&hb3)?, g.alloc(cs.y_elems() * 2)?);
    conv(g, s, cs, dx3, dw3, db3, dy3)?;
    g.sync()?;
    let want = conv3d::conv3d_ref(cs, &hx, &hw, &hb3);
    lines.push(check_values("vae_conv3d_k3_bf16", &down_bf16(g, dy3, cs.y_elems())?, &want, conv3d::CONV3D_TOLERANCE));

    // spin_ns: CUDA-event time of one kernel per request (events add ~µs, inside the window).
    let mut spin_ok = true;
    let mut detail = Vec::new();
    for req_ns in [20_000u64, 100_000, 1_000_000] {
        let a = g.record(s)?;
        spin_kernel(g, s, req_ns)?;
        let b = g.record(s)?;
        g.sync()?;
        let got_ns = (elapsed_ms(a, b)? * 1e6).round() as u64;
        spin_ok &= spin::spin_duration_ok(req_ns, got_ns);
        detail.push(format!("{req_ns} ns → {got_ns} ns"));
    }
    g.reset_events();
    lines.push(CheckLine {
        kernel: "spin_ns",
        detail: format!("{} (window −{} ns, +{} ns + {}%)", detail.join(", "), spin::SPIN_EARLY_NS, spin::SPIN_LATE_NS, spin::SPIN_LATE_FRACTION * 100.0),
        passed: spin_ok,
    });
    Ok(lines)
}

// ---------------------------------------------------------------------------------------
// The mini DiT

/// Device buffers of the mini DiT (weights shared by all blocks: a timing workload).
struct Model {
    x: u64,
    xn: u64,
    qkv: u64,
    attn_out: u64,
    proj: u64,
    ffn_h: u64,
    text_k: u64,
    text_v: u64,
    scores: u64,
    w_qkv: u64,
    b_qkv: u64,
    w_o: u64,
    b_o: u64,
    w_q: u64,
    b_q: u64,
    w1: u64,
    b1: u64,
    w2: u64,
    b2: u64,
    gamma: u64,
    beta: u64,
    vae_in: u64,
    vae_a: u64,
    vae_b: u64,
    vae_w: Vec<(u64, u64)>,
}

fn build_model(g: &mut Gpu, c: &DitConfig) -> Result<Model, CuError> {
    let mut r = Rng::new(2024);
    let (t, h) = (c.tokens(), c.hidden());
    let f = c.ffn().ffn_hidden;
    // Weights ~ U(±1/sqrt(fan_in)) keep activations O(1).
    let w = |r: &mut Rng, fan_in: usize, n: usize| {
        let a = 1.0 / (fan_in as f32).sqrt();
        r.bf16_vec(n, -a, a)
    };
    let cross = c.cross();
    let vae = c.vae_convs();
    let vae_max = vae.iter().map(|v| v.cout.max(v.cin)).max().unwrap_or(1) * c.frames * c.latent_size * c.latent_size;
    let mut vae_w = Vec::new();
    for v in &vae {
        let ww = w(&mut r, v.cin * 27, v.w_elems());
        let bb = r.bf16_vec(v.cout, -0.1, 0.1);
        vae_w.push((g.upload(&ww)?, g.upload(&bb)?));
    }
    Ok(Model {
        x: g.upload(&r.bf16_vec(t * h, -1.0, 1.0))?,
        xn: g.alloc(t * h * 2)?,
        qkv: g.alloc(t * 3 * h * 2)?,
        attn_out: g.alloc(t * h * 2)?,
        proj: g.alloc(t * h * 2)?,
        ffn_h: g.alloc(t * f * 2)?,
        text_k: g.upload(&r.bf16_vec(cross.kv_elems(), -1.0, 1.0))?,
        text_v: g.upload(&r.bf16_vec(cross.kv_elems(), -1.0, 1.0))?,
        scores: g.alloc(cross.score_elems() * 4)?,
        w_qkv: g.upload(&w(&mut r, h, h * 3 * h))?,
        b_qkv: g.upload(&r.bf16_vec(3 * h, -0.1, 0.1))?,
        w_o: g.upload(&w(&mut r, h, h * h))?,
        b_o: g.upload(&r.bf16_vec(h, -0.1, 0.1))?,
        w_q: g.upload(&w(&mut r, h, h * h))?,
        b_q: g.upload(&r.bf16_vec(h, -0.1, 0.1))?,
        w1: g.upload(&w(&mut r, h, h * f))?,
        b1: g.upload(&r.bf16_vec(f, -0.1, 0.1))?,
        w2: g.upload(&w(&mut r, f, f * h))?,
        b2: g.upload(&r.bf16_vec(h, -0.1, 0.1))?,
        gamma: g.upload(&r.bf16_vec(h, 0.9, 1.1))?,
        beta: g.upload(&r.bf16_vec(h, -0.1, 0.1))?,
        vae_in: g.upload(&r.bf16_vec(c.latent_channels * c.frames * c.latent_size * c.latent_size, -1.0, 1.0))?,
        vae_a: g.alloc(vae_max * 2)?,
        vae_b: g.alloc(vae_max * 2)?,
        vae_w,
    })
}

/// A stage instance whose events are read after the request.
struct Timed {
    stage: &'static str,
    begin: cu::CUevent,
    end: cu::CUevent,
}

/// Runs `body` as stage `name`: NVTX range, CUDA-event pair on `s`, launches charged to it.
fn stage(
    g: &mut Gpu,
    s: cu::CUstream,
    name: &'static str,
    timed: &mut Vec<Timed>,
    body: impl FnOnce(&mut Gpu) -> Result<(), CuError>,
) -> Result<(), CuError> {
    nvtx_range_push(name);
    g.current_stage = name.to_string();
    let begin = g.record(s)?;
    let r = body(g);
    let end = g.record(s);
    g.current_stage = "other".into();
    nvtx_range_pop();
    r?;
    timed.push(Timed { stage: name, begin, end: end? });
    Ok(())
}

fn attention_stage(g: &mut Gpu, s: cu::CUstream, m: &Model, c: &DitConfig, shape: AttnShape) -> Result<(), CuError> {
    let (t, h) = (c.tokens(), c.hidden());
    gemm(g, s, Epilogue::Bias, m.xn, m.w_qkv, m.b_qkv, m.qkv, t, 3 * h, h)?;
    // Q, K, V are the three thirds of the projection, read as [bh, len, 64].
    let third = (t * h * 2) as u64;
    let b = AttnBufs { q: m.qkv, k: m.qkv + third, v: m.qkv + 2 * third, o: m.attn_out };
    flash_attention(g, s, shape, &b)?;
    gemm(g, s, Epilogue::Bias, m.attn_out, m.w_o, m.b_o, m.proj, t, h, h)
}

fn cross_stage(g: &mut Gpu, s: cu::CUstream, m: &Model, c: &DitConfig) -> Result<(), CuError> {
    let (t, h) = (c.tokens(), c.hidden());
    let shape = c.cross();
    gemm(g, s, Epilogue::Bias, m.xn, m.w_q, m.b_q, m.qkv, t, h, h)?;
    qk_scores(g, s, shape, m.qkv, m.text_k, m.scores)?;
    softmax_rows(g, s, shape.batch_heads * shape.q_len, shape.kv_len, m.scores)?;
    pv(g, s, shape, m.scores, m.text_v, m.attn_out)?;
    gemm(g, s, Epilogue::Bias, m.attn_out, m.w_o, m.b_o, m.proj, t, h, h)
}

#[derive(Default)]
struct StageTruth {
    count: u64,
    total_ms: f64,
    kernels_launched: u64,
}

struct RequestTruth {
    traceparent: String,
    request_ms: f64,
    vae_decode_ms: f64,
    step_ms: Vec<f64>,
    kernels_launched: u64,
}

/// Names the worker's streams to the gpuspan agent when it is in the process
/// (`gpuspan_use_streams` of `include/gpuspan.h`, looked up with `dlsym(RTLD_DEFAULT)`), so
/// coarse mode times scopes on them rather than on the legacy default stream.
fn name_streams(streams: &[cu::CUstream]) {
    type UseStreams = unsafe extern "C" fn(*const cu::CUstream, usize) -> i32;
    // SAFETY: dlsym with a NUL-terminated name; a non-NULL result is the agent's
    // `gpuspan_use_streams`, whose prototype `UseStreams` transcribes; `streams` is a live
    // slice of `streams.len()` handles.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"gpuspan_use_streams".as_ptr());
        if !f.is_null() {
            let f: UseStreams = std::mem::transmute(f);
            f(streams.as_ptr(), streams.len());
        }
    }
}

fn run_dit(g: &mut Gpu, a: &Args) -> Result<(BTreeMap<String, StageTruth>, Vec<RequestTruth>), CuError> {
    let c = a.cfg;
    let main = g.stream(a.nonblocking)?;
    let vae_stream = g.stream(a.nonblocking)?;
    name_streams(&[main, vae_stream]);
    let m = build_model(g, &c)?;
    g.sync()?;
    let (t, h, f) = (c.tokens(), c.hidden(), c.ffn().ffn_hidden);
    let mut stages: BTreeMap<String, StageTruth> = BTreeMap::new();
    let mut requests = Vec::new();
    for req in 0..a.requests {
        let tp = a.traceparent.clone().unwrap_or_else(|| gpuspan_simgpu::workload::preset::traceparent("dit_worker", req as u32));
        let launched_before: u64 = g.launched.values().sum();
        let launched_by_stage_before = g.launched.clone();
        g.reset_events();
        let mut timed = Vec::new();
        let mut steps = Vec::new();
        nvtx_range_push(&format!("gpuspan.request {tp} model={MODEL}"));
        let req_begin = g.record(main)?;
        for step in 0..c.steps {
            nvtx_range_push(&format!("dit.step {step}/{}", c.steps));
            let sb = g.record(main)?;
            for _ in 0..c.blocks {
                stage(g, main, "norm", &mut timed, |g| layer_norm(g, main, m.x, m.gamma, m.beta, m.xn, t, h))?;
                stage(g, main, "attention.spatial", &mut timed, |g| attention_stage(g, main, &m, &c, c.spatial()))?;
                stage(g, main, "attention.temporal", &mut timed, |g| attention_stage(g, main, &m, &c, c.temporal()))?;
                stage(g, main, "norm", &mut timed, |g| layer_norm(g, main, m.proj, m.gamma, m.beta, m.xn, t, h))?;
                stage(g, main, "attention.cross", &mut timed, |g| cross_stage(g, main, &m, &c))?;
                stage(g, main, "norm", &mut timed, |g| layer_norm(g, main, m.proj, m.gamma, m.beta, m.xn, t, h))?;
                stage(g, main, "ffn", &mut timed, |g| {
                    gemm(g, main, Epilogue::BiasGelu, m.xn, m.w1, m.b1, m.ffn_h, t, f, h)?;
                    gemm(g, main, Epilogue::Bias, m.ffn_h, m.w2, m.b2, m.proj, t, h, f)
                })?;
            }
            let se = g.record(main)?;
            nvtx_range_pop();
            steps.push((sb, se));
        }
        // VAE decode on its own stream, after the denoising loop.
        let ready = g.record(main)?;
        g.wait(vae_stream, ready)?;
        stage(g, vae_stream, "vae.decode", &mut timed, |g| {
            let convs = c.vae_convs();
            let mut src = m.vae_in;
            for (i, (cs, (w, b))) in convs.iter().zip(&m.vae_w).enumerate() {
                let dst = if i % 2 == 0 { m.vae_a } else { m.vae_b };
                conv(g, vae_stream, *cs, src, *w, *b, dst)?;
                src = dst;
            }
            Ok(())
        })?;
        let req_end = g.record(vae_stream)?;
        nvtx_range_pop();
        g.sync()?;

        let vae_ms = timed.iter().filter(|x| x.stage == "vae.decode").map(|x| elapsed_ms(x.begin, x.end)).sum::<Result<f64, _>>()?;
        for x in &timed {
            let st = stages.entry(x.stage.to_string()).or_default();
            st.count += 1;
            st.total_ms += elapsed_ms(x.begin, x.end)?;
        }
        for (name, n) in &g.launched {
            stages.entry(name.clone()).or_default().kernels_launched += n - launched_by_stage_before.get(name).copied().unwrap_or(0);
        }
        requests.push(RequestTruth {
            traceparent: tp,
            request_ms: elapsed_ms(req_begin, req_end)?,
            vae_decode_ms: vae_ms,
            step_ms: steps.iter().map(|(b, e)| elapsed_ms(*b, *e)).collect::<Result<_, _>>()?,
            kernels_launched: g.launched.values().sum::<u64>() - launched_before,
        });
    }
    Ok((stages, requests))
}

// ---------------------------------------------------------------------------------------
// --replay

fn run_replay(g: &mut Gpu, a: &Args, path: &str) -> Result<(BTreeMap<String, StageTruth>, Vec<RequestTruth>), String> {
    let trace = gpuspan_export::read_trace(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    let one = gpuspan_simgpu::workload::from_trace::workload_from_trace(&trace);
    let stem = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().split('.').next().unwrap_or("trace").replace(' ', "_"))
        .unwrap_or_else(|| "trace".into());
    let cuda = |e: CuError| e.to_string();
    let mut streams: HashMap<u32, cu::CUstream> = HashMap::new();
    let scratch = g.alloc(MAX_REPLAY_COPY_BYTES as usize).map_err(cuda)?;
    let scratch2 = g.alloc(MAX_REPLAY_COPY_BYTES as usize).map_err(cuda)?;
    let mut host = vec![0u8; MAX_REPLAY_COPY_BYTES as usize];
    let mut stages: BTreeMap<String, StageTruth> = BTreeMap::new();
    let mut requests = Vec::new();
    let first = g.stream(a.nonblocking).map_err(cuda)?;
    for req in 0..a.requests {
        let tp = a.traceparent.clone().unwrap_or_else(|| gpuspan_simgpu::workload::preset::traceparent(&stem, req as u32));
        let mut stack: Vec<String> = Vec::new();
        let mut launched = 0u64;
        g.reset_events();
        nvtx_range_push(&format!("gpuspan.request {tp} model={stem}"));
        let begin = g.record(first).map_err(cuda)?;
        for op in &one.ops {
            match op {
                Op::RangePush(name) => {
                    nvtx_range_push(name);
                    stack.push(name.clone());
                }
                Op::RangePop => {
                    nvtx_range_pop();
                    stack.pop();
                }
                Op::Launch { dur_ns, stream, .. } => {
                    let s = match streams.get(stream) {
                        Some(s) => *s,
                        None => {
                            let s = if streams.is_empty() { first } else { g.stream(a.nonblocking).map_err(cuda)? };
                            streams.insert(*stream, s);
                            s
                        }
                    };
                    // The stage gpuspan will give it: the innermost stage scope, else the
                    // name class of `spin_ns` ("other").
                    let st = stack
                        .iter()
                        .rev()
                        .find_map(|n| match ScopeKind::parse(n) {
                            ScopeKind::Stage(s) => Some(s),
                            _ => None,
                        })
                        .unwrap_or("other");
                    g.current_stage = st.to_string();
                    spin_kernel(g, s, *dur_ns).map_err(cuda)?;
                    let e = stages.entry(st.to_string()).or_default();
                    e.count += 1;
                    e.kernels_launched += 1;
                    e.total_ms += *dur_ns as f64 / 1e6;
                    launched += 1;
                }
                Op::Memcpy { kind, bytes, stream } => {
                    let s = streams.get(stream).copied().unwrap_or(first);
                    let n = (*bytes).min(MAX_REPLAY_COPY_BYTES) as usize;
                    // SAFETY: scratch buffers and `host` hold MAX_REPLAY_COPY_BYTES ≥ n bytes;
                    // the context is synchronized before `host` is freed.
                    let rc = unsafe {
                        match kind {
                            MemcpyKind::HtoD => cu::cuMemcpyHtoDAsync_v2(scratch, host.as_ptr() as *const c_void, n, s),
                            MemcpyKind::DtoH => cu::cuMemcpyDtoHAsync_v2(host.as_mut_ptr() as *mut c_void, scratch, n, s),
                            MemcpyKind::DtoD => cu::cuMemcpyDtoDAsync_v2(scratch2, scratch, n, s),
                        }
                    };
                    ck(rc, "cuMemcpyAsync").map_err(cuda)?;
                }
                Op::Memset { bytes, stream } => {
                    let s = streams.get(stream).copied().unwrap_or(first);
                    let n = (*bytes).min(MAX_REPLAY_COPY_BYTES) as usize;
                    // SAFETY: scratch holds MAX_REPLAY_COPY_BYTES ≥ n bytes.
                    ck(unsafe { cu::cuMemsetD8Async(scratch, 0, n, s) }, "cuMemsetD8Async").map_err(cuda)?;
                }
                Op::HostGap { ns } => std::thread::sleep(std::time::Duration::from_nanos(*ns)),
                Op::Synchronize => g.sync().map_err(cuda)?,
                // Only the simulated workloads' fault injection and `gpuspan-replay --ranks`
                // (single-GPU traces carry neither).
                Op::AllocProbe { .. } | Op::StreamWait { .. } | Op::Collective { .. } => {}
            }
        }
        // The request ends when every replay stream is done.
        for s in streams.values() {
            let e = g.record(*s).map_err(cuda)?;
            g.wait(first, e).map_err(cuda)?;
        }
        let end = g.record(first).map_err(cuda)?;
        nvtx_range_pop();
        g.sync().map_err(cuda)?;
        g.current_stage = "other".into();
        requests.push(RequestTruth {
            traceparent: tp,
            request_ms: elapsed_ms(begin, end).map_err(cuda)?,
            vae_decode_ms: 0.0,
            step_ms: Vec::new(),
            kernels_launched: launched,
        });
    }
    Ok((stages, requests))
}

// ---------------------------------------------------------------------------------------

fn truth_json(g: &Gpu, a: &Args, mode: &str, stages: &BTreeMap<String, StageTruth>, requests: &[RequestTruth]) -> serde_json::Value {
    use serde_json::json;
    let c = a.cfg;
    json!({
        "worker": "dit_worker",
        "mode": mode,
        "device": g.device_name,
        "streams": if a.nonblocking { "non_blocking" } else { "blocking" },
        "config": if mode == "dit" { json!({
            "steps": c.steps, "blocks": c.blocks, "requests": a.requests, "frames": c.frames,
            "tokens_per_frame": c.tokens_per_frame, "heads": c.heads, "hidden": c.hidden(),
            "text_tokens": c.text_tokens, "ffn_hidden": c.ffn().ffn_hidden,
            "vae_convs": c.vae_convs().len(),
        }) } else { json!({ "replay": a.replay, "requests": a.requests }) },
        "kernels_launched": g.launched.values().sum::<u64>(),
        "stages": stages.iter().map(|(k, v)| json!({
            "stage": k, "count": v.count, "total_ms": v.total_ms, "kernels_launched": v.kernels_launched,
        })).collect::<Vec<_>>(),
        "requests": requests.iter().enumerate().map(|(i, r)| json!({
            "index": i, "traceparent": r.traceparent, "request_ms": r.request_ms,
            "vae_decode_ms": r.vae_decode_ms, "kernels_launched": r.kernels_launched, "step_ms": r.step_ms,
        })).collect::<Vec<_>>(),
    })
}

/// `GET http://addr/metrics` (HTTP/1.0, the whole body).
fn http_get_metrics(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(text))
}

/// Sum of the values of the samples of `metric` whose label set contains `label`.
fn sample_sum(body: &str, metric: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

/// Waits (≤ 10 s) until the agent's Prometheus endpoint has observed every step and VAE
/// decode of this run (its collector works asynchronously), then saves the exposition.
fn scrape_metrics(addr: &str, out: &str, steps: usize, requests: usize) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = Err(format!("nothing scraped from {addr}"));
    while std::time::Instant::now() < deadline {
        match http_get_metrics(addr) {
            Ok(body) => {
                let done = sample_sum(&body, "dit_inference_step_duration_ms_count", "step_type=\"step\"") >= (steps * requests) as f64
                    && sample_sum(&body, "vae_decode_duration_seconds_count", "") >= requests as f64;
                last = Ok(body);
                if done {
                    break;
                }
            }
            Err(e) => last = Err(format!("cannot scrape {addr}: {e}")),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let body = last?;
    std::fs::write(out, body).map_err(|e| format!("cannot write {out}: {e}"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("dit_worker: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(if e.is_empty() { 0 } else { 4 });
        }
    };
    let mut g = match Gpu::open() {
        Ok(g) => g,
        Err(InitError::NoDevice(why)) => {
            eprintln!("dit_worker: no CUDA device: {why}");
            return ExitCode::from(2);
        }
        Err(InitError::Cuda(e)) => {
            eprintln!("dit_worker: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(why) = ptx::SKIPPED {
        eprintln!("dit_worker: the kernels were not compiled at build time ({why}); rebuild with NVRTC (docs/gpu-validation.md)");
        return ExitCode::from(3);
    }
    if let Err(e) = g.load_kernels() {
        eprintln!("dit_worker: {e}");
        return ExitCode::from(1);
    }

    if args.check {
        return match run_check(&mut g) {
            Ok(lines) => {
                println!("dit_worker --check on {} (PTX by {})", g.device_name, ptx::NVRTC.unwrap_or("?"));
                for l in &lines {
                    println!("{:<5} {:<22} {}", if l.passed { "ok" } else { "FAIL" }, l.kernel, l.detail);
                }
                if lines.iter().all(|l| l.passed) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("dit_worker: {e}");
                ExitCode::from(1)
            }
        };
    }

    let (mode, result) = match &args.replay {
        Some(path) => ("replay", run_replay(&mut g, &args, path)),
        None => ("dit", run_dit(&mut g, &args).map_err(|e| e.to_string())),
    };
    let (stages, requests) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dit_worker: {e}");
            return ExitCode::from(if e.contains("CUresult") { 1 } else { 4 });
        }
    };
    let truth = truth_json(&g, &args, mode, &stages, &requests);
    println!(
        "dit_worker: {} on {}: {} requests, {} kernels; request ms: {}",
        mode,
        g.device_name,
        requests.len(),
        truth["kernels_launched"],
        requests.iter().map(|r| format!("{:.3}", r.request_ms)).collect::<Vec<_>>().join(", ")
    );
    if let (Some(addr), Some(out), None) = (&args.scrape, &args.scrape_out, &args.replay) {
        if let Err(e) = scrape_metrics(addr, out, args.cfg.steps, args.requests) {
            eprintln!("dit_worker: {e}");
        }
    }
    if let Some(path) = &args.truth {
        let text = serde_json::to_string_pretty(&truth).expect("JSON of plain values");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("dit_worker: cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

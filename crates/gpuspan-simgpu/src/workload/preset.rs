//! Built-in DiT video workloads: `wan2.1` and `stdit` (DESIGN.md "The simulated H100").
//!
//! Both are built from one real H100 profile, Wan2.1-T2V-1.3B under diffusers (TraceLens
//! `kernel_summary.csv`, `SDPA_fwd.csv`, `GEMM.csv`, `gpu_timeline.csv`; copied to
//! `shared/fixtures/calibration/wan2.1-t2v-1.3b-h100/`, the kernel table embedded here as
//! `wan21_kernel_summary.tsv` with its MIT notice). That profile is 5 denoising steps with
//! classifier-free guidance (10 transformer forward passes × 30 blocks), the umT5 text
//! encoder before them and the 3D-VAE decode after them; 102,280 kernels, GPU busy 97.8 % of
//! an 11.84 s span.
//!
//! Structure of one request (both presets):
//! ```text
//! gpuspan.request 00-<trace id>-<span id>-01 model=<preset>   (deterministic per request)
//!   HtoD latents, text encoder kernels, sync + host gap
//!   dit.step i/n   (i = 0..n)
//!     forward pass(es): per-forward kernels, then per block:
//!       norm │ attention.spatial [attention.temporal] │ norm │ attention.cross │ norm │ ffn
//!       (elementwise / copy kernels inside the nearest stage or directly in the step)
//!     sync + host gap (scheduler / host work: the idle share of the profile)
//!   vae.decode   (cuDNN implicit-GEMM conv kernels and their elementwise neighbours)
//!   DtoH video, sync
//! ```
//!
//! `wan2.1`: 2 forward passes per step (guidance run as two passes, as diffusers does), 30
//! blocks each. Wan2.1's self-attention is one full 3D attention over all 32,256 video tokens
//! (space and time jointly, 12 heads, head dim 128); it is announced as `attention.spatial`.
//! Cross attention attends to 512 text tokens. Every kernel row of the profile is placed:
//! rows of the VAE decode (CONV_fwd category, the elementwise `aten::cat`, nearest upsample,
//! `F.normalize`'s norm / clamp_min / div, SiLU) go to `vae.decode` with their full counts;
//! every other row gets `count / 300` launches per block (30 blocks × 10 passes), the rest
//! `/ 10` per forward pass, the final remainder once per request with the text encoder.
//! Rows whose instances have distinct shapes are split by the shape tables: flash attention
//! = 300 self (mean 17,762.3 µs) + 300 cross (324.7 µs); the 128×128-tile GEMM = 1,800
//! projections (203.7 µs) + 300 FFN up-projections (1,149.8 µs) + 10 output heads (51.4 µs).
//! Durations are deterministic: a fixed 16-value sequence with zero mean spread around
//! each population's mean, bounded by its min / max. The idle share is modelled as a
//! synchronize + host gap after the text encoder, each step and the VAE (the last request's
//! VAE share is taken after its last step, since a gap after the last GPU work is outside
//! the span), sized so that the gaps plus the natural launch-bound idle are 2.243 % of the
//! GPU busy time (259.8 ms idle /
//! 11,581.5 ms busy in `gpu_timeline.csv`). At 5 steps this reproduces the profile's count
//! and mean of every kernel row (tests below) and ≈ 97.8 % busy.
//!
//! `stdit`: an Open-Sora 1.2 STDiT3-XL/2-like model (28 blocks, hidden 1152, 16 heads of 72,
//! MLP ratio 4) generating 480p (480×848), 102 frames: 30 latent frames × 30×53 patches =
//! 47,700 tokens, 300 text tokens, guidance batched (one forward pass of batch 2 per step, as
//! Open-Sora does). Self-attention is split Open-Sora style into `attention.spatial` (60
//! sequences of 1,590 tokens) and `attention.temporal` (3,180 sequences of 30 tokens).
//! Durations are scaled from the Wan2.1 calibration: attention by FLOPs (4·B·H·N_q·N_kv·d)
//! from the flash self- / cross-attention means, the temporal one with a memory-traffic
//! floor (q, k, v, o at 2.5 TB/s: a 30-token attention is bandwidth bound); GEMMs by FLOPs
//! from the matching calibration GEMM; elementwise / norm kernels by element count
//! (×2.218). The VAE decode reuses the calibration's VAE kernel mix at one fifth of its
//! launches so a 50-step request stays under 100k launches (≈ 66k).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{MemcpyKind, Op, TimelineModel, Workload};

/// Names accepted by [`preset`].
pub const PRESET_NAMES: [&str; 2] = ["wan2.1", "stdit"];
/// Default number of denoising steps.
pub const DEFAULT_STEPS: u32 = 50;
/// Stream id every preset kernel runs on (the profile's PyTorch stream 7).
pub const PRESET_STREAM: u32 = 7;
/// Idle / busy ratio of the calibration profile (`gpu_timeline.csv`: 259.767 ms idle,
/// 11,581.485 ms busy → 97.806 % busy).
pub const IDLE_PER_BUSY: f64 = 259.767_095_703_125 / 11_581.484_952_392_579;
/// Transformer blocks of Wan2.1-T2V-1.3B.
pub const WAN_BLOCKS: u32 = 30;
/// Forward passes per step of Wan2.1 (classifier-free guidance as two passes).
pub const WAN_PASSES_PER_STEP: u32 = 2;
/// Transformer blocks of STDiT3-XL/2.
pub const STDIT_BLOCKS: u32 = 28;

/// The embedded calibration table (see the file's header for source and license).
const TABLE_TSV: &str = include_str!("wan21_kernel_summary.tsv");

/// One row of the calibration `kernel_summary.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    /// Row number in the CSV (0-based, ordered by total time).
    pub row: usize,
    /// TraceLens op category (`GEMM`, `CONV_fwd`, `elementwise`, …).
    pub category: String,
    /// Parent CPU op (`aten::addmm`, …).
    pub cpu_op: String,
    /// Kernel count in the profile.
    pub count: u64,
    /// Mean duration, µs.
    pub mean_us: f64,
    /// Shortest, µs.
    pub min_us: f64,
    /// Longest, µs.
    pub max_us: f64,
    /// Kernel name as in the trace.
    pub name: String,
}

/// The 107 kernel rows of the Wan2.1 H100 calibration profile.
pub fn calibration_rows() -> &'static [CalibrationRow] {
    static ROWS: OnceLock<Vec<CalibrationRow>> = OnceLock::new();
    ROWS.get_or_init(|| {
        TABLE_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.splitn(9, '\t').collect();
                let num = |i: usize| f[i].parse::<f64>().expect("calibration table number");
                CalibrationRow {
                    row: f[0].parse().expect("row"),
                    category: f[1].to_string(),
                    cpu_op: f[2].to_string(),
                    count: f[4].parse().expect("count"),
                    mean_us: num(5),
                    min_us: num(6),
                    max_us: num(7),
                    name: f[8].to_string(),
                }
            })
            .collect()
    })
}

/// True for calibration rows that belong to the VAE decode.
fn is_vae_row(r: &CalibrationRow) -> bool {
    r.category == "CONV_fwd"
        || (r.category == "elementwise" && r.cpu_op == "aten::cat")
        || matches!(
            r.cpu_op.as_str(),
            "aten::_upsample_nearest_exact2d"
                | "aten::linalg_vector_norm"
                | "aten::clamp_min"
                | "aten::silu"
        )
        || (r.cpu_op == "aten::div" && r.count > 1000)
}

// Calibration rows referred to by number (kernel_summary.csv order).
const R_FLASH: usize = 0;
const R_GEMM128: usize = 1;
const R_COPY_UNROLLED: usize = 2;
const R_ADD: usize = 4;
const R_GEMM256: usize = 5;
const R_MUL_GATE: usize = 6;
const R_MUL_RMS: usize = 8;
const R_COPY: usize = 9;
const R_MUL_MOD: usize = 15;
const R_COPY_T: usize = 17;
const R_LAYER_NORM: usize = 18;
const R_ADD_RES: usize = 19;
const R_GELU: usize = 20;
const R_POW: usize = 22;
const R_MEAN: usize = 26;
const R_SILU: usize = 27;
const R_GEMM_SMALL: usize = 39;
const R_ADD_F32: usize = 43;
const R_RSQRT: usize = 46;
const R_MUL_F32: usize = 58;
const R_SUB: usize = 61;
const R_GEMM_EMB: usize = 62;
const R_GEMV: usize = 75;
const R_GEMV_SMALL: usize = 78;

/// Zero-mean spread sequence: (2m+1)/16 − 1 for m = 0..16, visited with stride 7.
fn spread(j: u64) -> f64 {
    let m = (j * 7) % 16;
    (2 * m + 1) as f64 / 16.0 - 1.0
}

/// A kernel population: one name, a duration distribution (µs), its own instance counter.
#[derive(Debug, Clone)]
struct Pop {
    name: String,
    mean_us: f64,
    half_width_us: f64,
    next: u64,
    grid: [u32; 3],
    block: [u32; 3],
}

impl Pop {
    fn new(name: &str, mean_us: f64, min_us: f64, max_us: f64) -> Pop {
        let half = (mean_us - min_us).min(max_us - mean_us).max(0.0);
        let lower = name.to_ascii_lowercase();
        let (grid, block) = if lower.contains("flash") || lower.contains("fmha") {
            ([252, 12, 1], [128, 1, 1])
        } else if lower.contains("gemm") || lower.contains("gemv") {
            ([132, 2, 1], [384, 1, 1])
        } else {
            (
                [((mean_us * 100.0) as u32).clamp(1, 1 << 20), 1, 1],
                [128, 1, 1],
            )
        };
        Pop {
            name: name.to_string(),
            mean_us,
            half_width_us: half,
            next: 0,
            grid,
            block,
        }
    }

    fn from_row(r: &CalibrationRow, scale: f64) -> Pop {
        Pop::new(
            &r.name,
            r.mean_us * scale,
            r.min_us * scale,
            r.max_us * scale,
        )
    }

    fn launch(&mut self) -> Op {
        let us = self.mean_us + self.half_width_us * spread(self.next);
        self.next += 1;
        Op::Launch {
            name: self.name.clone(),
            dur_ns: (us * 1000.0).round().max(1.0) as u64,
            stream: PRESET_STREAM,
            grid: self.grid,
            block: self.block,
            shared_mem_bytes: 0,
        }
    }
}

/// Template element: a range push / pop or a launch of population `usize`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum T {
    Push(&'static str),
    Pop,
    K(usize),
}

/// Interleaves `(population, count)` evenly: instance `i` of `c` sits at `(i + ½) / c`.
fn interleave(items: &[(usize, u64)]) -> Vec<T> {
    let mut v: Vec<(f64, usize)> = Vec::new();
    for &(p, c) in items {
        for i in 0..c {
            v.push(((i as f64 + 0.5) / c as f64, p));
        }
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v.into_iter().map(|(_, p)| T::K(p)).collect()
}

/// A stage of a block: optional range name, anchor kernels (in order), filler kernels
/// (interleaved between the anchors).
struct Stage {
    range: Option<&'static str>,
    anchors: Vec<usize>,
    fillers: Vec<usize>,
}

impl Stage {
    fn new(range: Option<&'static str>, anchors: Vec<usize>) -> Stage {
        Stage {
            range,
            anchors,
            fillers: Vec::new(),
        }
    }

    fn emit(&self, out: &mut Vec<T>) {
        let mut v: Vec<(f64, usize)> = Vec::new();
        let na = self.anchors.len() as f64;
        for (j, &p) in self.anchors.iter().enumerate() {
            v.push(((j as f64 + 1.0) / (na + 1.0), p));
        }
        let nf = self.fillers.len() as f64;
        for (j, &p) in self.fillers.iter().enumerate() {
            v.push(((j as f64 + 0.5) / nf, p));
        }
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(r) = self.range {
            out.push(T::Push(r));
        }
        out.extend(v.into_iter().map(|(_, p)| T::K(p)));
        if self.range.is_some() {
            out.push(T::Pop);
        }
    }
}

/// A preset model: kernel populations and the templates that use them.
struct Model {
    name: &'static str,
    pops: Vec<Pop>,
    /// Once per request before the steps (text encoder).
    prologue: Vec<T>,
    /// Per forward pass, before the blocks.
    fwd_pre: Vec<T>,
    /// One transformer block.
    block: Vec<T>,
    /// Per forward pass, after the blocks.
    fwd_post: Vec<T>,
    /// Per step, after the forward passes (scheduler).
    step_post: Vec<T>,
    /// The VAE decode (inside `vae.decode`).
    vae: Vec<T>,
    blocks: u32,
    passes_per_step: u32,
    latent_bytes: u64,
    video_bytes: u64,
}

fn wan_model() -> Model {
    let rows = calibration_rows();
    let mut pops: Vec<Pop> = rows.iter().map(|r| Pop::from_row(r, 1.0)).collect();
    let flash = &rows[R_FLASH].name;
    let gemm = &rows[R_GEMM128].name;
    // SDPA_fwd.csv / GEMM.csv per-shape statistics (µs).
    let p_self = pops.len();
    pops.push(Pop::new(flash, 17_762.30, 17_253.50, 18_602.39));
    let p_cross = pops.len();
    pops.push(Pop::new(flash, 324.6754, 316.9899, 337.2128));
    let p_proj = pops.len();
    pops.push(Pop::new(gemm, 203.6964, 199.6140, 209.6940));
    let p_ffn_up = pops.len();
    pops.push(Pop::new(gemm, 1149.836, 1143.605, 1553.264));
    let p_head = pops.len();
    pops.push(Pop::new(gemm, 51.39802, 49.98291, 52.35205));

    // Stages of one Wan block (diffusers WanTransformerBlock).
    const NORM1: usize = 0;
    const SPATIAL: usize = 1;
    const STEP_A: usize = 2;
    const NORM3: usize = 3;
    const CROSS: usize = 4;
    const STEP_B: usize = 5;
    const NORM2: usize = 6;
    const FFN: usize = 7;
    const STEP_C: usize = 8;
    let mut st = vec![
        Stage::new(Some("norm"), vec![R_LAYER_NORM]),
        Stage::new(
            Some("attention.spatial"),
            vec![p_proj, p_proj, p_proj, p_self, p_proj],
        ),
        Stage::new(None, vec![]),
        Stage::new(Some("norm"), vec![R_LAYER_NORM]),
        Stage::new(
            Some("attention.cross"),
            vec![p_proj, R_GEMM_SMALL, R_GEMM_SMALL, p_cross, p_proj],
        ),
        Stage::new(None, vec![]),
        Stage::new(Some("norm"), vec![R_LAYER_NORM]),
        Stage::new(Some("ffn"), vec![p_ffn_up, R_GELU, R_GEMM256]),
        Stage::new(None, vec![]),
    ];
    // Launches per block already placed as anchors, per row.
    let anchored: HashMap<usize, u64> = [
        (R_FLASH, 2),
        (R_GEMM128, 7),
        (R_LAYER_NORM, 3),
        (R_GELU, 1),
        (R_GEMM256, 1),
        (R_GEMM_SMALL, 2),
    ]
    .into();
    let per_pass = (WAN_BLOCKS * 10) as u64; // block instances in the profile
    let mut fwd_items: Vec<(usize, u64)> = Vec::new();
    let mut pro_items: Vec<(usize, u64)> = Vec::new();
    let mut vae_items: Vec<(usize, u64)> = Vec::new();
    let rr = [
        SPATIAL, STEP_A, CROSS, STEP_B, NORM2, FFN, STEP_C, NORM1, NORM3,
    ];
    for r in rows {
        if is_vae_row(r) {
            vae_items.push((r.row, r.count));
            continue;
        }
        let k = r.count / per_pass;
        let rest = r.count - k * per_pass;
        let f = rest / 10;
        let p = rest - f * 10;
        if f > 0 {
            // The GEMM's per-forward launch is the output head.
            fwd_items.push((if r.row == R_GEMM128 { p_head } else { r.row }, f));
        }
        if p > 0 {
            pro_items.push((r.row, p));
        }
        let fill = k - anchored.get(&r.row).copied().unwrap_or(0).min(k);
        for j in 0..fill {
            let stage = if matches!(r.row, R_POW | R_MEAN | R_RSQRT) {
                // RMSNorm of q and k: half in self-, half in cross-attention.
                if j < fill / 2 {
                    SPATIAL
                } else {
                    CROSS
                }
            } else {
                rr[(r.row + j as usize) % rr.len()]
            };
            st[stage].fillers.push(r.row);
        }
    }
    let mut block = Vec::new();
    for s in &st {
        s.emit(&mut block);
    }
    let fwd = interleave(&fwd_items);
    let half = fwd.len().div_ceil(2);
    Model {
        name: "wan2.1",
        pops,
        prologue: interleave(&pro_items),
        fwd_pre: fwd[..half].to_vec(),
        block,
        fwd_post: fwd[half..].to_vec(),
        step_post: Vec::new(),
        vae: interleave(&vae_items),
        blocks: WAN_BLOCKS,
        passes_per_step: WAN_PASSES_PER_STEP,
        // 16 channels × 21 latent frames × 60 × 104, fp32; 81 frames × 480 × 832 × RGB u8.
        latent_bytes: 16 * 21 * 60 * 104 * 4,
        video_bytes: 81 * 480 * 832 * 3,
    }
}

fn stdit_model() -> Model {
    let rows = calibration_rows();
    let mut pops: Vec<Pop> = Vec::new();
    let mut add = |p: Pop| {
        pops.push(p);
        pops.len() - 1
    };
    // Token and element counts (module docs).
    let tokens = 2.0 * 30.0 * 1590.0; // batch 2 (guidance) × 47,700
    let elem = tokens * 1152.0 / (32_256.0 * 1536.0); // ×2.218 vs. Wan's 32,256 × 1,536
    let flops_attn = |b: f64, h: f64, nq: f64, nkv: f64, d: f64| 4.0 * b * h * nq * nkv * d;
    let wan_self = flops_attn(1.0, 12.0, 32_256.0, 32_256.0, 128.0);
    let wan_cross = flops_attn(1.0, 12.0, 32_256.0, 512.0, 128.0);
    let scale = |mean: f64, min: f64, max: f64, s: f64, name: &str| {
        Pop::new(name, mean * s, min * s, max * s)
    };
    let flash = rows[R_FLASH].name.clone();
    let gemm = rows[R_GEMM128].name.clone();
    let spatial_s = flops_attn(60.0, 16.0, 1590.0, 1590.0, 72.0) / wan_self;
    let p_spatial = add(scale(17_762.30, 17_253.50, 18_602.39, spatial_s, &flash));
    // Temporal: FLOPs-scaled, floored by q/k/v/o traffic at 2.5 TB/s.
    let temporal_flops_us = 17_762.30 * flops_attn(3180.0, 16.0, 30.0, 30.0, 72.0) / wan_self;
    let temporal_bytes_us = 4.0 * tokens * 1152.0 * 2.0 / 2.5e6; // bytes / (bytes per µs)
    let t_us = temporal_flops_us.max(temporal_bytes_us);
    let p_temporal = add(Pop::new(&flash, t_us, t_us * 0.97, t_us * 1.05));
    let cross_s = flops_attn(2.0, 16.0, 47_700.0, 300.0, 72.0) / wan_cross;
    let p_cross = add(scale(324.6754, 316.9899, 337.2128, cross_s, &flash));
    // GEMMs: FLOPs relative to Wan's 32,256 × 1,536 × 1,536 projection / FFN GEMMs.
    let wan_proj = 2.0 * 32_256.0 * 1536.0 * 1536.0;
    let wan_ffn = 2.0 * 32_256.0 * 8960.0 * 1536.0;
    let g = |n: f64, k: f64| 2.0 * tokens * n * k;
    let p_qkv = add(scale(
        203.6964,
        199.6140,
        209.6940,
        g(3.0 * 1152.0, 1152.0) / wan_proj,
        &gemm,
    ));
    let p_proj = add(scale(
        203.6964,
        199.6140,
        209.6940,
        g(1152.0, 1152.0) / wan_proj,
        &gemm,
    ));
    let p_fc1 = add(scale(
        1149.836,
        1143.605,
        1200.0,
        g(4608.0, 1152.0) / wan_ffn,
        &gemm,
    ));
    let r5 = &rows[R_GEMM256];
    let p_fc2 = add(Pop::from_row(r5, g(1152.0, 4608.0) / wan_ffn));
    // Cross-attention k/v projection of 2 × 300 text tokens (Wan: 512 tokens, 10.5 µs).
    let p_kv = add(scale(
        10.54585,
        9.08789,
        12.2561,
        (2.0 * 600.0 * 2304.0 * 1152.0) / (2.0 * 512.0 * 1536.0 * 1536.0),
        &rows[R_GEMM_SMALL].name,
    ));
    let e = |r: usize| Pop::from_row(&rows[r], elem);
    let ln = add(e(R_LAYER_NORM));
    let mul_mod = add(e(R_MUL_MOD));
    let add_mod = add(e(R_ADD));
    let pow = add(e(R_POW));
    let mean = add(e(R_MEAN));
    let rsqrt = add(Pop::from_row(&rows[R_RSQRT], 1.0));
    let mul_rms = add(e(R_MUL_RMS));
    let copy_t = add(e(R_COPY_T));
    let gate = add(e(R_MUL_GATE));
    let res = add(e(R_ADD_RES));
    let gelu = add(Pop::from_row(
        &rows[R_GELU],
        (tokens * 4608.0) / (32_256.0 * 8960.0),
    ));
    let res_ffn = add(e(R_ADD));

    let norm = |v: &mut Vec<T>| {
        v.extend([
            T::Push("norm"),
            T::K(ln),
            T::K(mul_mod),
            T::K(add_mod),
            T::Pop,
        ]);
    };
    let mut block = Vec::new();
    norm(&mut block);
    block.push(T::Push("attention.spatial"));
    for p in [
        p_qkv, pow, mean, rsqrt, mul_rms, copy_t, p_spatial, p_proj, gate, res,
    ] {
        block.push(T::K(p));
    }
    block.push(T::Pop);
    norm(&mut block);
    block.push(T::Push("attention.temporal"));
    for p in [
        copy_t, p_qkv, pow, mean, rsqrt, mul_rms, p_temporal, p_proj, copy_t, gate, res,
    ] {
        block.push(T::K(p));
    }
    block.push(T::Pop);
    block.push(T::Push("attention.cross"));
    for p in [p_proj, p_kv, p_cross, p_proj, res] {
        block.push(T::K(p));
    }
    block.push(T::Pop);
    norm(&mut block);
    block.push(T::Push("ffn"));
    for p in [p_fc1, gelu, p_fc2, gate, res_ffn] {
        block.push(T::K(p));
    }
    block.push(T::Pop);

    // Timestep / caption embedding before the blocks, final layer and unpatchify after.
    let fwd_pre: Vec<T> = [R_GEMV, R_SILU, R_GEMM_EMB, R_GEMV_SMALL]
        .iter()
        .map(|&r| T::K(add(Pop::from_row(&rows[r], 1.0))))
        .collect();
    let head = add(scale(
        51.39802,
        49.98291,
        52.35205,
        tokens / 32_256.0,
        &gemm,
    ));
    let fwd_post = vec![
        T::K(ln),
        T::K(mul_mod),
        T::K(head),
        T::K(add(e(R_COPY))),
        T::K(add(e(R_COPY_UNROLLED))),
    ];
    // Rectified-flow scheduler update per step.
    let step_post: Vec<T> = [R_MUL_F32, R_ADD_F32, R_SUB]
        .iter()
        .map(|&r| T::K(add(Pop::from_row(&rows[r], 1.0))))
        .collect();

    // Text encoder: the Wan profile's once-per-request kernels; VAE: its VAE mix at 1/5.
    let wan = wan_model_counts();
    let mut row_pop: HashMap<usize, usize> = HashMap::new();
    let mut pop_of = |r: usize, pops: &mut Vec<Pop>| {
        *row_pop.entry(r).or_insert_with(|| {
            pops.push(Pop::from_row(&rows[r], 1.0));
            pops.len() - 1
        })
    };
    let pro_items: Vec<(usize, u64)> = wan
        .prologue
        .iter()
        .map(|&(r, c)| (pop_of(r, &mut pops), c))
        .collect();
    let vae_items: Vec<(usize, u64)> = wan
        .vae
        .iter()
        .map(|&(r, c)| (pop_of(r, &mut pops), c.div_ceil(5)))
        .collect();
    Model {
        name: "stdit",
        pops,
        prologue: interleave(&pro_items),
        fwd_pre,
        block,
        fwd_post,
        step_post,
        vae: interleave(&vae_items),
        blocks: STDIT_BLOCKS,
        passes_per_step: 1,
        // 4 channels × 30 latent frames × 60 × 106 × batch 2, fp32; 102 × 480 × 848 × RGB u8.
        latent_bytes: 4 * 30 * 60 * 106 * 2 * 4,
        video_bytes: 102 * 480 * 848 * 3,
    }
}

/// Per calibration row, how the Wan model spends its once-per-request launches.
struct WanCounts {
    prologue: Vec<(usize, u64)>,
    vae: Vec<(usize, u64)>,
}

fn wan_model_counts() -> WanCounts {
    let mut prologue = Vec::new();
    let mut vae = Vec::new();
    for r in calibration_rows() {
        if is_vae_row(r) {
            vae.push((r.row, r.count));
        } else {
            let once = (r.count % (WAN_BLOCKS as u64 * 10)) % 10;
            if once > 0 {
                prologue.push((r.row, once));
            }
        }
    }
    WanCounts { prologue, vae }
}

/// A deterministic W3C `traceparent` for request `index` of preset `name`
/// (`00-<32 hex trace id>-<16 hex span id>-01`, sampled, ids never all zero).
pub fn traceparent(name: &str, index: u32) -> String {
    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let a = splitmix(seed ^ index as u64) | 1;
    let b = splitmix(a);
    let c = splitmix(b) | 1;
    format!("00-{a:016x}{b:016x}-{c:016x}-01")
}

impl Model {
    fn emit(&mut self, t: &[T], out: &mut Vec<Op>) {
        for x in t {
            match *x {
                T::Push(n) => out.push(Op::RangePush(n.to_string())),
                T::Pop => out.push(Op::RangePop),
                T::K(p) => out.push(self.pops[p].launch()),
            }
        }
    }

    /// The host gap that, after a synchronize, brings `seg`'s GPU idle to
    /// `IDLE_PER_BUSY` × its busy time (natural launch-bound idle counted).
    fn idle_gap_ns(seg: &[Op]) -> u64 {
        let model = TimelineModel::default();
        let est = Workload { ops: seg.to_vec() }.estimate_timeline(&model);
        let natural_idle = est.gpu_span_ns - est.gpu_busy_ns + model.launch_latency_ns;
        let target = (est.gpu_busy_ns as f64 * IDLE_PER_BUSY).round() as u64;
        target.saturating_sub(natural_idle)
    }

    /// Request `req`'s ops. `last`: the run's last request, whose VAE idle is taken before
    /// its VAE (module docs); a run of unknown length has none.
    fn build_request(&mut self, steps: u32, req: u32, last: bool) -> Vec<Op> {
        let mut ops = Vec::new();
        let (pre, block, post, step_post) = (
            self.fwd_pre.clone(),
            self.block.clone(),
            self.fwd_post.clone(),
            self.step_post.clone(),
        );
        let (pro, vae) = (self.prologue.clone(), self.vae.clone());
        ops.push(Op::RangePush(format!(
            "gpuspan.request {} model={}",
            traceparent(self.name, req),
            self.name
        )));
        let mut pro_seg = vec![Op::Memcpy {
            kind: MemcpyKind::HtoD,
            bytes: self.latent_bytes,
            stream: PRESET_STREAM,
        }];
        self.emit(&pro, &mut pro_seg);
        // The VAE populations are its own, so building it first changes no duration.
        let mut vae_seg = vec![Op::RangePush("vae.decode".into())];
        self.emit(&vae, &mut vae_seg);
        vae_seg.push(Op::RangePop);
        vae_seg.push(Op::Memcpy {
            kind: MemcpyKind::DtoH,
            bytes: self.video_bytes,
            stream: PRESET_STREAM,
        });
        let vae_gap = Self::idle_gap_ns(&vae_seg);
        // A gap after the very last GPU work would not be idle inside the span: the last
        // request's VAE idle is taken before the VAE instead.
        let carry = if last { vae_gap } else { 0 };
        let gap = Self::idle_gap_ns(&pro_seg) + if steps == 0 { carry } else { 0 };
        ops.extend(pro_seg);
        ops.extend([Op::Synchronize, Op::HostGap { ns: gap }]);
        for i in 0..steps {
            ops.push(Op::RangePush(format!("dit.step {i}/{steps}")));
            let mut seg = Vec::new();
            for _ in 0..self.passes_per_step {
                self.emit(&pre, &mut seg);
                for _ in 0..self.blocks {
                    self.emit(&block, &mut seg);
                }
                self.emit(&post, &mut seg);
            }
            self.emit(&step_post, &mut seg);
            let gap = Self::idle_gap_ns(&seg) + if i + 1 == steps { carry } else { 0 };
            ops.extend(seg);
            ops.extend([Op::Synchronize, Op::HostGap { ns: gap }, Op::RangePop]);
        }
        ops.extend(vae_seg);
        ops.push(Op::Synchronize);
        if carry == 0 {
            ops.push(Op::HostGap { ns: vae_gap });
        }
        ops.push(Op::RangePop);
        ops
    }
}

/// A preset's requests one at a time (issue 13, item 1): memory holds one request's ops,
/// whatever the number of requests. The concatenation of what it yields is exactly
/// [`preset`]'s workload for the same arguments (kernel durations continue their
/// deterministic sequences across requests).
pub struct PresetRequests {
    model: Model,
    steps: u32,
    /// `None`: without end (`gpuspan-replay --requests 0`).
    requests: Option<u32>,
    next: u32,
}

impl PresetRequests {
    /// The requests of preset `name` with `steps` denoising steps each: `requests` of them,
    /// or without end for `None`. `None` for an unknown name.
    pub fn new(name: &str, steps: u32, requests: Option<u32>) -> Option<PresetRequests> {
        let model = match name {
            "wan2.1" => wan_model(),
            "stdit" => stdit_model(),
            _ => return None,
        };
        Some(PresetRequests { model, steps, requests, next: 0 })
    }

    /// Bytes of one request's latents (what a sequence-parallel run all-gathers before the
    /// VAE, `workload::parallel`).
    pub fn latent_bytes(&self) -> u64 {
        self.model.latent_bytes
    }
}

impl Iterator for PresetRequests {
    /// One request: its `gpuspan.request` range and everything inside it.
    type Item = Workload;

    fn next(&mut self) -> Option<Workload> {
        let req = self.next;
        if self.requests.is_some_and(|n| req >= n) {
            return None;
        }
        self.next = req.wrapping_add(1);
        let last = self.requests.is_some_and(|n| req + 1 == n);
        Some(Workload { ops: self.model.build_request(self.steps, req, last) })
    }
}

/// The built-in preset `name` (`wan2.1` or `stdit`, see the module docs) with `steps`
/// denoising steps per request and `requests` requests; `None` for an unknown name.
/// All requests in one workload; [`PresetRequests`] yields them one at a time.
pub fn preset(name: &str, steps: u32, requests: u32) -> Option<Workload> {
    let mut w = Workload::new();
    for r in PresetRequests::new(name, steps, Some(requests))? {
        w.ops.extend(r.ops);
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_requests_come_one_at_a_time_with_or_without_end() {
        let two: Vec<Workload> = PresetRequests::new("stdit", 2, Some(2)).unwrap().collect();
        assert_eq!(two.len(), 2);
        let mut endless = PresetRequests::new("stdit", 2, None).unwrap();
        for i in 0..5u32 {
            let r = endless.next().expect("no end");
            assert!(r.ranges_balanced());
            let Op::RangePush(name) = &r.ops[0] else { panic!("a request starts with its range") };
            assert_eq!(name, &format!("gpuspan.request {} model=stdit", traceparent("stdit", i)));
            // Only a run's last request takes its VAE idle before the VAE: with no end, no
            // request is last, so every one ends with the VAE's host gap.
            assert!(matches!(r.ops[r.ops.len() - 2], Op::HostGap { .. }), "request {i}");
        }
        // The last of a bounded run does not; the others match the endless run's.
        assert!(!matches!(two[1].ops[two[1].ops.len() - 2], Op::HostGap { .. }));
        assert_eq!(two[0].ops, PresetRequests::new("stdit", 2, None).unwrap().next().unwrap().ops);
        assert!(PresetRequests::new("sdxl", 2, None).is_none());
    }

    #[test]
    fn table_parses() {
        let rows = calibration_rows();
        assert_eq!(rows.len(), 107);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 102_280);
        assert_eq!(rows[R_FLASH].count, 600);
        assert!(rows[R_FLASH].name.contains("flash_fwd_kernel"));
        assert!(rows[R_GEMM_SMALL].name.contains("tilesize128x64x64"));
        assert!(rows[R_GELU].cpu_op == "aten::gelu" && rows[R_POW].cpu_op == "aten::pow");
        assert!(rows[R_MEAN].cpu_op == "aten::mean" && rows[R_RSQRT].cpu_op == "aten::rsqrt");
    }

    /// The calibration target: 5 steps with guidance reproduce kernel_summary.csv (count
    /// and mean of the 20 rows with the largest total time within 5 %, here every row
    /// exactly in count) and the 97.8 % busy share within 1 point.
    #[test]
    fn wan21_matches_calibration_profile() {
        let w = preset("wan2.1", 5, 1).unwrap();
        assert!(w.ranges_balanced());
        let s = w.summary();
        assert_eq!(s.kernel_count, 102_280);
        let rows = calibration_rows();
        // Group the profile by name (two rows share a name only if TraceLens split them).
        let mut by_name: HashMap<&str, (u64, f64)> = HashMap::new();
        for r in rows {
            let e = by_name.entry(&r.name).or_default();
            e.0 += r.count;
            e.1 += r.count as f64 * r.mean_us;
        }
        let mut top: Vec<&CalibrationRow> = rows.iter().collect();
        top.sort_by(|a, b| (b.count as f64 * b.mean_us).total_cmp(&(a.count as f64 * a.mean_us)));
        for r in top.iter().take(20) {
            let (c, tot) = by_name[r.name.as_str()];
            let k = &s.per_kernel[&r.name];
            let mean_us = k.total_ns as f64 / k.count as f64 / 1000.0;
            let want_mean = tot / c as f64;
            assert!(
                (k.count as f64 - c as f64).abs() <= 0.05 * c as f64,
                "row {}: count {} vs {}",
                r.row,
                k.count,
                c
            );
            assert!(
                (mean_us - want_mean).abs() <= 0.05 * want_mean,
                "row {}: mean {mean_us} vs {want_mean}",
                r.row
            );
        }
        // Every kernel name appears with its exact profile count.
        for (name, (c, _)) in &by_name {
            assert_eq!(s.per_kernel[*name].count, *c, "{name}");
        }
        let flash = &s.per_kernel[&rows[R_FLASH].name];
        assert_eq!(flash.count, 600);
        let est = w.estimate_timeline(&TimelineModel::default());
        let busy = est.busy_percent();
        assert!((busy - 97.806).abs() <= 1.0, "busy {busy:.3} %");
        // span ≈ 11.84 s
        let span_s = est.gpu_span_ns as f64 / 1e9;
        assert!((span_s - 11.84).abs() < 0.6, "span {span_s:.3} s");
    }

    #[test]
    fn wan21_structure() {
        let w = preset("wan2.1", 2, 2).unwrap();
        assert!(w.ranges_balanced());
        let names: Vec<&str> = w
            .ops
            .iter()
            .filter_map(|o| {
                if let Op::RangePush(n) = o {
                    Some(n.as_str())
                } else {
                    None
                }
            })
            .collect();
        let reqs: Vec<&&str> = names
            .iter()
            .filter(|n| n.starts_with("gpuspan.request "))
            .collect();
        assert_eq!(reqs.len(), 2);
        assert_ne!(reqs[0], reqs[1]);
        for r in reqs {
            let tp = r.split(' ').nth(1).unwrap();
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4);
            assert_eq!(
                (parts[0], parts[1].len(), parts[2].len(), parts[3]),
                ("00", 32, 16, "01")
            );
            assert!(parts[1]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_eq!(
            names.iter().filter(|n| n.starts_with("dit.step ")).count(),
            4
        );
        assert!(names.contains(&"dit.step 1/2"));
        assert_eq!(
            names.iter().filter(|n| **n == "attention.spatial").count(),
            2 * 2 * 2 * 30
        );
        assert_eq!(
            names.iter().filter(|n| **n == "attention.cross").count(),
            2 * 2 * 2 * 30
        );
        assert_eq!(
            names.iter().filter(|n| **n == "ffn").count(),
            2 * 2 * 2 * 30
        );
        assert_eq!(names.iter().filter(|n| **n == "vae.decode").count(), 2);
        assert_eq!(preset("wan2.1", 2, 2), Some(w));
        assert!(preset("nope", 1, 1).is_none());
    }

    #[test]
    fn stdit_budget_and_structure() {
        let w = preset("stdit", DEFAULT_STEPS, 1).unwrap();
        assert!(w.ranges_balanced());
        let s = w.summary();
        assert!(s.kernel_count <= 100_000, "{} launches", s.kernel_count);
        let pushes: Vec<&str> = w
            .ops
            .iter()
            .filter_map(|o| {
                if let Op::RangePush(n) = o {
                    Some(n.as_str())
                } else {
                    None
                }
            })
            .collect();
        for stage in [
            "attention.spatial",
            "attention.temporal",
            "attention.cross",
            "ffn",
        ] {
            assert_eq!(
                pushes.iter().filter(|n| **n == stage).count(),
                50 * 28,
                "{stage}"
            );
        }
        let est = w.estimate_timeline(&TimelineModel::default());
        assert!(
            (est.busy_percent() - 97.8).abs() <= 1.0,
            "{}",
            est.busy_percent()
        );
    }
}

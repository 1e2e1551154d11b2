//! `gpuspan-kernels`: the CPU side of the GPU validation workload in `kernels/*.cu`.
//!
//! gpuspan cannot be tested on a GPU in CI (DESIGN.md "The simulated H100"), so the real-GPU
//! check (`scripts/gpu-validate.sh`, `docs/gpu-validation.md`) runs a small DiT-style
//! workload of our own CUDA kernels, `examples/dit_worker.rs`, and compares what the agent
//! measured with the worker's own CUDA-event ground truth. Before timings mean anything the
//! kernels must compute the right thing; this crate holds, for every kernel:
//! - its CPU reference, written to follow the kernel's arithmetic (bf16 inputs as
//!   `u16` bit patterns, f32 accumulation, bf16 rounding of outputs) so that a GPU result
//!   can be compared element by element;
//! - the [`Tolerance`] the real-GPU check (`dit_worker --check`) allows between the GPU
//!   output and that reference, and why (see each module);
//! - the shapes (tensor layouts, launch geometry constants) that the kernel and the worker
//!   agree on.
//!
//! The references are themselves tested against independent formulas (naive attention in
//! f64, conv3d through im2col, hand-computed cases), so a kernel that agrees with its
//! reference is right, not just consistent. [`KERNELS`] lists every `extern "C"` kernel with
//! the stage class its name gets under gpuspan's built-in name rules.
//!
//! No GPU, no I/O and no `unsafe` here; the CUDA sources live in `kernels/` at the
//! repository root and are compiled to PTX by the root package's `build.rs`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attention;
pub mod bf16;
pub mod conv3d;
pub mod dit;
pub mod ffn;
pub mod layer_norm;
pub mod rng;
pub mod spin;
mod tolerance;

pub use tolerance::{compare, Comparison, Tolerance};

/// One `extern "C" __global__` kernel of `kernels/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Kernel (PTX entry) name, unmangled.
    pub name: &'static str,
    /// Source file under `kernels/` that defines it.
    pub source: &'static str,
    /// Class its name gets from gpuspan's built-in name rules when no stage scope encloses it
    /// (`crates/gpuspan-core/rules/stages.toml`): `attention`, `gemm`, `norm`, `conv` or
    /// `other`. The convolution is `conv` by name and becomes `vae.decode` under that scope.
    pub name_class: &'static str,
}

/// CUDA source files under `kernels/`, in build order (the root `build.rs` compiles each to
/// one PTX module; `src/kernels.rs` exposes them under the same stems).
pub const SOURCES: [&str; 5] = ["spin.cu", "attention.cu", "ffn.cu", "layer_norm.cu", "conv3d.cu"];

/// Every kernel of the validation workload.
pub const KERNELS: [KernelInfo; 9] = [
    KernelInfo { name: "spin_ns", source: "spin.cu", name_class: "other" },
    KernelInfo { name: "flash_attn_fwd_d64", source: "attention.cu", name_class: "attention" },
    KernelInfo { name: "sdpa_qk_scores_d64", source: "attention.cu", name_class: "attention" },
    KernelInfo { name: "softmax_rows_f32", source: "attention.cu", name_class: "attention" },
    KernelInfo { name: "sdpa_pv_d64", source: "attention.cu", name_class: "attention" },
    KernelInfo { name: "gemm_bf16_bias", source: "ffn.cu", name_class: "gemm" },
    KernelInfo { name: "gemm_bf16_bias_gelu", source: "ffn.cu", name_class: "gemm" },
    KernelInfo { name: "layer_norm_bf16", source: "layer_norm.cu", name_class: "norm" },
    KernelInfo { name: "vae_conv3d_k3_bf16", source: "conv3d.cu", name_class: "conv" },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_get_their_stage_class_from_gpuspans_builtin_rules() {
        for k in KERNELS {
            assert_eq!(
                gpuspan_core::classify::classify_kernel_name(k.name),
                k.name_class,
                "kernel {}",
                k.name
            );
        }
    }

    #[test]
    fn every_kernel_lives_in_a_listed_source_and_names_are_unique() {
        let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len());
        for k in KERNELS {
            assert!(SOURCES.contains(&k.source), "{} in unknown source {}", k.name, k.source);
        }
        for s in SOURCES {
            assert!(KERNELS.iter().any(|k| k.source == s), "{s} defines no listed kernel");
        }
    }
}

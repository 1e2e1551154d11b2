//! Stage classification: which stage a GPU event belongs to.
//!
//! Order (DESIGN.md "Stage classification"):
//! 1. the innermost enclosing scope whose name is a stage (`attention.spatial`,
//!    `attention.temporal`, `attention.cross`, `ffn`, `norm`, `vae.decode`) decides;
//! 2. otherwise the kernel-name rules (data: `rules/stages.toml`, overridable) give a class:
//!    `moe`, `communication`, `attention`, `norm`, `embedding`, `conv`, `gemm`, `optimizer`,
//!    `sort`, `elementwise`, else `other` (the file says which names each takes, and why in
//!    that order);
//! 3. memcpy and memset are `memcpy` / `memset` by kind.
//!
//! One exception to the order (issue 16, and a deviation from DESIGN.md's "scope first"):
//! an NCCL / RCCL kernel is always the `communication` stage, even inside a stage scope. A
//! sequence-parallel attention module (xDiT's Ulysses) runs its all-to-alls inside its own
//! forward, so its scope would otherwise count the collective, and the time it waits for the
//! slowest rank, as attention compute.
//!
//! Name rules are matched once per distinct kernel name and cached ([`Classifier`]), never
//! per record.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The built-in rules file, embedded.
pub const BUILTIN_RULES_TOML: &str = include_str!("../rules/stages.toml");

/// Class for kernels no rule matches.
pub const OTHER: &str = "other";

/// Class and stage of collective-communication kernels.
pub const COMMUNICATION: &str = "communication";

/// The stage a kernel's innermost stage scope gives it: `scope_stage`, except that an NCCL /
/// RCCL kernel ([`is_collective_kernel`]) is [`COMMUNICATION`] whatever its scope (module
/// docs). `None` when no stage scope decides (the name rules do then).
pub fn scoped_stage(kernel_name: &str, scope_stage: Option<&'static str>) -> Option<&'static str> {
    match scope_stage {
        Some(_) if is_collective_kernel(kernel_name) => Some(COMMUNICATION),
        s => s,
    }
}

/// Whether `name` is an NCCL or RCCL kernel (`ncclDevKernel_…`, `ncclKernel_…`,
/// `void ncclKernel…`, `rccl…`): a prefix test, cheap enough for every record.
pub fn is_collective_kernel(name: &str) -> bool {
    let n = name.strip_prefix("void ").unwrap_or(name).as_bytes();
    n.len() >= 4 && (n[..4].eq_ignore_ascii_case(b"nccl") || n[..4].eq_ignore_ascii_case(b"rccl"))
}

/// One name rule: the first rule any of whose substrings occurs in the lower-cased name wins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NameRule {
    /// The class assigned (`attention`, `gemm`, …).
    pub class: String,
    /// Lower-case substrings, any of which matches.
    pub contains: Vec<String>,
}

/// A rules file: `[[rule]]` tables.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct RulesFile {
    /// Rules in order.
    #[serde(default)]
    pub rule: Vec<NameRule>,
}

/// Error reading a rules file.
#[derive(Debug, thiserror::Error)]
#[error("stage rules: {0}")]
pub struct RulesError(String);

/// Ordered kernel-name rules.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRules {
    rules: Vec<NameRule>,
}

impl Default for StageRules {
    fn default() -> Self {
        Self::builtin()
    }
}

impl StageRules {
    /// The built-in rules ([`BUILTIN_RULES_TOML`]).
    pub fn builtin() -> StageRules {
        let f: RulesFile = toml::from_str(BUILTIN_RULES_TOML).expect("built-in rules parse");
        StageRules { rules: f.rule }
    }

    /// Built-in rules with `override_toml`'s rules tried first. Errors name the TOML problem.
    pub fn with_overrides(override_toml: &str) -> Result<StageRules, RulesError> {
        let f: RulesFile = toml::from_str(override_toml).map_err(|e| RulesError(e.to_string()))?;
        let mut rules: Vec<NameRule> = f
            .rule
            .into_iter()
            .map(|r| NameRule {
                class: r.class,
                contains: r.contains.into_iter().map(|s| s.to_lowercase()).collect(),
            })
            .collect();
        rules.extend(Self::builtin().rules);
        Ok(StageRules { rules })
    }

    /// The class of a kernel name by the rules alone (no scope), `other` if none matches.
    pub fn class_of(&self, kernel_name: &str) -> &str {
        let lower = kernel_name.to_lowercase();
        for r in &self.rules {
            if r.contains.iter().any(|c| lower.contains(c.as_str())) {
                return &r.class;
            }
        }
        OTHER
    }
}

/// The class of a kernel name under the built-in rules (convenience for one-off callers;
/// hot loops use a [`Classifier`]).
pub fn classify_kernel_name(name: &str) -> String {
    StageRules::builtin().class_of(name).to_string()
}

/// Rules plus a per-name cache.
#[derive(Debug, Default, Clone)]
pub struct Classifier {
    rules: StageRules,
    cache: HashMap<Arc<str>, Arc<str>>,
    /// The same classes by the address of an interned name (the decoder hands out one
    /// `Arc<str>` per distinct kernel name, `gpuspan_cupti::decode::NameCache`), so a
    /// repeated name costs an integer hash, not a hash of its bytes. Each entry holds its
    /// name, so the address cannot be reused by another name while it is here; at most
    /// [`INTERNED_CACHE_MAX`] entries (cleared when full: a decoder whose names are not
    /// interned only pays the byte hash).
    by_address: crate::id_hash::IdHashMap<usize, (Arc<str>, Arc<str>)>,
}

/// Most entries of [`Classifier`]'s by-address cache.
pub const INTERNED_CACHE_MAX: usize = 16_384;

impl Classifier {
    /// A classifier over `rules`.
    pub fn new(rules: StageRules) -> Classifier {
        Classifier { rules, cache: HashMap::new(), by_address: Default::default() }
    }

    /// Class of `kernel_name` by the name rules, computed once per distinct name; a name
    /// seen before as the same `Arc` is looked up by its address. Allocates only the first
    /// time a name (or a new `Arc` of it) is seen.
    pub fn class_of(&mut self, kernel_name: &Arc<str>) -> Arc<str> {
        let addr = Arc::as_ptr(kernel_name) as *const u8 as usize;
        if let Some((_, c)) = self.by_address.get(&addr) {
            return c.clone();
        }
        let c = match self.cache.get(kernel_name) {
            Some(c) => c.clone(),
            None => {
                let c: Arc<str> = Arc::from(self.rules.class_of(kernel_name));
                self.cache.insert(kernel_name.clone(), c.clone());
                c
            }
        };
        if self.by_address.len() >= INTERNED_CACHE_MAX {
            self.by_address.clear();
        }
        self.by_address.insert(addr, (kernel_name.clone(), c.clone()));
        c
    }

    /// Stage of a kernel: `scope_stage` (the innermost stage scope around its launch) when
    /// there is one, else the name class.
    /// An NCCL / RCCL kernel (see [`is_collective_kernel`]) is `communication` whatever
    /// its scope (module docs).
    pub fn kernel_stage(&mut self, kernel_name: &Arc<str>, scope_stage: Option<&'static str>) -> Arc<str> {
        match scoped_stage(kernel_name, scope_stage) {
            Some(s) => Arc::from(s),
            None => self.class_of(kernel_name),
        }
    }

    /// Distinct names classified so far.
    pub fn cached_names(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_classify_real_kernel_names() {
        let r = StageRules::builtin();
        // Names from the fixtures / calibration profile.
        assert_eq!(r.class_of("void pytorch_flash::flash_fwd_kernel<...>"), "attention");
        assert_eq!(r.class_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"), "gemm");
        assert_eq!(r.class_of("nvjet_tst_192x192_64x3_1x2_h_bz_coopB_TNT"), "gemm");
        assert_eq!(r.class_of("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>"), "norm");
        assert_eq!(r.class_of("void at::native::vectorized_elementwise_kernel<4, ...>"), "elementwise");
        assert_eq!(r.class_of("void cunn_SoftMaxForward<4, float>"), "attention");
        assert_eq!(r.class_of("some_unknown_kernel"), "other");
    }

    #[test]
    fn builtin_rules_cover_what_workers_that_announce_nothing_run() {
        let r = StageRules::builtin();
        for (name, class) in [
            // NCCL (a100 fixture), NCCL 2.19+ device kernels, vLLM's custom all-reduce.
            ("ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t(ncclWorkElem)", "communication"),
            ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
            ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>", "communication"),
            // cuDNN convolutions (v100 fixture) and implicit-GEMM fprop (H100 VAE decode).
            ("void cudnn::detail::dgrad_engine<float, 512, 6, 5, 3, 3, 3, false>", "conv"),
            ("void cudnn::cnn::wgrad_alg0_engine<float, 128, 6, 7, 3, 3, 5, false, 512>", "conv"),
            ("volta_scudnn_128x64_relu_interior_nn_v1", "conv"),
            ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv"),
            ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true>", "conv"),
            // cuDNN batch norm (v100 fixture), layer-norm backward (a100 fixture).
            ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, 512, true, 1>", "norm"),
            ("void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 512, true, 1>", "norm"),
            ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<float, float>", "norm"),
            // Blackwell batched GEMM, MoE routing, rotary embeddings.
            ("bmm_E4m3E4m3_Fp32_t128x128x128_tmem_cga1x1x1", "gemm"),
            ("fused_moe_kernel", "moe"),
            ("void vllm::moe::topkGatingSoftmax<8, 128>", "moe"),
            ("void vllm::rotary_embedding_kernel<c10::BFloat16, true>", "attention"),
            // torch.compile (Inductor) Triton kernels, by the ops their names list.
            ("triton_poi_fused_add_mul_0", "elementwise"),
            ("triton_red_fused_native_layer_norm_0", "norm"),
            ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "norm"),
            ("triton_per_fused__softmax_1", "attention"),
            ("triton_tem_fused_mm_0", "gemm"),
            ("triton_tem_fused_convolution_0", "conv"),
            // FBGEMM embeddings, fused optimizers, CUB sorts (a100 fixture).
            ("void split_embedding_codegen_forward_unweighted_kernel<float, float, float, long, 2ul>", "embedding"),
            ("void multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>, float>", "optimizer"),
            ("void cub::DeviceRadixSortOnesweepKernel<cub::DeviceRadixSortPolicy<long, int, int>::Policy800>", "sort"),
            ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 2, 128, 1>", "elementwise"),
            // A type conversion is not a convolution; a lambda is not an optimizer.
            ("void at::native::vectorized_elementwise_kernel<4, at::native::convert_kernel>", "elementwise"),
            ("void at::native::unrolled_elementwise_kernel<at::native::{lambda()#1}>", "elementwise"),
        ] {
            assert_eq!(r.class_of(name), class, "{name}");
        }
    }

    #[test]
    fn overrides_come_first_and_bad_toml_is_an_error() {
        let r = StageRules::with_overrides("[[rule]]\nclass = \"custom\"\ncontains = [\"MyGemm\"]\n").unwrap();
        assert_eq!(r.class_of("mygemm_v2"), "custom");
        assert_eq!(r.class_of("cutlass_x"), "gemm");
        let e = StageRules::with_overrides("[[rule]\n").unwrap_err();
        assert!(e.to_string().starts_with("stage rules:"));
    }

    #[test]
    fn scope_decides_before_name_and_names_are_cached() {
        let mut c = Classifier::default();
        let n: Arc<str> = Arc::from("sm90_xmma_gemm_bf16");
        assert_eq!(&*c.kernel_stage(&n, Some("ffn")), "ffn");
        assert_eq!(&*c.kernel_stage(&n, None), "gemm");
        assert_eq!(&*c.kernel_stage(&n, None), "gemm");
        assert_eq!(c.cached_names(), 1);
    }

    #[test]
    fn collectives_are_communication_even_inside_a_stage_scope() {
        let mut c = Classifier::default();
        for name in [
            "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)",
            "void ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)",
            "rcclGenericKernel<1, false>",
        ] {
            let n: Arc<str> = Arc::from(name);
            assert_eq!(&*c.kernel_stage(&n, Some("attention.spatial")), COMMUNICATION, "{name}");
        }
        assert_eq!(&*c.kernel_stage(&Arc::from("ncclDevKernel_AllGather_RING_LL(x)"), None), COMMUNICATION);
        // Not a prefix match: a kernel that merely mentions nccl keeps its scope's stage.
        assert_eq!(&*c.kernel_stage(&Arc::from("my_nccl_free_gemm"), Some("ffn")), "ffn");
    }
}

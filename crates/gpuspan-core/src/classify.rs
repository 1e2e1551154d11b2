//! Stage classification: which stage a GPU event belongs to.
//!
//! Order (DESIGN.md "Stage classification"):
//! 1. the innermost enclosing scope whose name is a stage (`attention.spatial`,
//!    `attention.temporal`, `attention.cross`, `ffn`, `norm`, `vae.decode`) decides;
//! 2. otherwise the kernel-name rules (data: `rules/stages.toml`, overridable) give a class:
//!    `attention`, `gemm`, `norm`, `elementwise`, else `other`;
//! 3. memcpy and memset are `memcpy` / `memset` by kind.
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
#[derive(Debug, Default)]
pub struct Classifier {
    rules: StageRules,
    cache: HashMap<Arc<str>, Arc<str>>,
}

impl Classifier {
    /// A classifier over `rules`.
    pub fn new(rules: StageRules) -> Classifier {
        Classifier { rules, cache: HashMap::new() }
    }

    /// Class of `kernel_name` by the name rules, computed once per distinct name.
    pub fn class_of(&mut self, kernel_name: &Arc<str>) -> Arc<str> {
        if let Some(c) = self.cache.get(kernel_name) {
            return c.clone();
        }
        let c: Arc<str> = Arc::from(self.rules.class_of(kernel_name));
        self.cache.insert(kernel_name.clone(), c.clone());
        c
    }

    /// Stage of a kernel: `scope_stage` (the innermost stage scope around its launch) when
    /// there is one, else the name class.
    pub fn kernel_stage(&mut self, kernel_name: &Arc<str>, scope_stage: Option<&'static str>) -> Arc<str> {
        match scope_stage {
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
}

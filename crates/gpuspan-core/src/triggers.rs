//! Capture triggers read from the `GPUSPAN_RULES` file (the same TOML file as the stage
//! rules' `[[rule]]` overrides): per-request rules, anomaly rules and the flight recorder.
//! Pure: parsing, matching and the anomaly detector; the agent acts on the outcomes.
//!
//! ```toml
//! # A request matching every condition given is captured fine, whole.
//! [[capture.request]]
//! name = "gateway-marked"
//! baggage = { "gpuspan.capture" = "fine" }      # W3C baggage entries of the request
//!
//! [[capture.request]]
//! name = "gold-sample"
//! sampled = true                                # the traceparent's sampled flag
//! attributes = { tenant = "gold" }              # request attributes (model, experiment, …)
//! ratio = 0.01                                  # of those, 1 % (by trace id: every worker
//!                                               # a request touches decides alike)
//!
//! # A step that fires one of these opens a window on the next `capture_steps` steps (and
//! # exports the flight recorder's past steps).
//! [[capture.anomaly]]
//! name = "slow-step"
//! step_over_ms = 900.0                          # fixed threshold
//! step_over_p99 = true                          # over the rolling p99 of its model
//! p99_window = 200                              # steps in the rolling window
//! p99_min_samples = 50                          # no p99 verdict before this many
//! cuda_error = true                             # a failed launch / copy / set / alloc call
//! oom = true                                    # CUDA_ERROR_OUT_OF_MEMORY on the API
//! capture_steps = 5
//!
//! [capture]
//! flight_recorder_steps = 8                     # or GPUSPAN_FLIGHT_RECORDER=8
//! ```
//!
//! CUDA errors and OOMs are seen through CUPTI's API callbacks, so those two conditions act
//! only while CUPTI is subscribed (flight recorder on, or a window open); coarse mode alone
//! sees no API calls.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Most steps an anomaly window captures.
pub const MAX_CAPTURE_STEPS: u64 = 10_000;
/// Most steps the flight recorder keeps.
pub const MAX_FLIGHT_RECORDER_STEPS: u64 = 1_000;

/// The triggers of a rules file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Triggers {
    /// Per-request rules, in file order.
    pub request: Vec<RequestRule>,
    /// Anomaly rules, in file order.
    pub anomaly: Vec<AnomalyRule>,
    /// Steps the flight recorder keeps (`[capture] flight_recorder_steps`); `None`: off.
    pub flight_recorder_steps: Option<u64>,
}

/// A per-request rule: a request matching every condition given is captured fine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRule {
    /// Name shown in logs and as the window's trigger.
    #[serde(default)]
    pub name: Option<String>,
    /// The traceparent's sampled flag must be this.
    #[serde(default)]
    pub sampled: Option<bool>,
    /// Baggage entries that must all be present with these values.
    #[serde(default)]
    pub baggage: BTreeMap<String, String>,
    /// Request attributes (`gpuspan.request … k=v`) that must all be present with these
    /// values.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Fraction of matching requests captured, 0..=1 (default 1), chosen by trace id.
    #[serde(default = "one")]
    pub ratio: f64,
}

fn one() -> f64 {
    1.0
}

/// An anomaly rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRule {
    /// Name shown in logs and as the window's trigger.
    #[serde(default)]
    pub name: Option<String>,
    /// A step longer than this many ms fires.
    #[serde(default)]
    pub step_over_ms: Option<f64>,
    /// A step longer than the rolling p99 of its model's previous steps fires.
    #[serde(default)]
    pub step_over_p99: bool,
    /// Steps in the rolling p99 window (default 200).
    #[serde(default = "default_p99_window")]
    pub p99_window: usize,
    /// Steps needed before the p99 condition may fire (default 50).
    #[serde(default = "default_p99_min")]
    pub p99_min_samples: usize,
    /// A failed GPU-work or allocation API call fires.
    #[serde(default)]
    pub cuda_error: bool,
    /// `CUDA_ERROR_OUT_OF_MEMORY` on the API fires.
    #[serde(default)]
    pub oom: bool,
    /// Steps to capture after it fires (default 5).
    #[serde(default = "default_capture_steps")]
    pub capture_steps: u64,
}

fn default_p99_window() -> usize {
    200
}
fn default_p99_min() -> usize {
    50
}
fn default_capture_steps() -> u64 {
    5
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    capture: Section,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    request: Vec<RequestRule>,
    #[serde(default)]
    anomaly: Vec<AnomalyRule>,
    #[serde(default)]
    flight_recorder_steps: Option<u64>,
}

impl Triggers {
    /// Parses the `[capture]` part of a rules file (other tables, like the stage `[[rule]]`s,
    /// are ignored). Errors name the rule and what is wrong.
    pub fn parse(toml_text: &str) -> Result<Triggers, String> {
        let f: File = toml::from_str(toml_text).map_err(|e| e.to_string().trim().to_string())?;
        let c = f.capture;
        for (i, r) in c.request.iter().enumerate() {
            if !(0.0..=1.0).contains(&r.ratio) {
                return Err(format!("capture.request[{i}]: ratio {} is not within 0..=1", r.ratio));
            }
        }
        for (i, r) in c.anomaly.iter().enumerate() {
            if r.step_over_ms.is_none() && !r.step_over_p99 && !r.cuda_error && !r.oom {
                return Err(format!(
                    "capture.anomaly[{i}]: no condition (step_over_ms, step_over_p99, cuda_error, oom)"
                ));
            }
            if r.step_over_ms.is_some_and(|t| t.is_nan() || t <= 0.0) {
                return Err(format!("capture.anomaly[{i}]: step_over_ms must be positive"));
            }
            if r.capture_steps == 0 || r.capture_steps > MAX_CAPTURE_STEPS {
                return Err(format!("capture.anomaly[{i}]: capture_steps must be within 1..={MAX_CAPTURE_STEPS}"));
            }
            if r.p99_window == 0 || r.p99_min_samples == 0 || r.p99_min_samples > r.p99_window {
                return Err(format!("capture.anomaly[{i}]: need 1 ≤ p99_min_samples ≤ p99_window"));
            }
        }
        if let Some(n) = c.flight_recorder_steps {
            if n == 0 || n > MAX_FLIGHT_RECORDER_STEPS {
                return Err(format!("capture.flight_recorder_steps must be within 1..={MAX_FLIGHT_RECORDER_STEPS}"));
            }
        }
        Ok(Triggers { request: c.request, anomaly: c.anomaly, flight_recorder_steps: c.flight_recorder_steps })
    }

    /// No trigger at all.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.anomaly.is_empty() && self.flight_recorder_steps.is_none()
    }
}

/// What a request rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Trace id (the traceparent's, or the one made for the request).
    pub trace_id: &'a [u8; 16],
    /// The traceparent's sampled flag.
    pub sampled: bool,
    /// Baggage entries, decoded.
    pub baggage: &'a [(String, String)],
    /// Request attributes, decoded.
    pub attributes: &'a [(String, String)],
}

/// FNV-1a of a trace id mapped to [0, 1): the same verdict on every worker for one request.
fn trace_fraction(trace_id: &[u8; 16]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in trace_id {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl RequestRule {
    /// Whether `req` matches every condition, and falls within `ratio`.
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        let has = |list: &[(String, String)], k: &str, v: &str| list.iter().any(|(a, b)| a == k && b == v);
        self.sampled.is_none_or(|s| s == req.sampled)
            && self.baggage.iter().all(|(k, v)| has(req.baggage, k, v))
            && self.attributes.iter().all(|(k, v)| has(req.attributes, k, v))
            && (self.ratio >= 1.0 || trace_fraction(req.trace_id) < self.ratio)
    }

    /// The rule's name, or `request[i]`.
    pub fn label(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("request[{i}]"))
    }
}

/// An anomaly that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// Index of the rule in the file.
    pub rule: usize,
    /// Its label (`name`, or `anomaly[i]`).
    pub label: String,
    /// Why, in words (`step 17 of stdit took 1203.4 ms > p99 612.0 ms of 200 steps`).
    pub reason: String,
    /// Steps to capture.
    pub capture_steps: u64,
}

/// Evaluates the anomaly rules over finished steps and API error counts.
#[derive(Debug)]
pub struct AnomalyDetector {
    rules: Vec<AnomalyRule>,
    /// Per rule (with p99) and model: the previous step durations, ns. The models are
    /// bounded ([`Self::models`]): past the limit, steps of a new model share the
    /// `other` history.
    history: HashMap<(usize, Arc<str>), VecDeque<u64>>,
    /// The models with a history of their own
    /// ([`crate::cardinality::DEFAULT_MAX_MODELS`] unless [`Self::with_max_models`]).
    models: crate::cardinality::LabelValues,
    errors_seen: u64,
    ooms_seen: u64,
}

impl Default for AnomalyDetector {
    fn default() -> Self {
        AnomalyDetector::new(Vec::new())
    }
}

impl AnomalyDetector {
    /// A detector for `rules`.
    pub fn new(rules: Vec<AnomalyRule>) -> AnomalyDetector {
        AnomalyDetector {
            rules,
            history: HashMap::new(),
            models: crate::cardinality::LabelValues::new(crate::cardinality::DEFAULT_MAX_MODELS),
            errors_seen: 0,
            ooms_seen: 0,
        }
    }

    /// Keeps a step history for at most `max` models (`GPUSPAN_MAX_MODELS`); the steps of
    /// later models go to one shared `other` history.
    pub fn with_max_models(mut self, max: usize) -> AnomalyDetector {
        self.models = crate::cardinality::LabelValues::new(max);
        self
    }

    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn label(&self, i: usize) -> String {
        self.rules[i].name.clone().unwrap_or_else(|| format!("anomaly[{i}]"))
    }

    /// One finished step of `model`, `dur_ns` long: the first rule it fires, if any. Every
    /// rule with `step_over_p99` records the step in its model's history either way.
    pub fn observe_step(&mut self, model: &Arc<str>, index: u64, dur_ns: u64) -> Option<Anomaly> {
        let mut fired = None;
        for i in 0..self.rules.len() {
            let r = &self.rules[i];
            let ms = dur_ns as f64 / 1e6;
            let mut why = None;
            if let Some(t) = r.step_over_ms {
                if ms > t {
                    why = Some(format!("step {index} of {model} took {ms:.1} ms > {t:.1} ms"));
                }
            }
            if r.step_over_p99 {
                let (window, min) = (r.p99_window, r.p99_min_samples);
                let key = self.models.fold(model);
                let h = self.history.entry((i, key)).or_default();
                if why.is_none() && h.len() >= min {
                    let mut v: Vec<f64> = h.iter().map(|&d| d as f64).collect();
                    v.sort_unstable_by(f64::total_cmp);
                    let p99 = crate::stats::nearest_rank(&v, 99);
                    if dur_ns as f64 > p99 {
                        why = Some(format!(
                            "step {index} of {model} took {ms:.1} ms > p99 {:.1} ms of its last {} steps",
                            p99 / 1e6,
                            v.len()
                        ));
                    }
                }
                h.push_back(dur_ns);
                while h.len() > window {
                    h.pop_front();
                }
            }
            if fired.is_none() {
                if let Some(reason) = why {
                    fired = Some(Anomaly { rule: i, label: self.label(i), reason, capture_steps: self.rules[i].capture_steps });
                }
            }
        }
        fired
    }

    /// The agent's running totals of failed API calls and of OOMs among them: fires the first
    /// `cuda_error` / `oom` rule when a total grew since the last call.
    pub fn observe_api_errors(&mut self, errors_total: u64, ooms_total: u64) -> Option<Anomaly> {
        let (new_errors, new_ooms) = (errors_total > self.errors_seen, ooms_total > self.ooms_seen);
        self.errors_seen = errors_total;
        self.ooms_seen = ooms_total;
        for (i, r) in self.rules.iter().enumerate() {
            let why = if r.oom && new_ooms {
                Some("CUDA_ERROR_OUT_OF_MEMORY on the API")
            } else if r.cuda_error && new_errors {
                Some("a CUDA API call failed")
            } else {
                None
            };
            if let Some(w) = why {
                return Some(Anomaly { rule: i, label: self.label(i), reason: w.into(), capture_steps: r.capture_steps });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[rule]]
        class = "attention"
        contains = ["my_attn"]

        [[capture.request]]
        name = "marked"
        baggage = { "gpuspan.capture" = "fine" }

        [[capture.request]]
        sampled = true
        attributes = { tenant = "gold" }
        ratio = 0.25

        [[capture.anomaly]]
        name = "slow"
        step_over_p99 = true
        p99_window = 20
        p99_min_samples = 10
        capture_steps = 3

        [capture]
        flight_recorder_steps = 4
    "#;

    #[test]
    fn triggers_parse_with_stage_rules_in_the_same_file() {
        let t = Triggers::parse(FILE).unwrap();
        assert_eq!(t.request.len(), 2);
        assert_eq!(t.request[0].baggage["gpuspan.capture"], "fine");
        assert_eq!(t.request[1].ratio, 0.25);
        assert_eq!(t.anomaly[0].capture_steps, 3);
        assert_eq!(t.flight_recorder_steps, Some(4));
        assert!(Triggers::parse("").unwrap().is_empty());
        // The stage rules of the same file still parse on their own.
        assert!(crate::classify::StageRules::with_overrides(FILE).is_ok());
    }

    #[test]
    fn triggers_errors_name_the_rule() {
        for (text, needle) in [
            ("[[capture.request]]\nratio = 2.0", "capture.request[0]: ratio"),
            ("[[capture.anomaly]]\ncapture_steps = 3", "no condition"),
            ("[[capture.anomaly]]\noom = true\ncapture_steps = 0", "capture_steps"),
            ("[[capture.anomaly]]\nstep_over_ms = -1.0", "positive"),
            ("[capture]\nflight_recorder_steps = 0", "flight_recorder_steps"),
            ("[[capture.request]]\nbagage = {}", "unknown field"),
            ("[capture]\nflight = 3", "unknown field"),
        ] {
            let e = Triggers::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    fn facts<'a>(tid: &'a [u8; 16], sampled: bool, bag: &'a [(String, String)], attrs: &'a [(String, String)]) -> RequestFacts<'a> {
        RequestFacts { trace_id: tid, sampled, baggage: bag, attributes: attrs }
    }

    #[test]
    fn request_rules_match_baggage_attributes_sampled_and_ratio() {
        let t = Triggers::parse(FILE).unwrap();
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let tid = [7u8; 16];
        let marked = [kv("gpuspan.capture", "fine"), kv("other", "x")];
        assert!(t.request[0].matches(&facts(&tid, false, &marked, &[])));
        assert!(!t.request[0].matches(&facts(&tid, false, &[kv("gpuspan.capture", "coarse")], &[])));
        assert!(!t.request[0].matches(&facts(&tid, false, &[], &[kv("gpuspan.capture", "fine")])), "baggage, not attributes");
        // Ratio 0.25 over many trace ids: about a quarter, and the same verdict each time.
        let gold = [kv("tenant", "gold")];
        let mut hits = 0;
        for i in 0u32..4000 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let m = t.request[1].matches(&facts(&id, true, &[], &gold));
            assert_eq!(m, t.request[1].matches(&facts(&id, true, &[], &gold)));
            hits += m as u32;
            assert!(!t.request[1].matches(&facts(&id, false, &[], &gold)), "unsampled never");
        }
        assert!((800..1200).contains(&hits), "{hits} of 4000 at ratio 0.25");
    }

    #[test]
    fn anomaly_fixed_threshold_and_rolling_p99() {
        let m: Arc<str> = Arc::from("stdit");
        let mut d = AnomalyDetector::new(Triggers::parse(FILE).unwrap().anomaly);
        // 9 steps: below the minimum sample count, even a huge one does not fire.
        for i in 0..9 {
            assert_eq!(d.observe_step(&m, i, if i == 5 { 9_000_000_000 } else { 500_000_000 + i * 1000 }), None);
        }
        // Now 10 samples; p99 of them is the 9 s outlier: an ordinary step does not fire.
        assert_eq!(d.observe_step(&m, 9, 500_100_000), None);
        // Push the outlier out of the 20-step window, then a 700 ms step fires.
        for i in 10..30 {
            assert_eq!(d.observe_step(&m, i, 500_000_000 + (i % 3) * 1_000_000), None, "step {i}");
        }
        let a = d.observe_step(&m, 30, 700_000_000).expect("fires");
        assert_eq!((a.rule, a.label.as_str(), a.capture_steps), (0, "slow", 3));
        assert!(a.reason.contains("step 30 of stdit took 700.0 ms > p99 502.0 ms of its last 20 steps"), "{}", a.reason);
        // Another model has its own history.
        assert_eq!(d.observe_step(&Arc::from("wan2.1"), 0, 9_000_000_000), None);
        let mut fixed = AnomalyDetector::new(
            Triggers::parse("[[capture.anomaly]]\nstep_over_ms = 600.0\n[[capture.anomaly]]\noom = true\ncuda_error = true").unwrap().anomaly,
        );
        assert_eq!(fixed.observe_step(&m, 1, 599_000_000), None);
        assert!(fixed.observe_step(&m, 2, 601_000_000).unwrap().reason.contains("> 600.0 ms"));
        assert_eq!(fixed.observe_api_errors(0, 0), None);
        assert_eq!(fixed.observe_api_errors(2, 1).unwrap().reason, "CUDA_ERROR_OUT_OF_MEMORY on the API");
        assert_eq!(fixed.observe_api_errors(2, 1), None, "only growth fires");
        assert_eq!(fixed.observe_api_errors(3, 1).unwrap().reason, "a CUDA API call failed");
    }

    #[test]
    fn anomaly_histories_are_bounded_by_model() {
        let rules = Triggers::parse(FILE).unwrap().anomaly;
        let mut d = AnomalyDetector::new(rules).with_max_models(2);
        // 10 000 distinct models, 12 steps each: two keep their own history, the rest share
        // `other`'s (one per p99 rule).
        for m in 0..10_000u32 {
            let model: Arc<str> = Arc::from(format!("m{m}"));
            for i in 0..12 {
                d.observe_step(&model, i, 500_000_000);
            }
        }
        let models: std::collections::BTreeSet<&str> = d.history.keys().map(|(_, m)| &**m).collect();
        assert_eq!(models.into_iter().collect::<Vec<_>>(), ["m0", "m1", "other"]);
        // A folded model's slow step is judged against the shared history.
        let a = d.observe_step(&Arc::from("m9999"), 12, 900_000_000).expect("fires");
        assert!(a.reason.contains("step 12 of m9999"), "{}", a.reason);
    }
}

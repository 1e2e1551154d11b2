//! Simulator configuration read from the environment.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `GPUSPAN_SIM_CLOCK` | `virtual` \| `real` | `virtual` |
//! | `GPUSPAN_SIM_CUPTI_VERSION` | `12` \| `13` | `12` |
//! | `GPUSPAN_SIM_FAULT` | comma list of `no_device`, `cupti_subscribed`, `drop_records` | none |
//! | `GPUSPAN_SIM_DROP_EVERY` | N ≥ 1: with `drop_records`, every Nth record is dropped | `10` |
//!
//! A bad value gets one warning on stderr naming the variable and the default used.

/// How the host clock advances (see [`crate::sim::clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Deterministic: advanced only by driver calls and explicit advances.
    Virtual,
    /// `CLOCK_REALTIME`; synchronizing calls sleep until the simulated end.
    Real,
}

/// Which CUPTI ABI the simulator claims (record layouts, `cuptiGetVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CuptiAbi {
    /// CUPTI 12.9, API version 28: Kernel9 / Memcpy6 / Memset4.
    V12,
    /// CUPTI 13.5, API version 130500: Kernel13 / Memcpy7 / Memset5.
    V13,
}

impl CuptiAbi {
    /// The value `cuptiGetVersion` reports (CUPTI-NOTES header line).
    pub fn api_version(self) -> u32 {
        match self {
            CuptiAbi::V12 => 28,
            CuptiAbi::V13 => 130_500,
        }
    }
}

/// Injected faults (`GPUSPAN_SIM_FAULT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// `cuInit` → 100, `cuDeviceGetCount` → 0, `nvmlInit_v2` → 9.
    pub no_device: bool,
    /// Every `cuptiSubscribe` → 39 (another tool holds the subscription).
    pub cupti_subscribed: bool,
    /// Every Nth activity record is dropped and counted.
    pub drop_records: bool,
}

/// Everything read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub clock: ClockMode,
    pub cupti: CuptiAbi,
    pub faults: Faults,
    /// With `drop_records`: drop every Nth record.
    pub drop_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clock: ClockMode::Virtual,
            cupti: CuptiAbi::V12,
            faults: Faults::default(),
            drop_every: 10,
        }
    }
}

fn warn(var: &str, value: &str, default: &str) {
    eprintln!("gpuspan-simgpu: ignoring {var}={value:?}; using the default {default}");
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Config {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (testable without touching the environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Config {
        let mut cfg = Config::default();
        if let Some(v) = get("GPUSPAN_SIM_CLOCK") {
            match v.trim() {
                "virtual" | "" => cfg.clock = ClockMode::Virtual,
                "real" => cfg.clock = ClockMode::Real,
                _ => warn("GPUSPAN_SIM_CLOCK", &v, "virtual"),
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_CUPTI_VERSION") {
            match v.trim() {
                "12" | "" => cfg.cupti = CuptiAbi::V12,
                "13" => cfg.cupti = CuptiAbi::V13,
                _ => warn("GPUSPAN_SIM_CUPTI_VERSION", &v, "12"),
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_FAULT") {
            for f in v.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                match f {
                    "no_device" => cfg.faults.no_device = true,
                    "cupti_subscribed" => cfg.faults.cupti_subscribed = true,
                    "drop_records" => cfg.faults.drop_records = true,
                    _ => warn("GPUSPAN_SIM_FAULT", f, "no fault"),
                }
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_DROP_EVERY") {
            match v.trim().parse::<u64>() {
                Ok(n) if n >= 1 => cfg.drop_every = n,
                _ => warn("GPUSPAN_SIM_DROP_EVERY", &v, "10"),
            }
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_variables_and_falls_back_on_bad_values() {
        let env = |k: &str| match k {
            "GPUSPAN_SIM_CLOCK" => Some("real".to_string()),
            "GPUSPAN_SIM_CUPTI_VERSION" => Some("13".to_string()),
            "GPUSPAN_SIM_FAULT" => Some("drop_records, no_device,bogus".to_string()),
            "GPUSPAN_SIM_DROP_EVERY" => Some("0".to_string()),
            _ => None,
        };
        let cfg = Config::from_lookup(env);
        assert_eq!(cfg.clock, ClockMode::Real);
        assert_eq!(cfg.cupti, CuptiAbi::V13);
        assert!(cfg.faults.drop_records && cfg.faults.no_device && !cfg.faults.cupti_subscribed);
        assert_eq!(cfg.drop_every, 10);
        assert_eq!(Config::from_lookup(|_| None), Config::default());
    }
}

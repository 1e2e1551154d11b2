//! Simulator configuration read from the environment.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `GPUSPAN_SIM_CLOCK` | `virtual` \| `real` | `virtual` |
//! | `GPUSPAN_SIM_CUPTI_VERSION` | a CUPTI release `12.0` … `12.9`, `13.0` … `13.5` (`gpuspan_cupti::layouts::RELEASES`); `12` = `12.9`, `13` = `13.5` | `12.9` |
//! | `GPUSPAN_SIM_FAULT` | comma list of `no_device`, `cupti_subscribed`, `drop_records`, `slow_cupti`, `capture_invalidated`, `no_multi_subscriber` | none |
//! | `GPUSPAN_SIM_DROP_EVERY` | N ≥ 1: with `drop_records`, every Nth record is dropped | `10` |
//! | `GPUSPAN_SIM_SPEED` | F > 0 (up to 3 decimals): with `GPUSPAN_SIM_CLOCK=real`, the simulated H100's clock runs F times as fast as wall time (soaks); no effect on the virtual clock | `1` |
//! | `GPUSPAN_SIM_NVML_MIG` | comma list of NVML indices of devices in MIG mode, each with [`super::device::MIG_INSTANCES`] instances (`MIG-…` UUIDs: [`super::device::mig_uuid`]); `CUDA_VISIBLE_DEVICES=MIG-…` then runs the process on that instance's GPU | none |
//! | `GPUSPAN_SIM_GPU_CLOCK_PPM` | an integer from -100000 to 100000: the GPU's event timer runs this many parts per million fast (negative: slow) against the host clock, so `cuEventElapsedTime` reports intervals that much longer (a real GPU's timer and the host's `CLOCK_REALTIME` disagree by tens of ppm; exaggerated values make a day's drift show in seconds) | `0` |
//!
//! A bad value gets one warning on stderr naming the variable and the default used, except
//! an unknown CUPTI version, which is an error: [`Config::bad_cupti_version`] makes `cuInit`
//! fail and the replay worker exit, since a test that asked for a layout must not silently
//! run another.

/// How the host clock advances (see [`crate::sim::clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Deterministic: advanced only by driver calls and explicit advances.
    Virtual,
    /// `CLOCK_REALTIME`; synchronizing calls sleep until the simulated end.
    Real,
}

/// Which CUPTI release the simulator claims: its `cuptiGetVersion` value and the record
/// struct (and size) it writes for each kind ([`gpuspan_cupti::layouts::Release`], checked
/// against the wheel headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CuptiAbi(pub &'static Release);

impl CuptiAbi {
    /// CUPTI 12.9, API version 28: Kernel9 / Memcpy6 / Memset4 / Overhead3 (the default).
    pub const V12: CuptiAbi = CuptiAbi(&RELEASES[8]);
    /// CUPTI 13.5, API version 130500: Kernel13 / Memcpy7 / Memset5 / Overhead3.
    pub const V13: CuptiAbi = CuptiAbi(&RELEASES[14]);

    /// The value `cuptiGetVersion` reports.
    pub fn api_version(self) -> u32 {
        self.0.api_version
    }

    /// `major.minor`, e.g. `12.0`.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The release named by a `GPUSPAN_SIM_CUPTI_VERSION` value: `12.0` … `13.5`, or `12`
    /// / `13` for 12.9 / 13.5.
    pub fn parse(v: &str) -> Option<CuptiAbi> {
        match v.trim() {
            "" | "12" => Some(CuptiAbi::V12),
            "13" => Some(CuptiAbi::V13),
            other => release_named(other).map(CuptiAbi),
        }
    }
}

use gpuspan_cupti::layouts::{release_named, Release, RELEASES};

/// Injected faults (`GPUSPAN_SIM_FAULT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// `cuInit` → 100, `cuDeviceGetCount` → 0, `nvmlInit_v2` → 9.
    pub no_device: bool,
    /// Every `cuptiSubscribe` → 39 (another tool holds the subscription).
    pub cupti_subscribed: bool,
    /// Every Nth activity record is dropped and counted.
    pub drop_records: bool,
    /// `cuptiGetVersion` takes [`SLOW_CUPTI_MS`] of wall time (a CUPTI that is slow to load,
    /// so that a test can fork while a client of it is starting up).
    pub slow_cupti: bool,
    /// Every `cuStreamEndCapture` finds its capture invalidated, as if another thread had
    /// made a potentially unsafe call in GLOBAL mode during it: 901 and no graph.
    pub capture_invalidated: bool,
    /// The driver is older than r610: `cuptiSubscribe_v2` asking for multiple subscribers
    /// returns 39 even with nobody subscribed (`gpuspan_cupti::multi_subscriber`).
    pub no_multi_subscriber: bool,
}

/// How long `cuptiGetVersion` sleeps under the `slow_cupti` fault, ms.
pub const SLOW_CUPTI_MS: u64 = 400;

/// Everything read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub clock: ClockMode,
    pub cupti: CuptiAbi,
    pub faults: Faults,
    /// With `drop_records`: drop every Nth record.
    pub drop_every: u64,
    /// `GPUSPAN_SIM_CUPTI_VERSION` named no known release (an error: see the module docs).
    pub bad_cupti_version: bool,
    /// `GPUSPAN_SIM_SPEED` × 1000 (an integer so the configuration stays `Eq`); 1000 is
    /// wall-time speed.
    pub speed_milli: u64,
    /// `GPUSPAN_SIM_NVML_DEVICES`: how many H100s NVML reports on the node (1 … 8,
    /// default 1). Only the process's own device (see `own_nvml_index`) does its work.
    pub nvml_devices: u32,
    /// `GPUSPAN_SIM_DEVICES`: how many CUDA devices this process sees (ordinals 0 …
    /// `devices − 1`, 1 … 8, default 1), each with its own primary context, streams,
    /// events and timeline. CUDA ordinal `d` is NVML device `own_nvml_index + d`
    /// ([`Config::nvml_index`]); NVML lists at least that many.
    pub devices: u32,
    /// The NVML index of the device this process runs on: its CUDA device 0, which
    /// `CUDA_VISIBLE_DEVICES` names (first entry: an index, or a `GPU-` UUID prefix of a
    /// simulated device); 0 when unset or not one of the node's devices.
    pub own_nvml_index: u32,
    /// `GPUSPAN_SIM_GPU_CLOCK_PPM`: how fast the GPU's event timer runs against the host
    /// clock, parts per million.
    pub gpu_clock_ppm: i64,
    /// `GPUSPAN_SIM_NVML_MIG`: bit `i` set when NVML device `i` is in MIG mode.
    pub mig_devices: u32,
}

impl Config {
    /// The NVML index of CUDA device `ordinal` of this process.
    pub fn nvml_index(&self, ordinal: u32) -> u32 {
        self.own_nvml_index + ordinal
    }

    /// The CUDA ordinal of NVML device `index` when it is one of this process's devices.
    pub fn cuda_ordinal(&self, index: u32) -> Option<u32> {
        index.checked_sub(self.own_nvml_index).filter(|d| *d < self.devices)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clock: ClockMode::Virtual,
            cupti: CuptiAbi::V12,
            faults: Faults::default(),
            drop_every: 10,
            bad_cupti_version: false,
            speed_milli: 1000,
            gpu_clock_ppm: 0,
            mig_devices: 0,
            nvml_devices: 1,
            devices: 1,
            own_nvml_index: 0,
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
            match CuptiAbi::parse(&v) {
                Some(abi) => cfg.cupti = abi,
                None => {
                    eprintln!(
                        "gpuspan-simgpu: GPUSPAN_SIM_CUPTI_VERSION={v:?} is not a CUPTI release the simulator knows (12.0 … 12.6, 12.8, 12.9, 13.0 … 13.5)"
                    );
                    cfg.bad_cupti_version = true;
                }
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_FAULT") {
            for f in v.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                match f {
                    "no_device" => cfg.faults.no_device = true,
                    "cupti_subscribed" => cfg.faults.cupti_subscribed = true,
                    "drop_records" => cfg.faults.drop_records = true,
                    "slow_cupti" => cfg.faults.slow_cupti = true,
                    "capture_invalidated" => cfg.faults.capture_invalidated = true,
                    "no_multi_subscriber" => cfg.faults.no_multi_subscriber = true,
                    _ => warn("GPUSPAN_SIM_FAULT", f, "no fault"),
                }
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_SPEED") {
            match v.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && (0.001..=1_000_000.0).contains(&f) => cfg.speed_milli = (f * 1000.0).round() as u64,
                _ => warn("GPUSPAN_SIM_SPEED", &v, "1"),
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_GPU_CLOCK_PPM") {
            match v.trim().parse::<i64>() {
                Ok(ppm) if (-100_000..=100_000).contains(&ppm) => cfg.gpu_clock_ppm = ppm,
                _ => warn("GPUSPAN_SIM_GPU_CLOCK_PPM", &v, "0"),
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_NVML_DEVICES") {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=super::device::MAX_NODE_DEVICES).contains(&n) => cfg.nvml_devices = n,
                _ => warn("GPUSPAN_SIM_NVML_DEVICES", &v, "1"),
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_NVML_MIG") {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part.parse::<u32>() {
                    Ok(i) if i < cfg.nvml_devices => cfg.mig_devices |= 1 << i,
                    _ => warn("GPUSPAN_SIM_NVML_MIG", &v, "no MIG device"),
                }
            }
        }
        if let Some(first) = get("CUDA_VISIBLE_DEVICES").and_then(|v| v.split(',').next().map(|s| s.trim().to_string())) {
            let by_index = first.parse::<u32>().ok();
            let by_uuid = (0..cfg.nvml_devices).find(|i| first.len() >= 5 && super::device::uuid(*i).starts_with(first.as_str()));
            // A MIG instance runs on its parent GPU.
            let by_mig = (0..cfg.nvml_devices).filter(|i| cfg.mig_devices & (1 << i) != 0).find(|i| {
                first.len() >= 5 && (0..super::device::MIG_INSTANCES).any(|j| super::device::mig_uuid(*i, j).starts_with(first.as_str()))
            });
            if let Some(i) = by_index.or(by_uuid).or(by_mig).filter(|i| *i < cfg.nvml_devices) {
                cfg.own_nvml_index = i;
            }
        }
        if let Some(v) = get("GPUSPAN_SIM_DEVICES") {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=super::device::MAX_NODE_DEVICES).contains(&n) => cfg.devices = n,
                _ => warn("GPUSPAN_SIM_DEVICES", &v, "1"),
            }
        }
        // The process's devices are NVML devices own … own + devices − 1.
        cfg.own_nvml_index = cfg.own_nvml_index.min(super::device::MAX_NODE_DEVICES - cfg.devices);
        cfg.nvml_devices = cfg.nvml_devices.max(cfg.own_nvml_index + cfg.devices);
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
            "GPUSPAN_SIM_FAULT" => Some("drop_records, no_device,bogus,capture_invalidated".to_string()),
            "GPUSPAN_SIM_DROP_EVERY" => Some("0".to_string()),
            "GPUSPAN_SIM_SPEED" => Some("12.5".to_string()),
            _ => None,
        };
        let cfg = Config::from_lookup(env);
        assert_eq!(cfg.clock, ClockMode::Real);
        assert_eq!(cfg.cupti, CuptiAbi::V13);
        assert!(cfg.faults.drop_records && cfg.faults.no_device && !cfg.faults.cupti_subscribed);
        assert!(cfg.faults.capture_invalidated && !cfg.faults.slow_cupti);
        assert_eq!(cfg.drop_every, 10);
        assert_eq!(cfg.speed_milli, 12_500);
        for bad in ["0", "-2", "fast", "inf"] {
            let c = Config::from_lookup(|k| (k == "GPUSPAN_SIM_SPEED").then(|| bad.to_string()));
            assert_eq!(c.speed_milli, 1000, "{bad}");
        }
        assert_eq!(Config::from_lookup(|_| None), Config::default());
    }

    #[test]
    fn cupti_versions_by_release_and_unknown_ones_are_errors() {
        let with = |v: &str| {
            let v = v.to_string();
            Config::from_lookup(move |k| (k == "GPUSPAN_SIM_CUPTI_VERSION").then(|| v.clone()))
        };
        assert_eq!(with("12.0").cupti.api_version(), 18);
        assert_eq!(with("12.3").cupti.api_version(), 21);
        assert_eq!(with("12.4").cupti.name(), "12.4");
        assert_eq!(with("12").cupti, CuptiAbi::V12);
        assert_eq!(CuptiAbi::V12.name(), "12.9");
        assert_eq!(CuptiAbi::V13.name(), "13.5");
        for bad in ["12.7", "11.8", "thirteen"] {
            assert!(with(bad).bad_cupti_version, "{bad}");
        }
        assert!(!with("13.0").bad_cupti_version);
    }
}

//! NVML: the `gpu_*` gauges ([`start_sampler`]) and the device name / driver version of the
//! OTel resource ([`device_info`]).
//!
//! Through `nvml-wrapper`, which `dlopen`s [`NVML_LIB`] (the dynamic loader's search, so
//! `LD_LIBRARY_PATH` decides between the real driver's library and the simulated H100's)
//! and resolves every symbol up front, failing only when a missing one is called
//! (CUPTI-NOTES §7). No NVML library, or `nvmlInit_v2` failing (9 DRIVER_NOT_LOADED on a
//! machine without a driver): the sampler does not start and the `gpu_*` gauges stay
//! absent; one warning says so. A single failing query leaves that gauge as it was.
//!
//! No `unsafe` here; every call into nvml-wrapper runs under `catch_unwind`.

use gpuspan_export::metrics::{GpuSample, Metrics};
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running sampler thread; [`Sampler::stop_until`] ends it (the agent finishing).
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sampler {
    /// Asks the thread to stop (it sleeps with `park_timeout`, so it wakes at once) and waits
    /// for it at most until `until` (an NVML call in progress is not interrupted). Returns
    /// whether it ended.
    pub fn stop_until(self, until: Instant) -> bool {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        while !self.thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ended = self.thread.is_finished();
        if ended {
            let _ = self.thread.join();
        }
        ended
    }

    /// Whether the thread is still sampling.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

/// The NVML soname the driver installs (and the simulated H100 is installed under).
pub const NVML_LIB: &str = "libnvidia-ml.so.1";

/// Shortest sampling period (a zero period would spin).
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Loads and initializes NVML; `Err` says why not (for the warning).
fn open() -> Result<Nvml, String> {
    match catch_unwind(|| Nvml::builder().lib_path(OsStr::new(NVML_LIB)).init()) {
        Ok(Ok(nvml)) => Ok(nvml),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("nvml-wrapper panicked while loading it".into()),
    }
}

/// One reading of device `index`; `None` when its handle cannot be had.
fn sample(nvml: &Nvml, index: u32) -> Option<GpuSample> {
    let dev = nvml.device_by_index(index).ok()?;
    let mem = dev.memory_info().ok();
    Some(GpuSample {
        gpu_index: index,
        utilization_percent: dev.utilization_rates().ok().map(|u| f64::from(u.gpu)),
        memory_used_bytes: mem.as_ref().map(|m| m.used),
        memory_total_bytes: mem.as_ref().map(|m| m.total),
        temperature_celsius: dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
        power_watts: dev.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        sm_clock_mhz: dev.clock_info(Clock::SM).ok().map(f64::from),
    })
}

/// Samples every NVML device now and sets the `gpu_*` gauges of `metrics` (one
/// [`Metrics::set_gpu_sample`] per device). Returns the number of devices sampled.
fn sample_all(nvml: &Nvml, metrics: &Metrics) -> u32 {
    let mut n = 0;
    for index in 0..nvml.device_count().unwrap_or(0) {
        if let Some(s) = sample(nvml, index) {
            metrics.set_gpu_sample(&s);
            n += 1;
        }
    }
    n
}

/// Starts the thread `gpuspan-nvml` that, every `period` (at least 10 ms), reads for every
/// NVML device its utilization (`gpu` %), memory used / total (bytes,
/// `nvmlDeviceGetMemoryInfo_v2`), GPU temperature (°C), power (mW → W) and SM clock (MHz),
/// and hands them to [`Metrics::set_gpu_sample`]. The first sample is taken before this
/// returns. The thread runs until [`Sampler::stop_until`].
///
/// Returns `None`, after one warning saying why and that the `gpu_*` gauges are absent,
/// when NVML cannot be loaded or initialized (or the thread cannot be spawned).
pub fn start_sampler(metrics: Arc<Metrics>, period: Duration) -> Option<Sampler> {
    let nvml = match open() {
        Ok(n) => n,
        Err(why) => {
            crate::log::warn(&format!(
                "NVML unavailable ({NVML_LIB}: {why}); the gpu_* metrics are absent"
            ));
            return None;
        }
    };
    let period = period.max(MIN_PERIOD);
    // First sample here, so the gauges exist as soon as the caller goes on.
    if catch_unwind(AssertUnwindSafe(|| sample_all(&nvml, &metrics))).is_err() {
        crate::log::warn("NVML sampling panicked; the gpu_* metrics are absent");
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("gpuspan-nvml".into())
        .spawn(move || {
            let run = AssertUnwindSafe(|| loop {
                let until = Instant::now() + period;
                while !flag.load(Ordering::Acquire) && Instant::now() < until {
                    std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
                }
                if flag.load(Ordering::Acquire) {
                    break;
                }
                sample_all(&nvml, &metrics);
            });
            if catch_unwind(run).is_err() {
                crate::log::warn("NVML sampling panicked; the gpu_* metrics stop updating");
            }
        });
    match spawned {
        Ok(thread) => Some(Sampler { stop, thread }),
        Err(e) => {
            crate::log::warn(&format!(
                "cannot start the NVML sampler thread ({e}); the gpu_* metrics are absent"
            ));
            None
        }
    }
}

/// Name (`nvmlDeviceGetName`, e.g. `NVIDIA H100 80GB HBM3`) of NVML device 0 and the driver
/// version (`nvmlSystemGetDriverVersion`, e.g. `575.57.08`), for the resource attributes
/// `gpu.device.name` / `gpu.driver.version`. `None`, silently, when NVML is unavailable or
/// either query fails. Loads, initializes and shuts NVML down again on every call.
pub fn device_info() -> Option<(String, String)> {
    catch_unwind(|| {
        let nvml = open().ok()?;
        let name = nvml.device_by_index(0).ok()?.name().ok()?;
        let driver = nvml.sys_driver_version().ok()?;
        Some((name, driver))
    })
    .ok()
    .flatten()
}

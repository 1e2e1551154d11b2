//! NVML: the `gpu_*` gauges ([`start_sampler`]) and the worker's own device for the metric
//! labels and the OTel resource ([`device_info`]).
//!
//! A worker samples only the GPUs it uses: its own device, CUDA device 0 (the one a
//! single-GPU worker runs on), whose NVML index is the `gpu_index` of every metric and the
//! `gpu.device.index` of the resource, and every other device it is seen to use
//! ([`note_cuda_device`]: the device of the current context at each request's begin in
//! coarse mode, the device of each kernel record in fine mode). CUDA device ordinals map to
//! NVML indices through what `CUDA_VISIBLE_DEVICES` makes visible ([`visible_devices`], the
//! CUDA C Programming Guide's rules; all of the node's when it is unset), never to GPUs the
//! worker cannot see.
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

/// `NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX` (nvml.h): NVLink data transmitted, KiB.
const FI_NVLINK_TX_KIB: u32 = 138;
/// Most NVLink links of a GPU (`NVML_NVLINK_MAX_LINKS`, 18 on H100 SXM).
const NVLINK_MAX_LINKS: u32 = 18;

/// Per NVML index: active NVLink links (counted once) and the last TX reading
/// `(bytes, NVML timestamp µs)`, for the `nvlink_bandwidth_gbps` rate.
#[derive(Debug, Default)]
struct NvlinkState {
    links: std::collections::HashMap<u32, u32>,
    last: std::collections::HashMap<u32, (u64, i64)>,
}

/// One NVLink TX reading of a device: the cumulative counter and the rate since the
/// previous reading.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct NvlinkTx {
    /// Bytes transmitted since the driver loaded (NVML's counter, link 0 × active links).
    bytes: Option<u64>,
    /// GB/s since the previous reading; `None` on the first.
    gbps: Option<f64>,
}

impl NvlinkState {
    /// Reads device `dev` (NVML `index`): bytes transmitted so far, and GB/s (1e9 bytes /
    /// s) since the previous call for it. Both `None` for a GPU without active links or
    /// when NVML refuses; `gbps` also `None` on the first call. Each rate is also kept as
    /// an [`NvlinkReading`] for the captures' counter track.
    ///
    /// nvml-wrapper asks `nvmlDeviceGetFieldValues` with `scopeId` 0, so the counter read is
    /// link 0's; NCCL spreads a collective over all of a GPU's NVLinks (NVSwitch systems),
    /// so link 0 × the active links (`nvmlDeviceGetNvLinkState`) stands for the device.
    fn read(&mut self, dev: &nvml_wrapper::Device<'_>, index: u32) -> NvlinkTx {
        let links = *self.links.entry(index).or_insert_with(|| {
            (0..NVLINK_MAX_LINKS).filter(|&l| dev.link_wrapper_for(l).is_active().unwrap_or(false)).count() as u32
        });
        if links == 0 {
            return NvlinkTx::default();
        }
        let Some(now) = Self::tx_bytes(dev, links) else { return NvlinkTx::default() };
        let Some(prev) = self.last.insert(index, now) else { return NvlinkTx { bytes: Some(now.0), gbps: None } };
        let dt_us = now.1 - prev.1;
        let gbps = (dt_us > 0 && now.0 >= prev.0).then(|| (now.0 - prev.0) as f64 / dt_us as f64 / 1000.0);
        if let Some(gbps) = gbps {
            keep_reading(NvlinkReading { index, start_us: prev.1, end_us: now.1, gbps });
        }
        NvlinkTx { bytes: Some(now.0), gbps }
    }

    /// `(bytes, NVML timestamp µs)`: link 0's TX counter (KiB) × 1024 × `links`.
    fn tx_bytes(dev: &nvml_wrapper::Device<'_>, links: u32) -> Option<(u64, i64)> {
        let v = dev.field_values_for(&[nvml_wrapper::structs::device::FieldId(FI_NVLINK_TX_KIB)]).ok()?.into_iter().next()?.ok()?;
        let kib = match v.value.ok()? {
            nvml_wrapper::enums::device::SampleValue::U64(k) => k,
            nvml_wrapper::enums::device::SampleValue::U32(k) => u64::from(k),
            _ => return None,
        };
        Some((kib.saturating_mul(1024).saturating_mul(u64::from(links)), v.timestamp))
    }
}

/// One `nvlink_bandwidth_gbps` rate: NVML device `index` transmitted `gbps` GB/s (1e9
/// bytes/s) on average over `[start_us, end_us]`, the NVML timestamps of two consecutive
/// readings (`nvmlFieldValue_t.timestamp`: CPU time, µs since the Unix epoch, the
/// `CLOCK_REALTIME` domain CUPTI's timestamps are in, CUPTI-NOTES "Timestamps").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NvlinkReading {
    /// NVML device index.
    pub index: u32,
    /// The earlier reading's NVML timestamp, µs.
    pub start_us: i64,
    /// The later reading's NVML timestamp, µs.
    pub end_us: i64,
    /// GB/s over the interval.
    pub gbps: f64,
}

/// Most NVLink readings kept for the captures ([`nvlink_readings`]): 18 hours of one GPU
/// at the 1 s default period, about 1.5 MB. Beyond it the oldest go
/// ([`nvlink_readings_dropped`]).
pub const NVLINK_READINGS_CAP: usize = 65_536;

static NVLINK_READINGS: std::sync::Mutex<std::collections::VecDeque<NvlinkReading>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
static NVLINK_READINGS_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Appends `r` (the sampler thread; the lock is only ever taken by agent threads).
fn keep_reading(r: NvlinkReading) {
    let mut q = NVLINK_READINGS.lock().unwrap_or_else(|e| e.into_inner());
    if q.len() >= NVLINK_READINGS_CAP {
        q.pop_front();
        NVLINK_READINGS_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    q.push_back(r);
}

/// The NVLink readings kept so far whose interval starts at or after `from_us` (NVML µs),
/// oldest first. Readings stay for later captures (rolling segments take theirs by time).
pub fn nvlink_readings(from_us: i64) -> Vec<NvlinkReading> {
    let q = NVLINK_READINGS.lock().unwrap_or_else(|e| e.into_inner());
    q.iter().filter(|r| r.start_us >= from_us).copied().collect()
}

/// NVLink readings dropped because [`NVLINK_READINGS_CAP`] were held.
pub fn nvlink_readings_dropped() -> u64 {
    NVLINK_READINGS_DROPPED.load(Ordering::Relaxed)
}

/// The CUDA device ordinal (CUPTI `deviceId`, the `pid` of a capture's GPU rows) of NVML
/// device `index` in this process (what `CUDA_VISIBLE_DEVICES` makes visible); `None`
/// before [`device_info`] or for a GPU the process cannot see.
pub fn cuda_ordinal(index: u32) -> Option<u32> {
    let u = USED.get()?;
    u.visible.iter().position(|&i| i == index).map(|p| p as u32)
}

/// One reading of device `index`; `None` when its handle cannot be had.
fn sample(nvml: &Nvml, index: u32, nvlink: &mut NvlinkState) -> Option<GpuSample> {
    let dev = nvml.device_by_index(index).ok()?;
    let mem = dev.memory_info().ok();
    let tx = nvlink.read(&dev, index);
    Some(GpuSample {
        nvlink_gbps: tx.gbps,
        nvlink_tx_bytes: tx.bytes,
        gpu_index: index,
        uuid: dev.uuid().ok(),
        utilization_percent: dev.utilization_rates().ok().map(|u| f64::from(u.gpu)),
        memory_used_bytes: mem.as_ref().map(|m| m.used),
        memory_total_bytes: mem.as_ref().map(|m| m.total),
        temperature_celsius: dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
        power_watts: dev.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        sm_clock_mhz: dev.clock_info(Clock::SM).ok().map(f64::from),
    })
}

/// Device memory in use on the worker's own GPU at the last sample, bytes (`u64::MAX`
/// before the first): the `gpu_memory_used_gb` of step log events.
static OWN_MEMORY_USED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Device memory in use on the worker's own GPU (the first sampled) at the last NVML
/// sample, bytes; `None` before one.
pub fn own_memory_used_bytes() -> Option<u64> {
    Some(OWN_MEMORY_USED_BYTES.load(Ordering::Relaxed)).filter(|b| *b != u64::MAX)
}

/// Samples the NVML devices `indices` now and sets the `gpu_*` gauges of `metrics` (one
/// [`Metrics::set_gpu_sample`] per device). Returns the number of devices sampled.
fn sample_all(nvml: &Nvml, metrics: &Metrics, indices: &[u32], nvlink: &mut NvlinkState) -> u32 {
    let mut n = 0;
    for &index in indices {
        if let Some(s) = sample(nvml, index, nvlink) {
            if Some(&index) == indices.first() {
                if let Some(b) = s.memory_used_bytes {
                    OWN_MEMORY_USED_BYTES.store(b, Ordering::Relaxed);
                }
            }
            metrics.set_gpu_sample(&s);
            n += 1;
        }
    }
    n
}

/// The devices a worker uses, learned as it runs ([`note_cuda_device`]): CUDA ordinal →
/// NVML index (what `CUDA_VISIBLE_DEVICES` makes visible, in order) and a bit mask of the
/// NVML indices used (indices ≥ 64 are not tracked). Set once by [`device_info`].
struct UsedDevices {
    visible: Vec<u32>,
    used: std::sync::atomic::AtomicU64,
}

static USED: std::sync::OnceLock<UsedDevices> = std::sync::OnceLock::new();

/// The worker uses CUDA device `ordinal` (its context's `cuCtxGetDevice`, a kernel record's
/// `deviceId`): from the next sample on, that GPU's `gpu_*` gauges are read too. Lock-free
/// (one load and, the first time, one `fetch_or`); a no-op before [`device_info`] or for an
/// ordinal the worker cannot see.
pub fn note_cuda_device(ordinal: i64) {
    let Some(u) = USED.get() else { return };
    let Some(&index) = usize::try_from(ordinal).ok().and_then(|o| u.visible.get(o)) else { return };
    if index < 64 {
        let bit = 1u64 << index;
        if u.used.load(Ordering::Relaxed) & bit == 0 {
            u.used.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

/// NVML indices the worker has been seen to use ([`note_cuda_device`]), ascending.
pub fn used_devices() -> Vec<u32> {
    let Some(u) = USED.get() else { return Vec::new() };
    let mask = u.used.load(Ordering::Relaxed);
    (0..64).filter(|i| mask & (1u64 << i) != 0).collect()
}

/// Starts the thread `gpuspan-nvml` that, every `period` (at least 10 ms), reads for each
/// NVML device of `indices` (the worker's own first, [`DeviceInfo::sampled`]) and of
/// [`used_devices`] (the others it is seen to use) its utilization (`gpu` %), memory used / total (bytes,
/// `nvmlDeviceGetMemoryInfo_v2`), GPU temperature (°C), power (mW → W) and SM clock (MHz),
/// and hands them to [`Metrics::set_gpu_sample`]. The first sample is taken before this
/// returns. The thread runs until [`Sampler::stop_until`].
///
/// Returns `None`, after one warning saying why and that the `gpu_*` gauges are absent,
/// when NVML cannot be loaded or initialized (or the thread cannot be spawned).
pub fn start_sampler(metrics: Arc<Metrics>, period: Duration, indices: Vec<u32>) -> Option<Sampler> {
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
    let mut nvlink = NvlinkState::default();
    if catch_unwind(AssertUnwindSafe(|| sample_all(&nvml, &metrics, &indices, &mut nvlink))).is_err() {
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
                let mut all = indices.clone();
                all.extend(used_devices().into_iter().filter(|i| !indices.contains(i)));
                sample_all(&nvml, &metrics, &all, &mut nvlink);
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

/// The worker's GPUs as NVML sees them ([`device_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `nvmlDeviceGetName` of the own device, e.g. `NVIDIA H100 80GB HBM3` (`gpu_type`).
    pub name: String,
    /// `nvmlSystemGetDriverVersion`, e.g. `575.57.08`.
    pub driver: String,
    /// NVML index of the own device (CUDA device 0): the metrics' `gpu_index`.
    pub index: u32,
    /// `nvmlDeviceGetUUID` of the own device (`GPU-…`).
    pub uuid: String,
    /// The MIG instance `CUDA_VISIBLE_DEVICES` names first (`MIG-…`), when it names one.
    pub mig: Option<String>,
    /// NVML indices sampled for the `gpu_*` gauges from the start: the worker's own device
    /// (others join as the worker is seen to use them, [`note_cuda_device`]).
    pub sampled: Vec<u32>,
    /// NVML indices of what `CUDA_VISIBLE_DEVICES` makes visible, in CUDA device order (a
    /// MIG worker: its instance's GPU).
    pub visible: Vec<u32>,
    /// `nvmlDeviceGetUUID` of each of `visible`, in CUDA device order: index = CUDA ordinal
    /// (a kernel record's `deviceId`); empty strings where NVML did not say.
    pub visible_uuids: Vec<String>,
}

/// What `CUDA_VISIBLE_DEVICES` (`spec`; `None` when unset) makes visible on a node whose
/// NVML devices have `uuids` (by NVML index): the NVML indices in CUDA device order, and
/// the first entry's MIG instance name when it is one. CUDA's rules (CUDA C Programming
/// Guide, "CUDA Environment Variables"): a comma-separated list of device indices or
/// UUIDs (`GPU-…` or `MIG-…`, a unique prefix is enough); an entry that names no device
/// hides it and every later one; an empty value hides them all; unset shows all. NVML
/// indices are assumed to follow CUDA's enumeration order (`CUDA_DEVICE_ORDER=PCI_BUS_ID`,
/// what NVML uses; the default FASTEST_FIRST only differs on mixed-GPU nodes). A MIG entry
/// ends the list here (CUDA enumerates one MIG instance per process); [`device_info`]
/// resolves its parent GPU (`mig_parent`), which is what NVML samples (utilization is per
/// GPU, not per MIG instance).
pub fn visible_devices(spec: Option<&str>, uuids: &[String]) -> (Vec<u32>, Option<String>) {
    let Some(spec) = spec else { return ((0..uuids.len() as u32).collect(), None) };
    let mut out = Vec::new();
    for (n, entry) in spec.split(',').map(str::trim).enumerate() {
        if entry.starts_with("MIG-") {
            return (out, (n == 0).then(|| entry.to_string()));
        }
        let index = if let Ok(i) = entry.parse::<u32>() {
            Some(i).filter(|i| (*i as usize) < uuids.len())
        } else if entry.starts_with("GPU-") && entry.len() > 4 {
            let mut hits = uuids.iter().enumerate().filter(|(_, u)| u.starts_with(entry));
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => Some(i as u32),
                _ => None,
            }
        } else {
            None
        };
        match index {
            Some(i) if out.contains(&i) => {}
            Some(i) => out.push(i),
            None => break,
        }
    }
    (out, None)
}

/// The NVML index of the GPU that holds MIG instance `mig` (a `MIG-…` UUID or, as CUDA
/// accepts, a unique prefix of one): `nvmlDeviceGetHandleByUUID` and the instance's parent
/// (`nvmlDeviceGetDeviceHandleFromMigDeviceHandle`), else every device's instances
/// (`nvmlDeviceGetMaxMigDeviceCount`, `nvmlDeviceGetMigDeviceHandleByIndex`) by UUID.
/// `None` when no device holds it.
fn mig_parent(nvml: &Nvml, mig: &str, count: u32) -> Option<u32> {
    if let Ok(i) = nvml.device_by_uuid(mig).and_then(|m| m.mig_parent_device()).and_then(|p| p.index()) {
        return Some(i);
    }
    (0..count).find(|&i| {
        let Ok(dev) = nvml.device_by_index(i) else { return false };
        (0..dev.mig_device_count().unwrap_or(0))
            .any(|j| dev.mig_device_by_index(j).and_then(|m| m.uuid()).is_ok_and(|u| u.starts_with(mig)))
    })
}

/// The worker's GPUs ([`DeviceInfo`]) from NVML and `CUDA_VISIBLE_DEVICES`. `None`,
/// silently, when NVML is unavailable, a query fails, or no device is visible. Loads,
/// initializes and shuts NVML down again.
pub fn device_info() -> Option<DeviceInfo> {
    let spec = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    catch_unwind(|| {
        let nvml = open().ok()?;
        let count = nvml.device_count().ok()?;
        let uuids: Vec<String> =
            (0..count).map(|i| nvml.device_by_index(i).and_then(|d| d.uuid()).unwrap_or_default()).collect();
        let (mut visible, mig) = visible_devices(spec.as_deref(), &uuids);
        // A MIG instance: the worker runs on its parent GPU, the one to sample.
        if let Some(m) = &mig {
            visible = mig_parent(&nvml, m, count).into_iter().collect();
        }
        let index = visible.first().copied()?;
        let _ = USED.set(UsedDevices { visible: visible.clone(), used: std::sync::atomic::AtomicU64::new(0) });
        let dev = nvml.device_by_index(index).ok()?;
        Some(DeviceInfo {
            name: dev.name().ok()?,
            driver: nvml.sys_driver_version().ok()?,
            index,
            uuid: uuids.get(index as usize).cloned().unwrap_or_default(),
            mig,
            sampled: vec![index],
            visible_uuids: visible.iter().map(|&i| uuids.get(i as usize).cloned().unwrap_or_default()).collect(),
            visible,
        })
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::visible_devices;

    fn node(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("GPU-5e1a0c3d-7b2f-4c8e-9a10-5151a1a5d1{i:02x}")).collect()
    }

    #[test]
    fn visible_devices_follow_cudas_rules() {
        let u = node(8);
        assert_eq!(visible_devices(None, &u), ((0..8).collect(), None), "unset: all");
        assert_eq!(visible_devices(Some(""), &u), (vec![], None), "empty: none");
        assert_eq!(visible_devices(Some("3"), &u), (vec![3], None));
        assert_eq!(visible_devices(Some("6, 2,5"), &u), (vec![6, 2, 5], None), "CUDA order, spaces allowed");
        assert_eq!(visible_devices(Some("1,9,2"), &u), (vec![1], None), "an invalid entry hides the rest");
        assert_eq!(visible_devices(Some("1,1,4"), &u), (vec![1, 4], None), "a repeated device counts once");
        assert_eq!(visible_devices(Some(&u[4].clone()), &u), (vec![4], None), "a full UUID");
        assert_eq!(visible_devices(Some("GPU-5e1a0c3d-7b2f-4c8e-9a10-5151a1a5d107,0"), &u), (vec![7, 0], None));
        assert_eq!(visible_devices(Some("GPU-5e1a"), &u), (vec![], None), "an ambiguous prefix names no device");
        assert_eq!(visible_devices(Some("GPU-"), &u), (vec![], None));
        assert_eq!(visible_devices(Some("MIG-a1b2"), &u), (vec![], Some("MIG-a1b2".into())));
        assert_eq!(visible_devices(Some("2,MIG-a1b2"), &u), (vec![2], None));
        assert_eq!(visible_devices(Some("nvidia0"), &u), (vec![], None));
    }
}

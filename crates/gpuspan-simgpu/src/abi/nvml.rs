//! `libnvidia-ml.so.1` subset (NVML API reference; CUPTI-NOTES §7). Return codes are
//! `nvmlReturn_t` values as u32.

// Safety contract of every export: the C prototype of the function it replaces (cuda.h,
// cupti_*.h, nvml.h): pointer arguments are NULL or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::guard;
use crate::sim::timeline::WorkKind;
use crate::sim::{device, sim, State};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

/// `nvmlReturn_t` values (nvml.h).
pub mod ret {
    pub const SUCCESS: u32 = 0;
    pub const UNINITIALIZED: u32 = 1;
    pub const INVALID_ARGUMENT: u32 = 2;
    pub const NOT_SUPPORTED: u32 = 3;
    pub const NOT_FOUND: u32 = 6;
    pub const INSUFFICIENT_SIZE: u32 = 7;
    pub const DRIVER_NOT_LOADED: u32 = 9;
    pub const ARGUMENT_VERSION_MISMATCH: u32 = 25;
    pub const UNKNOWN: u32 = 999;
}

/// Opaque `nvmlDevice_t` of NVML device 0; device `i`'s is this + `i` × 0x10.
const DEVICE_HANDLE: usize = 0x4e7d_0000_0010;
/// Opaque `nvmlDevice_t` of MIG instance `j` of device `g`: this + (`g` × 8 + `j`) × 0x10.
const MIG_HANDLE: usize = 0x4e7d_0001_0000;

/// `(device, instance)` of MIG handle `dev`, if it is one of an existing instance.
fn mig_of(st: &State, dev: *mut c_void) -> Option<(u32, u32)> {
    let off = (dev as usize).checked_sub(MIG_HANDLE)?;
    let k = u32::try_from(off / 0x10).ok()?;
    let (g, j) = (k / 8, k % 8);
    (off % 0x10 == 0 && g < st.cfg.nvml_devices && st.cfg.mig_devices & (1 << g) != 0 && j < device::MIG_INSTANCES)
        .then_some((g, j))
}

fn mig_handle(g: u32, j: u32) -> *mut c_void {
    (MIG_HANDLE + (g as usize * 8 + j as usize) * 0x10) as *mut c_void
}

/// NVML utilization sample period (the longest of the documented 1/6–1 s).
const SAMPLE_PERIOD_NS: u64 = 1_000_000_000;

/// `nvmlUtilization_t` {gpu, memory} in percent.
#[repr(C)]
pub struct NvmlUtilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// `nvmlMemory_t` (bytes).
#[repr(C)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t` (bytes); `version` must be `sizeof | 2 << 24`.
#[repr(C)]
pub struct NvmlMemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// The NVML index of handle `dev`, if it is one of the node's.
fn index_of(st: &State, dev: *mut c_void) -> Option<u32> {
    let off = (dev as usize).checked_sub(DEVICE_HANDLE)?;
    let i = u32::try_from(off / 0x10).ok()?;
    (off % 0x10 == 0 && i < st.cfg.nvml_devices).then_some(i)
}

/// Runs `f` with the state and the device's NVML index if NVML is initialized and `dev` is
/// one of the node's handles.
fn with_any_device(dev: *mut c_void, f: impl FnOnce(&mut State, u32) -> u32) -> u32 {
    guard(|| {
        let mut st = sim().lock();
        if st.nvml_refs == 0 {
            return ret::UNINITIALIZED;
        }
        let Some(i) = index_of(&st, dev) else { return ret::INVALID_ARGUMENT };
        f(&mut st, i)
    })
}

/// Another device of the node (not this process's): idle. Returns `Some(reading)` for it,
/// `None` for the own device (its reading comes from the timeline).
fn idle_reading<T>(st: &State, i: u32, idle: T) -> Option<T> {
    st.cfg.cuda_ordinal(i).is_none().then_some(idle)
}

fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> u32 {
    if buf.is_null() {
        return ret::INVALID_ARGUMENT;
    }
    if (len as usize) < s.len() + 1 {
        return ret::INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller provides `len` ≥ s.len() + 1 writable bytes at `buf`.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
        *buf.add(s.len()) = 0;
    }
    ret::SUCCESS
}

fn put<T>(p: *mut T, v: T) -> u32 {
    if p.is_null() {
        return ret::INVALID_ARGUMENT;
    }
    // SAFETY: non-NULL out-pointer from the caller.
    unsafe { p.write(v) };
    ret::SUCCESS
}

/// Ref-counted init; `no_device` fault → DRIVER_NOT_LOADED (9).
#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> u32 {
    init()
}

/// Shared by both init exports (exports never call each other: an executable that also
/// links the rlib could interpose them).
fn init() -> u32 {
    guard(|| {
        let mut st = sim().lock();
        if st.cfg.faults.no_device {
            return ret::DRIVER_NOT_LOADED;
        }
        st.nvml_refs += 1;
        ret::SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit() -> u32 {
    init()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> u32 {
    guard(|| {
        let mut st = sim().lock();
        if st.nvml_refs == 0 {
            return ret::UNINITIALIZED;
        }
        st.nvml_refs -= 1;
        ret::SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> u32 {
    guard(|| {
        if sim().lock().nvml_refs == 0 {
            ret::UNINITIALIZED
        } else {
            put(count, sim().lock().cfg.nvml_devices)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    dev: *mut *mut c_void,
) -> u32 {
    guard(|| {
        let st = sim().lock();
        if st.nvml_refs == 0 {
            return ret::UNINITIALIZED;
        }
        if index >= st.cfg.nvml_devices {
            return ret::INVALID_ARGUMENT;
        }
        put(dev, (DEVICE_HANDLE + index as usize * 0x10) as *mut c_void)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    dev: *mut c_void,
    name: *mut c_char,
    len: c_uint,
) -> u32 {
    with_any_device(dev, |_, _| put_str(name, len, device::NAME))
}

/// `nvmlDeviceGetUUID`: `GPU-…` of a device, `MIG-…` of a MIG instance's handle.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    dev: *mut c_void,
    uuid: *mut c_char,
    len: c_uint,
) -> u32 {
    guard(|| match mig_lookup(dev) {
        Some((g, j)) => put_str(uuid, len, &device::mig_uuid(g, j)),
        None => with_any_device(dev, |_, i| put_str(uuid, len, &device::uuid(i))),
    })
}

/// `(device, instance)` when `dev` is a MIG instance's handle and NVML is initialized.
fn mig_lookup(dev: *mut c_void) -> Option<(u32, u32)> {
    let st = sim().lock();
    if st.nvml_refs == 0 {
        return None;
    }
    mig_of(&st, dev)
}

/// `nvmlDeviceGetMaxMigDeviceCount`: seven on every H100 (`1g.10gb` slices), MIG mode on
/// or not.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(dev: *mut c_void, count: *mut c_uint) -> u32 {
    with_any_device(dev, |_, _| put(count, device::MAX_MIG_INSTANCES))
}

/// `nvmlDeviceGetMigDeviceHandleByIndex`: instance `index` of a device in MIG mode
/// (`GPUSPAN_SIM_NVML_MIG`); `NOT_FOUND` for an instance that does not exist,
/// `INVALID_ARGUMENT` past the maximum.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(dev: *mut c_void, index: c_uint, mig: *mut *mut c_void) -> u32 {
    with_any_device(dev, |st, g| {
        if index >= device::MAX_MIG_INSTANCES {
            ret::INVALID_ARGUMENT
        } else if st.cfg.mig_devices & (1 << g) == 0 || index >= device::MIG_INSTANCES {
            ret::NOT_FOUND
        } else {
            put(mig, mig_handle(g, index))
        }
    })
}

/// `nvmlDeviceGetDeviceHandleFromMigDeviceHandle`: a MIG instance's parent GPU.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig: *mut c_void, dev: *mut *mut c_void) -> u32 {
    guard(|| match mig_lookup(mig) {
        Some((g, _)) => put(dev, (DEVICE_HANDLE + g as usize * 0x10) as *mut c_void),
        None => ret::INVALID_ARGUMENT,
    })
}

/// `nvmlDeviceGetHandleByUUID`: a device by its `GPU-…` UUID, or a MIG instance's handle by
/// its `MIG-…` UUID; `NOT_FOUND` otherwise.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, dev: *mut *mut c_void) -> u32 {
    guard(|| {
        let st = sim().lock();
        if st.nvml_refs == 0 {
            return ret::UNINITIALIZED;
        }
        if uuid.is_null() {
            return ret::INVALID_ARGUMENT;
        }
        // SAFETY: a NUL-terminated string from the caller (nvml.h).
        let want = unsafe { CStr::from_ptr(uuid) }.to_string_lossy();
        for g in 0..st.cfg.nvml_devices {
            if device::uuid(g) == want {
                return put(dev, (DEVICE_HANDLE + g as usize * 0x10) as *mut c_void);
            }
            if st.cfg.mig_devices & (1 << g) != 0 {
                if let Some(j) = (0..device::MIG_INSTANCES).find(|j| device::mig_uuid(g, *j) == want) {
                    return put(dev, mig_handle(g, j));
                }
            }
        }
        ret::NOT_FOUND
    })
}

/// `nvmlDeviceGetIndex`: the device's NVML index.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: *mut c_void, index: *mut c_uint) -> u32 {
    with_any_device(dev, |_, i| put(index, i))
}

/// GPU % = share of the last 1 s (host clock) with ≥ 1 kernel running; memory % = share
/// with a copy/memset running, or half the kernel share if higher (kernels read memory).
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    dev: *mut c_void,
    util: *mut NvmlUtilization,
) -> u32 {
    with_any_device(dev, |st, i| {
        let (gpu, mem) = idle_reading(st, i, (0, 0)).unwrap_or_else(|| utilization(st, i));
        put(util, NvmlUtilization { gpu, memory: mem })
    })
}

/// (GPU %, memory %) of NVML device `i`, one of this process's devices.
fn utilization(st: &mut State, i: u32) -> (u32, u32) {
    let now = st.clock.now_ns();
    let d = st.cfg.cuda_ordinal(i).unwrap_or(0) as usize;
    let t = &mut st.timelines[d];
    let gpu = t.utilization_pct(WorkKind::Kernel, now, SAMPLE_PERIOD_NS);
    let mem = t
        .utilization_pct(WorkKind::Memory, now, SAMPLE_PERIOD_NS)
        .max(gpu / 2);
    (gpu, mem)
}

/// (total, free, used) bytes of device `i`: the own device holds this process's
/// allocations, the others only the driver's reserve.
fn memory_numbers(st: &State, i: u32) -> (u64, u64, u64) {
    let mine = st.cfg.cuda_ordinal(i).map_or(0, |d| st.allocated_bytes[d as usize]);
    let used = device::RESERVED_MEM_BYTES + mine;
    (
        device::TOTAL_MEM_BYTES,
        device::TOTAL_MEM_BYTES - used,
        used,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(dev: *mut c_void, mem: *mut NvmlMemory) -> u32 {
    with_any_device(dev, |st, i| {
        let (total, free, used) = memory_numbers(st, i);
        put(mem, NvmlMemory { total, free, used })
    })
}

/// Checks `version >> 24 == 2` (CUPTI-NOTES §7) → else ARGUMENT_VERSION_MISMATCH (25).
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    dev: *mut c_void,
    mem: *mut NvmlMemoryV2,
) -> u32 {
    with_any_device(dev, |st, i| {
        if mem.is_null() {
            return ret::INVALID_ARGUMENT;
        }
        // SAFETY: non-NULL pointer to the caller's struct; `version` is its first field.
        let version = unsafe { (*mem).version };
        if version >> 24 != 2 {
            return ret::ARGUMENT_VERSION_MISMATCH;
        }
        let (total, free, used) = memory_numbers(st, i);
        let reserved = device::RESERVED_MEM_BYTES;
        put(
            mem,
            NvmlMemoryV2 {
                version,
                total,
                reserved,
                free,
                used: used - reserved,
            },
        )
    })
}

/// Sensor 0 (GPU) only, °C rising with utilization.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    dev: *mut c_void,
    sensor: c_uint,
    temp: *mut c_uint,
) -> u32 {
    with_any_device(dev, |st, i| {
        if sensor != 0 {
            return ret::INVALID_ARGUMENT;
        }
        let (gpu, _) = idle_reading(st, i, (0, 0)).unwrap_or_else(|| utilization(st, i));
        put(
            temp,
            device::IDLE_TEMP_C + (device::BUSY_TEMP_C - device::IDLE_TEMP_C) * gpu / 100,
        )
    })
}

/// mW, linear between idle and busy power in the GPU utilization.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(dev: *mut c_void, mw: *mut c_uint) -> u32 {
    with_any_device(dev, |st, i| {
        let (gpu, _) = idle_reading(st, i, (0, 0)).unwrap_or_else(|| utilization(st, i));
        put(
            mw,
            device::IDLE_POWER_MW + (device::BUSY_POWER_MW - device::IDLE_POWER_MW) / 100 * gpu,
        )
    })
}

/// `NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX` (nvml.h field ids): NVLink data transmitted,
/// KiB, counting since the driver loaded.
pub const FI_NVLINK_THROUGHPUT_DATA_TX: u32 = 138;
/// `NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX`: NVLink data received, KiB.
pub const FI_NVLINK_THROUGHPUT_DATA_RX: u32 = 139;
/// `NVML_VALUE_TYPE_UNSIGNED_LONG_LONG` (nvml.h `nvmlValueType_t`).
const VALUE_TYPE_ULL: c_uint = 3;

/// `nvmlFieldValue_t` (nvml.h): 40 bytes.
#[repr(C)]
pub struct NvmlFieldValue {
    /// `NVML_FI_*` id.
    pub field_id: c_uint,
    /// Link id, or `UINT_MAX` for all links.
    pub scope_id: c_uint,
    /// CPU time of the reading, µs.
    pub timestamp_us: i64,
    /// How long the reading took, µs.
    pub latency_us: i64,
    /// `nvmlValueType_t`.
    pub value_type: c_uint,
    /// This field's `nvmlReturn_t`.
    pub nvml_return: c_uint,
    /// `nvmlValue_t` (a union of 8 bytes; the sim writes `ullVal`).
    pub value: u64,
}

/// `nvmlDeviceGetFieldValues`: the NVLink throughput counters (TX / RX data, KiB: the bytes
/// this process's device moved in NCCL collectives, `sim::node`; all of a node's
/// collectives are symmetric, so RX = TX; a link's share is 1/18 of the device's). Other
/// devices of the node read 0 (their traffic is in other processes); other fields say
/// NOT_SUPPORTED in their own `nvmlReturn`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(dev: *mut c_void, count: c_int, values: *mut NvmlFieldValue) -> u32 {
    with_any_device(dev, |st, i| {
        if values.is_null() || count < 0 {
            return ret::INVALID_ARGUMENT;
        }
        let now = st.clock.now_ns();
        // A rank process drives one device (CUDA ordinal 0): its collectives' traffic.
        let bytes = if st.cfg.cuda_ordinal(i) == Some(0) { st.node.nvlink_tx_bytes_at(now) } else { 0 };
        for k in 0..count as usize {
            // SAFETY: the caller passes an array of `count` field values (nvml.h).
            let v = unsafe { &mut *values.add(k) };
            v.timestamp_us = (now / 1000) as i64;
            v.latency_us = 0;
            match v.field_id {
                FI_NVLINK_THROUGHPUT_DATA_TX | FI_NVLINK_THROUGHPUT_DATA_RX => {
                    let b = if v.scope_id == c_uint::MAX { bytes } else if v.scope_id < crate::sim::node::NVLINK_LINKS { bytes / crate::sim::node::NVLINK_LINKS as u64 } else {
                        v.nvml_return = ret::INVALID_ARGUMENT;
                        continue;
                    };
                    v.value_type = VALUE_TYPE_ULL;
                    v.value = b / 1024;
                    v.nvml_return = ret::SUCCESS;
                }
                _ => v.nvml_return = ret::NOT_SUPPORTED,
            }
        }
        ret::SUCCESS
    })
}

/// `nvmlDeviceGetNvLinkState`: `NVML_FEATURE_ENABLED` (1) for the H100 SXM's 18 links when
/// the process is a rank of a simulated node (`sim::node`), `NVML_FEATURE_DISABLED` (0)
/// otherwise (a lone simulated GPU is modelled without NVLink peers); INVALID_ARGUMENT for a
/// link ≥ 18.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(dev: *mut c_void, link: c_uint, active: *mut c_uint) -> u32 {
    with_any_device(dev, |st, _| {
        if link >= crate::sim::node::NVLINK_LINKS {
            return ret::INVALID_ARGUMENT;
        }
        put(active, c_uint::from(st.node.in_node()))
    })
}

/// MHz: GRAPHICS 0 and SM 1 → SM clock, MEM 2 → memory clock, VIDEO 3 → 1755.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    dev: *mut c_void,
    clock_type: c_uint,
    mhz: *mut c_uint,
) -> u32 {
    with_any_device(dev, |_, _| match clock_type {
        0 | 1 => put(mhz, device::SM_CLOCK_MHZ),
        2 => put(mhz, device::MEM_CLOCK_MHZ),
        3 => put(mhz, 1755),
        _ => ret::INVALID_ARGUMENT,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> u32 {
    guard(|| {
        if sim().lock().nvml_refs == 0 {
            ret::UNINITIALIZED
        } else {
            put_str(buf, len, device::DRIVER_VERSION)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(r: u32) -> *const c_char {
    guard(|| {
        let s: &'static CStr = match r {
            ret::SUCCESS => c"Success",
            ret::UNINITIALIZED => c"Uninitialized",
            ret::INVALID_ARGUMENT => c"Invalid Argument",
            ret::NOT_SUPPORTED => c"Not Supported",
            ret::INSUFFICIENT_SIZE => c"Insufficient Size",
            ret::DRIVER_NOT_LOADED => c"Driver Not Loaded",
            ret::ARGUMENT_VERSION_MISMATCH => c"Argument Version Mismatch",
            _ => c"Unknown Error",
        };
        s.as_ptr()
    })
}

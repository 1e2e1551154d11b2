//! Static facts about the simulated device: an H100 SXM5 80GB HBM3 (GH100, sm_90).
//!
//! Numbers are the public H100 SXM5 figures (NVIDIA H100 datasheet / whitepaper) as
//! `cuDeviceGetAttribute` and NVML report them on a real board.

use cudarc::driver::sys::CUdevice_attribute as A;

/// `cuDeviceGetName` / `nvmlDeviceGetName`.
pub const NAME: &str = "NVIDIA H100 80GB HBM3";
/// `nvmlDeviceGetUUID` of NVML device 0 (device `i`'s ends in `i` as two hex digits: [`uuid`]).
pub const UUID: &str = "GPU-5e1a0c3d-7b2f-4c8e-9a10-5151a1a5d100";
/// Most H100s on a simulated node (an HGX H100 board has 8).
pub const MAX_NODE_DEVICES: u32 = 8;

/// `nvmlDeviceGetUUID` of NVML device `index` of the node ([`UUID`] for 0).
pub fn uuid(index: u32) -> String {
    format!("{}{index:02x}", &UUID[..UUID.len() - 2])
}
/// MIG instances of a device in MIG mode (`GPUSPAN_SIM_NVML_MIG`): two `3g.40gb` halves.
pub const MIG_INSTANCES: u32 = 2;
/// Most MIG instances an H100 can hold (`nvmlDeviceGetMaxMigDeviceCount`: seven `1g.10gb`).
pub const MAX_MIG_INSTANCES: u32 = 7;

/// `nvmlDeviceGetUUID` of MIG instance `instance` of NVML device `index` (`MIG-…`, the
/// R470+ format).
pub fn mig_uuid(index: u32, instance: u32) -> String {
    format!("MIG-a91c{index:02x}{instance:02x}-3d5e-5b7f-8c21-6f0e4d2b9a{index:02x}")
}

/// `nvmlSystemGetDriverVersion`: an R575 driver (CUDA 12.9).
pub const DRIVER_VERSION: &str = "575.57.08";
/// `cuDriverGetVersion`.
pub const CUDA_DRIVER_VERSION: i32 = 12090;
/// Device memory: 81559 MiB as `nvidia-smi` shows on H100 80GB HBM3.
pub const TOTAL_MEM_BYTES: u64 = 81_559 * 1024 * 1024;
/// Memory NVML reports as reserved by the driver.
pub const RESERVED_MEM_BYTES: u64 = 542 * 1024 * 1024;
/// Streaming multiprocessors.
pub const SM_COUNT: i32 = 132;
/// Boost SM clock.
pub const SM_CLOCK_MHZ: u32 = 1980;
/// HBM3 memory clock.
pub const MEM_CLOCK_MHZ: u32 = 2619;
/// Idle board power.
pub const IDLE_POWER_MW: u32 = 70_000;
/// Board power at 100% utilization (TDP 700 W).
pub const BUSY_POWER_MW: u32 = 700_000;
/// Idle GPU temperature.
pub const IDLE_TEMP_C: u32 = 33;
/// Temperature at sustained 100% utilization.
pub const BUSY_TEMP_C: u32 = 68;

/// Pageable host↔device copy bandwidth (bytes per µs = MB/s): ~25 GB/s over PCIe 5 with staging.
pub const HOST_COPY_BYTES_PER_US: u64 = 25_000;
/// Device-to-device copy bandwidth: ~2 TB/s of HBM3 (read + write).
pub const DEVICE_COPY_BYTES_PER_US: u64 = 2_000_000;
/// Memset bandwidth (write only): ~3 TB/s.
pub const MEMSET_BYTES_PER_US: u64 = 3_000_000;
/// Fixed setup cost of a copy or memset on the GPU.
pub const COPY_SETUP_NS: u64 = 1_000;

/// `cuDeviceGetAttribute` value for `attr`, `None` for attributes the sim does not know.
pub fn attribute(attr: i32) -> Option<i32> {
    let table: &[(A, i32)] = &[
        (A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 64),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, i32::MAX),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 65535),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, 65535),
        (A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 49152),
        (A::CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 65536),
        (A::CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32),
        (A::CU_DEVICE_ATTRIBUTE_MAX_PITCH, i32::MAX),
        (A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 65536),
        (
            A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE,
            (SM_CLOCK_MHZ * 1000) as i32,
        ),
        (A::CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, 512),
        (A::CU_DEVICE_ATTRIBUTE_GPU_OVERLAP, 1),
        (A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, SM_COUNT),
        (A::CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT, 0),
        (A::CU_DEVICE_ATTRIBUTE_INTEGRATED, 0),
        (A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 1),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, 0),
        (A::CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 1),
        (A::CU_DEVICE_ATTRIBUTE_ECC_ENABLED, 1),
        (A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 0x18),
        (A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, 0),
        (A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, 0),
        (A::CU_DEVICE_ATTRIBUTE_TCC_DRIVER, 0),
        (
            A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE,
            (MEM_CLOCK_MHZ * 1000) as i32,
        ),
        (A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, 5120),
        (A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, 50 * 1024 * 1024),
        (A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 2048),
        (A::CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, 3),
        (A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 9),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0),
        (A::CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED, 1),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            233_472,
        ),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR,
            65536,
        ),
        (A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, 1),
        (A::CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD, 0),
        (A::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, 1),
        (A::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, 1),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            232_448,
        ),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, 32),
    ];
    table
        .iter()
        .find(|(a, _)| *a as i32 == attr)
        .map(|&(_, v)| v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn h100_attributes() {
        assert_eq!(super::attribute(16), Some(132), "SM count");
        assert_eq!(super::attribute(75), Some(9), "cc major");
        assert_eq!(super::attribute(76), Some(0), "cc minor");
        assert_eq!(super::attribute(-5), None);
    }
}

//! PTX of the GPU validation workload (`kernels/*.cu`, docs/gpu-validation.md), compiled
//! for `sm_90` by `build.rs` with NVRTC when NVRTC was found at build time.
//!
//! One constant per source file (`SPIN`, `ATTENTION`, `FFN`, `LAYER_NORM`, `CONV3D`), each
//! `Some(ptx)` or `None`; [`ALL`] lists them with their file names, [`SKIPPED`] says why
//! they are missing and [`NVRTC`] which NVRTC built them. The kernels' names, shapes, CPU
//! references and tolerances are in the `gpuspan-kernels` crate. Nothing here is used by
//! the agent itself: the constants are only compiled into programs that name them
//! (`examples/dit_worker.rs`, the ptxas test).

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

/// True when every `kernels/*.cu` was compiled to PTX at build time.
pub fn ptx_available() -> bool {
    ALL.iter().all(|(_, p)| p.is_some())
}

//! A simulated NVIDIA H100 behind the C ABI of `libcuda.so.1`, `libcupti.so.12` and
//! `libnvidia-ml.so.1` (the subset gpuspan and its replay worker call), for machines
//! without a GPU. See DESIGN.md "The simulated H100" and CUPTI-NOTES.md "Things a
//! simulator must reproduce".
//!
//! # Using it
//! Build the cdylib, then [`install::install`] symlinks it under the NVIDIA sonames in a
//! directory that goes first on `LD_LIBRARY_PATH` ([`install::sim_env`]). One loaded
//! copy serves all three libraries, so CUPTI sees the driver's launches.
//!
//! # Conventions
//! - **Kernel durations**: the sim computes nothing. A kernel runs for the number of ns
//!   in the `u64` that `kernelParams[0]` points to (the argument of the real spin kernel
//!   in `kernels/`); with `kernelParams == NULL` it runs 1000 ns. `cuModuleLoadData`
//!   accepts any image and `cuModuleGetFunction` any name; that name is the kernel
//!   record's `name` (one interned, process-lifetime string per name). Records get
//!   `registersPerThread` 32, grid/block/dynamic shared memory from the launch.
//! - **Timeline**: a kernel starts at max(launch entry + 2 µs, end of the previous work
//!   on its stream); the legacy stream (0/0x1/0x2) orders with all blocking streams,
//!   `CU_STREAM_NON_BLOCKING` streams don't. Copies: 25 GB/s host↔device, 2 TB/s
//!   device↔device, memsets 3 TB/s, + 1 µs each. Memory calls move no data.
//! - **Clock** (`GPUSPAN_SIM_CLOCK`): `virtual` (default) starts at Unix ns
//!   1_763_000_000_000_000_000 and advances only by per-call host costs
//!   ([`sim::costs`]), synchronizing calls (jump to the awaited end) and
//!   `gpuspanSimAdvanceHostNs`; `real` uses CLOCK_REALTIME and sleeps. API records,
//!   GPU records and `cuptiGetTimestamp` share it.
//! - **CUPTI ABI** (`GPUSPAN_SIM_CUPTI_VERSION`): `12` (API 28; Kernel9 208 B, Memcpy6
//!   96, Memset4 88) or `13` (API 130500; Kernel13 248, Memcpy7 112, Memset5 104).
//! - **Stream capture and CUDA graphs** ([`sim::graphs`], [`abi::graph`]; CUPTI-NOTES
//!   §6b): `cuStreamBeginCapture(_v2)` … `cuStreamEndCapture`, `cuStreamIsCapturing`,
//!   `cuStreamGetCaptureInfo(_v2/_v3)`, `cuThreadExchangeStreamCaptureMode`,
//!   `cuGraphInstantiate(_v2/WithFlags)`, `cuGraphLaunch(_ptsz)`, `cuGraphExecDestroy`,
//!   `cuGraphDestroy`, `cuEventRecordWithFlags`. Launches, async copies / sets on a
//!   capturing stream become graph nodes (API record as usual, no GPU record); an event
//!   recorded there holds a dependency set (907 `CUDA_ERROR_CAPTURED_EVENT` on query,
//!   synchronize, elapsed time); streams fork into a capture by waiting on such an event
//!   and must be joined back (904 otherwise); `CU_EVENT_RECORD_EXTERNAL` /
//!   `CU_EVENT_WAIT_EXTERNAL` make event-record / event-wait nodes. The potentially unsafe calls (event query /
//!   synchronize, stream query / synchronize, context synchronize, `cuMemAlloc_v2`,
//!   `cuMemFree_v2`, synchronous copies / sets) fail with 900 and invalidate the offending
//!   captures by the capture-mode rule of cuda.h; legacy-stream work during a blocking
//!   stream's capture fails with 906 and invalidates it; `cuStreamEndCapture` of an
//!   invalidated capture returns 901 and no graph. A graph launch runs the exec's nodes on
//!   the stream by their dependencies; each kernel record carries the `cuGraphLaunch`
//!   call's correlation id (API record cbid 514) and non-zero `graphId` / `graphNodeId`.
//!   Capture modes are thread-locals of the library (`gpuspanSimReset` leaves them).
//! - **Faults** (`GPUSPAN_SIM_FAULT`, comma list): `no_device`, `cupti_subscribed`,
//!   `drop_records` (every `GPUSPAN_SIM_DROP_EVERY`-th record, default 10), `slow_cupti`,
//!   `capture_invalidated` (every `cuStreamEndCapture` returns 901: the capture was
//!   invalidated, as by another thread's unsafe call); see [`sim::config`].
//! - **Extra symbols**: see [`abi::ext`] (`gpuspanSimAdvanceHostNs`,
//!   `gpuspanSimIsVirtual`, `gpuspanSimHostNowNs`, `gpuspanSimCuptiCounters`, `gpuspanSimCuptiBuffers`, `gpuspanSimReset`).
//! - `cuInit` honours `CUDA_INJECTION64_PATH` like the real driver.

pub mod abi;
pub mod fuzz_support;
pub mod install;
pub mod sim;

pub use sim::cupti_counters;

pub mod workload;
pub mod nvtx_loader;

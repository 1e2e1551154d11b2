//! Label sets, bucket layouts, names and HELP texts of the metric families (DESIGN.md
//! "Spans, metrics, files": the names are the platform's observability spec; keep them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use std::sync::Arc;

/// `dit_inference_step_duration_ms` buckets, ms (the platform spec).
pub(crate) const STEP_BUCKETS_MS: [f64; 7] = [100.0, 200.0, 300.0, 500.0, 700.0, 1000.0, 2000.0];
/// `vae_decode_duration_seconds` buckets, s.
pub(crate) const VAE_BUCKETS_S: [f64; 8] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0];
/// `video_generation_duration_seconds` buckets, s.
pub(crate) const VIDEO_BUCKETS_S: [f64; 10] =
    [5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0];

/// `tensor_parallel_comm_duration_ms` and `gpuspan_exposed_comm_duration_ms` buckets, ms
/// (the platform spec alerts over 50 ms).
pub(crate) const COMM_BUCKETS_MS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 100.0, 200.0, 500.0];

/// gpuspan stage name (NVTX stage span) → `step_type` label value.
pub(crate) const STAGE_STEP_TYPES: [(&str, &str); 4] = [
    ("attention.spatial", "spatial_attn"),
    ("attention.temporal", "temporal_attn"),
    ("attention.cross", "cross_attn"),
    ("ffn", "ffn"),
];

/// Family labels of `dit_inference_step_duration_ms` (const labels come first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StepLabels {
    pub(crate) model: Arc<str>,
    pub(crate) step_type: &'static str,
}

/// Family labels of the per-request families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub(crate) model: Arc<str>,
}

/// Family labels of the NVML gauges (`worker_id` is a const label of their registry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct GpuLabels {
    pub(crate) gpu_index: u32,
    pub(crate) gpu_uuid: Arc<str>,
    pub(crate) gpu_type: Arc<str>,
}

/// Family labels of `gpuspan_records_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

/// Exemplar label set: the request's W3C trace id, 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    pub(crate) trace_id: String,
}

/// Histogram with one `trace_id` exemplar per bucket (the last observation in it).
pub(crate) type ExemplarHistogram = HistogramWithExemplars<TraceExemplar>;

pub(crate) fn step_histogram() -> ExemplarHistogram {
    HistogramWithExemplars::new(STEP_BUCKETS_MS.into_iter())
}

pub(crate) fn comm_histogram() -> ExemplarHistogram {
    HistogramWithExemplars::new(COMM_BUCKETS_MS.into_iter())
}

pub(crate) fn vae_histogram() -> ExemplarHistogram {
    HistogramWithExemplars::new(VAE_BUCKETS_S.into_iter())
}

pub(crate) fn video_histogram() -> ExemplarHistogram {
    HistogramWithExemplars::new(VIDEO_BUCKETS_S.into_iter())
}

// HELP texts. prometheus-client appends the final full stop. No backslash, double quote or
// newline (OpenMetrics and Prometheus escape HELP differently; these need neither).

pub(crate) const COMM_HELP: &str = "Collective communication time of one DiT denoising step on \
this GPU in milliseconds: the union of its NCCL kernels' intervals, time spent waiting for the \
slowest rank included (CUPTI)";
pub(crate) const EXPOSED_COMM_HELP: &str = "Collective communication time of one DiT denoising \
step that no other kernel on this GPU overlapped, in milliseconds: what the step pays for it \
(CUPTI)";
pub(crate) const NVLINK_HELP: &str = "NVLink data the GPU transmitted per second over the last \
NVML sample period, in gigabytes (1e9 bytes) per second, as NVIDIA quotes NVLink bandwidth \
(NVML NVLINK_THROUGHPUT_DATA_TX)";
pub(crate) const STEP_HELP: &str = "GPU time of one DiT denoising step in milliseconds, from \
CUPTI activity records of the step's NVTX scope: step_type step is the step's GPU span (first \
GPU start to last GPU end), spatial_attn, temporal_attn, cross_attn and ffn are the summed \
kernel time of that stage (attention.spatial, attention.temporal, attention.cross, ffn) in the \
step; the exemplar trace_id is the request's W3C trace id";
pub(crate) const VAE_HELP: &str = "GPU time of a request's vae.decode stage in seconds (first \
GPU start to last GPU end of its CUPTI activity records)";
pub(crate) const VIDEO_HELP: &str = "GPU time of one video generation request in seconds (first \
GPU start to last GPU end of the request's CUPTI activity records, GPU side only)";
pub(crate) const FPS_HELP: &str = "Frames per second of GPU time of the model's last finished \
request: its frames attribute divided by its GPU duration in seconds (CUPTI)";
pub(crate) const GPU_UTIL_HELP: &str = "Percent of the last NVML sample period during which at \
least one kernel ran on the GPU (NVML nvmlDeviceGetUtilizationRates gpu, 0 to 100)";
pub(crate) const GPU_MEM_USED_HELP: &str = "Device memory allocated on the GPU in bytes (NVML \
nvmlDeviceGetMemoryInfo_v2 used, which excludes memory reserved by the driver)";
pub(crate) const GPU_MEM_UTIL_HELP: &str = "Allocated share of the GPU's total device memory in \
percent, 100 times used over total of NVML nvmlDeviceGetMemoryInfo_v2";
pub(crate) const GPU_TEMP_HELP: &str = "GPU die temperature in degrees Celsius (NVML \
nvmlDeviceGetTemperature, GPU sensor)";
pub(crate) const GPU_POWER_HELP: &str = "GPU power draw in watts (NVML nvmlDeviceGetPowerUsage, \
milliwatts divided by 1000)";
pub(crate) const GPU_SM_CLOCK_HELP: &str = "Current SM clock of the GPU in megahertz (NVML \
nvmlDeviceGetClockInfo, SM clock domain)";
pub(crate) const RECORDS_HELP: &str = "CUPTI activity records the gpuspan agent decoded since \
it started (count)";
pub(crate) const MODELS_FOLDED_HELP: &str = "Step and request observations whose model label was folded into model=\"other\" because the worker reported more distinct models than the agent keeps series for (GPUSPAN_MAX_MODELS).";
pub(crate) const DROPPED_HELP: &str = "Records the gpuspan agent lost since it started, by \
reason (count; CUPTI dropped-record counts and the agent's full queues and buffer pool)";
pub(crate) const COARSE_FALLBACKS_HELP: &str = "Coarse-mode scope boundaries the gpuspan agent \
timed on the CPU side instead of with a CUDA event, by reason (count; event_pool_exhausted: \
GPUSPAN_EVENT_POOL ran out, event_error: the driver refused an event call)";
pub(crate) const CAPTURE_HELP: &str = "1 while a fine-mode capture window of the gpuspan agent \
is open, else 0";

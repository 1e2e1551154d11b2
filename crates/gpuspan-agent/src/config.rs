//! Agent configuration, from the environment (it must work under `LD_PRELOAD`).
//!
//! Variables (DESIGN.md "Configuration"): `GPUSPAN_MODE` (`off` | `coarse` | `fine`),
//! `GPUSPAN_OUT` (capture directory, default `./gpuspan-out`), `GPUSPAN_RULES` (stage rules
//! TOML), `GPUSPAN_LOG`, `GPUSPAN_METRICS_ADDR` (Prometheus endpoint, default off),
//! `GPUSPAN_KERNEL_SPAN_BUDGET` (default 20 000 `cuda.kernel` spans per trace),
//! `GPUSPAN_MAX_PENDING_GPU` (GPU records held for unfinished spans, default 131 072),
//! `GPUSPAN_WORKER_ID` (the `worker_id` metric label, default `<host>:<pid>`),
//! `GPUSPAN_EVENT_POOL` (most CUDA events of coarse mode, default 4096),
//! `GPUSPAN_MAX_MODELS` (distinct `model` label values with metric series and anomaly
//! histories of their own, default 32; later ones are folded into `other`),
//! `GPUSPAN_CAPTURE_SEGMENT_STEPS` / `GPUSPAN_CAPTURE_KEEP` (fine mode: rolling capture
//! segments of at least N steps each, the last K kept; unset: one capture at exit),
//! `GPUSPAN_CAPTURE_GZIP_LEVEL` (deflate level of the captures, 0–9, default 1; at most 1
//! at exit), `GPUSPAN_BOUNDARY_CLOCK` (`auto` default | `tsc` | `ns`: the clock scope
//! boundaries read, [`crate::boundary_clock`]),
//! `GPUSPAN_SCOPE_TIMEOUT` (coarse mode: a request scope still open after this long is given
//! up and its CUDA events return to the pool, default 1 h),
//! `GPUSPAN_FLIGHT_RECORDER` (steps the flight recorder keeps; overrides the rules file's
//! `[capture] flight_recorder_steps`), `GPUSPAN_EXIT_BUDGET` (most time the agent spends
//! finishing at exit, default 2 s), `GPUSPAN_CUPTI_MULTI_SUBSCRIBER` (`1` default: on a CUPTI
//! 13.3+ subscribe in multiple-subscriber mode, so a V2-aware tool can subscribe alongside;
//! `0`: always the single V1 subscription), `GPUSPAN_NVML_PERIOD` (NVML sampling period,
//! default 1 s). A launcher's `RANK` / `WORLD_SIZE` / `LOCAL_RANK`
//! (torchrun, `gpuspan-replay --ranks`) make the process one rank of a distributed job
//! ([`Distributed`]): its captures say so (`distributedInfo`), its `gpu.request` spans carry
//! `gpuspan.rank` / `gpuspan.world_size`, and its Prometheus endpoint moves to the
//! configured port + `LOCAL_RANK`, so the ranks of one host do not fight over one port. The OTLP
//! variables are read by `gpuspan_export::otlp::OtlpSettings`. A bad value gets one warning naming the variable and the default
//! used, never a failure.
//!
//! The default mode is `coarse` (DESIGN.md "Collection modes").

use crate::boundary_clock::BoundaryClockSetting;
use std::path::PathBuf;

/// This process's place in a distributed job, from the launcher's environment (torchrun's
/// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`; PyTorch `torch.distributed.run` docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distributed {
    /// Global rank (`RANK`).
    pub rank: u32,
    /// Ranks in the job (`WORLD_SIZE`).
    pub world_size: u32,
    /// Rank on this host (`LOCAL_RANK`, else `RANK`).
    pub local_rank: u32,
}

impl Distributed {
    /// From the environment; `None` unless `RANK` and `WORLD_SIZE` are numbers with
    /// `RANK < WORLD_SIZE` (a bad pair gets a warning in `w`).
    pub fn from_env(w: &mut Vec<String>) -> Option<Distributed> {
        let get = |v: &str| std::env::var(v).ok().map(|s| s.trim().to_string());
        let (rank, world) = (get("RANK")?, get("WORLD_SIZE")?);
        match (rank.parse::<u32>(), world.parse::<u32>()) {
            (Ok(rank), Ok(world_size)) if rank < world_size => {
                let local_rank = get("LOCAL_RANK").and_then(|l| l.parse().ok()).unwrap_or(rank);
                Some(Distributed { rank, world_size, local_rank })
            }
            _ => {
                w.push(format!("RANK={rank:?} WORLD_SIZE={world:?} is not a rank below a world size; spans and captures carry no rank"));
                None
            }
        }
    }

    /// Kineto's `distributedInfo` object for a capture of this rank.
    pub fn kineto_info(&self) -> serde_json::Value {
        serde_json::json!({"backend": "nccl", "rank": self.rank, "world_size": self.world_size})
    }
}

/// `addr` (`host:port`) with the port moved up by `by` (port 0, "any", stays 0; an address
/// without a port, or a port that would pass 65535, is returned as it is).
pub fn offset_port(addr: &str, by: u32) -> String {
    let Some((host, port)) = addr.rsplit_once(':') else { return addr.to_string() };
    match port.parse::<u32>() {
        Ok(0) => addr.to_string(),
        Ok(p) if p + by <= 65535 => format!("{host}:{}", p + by),
        _ => addr.to_string(),
    }
}

/// Collection mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Loaded but inert.
    Off,
    /// CUDA-event timing of scopes, no CUPTI subscription (the default).
    Coarse,
    /// CUPTI Activity API.
    Fine,
}

/// Parsed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Collection mode.
    pub mode: Mode,
    /// Directory for `capture-<pid>.json.gz` (`GPUSPAN_OUT`).
    pub out_dir: PathBuf,
    /// Stage-rules override file.
    pub rules_path: Option<PathBuf>,
    /// Activity buffer size, bytes (`GPUSPAN_BUFFER_BYTES`, default 4 MiB as Kineto).
    pub buffer_bytes: usize,
    /// Most activity buffers alive at once (`GPUSPAN_MAX_BUFFERS`, default 32).
    pub max_buffers: usize,
    /// Most activity records held at once (`GPUSPAN_MAX_RECORDS`; default
    /// [`DEFAULT_MAX_RECORDS`], or [`SEGMENT_MAX_RECORDS`] with rolling segments); more are
    /// dropped and counted (`record_limit`).
    pub max_records: usize,
    /// Most GPU records (kernels, copies, sets) the span assembler holds for steps and
    /// requests not finalized yet (`GPUSPAN_MAX_PENDING_GPU`, default
    /// [`DEFAULT_MAX_PENDING_GPU`]); more are dropped from the spans and counted
    /// (`span_gpu_dropped`). The capture keeps them.
    pub max_pending_gpu: usize,
    /// Prometheus endpoint address (`GPUSPAN_METRICS_ADDR`, `host:port`; unset, empty or
    /// `off` = no endpoint), its port moved up by `LOCAL_RANK` in a distributed job.
    pub metrics_addr: Option<String>,
    /// The process's rank in a distributed job, when a launcher said so.
    pub distributed: Option<Distributed>,
    /// Most `cuda.kernel` spans per trace (`GPUSPAN_KERNEL_SPAN_BUDGET`, default 20 000;
    /// 0 = none).
    pub kernel_span_budget: u64,
    /// `worker_id` label of the metrics (`GPUSPAN_WORKER_ID`, default `<host>:<pid>`).
    pub worker_id: String,
    /// Most CUDA events coarse mode keeps (`GPUSPAN_EVENT_POOL`, default 4096).
    pub event_pool: usize,
    /// Most distinct `model` label values (`GPUSPAN_MAX_MODELS`, default
    /// [`gpuspan_core::cardinality::DEFAULT_MAX_MODELS`]); later ones become `other` in the
    /// metrics and share one anomaly history.
    pub max_models: usize,
    /// Steps the flight recorder keeps (`GPUSPAN_FLIGHT_RECORDER`), when set.
    pub flight_recorder: Option<u64>,
    /// Fine mode: write a rolling capture segment (`capture-<pid>-<seq>.json.gz`) once at
    /// least this many steps have finished since the last one, and release their records
    /// (`GPUSPAN_CAPTURE_SEGMENT_STEPS`; unset or 0: one `capture-<pid>.json.gz` at exit).
    pub capture_segment_steps: Option<u64>,
    /// Segments kept on disk, the newest (`GPUSPAN_CAPTURE_KEEP`, default 8).
    pub capture_keep: usize,
    /// Deflate level of every capture (`GPUSPAN_CAPTURE_GZIP_LEVEL`, 0–9, default
    /// [`DEFAULT_CAPTURE_GZIP_LEVEL`]); the capture at exit uses at most 1, so the exit budget
    /// goes to writing events rather than to compressing them harder.
    pub capture_gzip_level: u32,
    /// The clock scope boundaries read (`GPUSPAN_BOUNDARY_CLOCK`, [`crate::boundary_clock`]).
    pub boundary_clock: BoundaryClockSetting,
    /// Most wall time the agent's finishing work takes (exit handler, SIGTERM,
    /// `flush_capture`): stopping its threads, flushing CUPTI, decoding, span export and the
    /// capture write together (`GPUSPAN_EXIT_BUDGET`, humantime syntax such as `2s` or
    /// `500ms`, default [`DEFAULT_EXIT_BUDGET`]). What does not fit is cut and counted.
    pub exit_budget: std::time::Duration,
    /// Coarse mode: how long a root scope (a request) may stay open before its CUDA events
    /// are given back and it is given up (`GPUSPAN_SCOPE_TIMEOUT`, humantime, default
    /// [`crate::coarse::DEFAULT_ROOT_TIMEOUT`], 1 h).
    pub scope_timeout: std::time::Duration,
    /// Ask CUPTI 13.3+ for multiple-subscriber mode when subscribing
    /// (`GPUSPAN_CUPTI_MULTI_SUBSCRIBER`, `1`/`on` default, `0`/`off`;
    /// `gpuspan_cupti::multi_subscriber`).
    pub cupti_multi_subscriber: bool,
    /// How often the NVML sampler reads the `gpu_*` gauges and the NVLink counters
    /// (`GPUSPAN_NVML_PERIOD`, humantime, at least 10 ms, default
    /// [`DEFAULT_NVML_PERIOD`], 1 s): also the resolution of the captures'
    /// `nvlink_bandwidth_gbps` track.
    pub nvml_period: std::time::Duration,
}

/// Default of [`Config::max_records`] when one capture is written at exit: 8 M records
/// (about 800 MB).
pub const DEFAULT_MAX_RECORDS: usize = 8_000_000;

/// Default of [`Config::max_records`] with rolling segments (`GPUSPAN_CAPTURE_SEGMENT_STEPS`):
/// 100 k records (about 10 MB). A segment is also cut once half of them are held
/// (`crate::segment`), so the limit drops records only when the segment writer falls behind
/// the GPU, or when one step alone makes more (a step is never split: at 2 records a kernel,
/// its launch and itself, gpuspan's external correlations being held apart as runs, a step
/// of over 50 k kernels; a wan2.1 step has 20 k) (issue 14, item 6: a flood
/// stays within its memory, every drop counted). 200 k until the flood bench showed the
/// agent's share at 128–152 MB with it and 86–98 MB with 100 k (`scripts/bench-flood.sh`).
pub const SEGMENT_MAX_RECORDS: usize = 100_000;

/// Default of [`Config::max_pending_gpu`]: 128 Ki records, about 14 MB at the assembler's
/// 112 bytes a record. A step whose launch count the agent knows is finalized as soon as its
/// records are in (between polls too, under load: `SpanAssembler::finalize_ready`), so this
/// only fills where a unit must wait `settle_ms` (600 ms) after its end: a step that
/// launched a CUDA graph not learned yet (the first launches of each graph), or any step
/// when the launch callbacks are off. 128 Ki records in 600 ms is 218,000 such kernels a
/// second before any is dropped. At the flood's 1 M graph-launched kernels a second
/// (`scripts/bench-flood.sh`) that wait held 4 M records (the old limit, about 420 MB) and
/// made the agent's share 433 MB (issue 14, item 6: at most 128 MB); with 256 Ki the share
/// was 110.8–125.9 MB in four 60 s runs, with 128 Ki 101.1 and 102.2 MB in two, 0.75 M
/// rather than 0.48–0.65 M kernels dropped from the first request's spans.
pub const DEFAULT_MAX_PENDING_GPU: usize = 128 << 10;

/// Default of [`Config::nvml_period`]: 1 s, `nvidia-smi dmon`'s default sampling period.
pub const DEFAULT_NVML_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Default of [`Config::exit_budget`]: 2 s, short enough for a pod's termination grace
/// period (Kubernetes' default is 30 s, shared with the worker's own shutdown).
pub const DEFAULT_EXIT_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// The host name (`/proc/sys/kernel/hostname`), or `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Warnings produced while parsing (printed by the caller, once each).
pub type ConfigWarnings = Vec<String>;

/// Default of [`Config::capture_gzip_level`]: 1, zlib-rs's fastest level (`deflate_quick`).
/// Side by side in `cargo bench --bench capture_write` (200,000 kernel events of a real
/// H100 trace, 157 MB of JSON, deflated on the writing thread as segments and windows are):
/// level 1 0.86 M events/s into 11.8 MB, level 6 (flate2's default, what segments and
/// windows used before) 0.43 M events/s into 6.6 MB. Rolling segments are written while the
/// worker runs, on the collector's thread: half the CPU per kernel for files 1.8 times as
/// large (issue 14, items 1 and 2: "a fast level").
pub const DEFAULT_CAPTURE_GZIP_LEVEL: u32 = 1;

/// `GPUSPAN_CAPTURE_GZIP_LEVEL`'s value (`None`: unset): a deflate level 0–9 (0 stores,
/// 9 compresses hardest), else [`DEFAULT_CAPTURE_GZIP_LEVEL`] with a warning naming the
/// value.
fn parse_gzip_level(value: Option<&str>, warnings: &mut ConfigWarnings) -> u32 {
    let Some(v) = value else { return DEFAULT_CAPTURE_GZIP_LEVEL };
    match v.trim().parse::<u32>() {
        Ok(n) if n <= 9 => n,
        _ => {
            warnings.push(format!(
                "GPUSPAN_CAPTURE_GZIP_LEVEL={v:?} is not a deflate level 0-9; using {DEFAULT_CAPTURE_GZIP_LEVEL}"
            ));
            DEFAULT_CAPTURE_GZIP_LEVEL
        }
    }
}

fn parse_num(name: &str, default: usize, warnings: &mut ConfigWarnings) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warnings.push(format!("{name}={v:?} is not a positive integer; using {default}"));
                default
            }
        },
    }
}

impl Config {
    /// Reads the environment. Never fails; problems are returned as warnings.
    pub fn from_env() -> (Config, ConfigWarnings) {
        let mut w = Vec::new();
        let mode = match std::env::var("GPUSPAN_MODE").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("coarse") => Mode::Coarse,
            Ok("fine") => Mode::Fine,
            Ok("off") => Mode::Off,
            Ok(other) => {
                w.push(format!("GPUSPAN_MODE={other:?} is not one of off, coarse, fine; using coarse"));
                Mode::Coarse
            }
        };
        let out_dir = std::env::var_os("GPUSPAN_OUT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("gpuspan-out"));
        let rules_path = std::env::var_os("GPUSPAN_RULES").filter(|v| !v.is_empty()).map(PathBuf::from);
        let buffer_bytes = parse_num("GPUSPAN_BUFFER_BYTES", 4 << 20, &mut w);
        let max_buffers = parse_num("GPUSPAN_MAX_BUFFERS", 32, &mut w);
        let event_pool = parse_num("GPUSPAN_EVENT_POOL", crate::coarse::pool::DEFAULT_EVENT_POOL, &mut w);
        let max_models = parse_num("GPUSPAN_MAX_MODELS", gpuspan_core::cardinality::DEFAULT_MAX_MODELS, &mut w);
        let flight_recorder = match std::env::var("GPUSPAN_FLIGHT_RECORDER") {
            Err(_) => None,
            Ok(v) if v.trim().is_empty() || v.trim() == "off" || v.trim() == "0" => None,
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=gpuspan_core::triggers::MAX_FLIGHT_RECORDER_STEPS).contains(&n) => Some(n),
                _ => {
                    w.push(format!(
                        "GPUSPAN_FLIGHT_RECORDER={v:?} is not a step count within 1..={}; the flight recorder stays off",
                        gpuspan_core::triggers::MAX_FLIGHT_RECORDER_STEPS
                    ));
                    None
                }
            },
        };
        let capture_segment_steps = match std::env::var("GPUSPAN_CAPTURE_SEGMENT_STEPS") {
            Err(_) => None,
            Ok(v) if v.trim().is_empty() || v.trim() == "0" || v.trim() == "off" => None,
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    w.push(format!("GPUSPAN_CAPTURE_SEGMENT_STEPS={v:?} is not a step count; one capture is written at exit"));
                    None
                }
            },
        };
        let capture_keep = parse_num("GPUSPAN_CAPTURE_KEEP", 8, &mut w);
        let capture_gzip_level = parse_gzip_level(std::env::var("GPUSPAN_CAPTURE_GZIP_LEVEL").ok().as_deref(), &mut w);
        let boundary_clock = match std::env::var("GPUSPAN_BOUNDARY_CLOCK") {
            Ok(v) => v.parse().unwrap_or_else(|e: String| {
                w.push(format!("{e}; using auto"));
                BoundaryClockSetting::Auto
            }),
            Err(_) => BoundaryClockSetting::Auto,
        };
        let default_records = if capture_segment_steps.is_some() { SEGMENT_MAX_RECORDS } else { DEFAULT_MAX_RECORDS };
        let max_records = parse_num("GPUSPAN_MAX_RECORDS", default_records, &mut w);
        let max_pending_gpu = parse_num("GPUSPAN_MAX_PENDING_GPU", DEFAULT_MAX_PENDING_GPU, &mut w);
        let metrics_addr = std::env::var("GPUSPAN_METRICS_ADDR")
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && v != "off");
        let distributed = Distributed::from_env(&mut w);
        let metrics_addr = match (metrics_addr, distributed) {
            (Some(a), Some(d)) => Some(offset_port(&a, d.local_rank)),
            (a, _) => a,
        };
        let kernel_span_budget = match std::env::var("GPUSPAN_KERNEL_SPAN_BUDGET") {
            Err(_) => 20_000,
            Ok(v) => v.trim().parse::<u64>().unwrap_or_else(|_| {
                w.push(format!("GPUSPAN_KERNEL_SPAN_BUDGET={v:?} is not a non-negative integer; using 20000"));
                20_000
            }),
        };
        let exit_budget = match std::env::var("GPUSPAN_EXIT_BUDGET") {
            Err(_) => DEFAULT_EXIT_BUDGET,
            Ok(v) => match humantime::parse_duration(v.trim()) {
                Ok(d) if d > std::time::Duration::ZERO => d,
                _ => {
                    w.push(format!("GPUSPAN_EXIT_BUDGET={v:?} is not a positive duration such as 2s or 500ms; using 2s"));
                    DEFAULT_EXIT_BUDGET
                }
            },
        };
        let scope_timeout = match std::env::var("GPUSPAN_SCOPE_TIMEOUT") {
            Err(_) => crate::coarse::DEFAULT_ROOT_TIMEOUT,
            Ok(v) => match humantime::parse_duration(v.trim()) {
                Ok(d) if d > std::time::Duration::ZERO => d,
                _ => {
                    w.push(format!("GPUSPAN_SCOPE_TIMEOUT={v:?} is not a positive duration such as 1h or 30min; using 1h"));
                    crate::coarse::DEFAULT_ROOT_TIMEOUT
                }
            },
        };
        let cupti_multi_subscriber = match std::env::var("GPUSPAN_CUPTI_MULTI_SUBSCRIBER").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("1") | Ok("on") => true,
            Ok("0") | Ok("off") => false,
            Ok(other) => {
                w.push(format!("GPUSPAN_CUPTI_MULTI_SUBSCRIBER={other:?} is not 0 or 1; using 1"));
                true
            }
        };
        let nvml_period = match std::env::var("GPUSPAN_NVML_PERIOD") {
            Err(_) => DEFAULT_NVML_PERIOD,
            Ok(v) => match humantime::parse_duration(v.trim()) {
                Ok(d) if d >= std::time::Duration::from_millis(10) => d,
                _ => {
                    w.push(format!("GPUSPAN_NVML_PERIOD={v:?} is not a duration of at least 10ms such as 1s or 250ms; using 1s"));
                    DEFAULT_NVML_PERIOD
                }
            },
        };
        let worker_id = std::env::var("GPUSPAN_WORKER_ID")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| format!("{}:{}", host_name(), std::process::id()));
        (
            Config {
                mode,
                out_dir,
                rules_path,
                buffer_bytes,
                max_buffers,
                max_records,
                max_pending_gpu,
                metrics_addr,
                distributed,
                kernel_span_budget,
                worker_id,
                event_pool,
                max_models,
                flight_recorder,
                capture_segment_steps,
                capture_keep,
                capture_gzip_level,
                boundary_clock,
                exit_budget,
                scope_timeout,
                cupti_multi_subscriber,
                nvml_period,
            },
            w,
        )
    }
}

/// The process's `TRACEPARENT` environment variable, trimmed, when set and not empty
/// (OpenTelemetry's environment variables as context carriers,
/// `specification/context/env-carriers.md`): the parent of requests that name no
/// traceparent, in spans ([`gpuspan_core::spans::SpanOptions::env_traceparent`]) and
/// captures ([`gpuspan_core::join::JoinOptions::env_traceparent`]) alike. Checked where it is
/// used: a malformed value starts new traces, with the usual warning.
pub fn env_traceparent() -> Option<String> {
    std::env::var("TRACEPARENT").ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_level_is_0_to_9_else_the_default_with_a_warning() {
        let mut w = Vec::new();
        assert_eq!(parse_gzip_level(None, &mut w), DEFAULT_CAPTURE_GZIP_LEVEL);
        assert_eq!(parse_gzip_level(Some("0"), &mut w), 0);
        assert_eq!(parse_gzip_level(Some(" 9 "), &mut w), 9);
        assert!(w.is_empty(), "{w:?}");
        for bad in ["10", "-1", "fast", ""] {
            assert_eq!(parse_gzip_level(Some(bad), &mut w), DEFAULT_CAPTURE_GZIP_LEVEL, "{bad:?}");
        }
        assert_eq!(w.len(), 4);
        assert!(w[0].contains("GPUSPAN_CAPTURE_GZIP_LEVEL=\"10\"") && w[0].contains("using 1"), "{}", w[0]);
    }

    #[test]
    fn each_local_rank_gets_its_own_metrics_port() {
        assert_eq!(offset_port("127.0.0.1:9464", 3), "127.0.0.1:9467");
        assert_eq!(offset_port("[::1]:9464", 1), "[::1]:9465");
        assert_eq!(offset_port("127.0.0.1:0", 5), "127.0.0.1:0", "any port stays any port");
        assert_eq!(offset_port("127.0.0.1:65535", 1), "127.0.0.1:65535", "no port past 65535");
        assert_eq!(offset_port("metrics-host", 2), "metrics-host");
        let d = Distributed { rank: 3, world_size: 8, local_rank: 3 };
        assert_eq!(d.kineto_info(), serde_json::json!({"backend": "nccl", "rank": 3, "world_size": 8}));
    }
}

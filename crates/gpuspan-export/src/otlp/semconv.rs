//! OpenTelemetry semantic conventions for hardware metrics (`hw.*`), derived from the NVML
//! samples that feed the spec's `gpu_*` gauges (issue 15, item 5). The OTLP export emits
//! them *next to* the spec's names (`crate::otlp::OtlpMetrics`); the Prometheus endpoint
//! keeps the spec's names only.
//!
//! Source of every name, unit, instrument kind and attribute below: the
//! `open-telemetry/semantic-conventions` repository at release v1.44.0 (the model files
//! `model/hardware/gpu-metrics.yaml`, `common-metrics.yaml`, `temperature-metrics.yaml`,
//! `common.yaml`, `registry.yaml`; rendered in `docs/hardware/gpu.md`, `common.md`,
//! `temperature.md`). Every one of these metrics and attributes has stability
//! **development**: the conventions may still rename them, which is why the instruments
//! are created under a scope carrying [`SCHEMA_URL`].
//!
//! | convention | instrument, unit | from | attributes |
//! |---|---|---|---|
//! | `hw.gpu.utilization` | gauge (double), `1` | `utilization_percent` / 100 | GPU's, `hw.gpu.task` = `general` |
//! | `hw.gpu.memory.usage` | updowncounter (int), `By` | `memory_used_bytes` | GPU's |
//! | `hw.gpu.memory.limit` | updowncounter (int), `By` | `memory_total_bytes` | GPU's |
//! | `hw.gpu.memory.utilization` | gauge (double), `1` | used / total | GPU's |
//! | `hw.temperature` | gauge (double), `Cel` | `temperature_celsius` | the die sensor's |
//! | `hw.power` | gauge (double), `W` | `power_watts` | `hw.id`, `hw.name`, `hw.type` = `gpu` |
//! | `hw.gpu.io` | counter (int), `By` | `nvlink_tx_bytes` | GPU's, `network.io.direction` = `transmit` |
//!
//! "GPU's" attributes ([`HwGpu::gpu_attributes`]) are the group
//! `metric_attributes.hw.gpu` of `gpu-metrics.yaml`: `hw.id` (required), `hw.name`,
//! `hw.vendor`, `hw.model` (recommended; `hw.parent`, `hw.driver_version`,
//! `hw.firmware_version` and `hw.serial_number`, also recommended, are not known here and
//! left out). `hw.gpu.*` metrics carry no `hw.type` (the conventions list it only for the
//! GPU's `hw.errors` and `hw.status`). The host or worker a metric comes from is not an
//! attribute: `docs/hardware/common.md` leaves that to resource attributes.

use crate::metrics::GpuSample;
use opentelemetry::KeyValue;

/// The semantic-conventions release the names below follow.
pub const SEMCONV_VERSION: &str = "1.44.0";

/// Schema URL of [`SEMCONV_VERSION`] (`schemas/1.44.0` of the conventions' repository),
/// set on the instrumentation scope of the `hw.*` instruments.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

/// `hw.vendor` of every device NVML reports (NVML reads NVIDIA GPUs only).
pub const HW_VENDOR_NVIDIA: &str = "NVIDIA";

/// `hw.gpu.task` value of [`HW_GPU_UTILIZATION`]: NVML's `utilization.gpu` is the share of
/// the sample period during which any kernel ran (general compute), not the video
/// decoder's or encoder's utilisation (`registry.yaml`, enum `hw.gpu.task`:
/// `decoder`, `encoder`, `general`).
pub const HW_GPU_TASK_GENERAL: &str = "general";

/// `network.io.direction` value of [`HW_GPU_IO`] points: NVLink bytes the GPU sent
/// (`registry.yaml` of `model/network/`, enum `network.io.direction`: `transmit`, `receive`).
pub const NETWORK_IO_DIRECTION_TRANSMIT: &str = "transmit";

/// `hw.type` value of [`HW_POWER`] (`registry.yaml`, enum `hw.type`, member `gpu`).
pub const HW_TYPE_GPU: &str = "gpu";

/// The conventions' instrument kind of a `hw.*` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwInstrument {
    /// `instrument: gauge`: a double recorded with the SDK's synchronous gauge.
    Gauge,
    /// `instrument: updowncounter`: an int observed through an asynchronous
    /// (observable) up-down counter, exported as a non-monotonic cumulative sum.
    UpDownCounter,
    /// `instrument: counter`: an int observed through an asynchronous (observable)
    /// counter, exported as a monotonic cumulative sum. The observed value is the device's
    /// own running total (NVML counts from the driver's load), as OTel's asynchronous
    /// counters take it.
    Counter,
}

/// One metric of the conventions that the agent emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwMetric {
    /// The conventions' metric name.
    pub name: &'static str,
    /// The conventions' UCUM unit.
    pub unit: &'static str,
    /// The conventions' instrument kind.
    pub instrument: HwInstrument,
    /// The conventions' `brief`, used as the instrument description.
    pub brief: &'static str,
    /// The semantic-conventions model file defining it (under `model/hardware/`).
    pub source: &'static str,
    /// The platform spec's metric for the same quantity (or, for a counter, its rate),
    /// when there is one.
    pub spec_metric: Option<&'static str>,
}

/// `hw.gpu.utilization`: fraction (0–1) of time the GPU spent on a task
/// (`gpu-metrics.yaml`; gauge, double, unit `1`) ← `gpu_utilization_percent` / 100.
pub const HW_GPU_UTILIZATION: HwMetric = HwMetric {
    name: "hw.gpu.utilization",
    unit: "1",
    instrument: HwInstrument::Gauge,
    brief: "Fraction of time spent in a specific task.",
    source: "model/hardware/gpu-metrics.yaml",
    spec_metric: Some("gpu_utilization_percent"),
};

/// `hw.gpu.memory.usage`: GPU memory used, bytes (`gpu-metrics.yaml`; updowncounter, int,
/// unit `By`) ← `gpu_memory_used_bytes`.
pub const HW_GPU_MEMORY_USAGE: HwMetric = HwMetric {
    name: "hw.gpu.memory.usage",
    unit: "By",
    instrument: HwInstrument::UpDownCounter,
    brief: "GPU memory used.",
    source: "model/hardware/gpu-metrics.yaml",
    spec_metric: Some("gpu_memory_used_bytes"),
};

/// `hw.gpu.memory.limit`: size of the GPU memory, bytes (`gpu-metrics.yaml`;
/// updowncounter, int, unit `By`) ← NVML's total memory; the spec has no such metric.
pub const HW_GPU_MEMORY_LIMIT: HwMetric = HwMetric {
    name: "hw.gpu.memory.limit",
    unit: "By",
    instrument: HwInstrument::UpDownCounter,
    brief: "Size of the GPU memory.",
    source: "model/hardware/gpu-metrics.yaml",
    spec_metric: None,
};

/// `hw.gpu.memory.utilization`: fraction (0–1) of GPU memory used (`gpu-metrics.yaml`;
/// gauge, double, unit `1`) ← used / total bytes (`gpu_memory_utilization_percent` / 100).
pub const HW_GPU_MEMORY_UTILIZATION: HwMetric = HwMetric {
    name: "hw.gpu.memory.utilization",
    unit: "1",
    instrument: HwInstrument::Gauge,
    brief: "Fraction of GPU memory used.",
    source: "model/hardware/gpu-metrics.yaml",
    spec_metric: Some("gpu_memory_utilization_percent"),
};

/// `hw.temperature`: a temperature sensor's reading, degrees Celsius
/// (`temperature-metrics.yaml`; gauge, double, unit `Cel`) ← `gpu_temperature_celsius`
/// (NVML's GPU-die sensor).
pub const HW_TEMPERATURE: HwMetric = HwMetric {
    name: "hw.temperature",
    unit: "Cel",
    instrument: HwInstrument::Gauge,
    brief: "Temperature in degrees Celsius.",
    source: "model/hardware/temperature-metrics.yaml",
    spec_metric: Some("gpu_temperature_celsius"),
};

/// `hw.power`: instantaneous power consumed by a component, watts
/// (`common-metrics.yaml`; gauge, double, unit `W`) ← `gpu_power_watts`.
pub const HW_POWER: HwMetric = HwMetric {
    name: "hw.power",
    unit: "W",
    instrument: HwInstrument::Gauge,
    brief: "Instantaneous power consumed by the component.",
    source: "model/hardware/common-metrics.yaml",
    spec_metric: Some("gpu_power_watts"),
};

/// `hw.gpu.io`: bytes received and transmitted by the GPU (`gpu-metrics.yaml`; counter,
/// int, unit `By`, attribute `network.io.direction`) ← NVLink bytes transmitted
/// (`nvlink_tx_bytes`, NVML's `NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX`), direction
/// `transmit`. The spec's `nvlink_bandwidth_gbps` gauge is its rate between two samples;
/// the counter is what a backend's `rate()` over any window needs, whatever the sample
/// period, and what never misses a burst that fell between two exports.
pub const HW_GPU_IO: HwMetric = HwMetric {
    name: "hw.gpu.io",
    unit: "By",
    instrument: HwInstrument::Counter,
    brief: "Received and transmitted bytes by the GPU.",
    source: "model/hardware/gpu-metrics.yaml",
    spec_metric: Some("nvlink_bandwidth_gbps"),
};

/// Every `hw.*` metric the OTLP export emits.
pub const HW_METRICS: [HwMetric; 7] = [
    HW_GPU_UTILIZATION,
    HW_GPU_MEMORY_USAGE,
    HW_GPU_MEMORY_LIMIT,
    HW_GPU_MEMORY_UTILIZATION,
    HW_TEMPERATURE,
    HW_POWER,
    HW_GPU_IO,
];

/// One GPU as the conventions' hardware component, and its die temperature sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwGpu {
    /// `hw.id`: "an identifier for the hardware component, unique within the monitored
    /// host": the GPU's UUID (NVML `GPU-…`) when known, else `gpu<NVML index>` (NVML
    /// indices are host-wide, whatever `CUDA_VISIBLE_DEVICES` says).
    pub id: String,
    /// `hw.name`: `gpu<NVML index>`.
    pub name: String,
    /// `hw.model`: the product name (NVML `nvmlDeviceGetName`), when known.
    pub model: Option<String>,
    /// NVML index of the device (used in the sensor's `hw.sensor_location`).
    pub index: u32,
}

impl HwGpu {
    /// The GPU of NVML index `gpu_index`: `hw.id` = `uuid` when given, else
    /// `gpu<gpu_index>`; `model` (the product name) becomes `hw.model` unless it is empty
    /// or `unknown` (what the agent says when NVML gave no name).
    pub fn new(gpu_index: u32, uuid: Option<&str>, model: &str) -> HwGpu {
        let name = format!("gpu{gpu_index}");
        let id = uuid.filter(|u| !u.is_empty()).map_or_else(|| name.clone(), str::to_string);
        let model = (!model.is_empty() && model != "unknown").then(|| model.to_string());
        HwGpu { id, name, model, index: gpu_index }
    }

    /// Attributes of the `hw.gpu.*` metrics (`gpu-metrics.yaml`, group
    /// `metric_attributes.hw.gpu`): `hw.id`, `hw.name`, `hw.vendor` = `NVIDIA`, `hw.model`.
    pub fn gpu_attributes(&self) -> Vec<KeyValue> {
        let mut v = vec![
            KeyValue::new("hw.id", self.id.clone()),
            KeyValue::new("hw.name", self.name.clone()),
            KeyValue::new("hw.vendor", HW_VENDOR_NVIDIA),
        ];
        if let Some(m) = &self.model {
            v.push(KeyValue::new("hw.model", m.clone()));
        }
        v
    }

    /// Attributes of `hw.power` for this GPU (`common-metrics.yaml`: `hw.id` required,
    /// `hw.name` recommended, `hw.type` required = `gpu`).
    pub fn power_attributes(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("hw.id", self.id.clone()),
            KeyValue::new("hw.name", self.name.clone()),
            KeyValue::new("hw.type", HW_TYPE_GPU),
        ]
    }

    /// Attributes of `hw.temperature` (`temperature-metrics.yaml`): the metric describes a
    /// temperature *sensor*, a component of its own, so `hw.id` is the sensor's
    /// (`<GPU hw.id>_temperature_gpu`, after NVML's `NVML_TEMPERATURE_GPU`, the die
    /// sensor), `hw.name` `gpu<index> die temperature`, `hw.parent` the GPU's `hw.id` and
    /// `hw.sensor_location` `gpu<index>_die`. The conventions give `hw.temperature` no
    /// `hw.type` attribute; `hw.parent` ties it to the GPU.
    pub fn temperature_attributes(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("hw.id", format!("{}_temperature_gpu", self.id)),
            KeyValue::new("hw.name", format!("{} die temperature", self.name)),
            KeyValue::new("hw.parent", self.id.clone()),
            KeyValue::new("hw.sensor_location", format!("gpu{}_die", self.index)),
        ]
    }
}

/// A value of a `hw.*` metric, typed as the conventions' `metric_value_type`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HwValue {
    /// `double`.
    F64(f64),
    /// `int`.
    I64(i64),
    /// `int` of a monotonic counter: the running total.
    Total(u64),
}

/// One data point of a `hw.*` metric derived from a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct HwPoint {
    /// Which metric.
    pub metric: HwMetric,
    /// Its value, in the metric's unit.
    pub value: HwValue,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
}

/// The `hw.*` data points of one NVML sample of `gpu`. A `None` (or non-finite) field of
/// the sample gives no point for its metrics (the instrument keeps its last value, like
/// the spec's gauges). Conversions: percent → ratio (÷ 100) for `hw.gpu.utilization`;
/// `hw.gpu.memory.utilization` = used / total bytes when both are known and total > 0;
/// byte counts above `i64::MAX` saturate (the conventions' int).
pub fn hw_points(s: &GpuSample, gpu: &HwGpu) -> Vec<HwPoint> {
    let mut out = Vec::with_capacity(HW_METRICS.len());
    let gpu_attrs = gpu.gpu_attributes();
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    let bytes = |b: u64| HwValue::I64(i64::try_from(b).unwrap_or(i64::MAX));
    if let Some(p) = finite(s.utilization_percent) {
        let mut a = gpu_attrs.clone();
        a.push(KeyValue::new("hw.gpu.task", HW_GPU_TASK_GENERAL));
        out.push(HwPoint { metric: HW_GPU_UTILIZATION, value: HwValue::F64(p / 100.0), attributes: a });
    }
    if let Some(u) = s.memory_used_bytes {
        out.push(HwPoint { metric: HW_GPU_MEMORY_USAGE, value: bytes(u), attributes: gpu_attrs.clone() });
    }
    if let Some(t) = s.memory_total_bytes {
        out.push(HwPoint { metric: HW_GPU_MEMORY_LIMIT, value: bytes(t), attributes: gpu_attrs.clone() });
    }
    if let (Some(u), Some(t)) = (s.memory_used_bytes, s.memory_total_bytes) {
        if t > 0 {
            let ratio = u as f64 / t as f64;
            out.push(HwPoint { metric: HW_GPU_MEMORY_UTILIZATION, value: HwValue::F64(ratio), attributes: gpu_attrs });
        }
    }
    if let Some(c) = finite(s.temperature_celsius) {
        out.push(HwPoint { metric: HW_TEMPERATURE, value: HwValue::F64(c), attributes: gpu.temperature_attributes() });
    }
    if let Some(w) = finite(s.power_watts) {
        out.push(HwPoint { metric: HW_POWER, value: HwValue::F64(w), attributes: gpu.power_attributes() });
    }
    if let Some(b) = s.nvlink_tx_bytes {
        let mut a = gpu.gpu_attributes();
        a.push(KeyValue::new("network.io.direction", NETWORK_IO_DIRECTION_TRANSMIT));
        out.push(HwPoint { metric: HW_GPU_IO, value: HwValue::Total(b), attributes: a });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn attrs(p: &HwPoint) -> BTreeMap<String, String> {
        p.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
    }

    fn point<'a>(v: &'a [HwPoint], name: &str) -> Option<&'a HwPoint> {
        v.iter().find(|p| p.metric.name == name)
    }

    fn full() -> GpuSample {
        GpuSample {
            gpu_index: 2,
            uuid: None,
            utilization_percent: Some(87.0),
            memory_used_bytes: Some(20 << 30),
            memory_total_bytes: Some(80 << 30),
            temperature_celsius: Some(61.5),
            power_watts: Some(412.5),
            sm_clock_mhz: Some(1980.0),
            nvlink_gbps: Some(12.5),
            nvlink_tx_bytes: Some(3 << 40),
        }
    }

    #[test]
    fn names_units_and_instruments_are_the_conventions() {
        let table: Vec<(&str, &str, HwInstrument)> = HW_METRICS.iter().map(|m| (m.name, m.unit, m.instrument)).collect();
        assert_eq!(
            table,
            [
                ("hw.gpu.utilization", "1", HwInstrument::Gauge),
                ("hw.gpu.memory.usage", "By", HwInstrument::UpDownCounter),
                ("hw.gpu.memory.limit", "By", HwInstrument::UpDownCounter),
                ("hw.gpu.memory.utilization", "1", HwInstrument::Gauge),
                ("hw.temperature", "Cel", HwInstrument::Gauge),
                ("hw.power", "W", HwInstrument::Gauge),
                ("hw.gpu.io", "By", HwInstrument::Counter),
            ]
        );
        // Every spec gauge of the same quantity is one of the agent's gpu_* gauges.
        for m in HW_METRICS {
            if let Some(spec) = m.spec_metric {
                assert!(crate::otlp::metrics::GPU_GAUGES.iter().any(|(n, _)| *n == spec), "{spec}");
            }
            assert!(m.source.starts_with("model/hardware/") && m.source.ends_with(".yaml"));
        }
    }

    #[test]
    fn a_full_sample_gives_every_metric_converted() {
        let gpu = HwGpu::new(2, None, "NVIDIA H100 80GB HBM3");
        let v = hw_points(&full(), &gpu);
        assert_eq!(v.len(), 7);
        assert_eq!(point(&v, "hw.gpu.utilization").unwrap().value, HwValue::F64(0.87));
        assert_eq!(point(&v, "hw.gpu.memory.usage").unwrap().value, HwValue::I64(20 << 30));
        assert_eq!(point(&v, "hw.gpu.memory.limit").unwrap().value, HwValue::I64(80 << 30));
        assert_eq!(point(&v, "hw.gpu.memory.utilization").unwrap().value, HwValue::F64(0.25));
        assert_eq!(point(&v, "hw.temperature").unwrap().value, HwValue::F64(61.5));
        assert_eq!(point(&v, "hw.power").unwrap().value, HwValue::F64(412.5));
        assert_eq!(point(&v, "hw.gpu.io").unwrap().value, HwValue::Total(3 << 40), "the running total, not the rate");

        let gpu_attrs: BTreeMap<String, String> = [
            ("hw.id", "gpu2"),
            ("hw.name", "gpu2"),
            ("hw.vendor", "NVIDIA"),
            ("hw.model", "NVIDIA H100 80GB HBM3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for name in ["hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.gpu.memory.utilization"] {
            assert_eq!(attrs(point(&v, name).unwrap()), gpu_attrs, "{name}");
        }
        let mut util = gpu_attrs.clone();
        util.insert("hw.gpu.task".into(), "general".into());
        assert_eq!(attrs(point(&v, "hw.gpu.utilization").unwrap()), util);
        let mut io = gpu_attrs.clone();
        io.insert("network.io.direction".into(), "transmit".into());
        assert_eq!(attrs(point(&v, "hw.gpu.io").unwrap()), io);
        let power = attrs(point(&v, "hw.power").unwrap());
        assert_eq!(power.get("hw.id").map(String::as_str), Some("gpu2"));
        assert_eq!(power.get("hw.type").map(String::as_str), Some("gpu"));
        assert_eq!(power.len(), 3, "{power:?}");
        let t = attrs(point(&v, "hw.temperature").unwrap());
        assert_eq!(t.get("hw.id").map(String::as_str), Some("gpu2_temperature_gpu"));
        assert_eq!(t.get("hw.parent").map(String::as_str), Some("gpu2"));
        assert_eq!(t.get("hw.sensor_location").map(String::as_str), Some("gpu2_die"));
        assert!(!t.contains_key("hw.type"), "hw.temperature has no hw.type in the conventions");
    }

    #[test]
    fn the_uuid_is_the_id_when_known() {
        let gpu = HwGpu::new(0, Some("GPU-5e1f0b2a-94d3-4c4b-9f4e-2d1c7a9b3e10"), "");
        assert_eq!(gpu.id, "GPU-5e1f0b2a-94d3-4c4b-9f4e-2d1c7a9b3e10");
        assert_eq!(gpu.name, "gpu0");
        assert_eq!(gpu.model, None, "an empty product name is no hw.model");
        assert!(!gpu.gpu_attributes().iter().any(|kv| kv.key.as_str() == "hw.model"));
        let t = gpu.temperature_attributes();
        assert!(t.iter().any(|kv| kv.key.as_str() == "hw.parent" && kv.value.as_str() == gpu.id.as_str()));
        assert_eq!(HwGpu::new(1, Some(""), "unknown"), HwGpu { id: "gpu1".into(), name: "gpu1".into(), model: None, index: 1 });
    }

    #[test]
    fn missing_and_non_finite_fields_give_no_point() {
        let gpu = HwGpu::new(0, None, "H100");
        assert!(hw_points(&GpuSample::default(), &gpu).is_empty());
        let s = GpuSample { utilization_percent: Some(f64::NAN), power_watts: Some(f64::INFINITY), memory_used_bytes: Some(5), ..Default::default() };
        let v = hw_points(&s, &gpu);
        let names: Vec<&str> = v.iter().map(|p| p.metric.name).collect();
        assert_eq!(names, ["hw.gpu.memory.usage"], "no total: no limit, no utilization");
        let s = GpuSample { memory_used_bytes: Some(0), memory_total_bytes: Some(0), ..Default::default() };
        let names: Vec<&str> = hw_points(&s, &gpu).iter().map(|p| p.metric.name).collect();
        assert_eq!(names, ["hw.gpu.memory.usage", "hw.gpu.memory.limit"], "total 0: no ratio");
        let s = GpuSample { memory_total_bytes: Some(u64::MAX), ..Default::default() };
        assert_eq!(hw_points(&s, &gpu)[0].value, HwValue::I64(i64::MAX), "saturates");
    }
}

//! `--steps auto|scopes` of `stats`, `waterfall` and `diff`: where a trace's steps come
//! from. `scopes`: its `ProfilerStep#N` / `dit.step i/n` ranges and `gpuspan.step` args, as
//! recorded. `auto`: detected from the kernel stream ([`gpuspan_core::step_detect`]),
//! replacing any recorded steps. Default: `auto` when the trace names no steps; when its
//! only step is one `ProfilerStep#N` range (torch.profiler's `step()` around a whole
//! request, which may hold many denoising steps), detection runs and is used if it finds
//! two or more steps; otherwise `scopes`.

use std::path::Path;

use gpuspan_core::step_detect::{self, Detection, Evidence};
use gpuspan_core::trace::Trace;

/// Where steps come from (`--steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StepsMode {
    /// Detected from the repeating kernel sequence.
    Auto,
    /// The trace's own step ranges and `gpuspan.step` args.
    Scopes,
}

/// Applies `mode` (default as the module docs say) to `trace` read from `file`: with
/// detection, the kernels get the detected steps and one line on stderr says what was
/// found. Returns the detection, if one ran.
pub fn prepare(trace: &mut Trace, mode: Option<StepsMode>, file: &Path) -> Option<Detection> {
    let lone_profiler_step = mode.is_none() && only_one_profiler_step(trace);
    let mode = mode.unwrap_or(if step_detect::has_step_scopes(trace) && !lone_profiler_step {
        StepsMode::Scopes
    } else {
        StepsMode::Auto
    });
    if mode == StepsMode::Scopes {
        return None;
    }
    let d = step_detect::detect(trace);
    if lone_profiler_step && d.steps.len() < 2 {
        return None;
    }
    step_detect::apply(trace, &d);
    eprintln!("gpuspan: {}: {}", file.display(), describe(&d));
    Some(d)
}

/// The trace's only step name is a single `ProfilerStep#N` range (no `dit.step`, no
/// `gpuspan.step` arg).
fn only_one_profiler_step(trace: &Trace) -> bool {
    use gpuspan_core::trace::Category;
    let mut profiler = std::collections::BTreeSet::new();
    for e in &trace.events {
        let cpu = matches!(e.cat, Some(Category::UserAnnotation | Category::CpuOp));
        if cpu && e.name.starts_with("ProfilerStep#") {
            profiler.insert(e.name.as_str());
        }
        if e.name.starts_with("dit.step ") || (e.is(&Category::Kernel) && e.step.is_some()) {
            return false;
        }
    }
    profiler.len() == 1
}

/// One line for people: how many steps, from what evidence, with what confidence.
pub fn describe(d: &Detection) -> String {
    match d.evidence {
        Evidence::None => format!(
            "steps detected from the kernel stream: no repeating forward pass found, the run is one step ({} kernels)",
            d.steps.first().map_or(0, |s| s.kernels)
        ),
        Evidence::SchedulerSteps | Evidence::CompiledGraphCalls => format!(
            "steps from the trace's {}: {} steps, a median {} kernels each ({:.0} % of the kernels placed){}",
            if d.evidence == Evidence::SchedulerSteps { "scheduler step() calls" } else { "CompiledFxGraph calls" },
            d.steps.len(),
            d.period_kernels,
            d.confidence * 100.0,
            d.regions.iter().map(|r| format!("; {} kernels before/after: {}", r.kernels, r.name)).collect::<String>()
        ),
        e => format!(
            "steps detected from the kernel stream: {} steps of {} pass(es) × {} kernels on device {} stream {} ({}; {:.0} % of that stream's kernels){}",
            d.steps.len(),
            d.passes_per_step,
            d.period_kernels,
            d.row.0,
            d.row.1,
            match e {
                Evidence::IdleGaps => "the GPU idles between steps",
                _ => "each pass repeats its layers",
            },
            d.confidence * 100.0,
            d.regions.iter().map(|r| format!("; {} kernels before/after: {}", r.kernels, r.name)).collect::<String>()
        ),
    }
}

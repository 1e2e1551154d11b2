//! Per-step kernel waterfalls (`gpuspan waterfall`, DESIGN.md "Command line"), for gpuspan
//! captures and any Kineto / torch.profiler trace.
//!
//! - [`model`]: the step model, pure: a [`Trace`](gpuspan_core::trace::Trace) → steps (as
//!   `gpuspan stats` orders them) → lanes (one per device and stream) → bars (kernels,
//!   memcpy, memset), with each step's window, busy time and per-stage totals;
//! - [`palette`]: stage colours and ASCII characters, shared by both renderings;
//! - [`terminal`]: one step as text (ANSI colour or plain ASCII) within a given width;
//! - [`html`]: every step as one self-contained HTML page (canvas drawing, inline data).

pub mod html;
pub mod model;
pub mod palette;
pub mod terminal;

pub use html::{render_html, write_html};
pub use model::{Bar, BarKind, Lane, Step, StepKind, Waterfall};
pub use terminal::{render_step, TerminalOptions};

#[cfg(test)]
mod tests;

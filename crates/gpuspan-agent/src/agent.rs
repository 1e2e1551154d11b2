//! The live agent ([`Agent`]): the [`Shared`] state every thread reads, plus the parts only
//! the agent's own threads use (the collector state, fine windows, telemetry). Built by
//! [`crate::lifecycle`] at activation; the collector thread, the control socket and the
//! exit path receive it as `&'static Agent`.

use crate::collector::{Collector, Past};
use crate::shared::Shared;
use crate::telemetry::Telemetry;
use crate::window::Windows;
use std::sync::Mutex;

/// The live agent. Dereferences to its [`Shared`] state.
pub struct Agent {
    /// What the hot path, the CUPTI callbacks and the agent's threads share.
    pub shared: Shared,
    /// The collector's state (scopes, records), shared with the exit path.
    pub collector: Mutex<Collector>,
    /// Fine-capture windows (coarse mode).
    pub windows: Windows,
    /// Span export, metrics.
    pub telemetry: Telemetry,
}

impl std::ops::Deref for Agent {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Agent {
    /// The flight recorder's steps a window starts with ([`Collector::past`]); takes the
    /// collector lock. Empty when the recorder is off.
    pub fn recorder_past(&self) -> Past {
        if self.recorder_steps.get().is_none() {
            return Default::default();
        }
        self.collector.lock().map(|c| c.past(&self.shared)).unwrap_or_default()
    }
}

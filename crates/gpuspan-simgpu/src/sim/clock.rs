//! The host clock shared by API records, `cuptiGetTimestamp` and the GPU timeline.
//!
//! CUPTI timestamps are ns in the `CLOCK_REALTIME` domain (CUPTI-NOTES §2 "Timestamps").
//! In virtual mode the clock starts at [`VIRTUAL_EPOCH_NS`] and moves only when a driver
//! call charges its host cost, a synchronizing call jumps to the awaited GPU end, or
//! `gpuspanSimAdvanceHostNs` is called: runs are deterministic. In real mode it reads
//! `CLOCK_REALTIME` and waiting means sleeping.

use super::config::ClockMode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Start of the virtual clock: 2025-11-13T02:13:20Z, in Unix ns.
pub const VIRTUAL_EPOCH_NS: u64 = 1_763_000_000_000_000_000;

/// The simulated host clock.
#[derive(Debug, Clone)]
pub struct HostClock {
    mode: ClockMode,
    virtual_now_ns: u64,
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl HostClock {
    pub fn new(mode: ClockMode) -> Self {
        HostClock {
            mode,
            virtual_now_ns: VIRTUAL_EPOCH_NS,
        }
    }

    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    pub fn is_virtual(&self) -> bool {
        self.mode == ClockMode::Virtual
    }

    /// Current host time in Unix ns.
    pub fn now_ns(&self) -> u64 {
        match self.mode {
            ClockMode::Virtual => self.virtual_now_ns,
            ClockMode::Real => realtime_ns(),
        }
    }

    /// Charges `cost_ns` of host time (virtual mode only; real time passes by itself).
    pub fn charge(&mut self, cost_ns: u64) {
        if self.is_virtual() {
            self.virtual_now_ns = self.virtual_now_ns.saturating_add(cost_ns);
        }
    }

    /// Moves the host clock to at least `t_ns`. Virtual: jumps and returns `None`.
    /// Real: returns how long the caller must sleep (outside any lock).
    pub fn wait_until(&mut self, t_ns: u64) -> Option<Duration> {
        match self.mode {
            ClockMode::Virtual => {
                self.virtual_now_ns = self.virtual_now_ns.max(t_ns);
                None
            }
            ClockMode::Real => {
                let now = realtime_ns();
                (t_ns > now).then(|| Duration::from_nanos(t_ns - now))
            }
        }
    }

    /// Advances by `ns`: virtual adds, real returns the sleep the caller must do.
    pub fn advance(&mut self, ns: u64) -> Option<Duration> {
        match self.mode {
            ClockMode::Virtual => {
                self.charge(ns);
                None
            }
            ClockMode::Real => Some(Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_is_deterministic_and_monotonic() {
        let mut c = HostClock::new(ClockMode::Virtual);
        assert_eq!(c.now_ns(), VIRTUAL_EPOCH_NS);
        c.charge(3_000);
        assert_eq!(c.now_ns(), VIRTUAL_EPOCH_NS + 3_000);
        assert!(c.wait_until(VIRTUAL_EPOCH_NS + 10_000).is_none());
        assert_eq!(c.now_ns(), VIRTUAL_EPOCH_NS + 10_000);
        c.wait_until(VIRTUAL_EPOCH_NS);
        assert_eq!(
            c.now_ns(),
            VIRTUAL_EPOCH_NS + 10_000,
            "never goes backwards"
        );
    }

    #[test]
    fn real_clock_asks_for_sleeps() {
        let mut c = HostClock::new(ClockMode::Real);
        let now = c.now_ns();
        assert!(now > VIRTUAL_EPOCH_NS / 2);
        assert!(c.wait_until(now + 1_000_000_000).unwrap() > Duration::from_millis(500));
        assert_eq!(c.advance(5).unwrap(), Duration::from_nanos(5));
    }
}

//! The host clock shared by API records, `cuptiGetTimestamp` and the GPU timeline.
//!
//! CUPTI timestamps are ns in the `CLOCK_REALTIME` domain (CUPTI-NOTES §2 "Timestamps").
//! In virtual mode the clock starts at [`VIRTUAL_EPOCH_NS`] and moves only when a driver
//! call charges its host cost, a synchronizing call jumps to the awaited GPU end, or
//! `gpuspanSimAdvanceHostNs` is called: runs are deterministic. In real mode it reads
//! `CLOCK_REALTIME` and waiting means sleeping; with a speed F (`GPUSPAN_SIM_SPEED`) it runs
//! F times as fast from the moment the clock was made (so it starts at `CLOCK_REALTIME`),
//! and every wait sleeps 1/F of the simulated time.

use super::config::ClockMode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Start of the virtual clock: 2025-11-13T02:13:20Z, in Unix ns.
pub const VIRTUAL_EPOCH_NS: u64 = 1_763_000_000_000_000_000;

/// The simulated host clock.
#[derive(Debug, Clone)]
pub struct HostClock {
    mode: ClockMode,
    virtual_now_ns: u64,
    /// Real mode: speed × 1000 (1000 = wall time).
    speed_milli: u64,
    /// Real mode: `CLOCK_REALTIME` when the clock was made.
    anchor_ns: u64,
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl HostClock {
    /// A clock at wall-time speed.
    pub fn new(mode: ClockMode) -> Self {
        Self::with_speed(mode, 1000)
    }

    /// A clock whose real mode runs `speed_milli / 1000` times as fast as wall time.
    pub fn with_speed(mode: ClockMode, speed_milli: u64) -> Self {
        HostClock {
            mode,
            virtual_now_ns: VIRTUAL_EPOCH_NS,
            speed_milli: speed_milli.max(1),
            anchor_ns: realtime_ns(),
        }
    }

    /// Simulated ns → the wall time to sleep for them.
    fn wall(&self, sim_ns: u64) -> Duration {
        Duration::from_nanos((sim_ns as u128 * 1000 / self.speed_milli as u128) as u64)
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
            ClockMode::Real if self.speed_milli == 1000 => realtime_ns(),
            ClockMode::Real => {
                let since = realtime_ns().saturating_sub(self.anchor_ns) as u128;
                self.anchor_ns + (since * self.speed_milli as u128 / 1000) as u64
            }
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
                let now = self.now_ns();
                (t_ns > now).then(|| self.wall(t_ns - now))
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
            ClockMode::Real => Some(self.wall(ns)),
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

    #[test]
    fn a_faster_real_clock_runs_ahead_and_sleeps_less() {
        let mut c = HostClock::with_speed(ClockMode::Real, 10_000);
        assert_eq!(c.advance(1_000_000).unwrap(), Duration::from_nanos(100_000));
        let t0 = c.now_ns();
        let wall0 = realtime_ns();
        std::thread::sleep(Duration::from_millis(20));
        let sim_ns = c.now_ns() - t0;
        let wall_ns = realtime_ns() - wall0;
        // Ten times the wall time that passed, within the two clock reads' distance.
        assert!(sim_ns >= 9 * wall_ns && sim_ns <= 11 * wall_ns, "sim {sim_ns} ns, wall {wall_ns} ns");
        let target = c.now_ns() + 50_000_000;
        assert!(c.wait_until(target).unwrap() <= Duration::from_millis(5));
    }
}

//! The boundary clock: what an application thread reads at each scope boundary, and how the
//! collector turns those readings into the agent's ns (issue 14, item 5).
//!
//! The agent's ns clock ([`crate::shared::Shared::now_ns`]: `cuptiGetTimestamp`, or
//! `CLOCK_REALTIME` without CUPTI) cost 23 ns a read on this project's VM, two reads per NVTX
//! push + pop, against a goal of 50 ns for the whole pair. Where the CPU's time-stamp counter
//! is a clock ([`gpuspan_cupti::tsc::usable`]) and the agent's ns clock is `CLOCK_REALTIME`
//! (checked at activation, [`choose`]), a boundary reads the counter instead (9.5 ns here),
//! and the collector converts every reading it drains with a [`TickMap`]: a line through
//! (counter, ns) pairs it samples itself at each drain, so no application thread ever pays
//! for the conversion.
//!
//! Accuracy: the line's offset is re-taken at every drain (5 ms), its slope over 30 to 60 s of
//! pairs, so a boundary lands within a few tens of ns of where the ns clock would have put it
//! (measured by `tick_map_follows_the_realtime_clock` below); a step of the ns clock (NTP) is
//! followed at the next drain. The choice is made once per agent generation.

use gpuspan_cupti::tsc;

/// `CLOCK_REALTIME` in ns since the Unix epoch (0 before 1970). One `clock_gettime` (glibc's,
/// through the vDSO), called by rustix without a `Result` or conversions: `SystemTime`'s
/// conversions were a third of the clock's cost on the hot path, and nix's wrapper 7 % of the
/// application thread's samples (issue 14, item 5). rustix is built with `use-libc`: its own
/// vDSO lookup crashed the worker under valgrind.
#[inline]
pub fn realtime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    if t.tv_sec < 0 {
        return 0;
    }
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Which clock boundaries read (chosen at activation by [`choose`], fixed afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundaryClock {
    /// The time-stamp counter ([`gpuspan_cupti::tsc::read`]): ticks, converted by the
    /// collector's [`TickMap`].
    Tsc,
    /// The agent's ns clock itself ([`crate::shared::Shared::now_ns`]); readings are ns.
    Ns,
}

/// `GPUSPAN_BOUNDARY_CLOCK`: which clock scope boundaries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoundaryClockSetting {
    /// `auto` (default): the time-stamp counter where it is a clock and the agent's ns clock
    /// is `CLOCK_REALTIME`, otherwise the ns clock.
    #[default]
    Auto,
    /// `tsc`: the time-stamp counter wherever it is a clock, even when the agent's ns clock
    /// does not run with `CLOCK_REALTIME` (the conversion then interpolates it linearly).
    Tsc,
    /// `ns`: always the agent's ns clock.
    Ns,
}

impl std::str::FromStr for BoundaryClockSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BoundaryClockSetting::Auto),
            "tsc" => Ok(BoundaryClockSetting::Tsc),
            "ns" | "clock" => Ok(BoundaryClockSetting::Ns),
            other => Err(format!("GPUSPAN_BOUNDARY_CLOCK: {other:?} is not auto, tsc or ns")),
        }
    }
}

/// Most the agent's ns clock may differ from `CLOCK_REALTIME` for `auto` to take it as that
/// clock (CUPTI's default source on Linux, CUPTI-NOTES §2): 10 ms.
const REALTIME_OFFSET_MAX_NS: i128 = 10_000_000;
/// How long [`choose`] watches the two clocks run side by side: 200 µs of busy waiting, once
/// per activation.
const RATE_CHECK_NS: u64 = 200_000;
/// Most their offset may move over [`RATE_CHECK_NS`]: 20 µs (10 %: a clock running at another
/// rate, such as the simulator's sped-up or virtual clocks, moves it by far more).
const RATE_DRIFT_MAX_NS: i128 = 20_000;

/// Chooses the boundary clock for `setting`, given the agent's ns clock `now_ns` (`cupti`:
/// whether that clock is CUPTI's rather than `CLOCK_REALTIME` itself). Returns it with a
/// sentence for the activation log.
pub fn choose(setting: BoundaryClockSetting, cupti: bool, now_ns: &dyn Fn() -> u64) -> (BoundaryClock, String) {
    if setting == BoundaryClockSetting::Ns {
        return (BoundaryClock::Ns, "boundary clock: the ns clock (GPUSPAN_BOUNDARY_CLOCK=ns)".into());
    }
    if !tsc::usable() {
        let source = tsc::clocksource().unwrap_or_else(|| "unknown".into());
        return (BoundaryClock::Ns, format!("boundary clock: the ns clock (the time-stamp counter is not this machine's clock; clocksource {source})"));
    }
    if setting == BoundaryClockSetting::Auto && cupti {
        if let Err(why) = runs_with_realtime(now_ns) {
            return (BoundaryClock::Ns, format!("boundary clock: the ns clock (CUPTI's timestamps {why})"));
        }
    }
    (BoundaryClock::Tsc, "boundary clock: the time-stamp counter, converted to ns by the collector".into())
}

/// Whether `now_ns` reads `CLOCK_REALTIME`: within [`REALTIME_OFFSET_MAX_NS`] of it, and still
/// so after [`RATE_CHECK_NS`]. `Err` says how it is not.
fn runs_with_realtime(now_ns: &dyn Fn() -> u64) -> Result<(), String> {
    let offset = || now_ns() as i128 - realtime_ns() as i128;
    let first = offset();
    if first.abs() > REALTIME_OFFSET_MAX_NS {
        return Err(format!("are {:.3} s from CLOCK_REALTIME", first as f64 / 1e9));
    }
    let start = realtime_ns();
    while realtime_ns().saturating_sub(start) < RATE_CHECK_NS {
        std::hint::spin_loop();
    }
    let drift = offset() - first;
    if drift.abs() > RATE_DRIFT_MAX_NS {
        return Err(format!("moved {drift} ns against CLOCK_REALTIME in {} µs", RATE_CHECK_NS / 1000));
    }
    Ok(())
}

/// One reading of both clocks: the counter at the ns clock's read (the midpoint of the two
/// counter reads around it), and the ns clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockPair {
    /// Boundary-clock reading (ticks).
    pub ticks: u64,
    /// The agent's ns clock.
    pub ns: u64,
}

impl ClockPair {
    /// Both clocks now: of three tries, the one whose ns read took the fewest ticks (a
    /// preemption between the reads would skew the line by its length).
    pub fn sample(now_ns: &dyn Fn() -> u64) -> ClockPair {
        let mut best = (u64::MAX, ClockPair { ticks: 0, ns: 0 });
        for _ in 0..3 {
            let t0 = tsc::read();
            let ns = now_ns();
            let t1 = tsc::read();
            let width = t1.wrapping_sub(t0);
            if width < best.0 {
                best = (width, ClockPair { ticks: t0 + width / 2, ns });
            }
        }
        best.1
    }
}

/// A step of the ns clock against the line (an NTP step of `CLOCK_REALTIME`) larger than
/// this restarts the line at the new pair: 1 ms.
const STEP_NS: f64 = 1e6;
/// The slope's base pair is moved forward once it is this old (ns), to the pair kept half as
/// long ago, so the slope is always measured over 30 to 60 s once the agent has run that long.
const BASE_AGE_NS: u64 = 60_000_000_000;

/// Converts boundary-clock readings into the agent's ns (module docs). Owned by the
/// collector; [`TickMap::calibrate`] at each drain, before the readings drained are converted.
#[derive(Debug, Clone)]
pub struct TickMap {
    clock: BoundaryClock,
    /// Where the slope is measured from.
    base: ClockPair,
    /// Half-way candidate for the next `base`.
    mid: ClockPair,
    /// The newest pair: the line goes through it.
    last: ClockPair,
    /// Slope, ns per tick (0 until a second pair).
    ns_per_tick: f64,
}

impl Default for TickMap {
    fn default() -> Self {
        TickMap::new(BoundaryClock::Ns, ClockPair { ticks: 0, ns: 0 })
    }
}

impl TickMap {
    /// A map for `clock` starting at `origin` (a pair sampled at activation). With
    /// [`BoundaryClock::Ns`] it is the identity.
    pub fn new(clock: BoundaryClock, origin: ClockPair) -> TickMap {
        TickMap { clock, base: origin, mid: origin, last: origin, ns_per_tick: 0.0 }
    }

    /// The clock whose readings this converts.
    pub fn clock(&self) -> BoundaryClock {
        self.clock
    }

    /// Adds pair `p` (sampled now with [`ClockPair::sample`]); a pair not later than the last
    /// one is ignored.
    pub fn calibrate(&mut self, p: ClockPair) {
        if self.clock == BoundaryClock::Ns || p.ticks <= self.last.ticks {
            return;
        }
        if self.ns_per_tick > 0.0 && (p.ns as f64 - self.to_ns(p.ticks) as f64).abs() > STEP_NS {
            // The ns clock stepped: a new line from here, with the slope measured so far.
            self.base = p;
            self.mid = p;
            self.last = p;
            return;
        }
        if p.ns.saturating_sub(self.mid.ns) >= BASE_AGE_NS / 2 {
            if self.mid != self.base {
                self.base = self.mid;
            }
            self.mid = p;
        }
        self.last = p;
        if self.last.ticks > self.base.ticks {
            self.ns_per_tick = (self.last.ns as f64 - self.base.ns as f64) / (self.last.ticks - self.base.ticks) as f64;
        }
    }

    /// The agent's ns at boundary-clock reading `reading` (a reading of [`BoundaryClock::Ns`]
    /// is returned as is). Before the collector's first calibration every reading maps to
    /// the activation's ns.
    #[inline]
    pub fn to_ns(&self, reading: u64) -> u64 {
        if self.clock == BoundaryClock::Ns {
            return reading;
        }
        let dt = reading as i128 - self.last.ticks as i128;
        let ns = self.last.ns as i128 + (dt as f64 * self.ns_per_tick).round() as i128;
        ns.clamp(0, u64::MAX as i128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ticks: u64, ns: u64) -> ClockPair {
        ClockPair { ticks, ns }
    }

    #[test]
    fn the_ns_clock_is_converted_as_is() {
        let mut m = TickMap::default();
        m.calibrate(pair(10, 20));
        assert_eq!((m.clock(), m.to_ns(123_456_789)), (BoundaryClock::Ns, 123_456_789));
    }

    #[test]
    fn readings_between_and_after_pairs_fall_on_the_line() {
        // A 2.5 GHz counter: 0.4 ns a tick.
        let mut m = TickMap::new(BoundaryClock::Tsc, pair(1_000_000, 5_000_000_000));
        m.calibrate(pair(1_000_000 + 12_500_000, 5_005_000_000)); // 5 ms later
        assert_eq!(m.to_ns(1_000_000 + 2_500_000), 5_001_000_000, "1 ms after the origin");
        assert_eq!(m.to_ns(1_000_000 + 12_500_000 + 250), 5_005_000_100, "100 ns after the last pair");
        assert_eq!(m.to_ns(1_000_000), 5_000_000_000);
    }

    #[test]
    fn a_step_of_the_ns_clock_restarts_the_line_with_the_slope_kept() {
        let mut m = TickMap::new(BoundaryClock::Tsc, pair(0, 10_000_000_000));
        m.calibrate(pair(10_000_000, 10_004_000_000)); // 0.4 ns a tick
        // NTP steps CLOCK_REALTIME back by 2 s.
        m.calibrate(pair(20_000_000, 8_008_000_000));
        assert_eq!(m.to_ns(20_000_000 + 1000), 8_008_000_400);
        assert_eq!(m.to_ns(10_000_000), 8_004_000_000, "readings before the step move with it");
        // A pair older than the last one changes nothing.
        m.calibrate(pair(15_000_000, 7));
        assert_eq!(m.to_ns(20_000_000), 8_008_000_000);
    }

    #[test]
    fn the_slope_is_measured_over_the_last_half_minute_or_more() {
        // The counter's rate drifts from 0.4 to 0.5 ns a tick after a minute: the slope
        // follows it within the next minute, not from the activation on.
        let mut m = TickMap::new(BoundaryClock::Tsc, pair(0, 0));
        let (mut t, mut ns) = (0u64, 0u64);
        for _ in 0..12_000 {
            t += 12_500_000; // 5 ms at 0.4
            ns += 5_000_000;
            m.calibrate(pair(t, ns));
        }
        for _ in 0..36_000 {
            t += 10_000_000; // 5 ms at 0.5
            ns += 5_000_000;
            m.calibrate(pair(t, ns));
        }
        assert!((m.ns_per_tick - 0.5).abs() < 1e-9, "{}", m.ns_per_tick);
    }

    #[test]
    fn tick_map_follows_the_realtime_clock() {
        // The real counter against CLOCK_REALTIME, as the collector uses them.
        if !tsc::usable() {
            eprintln!("the time-stamp counter is not this machine's clock: nothing to check");
            return;
        }
        let now = realtime_ns;
        let mut m = TickMap::new(BoundaryClock::Tsc, ClockPair::sample(&now));
        for _ in 0..4 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            m.calibrate(ClockPair::sample(&now));
        }
        // Of a few reads, the closest (a preemption between two reads is not the map's error).
        let worst_best = (0..5)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                (0..20)
                    .map(|_| {
                        let t = tsc::read();
                        let ns = now();
                        (m.to_ns(t) as i128 - ns as i128).abs()
                    })
                    .min()
                    .unwrap()
            })
            .max()
            .unwrap();
        // 1 ms after the last pair; a 20 ms line measured over 5 ms steps: within 20 µs.
        assert!(worst_best < 20_000, "{worst_best} ns off");
    }

    #[test]
    fn choosing_ns_is_always_possible_and_a_far_clock_is_not_taken_for_realtime() {
        let (c, why) = choose(BoundaryClockSetting::Ns, true, &realtime_ns);
        assert_eq!(c, BoundaryClock::Ns, "{why}");
        // The simulator's virtual clock starts in November 2025.
        let virtual_clock = || 1_763_000_000_000_000_000u64;
        let (c, why) = choose(BoundaryClockSetting::Auto, true, &virtual_clock);
        assert_eq!(c, BoundaryClock::Ns, "{why}");
        if tsc::usable() {
            // A clock running ten times as fast as wall time, from now.
            let t0 = realtime_ns();
            let fast = move || t0 + (realtime_ns() - t0) * 10;
            let (c, why) = choose(BoundaryClockSetting::Auto, true, &fast);
            assert_eq!(c, BoundaryClock::Ns, "{why}");
            assert!(why.contains("moved"), "{why}");
            let (c, why) = choose(BoundaryClockSetting::Auto, true, &realtime_ns);
            assert_eq!(c, BoundaryClock::Tsc, "{why}");
            assert_eq!(choose(BoundaryClockSetting::Tsc, true, &virtual_clock).0, BoundaryClock::Tsc);
        }
    }

    #[test]
    fn the_setting_parses() {
        assert_eq!("auto".parse::<BoundaryClockSetting>(), Ok(BoundaryClockSetting::Auto));
        assert_eq!(" TSC ".parse::<BoundaryClockSetting>(), Ok(BoundaryClockSetting::Tsc));
        assert_eq!("ns".parse::<BoundaryClockSetting>(), Ok(BoundaryClockSetting::Ns));
        assert!("rdtsc".parse::<BoundaryClockSetting>().unwrap_err().contains("GPUSPAN_BOUNDARY_CLOCK"));
    }
}

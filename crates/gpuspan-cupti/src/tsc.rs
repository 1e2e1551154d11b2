//! The CPU's time-stamp counter: the cheap clock the agent reads at each scope boundary on an
//! application thread (issue 14, item 5), converted into CUPTI's ns by the collector.
//!
//! Why: `clock_gettime(CLOCK_REALTIME)` through the vDSO measured 23 ns a call on this
//! project's VM (`RDTSC` 9.5 ns), two calls per NVTX push + pop, where the goal for the whole
//! pair is 50 ns; `cuptiGetTimestamp`, which the agent calls instead when CUPTI is loaded,
//! is that clock behind a call into libcupti. Nsight Systems and the Linux kernel's own
//! clock read the same counter.
//!
//! When it is used: only where [`usable`] says the counter is a clock: x86-64, and Linux
//! itself keeping time with it (`/sys/devices/system/clocksource/clocksource0/current_clocksource`
//! is `tsc`: the kernel selects the TSC only when it is invariant, synchronized across CPUs and
//! passed its watchdog, and switches away when it stops being so; kernel documentation
//! `timers/timekeeping.rst`, "Clock sources"). Elsewhere (another architecture, a VM on
//! `kvm-clock`), the agent reads the ns clock as before.
//!
//! The one `unsafe` here is the `RDTSC` instruction itself (`core::arch` marks it unsafe);
//! this crate is where the agent's `unsafe` lives.

/// Whether [`read`] is a clock on this machine and may be executed by this process (module
/// docs): x86-64, Linux's current clocksource `tsc`, and `RDTSC` not made to fault for this
/// process (`prctl(PR_GET_TSC)` answers `PR_TSC_ENABLE`; prctl(2)). Reads one sysfs file;
/// for the agent's activation, not a hot path.
pub fn usable() -> bool {
    cfg!(target_arch = "x86_64") && clocksource().as_deref() == Some("tsc") && tsc_enabled()
}

/// `prctl(PR_GET_TSC)`: whether this process may execute `RDTSC` (a process can set it to
/// raise SIGSEGV instead, `PR_SET_TSC`).
fn tsc_enabled() -> bool {
    let mut state: libc::c_int = 0;
    // SAFETY: PR_GET_TSC writes one int through the pointer, a live local (prctl(2)).
    let rc = unsafe { libc::prctl(libc::PR_GET_TSC, &mut state as *mut libc::c_int) };
    rc == 0 && state == libc::PR_TSC_ENABLE
}

/// Linux's current clocksource (`tsc`, `kvm-clock`, `hpet`, `arch_sys_counter` …), or `None`
/// when sysfs does not say.
pub fn clocksource() -> Option<String> {
    let s = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource").ok()?;
    Some(s.trim().to_string())
}

/// The time-stamp counter now, in ticks (`RDTSC`, not serializing: the boundary's driver
/// call comes after it in program order, which is all the agent needs). 0 off x86-64.
#[inline(always)]
pub fn read() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter and has no other effect; every x86-64 CPU has it
        // (CPUID.01H:EDX.TSC is part of the x86-64 baseline). User mode may execute it
        // unless the kernel set CR4.TSD for this process (`PR_SET_TSC`, seccomp strict mode),
        // which `usable` checks before the agent chooses this clock.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_moves_forward_where_it_is_usable() {
        if !usable() {
            eprintln!("clocksource {:?}: the TSC is not this machine's clock", clocksource());
            return;
        }
        let a = read();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = read();
        // At least 100 MHz over 2 ms: any TSC of the last twenty years.
        assert!(b > a + 200_000, "{a} then {b}");
    }
}

//! The sim's own exports (not part of any NVIDIA library).
//!
//! | symbol | purpose |
//! |---|---|
//! | `gpuspanSimAdvanceHostNs(uint64_t ns)` | model host time: virtual clock += ns, or sleep ns in real mode |
//! | `int gpuspanSimIsVirtual(void)` | 1 with the virtual clock, 0 with the real one |
//! | `uint64_t gpuspanSimHostNowNs(void)` | the sim's host clock now, Unix ns (`sim::clock::HostClock::now_ns`): two reads around a replay give the simulated time it took |
//! | `gpuspanSimCuptiCounters(uint64_t *subscribes, uint64_t *enables)` | cuptiSubscribe / cuptiActivityEnable call counts |
//! | `gpuspanSimCuptiBuffers(uint64_t *zeroed_by_cupti, uint64_t *lent_dirty)` | activity buffers the sim zeroed on the requesting thread (the client did not set `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER`), and buffers lent non-zero after it did (`sim::cupti::Counters`) |
//! | `gpuspanSimCuptiSubscription(uint64_t *unsubscribes, int *subscribed, uint64_t *kinds_enabled)` | cuptiUnsubscribe calls, a subscriber held now (0/1), activity kinds enabled now |
//! | `gpuspanSimNodeTruth(GpuspanSimNodeTruth *out)` | ground truth of this rank's device: collectives, communication, exposed communication, NVLink bytes (`sim::node::Truth`; `now_ns` of the sim's clock not included) |
//! | `size_t gpuspanSimNodeTransfers(uint64_t *out, size_t cap)` | this rank's NVLink transfers (`start_ns, end_ns, bytes` triples, the first `cap` written to `out`); returns how many there are (`sim::node::Node::transfers`) |
//! | `gpuspanSimReset(void)` | test only: fresh simulator, environment re-read, held buffers forgotten |

// Safety contract of every export: the C prototype of the function it replaces (cuda.h,
// cupti_*.h, nvml.h): pointer arguments are NULL or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::guard;
use crate::sim::{self, sim};
use std::ffi::{c_int, c_void, CString};

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimAdvanceHostNs(ns: u64) {
    guard(|| {
        let sleep = sim().lock().clock.advance(ns);
        if let Some(d) = sleep {
            std::thread::sleep(d);
        }
        sim().wake.notify_all();
    })
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimIsVirtual() -> c_int {
    guard(|| sim().lock().clock.is_virtual() as c_int)
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimHostNowNs() -> u64 {
    guard(|| sim().lock().clock.now_ns())
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimCuptiSubscription(unsubscribes: *mut u64, subscribed: *mut c_int, kinds: *mut u64) {
    guard(|| {
        let (u, s, k) = sim::cupti_subscription();
        // SAFETY: each out-pointer is written only when non-NULL.
        unsafe {
            if !unsubscribes.is_null() {
                *unsubscribes = u;
            }
            if !subscribed.is_null() {
                *subscribed = s as c_int;
            }
            if !kinds.is_null() {
                *kinds = k;
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimCuptiBuffers(zeroed_by_cupti: *mut u64, lent_dirty: *mut u64) {
    guard(|| {
        let c = sim().lock().counters;
        // SAFETY: each out-pointer is written only when non-NULL.
        unsafe {
            if !zeroed_by_cupti.is_null() {
                *zeroed_by_cupti = c.buffers_zeroed_by_cupti;
            }
            if !lent_dirty.is_null() {
                *lent_dirty = c.buffers_lent_dirty;
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimCuptiCounters(subscribes: *mut u64, enables: *mut u64) {
    guard(|| {
        let (s, e) = sim::cupti_counters();
        // SAFETY: each out-pointer is written only when non-NULL.
        unsafe {
            if !subscribes.is_null() {
                *subscribes = s;
            }
            if !enables.is_null() {
                *enables = e;
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimReset() {
    guard(sim::reset)
}

/// Address of an exported symbol of the object this code lives in (for
/// `cuGetProcAddress_v2`), found through `dladdr` + `dlopen(RTLD_NOLOAD)` + `dlsym`.
pub fn own_symbol(name: &str) -> Option<*mut c_void> {
    let cname = CString::new(name).ok()?;
    // SAFETY: Dl_info is plain data; zeroed is a valid initial value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address of one of our own functions.
    if unsafe { libc::dladdr(gpuspanSimIsVirtual as *const c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dli_fname is a valid C string from dladdr; RTLD_NOLOAD only looks up an
    // object that is already loaded (ourselves), so no initializers run.
    let h = unsafe { libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if h.is_null() {
        return None;
    }
    // SAFETY: h is a live handle; cname is NUL-terminated. The extra reference from
    // dlopen is released right after.
    let p = unsafe { libc::dlsym(h, cname.as_ptr()) };
    // SAFETY: balances the dlopen above.
    unsafe { libc::dlclose(h) };
    (!p.is_null()).then_some(p)
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimNodeTruth(out: *mut sim::node::Truth) {
    guard(|| {
        let t = sim().lock().node.truth();
        // SAFETY: `out` is NULL or points at a writable `Truth` (repr(C)), per the table above.
        unsafe {
            if !out.is_null() {
                out.write(t);
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn gpuspanSimNodeTransfers(out: *mut u64, cap: usize) -> usize {
    guard(|| {
        let st = sim().lock();
        let t = st.node.transfers();
        if !out.is_null() {
            for (i, &(s, e, b)) in t.iter().take(cap).enumerate() {
                // SAFETY: `out` holds `cap` triples of u64 (3 × cap values), per the table above.
                unsafe {
                    out.add(3 * i).write(s);
                    out.add(3 * i + 1).write(e);
                    out.add(3 * i + 2).write(b);
                }
            }
        }
        t.len()
    })
}

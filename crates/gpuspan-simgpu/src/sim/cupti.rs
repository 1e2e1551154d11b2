//! CUPTI-side state: enabled activity kinds, registered buffer callbacks, the single
//! callback-API subscriber, correlation ids, per-thread external-correlation stacks,
//! dropped-record accounting and test counters (CUPTI-NOTES §1, §3, §4).

use super::records::kind;
use cudarc::cupti::sys::{
    CUpti_BuffersCallbackCompleteFunc, CUpti_BuffersCallbackRequestFunc, CUpti_CallbackFunc,
};
use std::collections::{HashMap, HashSet};

/// Opaque handle value given out by `cuptiSubscribe`.
pub const SUBSCRIBER_HANDLE: usize = 0x5b5c_41b0;

/// `CUpti_CallbackDomain` CUPTI_CB_DOMAIN_DRIVER_API (`cupti_callbacks.h`).
pub const DOMAIN_DRIVER_API: u32 = 1;
/// Highest valid `CUpti_CallbackDomain` (STATE = 6, `cupti_callbacks.h`).
pub const DOMAIN_MAX: u32 = 6;
/// Highest valid `CUpti_ExternalCorrelationKind` (CUSTOM2 = 5, CUPTI-NOTES §3).
pub const EXTERNAL_KIND_MAX: u32 = 5;

/// The callback-API subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber {
    pub callback: CUpti_CallbackFunc,
    pub userdata: usize,
    /// Domains enabled as a whole.
    pub domains: [bool; DOMAIN_MAX as usize + 1],
}

/// CUPTI state; reset by `cuptiFinalize`.
#[derive(Debug, Default)]
pub struct Cupti {
    pub enabled: HashSet<u32>,
    pub request: CUpti_BuffersCallbackRequestFunc,
    pub complete: CUpti_BuffersCallbackCompleteFunc,
    pub subscriber: Option<Subscriber>,
    /// (domain, cbid) pairs enabled one by one.
    pub callbacks: HashSet<(u32, u32)>,
    /// External correlation stacks per OS thread id, per kind.
    pub ext_stacks: HashMap<u32, HashMap<u32, Vec<u64>>>,
    pub dropped: u64,
    /// `cuptiSetThreadIdType(SYSTEM)` (1): API records carry gettid instead of pthread_self.
    pub system_thread_ids: bool,
    pub flush_period_ms: u32,
}

/// Counters that survive `cuptiFinalize` (exported for tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub subscribes: u64,
    pub enables: u64,
    /// Successful cuptiUnsubscribe calls.
    pub unsubscribes: u64,
}

impl Cupti {
    pub fn is_enabled(&self, k: u32) -> bool {
        self.enabled.contains(&k)
    }

    /// Correlation ids (and GPU records' correlationId) exist only while DRIVER or
    /// RUNTIME is enabled (CUPTI-NOTES §2 "Correlation id").
    pub fn correlating(&self) -> bool {
        self.is_enabled(kind::DRIVER) || self.is_enabled(kind::RUNTIME)
    }

    /// Kind of the kernel record to write, if any: CONCURRENT_KERNEL wins over KERNEL.
    pub fn kernel_kind(&self) -> Option<u32> {
        if self.is_enabled(kind::CONCURRENT_KERNEL) {
            Some(kind::CONCURRENT_KERNEL)
        } else if self.is_enabled(kind::KERNEL) {
            Some(kind::KERNEL)
        } else {
            None
        }
    }

    /// The subscriber callback and userdata if it wants (domain, cbid).
    pub fn callback_for(
        &self,
        domain: u32,
        cbid: u32,
    ) -> Option<(
        unsafe extern "C" fn(
            *mut std::ffi::c_void,
            cudarc::cupti::sys::CUpti_CallbackDomain,
            u32,
            *const std::ffi::c_void,
        ),
        usize,
    )> {
        let s = self.subscriber.as_ref()?;
        let f = s.callback?;
        let on = s.domains.get(domain as usize).copied().unwrap_or(false)
            || self.callbacks.contains(&(domain, cbid));
        on.then_some((f, s.userdata))
    }

    pub fn push_external(&mut self, tid: u32, ext_kind: u32, id: u64) {
        self.ext_stacks
            .entry(tid)
            .or_default()
            .entry(ext_kind)
            .or_default()
            .push(id);
    }

    pub fn pop_external(&mut self, tid: u32, ext_kind: u32) -> Option<u64> {
        self.ext_stacks.get_mut(&tid)?.get_mut(&ext_kind)?.pop()
    }

    /// (kind, top id) for every non-empty stack of `tid`, in kind order.
    pub fn external_tops(&self, tid: u32) -> Vec<(u32, u64)> {
        let Some(m) = self.ext_stacks.get(&tid) else {
            return Vec::new();
        };
        let mut v: Vec<(u32, u64)> = m
            .iter()
            .filter_map(|(&k, s)| s.last().map(|&id| (k, id)))
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_stacks_are_per_thread_and_per_kind() {
        let mut c = Cupti::default();
        c.push_external(1, 5, 10);
        c.push_external(1, 5, 11);
        c.push_external(1, 3, 7);
        c.push_external(2, 5, 99);
        assert_eq!(c.external_tops(1), vec![(3, 7), (5, 11)]);
        assert_eq!(c.external_tops(2), vec![(5, 99)]);
        assert_eq!(c.pop_external(1, 5), Some(11));
        assert_eq!(c.pop_external(1, 3), Some(7));
        assert_eq!(c.pop_external(1, 3), None);
        assert_eq!(c.external_tops(1), vec![(5, 10)]);
        assert_eq!(c.external_tops(3), vec![]);
    }

    #[test]
    fn correlation_needs_driver_or_runtime() {
        let mut c = Cupti::default();
        c.enabled.insert(kind::CONCURRENT_KERNEL);
        assert!(!c.correlating());
        c.enabled.insert(kind::RUNTIME);
        assert!(c.correlating());
        assert_eq!(c.kernel_kind(), Some(10));
    }
}

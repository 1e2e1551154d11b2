//! CUPTI-side state: the activity clients (enabled kinds, buffer callbacks, buffers,
//! external-correlation stacks, dropped count), the callback-API subscribers and the
//! subscriber mode, and test counters (CUPTI-NOTES §1, §3, §4).
//!
//! Activity clients. The V1 activity API (`cuptiActivityEnable`,
//! `cuptiActivityRegisterCallbacks`, …) acts on one process-wide client, [`Cupti::legacy`]:
//! one set of kinds and one pair of buffer callbacks, whoever registered last. In CUPTI
//! 13.3+'s multiple-subscriber mode each subscriber made with `cuptiSubscribe_v2` also has a
//! client of its own, reached through the `_v2` calls with its handle
//! (`gpuspan_cupti::multi_subscriber`). A record is made once, when any client wants its
//! kind, and written into the buffers of every client that enabled that kind (external
//! correlation records come from each client's own stacks).
//!
//! Mode. The first subscriber fixes it: `cuptiSubscribe`, or `_v2` without
//! `allowMultipleSubscribers`, makes it single (any later subscribe: 39), `_v2` with it
//! makes it multiple (V2 subscribers only; a V1 `cuptiSubscribe` gets 39). It is free again
//! once no subscriber is left. In single mode the `_v2` activity calls with the one
//! subscriber's handle act on the V1 client.
//!
//! Unconfirmed, chosen here: V1 activity calls keep working on the V1 client in
//! multiple-subscriber mode (an activity-only tool such as torch.profiler's Kineto then
//! coexists with V2 subscribers); a V2 subscriber's buffers are handed back (forced) when it
//! unsubscribes.

use super::buffers::Pool;
use super::records::kind;
use cudarc::cupti::sys::CUpti_CallbackFunc;
use gpuspan_cupti::multi_subscriber::{BufferCompletedV2Fn, BufferRequestedV2Fn};
// Integer-keyed maps of the simulator's own handles: one multiply per key, the same
// iteration order in every run (gpuspan_core::id_hash).
use gpuspan_core::id_hash::{IdHashMap as HashMap, IdHashSet as HashSet};
use std::ffi::c_void;

/// First handle value given out by `cuptiSubscribe` / `_v2` (later ones step by 0x10).
pub const SUBSCRIBER_HANDLE: usize = 0x5b5c_41b0;

/// `CUpti_CallbackDomain` CUPTI_CB_DOMAIN_DRIVER_API (`cupti_callbacks.h`).
pub const DOMAIN_DRIVER_API: u32 = 1;
/// Highest valid `CUpti_CallbackDomain` (STATE = 6, `cupti_callbacks.h`).
pub const DOMAIN_MAX: u32 = 6;
/// Highest valid `CUpti_ExternalCorrelationKind` (CUSTOM2 = 5, CUPTI-NOTES §3).
pub const EXTERNAL_KIND_MAX: u32 = 5;

/// `CUpti_BuffersCallbackRequestFunc` (non-NULL).
pub type RequestV1 = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
/// `CUpti_BuffersCallbackCompleteFunc` (non-NULL): (ctx, streamId, buffer, size, validSize).
pub type CompleteV1 = unsafe extern "C" fn(cudarc::driver::sys::CUcontext, u32, *mut u8, usize, usize);

/// A client's registered buffer callbacks.
#[derive(Debug, Clone, Copy, Default)]
pub enum BufferCallbacks {
    /// None registered: records are dropped and counted.
    #[default]
    None,
    /// `cuptiActivityRegisterCallbacks`.
    V1 { request: RequestV1, complete: CompleteV1 },
    /// `cuptiActivityRegisterCallbacks_v2`.
    V2 { request: BufferRequestedV2Fn, complete: BufferCompletedV2Fn },
}

impl BufferCallbacks {
    /// The completion half, for the delivery thread.
    pub fn complete(self) -> Option<Complete> {
        match self {
            BufferCallbacks::None => None,
            BufferCallbacks::V1 { complete, .. } => Some(Complete::V1(complete)),
            BufferCallbacks::V2 { complete, .. } => Some(Complete::V2(complete)),
        }
    }
}

/// A completion callback of either API version.
#[derive(Debug, Clone, Copy)]
pub enum Complete {
    /// V1: (ctx, streamId, buffer, size, validSize).
    V1(CompleteV1),
    /// V2: (buffer, size, validSize, info).
    V2(BufferCompletedV2Fn),
}

/// Whose buffers a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The V1 (process-wide) client.
    Legacy,
    /// The client of the multiple-subscriber-mode subscriber with this handle.
    Subscriber(usize),
}

/// One activity client's state.
#[derive(Debug, Default)]
pub struct ActivityClient {
    /// Enabled `CUpti_ActivityKind`s.
    pub enabled: HashSet<u32>,
    pub buffers: BufferCallbacks,
    /// Buffers lent by this client and not yet handed back.
    pub pool: Pool,
    /// External correlation stacks per OS thread id, per kind.
    pub ext_stacks: HashMap<u32, HashMap<u32, Vec<u64>>>,
    /// Records lost since the last `GetNumDroppedRecords` of this client.
    pub dropped: u64,
    /// `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` as this subscriber set it with
    /// `cuptiActivitySetAttribute_v2`; `None`: the process-wide value
    /// ([`Cupti::zeroed_out_buffers`], V1 `cuptiActivitySetAttribute`). Chosen where NVIDIA is
    /// silent: the header says only that in multiple-subscriber mode `_v2` writes an
    /// attribute "for the subscriber".
    pub zeroed_out_buffers: Option<bool>,
}

impl ActivityClient {
    pub fn is_enabled(&self, k: u32) -> bool {
        self.enabled.contains(&k)
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

    /// The kind this client wants a record of kind `k` written as (kernel records take the
    /// client's own kernel kind; both share one struct), or `None`.
    pub fn wants(&self, k: u32) -> Option<u32> {
        if k == kind::KERNEL || k == kind::CONCURRENT_KERNEL {
            self.kernel_kind()
        } else {
            self.is_enabled(k).then_some(k)
        }
    }

    pub fn push_external(&mut self, tid: u32, ext_kind: u32, id: u64) {
        self.ext_stacks.entry(tid).or_default().entry(ext_kind).or_default().push(id);
    }

    pub fn pop_external(&mut self, tid: u32, ext_kind: u32) -> Option<u64> {
        self.ext_stacks.get_mut(&tid)?.get_mut(&ext_kind)?.pop()
    }

    /// (kind, top id) for every non-empty stack of `tid`, in kind order.
    pub fn external_tops(&self, tid: u32) -> Vec<(u32, u64)> {
        let Some(m) = self.ext_stacks.get(&tid) else {
            return Vec::new();
        };
        let mut v: Vec<(u32, u64)> = m.iter().filter_map(|(&k, s)| s.last().map(|&id| (k, id))).collect();
        v.sort_unstable();
        v
    }
}

/// A callback-API subscriber.
#[derive(Debug)]
pub struct Subscriber {
    pub handle: usize,
    pub callback: CUpti_CallbackFunc,
    pub userdata: usize,
    /// Domains enabled as a whole.
    pub domains: [bool; DOMAIN_MAX as usize + 1],
    /// (domain, cbid) pairs enabled one by one.
    pub callbacks: HashSet<(u32, u32)>,
    /// The name CUPTI reports for it (`"CUPTI for <name>"`); empty for V1 subscribers.
    pub name: String,
    /// Its own activity client, in multiple-subscriber mode.
    pub activity: Option<ActivityClient>,
}

/// The subscriber mode, fixed by the first subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Multiple,
}

/// The subscriber API callback and its userdata.
pub type SubscriberCallback = (
    unsafe extern "C" fn(*mut c_void, cudarc::cupti::sys::CUpti_CallbackDomain, u32, *const c_void),
    usize,
);

/// CUPTI state; reset by `cuptiFinalize`.
#[derive(Debug, Default)]
pub struct Cupti {
    /// The V1 activity API's process-wide client.
    pub legacy: ActivityClient,
    /// Subscribers in subscription order.
    pub subscribers: Vec<Subscriber>,
    /// `None` until the first subscriber; again `None` when the last one leaves.
    pub mode: Option<Mode>,
    /// Handles given out so far (handles are never reused).
    pub handles_issued: usize,
    /// `cuptiSetThreadIdType(SYSTEM)` (1): API records carry gettid instead of pthread_self.
    pub system_thread_ids: bool,
    pub flush_period_ms: u32,
    /// `CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER` (5) set non-zero: the client promised
    /// zeroed buffers, so they are used as given; at 0, the default, each buffer a request
    /// callback returns is zeroed on the thread that asked for it, as CUPTI does
    /// (`cupti_activity.h`: "CUPTI will zero out the buffer in the main thread").
    pub zeroed_out_buffers: bool,
}

/// Counters that survive `cuptiFinalize` (exported for tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub subscribes: u64,
    pub enables: u64,
    /// Successful cuptiUnsubscribe calls.
    pub unsubscribes: u64,
    /// Buffers CUPTI zeroed itself, on the application thread that needed one
    /// ([`Cupti::zeroed_out_buffers`] off).
    pub buffers_zeroed_by_cupti: u64,
    /// Buffers lent after the client promised zeroed ones that were not (a sampled check:
    /// one 8-byte word in every 2 KiB): a real CUPTI would leave stale bytes in its records.
    pub buffers_lent_dirty: u64,
}

impl Cupti {
    /// Every activity client: the V1 one, then each multiple-mode subscriber's.
    pub fn clients(&self) -> impl Iterator<Item = (Target, &ActivityClient)> {
        std::iter::once((Target::Legacy, &self.legacy)).chain(
            self.subscribers
                .iter()
                .filter_map(|s| s.activity.as_ref().map(|a| (Target::Subscriber(s.handle), a))),
        )
    }

    /// Every activity client, mutably.
    pub fn clients_mut(&mut self) -> impl Iterator<Item = (Target, &mut ActivityClient)> {
        std::iter::once((Target::Legacy, &mut self.legacy)).chain(
            self.subscribers
                .iter_mut()
                .filter_map(|s| s.activity.as_mut().map(|a| (Target::Subscriber(s.handle), a))),
        )
    }

    pub fn client_mut(&mut self, t: Target) -> Option<&mut ActivityClient> {
        match t {
            Target::Legacy => Some(&mut self.legacy),
            Target::Subscriber(h) => self.subscribers.iter_mut().find(|s| s.handle == h)?.activity.as_mut(),
        }
    }

    /// The client the `_v2` calls with `handle` act on: the subscriber's own in multiple
    /// mode, the V1 client for the single-mode subscriber; `None` for an unknown handle.
    pub fn client_of_handle(&mut self, handle: usize) -> Option<Target> {
        let s = self.subscribers.iter().find(|s| s.handle == handle)?;
        Some(if s.activity.is_some() { Target::Subscriber(handle) } else { Target::Legacy })
    }

    pub fn subscriber_mut(&mut self, handle: usize) -> Option<&mut Subscriber> {
        self.subscribers.iter_mut().find(|s| s.handle == handle)
    }

    /// Whether any client enabled kind `k`.
    pub fn is_enabled(&self, k: u32) -> bool {
        self.clients().any(|(_, c)| c.is_enabled(k))
    }

    /// Correlation ids (and GPU records' correlationId) exist only while DRIVER or
    /// RUNTIME is enabled (CUPTI-NOTES §2 "Correlation id"), by any client.
    pub fn correlating(&self) -> bool {
        self.is_enabled(kind::DRIVER) || self.is_enabled(kind::RUNTIME)
    }

    /// Kind of the kernel record to make, if any client wants kernels.
    pub fn kernel_kind(&self) -> Option<u32> {
        let mut found = None;
        for (_, c) in self.clients() {
            match c.kernel_kind() {
                Some(kind::CONCURRENT_KERNEL) => return Some(kind::CONCURRENT_KERNEL),
                Some(k) => found = Some(k),
                None => {}
            }
        }
        found
    }

    /// The callbacks of every subscriber that wants (domain, cbid), in subscription order.
    pub fn callbacks_for(&self, domain: u32, cbid: u32) -> Vec<SubscriberCallback> {
        self.subscribers
            .iter()
            .filter(|s| {
                s.domains.get(domain as usize).copied().unwrap_or(false) || s.callbacks.contains(&(domain, cbid))
            })
            .filter_map(|s| s.callback.map(|f| (f, s.userdata)))
            .collect()
    }

    /// A new handle (never reused).
    pub fn issue_handle(&mut self) -> usize {
        let h = SUBSCRIBER_HANDLE + self.handles_issued * 0x10;
        self.handles_issued += 1;
        h
    }

    /// `CUPTI_ACTIVITY_ATTR_MULTIPLE_SUBSCRIBER_STATE`: 0 single, 1 multiple, 2 not fixed.
    pub fn multiple_subscriber_state(&self) -> u8 {
        match self.mode {
            Some(Mode::Single) => 0,
            Some(Mode::Multiple) => 1,
            None => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_stacks_are_per_thread_and_per_kind() {
        let mut c = ActivityClient::default();
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
    fn correlation_needs_driver_or_runtime_in_any_client() {
        let mut c = Cupti::default();
        c.legacy.enabled.insert(kind::CONCURRENT_KERNEL);
        assert!(!c.correlating());
        c.subscribers.push(Subscriber {
            handle: 1,
            callback: None,
            userdata: 0,
            domains: [false; DOMAIN_MAX as usize + 1],
            callbacks: HashSet::default(),
            name: "x".into(),
            activity: Some(ActivityClient::default()),
        });
        c.client_mut(Target::Subscriber(1)).unwrap().enabled.insert(kind::RUNTIME);
        assert!(c.correlating());
        assert_eq!(c.kernel_kind(), Some(10));
        assert_eq!(c.legacy.wants(kind::KERNEL), Some(kind::CONCURRENT_KERNEL));
        assert_eq!(c.client_mut(Target::Subscriber(1)).unwrap().wants(kind::KERNEL), None);
    }
}
